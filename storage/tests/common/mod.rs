//! Helpers shared by the storage integration tests.

use std::time::Duration;

use futures::stream;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use tandem_storage::{Entry, Snapshot, Store};

/// Opens the store in `dir` with a 4 MiB cache. sled releases its file lock
/// a moment after a `Db` is dropped (its background threads still hold the
/// file), so a reopen right after a drop retries for a bounded time.
pub fn open(dir: &std::path::Path) -> Store {
    for _ in 0..250 {
        match tandem_storage::open(dir, 4 << 20) {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.expect("store opens"),
        }
    }
    panic!("sled's lock on {} was never released", dir.display());
}

/// Applies `entries` to the store's state machine, as openraft would.
pub async fn apply(store: &mut Store, entries: Vec<Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    store
        .sm
        .apply(stream::iter(items))
        .await
        .expect("apply succeeds");
}

/// Builds a snapshot of the store's state machine now, as openraft would.
pub async fn build_snapshot(store: &mut Store) -> Snapshot {
    store
        .sm
        .try_create_snapshot_builder(true)
        .await
        .expect("builder")
        .build_snapshot()
        .await
        .expect("build")
}
