//! The Raft log and vote on sled: implements openraft's [`RaftLogStorage`]
//! and [`RaftLogReader`].
//!
//! Appends are acknowledged by group commit: `append` inserts its entries in
//! index order, in runs (`log_runs`), readable at once, and queues its
//! callback; a single flusher task flushes everything queued so far with one
//! sled flush plus one `fdatasync`, then completes the callbacks in order.
//! While a flush runs, new appends queue up for the next one.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec;
use crate::error::StorageError;
use crate::keys::RaftMetaKey;
use crate::log_runs;
use crate::types::{Entry, LogId, TypeConfig, Vote};

pub(crate) struct LogShared {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// sled's data file, opened a second time: sled's own flush ends with
    /// `sync_file_range`, which neither persists file metadata nor flushes
    /// the drive's write cache; an `fdatasync` on this handle does both.
    data_file: Option<File>,
    queue: Mutex<FlushQueue>,
    /// One past the highest purged index (0: nothing purged). Entries at or
    /// below the purge marker may still be in the tree while a background
    /// removal runs; readers skip them.
    purged_below: Arc<AtomicU64>,
    /// One past the last entry's index (0: empty log); kept by append and
    /// truncate so that an append never leaves two runs covering one index.
    next_index: AtomicU64,
    /// Serialises background removals of purged entries.
    purging: Mutex<()>,
    /// Marks the store in use while the log store (or a flusher task) lives.
    _writer: Arc<crate::in_use::WriterToken>,
}

#[derive(Default)]
struct FlushQueue {
    pending: Vec<IOFlushed<TypeConfig>>,
    running: bool,
}

impl LogShared {
    pub(crate) fn open(
        db: sled::Db,
        data_file: Option<File>,
        writer: Arc<crate::in_use::WriterToken>,
    ) -> Result<Self, StorageError> {
        let log = db.open_tree(crate::keys::LOG_TREE)?;
        let meta = db.open_tree(crate::keys::RAFT_META_TREE)?;
        let shared = Self {
            db,
            log,
            meta,
            data_file,
            queue: Mutex::new(FlushQueue::default()),
            purged_below: Arc::new(AtomicU64::new(0)),
            next_index: AtomicU64::new(0),
            purging: Mutex::new(()),
            _writer: writer,
        };
        // Finish a purge interrupted after its marker was written.
        if let Some(purged) = shared.get_meta::<LogId>(RaftMetaKey::LastPurged)? {
            shared
                .purged_below
                .store(purged.index + 1, Ordering::SeqCst);
            let mut batch = sled::Batch::default();
            for k in log_runs::runs_at_or_below(&shared.log, purged.index, usize::MAX)? {
                batch.remove(k);
            }
            shared.log.apply_batch(batch)?;
        }
        let next = log_runs::last_entry(&shared.log)?.map_or(0, |e| e.log_id.index + 1);
        shared.next_index.store(next, Ordering::SeqCst);
        Ok(shared)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: RaftMetaKey,
    ) -> Result<Option<T>, StorageError> {
        match self.meta.get(key.as_bytes())? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: RaftMetaKey,
        value: &T,
    ) -> Result<(), StorageError> {
        self.meta.insert(key.as_bytes(), codec::encode(value)?)?;
        Ok(())
    }

    /// Removes the log entries with index `>= from`, as one atomic batch.
    fn remove_from(&self, from: u64) -> Result<(), StorageError> {
        self.log
            .apply_batch(log_runs::truncate_batch(&self.log, from)?)?;
        self.next_index.fetch_min(from, Ordering::SeqCst);
        Ok(())
    }

    /// Removes the runs wholly at or below `index`, oldest first (so the
    /// log never has a hole), one run at a time with a pause every
    /// [`PURGE_CHUNK`] runs so that appends and flushes are not held up; one
    /// removal at a time.
    fn remove_purged(&self, index: u64) -> Result<(), StorageError> {
        let _one = self.purging.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let keys = log_runs::runs_at_or_below(&self.log, index, PURGE_CHUNK)?;
            if keys.is_empty() {
                return Ok(());
            }
            for k in keys {
                self.log.remove(k)?;
            }
            std::thread::sleep(PURGE_PAUSE);
        }
    }

    /// Makes every write done so far durable. Blocking.
    fn durable_flush_blocking(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        if let Some(f) = &self.data_file {
            f.sync_data()?;
        }
        Ok(())
    }

    async fn durable_flush(self: &Arc<Self>) -> Result<(), StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.durable_flush_blocking()).await?
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

    /// Flushes until the queue is empty, then exits; `enqueue` starts a new
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
            // Every callback taken above belongs to an append whose batch was
            // applied before it was queued, so this flush covers it.
            let res = self.durable_flush().await;
            if let Err(e) = &res {
                tracing::error!(error = %e, "log flush failed");
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

/// Runs a background purge removes between two pauses.
const PURGE_CHUNK: usize = 256;
/// The pause.
const PURGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The Raft log store. Cheap to clone; clones (and log readers) share the
/// same trees.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<LogShared>,
    /// Reused encode buffer, so `append` does not allocate per entry for
    /// encoding (sled still copies each value once).
    scratch: Vec<u8>,
}

impl LogStore {
    pub(crate) fn new(shared: LogShared) -> Self {
        Self {
            shared: Arc::new(shared),
            scratch: Vec::new(),
        }
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        Ok(log_runs::last_entry(&self.shared.log)?.map(|e| e.log_id))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let from = match range.start_bound() {
            Bound::Included(f) => *f,
            Bound::Excluded(f) => f.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(t) => Some(*t),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(t) => Some(t - 1),
            Bound::Unbounded => None,
        };
        // Entries below the purge marker whose background removal has not
        // reached them yet are skipped.
        let purged_below = self.shared.purged_below.load(Ordering::SeqCst);
        Ok(log_runs::read(
            &self.shared.log,
            from,
            to,
            purged_below,
            usize::MAX,
        )?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.get_meta(RaftMetaKey::Vote)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.shared.get_meta::<LogId>(RaftMetaKey::LastPurged)?;
        // An entry still in the tree below the purge marker (its removal
        // runs in the background) is never the last one.
        let last_log_id = self.last_log_id()?.max(last_purged_log_id);
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
        self.shared.durable_flush().await?;
        Ok(())
    }

    /// Stored without a flush of its own: it becomes durable with the next
    /// append or vote flush. A stale value after a crash only means fewer
    /// entries are re-applied at startup, never a wrong one.
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

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One insert per run of entries (log_runs), in index order, not one
        // `sled::Batch`: sled pins its log for a batch and seals (writes and
        // `sync_file_range`s) an IO buffer twice per batch, which on a leader
        // appending a few entries at a time cost more than everything else
        // in the log store. A crash recovers a prefix of sled's log
        // (recovery stops at the first torn message), so a cut append leaves
        // a shorter log, never a hole.
        let (runs, last) = log_runs::encode_runs(entries, &mut self.scratch)?;
        if let Some((first, _)) = runs.first() {
            // openraft truncates before it overwrites; should an append
            // still start inside the log, the old entries from there go
            // first, so no two runs ever cover one index.
            if *first < self.shared.next_index.load(Ordering::SeqCst) {
                self.shared.remove_from(*first)?;
            }
        }
        for (first, value) in runs {
            self.shared
                .log
                .insert(&first.to_be_bytes()[..], value)
                .map_err(StorageError::from)?;
        }
        if let Some(last) = last {
            self.shared.next_index.store(last + 1, Ordering::SeqCst);
        }
        self.shared.enqueue(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.shared.remove_from(from)?;
        self.shared.durable_flush().await?;
        Ok(())
    }

    /// Writes the purge marker and returns; the entries are removed in the
    /// background, oldest first, paced ([`LogShared::remove_purged`]).
    /// Removing them inline (a scan and a batch of thousands of deletes,
    /// then a flush) held up the appends queued behind it on every snapshot:
    /// at 64 writers the write p99 was ~66 ms with it, ~27 ms with the paced
    /// background removal (storage/DESIGN.md). Nothing needs the removal to be
    /// durable: readers skip entries below the marker, `get_log_state`
    /// never reports one as the last, sled recovers a prefix of its log (the
    /// marker precedes every removal), and `open` finishes an interrupted
    /// removal. The removal holds the store in use, so a reset waits for it.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.shared.put_meta(RaftMetaKey::LastPurged, &log_id)?;
        self.shared
            .purged_below
            .fetch_max(log_id.index + 1, Ordering::SeqCst);
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = shared.remove_purged(log_id.index) {
                tracing::warn!(error = %e, index = log_id.index, "removing purged log entries failed; the next start finishes it");
            }
        });
        Ok(())
    }
}

/// A read-only handle on the Raft log tree for the node's own use (the
/// "diverged export"), independent of openraft: obtain it with
/// [`crate::Store::log_reader`] before `Store::log` is moved into `Raft`.
/// Cheap to clone; reads run concurrently with openraft's log IO (sled is
/// concurrent) and see whatever the log holds at that moment.
#[derive(Clone)]
pub struct LogReaderHandle {
    log: sled::Tree,
    /// Shared with the log store: entries below it are purged.
    purged_below: Arc<AtomicU64>,
}

impl LogReaderHandle {
    pub(crate) fn new(store: &LogStore) -> Self {
        Self {
            log: store.shared.log.clone(),
            purged_below: store.shared.purged_below.clone(),
        }
    }

    /// Up to `limit` entries with index `>= first_index`, in index order.
    /// Purged entries are gone: the first entry returned may be later than
    /// `first_index`.
    ///
    /// # Errors
    /// sled errors or an undecodable entry.
    pub fn entries_from(
        &self,
        first_index: u64,
        limit: usize,
    ) -> Result<Vec<crate::types::LoggedEntry>, StorageError> {
        let purged_below = self.purged_below.load(Ordering::SeqCst);
        let mut out = Vec::new();
        for entry in log_runs::read(&self.log, first_index, None, purged_below, limit)? {
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
    /// sled errors or a malformed key.
    pub fn last_index(&self) -> Result<Option<u64>, StorageError> {
        let last = log_runs::last_entry(&self.log)?.map(|e| e.log_id.index);
        Ok(last.filter(|i| *i >= self.purged_below.load(Ordering::SeqCst)))
    }
}
