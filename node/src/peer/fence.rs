//! What peers say about this node's membership: the highest epoch any
//! peer has shown, and the notice of a peer that refused this node as a
//! member. The client records them as answers arrive; the role rules read
//! them. Plain data: nothing here acts on a notice.

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
    notice: Mutex<Option<FenceNotice>>,
}

impl Fence {
    /// Notes an epoch seen from a peer.
    pub fn saw_epoch(&self, epoch: u64) {
        self.highest_seen.fetch_max(epoch, Ordering::SeqCst);
    }

    /// Records a peer's refusal.
    pub fn fenced(&self, notice: FenceNotice) {
        self.saw_epoch(notice.epoch);
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
    }

    /// Highest epoch seen.
    pub fn highest(&self) -> u64 {
        self.highest_seen.load(Ordering::SeqCst)
    }
}
