//! Rebuilding a node's Raft over its own data: forced promotion, breaking a
//! relationship, and rejoining after either.
//!
//! All three use the same mechanism (openraft's "restore from a snapshot"
//! recipe, done in place on the open sled database): shut Raft down, turn
//! the local state into a snapshot whose membership is this node alone (or
//! nothing, to rejoin), clear the store, start a pristine Raft, install the
//! snapshot, and elect. See `storage/DESIGN.md`, "Forced promotion".

use std::time::{Duration, Instant};

use openraft::ServerState;
use serde_json::json;
use tandem_storage::{CatchUp, NodeKind, Request, Response};
use tandem_web::{BreakOutcome, SwapOutcome};

use crate::errors::{Action, Refusal};
use crate::node::{start_engine, Node, NodeError, ResetTo};
use crate::peer::fence::FenceKind;
use crate::peer::protocol::ActionRequest;
use crate::roles::Role;
use crate::settings::Timing;
use crate::util::now_ms;

/// How long a reset waits for Raft's tasks to let go of the store.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How long a reset waits for the rebuilt Raft to elect this node.
const ELECT_WAIT: Duration = Duration::from_secs(10);
/// How often a manual failover looks whether it won.
const TAKEOVER_POLL: Duration = Duration::from_millis(10);

impl Node {
    /// Replaces the Raft engine as `to` says. Returns the last log index the
    /// new engine starts from (the fork point), if any.
    pub(super) async fn reset_engine(&self, to: ResetTo) -> Result<Option<u64>, NodeError> {
        let _lock = self.reset_lock.lock().await;
        let internal = |e: &dyn std::fmt::Display| NodeError::Internal(format!("reset: {e}"));
        let db_dir = self.dir.db();
        let old = self.raft();
        if let Err(e) = old.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown before reset");
        }
        drop(old);
        if !tandem_storage::wait_store_released(&db_dir, STORE_RELEASE_WAIT).await {
            return Err(NodeError::Internal(
                "the old Raft did not release the store within 10 s".into(),
            ));
        }
        let catch_up = match to {
            ResetTo::SingleVoter(c) => c,
            ResetTo::Pristine => CatchUp::Applied,
        };
        let (db, dir, id, info) = (
            self.db().clone(),
            db_dir.clone(),
            self.cfg.node_id,
            self.info(),
        );
        let (meta, path) = tokio::task::spawn_blocking(move || {
            tandem_storage::reset_to_single_voter(&db, &dir, id, info, catch_up)
        })
        .await
        .map_err(|e| internal(&e))?
        .map_err(|e| internal(&e))?;
        if matches!(to, ResetTo::Pristine) {
            std::fs::remove_file(&path).map_err(|e| internal(&e))?;
        }
        let (db, dir) = (self.db().clone(), db_dir.clone());
        let store = tokio::task::spawn_blocking(move || tandem_storage::open_with_db(db, &dir))
            .await
            .map_err(|e| internal(&e))?
            .map_err(|e| internal(&e))?;
        let engine = start_engine(&self.cfg, self.timing(), self.network.clone(), store)
            .await
            .map_err(|e| internal(&e))?;
        let forked_at = meta.last_log_id.map(|l| l.index);
        if let ResetTo::SingleVoter(_) = to {
            install_and_elect(self, &engine, meta, &path).await?;
        }
        self.set_engine(engine);
        self.roles.fence.clear();
        Ok(forked_at)
    }

    /// Rebuilds the Raft engine over the same store with `timing` (a new
    /// primary timeout), on a node that does not lead: its log, vote and
    /// state are kept; it answers nobody for the few milliseconds between.
    /// Does nothing on a leader.
    ///
    /// # Errors
    /// If the store cannot be reopened (the node then has no engine running
    /// and reports it, as after a failed reset).
    pub(crate) async fn rebuild_engine(&self, timing: Timing) -> Result<(), NodeError> {
        let _lock = self.reset_lock.lock().await;
        let internal = |e: &dyn std::fmt::Display| NodeError::Internal(format!("rebuild: {e}"));
        let old = self.raft();
        if self.metrics().state == ServerState::Leader {
            return Ok(());
        }
        let from = self.timing().primary_timeout.as_millis();
        let stopped = Instant::now();
        if let Err(e) = old.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown before rebuild");
        }
        drop(old);
        let db_dir = self.dir.db();
        if !tandem_storage::wait_store_released(&db_dir, STORE_RELEASE_WAIT).await {
            return Err(NodeError::Internal(
                "the old Raft did not release the store within 10 s".into(),
            ));
        }
        let (db, dir) = (self.db().clone(), db_dir.clone());
        let store = tokio::task::spawn_blocking(move || tandem_storage::open_with_db(db, &dir))
            .await
            .map_err(|e| internal(&e))?
            .map_err(|e| internal(&e))?;
        let engine = start_engine(&self.cfg, timing, self.network.clone(), store)
            .await
            .map_err(|e| internal(&e))?;
        self.set_engine(engine);
        self.live.rebuilt(timing, stopped);
        tracing::info!(
            from_ms = from as u64,
            to_ms = timing.primary_timeout.as_millis() as u64,
            took_ms = stopped.elapsed().as_millis() as u64,
            "Raft timers switched to the new primary timeout"
        );
        Ok(())
    }

    /// Finishes a forced promotion that a crash interrupted (the snapshot
    /// file was written but not installed). Called at start.
    ///
    /// # Errors
    /// If the pending snapshot cannot be installed.
    pub async fn resume_pending_reset(&self) -> Result<(), NodeError> {
        let db_dir = self.dir.db();
        let pending = tandem_storage::pending_forced_snapshot(&db_dir)
            .map_err(|e| NodeError::Internal(format!("reading pending forced snapshot: {e}")))?;
        let Some((meta, path)) = pending else {
            return Ok(());
        };
        let m = self.metrics();
        if m.last_applied.is_some() {
            // Already installed before the crash: only the file is left.
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        tracing::warn!(path = %path.display(), "finishing an interrupted forced promotion");
        let engine = self.engine();
        install_and_elect(self, &engine, meta, &path).await
    }

    /// Forced promotion: make this appliance the only voter of a new
    /// lineage, with a raised epoch recorded as forced.
    async fn force_promote(&self, actor: &str) -> Result<SwapOutcome, NodeError> {
        let started = Instant::now();
        if self.cfg.kind != NodeKind::Appliance {
            return Err(NodeError::Refused(Refusal::WitnessNeverPrimary));
        }
        let (role, _) = self.compute_role();
        if role == Role::Primary {
            return Err(NodeError::Refused(Refusal::AlreadyPrimary));
        }
        if role == Role::Standalone {
            return Err(NodeError::Refused(Refusal::NoRelationship(
                Action::TakeOver,
            )));
        }
        let before = self.epoch();
        let _pause = self.roles.pause();
        // On the single-voter engine this node leads at once, and the role
        // manager would raise the epoch itself (a plain role change) before
        // the forced raise below: hold its raises until that is written.
        let _raises = self
            .roles
            .hold_epoch_raises(self.timing().primary_timeout)
            .await?;
        tracing::warn!(%actor, epoch = before.epoch, "forced promotion");
        let forked_at = self
            .reset_engine(ResetTo::SingleVoter(CatchUp::AllLogged))
            .await?;
        let me = self.cfg.node_id;
        let current = self.epoch();
        let details = json!({
            "primary": me, "name": self.cfg.name, "previous_primary": before.primary,
            "epoch": current.epoch + 1, "forked_at": forked_at,
        });
        let req = self.epoch_change(
            current.epoch,
            true,
            forked_at,
            "forced_promotion",
            actor,
            details,
        );
        let epoch = match self.write(req).await? {
            Response::Multi(r) => match r.first() {
                Some(Response::Epoch { epoch }) => *epoch,
                other => {
                    return Err(NodeError::Internal(format!(
                        "unexpected epoch answer {other:?}"
                    )))
                }
            },
            Response::Refused { reason } => {
                return Err(NodeError::Internal(format!(
                    "epoch raise refused: {reason}"
                )))
            }
            other => return Err(NodeError::Internal(format!("unexpected answer {other:?}"))),
        };
        let _ = std::fs::remove_file(self.dir.db().join(tandem_storage::FORCED_SNAPSHOT_FILE));
        Ok(SwapOutcome {
            previous_primary: before.primary,
            new_primary: me,
            epoch,
            forced: true,
            pull_sync: false,
            duration_ms: started.elapsed().as_millis() as u64,
            sync: None,
            demoted: false,
            warning: None,
        })
    }

    /// The administrator's failover where it is manual: this backup stands
    /// for election (the witness votes); `None` when it did not become
    /// primary within three primary timeouts.
    async fn takeover_by_election(&self, actor: &str) -> Option<SwapOutcome> {
        let started = Instant::now();
        let before = self.epoch();
        let other_leader = self
            .metrics()
            .current_leader
            .filter(|l| Some(*l) != before.primary && *l != self.cfg.node_id);
        if let Some(l) = other_leader {
            // Someone else leads with the primary gone (the witness): it
            // hands leadership over when asked.
            let ask = ActionRequest::SwapTo {
                to: self.cfg.node_id,
                pull_sync: false,
                actor: actor.to_string(),
            };
            let answer = self.ask_primary(l, ask).await.ok();
            if let Some(out) = answer.and_then(|t| serde_json::from_str::<SwapOutcome>(&t).ok()) {
                return Some(out);
            }
        }
        tracing::warn!(%actor, "manual failover: standing for election");
        let _ = self.raft().trigger().elect(false).await;
        let deadline = Instant::now() + self.timing().primary_timeout * 3;
        while Instant::now() < deadline {
            let ep = self.epoch();
            if ep.primary == Some(self.cfg.node_id) && self.compute_role().0 == Role::Primary {
                return Some(super::swap::followed_outcome(
                    before.primary,
                    self.cfg.node_id,
                    ep.epoch,
                    started,
                ));
            }
            tokio::time::sleep(TAKEOVER_POLL).await;
        }
        tracing::warn!("manual failover: the election was not won; forcing");
        None
    }

    /// A forced swap: if the primary answers after all, a planned swap is
    /// safer and loses nothing, so that is tried first; if the primary
    /// turns out not to answer (it froze a moment ago), the promotion is
    /// forced as asked.
    pub(crate) async fn forced_swap(&self, actor: &str) -> Result<SwapOutcome, NodeError> {
        if self.in_maintenance(self.cfg.node_id) {
            return Err(NodeError::Refused(Refusal::InMaintenance {
                node: self.cfg.name.clone(),
            }));
        }
        if self.compute_role().0 == Role::Primary {
            // *Become backup even if the peer cannot be contacted*: a
            // planned swap where the peer answers, else stand down.
            match self.planned_swap(false, actor).await {
                Err(e @ NodeError::PeerUnreachable { .. }) => {
                    tracing::warn!(reason = %e, "the peer cannot take over: standing down");
                    return self.forced_demotion(actor).await;
                }
                other => return other,
            }
        }
        let primary_in_contact = self
            .roles
            .since_leader_contact()
            .is_some_and(|d| d < self.timing().primary_timeout);
        if self.compute_role().0 == Role::Backup && primary_in_contact {
            tracing::info!("primary answers: trying a planned swap instead of a forced promotion");
            match self.planned_swap(false, actor).await {
                Err(e @ NodeError::PeerUnreachable { .. }) => {
                    tracing::warn!(reason = %e, "the primary did not answer after all: forcing");
                }
                other => return other,
            }
        }
        if self.manual_failover() {
            // Failover is manual with a witness: an election the witness
            // grants (only once the primary's lease has run out) loses
            // nothing; a forced promotion is the fallback.
            if let Some(out) = self.takeover_by_election(actor).await {
                return Ok(out);
            }
        }
        self.force_promote(actor).await
    }

    /// *Break relationship*: every node becomes standalone with its own copy.
    /// On the primary: remove every other member, then tell them. On the
    /// backup: asks the primary, or, when it cannot be reached, leaves on
    /// its own.
    ///
    /// # Errors
    /// [`NodeError::Refused`] on a standalone node.
    pub async fn break_relationship(&self, actor: &str) -> Result<BreakOutcome, NodeError> {
        match self.compute_role().0 {
            Role::Standalone => Err(NodeError::Refused(Refusal::NoRelationship(Action::Break))),
            Role::Primary => self.break_as_primary(actor).await,
            Role::Backup | Role::Witness => {
                // A primary that stood down without a quorum to record it,
                // or that was just fenced, still finds itself named as the
                // primary: there is no other primary to ask then (asking
                // itself would take its own request for the primary's
                // break notice).
                let me = self.cfg.node_id;
                if let Some(primary) = self.epoch().primary.filter(|p| *p != me) {
                    match self
                        .ask_primary(
                            primary,
                            ActionRequest::Break {
                                actor: actor.to_string(),
                            },
                        )
                        .await
                    {
                        Ok(text) => {
                            return serde_json::from_str(&text)
                                .map_err(|e| NodeError::Internal(format!("bad break answer: {e}")))
                        }
                        Err(e @ NodeError::PeerUnreachable { .. }) => {
                            tracing::warn!(reason = %e, "primary unreachable: leaving the relationship alone");
                        }
                        Err(e) => return Err(e),
                    }
                }
                let former = self.other_member_ids();
                self.become_standalone(actor, "break while the primary was unreachable")
                    .await?;
                Ok(BreakOutcome {
                    former_peers: former,
                    role: Role::Standalone.into(),
                })
            }
        }
    }

    fn other_member_ids(&self) -> Vec<u64> {
        let me = self.cfg.node_id;
        self.metrics()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != me)
            .collect()
    }

    async fn break_as_primary(&self, actor: &str) -> Result<BreakOutcome, NodeError> {
        let me = self.cfg.node_id;
        let former = self.other_member_ids();
        let ep = self.epoch();
        // The epoch is raised (not forced) so that a later look at it shows a
        // plain standalone node, not the survivor of a forced promotion.
        let details = json!({ "primary": me, "former_peers": former });
        let req = self.epoch_change(ep.epoch, false, None, "break", actor, details);
        match self.write(req).await? {
            Response::Multi(_) => {}
            Response::Refused { reason } => return Err(NodeError::Rejected(reason)),
            other => return Err(NodeError::Internal(format!("unexpected answer {other:?}"))),
        }
        let addresses = self.peer_addresses(&former);
        let keep = std::collections::BTreeSet::from([me]);
        if let Err(e) = self
            .raft()
            .change_membership(openraft::ChangeMembers::ReplaceAllVoters(keep), false)
            .await
        {
            // The other side may have acted on the break first: a fence
            // notice handled meanwhile rebuilds this node's engine as a
            // single voter (its Raft stops under this call). Once that
            // reset is over, a standalone node has what was asked.
            drop(self.reset_lock.lock().await);
            if self.compute_role().0 != Role::Standalone {
                return Err(NodeError::Unavailable(format!(
                    "removing the other members: {e}"
                )));
            }
            tracing::info!(error = %e, "the break finished by a reset of its own");
        }
        // Former members learn it at their next Raft message (they are
        // answered "removed"); nudge them now so they need not wait.
        self.notify_removed(&addresses, actor).await;
        tracing::info!(former = ?former, "relationship broken; this node is standalone");
        Ok(BreakOutcome {
            former_peers: former,
            role: Role::Standalone.into(),
        })
    }

    /// The primary removed this node (break): leave with its data.
    pub(crate) async fn become_standalone_on_notice(&self, actor: &str) -> Result<(), NodeError> {
        if self.compute_role().0 == Role::Standalone {
            return Ok(());
        }
        self.become_standalone(actor, "the primary broke the relationship")
            .await
    }

    /// Leaves the relationship with this node's data: single voter of its
    /// own, shared IPs no longer configured here.
    async fn become_standalone(&self, actor: &str, reason: &str) -> Result<(), NodeError> {
        let _pause = self.roles.pause();
        self.reset_engine(ResetTo::SingleVoter(CatchUp::Committed))
            .await?;
        let mut settings = self.settings();
        let had_ips = !settings.shared_ips.is_empty();
        settings.shared_ips.clear();
        let mut cmds = vec![Request::HistoryAppend {
            at_ms: now_ms(),
            node: self.cfg.node_id,
            kind: "break".into(),
            actor: actor.to_string(),
            details_json: json!({ "standalone": self.cfg.node_id, "reason": reason }).to_string(),
        }];
        if had_ips {
            cmds.push(Request::SettingsPut {
                settings_json: settings.to_json(),
                if_version: None,
                actor: actor.to_string(),
                at_ms: now_ms(),
            });
        }
        if let Err(e) = self.write(Request::Multi(cmds)).await {
            tracing::warn!(error = %e, "could not record the break");
        }
        tracing::info!(%reason, "this node is standalone now");
        Ok(())
    }

    /// Handles a fence notice (run by the role manager): a node removed by a
    /// break becomes standalone; a node replaced by a forced promotion stops
    /// serving and exports the writes it never replicated, then waits for
    /// the administrator to rejoin it.
    pub(crate) async fn handle_fence(&self) {
        let Some(notice) = self.roles.fence.notice() else {
            return;
        };
        // A refusal can arrive late, for a request the previous engine sent
        // before this node rejoined: a pristine engine, or one that follows
        // the refusing node and heard from it within a primary timeout, is
        // not fenced. (A node that was removed still names its old leader
        // as its leader: with Pre-Vote it asks before it stands, so nothing
        // clears that; but the old leader no longer reaches it.)
        let m = self.metrics();
        let pristine = m.membership_config.membership().nodes().next().is_none();
        let follows = m.current_leader == Some(notice.by)
            && self
                .roles
                .since_leader_contact()
                .is_some_and(|d| d < self.timing().primary_timeout);
        if pristine || follows {
            tracing::info!(
                by = notice.by,
                "stale refusal ignored: this node has rejoined"
            );
            self.roles.fence.clear();
            return;
        }
        match notice.kind {
            FenceKind::Removed => {
                if let Err(e) = self
                    .become_standalone("tandem", "removed by the other side")
                    .await
                {
                    tracing::error!(error = %e, "could not become standalone after removal");
                }
            }
            FenceKind::Forced => {
                let already = self.roles.diverged_export().is_some();
                if already {
                    return;
                }
                match self.export_diverged(notice.forked_at, notice.epoch).await {
                    Ok(path) => {
                        // Stop the old lineage here: a node that keeps leading
                        // (or following) it would keep the other members of the
                        // old lineage (the witness) from ever learning of the
                        // forced promotion. They find out at their next election,
                        // when the new primary answers "Fenced".
                        if let Err(e) = self.raft().shutdown().await {
                            tracing::warn!(error = %e, "stopping the old lineage's Raft");
                        }
                        tracing::warn!(path = %path, by = notice.by, "replaced by a forced promotion; diverged writes exported; rejoin with a token made on the primary (`tandem token --rejoin ID` there, then `tandem rejoin --rejoin-token`)");
                        self.roles.set_diverged_export(path);
                    }
                    Err(e) => tracing::error!(error = %e, "could not export diverged writes"),
                }
            }
        }
    }

    /// Writes the entries after `forked_at` in the local log to
    /// `DIR/diverged-<epoch>-<ms>.jsonl`; returns the path.
    async fn export_diverged(
        &self,
        forked_at: Option<u64>,
        epoch: u64,
    ) -> Result<String, NodeError> {
        let first = forked_at.map_or(1, |f| f + 1);
        let reader = self.engine().log_reader.clone();
        let path = self
            .dir
            .root()
            .join(format!("diverged-{epoch}-{}.jsonl", now_ms()));
        let p = path.clone();
        let count = tokio::task::spawn_blocking(move || -> Result<usize, String> {
            use std::io::Write;
            let entries = reader.entries_from(first, usize::MAX).map_err(|e| e.to_string())?;
            let mut out = std::fs::File::create(&p).map_err(|e| e.to_string())?;
            let mut n = 0;
            for e in entries {
                let Some(req) = e.request else { continue };
                let line = json!({ "index": e.index, "term": e.term, "leader": e.leader_node, "request": format!("{req:?}") });
                writeln!(out, "{line}").map_err(|e| e.to_string())?;
                n += 1;
            }
            out.sync_all().map_err(|e| e.to_string())?;
            Ok(n)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
        .map_err(NodeError::Internal)?;
        tracing::warn!(entries = count, path = %path.display(), "diverged export written");
        Ok(path.display().to_string())
    }
}

async fn install_and_elect(
    node: &Node,
    engine: &crate::node::Engine,
    meta: tandem_storage::SnapshotMeta,
    path: &std::path::Path,
) -> Result<(), NodeError> {
    let internal = |e: &dyn std::fmt::Display| NodeError::Internal(format!("reset: {e}"));
    let last = meta
        .last_log_id
        .ok_or_else(|| NodeError::Internal("reset snapshot has no last log id".into()))?;
    let vote = openraft::Vote::new_committed(last.leader_id.term, last.leader_id.node_id);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| internal(&e))?;
    engine
        .raft
        .install_full_snapshot(
            vote,
            openraft::Snapshot {
                meta,
                snapshot: file,
            },
        )
        .await
        .map_err(|e| internal(&e))?;
    engine
        .raft
        .trigger()
        .elect(false)
        .await
        .map_err(|e| internal(&e))?;
    // The installed vote may already name this node (it proposed the last
    // entry), making it leader of the old term for a moment; wait for the
    // leadership the election wins, in a later term.
    let me = node.cfg.node_id;
    let old_term = last.leader_id.term;
    engine
        .raft
        .wait(Some(ELECT_WAIT))
        .metrics(
            move |m| {
                m.state == openraft::ServerState::Leader
                    && m.current_leader == Some(me)
                    && m.current_term > old_term
            },
            "leader of its own lineage",
        )
        .await
        .map_err(|e| internal(&e))?;
    let _ = std::fs::remove_file(path);
    Ok(())
}
