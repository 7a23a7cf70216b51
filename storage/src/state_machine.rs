//! The replicated state machine on sled, and its snapshots.

use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};

use crate::apply;
use crate::codec;
use crate::error::StorageError;
use crate::keys::{self, SmMetaKey};
use crate::sled_sync::SledSync;
use crate::snapshot;
use crate::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// The current state machine generation: its number and its tree.
pub(crate) struct Generation {
    pub(crate) number: u64,
    pub(crate) tree: sled::Tree,
}

/// State shared by the state machine, its snapshot builders and readers.
pub(crate) struct SmShared {
    pub(crate) db: sled::Db,
    /// Holds the persistent pointer to the current generation.
    root: sled::Tree,
    /// Holds the redo record of the last applied batch (`redo.rs`).
    redo_tree: sled::Tree,
    /// The current generation. Readers hold the read lock while they use the
    /// tree, so installing a snapshot never frees a tree under a reader.
    current: RwLock<Generation>,
    /// Apply and install take it exclusively; `digest` takes it shared so it
    /// sees the state between two batches, never in the middle of one.
    gate: RwLock<()>,
    pub(crate) snapshot_dir: PathBuf,
    /// The durable flush of sled (installs).
    sled_sync: Arc<SledSync>,
    /// Records in the newest snapshot (0: none yet, or unreadable).
    snapshot_records: AtomicU64,
}

impl SmShared {
    /// Opens the current generation and drops leftovers of interrupted
    /// installs (generations that are not current).
    pub(crate) fn open(
        db: sled::Db,
        snapshot_dir: PathBuf,
        sled_sync: Arc<SledSync>,
    ) -> Result<Self, StorageError> {
        let root = db.open_tree(keys::SM_ROOT_TREE)?;
        let number = match root.get(keys::SM_ROOT_CURRENT)? {
            Some(v) => codec::decode::<u64>(&v)?,
            None => 0,
        };
        let current_name = keys::sm_tree_name(number);
        for name in db.tree_names() {
            if name.starts_with(keys::SM_TREE_PREFIX.as_bytes()) && name != current_name.as_bytes()
            {
                tracing::info!(tree = %String::from_utf8_lossy(&name), "dropping stale state machine generation");
                db.drop_tree(&name)?;
            }
        }
        let tree = db.open_tree(&current_name)?;
        let redo_tree = db.open_tree(keys::SM_REDO_TREE)?;
        let replayed = crate::redo::replay_at_open(&redo_tree, number, &tree)?;
        if replayed > 0 {
            tracing::info!(
                writes = replayed,
                "last applied batch written again at open"
            );
        }
        let records = records_or_zero(
            snapshot::current_snapshot(&snapshot_dir)
                .and_then(|p| p.map_or(Ok(0), |p| snapshot::record_count(&p))),
        );
        Ok(Self {
            db,
            root,
            redo_tree,
            current: RwLock::new(Generation { number, tree }),
            gate: RwLock::new(()),
            snapshot_dir,
            sled_sync,
            snapshot_records: AtomicU64::new(records),
        })
    }

    /// The current generation, locked for reading. Lock poisoning is ignored:
    /// the guarded value is replaced in one assignment, so a panic elsewhere
    /// cannot leave it half-updated.
    pub(crate) fn current(&self) -> RwLockReadGuard<'_, Generation> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn gate_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn applied_state(&self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let cur = self.current();
        read_applied_state(&cur.tree)
    }

    pub(crate) fn apply_blocking(
        &self,
        entries: &[crate::types::Entry],
    ) -> Result<Vec<crate::Response>, StorageError> {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.apply_locked(entries)
    }

    /// Applies with the gate held.
    fn apply_locked(
        &self,
        entries: &[crate::types::Entry],
    ) -> Result<Vec<crate::Response>, StorageError> {
        let cur = self.current();
        let redo = crate::redo::Redo {
            tree: &self.redo_tree,
            generation: cur.number,
        };
        apply::apply_entries(&cur.tree, &redo, entries)
    }

    /// As [`SmShared::apply_blocking`] if the gate is free now; `None` when
    /// a digest holds it (the caller then applies on the blocking pool
    /// rather than wait on an async task).
    fn try_apply_now(
        &self,
        entries: &[crate::types::Entry],
    ) -> Option<Result<Vec<crate::Response>, StorageError>> {
        let _gate = match self.gate.try_write() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.apply_locked(entries))
    }

    /// Records in the newest snapshot (0: none yet).
    pub(crate) fn snapshot_records(&self) -> u64 {
        self.snapshot_records.load(Ordering::Relaxed)
    }

    /// Writes the current state to a snapshot file. Called on the state
    /// machine task, so no entry is applied meanwhile.
    fn dump_snapshot(&self) -> Result<(PathBuf, SnapshotMeta), StorageError> {
        let cur = self.current();
        let (last_log_id, last_membership) = read_applied_state(&cur.tree)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let (path, records) = snapshot::write_snapshot(&self.snapshot_dir, &cur.tree, &meta)?;
        self.snapshot_records.store(records, Ordering::Relaxed);
        Ok((path, meta))
    }

    /// Loads a snapshot into a fresh generation and switches to it.
    fn install_blocking(
        &self,
        meta: &SnapshotMeta,
        file: std::fs::File,
    ) -> Result<(), StorageError> {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let old_number = self.current().number;
        let new_number = old_number + 1;
        let new_name = keys::sm_tree_name(new_number);
        // A leftover of an interrupted install would already have been
        // dropped at open; drop defensively anyway.
        self.db.drop_tree(&new_name)?;
        let new_tree = self.db.open_tree(&new_name)?;

        let mut file = file;
        file.seek(SeekFrom::Start(0))?;
        let (seq, tmp, copy) = snapshot::create_copy(&self.snapshot_dir)?;
        let loaded = snapshot::load_snapshot(
            BufReader::with_capacity(256 * 1024, file),
            meta,
            &new_tree,
            Some(copy),
        );
        let copy = match loaded {
            Ok(copy) => copy.expect("load_snapshot returns the copy writer it was given"),
            Err(e) => {
                drop(new_tree);
                let _ = self.db.drop_tree(&new_name);
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // 1. The new generation is durable (but not yet current).
        self.sled_sync.flush(&self.db)?;
        // 2. The snapshot file is durable and the newest one.
        let path = snapshot::publish_copy(&self.snapshot_dir, seq, &tmp, copy)?;
        // 3. One durable insert makes the new generation current.
        self.root
            .insert(keys::SM_ROOT_CURRENT, codec::encode(&new_number)?)?;
        self.sled_sync.flush(&self.db)?;
        {
            let mut cur = self.current.write().unwrap_or_else(PoisonError::into_inner);
            *cur = Generation {
                number: new_number,
                tree: new_tree,
            };
            // Dropped under the write lock: no reader uses the old tree.
            self.db.drop_tree(keys::sm_tree_name(old_number))?;
        }
        // The old generation's redo record is never replayed (generation
        // mismatch); removed for tidiness.
        crate::redo::forget(&self.db)?;
        self.snapshot_records.store(
            records_or_zero(snapshot::record_count(&path)),
            Ordering::Relaxed,
        );
        tracing::info!(path = %path.display(), last_log_id = ?meta.last_log_id, generation = new_number, "snapshot installed");
        Ok(())
    }
}

/// A snapshot's record count, 0 when its trailer cannot be read (only the
/// snapshot policy uses it: it then falls back to `snapshot_every`).
fn records_or_zero(count: Result<u64, StorageError>) -> u64 {
    count.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot count the records of the newest snapshot");
        0
    })
}

pub(crate) fn read_applied_state(
    tree: &sled::Tree,
) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let applied = match tree.get(SmMetaKey::LastApplied.as_bytes())? {
        Some(v) => codec::decode::<Option<LogId>>(&v)?,
        None => None,
    };
    let membership = match tree.get(SmMetaKey::LastMembership.as_bytes())? {
        Some(v) => codec::decode::<StoredMembership>(&v)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Apply batches up to this many entries run on the state machine task.
const INLINE_APPLY_MAX: usize = 64;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await?
}

/// The state machine: implements openraft's [`RaftStateMachine`].
///
/// Cheap to clone; clones share the same state.
#[derive(Clone)]
pub struct StateMachineStore {
    pub(crate) shared: Arc<SmShared>,
    /// Marks the store in use while any clone lives (readers do not hold it).
    pub(crate) _writer: Arc<crate::in_use::WriterToken>,
}

impl StateMachineStore {
    async fn make_builder(&self) -> SnapshotBuilder {
        let shared = self.shared.clone();
        let result = blocking(move || shared.dump_snapshot()).await;
        SnapshotBuilder {
            result: Some(result),
        }
    }
}

/// A snapshot of the state machine, already written to disk when this
/// builder is created (see [`StateMachineStore`]'s snapshot notes in
/// DESIGN.md): `build_snapshot` only opens the file.
pub struct SnapshotBuilder {
    result: Option<Result<(PathBuf, SnapshotMeta), StorageError>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = tokio::fs::File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (path, meta) = self
            .result
            .take()
            .unwrap_or_else(|| Err(StorageError::Task("snapshot builder used twice".into())))?;
        let file = tokio::fs::File::open(&path).await?;
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = tokio::fs::File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self.shared.applied_state()?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        // A small batch (the steady state: a few client writes) is applied
        // in place: sled inserts are in-memory work, and handing each batch
        // to the blocking pool cost more than the apply itself (~7 % of the
        // CPU per write). Large batches (catching up), and any batch while a
        // digest holds the gate, go to the pool.
        let now = if batch.len() <= INLINE_APPLY_MAX {
            shared.try_apply_now(&batch)
        } else {
            None
        };
        let responses = match now {
            Some(r) => r?,
            None => blocking(move || shared.apply_blocking(&batch)).await?,
        };
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.make_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.make_builder().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: tokio::fs::File,
    ) -> Result<(), io::Error> {
        let file = snapshot.into_std().await;
        let shared = self.shared.clone();
        let meta = meta.clone();
        Ok(blocking(move || shared.install_blocking(&meta, file)).await?)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let dir = self.shared.snapshot_dir.clone();
        let found = blocking(move || match snapshot::current_snapshot(&dir)? {
            Some(path) => Ok(Some((snapshot::read_meta(&path)?, path))),
            None => Ok(None),
        })
        .await?;
        match found {
            Some((meta, path)) => Ok(Some(Snapshot {
                meta,
                snapshot: tokio::fs::File::open(&path).await?,
            })),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::log_runs::tests::entry_of;
    use crate::sled_sync::tests::open;

    /// Installing a snapshot makes the new generation durable, then the
    /// switch to it, each with the durable flush (blob files, sled's flush,
    /// `fdatasync` of its data file), not with sled's flush alone.
    #[test]
    fn install_flushes_durably() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = open(from.path());
        for i in 1..=20 {
            // 60 KiB values: the loaded tree's nodes become blob files.
            let batch = [entry_of(1, i, 60 * 1024 - 2)];
            source.sm.shared.apply_blocking(&batch).unwrap();
        }
        let (path, meta) = source.sm.shared.dump_snapshot().unwrap();

        let target = open(to.path());
        let before = target.sled_sync.data_syncs.load(Ordering::SeqCst);
        let file = std::fs::File::open(&path).unwrap();
        target.sm.shared.install_blocking(&meta, file).unwrap();
        let after = target.sled_sync.data_syncs.load(Ordering::SeqCst);
        assert_eq!(after - before, 2, "durable flushes during the install");
        let (blobs, unsynced) = target.sled_sync.blobs();
        assert!(!blobs.is_empty(), "sled wrote no blob file");
        assert!(unsynced.is_empty(), "unsynced: {unsynced:?}");
        assert_eq!(target.reader.applied_index(), Some(20));
    }
}
