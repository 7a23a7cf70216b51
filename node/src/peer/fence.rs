//! What peers say about this node's membership: the highest epoch a
//! member has shown (pending until the role manager has checked it, then
//! accepted or dismissed), and the notice of a peer that refused this node
//! as a member. The transport records them as frames arrive; the role
//! rules read the accepted ones. Plain data: nothing here acts on a
//! notice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a peer refused to treat us as a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FenceKind {
    /// The peer was promoted by force after we lost contact: we are a stale
    /// former primary (or a member of its lineage).
    Forced,
    /// The relationship was broken: we are no longer a member.
    Removed,
}

/// What a peer told us when it refused our Raft traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceNotice {
    /// The peer that refused.
    pub by: u64,
    /// Its peer address.
    pub by_addr: String,
    /// Its epoch.
    pub epoch: u64,
    /// For a forced promotion: the last index of its lineage.
    pub forked_at: Option<u64>,
    /// Why.
    pub kind: FenceKind,
}

/// Epochs seen from peers and fence notices, shared with the transport.
#[derive(Default)]
pub struct Fence {
    highest_seen: AtomicU64,
    pending: AtomicU64,
    notice: Mutex<Option<FenceNotice>>,
}

impl Fence {
    /// Notes an epoch a member showed on the wire: pending until checked
    /// (see `roles::manager`): one frame must not fence a primary that a
    /// quorum still follows.
    pub fn saw_epoch(&self, epoch: u64) {
        self.pending.fetch_max(epoch, Ordering::SeqCst);
    }

    /// The highest epoch seen and not checked yet (0: none).
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    /// Accepts `epoch`: the role rules see it from now on.
    pub fn accept(&self, epoch: u64) {
        self.highest_seen.fetch_max(epoch, Ordering::SeqCst);
        let _ = self
            .pending
            .compare_exchange(epoch, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Forgets the pending `epoch` (a check showed it false), unless a
    /// higher one arrived meanwhile.
    pub fn dismiss(&self, epoch: u64) {
        let _ = self
            .pending
            .compare_exchange(epoch, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Records a peer's refusal.
    pub fn fenced(&self, notice: FenceNotice) {
        self.accept(notice.epoch);
        let mut n = crate::util::lock(&self.notice);
        if n.is_none() {
            tracing::warn!(by = notice.by, epoch = notice.epoch, kind = ?notice.kind, "a peer refused this node as a member");
            *n = Some(notice);
        }
    }

    /// The pending notice, if any.
    pub fn notice(&self) -> Option<FenceNotice> {
        crate::util::lock(&self.notice).clone()
    }

    /// Forgets the notice (after it was handled).
    pub fn clear(&self) {
        *crate::util::lock(&self.notice) = None;
        self.highest_seen.store(0, Ordering::SeqCst);
        self.pending.store(0, Ordering::SeqCst);
    }

    /// Highest epoch seen.
    pub fn highest(&self) -> u64 {
        self.highest_seen.load(Ordering::SeqCst)
    }
}
