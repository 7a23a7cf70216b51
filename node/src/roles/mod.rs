//! Roles (primary, backup, witness, standalone), epochs, and the
//! relationship actions (planned swap, sync now, verify).
//!
//! See `node/DESIGN.md` for why the rules are what they are. In short: the
//! primary is the Raft leader among appliances whose lease is valid and whose
//! epoch entry is committed; everything else follows from that, re-evaluated
//! on every tick of [`manage_roles`].

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
use tandem_web::{SwapOutcome, SwapRequest, SyncReport, VerifyReport};
use tokio_util::sync::CancellationToken;

use crate::node::{Node, NodeError};
use crate::peer::fence::Fence;
use crate::util::{now_ms, SingleFlight};

/// How often [`Node::settle_primary`] looks at the role again.
const SETTLE_POLL: Duration = Duration::from_millis(3);
use crate::peer::protocol::{ActionRequest, PeerRequest, PeerResponse};
use crate::settings::Settings;

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
            tokio::time::sleep(Duration::from_millis(5)).await;
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
    fn other_appliance(&self) -> Option<(u64, tandem_storage::NodeInfo)> {
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

    /// *Become primary* / *Become backup*, from either side.
    ///
    /// # Errors
    /// [`NodeError::Refused`] with the reason when the swap cannot be done;
    /// nothing changes then.
    pub async fn swap(&self, req: SwapRequest, actor: &str) -> Result<SwapOutcome, NodeError> {
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
                let (to, _) = self.other_appliance().ok_or_else(|| {
                    NodeError::Refused("there is no backup appliance to swap with".into())
                })?;
                self.swap_to(to, pull_sync, actor).await
            }
            Role::Backup => {
                let ep = self.epoch();
                let primary = ep
                    .primary
                    .ok_or_else(|| NodeError::Refused("there is no primary to swap with".into()))?;
                let action = ActionRequest::SwapTo {
                    to: self.cfg.node_id,
                    pull_sync,
                    actor: actor.to_string(),
                };
                let text = self.ask_primary(primary, action).await?;
                serde_json::from_str(&text)
                    .map_err(|e| NodeError::Internal(format!("bad swap answer: {e}")))
            }
            Role::Witness => Err(NodeError::Refused("a witness is never primary".into())),
            Role::Standalone => Err(NodeError::Refused(
                "this node has no relationship to swap roles in".into(),
            )),
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
            .ok_or_else(|| NodeError::Refused(format!("primary {primary} is not a member")))?;
        match self
            .network
            .call(
                primary,
                &addr,
                PeerRequest::Action(action),
                Duration::from_secs(120),
            )
            .await
        {
            Ok(PeerResponse::Action(Ok(text))) => Ok(text),
            Ok(PeerResponse::Action(Err(reason))) => Err(NodeError::Refused(reason)),
            Ok(other) => Err(NodeError::Internal(format!("unexpected answer {other:?}"))),
            Err(e) => Err(NodeError::Refused(format!(
                "the primary cannot be contacted ({e}); a forced promotion is needed"
            ))),
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
                    return Err("only the primary may remove this node".into());
                }
                self.become_standalone_on_notice(actor)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok("{}".into());
            }
        }
        let rejoin_here =
            matches!(action, ActionRequest::Rejoin { .. }) && role == Role::Standalone;
        if role != Role::Primary && !rejoin_here {
            return Err("this node is not the primary".into());
        }
        let text = match action {
            ActionRequest::Break { actor } => serde_json::to_string(
                &self
                    .break_relationship(&actor)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            ActionRequest::Rejoin {
                info,
                diverged_export,
                actor,
            } => {
                return self
                    .accept_rejoin(info, from, diverged_export, &actor)
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
                    .map_err(|e| e.to_string())?,
            ),
            ActionRequest::Sync { verify, actor } => serde_json::to_string(
                &self
                    .sync_now(verify, &actor)
                    .await
                    .map_err(|e| e.to_string())?,
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
            .wait(Some(self.timing.primary_timeout))
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
        acked.map(|_| ()).map_err(|_| {
            NodeError::Refused(format!(
                "node {peer} cannot be contacted (no answer to a heartbeat within {} ms); a planned swap needs it (use force)",
                self.timing.primary_timeout.as_millis()
            ))
        })
    }

    /// Waits (bounded) until `peer` holds every entry this leader has.
    async fn wait_caught_up(&self, peer: u64, limit: Duration) -> Result<u64, NodeError> {
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
                return Err(NodeError::Refused(format!(
                    "node {peer} did not catch up within {} s (it has {matched} of {last})",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Planned swap on the primary: pause writes, make sure `to` holds every
    /// committed entry, hand leadership over, and wait for `to` to raise the epoch.
    async fn swap_to(
        &self,
        to: u64,
        pull_sync: bool,
        actor: &str,
    ) -> Result<SwapOutcome, NodeError> {
        let started = Instant::now();
        let before = self.epoch();
        let reachable = self
            .peer_facts()
            .iter()
            .any(|p| p.id == to && p.reachable == Some(true));
        if !reachable {
            return Err(NodeError::Refused(format!(
                "node {to} cannot be contacted; a planned swap needs it (use force)"
            )));
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
        self.wait_caught_up(to, self.timing.primary_timeout).await?;
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
        self.wait_caught_up(to, self.timing.primary_timeout).await?;
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
        let deadline = Instant::now() + Duration::from_secs(10);
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
                });
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Unavailable(format!(
                    "leadership was handed to node {to} but it has not become primary within 10 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// *Sync now*: make the backup hold every committed entry now (openraft
    /// sends a snapshot when the log it needs was compacted); with `verify`,
    /// compare state digests at one applied index.
    ///
    /// # Errors
    /// [`NodeError::Refused`] when there is no backup or it cannot be reached.
    pub async fn sync(&self, verify: bool, actor: &str) -> Result<SyncReport, NodeError> {
        self.settle_primary().await;
        match self.compute_role().0 {
            Role::Primary => self.sync_now(verify, actor).await,
            Role::Backup => {
                let primary = self
                    .epoch()
                    .primary
                    .ok_or_else(|| NodeError::Refused("there is no primary to sync from".into()))?;
                let text = self
                    .ask_primary(
                        primary,
                        ActionRequest::Sync {
                            verify,
                            actor: actor.to_string(),
                        },
                    )
                    .await?;
                serde_json::from_str(&text)
                    .map_err(|e| NodeError::Internal(format!("bad sync answer: {e}")))
            }
            Role::Witness => Err(NodeError::Refused(
                "sync runs between the primary and its backup".into(),
            )),
            Role::Standalone => Err(NodeError::Refused("this node has no backup to sync".into())),
        }
    }

    async fn sync_now(&self, verify: bool, actor: &str) -> Result<SyncReport, NodeError> {
        let started = Instant::now();
        let (backup, _) = self
            .other_appliance()
            .ok_or_else(|| NodeError::Refused("there is no backup appliance".into()))?;
        let facts = self.peer_facts();
        let fact = facts.iter().find(|p| p.id == backup);
        if fact.and_then(|f| f.reachable) != Some(true) {
            return Err(NodeError::Refused(format!(
                "backup {backup} cannot be contacted"
            )));
        }
        let from = fact.and_then(|f| f.matched);
        let m = self.metrics();
        let purged = m.purged.map(|l| l.index);
        let snapshot = match (from, purged) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(f), Some(p)) => f < p,
        };
        let bytes = if snapshot {
            self.snapshot_file_size().unwrap_or(0)
        } else {
            self.lag_bytes(from).unwrap_or(0)
        };
        let _ = self.raft().trigger().heartbeat().await;
        let to = self
            .wait_caught_up(backup, Duration::from_secs(120))
            .await?;
        let mut report = SyncReport {
            backup,
            from_index: from,
            to_index: to,
            entries: to.saturating_sub(from.unwrap_or(0)),
            bytes,
            snapshot,
            duration_ms: started.elapsed().as_millis() as u64,
            verify: None,
        };
        if verify {
            report.verify = Some(self.verify_with(backup).await?);
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        self.record(
            "sync",
            actor,
            json!({
                "backup": backup, "from_index": report.from_index, "to_index": report.to_index,
                "entries": report.entries, "bytes": report.bytes, "snapshot": report.snapshot,
                "duration_ms": report.duration_ms,
            }),
        )
        .await;
        if let Some(v) = &report.verify {
            let kind = if v.matches {
                "verify"
            } else {
                "verify_mismatch"
            };
            self.record(
                kind,
                actor,
                json!({ "backup": backup, "index": v.index, "local": v.local_digest, "peer": v.peer_digest, "matches": v.matches }),
            )
            .await;
        }
        Ok(report)
    }

    fn snapshot_file_size(&self) -> Option<u64> {
        let dir = std::fs::read_dir(&self.snapshot_dir).ok()?;
        dir.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .max()
    }

    /// Pauses writes, lets everything apply here and on `backup`, and
    /// compares digests at that one applied index.
    async fn verify_with(&self, backup: u64) -> Result<VerifyReport, NodeError> {
        let _pause = self.roles.pause();
        // Let proposals already in flight commit and apply.
        let deadline = Instant::now() + Duration::from_secs(10);
        let index = loop {
            let m = self.metrics();
            let last = m.last_log_index.unwrap_or(0);
            if m.last_applied.map(|l| l.index) == Some(last) {
                break last;
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Unavailable(
                    "writes did not settle for verify".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        self.wait_caught_up(backup, Duration::from_secs(30)).await?;
        let local = self
            .digest_at(index)
            .await
            .map_err(NodeError::Unavailable)?;
        let addr = self
            .metrics()
            .membership_config
            .get_node(&backup)
            .map(|n| n.peer_addr.clone())
            .ok_or_else(|| NodeError::Refused(format!("node {backup} is not a member")))?;
        let peer = match self
            .network
            .call(
                backup,
                &addr,
                PeerRequest::Digest { at_index: index },
                Duration::from_secs(60),
            )
            .await
        {
            Ok(PeerResponse::Digest(Ok(d))) => d,
            Ok(PeerResponse::Digest(Err(e))) => {
                return Err(NodeError::Unavailable(format!("backup digest: {e}")))
            }
            Ok(other) => return Err(NodeError::Internal(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(NodeError::Refused(e.to_string())),
        };
        Ok(VerifyReport {
            index,
            matches: local.1 == peer.1 && local.0 == peer.0,
            local_digest: local.1,
            peer_digest: peer.1,
        })
    }

    /// `(index, digest)` of the state once exactly `at_index` is applied here.
    pub async fn digest_at(&self, at_index: u64) -> Result<(u64, String), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let applied = self.reader().applied_index().unwrap_or(0);
            if applied == at_index {
                break;
            }
            if applied > at_index {
                return Err(format!(
                    "applied index {applied} is already past {at_index}"
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("applied index {applied} did not reach {at_index}"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let reader = self.reader();
        let (index, digest) = tokio::task::spawn_blocking(move || reader.try_digest())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        match index {
            Some(i) if i == at_index => Ok((i, digest)),
            other => Err(format!(
                "state moved to {other:?} while digesting {at_index}"
            )),
        }
    }
}

/// Keeps roles up to date: raises the epoch on a new leader appliance, makes
/// a witness leader hand over, records role changes and peers lost or found.
pub async fn manage_roles(node: Arc<Node>, stop: CancellationToken) {
    let period = (node.timing.heartbeat / 2).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Changes of leader, vote or membership are acted on at once (a new
    // leader raises its epoch, an old one lets go of the shared IPs) rather
    // than at the next tick. The engine is replaced by a reset: follow it.
    let mut engine = Arc::downgrade(&node.engine());
    let mut server = node.raft().server_metrics();
    loop {
        let current = node.engine();
        if !std::ptr::eq(engine.as_ptr(), Arc::as_ptr(&current)) {
            engine = Arc::downgrade(&current);
            server = current.raft.server_metrics();
        }
        drop(current);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => role_tick(&node).await,
            _ = node.roles.wake.notified() => role_tick(&node).await,
            r = server.changed() => {
                if r.is_err() {
                    // That Raft stopped (shutdown or reset): ticks go on.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                }
                role_tick(&node).await;
            }
        }
    }
}

/// A new leader appliance waits for a quorum to acknowledge it before it may
/// raise its epoch: wakes the role manager as soon as that happens (within a
/// primary timeout) instead of at the next tick.
fn wake_on_first_quorum_ack(node: &Arc<Node>) {
    if std::mem::replace(&mut node.roles.lock().waiting_quorum, true) {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        let judge = node.clone();
        let _ = node
            .raft()
            .wait(Some(node.timing.primary_timeout))
            .metrics(
                move |m| {
                    m.state != ServerState::Leader
                        || judge.quorum_lease_left(m).is_none_or(|d| !d.is_zero())
                },
                "a quorum acknowledges the new leader",
            )
            .await;
        node.roles.lock().waiting_quorum = false;
        node.roles.wake.notify_one();
    });
}

async fn role_tick(node: &Arc<Node>) {
    {
        let mut i = node.roles.lock();
        let gap = i.last_tick.elapsed();
        if gap > node.timing.primary_timeout {
            tracing::warn!(
                paused_ms = gap.as_millis() as u64,
                "this process was paused longer than the primary timeout; not serving as primary until a peer confirms"
            );
            i.resumed_at = Some(openraft::TokioInstant::now());
        }
        i.last_tick = Instant::now();
    }
    let ep = node.epoch();
    node.roles.epoch.store(ep.epoch, Ordering::SeqCst);
    let (role, lease) = node.compute_role();
    let m = node.metrics();
    let me = node.cfg.node_id;
    let leader = m.state == ServerState::Leader && m.current_leader == Some(me);
    let (old_role, raise) = {
        let mut i = node.roles.lock();
        let old = i.role;
        i.role = role;
        i.lease_valid = lease;
        if role == Role::Primary && old != Role::Primary {
            i.primary_since_ms = Some(now_ms());
        } else if role != Role::Primary && role != Role::Standalone {
            i.primary_since_ms = None;
        }
        if leader {
            if let Some(last) = m.last_log_index {
                if i.samples.back().is_none_or(|(idx, _)| *idx < last) {
                    i.samples.push_back((last, Instant::now()));
                }
            }
            while i.samples.len() > 4096 {
                i.samples.pop_front();
            }
        } else {
            i.samples.clear();
            i.leader_since = None;
            i.peers_up.clear();
        }
        let raise =
            leader && node.cfg.kind == NodeKind::Appliance && lease && ep.primary != Some(me);
        (old, raise)
    };
    // At most one raise at a time; the flight ends with its task, also
    // when that task panics.
    let raise = raise.then(|| node.roles.raising.claim()).flatten();
    if leader && !lease && node.cfg.kind == NodeKind::Appliance && ep.primary != Some(me) {
        wake_on_first_quorum_ack(node);
    }
    if old_role != role {
        tracing::info!(
            from = old_role.as_str(),
            to = role.as_str(),
            epoch = ep.epoch,
            "role changed"
        );
    }
    settings_duties(node, role, old_role, &ep);
    if let Some(flight) = raise {
        let node = node.clone();
        tokio::spawn(async move {
            raise_epoch(&node, ep).await;
            drop(flight);
            // Act on the new role at once (take the shared IPs) instead of at
            // the next tick.
            node.roles.wake.notify_one();
        });
    }
    if node.roles.fence.notice().is_some() {
        if let Some(flight) = node.roles.handling_fence.claim() {
            let node = node.clone();
            tokio::spawn(async move {
                let _flight = flight;
                node.handle_fence().await;
            });
        }
    }
    if leader && node.cfg.kind == NodeKind::Witness {
        hand_over_from_witness(node, &m).await;
    }
    if !leader && node.cfg.kind == NodeKind::Witness {
        witness_fallback_election(node).await;
    }
    if leader {
        track_peers(node);
    }
    snapshot_duty(node, &m);
    crate::failover::tick(node, role);
}

/// Entries between snapshots: `snapshot_every`, or as many as the last
/// snapshot held records when that is more (at most 16 × `snapshot_every`).
/// Each snapshot writes the whole state, so a fixed interval makes the cost
/// per write grow with the state (100,000 sessions dumped every 10,000
/// writes: ten records per write); this keeps it near one, and the log at
/// most about the size of the state.
pub fn snapshot_interval(snapshot_every: u64, last_snapshot_records: u64) -> u64 {
    let every = snapshot_every.max(1);
    last_snapshot_records.clamp(every, every.saturating_mul(16))
}

/// Asks openraft for a snapshot when the log applied since the last one
/// reached [`snapshot_interval`] (one request at a time; asked again after
/// a minute if none came of it).
fn snapshot_duty(node: &Node, m: &openraft::RaftMetrics<tandem_storage::TypeConfig>) {
    let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
    let snap = m.snapshot.as_ref().map_or(0, |l| l.index);
    let every = snapshot_interval(
        node.cfg.tuning.snapshot_every,
        node.reader().snapshot_records(),
    );
    if applied < snap.saturating_add(every) {
        return;
    }
    {
        let mut i = node.roles.lock();
        if i.snapshot_asked
            .is_some_and(|(at, when)| snap < at && when.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        i.snapshot_asked = Some((applied, Instant::now()));
    }
    tracing::debug!(applied, snap, every, "asking for a snapshot");
    // Not awaited here: under load openraft's request queue can be full for
    // a moment, and the role manager must not wait (it renews the guard).
    let raft = node.raft();
    tokio::spawn(async move {
        let _ = raft.trigger().snapshot().await;
    });
}

/// Applies the replicated settings that act locally: the bandwidth limit of
/// outgoing streams, and the shared IPs, kept on the primary only: desired state every tick, an
/// immediate release when the role is lost (demotion, lease loss, fence),
/// and the manager's events in the replicated history while primary.
fn settings_duties(node: &Arc<Node>, role: Role, old_role: Role, ep: &EpochRecord) {
    let settings = node.settings();
    node.bandwidth
        .store(settings.bandwidth_limit_bps, Ordering::Relaxed);
    let Some(h) = node.shared_ips.get() else {
        return;
    };
    let specs = crate::shared_ip::specs_for_node(&settings.shared_ips, &node.cfg.name).0;
    let hold = role == Role::Primary && !node.roles.handing_over();
    if hold {
        h.renew_lease(node.lease_remaining());
    }
    if old_role == Role::Primary && role != Role::Primary {
        let h = h.clone();
        tokio::spawn(async move {
            let report = h.release_all().await;
            tracing::info!(held = ?report.held, "role lost: shared IPs released");
        });
    }
    h.set_desired(hold, ep.epoch, specs, settings.test_ips.clone());
    let events = h.drain_events();
    for e in events {
        if hold {
            node.record_soon(
                "shared_ip",
                "tandem",
                json!({ "action": e.action, "address": e.address, "interface": e.interface,
                        "epoch": e.epoch, "ok": e.ok, "detail": e.detail }),
            );
        } else {
            tracing::info!(action = %e.action, address = %e.address, ok = e.ok, detail = %e.detail, "shared IP event");
        }
    }
}

/// The witness does not start elections on its own (so that the backup's
/// first election after the primary dies wins). If no leader has been heard
/// from a little after the longest election timeout — the backup cannot
/// win, e.g. because its log is behind the witness's — the witness stands,
/// leads just long enough to bring an appliance up to date, and hands over.
async fn witness_fallback_election(node: &Node) {
    // Just after the longest appliance election timeout: by then the backup
    // has won if it could (its log was as long as the witness's); if it
    // could not, the witness leads, brings it up to date and hands over.
    let limit = node.timing.election_max + node.timing.heartbeat;
    {
        let mut i = node.roles.lock();
        let silent = match i.last_leader_contact {
            Some(t) => t.elapsed() > limit,
            None => i.started.elapsed() > limit * 2,
        };
        if !silent || i.last_witness_election.is_some_and(|t| t.elapsed() < limit) {
            return;
        }
        i.last_witness_election = Some(Instant::now());
    }
    tracing::info!("no leader after the longest election timeout: the witness stands for election");
    let _ = node.raft().trigger().elect(false).await;
}

impl Node {
    /// One entry that raises the epoch from `expected` with this node as
    /// primary and records `kind` in the history: both or neither apply.
    pub(crate) fn epoch_change(
        &self,
        expected: u64,
        forced: bool,
        forked_at: Option<u64>,
        kind: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Request {
        let me = self.cfg.node_id;
        Request::Multi(vec![
            Request::RaiseEpoch {
                expected_epoch: expected,
                primary: me,
                forced,
                forked_at,
                at_ms: now_ms(),
            },
            Request::HistoryAppend {
                at_ms: now_ms(),
                node: me,
                kind: kind.to_string(),
                actor: actor.to_string(),
                details_json: details.to_string(),
            },
        ])
    }

    /// Tells members that were just removed (break, witness removal) so they
    /// need not wait for their next Raft message to find out.
    pub(crate) async fn notify_removed(&self, members: &[(u64, String)], actor: &str) {
        for (id, addr) in members {
            let notice = PeerRequest::Action(ActionRequest::Break {
                actor: actor.into(),
            });
            if let Err(e) = self
                .network
                .call(*id, addr, notice, Duration::from_secs(5))
                .await
            {
                tracing::info!(peer = id, error = %e, "removed member not told now; it learns at its next contact");
            }
        }
    }

    /// `(id, peer address)` of these members, from the current membership.
    pub(crate) fn peer_addresses(&self, ids: &[u64]) -> Vec<(u64, String)> {
        let m = self.metrics();
        ids.iter()
            .filter_map(|id| {
                m.membership_config
                    .get_node(id)
                    .map(|n| (*id, n.peer_addr.clone()))
            })
            .collect()
    }
}

async fn raise_epoch(node: &Node, ep: EpochRecord) {
    let me = node.cfg.node_id;
    let details = json!({
        "primary": me,
        "name": node.cfg.name,
        "previous_primary": ep.primary,
        "epoch": ep.epoch + 1,
    });
    let req = node.epoch_change(ep.epoch, false, None, "role_change", "tandem", details);
    match node.write(req).await {
        Ok(Response::Multi(_)) => {
            tracing::info!(epoch = ep.epoch + 1, "epoch raised; this node is primary")
        }
        Ok(Response::Refused { reason }) => tracing::debug!(%reason, "epoch raise refused"),
        Ok(other) => tracing::warn!(?other, "unexpected answer to epoch raise"),
        Err(e) => tracing::debug!(error = %e, "epoch raise failed"),
    }
}

async fn hand_over_from_witness(
    node: &Node,
    m: &openraft::RaftMetrics<tandem_storage::TypeConfig>,
) {
    // One transfer at a time: give a triggered transfer a few heartbeats to
    // complete before trying again (until then, no rate limit: the check
    // below is cheap and the hand-over should happen on the first tick an
    // appliance has caught up).
    if node
        .roles
        .lock()
        .last_handover
        .is_some_and(|t| t.elapsed() < node.timing.heartbeat * 3)
    {
        return;
    }
    let Some(last) = m.last_log_index else { return };
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let best = voters
        .iter()
        .filter(|id| {
            membership
                .get_node(id)
                .is_some_and(|n| n.kind == NodeKind::Appliance)
        })
        .filter_map(|id| {
            let matched = m.replication.as_ref()?.get(id).cloned().flatten()?.index;
            Some((*id, matched))
        })
        .filter(|(_, matched)| *matched >= last)
        .max_by_key(|(_, matched)| *matched);
    if let Some((to, _)) = best {
        tracing::info!(
            to,
            "witness is leader: handing leadership to a caught-up appliance"
        );
        node.roles.lock().last_handover = Some(Instant::now());
        let _ = node.raft().trigger().transfer_leader(to).await;
    }
}

fn track_peers(node: &Arc<Node>) {
    {
        // A new leader has no heartbeat answers yet: judge reachability only
        // once it has led for a whole primary timeout.
        let mut i = node.roles.lock();
        let since = *i.leader_since.get_or_insert_with(Instant::now);
        if since.elapsed() < node.timing.primary_timeout {
            return;
        }
    }
    let facts = node.peer_facts();
    let mut changes = Vec::new();
    {
        let mut i = node.roles.lock();
        for f in &facts {
            let up = f.reachable == Some(true);
            // The first observation after becoming leader is the baseline:
            // no event for it.
            if let Some(was) = i.peers_up.insert(f.id, up) {
                if was != up {
                    changes.push((f.id, up));
                }
            }
        }
        i.peers_up.retain(|id, _| facts.iter().any(|f| f.id == *id));
    }
    for (id, up) in changes {
        let name = node
            .metrics()
            .membership_config
            .get_node(&id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let kind = if up { "peer_found" } else { "peer_lost" };
        tracing::info!(peer = id, %name, event = kind, "peer reachability changed");
        node.record_soon(kind, "tandem", json!({ "peer": id, "name": name }));
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
