//! The planned swap (asked of either side; the forced one is in `reset`),
//! the actions peers ask of this node over the peer link, and the
//! hand-over of leadership.

use std::time::{Duration, Instant};

use openraft::Instant as _;
use serde_json::json;
use tandem_storage::EpochRecord;
use tandem_web::{SwapOutcome, SwapRequest, SyncReport};

use crate::errors::{Action, Peer, Refusal, Remedy};
use crate::node::{Node, NodeError};
use crate::peer::protocol::{ActionRequest, PeerRequest, PeerResponse};
use crate::roles::Role;

/// Bound on the primary's answer to an action asked of it (a swap with a pull sync can take long).
const PRIMARY_ACTION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the catch-up wait looks.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);
/// How long a planned swap waits for the new primary to raise the epoch.
const HAND_OVER_LIMIT: Duration = Duration::from_secs(10);
/// How often a planned swap looks whether the new primary raised the epoch.
const HAND_OVER_POLL: Duration = Duration::from_millis(2);

/// The outcome of a role change this node waited for rather than made (an
/// election won, a demotion undone): not forced, no sync, no demotion.
pub(super) fn followed_outcome(
    previous_primary: Option<u64>,
    new_primary: u64,
    epoch: u64,
    started: Instant,
) -> SwapOutcome {
    SwapOutcome {
        previous_primary,
        new_primary,
        epoch,
        forced: false,
        pull_sync: false,
        duration_ms: started.elapsed().as_millis() as u64,
        sync: None,
        demoted: false,
        warning: None,
    }
}

impl Node {
    /// *Become primary* / *Become backup*, from either side.
    ///
    /// # Errors
    /// [`NodeError::Refused`] with the reason when the swap cannot be done;
    /// nothing changes then.
    pub async fn swap(&self, req: SwapRequest, actor: &str) -> Result<SwapOutcome, NodeError> {
        if self.stood_down() {
            return self.undo_demotion(actor).await;
        }
        if req.force {
            return self.forced_swap(actor).await;
        }
        self.planned_swap(req.pull_sync, actor).await
    }

    /// The planned swap, from either side.
    pub(crate) async fn planned_swap(
        &self,
        pull_sync: bool,
        actor: &str,
    ) -> Result<SwapOutcome, NodeError> {
        self.settle_primary().await;
        let (role, _) = self.compute_role();
        match role {
            Role::Primary => {
                let (to, _) = self
                    .other_appliance()
                    .ok_or(NodeError::Refused(Refusal::NoBackup))?;
                self.swap_to(to, pull_sync, actor).await
            }
            Role::Backup => {
                let ep = self.epoch();
                // Nobody primary (the primary stood down): ask the leader.
                let primary = ep
                    .primary
                    .or(self.metrics().current_leader)
                    .ok_or(NodeError::Refused(Refusal::NoPrimary))?;
                let action = ActionRequest::SwapTo {
                    to: self.cfg.node_id,
                    pull_sync,
                    actor: actor.to_string(),
                };
                let text = self.ask_primary(primary, action).await?;
                serde_json::from_str(&text)
                    .map_err(|e| NodeError::Internal(format!("bad swap answer: {e}")))
            }
            Role::Witness => Err(NodeError::Refused(Refusal::WitnessNeverPrimary)),
            Role::Standalone => Err(NodeError::Refused(Refusal::NoRelationship(Action::Swap))),
        }
    }

    pub(crate) async fn ask_primary(
        &self,
        primary: u64,
        action: ActionRequest,
    ) -> Result<String, NodeError> {
        let m = self.metrics();
        let addr = m
            .membership_config
            .get_node(&primary)
            .map(|n| n.peer_addr.clone())
            .ok_or(NodeError::Refused(Refusal::NotMember { node: primary }))?;
        match self
            .network
            .call(
                primary,
                &addr,
                PeerRequest::Action(action),
                PRIMARY_ACTION_TIMEOUT,
            )
            .await
        {
            Ok(PeerResponse::Action(Ok(text))) => Ok(text),
            Ok(PeerResponse::Action(Err(reason))) => {
                Err(NodeError::Refused(Refusal::ByPeer { reason }))
            }
            Ok(other) => Err(NodeError::Internal(format!("unexpected answer {other:?}"))),
            Err(e) => Err(NodeError::PeerUnreachable {
                peer: Peer::Primary(primary),
                reason: Some(e.to_string()),
                remedy: Remedy::ForcedPromotion,
            }),
        }
    }

    /// Serves an action peer `from` asked of this node (it must be the
    /// primary, except for a break notice from the primary).
    pub async fn peer_action(&self, action: ActionRequest, from: u64) -> Result<String, String> {
        if !matches!(
            action,
            ActionRequest::Break { .. } | ActionRequest::Rejoin { .. }
        ) {
            self.settle_primary().await;
        }
        let role = self.compute_role().0;
        if let ActionRequest::Break { actor } = &action {
            if role != Role::Primary {
                if self.epoch().primary != Some(from) {
                    return Err(Refusal::NotFromPrimary.to_string());
                }
                self.become_standalone_on_notice(actor)
                    .await
                    .map_err(|e| e.message())?;
                return Ok("{}".into());
            }
        }
        let rejoin_here =
            matches!(action, ActionRequest::Rejoin { .. }) && role == Role::Standalone;
        // A leader that is not the primary (it stood down, or a witness
        // leading with the primary gone) hands over to a peer that asks.
        let hand_over_here = matches!(action, ActionRequest::SwapTo { .. })
            && role != Role::Primary
            && self.epoch().primary != Some(self.cfg.node_id)
            && self.metrics().current_leader == Some(self.cfg.node_id);
        if role != Role::Primary && !rejoin_here && !hand_over_here {
            return Err(Refusal::NotPrimary.to_string());
        }
        let text = match action {
            ActionRequest::Break { actor } => serde_json::to_string(
                &self
                    .break_relationship(&actor)
                    .await
                    .map_err(|e| e.message())?,
            ),
            ActionRequest::Rejoin {
                info,
                diverged_export,
                actor,
                token,
            } => {
                return self
                    .accept_rejoin(info, from, diverged_export, &token, &actor)
                    .await
            }
            ActionRequest::SwapTo {
                to,
                pull_sync,
                actor,
            } => serde_json::to_string(
                &self
                    .swap_to(to, pull_sync, &actor)
                    .await
                    .map_err(|e| e.message())?,
            ),
            ActionRequest::RenewCertificate { csr_pem } => {
                return self.sign_peer_renewal(from, &csr_pem).await
            }
            ActionRequest::Sync { verify, actor } => serde_json::to_string(
                &self
                    .sync_now(verify, &actor)
                    .await
                    .map_err(|e| e.message())?,
            ),
        };
        text.map_err(|e| e.to_string())
    }

    /// Sends a heartbeat now and waits (one primary timeout at most) for
    /// `peer` to acknowledge it: a peer that died a moment ago is caught
    /// here, not after the writes were paused.
    async fn probe_alive(&self, peer: u64) -> Result<(), NodeError> {
        let sent = openraft::TokioInstant::now();
        let raft = self.raft();
        let _ = raft.trigger().heartbeat().await;
        let acked = raft
            .wait(Some(self.timing().primary_timeout))
            .metrics(
                move |m| {
                    m.heartbeat
                        .as_ref()
                        .and_then(|h| h.get(&peer).cloned().flatten())
                        .is_some_and(|t| *t >= sent)
                },
                "peer answers a heartbeat",
            )
            .await;
        acked.map(|_| ()).map_err(|_| NodeError::PeerUnreachable {
            peer: Peer::Node(peer),
            reason: Some(format!(
                "no answer to a heartbeat within {} ms",
                self.timing().primary_timeout.as_millis()
            )),
            remedy: Remedy::UseForce,
        })
    }

    /// Waits (bounded) until `peer` holds every entry this leader has.
    pub(super) async fn wait_caught_up(
        &self,
        peer: u64,
        limit: Duration,
    ) -> Result<u64, NodeError> {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.metrics();
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&peer).cloned().flatten())
                .map_or(0, |l| l.index);
            if matched >= last {
                return Ok(last);
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Refused(Refusal::NotCaughtUp {
                    node: peer,
                    within_s: limit.as_secs(),
                    matched,
                    last,
                }));
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    /// Planned swap on the primary: pause writes, make sure `to` holds every
    /// committed entry, hand leadership over, and wait for `to` to raise the epoch.
    pub(crate) async fn swap_to(
        &self,
        to: u64,
        pull_sync: bool,
        actor: &str,
    ) -> Result<SwapOutcome, NodeError> {
        if self.in_maintenance(to) {
            return Err(NodeError::Refused(Refusal::InMaintenance {
                node: self.member_name(to),
            }));
        }
        let started = Instant::now();
        let before = self.epoch();
        let reachable = self
            .peer_facts()
            .iter()
            .any(|p| p.id == to && p.reachable == Some(true));
        if !reachable {
            return Err(NodeError::PeerUnreachable {
                peer: Peer::Node(to),
                reason: None,
                remedy: Remedy::UseForce,
            });
        }
        let sync = if pull_sync {
            Some(self.sync_now(false, actor).await?)
        } else {
            None
        };
        // Before pausing anything: the backup must answer a fresh heartbeat
        // and keep up now, within one primary timeout, or the swap is
        // refused at once and writes go on.
        self.probe_alive(to).await?;
        self.wait_caught_up(to, self.timing().primary_timeout)
            .await?;
        let is_voter = self
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == to);
        if !is_voter {
            // Pair only: the backup is a learner; it must vote to lead. The
            // new primary demotes this node to learner afterwards.
            self.raft()
                .change_membership(openraft::ChangeMembers::AddVoterIds([to].into()), true)
                .await
                .map_err(|e| NodeError::Unavailable(format!("making node {to} a voter: {e}")))?;
        }
        let _pause = self.roles.pause();
        self.record(
            "swap",
            actor,
            json!({ "from": self.cfg.node_id, "to": to, "pull_sync": pull_sync, "epoch": before.epoch }),
        )
        .await;
        // In-flight writes (and the event above) reach the backup; new
        // writes are refused until the new primary serves.
        self.wait_caught_up(to, self.timing().primary_timeout)
            .await?;
        // The shared IPs go before leadership does, so the new primary (which
        // takes them once its epoch entry commits) never finds them here. The
        // release is final for this epoch (the manager refuses a role tick
        // that raced with it); a swap that fails lifts that, and the next
        // tick takes them back if this node is still primary.
        let _hand_over = self.roles.hand_over();
        let Some(h) = self.shared_ips.get() else {
            return self
                .hand_leadership_to(to, &before, started, pull_sync, sync)
                .await;
        };
        let report = h.release_for_hand_over().await;
        let r = if report.held.is_empty() {
            self.hand_leadership_to(to, &before, started, pull_sync, sync)
                .await
        } else {
            Err(NodeError::Unavailable(format!(
                "the shared IPs could not be released before the swap: still held {:?}",
                report.held
            )))
        };
        if r.is_err() {
            h.abandon_hand_over().await;
        }
        r
    }

    /// The end of a planned swap: leadership to `to`, then the wait for it
    /// to raise the epoch as primary.
    async fn hand_leadership_to(
        &self,
        to: u64,
        before: &EpochRecord,
        started: Instant,
        pull_sync: bool,
        sync: Option<SyncReport>,
    ) -> Result<SwapOutcome, NodeError> {
        self.raft()
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let deadline = Instant::now() + HAND_OVER_LIMIT;
        loop {
            let ep = self.epoch();
            if ep.epoch > before.epoch && ep.primary == Some(to) {
                return Ok(SwapOutcome {
                    previous_primary: before.primary,
                    new_primary: to,
                    epoch: ep.epoch,
                    forced: false,
                    pull_sync,
                    duration_ms: started.elapsed().as_millis() as u64,
                    sync,
                    demoted: false,
                    warning: None,
                });
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Unavailable(format!(
                    "leadership was handed to node {to} but it has not become primary within 10 s"
                )));
            }
            tokio::time::sleep(HAND_OVER_POLL).await;
        }
    }
}
