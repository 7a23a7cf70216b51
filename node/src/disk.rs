//! The free-space reserve of the data directory's filesystem.
//!
//! Application writes (configuration, sessions) are refused while the
//! filesystem holding the data directory has less than the reserve
//! (`tuning.min_free_mb`) available: the client gets a clear 507 and
//! nothing changes. Control writes (role changes, epochs, the status
//! history, admin actions) and replication are not refused: they are small
//! and use the reserve, so a full disk never blocks a failover or a swap.
//!
//! Without the reserve the first write to find the disk full would fail in
//! the Raft log, and openraft stops Raft on a node whose log cannot be
//! written (nothing acknowledged is lost, but the node leaves the quorum
//! until restarted). A follower whose disk fills stops that way; the
//! leader cannot see a follower's disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::node::NodeError;

/// How long a free-space reading is reused: at the benchmark's full rate a
/// node writes well under 1 MiB in this time, far below any useful reserve.
const RECHECK_MS: u64 = 200;

const MIB: u64 = 1024 * 1024;

/// Free space of the data directory's filesystem, read at most every
/// [`RECHECK_MS`], against the reserve.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    started: Instant,
    /// Milliseconds after `started` of the last reading, plus one (0: none).
    read_at: AtomicU64,
    /// Bytes available to the daemon at the last reading (`u64::MAX`: that
    /// reading failed).
    free: AtomicU64,
}

impl DiskGuard {
    /// A guard of `dir`'s filesystem with a reserve of `min_free_mb` MiB
    /// (0 turns the check off).
    pub fn new(dir: PathBuf, min_free_mb: u64) -> Self {
        Self {
            dir,
            min_free: min_free_mb.saturating_mul(MIB),
            started: Instant::now(),
            read_at: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
        }
    }

    /// Bytes available on the data directory's filesystem (to an
    /// unprivileged user: root's reserved blocks are not counted), read
    /// now (and kept for [`DiskGuard::free`]). `None` if the filesystem
    /// cannot be asked.
    fn free_now(&self) -> Option<u64> {
        match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(s) => {
                // Both are u64 here, narrower on 32-bit targets.
                #[allow(clippy::unnecessary_cast)]
                let free = (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64);
                self.free.store(free, Ordering::Relaxed);
                Some(free)
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free space of the data directory");
                self.free.store(u64::MAX, Ordering::Relaxed);
                None
            }
        }
    }

    /// Bytes available, read at most every [`RECHECK_MS`]; `None` if the
    /// filesystem cannot be asked.
    pub fn free(&self) -> Option<u64> {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.read_at.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= RECHECK_MS {
            self.read_at.store(now, Ordering::Relaxed);
            return self.free_now();
        }
        Some(self.free.load(Ordering::Relaxed)).filter(|&f| f != u64::MAX)
    }

    /// The reserve in bytes (0: no check).
    pub fn reserve(&self) -> u64 {
        self.min_free
    }

    /// Ok when an application write may go ahead: the filesystem has at
    /// least the reserve available.
    ///
    /// # Errors
    /// [`NodeError::InsufficientStorage`] below the reserve.
    pub fn check(&self) -> Result<(), NodeError> {
        if self.min_free == 0 {
            return Ok(());
        }
        // A filesystem that cannot be asked does not stop writes: the log's
        // own error handling still applies.
        let free = self.free().unwrap_or(u64::MAX);
        if free >= self.min_free {
            return Ok(());
        }
        Err(NodeError::InsufficientStorage(format!(
            "only {:.1} MiB free on the filesystem of {} (application writes need at least \
             {} MiB free, tuning.min_free_mb); free space there, then retry",
            free as f64 / MIB as f64,
            self.dir.display(),
            self.min_free / MIB
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_zero_allows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let guard = DiskGuard::new(dir.path().to_path_buf(), 0);
        assert!(guard.check().is_ok());
        let free = DiskGuard::new(dir.path().to_path_buf(), 1)
            .free_now()
            .expect("statvfs of a temp dir");
        assert!(free > 0);
        // More than the filesystem has: refused, with a message that names
        // the directory and the reserve.
        let huge = free / MIB + 1024 * 1024;
        let guard = DiskGuard::new(dir.path().to_path_buf(), huge);
        match guard.check() {
            Err(NodeError::InsufficientStorage(m)) => {
                assert!(m.contains(&dir.path().display().to_string()), "{m}");
                assert!(m.contains(&format!("at least {huge} MiB")), "{m}");
            }
            other => panic!("expected InsufficientStorage, got {other:?}"),
        }
        // A reserve below what is free: allowed.
        let guard = DiskGuard::new(dir.path().to_path_buf(), 1);
        assert!(guard.check().is_ok());
    }
}
