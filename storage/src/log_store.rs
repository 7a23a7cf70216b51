//! The Raft log and vote: implements openraft's [`RaftLogStorage`] and
//! [`RaftLogReader`]. Entries live in segment files (`segment_log`); vote,
//! committed and the purge marker in sled's `raft_meta` tree.
//!
//! Appends are acknowledged by group commit: `append` writes its entries to
//! the current segment, readable at once, and queues its callback; a single
//! flusher task syncs everything queued so far (one `fdatasync`), then
//! completes the callbacks in order. While a sync runs, new appends queue up
//! for the next one. The state machine's sled writes need no flush per
//! append: after a crash openraft re-applies the log from the state
//! machine's durable applied index (storage/DESIGN.md).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec;
use crate::error::StorageError;
use crate::keys::RaftMetaKey;
use crate::log_runs;
use crate::segment_log::{Recovery, SegmentLog};
use crate::sled_sync::SledSync;
use crate::types::{Entry, LogId, TypeConfig, Vote};

pub(crate) struct LogShared {
    db: sled::Db,
    meta: sled::Tree,
    /// The log entries (segment files beside sled).
    pub(crate) seg: Arc<SegmentLog>,
    /// The durable flush of sled (vote, purge marker).
    sled_sync: Arc<SledSync>,
    queue: Mutex<FlushQueue>,
    /// One past the highest purged index (0: nothing purged). Entries at or
    /// below it may still be in a segment that straddles the purge point, or
    /// in segments whose removal runs in the background; readers skip them.
    purged_below: Arc<AtomicU64>,
    /// Marks the store in use while the log store (or a flusher task) lives.
    _writer: Arc<crate::in_use::WriterToken>,
}

#[derive(Default)]
struct FlushQueue {
    pending: Vec<IOFlushed<TypeConfig>>,
    running: bool,
}

impl LogShared {
    /// Opens the log of the store in `dir`: its segments in `dir/`
    /// [`crate::LOG_DIR`] (cut after a torn write, interrupted purges
    /// finished), and vote, committed and purge marker in sled. A log still
    /// in sled's `log` tree (stores before the segment files) is moved into
    /// segments first.
    pub(crate) fn open(
        db: sled::Db,
        dir: &Path,
        sled_sync: Arc<SledSync>,
        writer: Arc<crate::in_use::WriterToken>,
    ) -> Result<Self, StorageError> {
        let meta = db.open_tree(crate::keys::RAFT_META_TREE)?;
        let purged = read_meta::<LogId>(&meta, RaftMetaKey::LastPurged)?;
        let purged_below = purged.map_or(0, |p| p.index + 1);
        let log_dir = dir.join(crate::LOG_DIR);
        let (seg, recovery) = SegmentLog::open(&log_dir, purged.map(|p| p.index))?;
        if recovery != Recovery::default() {
            tracing::warn!(dir = %log_dir.display(), cut_bytes = recovery.cut_bytes, purged_segments = recovery.purged_segments, "raft log repaired at open (a write the crash interrupted was never acknowledged)");
        }
        let shared = Self {
            db,
            meta,
            seg: Arc::new(seg),
            sled_sync,
            queue: Mutex::new(FlushQueue::default()),
            purged_below: Arc::new(AtomicU64::new(purged_below)),
            _writer: writer,
        };
        shared.migrate_sled_log()?;
        Ok(shared)
    }

    /// Moves a log kept in sled's `log` tree (the format before segment
    /// files) into segments: copies it, syncs the segments, then clears the
    /// tree durably. A crash before the clear leaves the tree whole, and the
    /// next open starts the copy over.
    fn migrate_sled_log(&self) -> Result<(), StorageError> {
        let old = self.db.open_tree(crate::keys::LOG_TREE)?;
        if old.is_empty() {
            return Ok(());
        }
        self.seg.truncate(0)?;
        let skip = self.purged_below.load(Ordering::SeqCst);
        let mut from = 0;
        let mut moved = 0usize;
        let mut buf = Vec::new();
        loop {
            let chunk = log_runs::read(&old, from, None, skip, MIGRATE_CHUNK)?;
            let Some(last) = chunk.last().map(|e| e.log_id.index) else {
                break;
            };
            moved += chunk.len();
            self.seg.append(chunk, &mut buf)?;
            from = last + 1;
        }
        self.seg.sync()?;
        old.clear()?;
        self.meta_flush_blocking()?;
        tracing::info!(
            entries = moved,
            "raft log moved from sled into segment files"
        );
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: RaftMetaKey,
    ) -> Result<Option<T>, StorageError> {
        read_meta(&self.meta, key)
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: RaftMetaKey,
        value: &T,
    ) -> Result<(), StorageError> {
        self.meta.insert(key.as_bytes(), codec::encode(value)?)?;
        Ok(())
    }

    /// Makes every sled write so far durable (vote, purge marker, and the
    /// state machine with them). Blocking.
    fn meta_flush_blocking(&self) -> Result<(), StorageError> {
        self.sled_sync.flush(&self.db)
    }

    async fn meta_flush(self: &Arc<Self>) -> Result<(), StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.meta_flush_blocking()).await?
    }

    async fn log_sync(&self) -> Result<(), StorageError> {
        let seg = self.seg.clone();
        tokio::task::spawn_blocking(move || seg.sync()).await?
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, FlushQueue> {
        // The queue is a Vec and a flag, each updated in one step: a panic
        // elsewhere cannot leave it inconsistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enqueue(self: &Arc<Self>, callback: IOFlushed<TypeConfig>) {
        let mut q = self.lock_queue();
        q.pending.push(callback);
        if !q.running {
            q.running = true;
            drop(q);
            tokio::spawn(self.clone().flush_loop());
        }
    }

    /// Syncs until the queue is empty, then exits; `enqueue` starts a new
    /// loop when needed, so no task lives while the log is idle.
    async fn flush_loop(self: Arc<Self>) {
        loop {
            let callbacks = {
                let mut q = self.lock_queue();
                if q.pending.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.pending)
            };
            // Every callback taken above belongs to an append whose entries
            // were written before it was queued, so this sync covers it.
            let res = self.log_sync().await;
            if let Err(e) = &res {
                tracing::error!(error = %e, "log flush failed");
                if let StorageError::Io(io) = e {
                    self.seg.report_if_full(io);
                }
            }
            for cb in callbacks {
                let r = match &res {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                cb.io_completed(r);
            }
        }
    }
}

/// The value of `key` in the `raft_meta` tree `meta`.
fn read_meta<T: serde::de::DeserializeOwned>(
    meta: &sled::Tree,
    key: RaftMetaKey,
) -> Result<Option<T>, StorageError> {
    match meta.get(key.as_bytes())? {
        Some(v) => Ok(Some(codec::decode(&v)?)),
        None => Ok(None),
    }
}

/// Entries per step when moving a sled-kept log into segments.
const MIGRATE_CHUNK: usize = 4096;

/// The Raft log store. Cheap to clone; clones (and log readers) share the
/// same segments.
#[derive(Clone)]
pub struct LogStore {
    pub(crate) shared: Arc<LogShared>,
    /// Reused encode buffer, so `append` does not allocate per append.
    scratch: Vec<u8>,
}

impl LogStore {
    pub(crate) fn new(shared: LogShared) -> Self {
        Self {
            shared: Arc::new(shared),
            scratch: Vec::new(),
        }
    }
}

/// `[from, to]` of a range of indexes (`to` `None`: unbounded); `None` if
/// the range is empty by construction.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let from = match range.start_bound() {
        Bound::Included(f) => *f,
        Bound::Excluded(f) => f.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(t) => Some(*t),
        Bound::Excluded(0) => return None,
        Bound::Excluded(t) => Some(t - 1),
        Bound::Unbounded => None,
    };
    Some((from, to))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((from, to)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        // Entries below the purge marker that are still in a segment are
        // skipped.
        let from = from.max(self.shared.purged_below.load(Ordering::SeqCst));
        Ok(self.shared.seg.read_range(from, to, usize::MAX)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.get_meta(RaftMetaKey::Vote)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.shared.get_meta::<LogId>(RaftMetaKey::LastPurged)?;
        // An entry still in a segment below the purge marker is never the
        // last one.
        let last_log_id = self.shared.seg.last_log_id().max(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogStore {
            shared: self.shared.clone(),
            scratch: Vec::new(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.shared.put_meta(RaftMetaKey::Vote, vote)?;
        self.shared.meta_flush().await?;
        Ok(())
    }

    /// Stored without a flush of its own: it becomes durable with the next
    /// vote or purge flush, or sled's own periodic flush. A stale value after
    /// a crash only means fewer entries are re-applied at startup, never a
    /// wrong one.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.shared.put_meta(RaftMetaKey::Committed, &committed)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .shared
            .get_meta::<Option<LogId>>(RaftMetaKey::Committed)?
            .flatten())
    }

    /// Writes the entries into the current segment (one `pwrite`, readable
    /// at once) and queues the callback for the next group sync. openraft
    /// truncates before it overwrites; should an append still start inside
    /// the log, the old entries from there go first.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Err(e) = self.shared.seg.append(entries, &mut self.scratch) {
            let e = io::Error::from(e);
            self.shared.seg.report_if_full(&e);
            return Err(e);
        }
        self.shared.enqueue(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let seg = self.shared.seg.clone();
        tokio::task::spawn_blocking(move || seg.truncate(from))
            .await
            .map_err(io::Error::other)??;
        Ok(())
    }

    /// Makes the purge marker durable (and with it the state machine, which
    /// has applied at least up to the purged entry: after a crash it never
    /// needs an entry that is gone), then removes the segments wholly at or
    /// below it in the background. Readers skip purged entries meanwhile;
    /// `open` finishes an interrupted removal. The removal holds the store
    /// in use, so a reset waits for it.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.shared.put_meta(RaftMetaKey::LastPurged, &log_id)?;
        self.shared.meta_flush().await?;
        self.shared
            .purged_below
            .fetch_max(log_id.index + 1, Ordering::SeqCst);
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = shared.seg.purge(log_id.index) {
                tracing::warn!(error = %e, index = log_id.index, "removing purged log segments failed; the next start finishes it");
            }
        });
        Ok(())
    }
}

/// A read-only handle on the Raft log for the node's own use (the "diverged
/// export"), independent of openraft: obtain it with
/// [`crate::Store::log_reader`] before `Store::log` is moved into `Raft`.
/// Cheap to clone; reads run concurrently with openraft's log IO and see
/// whatever the log holds at that moment. After a reset of the store, take
/// a new handle from the new store: an old one still reads the log as it
/// was before the reset.
#[derive(Clone)]
pub struct LogReaderHandle {
    seg: Arc<SegmentLog>,
    /// Shared with the log store: entries below it are purged.
    purged_below: Arc<AtomicU64>,
}

impl LogReaderHandle {
    pub(crate) fn new(store: &LogStore) -> Self {
        Self {
            seg: store.shared.seg.clone(),
            purged_below: store.shared.purged_below.clone(),
        }
    }

    /// Up to `limit` entries with index `>= first_index`, in index order.
    /// Purged entries are gone: the first entry returned may be later than
    /// `first_index`.
    ///
    /// # Errors
    /// I/O errors or an undecodable entry.
    pub fn entries_from(
        &self,
        first_index: u64,
        limit: usize,
    ) -> Result<Vec<crate::types::LoggedEntry>, StorageError> {
        let from = first_index.max(self.purged_below.load(Ordering::SeqCst));
        let mut out = Vec::new();
        for entry in self.seg.read_range(from, None, limit)? {
            out.push(crate::types::LoggedEntry {
                index: entry.log_id.index,
                term: entry.log_id.leader_id.term,
                leader_node: entry.log_id.leader_id.node_id,
                request: match entry.payload {
                    openraft::EntryPayload::Normal(r) => Some(r),
                    openraft::EntryPayload::Blank | openraft::EntryPayload::Membership(_) => None,
                },
            });
        }
        Ok(out)
    }

    /// Index of the last entry in the log, `None` if the log is empty (e.g.
    /// everything was purged after a snapshot).
    ///
    /// # Errors
    /// None today; kept fallible for the callers.
    pub fn last_index(&self) -> Result<Option<u64>, StorageError> {
        let last = self.seg.last_log_id().map(|l| l.index);
        Ok(last.filter(|i| *i >= self.purged_below.load(Ordering::SeqCst)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Entry {
        log_runs::tests::entry_of(1, i, 1)
    }

    /// A store written before segment files kept its log in sled's `log`
    /// tree, in runs: the next open moves it (minus purged entries) into
    /// segments, empties the tree, and the log reads as before.
    #[tokio::test]
    async fn a_log_kept_in_sled_moves_into_segments_at_open() {
        let tmp = tempfile::tempdir().expect("temp dir");
        {
            let store = crate::open(tmp.path(), 1 << 20).expect("open");
            let tree = store.db.open_tree(crate::keys::LOG_TREE).expect("tree");
            let mut scratch = Vec::new();
            let (runs, _) =
                log_runs::encode_runs((1..=3000).map(entry), &mut scratch).expect("encode");
            for (first, value) in runs {
                tree.insert(first.to_be_bytes(), value).expect("insert");
            }
            store
                .db
                .open_tree(crate::keys::RAFT_META_TREE)
                .expect("meta")
                .insert(
                    RaftMetaKey::LastPurged.as_bytes(),
                    codec::encode(&entry(10).log_id).expect("encode"),
                )
                .expect("insert");
            store.flush().expect("flush");
        }
        // sled releases its file lock shortly after the drop (its flusher
        // thread holds the Db until it notices).
        let mut reopened = None;
        for _ in 0..100 {
            match crate::open(tmp.path(), 1 << 20) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        let mut store = reopened.expect("reopen");
        assert!(store
            .db
            .open_tree(crate::keys::LOG_TREE)
            .expect("tree")
            .is_empty());
        let state = store.log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(entry(3000).log_id));
        assert_eq!(state.last_purged_log_id, Some(entry(10).log_id));
        let got = store.log.try_get_log_entries(0..=3000).await.expect("read");
        assert_eq!(got, (11..=3000).map(entry).collect::<Vec<_>>());
        let files = std::fs::read_dir(tmp.path().join(crate::LOG_DIR))
            .expect("log dir")
            .count();
        assert_eq!(files, 1);
    }
}
