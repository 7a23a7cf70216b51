//! The roles a node can have, and the role bookkeeping the node keeps
//! (`RoleState`: last computed role, leader contact, pauses, the fence):
//! shared by the role manager, the transport and the API. Knows nothing of
//! `Node`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::errors::NodeError;
use crate::peer::fence::Fence;
use crate::util::SingleFlight;

/// How often a writer waiting for an epoch raise looks again.
const RAISE_POLL: Duration = Duration::from_millis(5);

/// A node's role in the relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves users and accepts writes.
    Primary,
    /// Holds a copy, ready to take over.
    Backup,
    /// Votes and stores the log; never primary.
    Witness,
    /// Alone: no relationship.
    Standalone,
}

impl Role {
    /// The name shown everywhere.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Witness => "witness",
            Role::Standalone => "standalone",
        }
    }
}

impl From<Role> for tandem_web::RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Primary => Self::Primary,
            Role::Backup => Self::Backup,
            Role::Witness => Self::Witness,
            Role::Standalone => Self::Standalone,
        }
    }
}

/// Role bookkeeping shared by the role manager, the transport and the API.
pub struct RoleState {
    /// This node's applied epoch (what the transport sends).
    pub(super) epoch: Arc<AtomicU64>,
    /// Epochs and refusals seen from peers.
    pub fence: Arc<Fence>,
    /// Makes the role manager tick now (after an epoch change).
    pub(crate) wake: tokio::sync::Notify,
    /// Application writes are paused (swap or verify in progress).
    pub(super) paused: AtomicBool,
    /// A planned swap hands leadership over: the shared IPs are let go
    /// before the transfer and not taken again until it ends.
    pub(super) handing_over: AtomicBool,
    /// This primary stood down by a forced demotion (the `stood-down`
    /// marker in the data directory): it is never primary, raises no
    /// epoch and stands for no election until the demotion is undone.
    pub(crate) stood_down: AtomicBool,
    /// An epoch raise is running.
    pub(super) raising: SingleFlight,
    /// The engine rebuild for a new primary timeout, one at a time.
    pub(super) rebuilding: SingleFlight,
    /// The quorum round that checks an epoch a member showed.
    pub(super) checking_epoch: SingleFlight,
    /// A fence notice is being handled.
    pub(super) handling_fence: SingleFlight,
    /// History events the role manager records without waiting (see
    /// `Node::record_soon`), in order, by one task.
    pub(super) recorder: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<HistoryEvent>>,
    pub(super) inner: Mutex<RoleInner>,
}

/// A history event queued by `Node::record_soon`: `(at_ms, kind, actor,
/// details)`.
pub(super) type HistoryEvent = (u64, String, String, serde_json::Value);

pub(super) struct RoleInner {
    pub(super) role: Role,
    pub(super) lease_valid: bool,
    pub(super) primary_since_ms: Option<u64>,
    pub(super) last_leader_contact: Option<Instant>,
    /// `(last log index, when first seen)`, sampled on the leader, for lag in time.
    pub(super) samples: VecDeque<(u64, Instant)>,
    /// Leader's view of which peers answer (for peer lost / found events).
    pub(super) peers_up: BTreeMap<u64, bool>,
    pub(super) diverged_export: Option<String>,
    pub(super) last_handover: Option<Instant>,
    /// When this node last became leader (reset when it stops leading).
    pub(super) leader_since: Option<Instant>,
    /// A task waits for the first quorum acknowledgement of this leader.
    pub(super) waiting_quorum: bool,
    /// The last snapshot asked of openraft: applied index then, and when.
    pub(super) snapshot_asked: Option<(u64, Instant)>,
    /// Last time the role manager ran.
    pub(super) last_tick: Instant,
    /// Set when the process was found paused (SIGSTOP, a frozen VM) longer
    /// than the primary timeout: the time it resumed.
    pub(super) resumed_at: Option<openraft::TokioInstant>,
    /// When the role state was created (process start or reset).
    pub(super) started: Instant,
    /// Last time a witness asked for an election by itself.
    pub(super) last_witness_election: Option<Instant>,
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
            stood_down: AtomicBool::new(false),
            raising: SingleFlight::default(),
            rebuilding: SingleFlight::default(),
            checking_epoch: SingleFlight::default(),
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, RoleInner> {
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
    pub(super) fn lag_ms(&self, matched: Option<u64>, last: Option<u64>) -> Option<u64> {
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
