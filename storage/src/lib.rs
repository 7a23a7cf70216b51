//! Tandem's replicated storage: the openraft type configuration, the
//! replicated commands and their responses, the Raft log store and the state
//! machine on sled, and snapshot files.
//!
//! This crate does no networking: no sockets, no axum, no rustls. It never
//! reads the clock to decide anything (every time comes inside a command), so
//! applying the same log gives the same state on every node. The node crate
//! wires it to openraft and the transport.
//!
//! Modules:
//! - [`codec`]: the single bincode configuration (with a size limit) behind a
//!   version byte, for every encoded value and the node's wire frames.
//! - [`types`]: [`TypeConfig`], [`NodeInfo`], [`Request`], [`Response`] and the
//!   records readers return.
//! - `log_store`: [`LogStore`], the Raft log and vote (group-committed flushes).
//! - `state_machine`: [`StateMachineStore`] and its [`SnapshotBuilder`].
//! - `apply`: deterministic application of commands, one atomic batch per
//!   applied batch of entries.
//! - `snapshot`: the snapshot file format and directory;
//!   [`incoming_snapshot_file`].
//! - `reader`: [`StateReader`], concurrent reads and the state digest.
//! - `offline`: the storage side of a forced promotion: offline
//!   ([`build_snapshot_file_offline`], [`wipe`]) or in place on the open
//!   `sled::Db` ([`reset_to_single_voter`], then [`open_with_db`]).
//! - `in_use`: [`store_in_use`], whether a store's writers are still alive.
//! - `sled_sync`: the durable sled flush (sled's flush, its blob files and
//!   an `fdatasync` of its data file).
//! - `keys`: tree names, key encodings and stored records.
//! - `fuzzing` (hidden): entry points of the fuzz targets in `fuzz/` and of
//!   the corpus regression test; not an API.
//!
//! See `storage/DESIGN.md` for the on-disk format and the crash-safety
//! argument.

pub mod codec;
#[doc(hidden)]
pub mod fuzzing;
pub mod types;

mod apply;
mod error;
mod in_use;
mod keys;
mod log_runs;
mod log_store;
mod offline;
mod reader;
mod redo;
mod rejoin;
mod segment_log;
mod sled_sync;
mod snapshot;
mod state_machine;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use apply::{
    HISTORY_CAPACITY, MAX_HISTORY_ACTOR_BYTES, MAX_HISTORY_DETAILS_BYTES, MAX_HISTORY_KIND_BYTES,
    MAX_KEY_BYTES, MAX_USER_NAME_BYTES, MAX_VALUE_BYTES,
};
pub use codec::{decode, encode, CodecError, BINCODE_LIMIT};
pub use error::StorageError;
pub use in_use::{store_in_use, wait_store_released};
pub use log_store::{LogReaderHandle, LogStore};
pub use offline::{
    build_snapshot_file_offline, pending_forced_snapshot, reset_to_single_voter, wipe, CatchUp,
    FORCED_SNAPSHOT_FILE, RESET_MARKER_FILE,
};
pub use reader::StateReader;
pub use snapshot::{incoming_snapshot_file, SNAPSHOT_FORMAT};
pub use state_machine::{SnapshotBuilder, StateMachineStore};
pub use types::{
    AdminUser, ApiToken, ConfigEntry, Entry, EpochRecord, Field, HistoryEvent, JoinToken, LogId,
    LoggedEntry, NodeInfo, NodeKind, Refusal, Request, Response, Session, SettingsRecord, Snapshot,
    SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

/// Default sled page cache size for a node: 4 MiB. With 100,000 sessions
/// stored, 16 MiB held ~18 MiB more per node for up to ~10 % less CPU per
/// write (`docs/performance.md`, "Memory").
pub const DEFAULT_CACHE_CAPACITY: u64 = 4 * 1024 * 1024;

pub(crate) const SLED_DIR: &str = "sled";
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";
/// Directory of the Raft log's segment files, beside `sled` (see
/// `segment_log`).
pub(crate) const LOG_DIR: &str = "raft-log";

/// Makes every write so far durable (see [`Store::flush`]); cheap to
/// clone, usable after the store was handed to Raft.
#[derive(Clone)]
pub struct DurableFlush {
    db: sled::Db,
    sync: Arc<sled_sync::SledSync>,
}

impl DurableFlush {
    /// As [`Store::flush`].
    ///
    /// # Errors
    /// I/O errors of the flush or the syncs.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.sync.flush(&self.db)
    }
}

/// An opened storage directory: the log store and state machine for
/// openraft, a reader for everyone else, and the sled database underneath.
pub struct Store {
    /// Raft log and vote; give it to `Raft::new`.
    pub log: LogStore,
    /// State machine; give it to `Raft::new`.
    pub sm: StateMachineStore,
    /// Concurrent reads of the replicated state.
    pub reader: StateReader,
    /// The sled database (one per data directory, separate trees).
    pub db: sled::Db,
    snapshot_dir: PathBuf,
    sled_sync: Arc<sled_sync::SledSync>,
}

impl Store {
    /// Makes every write so far durable (sled flush, `fsync` of its blob
    /// files, `fdatasync` of its data file). Blocking: call it from
    /// `spawn_blocking` or at shutdown.
    ///
    /// # Errors
    /// I/O errors from sled or the fsync.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.sled_sync.flush(&self.db)
    }

    /// A handle that makes every write so far durable, as [`Store::flush`]
    /// does; take it before the store is moved into `Raft::new`.
    pub fn flusher(&self) -> DurableFlush {
        DurableFlush {
            db: self.db.clone(),
            sync: self.sled_sync.clone(),
        }
    }

    /// A handle reading the Raft log directly (for the diverged export). Take
    /// it before `log` is moved into `Raft::new`.
    pub fn log_reader(&self) -> LogReaderHandle {
        LogReaderHandle::new(&self.log)
    }

    /// The directory snapshot files live in (and incoming ones are received
    /// into, see [`incoming_snapshot_file`]).
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }
}

/// Opens (creating if needed) the storage in `dir`: sled in `dir/sled` with
/// the given page cache size, snapshots in `dir/snapshots`. Finishes or rolls
/// back whatever a crash interrupted (see DESIGN.md), including an
/// interrupted [`reset_to_single_voter`].
///
/// sled locks its files: a second open of the same directory fails.
///
/// # Errors
/// I/O or sled errors, or undecodable stored data.
pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Store, StorageError> {
    let sled_dir = dir.join(SLED_DIR);
    std::fs::create_dir_all(&sled_dir)?;
    let db = sled::Config::new()
        .path(&sled_dir)
        .cache_capacity(cache_capacity_bytes)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    open_with_db(db, dir)
}

/// Builds a [`Store`] (log store, state machine, readers) over `db`, an
/// already open `sled::Db` that MUST be the one of `dir` (opened at
/// `dir/sled`, as [`open`] does); snapshots live in `dir/snapshots`
/// (created if needed). Runs the same crash recovery as [`open`]: finishes
/// an interrupted [`reset_to_single_voter`] (its marker file), drops stale
/// state machine generations, finishes an interrupted purge, deletes
/// leftover `.tmp`/`.part` files and all but the newest snapshot.
///
/// This is how the node re-creates its store in place after a forced
/// promotion without closing the `Db` (other clones of `db` may stay open).
///
/// # Errors
/// - the store in `dir` is still in use in this process: a `LogStore` or
///   `StateMachineStore` built earlier over it is alive (`ResourceBusy`, see
///   [`store_in_use`]);
/// - I/O or sled errors, or undecodable stored data.
pub fn open_with_db(db: sled::Db, dir: &Path) -> Result<Store, StorageError> {
    let sled_dir = dir.join(SLED_DIR);
    let snapshot_dir = dir.join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&snapshot_dir)?;
    // The durable flush of every path below (see sled_sync).
    let sled_sync = Arc::new(sled_sync::SledSync::open(&sled_dir)?);
    let writer = in_use::register(dir)?;
    offline::finish_interrupted_reset(&db, dir, &sled_sync)?;
    snapshot::cleanup(&snapshot_dir)?;
    let log = LogStore::new(log_store::LogShared::open(
        db.clone(),
        dir,
        sled_sync.clone(),
        writer.clone(),
    )?);
    let shared = Arc::new(state_machine::SmShared::open(
        db.clone(),
        snapshot_dir.clone(),
        sled_sync.clone(),
    )?);
    Ok(Store {
        log,
        sm: StateMachineStore {
            shared: shared.clone(),
            _writer: writer,
        },
        reader: StateReader { shared },
        db,
        snapshot_dir,
        sled_sync,
    })
}
