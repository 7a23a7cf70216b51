//! Offline operations on a closed store, for a forced promotion (DESIGN.md
//! "Forced promotion"): build a single-voter snapshot of the current state,
//! wipe the store, then start a pristine Raft and install that snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use openraft::Membership;

use crate::apply::{self, Overlay};
use crate::codec;
use crate::error::StorageError;
use crate::keys::{self, RaftMetaKey, SmMetaKey};
use crate::segment_log::SegmentLog;
use crate::sled_sync::SledSync;
use crate::snapshot;
use crate::state_machine::read_applied_state;
use crate::types::{LogId, NodeInfo, SnapshotMeta, StoredMembership};
use crate::{LOG_DIR, SLED_DIR, SNAPSHOT_DIR};

/// How far [`build_snapshot_file_offline`] brings the state up with the
/// local log before dumping it. The store itself is never changed: the
/// entries are applied to an in-memory overlay that only the snapshot sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The state as applied; entries in the log after it are left out.
    Applied,
    /// Also the entries up to the locally persisted committed log id (what
    /// openraft itself would apply at the next start).
    Committed,
    /// Every entry in the local log, committed or not as far as this node
    /// knows: keeps writes the old primary had replicated here but whose
    /// commit this node had not yet heard of (pair-only: such entries were
    /// usually committed and acknowledged by the old primary).
    AllLogged,
}

fn invalid(msg: impl Into<String>) -> StorageError {
    StorageError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg.into()))
}

/// Opens the (closed) store in `dir`, and writes to `out` a snapshot file of
/// its state machine (the normal snapshot format) whose meta is:
/// `last_log_id` = the last applied log id after `catch_up`, and
/// `last_membership` = a membership of `node_id` alone, as voter, with
/// `node` as its info (the snapshot's `mlast_membership` record says the
/// same, so the installed state machine reports that membership too).
///
/// `out` must be outside `dir` (so [`wipe`] keeps it); it is written as
/// `out` + `.tmp`, fsynced, renamed and its directory fsynced. The store is
/// not modified. Returns the meta (pass it to `install_full_snapshot`) and
/// `out`.
///
/// # Errors
/// - the store cannot be opened (e.g. it is still open: sled's lock);
/// - nothing was ever applied (there is no state to promote);
/// - the log lacks an entry `catch_up` needs (a hole);
/// - `out` is inside `dir`; I/O errors.
pub fn build_snapshot_file_offline(
    dir: &Path,
    cache_capacity_bytes: u64,
    node_id: u64,
    node: NodeInfo,
    catch_up: CatchUp,
    out: &Path,
) -> Result<(SnapshotMeta, PathBuf), StorageError> {
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if fs::canonicalize(&out_dir)?.starts_with(fs::canonicalize(dir)?) {
        return Err(invalid(
            "the offline snapshot must be written outside the store directory",
        ));
    }
    let store = crate::open(dir, cache_capacity_bytes)?;
    let cur = store.sm.shared.current();
    let meta = write_single_voter_snapshot(
        &store.db,
        &store.log.shared.seg,
        &cur.tree,
        node_id,
        node,
        catch_up,
        out,
    )?;
    Ok((meta, out.to_path_buf()))
}

/// The common part of [`build_snapshot_file_offline`] and
/// [`reset_to_single_voter`]: the state of `sm_tree` caught up with `log`
/// in an overlay, dumped with a single-voter meta to `out` (written as
/// `out.tmp`, fsynced, renamed, directory fsynced). Changes nothing in `db`
/// or `log`.
fn write_single_voter_snapshot(
    db: &sled::Db,
    log: &SegmentLog,
    sm_tree: &sled::Tree,
    node_id: u64,
    node: NodeInfo,
    catch_up: CatchUp,
    out: &Path,
) -> Result<SnapshotMeta, StorageError> {
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let raft_meta = db.open_tree(keys::RAFT_META_TREE)?;
    let (applied, _) = read_applied_state(sm_tree)?;

    let target = match catch_up {
        CatchUp::Applied => None,
        CatchUp::Committed => match raft_meta.get(RaftMetaKey::Committed.as_bytes())? {
            Some(v) => codec::decode::<Option<LogId>>(&v)?.map(|l| l.index),
            None => None,
        },
        CatchUp::AllLogged => log.last_log_id().map(|l| l.index),
    };
    let first = applied.map_or(0, |l| l.index + 1);
    let mut entries = Vec::new();
    if let Some(target) = target.filter(|t| *t >= first) {
        entries = log.read_range(first, Some(target), usize::MAX)?;
        for (i, e) in entries.iter().enumerate() {
            if e.log_id.index != first + i as u64 {
                return Err(StorageError::Corrupt(format!(
                    "log entry {} missing (found {})",
                    first + i as u64,
                    e.log_id.index
                )));
            }
        }
        if entries.len() as u64 != target - first + 1 {
            return Err(StorageError::Corrupt(format!(
                "log entries {first}..={target} are not all present"
            )));
        }
    }

    let mut ov = Overlay::new(sm_tree);
    apply::stage_entries(&mut ov, &entries)?;
    let last_log_id = entries
        .last()
        .map(|e| e.log_id)
        .or(applied)
        .ok_or_else(|| invalid("nothing was ever applied: there is no state to promote"))?;
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, node)]),
    )
    .map_err(|e| invalid(format!("single-voter membership: {e}")))?;
    let last_membership = StoredMembership::new(Some(last_log_id), membership);
    ov.put(
        SmMetaKey::LastApplied.as_bytes().to_vec(),
        &Some(last_log_id),
    )?;
    ov.put(
        SmMetaKey::LastMembership.as_bytes().to_vec(),
        &last_membership,
    )?;
    let meta = SnapshotMeta {
        last_log_id: Some(last_log_id),
        last_membership,
    };

    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    snapshot::write_snapshot_file(&tmp, ov.merged(), &meta)?;
    fs::rename(&tmp, out)?;
    snapshot::sync_dir(&out_dir)?;
    tracing::info!(path = %out.display(), last_log_id = %last_log_id, node_id, "single-voter snapshot written");
    Ok(meta)
}

/// Removes the store in `dir`: its snapshot directory first, then its Raft
/// log segments, then its sled directory (so an interrupted wipe never
/// leaves old snapshots or an old log beside a fresh state), then fsyncs
/// `dir`. Other files in `dir` are kept. Missing
/// parts are fine (a wipe can be repeated). The store must be closed.
///
/// # Errors
/// I/O errors.
pub fn wipe(dir: &Path) -> io::Result<()> {
    for sub in [SNAPSHOT_DIR, LOG_DIR, SLED_DIR] {
        match fs::remove_dir_all(dir.join(sub)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match fs::File::open(dir) {
        Ok(d) => d.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Name of the single-voter snapshot file [`reset_to_single_voter`] writes
/// directly in the store directory (not in `snapshots/`, so neither
/// [`crate::open`] nor a later reset's clearing deletes it).
pub const FORCED_SNAPSHOT_FILE: &str = "forced-promotion.snap";

/// Name of the marker file, in the store directory, that says "a reset is
/// clearing the store". [`reset_to_single_voter`] writes it durably before
/// clearing anything and removes it after the durable flush that ends the
/// clear; [`crate::open`] / [`crate::open_with_db`] finding it finish the
/// clear first, so no half-cleared store is ever handed to openraft.
pub const RESET_MARKER_FILE: &str = "reset-in-progress";

/// The forced-promotion snapshot file left by [`reset_to_single_voter`] in
/// `dir`, with its meta, if there is one: after a crash between the reset
/// and the install, the node finds the (pristine) store and this file, and
/// resumes with `install_full_snapshot`. Delete it once installed (if the
/// store already applied `meta.last_log_id`, it was installed).
///
/// # Errors
/// I/O errors, or a file that is not a snapshot.
pub fn pending_forced_snapshot(
    dir: &Path,
) -> Result<Option<(SnapshotMeta, PathBuf)>, StorageError> {
    let path = dir.join(FORCED_SNAPSHOT_FILE);
    match fs::metadata(&path) {
        Ok(_) => Ok(Some((snapshot::read_meta(&path)?, path))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The in-place forced promotion, on the `sled::Db` of `dir` that stays open
/// (DESIGN.md "Forced promotion", in place). `db` must be the database of
/// `dir` (opened at `dir/sled`).
///
/// **Precondition: no Raft runs on `db`.** The old `Raft` is shut down and
/// its `LogStore` and `StateMachineStore` (and every clone) are dropped; this
/// is checked: while [`crate::store_in_use`]`(dir)` is true the call fails
/// with `ResourceBusy` and changes nothing (wait with
/// [`crate::wait_store_released`]). Readers may stay alive, but
/// `StateReader`s of the old store read nothing useful afterwards (their
/// state machine generation is dropped: reads log an error and return
/// empty): replace them with the new store's. Old `LogReaderHandle`s keep
/// working (the log tree is emptied, not dropped).
///
/// Steps:
/// 1. Writes the single-voter snapshot of the state, caught up per
///    `catch_up` (exactly as [`build_snapshot_file_offline`]), to
///    `dir/`[`FORCED_SNAPSHOT_FILE`] (via `.tmp`, fsync, rename, fsync of
///    `dir`). Nothing else has changed yet: a failure or crash here leaves
///    the old store as it was.
/// 2. Creates `dir/`[`RESET_MARKER_FILE`] and fsyncs it and `dir`.
/// 3. Clears the store: every file of `dir/snapshots`, the state machine
///    (`sm_root` pointer and every `sm.*` generation), the log tree, the
///    `raft_meta` tree (vote, committed, last purged).
/// 4. Durable flush (`SledSync::flush`: sled's blob files, its flush, then
///    `fdatasync` of its data file).
/// 5. Removes the marker and fsyncs `dir`.
///
/// A crash during 3–4 leaves the marker, and the next [`crate::open`] or
/// [`crate::open_with_db`] repeats 3–5 before anything reads the store.
///
/// Afterwards [`crate::open_with_db`]`(db.clone(), dir)` gives a pristine
/// store (no vote, no log, no snapshot, empty state machine) for a new
/// `Raft::new`; then `install_full_snapshot` with the returned meta and the
/// file at the returned path (see [`build_snapshot_file_offline`] for the
/// vote to use), elect, and delete the file. Returns the meta and the path.
///
/// # Errors
/// - the store is in use (above), or a marker is already there (cannot
///   happen after `open`, which finishes it);
/// - nothing was ever applied; the log lacks an entry `catch_up` needs;
/// - sled or I/O errors. An error after step 2 leaves the marker: the next
///   open finishes the reset, and the snapshot file is already durable.
pub fn reset_to_single_voter(
    db: &sled::Db,
    dir: &Path,
    node_id: u64,
    node: NodeInfo,
    catch_up: CatchUp,
) -> Result<(SnapshotMeta, PathBuf), StorageError> {
    // Held for the whole reset: a concurrent open_with_db is refused too.
    let _writer = crate::in_use::register(dir)?;
    let marker = dir.join(RESET_MARKER_FILE);
    if marker.exists() {
        return Err(invalid(
            "an interrupted reset is pending: open the store (which finishes it) \
             and install the existing forced snapshot",
        ));
    }
    let sled_sync = SledSync::open(&dir.join(SLED_DIR))?;

    // 1. The snapshot, durably, before anything is cleared.
    let out = dir.join(FORCED_SNAPSHOT_FILE);
    let root = db.open_tree(keys::SM_ROOT_TREE)?;
    let generation = match root.get(keys::SM_ROOT_CURRENT)? {
        Some(v) => codec::decode::<u64>(&v)?,
        None => 0,
    };
    let sm_tree = db.open_tree(keys::sm_tree_name(generation))?;
    // Opened without the purge marker: nothing is removed, and the entries
    // read (after the applied index) lie above any purge anyway.
    let (log, _) = SegmentLog::open(&dir.join(LOG_DIR), None)?;
    let meta = write_single_voter_snapshot(db, &log, &sm_tree, node_id, node, catch_up, &out)?;
    drop(sm_tree);
    drop(log);

    // 2. The marker, durably.
    {
        let mut f = fs::File::create(&marker)?;
        io::Write::write_all(
            &mut f,
            b"tandem-storage: reset to a single voter in progress; open finishes it\n",
        )?;
        f.sync_all()?;
    }
    snapshot::sync_dir(dir)?;

    // 3.-5.
    clear_and_unmark(db, dir, &sled_sync)?;
    tracing::warn!(dir = %dir.display(), node_id, last_log_id = ?meta.last_log_id, "store reset in place for a forced promotion");
    Ok((meta, out))
}

/// Called by `open_with_db`: finishes a reset interrupted after its marker.
pub(crate) fn finish_interrupted_reset(
    db: &sled::Db,
    dir: &Path,
    sled_sync: &SledSync,
) -> Result<(), StorageError> {
    if dir.join(RESET_MARKER_FILE).exists() {
        tracing::warn!(dir = %dir.display(), "finishing an interrupted reset to a single voter");
        clear_and_unmark(db, dir, sled_sync)?;
    }
    Ok(())
}

/// Steps 3–5 of [`reset_to_single_voter`]. Idempotent.
fn clear_and_unmark(db: &sled::Db, dir: &Path, sled_sync: &SledSync) -> Result<(), StorageError> {
    // Snapshot files first: openraft installs a snapshot it finds at start.
    let snap_dir = dir.join(SNAPSHOT_DIR);
    if snap_dir.exists() {
        snapshot::remove_all(&snap_dir)?;
        snapshot::sync_dir(&snap_dir)?;
    }
    // The state machine: no pointer (generation 0) and no generation.
    db.open_tree(keys::SM_ROOT_TREE)?.clear()?;
    for name in db.tree_names() {
        if name.starts_with(keys::SM_TREE_PREFIX.as_bytes()) {
            db.drop_tree(&name)?;
        }
    }
    // The log: its segment files (durably), and a log still in sled's tree
    // (the format before segments).
    SegmentLog::clear_dir(&dir.join(LOG_DIR))?;
    db.open_tree(keys::LOG_TREE)?.clear()?;
    // The redo record of the last batch (it must not be replayed over the
    // new, empty generation 0).
    crate::redo::forget(db)?;
    // Vote, committed, last purged.
    db.open_tree(keys::RAFT_META_TREE)?.clear()?;
    // Durable, as the log store's flush.
    sled_sync.flush(db)?;
    fs::remove_file(dir.join(RESET_MARKER_FILE))?;
    snapshot::sync_dir(dir)?;
    Ok(())
}
