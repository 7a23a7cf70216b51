//! Snapshot build / transfer / install, restart, and log persistence.

mod common;
use common::{apply, build_snapshot, open};

use std::io::{Seek, SeekFrom, Write};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;
use tandem_storage::{Entry, LogId, Request, Snapshot, Store, TypeConfig};

fn log_id(index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}

/// A state with `n` sessions, applied in batches of 1000 entries.
async fn fill(store: &mut Store, n: u64) {
    let mut index = 0;
    let mut batch = Vec::new();
    index += 1;
    batch.push(Entry::new_normal(
        log_id(index),
        Request::Bootstrap {
            cluster_id: "c".into(),
            admin_token_hash: "h".into(),
        },
    ));
    for i in 0..n {
        index += 1;
        batch.push(Entry::new_normal(
            log_id(index),
            Request::SessionPut {
                id: format!("session-{i:06}"),
                owner: "alice".into(),
                data_json: format!("{{\"n\":{i}}}"),
                created_ms: 1,
                expires_ms: 10_000 + i,
            },
        ));
        if batch.len() == 1000 {
            apply(store, std::mem::take(&mut batch)).await;
        }
    }
    apply(store, batch).await;
}

/// What the node's transport does: copy the leader's snapshot file into a
/// new incoming file on the follower, rewind, hand it over.
async fn transfer(snap: Snapshot, to: &Store) -> (std::path::PathBuf, tokio::fs::File) {
    let (path, mut incoming) =
        tandem_storage::incoming_snapshot_file(to.snapshot_dir()).expect("incoming file");
    let mut src = snap.snapshot.into_std().await;
    std::io::copy(&mut src, &mut incoming).expect("copy");
    incoming.flush().expect("flush");
    incoming.seek(SeekFrom::Start(0)).expect("seek");
    (path, tokio::fs::File::from_std(incoming))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_round_trip_and_restart() {
    let dir_l = tempfile::tempdir().expect("temp dir");
    let dir_f = tempfile::tempdir().expect("temp dir");
    let mut leader = open(dir_l.path());
    let mut follower = open(dir_f.path());
    fill(&mut leader, 10_000).await;
    assert_eq!(leader.reader.session_count(), 10_000);
    let digest_l = leader.reader.digest();
    assert_eq!(digest_l.0, Some(10_001));
    assert_eq!(leader.reader.snapshot_records(), 0, "no snapshot yet");

    let snap = build_snapshot(&mut leader).await;
    assert_eq!(snap.meta.last_log_id, Some(log_id(10_001)));
    // What the snapshot policy reads: two records per session (the record
    // and its expiry index) plus a few meta records.
    let records = leader.reader.snapshot_records();
    assert!((20_000..20_100).contains(&records), "{records} records");
    // Applying after the build does not change the built snapshot.
    apply(
        &mut leader,
        vec![Entry::new_normal(
            log_id(10_002),
            Request::SessionSweep { now_ms: u64::MAX },
        )],
    )
    .await;
    assert_eq!(leader.reader.session_count(), 0);

    let meta = snap.meta.clone();
    let (incoming_path, file) = transfer(snap, &follower).await;
    follower
        .sm
        .install_snapshot(&meta, file)
        .await
        .expect("install");
    std::fs::remove_file(incoming_path).expect("node removes its incoming file");
    assert_eq!(follower.reader.digest(), digest_l);
    assert_eq!(follower.reader.session_count(), 10_000);
    assert_eq!(follower.reader.snapshot_records(), records);
    assert_eq!(follower.reader.cluster_id().as_deref(), Some("c"));
    let cur = follower
        .sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a current snapshot");
    assert_eq!(cur.meta, meta);
    assert_eq!(
        follower.sm.applied_state().await.expect("applied").0,
        Some(log_id(10_001))
    );

    // The follower keeps applying on the installed state.
    apply(
        &mut follower,
        vec![Entry::new_normal(
            log_id(10_002),
            Request::SessionSweep { now_ms: u64::MAX },
        )],
    )
    .await;
    let digest_after = follower.reader.digest();
    assert_eq!(digest_after, leader.reader.digest());

    // Restart both: state, applied index and the snapshot survive.
    drop(follower);
    let mut follower = open(dir_f.path());
    assert_eq!(follower.reader.digest(), digest_after);
    assert_eq!(follower.reader.applied_index(), Some(10_002));
    assert_eq!(
        follower.reader.snapshot_records(),
        records,
        "read back at open"
    );
    let cur = follower
        .sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a current snapshot");
    assert_eq!(cur.meta, meta);
    assert_eq!(
        std::fs::read_dir(follower.snapshot_dir())
            .expect("ls")
            .count(),
        1
    );
}

#[tokio::test]
async fn corrupt_snapshot_is_refused_and_state_kept() {
    let dir_l = tempfile::tempdir().expect("temp dir");
    let dir_f = tempfile::tempdir().expect("temp dir");
    let mut leader = open(dir_l.path());
    let mut follower = open(dir_f.path());
    fill(&mut leader, 100).await;
    fill(&mut follower, 3).await;
    let before = follower.reader.digest();

    let snap = leader.sm.get_current_snapshot().await.expect("read");
    assert!(snap.is_none());
    let snap = build_snapshot(&mut leader).await;
    let meta = snap.meta.clone();
    let (path, file) = transfer(snap, &follower).await;
    // Flip one byte in the middle.
    let mut f = file.into_std().await;
    let len = f.metadata().expect("stat").len();
    f.seek(SeekFrom::Start(len / 2)).expect("seek");
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut f, &mut b).expect("read");
    f.seek(SeekFrom::Start(len / 2)).expect("seek");
    f.write_all(&[b[0] ^ 0x55]).expect("write");
    let err = follower
        .sm
        .install_snapshot(&meta, tokio::fs::File::from_std(f))
        .await
        .expect_err("a corrupt snapshot is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(follower.reader.digest(), before);
    std::fs::remove_file(path).expect("rm");
    drop(follower);
    let follower = open(dir_f.path());
    assert_eq!(follower.reader.digest(), before);
    assert_eq!(
        std::fs::read_dir(follower.snapshot_dir())
            .expect("ls")
            .count(),
        0
    );
}

#[tokio::test]
async fn log_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = open(dir.path());
    let entries = append_entries(&mut store, 100).await;
    store.log.purge(log_id(10)).await.expect("purge");
    store
        .log
        .save_committed(Some(log_id(50)))
        .await
        .expect("committed");
    store
        .log
        .save_vote(&openraft::Vote::new_committed(1, 1))
        .await
        .expect("vote");
    drop(store);

    let mut store = open(dir.path());
    let state = store.log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(10)));
    assert_eq!(state.last_log_id, Some(log_id(100)));
    let got = store.log.try_get_log_entries(0..1000).await.expect("read");
    assert_eq!(got, entries[10..]);
    assert_eq!(
        store.log.read_committed().await.expect("read"),
        Some(log_id(50))
    );
    assert_eq!(
        store.log.read_vote().await.expect("read"),
        Some(openraft::Vote::new_committed(1, 1))
    );
}

/// A purge returns before its entries are removed (they go in the
/// background): from the moment it returns, nothing at or below the purge
/// point is read or reported as the last entry, and after a restart the
/// entries are gone from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_entries_are_never_read_while_removed_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = open(dir.path());
    let entries = append_entries(&mut store, 5000).await;
    let reader = store.log_reader();

    store.log.purge(log_id(4000)).await.expect("purge");
    let got = store
        .log
        .try_get_log_entries(0..10_000)
        .await
        .expect("read");
    assert_eq!(got, entries[4000..]);
    assert_eq!(reader.entries_from(0, 1).expect("read")[0].index, 4001);

    // Everything purged: the purge point is the last log id, whatever the
    // background removal has reached.
    store.log.purge(log_id(5000)).await.expect("purge all");
    let state = store.log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(5000)));
    assert_eq!(state.last_log_id, Some(log_id(5000)));
    assert!(store
        .log
        .try_get_log_entries(0..10_000)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(reader.last_index().expect("read"), None);
    drop(reader);
    drop(store);

    let mut store = open(dir.path());
    let state = store.log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(5000)));
    // No segment file is left: every entry was purged.
    let left = std::fs::read_dir(dir.path().join("raft-log"))
        .expect("log dir")
        .count();
    assert_eq!(left, 0, "purged segments left");
}

/// Appends entries 1..=n (durably) and returns them.
async fn append_entries(store: &mut Store, n: u64) -> Vec<Entry> {
    let entries: Vec<Entry> = (1..=n)
        .map(|i| Entry::new_normal(log_id(i), Request::SessionDelete { id: format!("{i}") }))
        .collect();
    let (tx, rx) = TypeConfig::oneshot();
    store
        .log
        .append(entries.clone(), IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback called").expect("flushed");
    entries
}
