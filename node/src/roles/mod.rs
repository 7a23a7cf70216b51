//! Roles (primary, backup, witness, standalone), epochs, and the
//! relationship actions (planned swap, sync now, verify).
//!
//! See `node/DESIGN.md` for why the rules are what they are. In short: the
//! primary is the Raft leader among appliances whose lease is valid and whose
//! epoch entry is committed; everything else follows from that, re-evaluated
//! on every tick of [`manage_roles`].

mod manager;
mod rules;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ServerState};
use serde_json::json;
use tandem_storage::{EpochRecord, NodeKind, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::node::{Node, NodeError};
use crate::peer::fence::Fence;
use crate::util::{now_ms, SingleFlight};

/// How often a writer waiting for an epoch raise looks again.
const RAISE_POLL: Duration = Duration::from_millis(5);

/// How often [`Node::settle_primary`] looks at the role again.
const SETTLE_POLL: Duration = Duration::from_millis(3);
use crate::peer::protocol::{ActionRequest, PeerRequest};
use crate::settings::Settings;

pub use manager::manage_roles;
#[cfg(test)]
use manager::snapshot_interval;
pub use rules::{role_of, RoleFacts};
pub use state::Role;

/// Role bookkeeping shared by the role manager, the transport and the API.
pub struct RoleState {
    /// This node's applied epoch (what the transport sends).
    epoch: Arc<AtomicU64>,
    /// Epochs and refusals seen from peers.
    pub fence: Arc<Fence>,
    /// Makes the role manager tick now (after an epoch change).
    wake: tokio::sync::Notify,
    /// Application writes are paused (swap or verify in progress).
    paused: AtomicBool,
    /// A planned swap hands leadership over: the shared IPs are let go
    /// before the transfer and not taken again until it ends.
    handing_over: AtomicBool,
    /// An epoch raise is running.
    raising: SingleFlight,
    /// A fence notice is being handled.
    handling_fence: SingleFlight,
    /// History events the role manager records without waiting (see
    /// `Node::record_soon`), in order, by one task.
    recorder: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<HistoryEvent>>,
    inner: Mutex<RoleInner>,
}

/// A history event queued by `Node::record_soon`: `(at_ms, kind, actor,
/// details)`.
type HistoryEvent = (u64, String, String, serde_json::Value);

struct RoleInner {
    role: Role,
    lease_valid: bool,
    primary_since_ms: Option<u64>,
    last_leader_contact: Option<Instant>,
    /// `(last log index, when first seen)`, sampled on the leader, for lag in time.
    samples: VecDeque<(u64, Instant)>,
    /// Leader's view of which peers answer (for peer lost / found events).
    peers_up: BTreeMap<u64, bool>,
    diverged_export: Option<String>,
    last_handover: Option<Instant>,
    /// When this node last became leader (reset when it stops leading).
    leader_since: Option<Instant>,
    /// A task waits for the first quorum acknowledgement of this leader.
    waiting_quorum: bool,
    /// The last snapshot asked of openraft: applied index then, and when.
    snapshot_asked: Option<(u64, Instant)>,
    /// Last time the role manager ran.
    last_tick: Instant,
    /// Set when the process was found paused (SIGSTOP, a frozen VM) longer
    /// than the primary timeout: the time it resumed.
    resumed_at: Option<openraft::TokioInstant>,
    /// When the role state was created (process start or reset).
    started: Instant,
    /// Last time a witness asked for an election by itself.
    last_witness_election: Option<Instant>,
}

impl RoleState {
    /// Fresh state; `epoch` is shared with the transport.
    pub fn new(epoch: Arc<AtomicU64>, fence: Arc<Fence>) -> Self {
        Self {
            epoch,
            fence,
            wake: tokio::sync::Notify::new(),
            paused: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            raising: SingleFlight::default(),
            handling_fence: SingleFlight::default(),
            recorder: std::sync::OnceLock::new(),
            inner: Mutex::new(RoleInner {
                role: Role::Backup,
                lease_valid: false,
                primary_since_ms: None,
                last_leader_contact: None,
                samples: VecDeque::new(),
                peers_up: BTreeMap::new(),
                diverged_export: None,
                last_handover: None,
                leader_since: None,
                waiting_quorum: false,
                snapshot_asked: None,
                last_tick: Instant::now(),
                resumed_at: None,
                started: Instant::now(),
                last_witness_election: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoleInner> {
        crate::util::lock(&self.inner)
    }

    /// Records that the leader just reached us (an AppendEntries arrived).
    pub fn leader_contact(&self) {
        self.lock().last_leader_contact = Some(Instant::now());
    }

    /// Time since the leader last reached us.
    pub fn since_leader_contact(&self) -> Option<Duration> {
        self.lock().last_leader_contact.map(|t| t.elapsed())
    }

    /// Role and lease as of the last tick.
    pub fn current(&self) -> (Role, bool, Option<u64>) {
        let i = self.lock();
        (i.role, i.lease_valid, i.primary_since_ms)
    }

    /// Where this node exported the writes it never replicated, if it did.
    pub fn diverged_export(&self) -> Option<String> {
        self.lock().diverged_export.clone()
    }

    pub(crate) fn set_diverged_export(&self, path: String) {
        self.lock().diverged_export = Some(path);
    }

    pub(crate) fn clear_diverged_export(&self) {
        self.lock().diverged_export = None;
    }

    /// Whether application writes are paused.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(crate) fn pause(&self) -> PauseGuard<'_> {
        self.paused.store(true, Ordering::SeqCst);
        PauseGuard(&self.paused)
    }

    /// Whether a planned swap is handing leadership over from this node.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::SeqCst)
    }

    pub(crate) fn hand_over(&self) -> PauseGuard<'_> {
        self.handing_over.store(true, Ordering::SeqCst);
        PauseGuard(&self.handing_over)
    }

    /// Keeps the role manager from raising the epoch while the returned
    /// flight is held (an action that writes its own epoch change, such as a
    /// forced promotion); waits, at most `limit`, for a raise under way to
    /// end.
    ///
    /// # Errors
    /// [`NodeError::Unavailable`] if a raise is still under way after `limit`.
    pub(crate) async fn hold_epoch_raises(
        &self,
        limit: Duration,
    ) -> Result<crate::util::Flight, NodeError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(f) = self.raising.claim() {
                return Ok(f);
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Unavailable(
                    "an epoch raise is under way; try again".into(),
                ));
            }
            tokio::time::sleep(RAISE_POLL).await;
        }
    }

    /// Time since `index` was first the leader's last log index: how old the
    /// oldest entry a follower at `matched` is missing is.
    fn lag_ms(&self, matched: Option<u64>, last: Option<u64>) -> Option<u64> {
        let last = last?;
        if matched.is_some_and(|m| m >= last) {
            return Some(0);
        }
        let first_missing = matched.map_or(0, |m| m + 1);
        let i = self.lock();
        i.samples
            .iter()
            .find(|(idx, _)| *idx >= first_missing)
            .map(|(_, t)| t.elapsed().as_millis() as u64)
    }
}

/// Clears its flag when a swap or verify ends, however it ends (re-opens
/// writes; lets the shared IPs be taken again).
pub(crate) struct PauseGuard<'a>(&'a AtomicBool);

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Facts about one other member, as this node sees them.
#[derive(Debug, Clone)]
pub struct PeerFacts {
    /// Node id.
    pub id: u64,
    /// Whether it votes.
    pub voter: bool,
    /// Last contact, ms since the Unix epoch, when known.
    pub last_contact_ms: Option<u64>,
    /// Whether it answered within the primary timeout (leader's view), when known.
    pub reachable: Option<bool>,
    /// Entries it lacks (leader's view).
    pub lag_entries: Option<u64>,
    /// Age of the oldest entry it lacks (leader's view).
    pub lag_ms: Option<u64>,
    /// Matched log index (leader's view).
    pub matched: Option<u64>,
}

impl Node {
    /// Notes an epoch seen from a peer; a higher one than ours fences us
    /// until we have applied it.
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
            .unwrap_or(self.timing.primary_timeout / 2)
    }

    /// What is left of the leader lease a quorum of voters gave (zero when
    /// none or expired); `None` where this node is its only voter, its own
    /// quorum (pair only: the backup is a learner and does not vote).
    fn quorum_lease_left(
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
            self.timing.lease.saturating_sub(t.elapsed())
        }))
    }

    /// Whether this node must not act as primary because its process was
    /// paused longer than the primary timeout (a backup may have taken over
    /// meanwhile): until a peer acknowledges a heartbeat sent after the
    /// resume, or one more primary timeout passes without any peer
    /// answering (so no peer can have promoted itself and reached us).
    fn was_paused(&self, m: &openraft::RaftMetrics<tandem_storage::TypeConfig>) -> bool {
        let i = self.roles.lock();
        if i.last_tick.elapsed() > self.timing.primary_timeout {
            // The role manager itself has not run: paused right now.
            return true;
        }
        let Some(resumed) = i.resumed_at else {
            return false;
        };
        drop(i);
        if resumed.elapsed() > self.timing.primary_timeout * 2 {
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
    fn check_writable_as(&self, computed: Option<(Role, bool)>) -> Result<(), NodeError> {
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
        let deadline = Instant::now() + self.timing.primary_timeout;
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

    async fn record_at(&self, at_ms: u64, kind: &str, actor: &str, details: serde_json::Value) {
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
                        Some(hb.is_some_and(|d| d < self.timing.primary_timeout)),
                        matched,
                    )
                } else if m.current_leader == Some(id) {
                    let since = self.roles.since_leader_contact();
                    (
                        since.map(|d| now.saturating_sub(d.as_millis() as u64)),
                        Some(since.is_some_and(|d| d < self.timing.primary_timeout)),
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

#[cfg(test)]
mod tests {
    use super::snapshot_interval;

    #[test]
    fn snapshot_interval_follows_the_state_size_within_bounds() {
        assert_eq!(snapshot_interval(10_000, 0), 10_000, "no snapshot yet");
        assert_eq!(snapshot_interval(10_000, 3_000), 10_000);
        assert_eq!(snapshot_interval(10_000, 100_000), 100_000);
        assert_eq!(snapshot_interval(10_000, 10_000_000), 160_000, "capped");
        assert_eq!(snapshot_interval(0, 0), 1);
    }
}
