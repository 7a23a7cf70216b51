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
use crate::snapshot;
use crate::state_machine::read_applied_state;
use crate::types::{Entry, LogId, NodeInfo, SnapshotMeta, StoredMembership};
use crate::{SLED_DIR, SNAPSHOT_DIR};

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
    let log = store.db.open_tree(keys::LOG_TREE)?;
    let raft_meta = store.db.open_tree(keys::RAFT_META_TREE)?;
    let cur = store.sm.shared.current();
    let (applied, _) = read_applied_state(&cur.tree)?;

    let target = match catch_up {
        CatchUp::Applied => None,
        CatchUp::Committed => match raft_meta.get(RaftMetaKey::Committed.as_bytes())? {
            Some(v) => codec::decode::<Option<LogId>>(&v)?.map(|l| l.index),
            None => None,
        },
        CatchUp::AllLogged => match log.last()? {
            Some((_, v)) => Some(codec::decode::<Entry>(&v)?.log_id.index),
            None => None,
        },
    };
    let first = applied.map_or(0, |l| l.index + 1);
    let mut entries = Vec::new();
    if let Some(target) = target.filter(|t| *t >= first) {
        for kv in log.range(first.to_be_bytes()..=target.to_be_bytes()) {
            let (_, v) = kv?;
            entries.push(codec::decode::<Entry>(&v)?);
        }
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

    let mut ov = Overlay::new(&cur.tree);
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
    tracing::info!(path = %out.display(), last_log_id = %last_log_id, node_id, "offline single-voter snapshot written");
    Ok((meta, out.to_path_buf()))
}

/// Removes the store in `dir`: its snapshot directory first, then its sled
/// directory (so an interrupted wipe never leaves old snapshots beside a
/// fresh log), then fsyncs `dir`. Other files in `dir` are kept. Missing
/// parts are fine (a wipe can be repeated). The store must be closed.
///
/// # Errors
/// I/O errors.
pub fn wipe(dir: &Path) -> io::Result<()> {
    for sub in [SNAPSHOT_DIR, SLED_DIR] {
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
