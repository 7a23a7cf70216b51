//! The role computation over live metrics (`compute_role` gathers the
//! facts, `rules::role_of` decides), the write gate, the replicated
//! history and the facts about peers, as `impl Node`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Instant as _, ServerState};
use tandem_storage::{EpochRecord, NodeKind, Request, Response};

use super::rules::{role_of, RoleFacts};
use super::state::{HistoryEvent, PeerFacts, Role};
use crate::node::{Node, NodeError};
use crate::settings::Settings;
use crate::util::now_ms;

/// How often [`Node::settle_primary`] looks at the role again.
const SETTLE_POLL: Duration = Duration::from_millis(3);

impl Node {
    /// Notes an epoch a member showed; a higher one than ours fences us
    /// until we have applied it, once the role manager has checked it
    /// (a primary that a quorum still follows dismisses it).
    pub fn saw_epoch(&self, epoch: u64) {
        self.roles.fence.saw_epoch(epoch);
    }

    /// The applied epoch record.
    pub fn epoch(&self) -> EpochRecord {
        self.reader().epoch()
    }

    /// The replicated settings (defaults when none were ever written).
    pub fn settings(&self) -> Settings {
        Settings::parse(self.reader().settings().map(|s| s.settings_json).as_deref())
    }

    /// An essential task died (see [`crate::supervise`]): this node stops
    /// leading for good — it stands for no election, releases its shared
    /// IPs for the rest of the process and hands leadership to an
    /// up-to-date appliance — and `/health` and the status say so until it
    /// is restarted.
    pub fn essential_task_died(self: &Arc<Self>, task: &'static str, why: String) {
        if !self.supervision.record(task, why.clone()) {
            return;
        }
        tracing::error!(task, %why, "an essential task died: this node stops leading; restart it");
        self.raft().runtime_config().elect(false);
        let node = self.clone();
        tokio::spawn(async move {
            if let Some(h) = node.shared_ips.get() {
                h.release_for_shutdown().await;
            }
            crate::hand_over(&node).await;
        });
    }

    /// Computes the role from Raft metrics and the applied epoch: gathers
    /// the [`RoleFacts`] and applies [`role_of`].
    pub fn compute_role(&self) -> (Role, bool) {
        let m = self.metrics();
        let ep = self.epoch();
        let me = self.cfg.node_id;
        let leader = m.state == ServerState::Leader && m.current_leader == Some(me);
        let facts = RoleFacts {
            me,
            kind: self.cfg.kind,
            members: m.membership_config.membership().nodes().count(),
            leader,
            lease_left: self.quorum_lease_left(&m),
            epoch: ep.epoch,
            epoch_primary: ep.primary,
            forced: ep.forced,
            highest_seen_epoch: self.roles.fence.highest(),
            refused_as_member: self.roles.fence.notice().is_some(),
            paused: leader && self.was_paused(&m),
            essential_task_died: self.supervision.any(),
            stood_down: self
                .roles
                .stood_down
                .load(std::sync::atomic::Ordering::SeqCst),
        };
        let (role, lease_valid) = role_of(&facts);
        if leader && role != Role::Primary {
            tracing::debug!(?facts, "leader is not primary");
        }
        (role, lease_valid)
    }

    /// How long this node may go on acting as primary without hearing from
    /// anyone: until its leader lease runs out where peers vote, half the
    /// primary timeout where it is its only voter (pair only, or alone after
    /// a forced promotion: a backup takes over only after a whole primary
    /// timeout). What the shared-IP guard is told on every tick.
    pub fn lease_remaining(&self) -> Duration {
        self.quorum_lease_left(&self.metrics())
            .unwrap_or(self.lease_timing().primary_timeout / 2)
    }

    /// What is left of the leader lease a quorum of voters gave (zero when
    /// none or expired); `None` where this node is its only voter, its own
    /// quorum (pair only: the backup is a learner and does not vote).
    pub(super) fn quorum_lease_left(
        &self,
        m: &openraft::RaftMetrics<tandem_storage::TypeConfig>,
    ) -> Option<Duration> {
        if m.membership_config
            .membership()
            .voter_ids()
            .eq([self.cfg.node_id])
        {
            return None;
        }
        Some(m.last_quorum_acked.as_ref().map_or(Duration::ZERO, |t| {
            self.lease_timing().lease.saturating_sub(t.elapsed())
        }))
    }

    /// Whether this node must not act as primary because its process was
    /// paused longer than the primary timeout (a backup may have taken over
    /// meanwhile): until a peer acknowledges a heartbeat sent after the
    /// resume, or one more primary timeout passes without any peer
    /// answering (so no peer can have promoted itself and reached us).
    pub(super) fn was_paused(&self, m: &openraft::RaftMetrics<tandem_storage::TypeConfig>) -> bool {
        let i = self.roles.lock();
        if i.last_tick.elapsed() > self.lease_timing().primary_timeout {
            // The role manager itself has not run: paused right now.
            return true;
        }
        let Some(resumed) = i.resumed_at else {
            return false;
        };
        drop(i);
        if resumed.elapsed() > self.timing().primary_timeout * 2 {
            return false;
        }
        let acked_since = m
            .heartbeat
            .as_ref()
            .is_some_and(|h| h.values().flatten().any(|t| **t >= resumed));
        !acked_since
    }

    /// The API base URL of the primary (or, failing that, the leader).
    pub fn primary_api(&self) -> Option<String> {
        let m = self.metrics();
        let me = self.cfg.node_id;
        // The epoch may still name this node just after it handed leadership
        // over; never send a client back to ourselves.
        let id = self
            .epoch()
            .primary
            .filter(|p| *p != me)
            .or(m.current_leader)
            .filter(|p| *p != me)?;
        m.membership_config
            .get_node(&id)
            .map(|n| n.api_addr.clone())
    }

    /// Whether this node may accept an application write now.
    ///
    /// # Errors
    /// [`NodeError::NotLeader`] pointing at the primary on a backup or
    /// witness; [`NodeError::Unavailable`] while becoming primary or during a
    /// swap.
    pub fn check_writable(&self) -> Result<(), NodeError> {
        self.check_writable_as(None)
    }

    /// [`Node::check_writable`] with the role computed a moment ago, if the
    /// caller has it (`None`: compute it now).
    pub(super) fn check_writable_as(
        &self,
        computed: Option<(Role, bool)>,
    ) -> Result<(), NodeError> {
        if let Some(notice) = self.roles.fence.notice() {
            let api = self
                .metrics()
                .membership_config
                .get_node(&notice.by)
                .map(|n| n.api_addr.clone());
            return Err(NodeError::NotLeader { leader_api: api });
        }
        if self.roles.paused() {
            return Err(NodeError::Unavailable(
                "a role swap or verify is in progress; retry shortly".into(),
            ));
        }
        let (role, lease) = computed.unwrap_or_else(|| self.compute_role());
        match role {
            Role::Primary => Ok(()),
            Role::Standalone if lease => Ok(()),
            _ => {
                let m = self.metrics();
                if m.current_leader == Some(self.cfg.node_id) {
                    Err(NodeError::Unavailable(
                        "this node is becoming primary (epoch not yet committed or lease not confirmed)".into(),
                    ))
                } else {
                    Err(NodeError::NotLeader {
                        leader_api: self.primary_api(),
                    })
                }
            }
        }
    }

    /// Waits, at most one primary timeout, while the role is in passing
    /// (checking every [`SETTLE_POLL`]):
    /// this appliance leads but its lease is not confirmed at this instant
    /// or its epoch entry is not committed yet (a moment of CPU or network
    /// starvation, a takeover finishing), or no leader is known (an election
    /// is running). Writes and actions asked then are served (or sent to the
    /// new primary) once that settles, instead of being refused for a
    /// hiccup. Returns at once when this node is primary, a follower of a
    /// known leader, a witness, paused for a swap, or fenced. Returns the
    /// role and lease as last computed (in the same step as the return).
    pub async fn settle_primary(&self) -> (Role, bool) {
        let deadline = Instant::now() + self.timing().primary_timeout;
        let me = self.cfg.node_id;
        loop {
            let computed = self.compute_role();
            if computed.0 == Role::Primary
                || Instant::now() >= deadline
                || self.cfg.kind == NodeKind::Witness
                || self.roles.paused()
                || self.roles.fence.notice().is_some()
            {
                return computed;
            }
            let m = self.metrics();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(me);
            let members = m.membership_config.membership().nodes().count();
            if !(leading || m.current_leader.is_none()) || members <= 1 {
                return computed;
            }
            // Short: a takeover's epoch entry commits within milliseconds,
            // and a planned swap's write gap is measured in tens of them.
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// An application write: only on the primary, then through Raft.
    ///
    /// # Errors
    /// As [`Node::check_writable`] and [`Node::write`].
    pub async fn write_app(&self, req: Request) -> Result<Response, NodeError> {
        // The role settle_primary computed last is the one checked: computing
        // it (Raft metrics, the applied epoch) twice per write was ~2 % of a
        // primary's CPU.
        let computed = self.settle_primary().await;
        self.check_writable_as(Some(computed))?;
        self.disk.check()?;
        self.write(req).await
    }

    /// Appends an event to the replicated status history (leader only;
    /// failures are logged, never fatal).
    pub async fn record(&self, kind: &str, actor: &str, details: serde_json::Value) {
        self.record_at(now_ms(), kind, actor, details).await;
    }

    /// Queues a history event and returns at once; one task records the
    /// queued events in order, each with the time it was queued. For the
    /// role manager, which must not wait for a commit: it renews the
    /// shared-IP guard's lease every tick, and a commit can wait behind a
    /// snapshot dump for longer than that lease.
    pub fn record_soon(self: &Arc<Self>, kind: &str, actor: &str, details: serde_json::Value) {
        let tx = self.roles.recorder.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<HistoryEvent>();
            let node = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some((at_ms, kind, actor, details)) = rx.recv().await {
                    let Some(node) = node.upgrade() else { break };
                    node.record_at(at_ms, &kind, &actor, details).await;
                }
            });
            tx
        });
        let _ = tx.send((now_ms(), kind.to_owned(), actor.to_owned(), details));
    }

    pub(super) async fn record_at(
        &self,
        at_ms: u64,
        kind: &str,
        actor: &str,
        details: serde_json::Value,
    ) {
        let req = Request::HistoryAppend {
            at_ms,
            node: self.cfg.node_id,
            kind: kind.to_string(),
            actor: actor.to_string(),
            details_json: details.to_string(),
        };
        if let Err(e) = self.write(req).await {
            tracing::warn!(kind, error = %e, "could not record history event");
        }
    }

    /// What this node knows about each other member.
    pub fn peer_facts(&self) -> Vec<PeerFacts> {
        let m = self.metrics();
        let me = self.cfg.node_id;
        let membership = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let now = now_ms();
        let leader = m.current_leader == Some(me);
        membership
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, _)| {
                let id = *id;
                let (last_contact_ms, reachable, matched) = if leader {
                    let hb = m
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h.get(&id).cloned().flatten())
                        .map(|t| t.elapsed());
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .map(|l| l.index);
                    (
                        hb.map(|d| now.saturating_sub(d.as_millis() as u64)),
                        Some(hb.is_some_and(|d| d < self.timing().primary_timeout)),
                        matched,
                    )
                } else if m.current_leader == Some(id) {
                    let since = self.roles.since_leader_contact();
                    (
                        since.map(|d| now.saturating_sub(d.as_millis() as u64)),
                        Some(since.is_some_and(|d| d < self.timing().primary_timeout)),
                        None,
                    )
                } else {
                    (None, None, None)
                };
                let lag_entries = if leader {
                    m.last_log_index
                        .map(|l| l.saturating_sub(matched.unwrap_or(0)))
                } else {
                    None
                };
                let lag_ms = if leader {
                    self.roles.lag_ms(matched, m.last_log_index)
                } else {
                    None
                };
                PeerFacts {
                    id,
                    voter: voters.contains(&id),
                    last_contact_ms,
                    reachable,
                    lag_entries,
                    lag_ms,
                    matched,
                }
            })
            .collect()
    }

    /// Bytes of the log entries after `matched` up to the end (bounded scan).
    pub fn lag_bytes(&self, matched: Option<u64>) -> Option<u64> {
        let first = matched.map_or(1, |m| m + 1);
        let entries = self.engine().log_reader.entries_from(first, 10_000).ok()?;
        Some(
            entries
                .iter()
                .map(|e| {
                    e.request
                        .as_ref()
                        .and_then(|r| tandem_storage::encode(r).ok())
                        .map_or(16, |b| b.len() as u64)
                })
                .sum(),
        )
    }

    /// The other appliance (the one a swap hands the role to).
    pub(crate) fn other_appliance(&self) -> Option<(u64, tandem_storage::NodeInfo)> {
        let m = self.metrics();
        let me = self.cfg.node_id;
        let found = m
            .membership_config
            .membership()
            .nodes()
            .find(|(id, n)| **id != me && n.kind == NodeKind::Appliance)
            .map(|(id, n)| (*id, n.clone()));
        found
    }
}
