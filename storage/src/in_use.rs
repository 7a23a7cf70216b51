//! Which storage directories have live writers in this process.
//!
//! sled's file lock keeps a second *process* (or a second `sled::Db`) away
//! from a store, but not a second [`crate::Store`] built over the same,
//! already open `sled::Db` with [`crate::open_with_db`], nor a
//! [`crate::reset_to_single_voter`] run while the old `Raft` still owns the
//! log store and state machine. Every store built by `open_with_db`
//! registers a token here; its [`crate::LogStore`] (all clones, including
//! the flusher task) and [`crate::StateMachineStore`] (all clones) hold it,
//! readers ([`crate::StateReader`], [`crate::LogReaderHandle`]) do not. The
//! directory is "in use" while any holder lives.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::error::StorageError;

/// Held by the writers of one open store.
pub(crate) struct WriterToken;

static WRITERS: Mutex<Vec<(PathBuf, Weak<WriterToken>)>> = Mutex::new(Vec::new());

fn key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Registers a new writer token for `dir`, refusing if one is alive.
pub(crate) fn register(dir: &Path) -> Result<Arc<WriterToken>, StorageError> {
    let key = key(dir);
    let mut writers = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
    writers.retain(|(_, w)| w.strong_count() > 0);
    if writers.iter().any(|(k, _)| *k == key) {
        return Err(StorageError::Io(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "the store in {} is still in use (its LogStore or StateMachineStore is alive: \
                 shut the Raft down and wait for store_in_use to turn false)",
                dir.display()
            ),
        )));
    }
    let token = Arc::new(WriterToken);
    writers.push((key, Arc::downgrade(&token)));
    Ok(token)
}

/// Whether a [`crate::LogStore`] or [`crate::StateMachineStore`] of the store
/// in `dir` (opened by this process with [`crate::open`] or
/// [`crate::open_with_db`]) is still alive. Readers do not count.
///
/// After `raft.shutdown().await` the log store and state machine are dropped
/// by openraft's tasks shortly afterwards (the state machine worker exits on
/// its own once the core has stopped): wait for this to turn false, e.g. with
/// [`wait_store_released`], before [`crate::reset_to_single_voter`].
pub fn store_in_use(dir: &Path) -> bool {
    let key = key(dir);
    let writers = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
    writers
        .iter()
        .any(|(k, w)| *k == key && w.strong_count() > 0)
}

/// Waits (polling every 10 ms) until [`store_in_use`] is false for `dir`, at
/// most `timeout`. Returns whether the store was released.
pub async fn wait_store_released(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !store_in_use(dir) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
