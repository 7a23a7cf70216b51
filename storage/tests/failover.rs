//! Storage for the failover relationship: the log reader of the diverged
//! export, snapshots carrying epoch/settings/history, and the forced
//! promotion with a real openraft `Raft`: offline (single-voter snapshot,
//! wipe, install, elect) and in place on the open `sled::Db` (shutdown,
//! reset, open_with_db, install, elect).

mod common;
use common::{apply, build_snapshot, open};

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::async_runtime::WatchReceiver;
use openraft::entry::RaftEntry;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{
    Membership, Raft, RaftLogReader, RaftNetworkFactory, RaftNetworkV2, RaftSnapshotBuilder,
};
use tandem_storage::{
    CatchUp, Entry, EpochRecord, LogId, LoggedEntry, NodeInfo, NodeKind, Request, Response,
    StorageError, Store, TypeConfig, FORCED_SNAPSHOT_FILE, RESET_MARKER_FILE,
};

fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId { term, node_id },
        index,
    )
}

async fn append(store: &mut Store, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store
        .log
        .append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback called").expect("flushed");
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        kind: NodeKind::Appliance,
        peer_addr: format!("{name}:7001"),
        api_addr: format!("{name}:8443"),
    }
}

fn three_nodes() -> Membership<u64, NodeInfo> {
    Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        BTreeMap::from([(1, node("a")), (2, node("b")), (3, node("w"))]),
    )
    .expect("valid membership")
}

fn put(key: &str, value: &str) -> Request {
    Request::ConfigPut {
        key: key.into(),
        value_json: value.into(),
        actor: "admin".into(),
        at_ms: 1,
        if_version: None,
    }
}

fn event(kind: &str) -> Request {
    Request::HistoryAppend {
        at_ms: 5,
        node: 1,
        kind: kind.into(),
        actor: "admin".into(),
        details_json: "{}".into(),
    }
}

/// The log of a 3-node cluster led by node 1 in term 3: membership, then
/// state of every kind. Indexes 1..=8.
fn cluster_log() -> Vec<Entry> {
    let reqs = vec![
        Request::Bootstrap {
            cluster_id: "c".into(),
            admin_token_hash: "h".into(),
        },
        put("net/ip", "\"10.0.0.1/24\""),
        put("svc/web", "{\"port\":443}"),
        Request::Multi(vec![
            Request::RaiseEpoch {
                expected_epoch: 0,
                primary: 1,
                forced: false,
                forked_at: None,
                at_ms: 10,
            },
            event("primary"),
        ]),
        Request::SettingsPut {
            settings_json: "{\"auto_failover\":true}".into(),
            if_version: Some(0),
            actor: "admin".into(),
            at_ms: 11,
        },
        event("sync"),
        put("late", "1"),
    ];
    let mut entries = vec![Entry::new_membership(log_id(3, 1, 1), three_nodes())];
    for (i, r) in reqs.into_iter().enumerate() {
        entries.push(Entry::new_normal(log_id(3, 1, i as u64 + 2), r));
    }
    entries
}

#[tokio::test]
async fn log_reader_reads_the_raw_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = open(dir.path());
    let reader = store.log_reader();
    assert_eq!(reader.last_index().expect("read"), None);
    assert!(reader.entries_from(0, 10).expect("read").is_empty());
    let mut entries = cluster_log();
    entries.push(Entry::new_blank(log_id(4, 2, 9)));
    append(&mut store, entries.clone()).await;
    let clone = reader.clone();
    assert_eq!(clone.last_index().expect("read"), Some(9));
    let got = clone.entries_from(7, 100).expect("read");
    assert_eq!(
        got,
        vec![
            LoggedEntry {
                index: 7,
                term: 3,
                leader_node: 1,
                request: Some(event("sync")),
            },
            LoggedEntry {
                index: 8,
                term: 3,
                leader_node: 1,
                request: Some(put("late", "1")),
            },
            LoggedEntry {
                index: 9,
                term: 4,
                leader_node: 2,
                request: None,
            },
        ]
    );
    let first = reader.entries_from(0, 2).expect("read");
    assert_eq!(
        first.iter().map(|e| e.index).collect::<Vec<_>>(),
        [1, 2],
        "limit is honoured, membership entries carry no request"
    );
    assert_eq!(first[0].request, None);
    // Concurrent with openraft's log IO: a purge is visible at once.
    store.log.purge(log_id(3, 1, 4)).await.expect("purge");
    assert_eq!(reader.entries_from(0, 1).expect("read")[0].index, 5);
    store
        .log
        .truncate_after(Some(log_id(3, 1, 6)))
        .await
        .expect("truncate");
    assert_eq!(reader.last_index().expect("read"), Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_round_trip_carries_epoch_settings_history() {
    let dir_l = tempfile::tempdir().expect("temp dir");
    let dir_f = tempfile::tempdir().expect("temp dir");
    let mut leader = open(dir_l.path());
    let mut follower = open(dir_f.path());
    apply(&mut leader, cluster_log()).await;
    let digest = leader.reader.digest();
    assert_eq!(digest.0, Some(8));

    let snap = build_snapshot(&mut leader).await;
    let meta = snap.meta.clone();
    follower
        .sm
        .install_snapshot(&meta, snap.snapshot)
        .await
        .expect("install");
    assert_eq!(follower.reader.digest(), digest);
    let r = &follower.reader;
    assert_eq!(r.epoch(), leader.reader.epoch());
    assert_eq!(r.epoch().primary, Some(1));
    assert_eq!(r.settings(), leader.reader.settings());
    assert_eq!(r.settings().map(|s| s.version), Some(1));
    assert_eq!(r.history_total(), 2);
    assert_eq!(
        r.history(None, 10, None),
        leader.reader.history(None, 10, None)
    );
    // Both continue identically.
    for s in [&mut leader, &mut follower] {
        apply(s, vec![Entry::new_normal(log_id(3, 1, 9), event("after"))]).await;
    }
    assert_eq!(follower.reader.digest(), leader.reader.digest());
    assert_eq!(follower.reader.history(None, 1, None)[0].seq, 2);
}

/// A network where every peer is unreachable.
struct DeadNetwork;

struct DeadPeer;

fn down() -> Unreachable<TypeConfig> {
    Unreachable::new(&std::io::Error::other("peer is down (test network)"))
}

impl RaftNetworkFactory<TypeConfig> for DeadNetwork {
    type Network = DeadPeer;

    async fn new_client(&mut self, _target: u64, _node: &NodeInfo) -> DeadPeer {
        DeadPeer
    }
}

impl RaftNetworkV2<TypeConfig> for DeadPeer {
    type SnapshotData = tokio::fs::File;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(down()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(down()))
    }

    async fn pre_vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(down()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<TypeConfig>,
        _snapshot: SnapshotOf<TypeConfig, tokio::fs::File>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(down()))
    }
}

fn raft_config() -> Arc<openraft::Config> {
    let cfg = openraft::Config {
        cluster_name: "tandem-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        ..Default::default()
    };
    Arc::new(cfg.validate().expect("valid config"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_promotion_end_to_end() {
    let base = tempfile::tempdir().expect("temp dir");
    let dir = base.path().join("data");
    let out = base.path().join("forced.snap");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // A file of the node's own beside the store survives the wipe.
    std::fs::write(dir.join("node.toml"), "id = 2\n").expect("write");

    // Node 2 (backup of a 3-node cluster led by node 1): entries 1..=8 in
    // its log, 1..=6 applied, committed known up to 7.
    {
        let mut store = open(&dir);
        let log = cluster_log();
        append(&mut store, log.clone()).await;
        store
            .log
            .save_committed(Some(log_id(3, 1, 7)))
            .await
            .expect("committed");
        store
            .log
            .save_vote(&openraft::Vote::new_committed(3, 1))
            .await
            .expect("vote");
        apply(&mut store, log[..6].to_vec()).await;
        assert_eq!(store.reader.applied_index(), Some(6));
        store.flush().expect("flush");
    }

    // Refused while the store is open (sled's lock) and inside the store.
    {
        let _open = open(&dir);
        let err = tandem_storage::build_snapshot_file_offline(
            &dir,
            1 << 20,
            2,
            node("b"),
            CatchUp::Committed,
            &out,
        )
        .expect_err("the store is locked while open");
        assert!(
            matches!(err, tandem_storage::StorageError::Sled(_)),
            "{err}"
        );
    }
    let err = tandem_storage::build_snapshot_file_offline(
        &dir,
        1 << 20,
        2,
        node("b"),
        CatchUp::Committed,
        &dir.join("x.snap"),
    )
    .expect_err("the output must be outside the store");
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(!out.exists());

    // 1. Offline single-voter snapshot, caught up to the committed index.
    let (meta, path) = tandem_storage::build_snapshot_file_offline(
        &dir,
        1 << 20,
        2,
        node("b"),
        CatchUp::Committed,
        &out,
    )
    .expect("offline snapshot");
    assert_eq!(path, out);
    assert_eq!(meta.last_log_id, Some(log_id(3, 1, 7)));
    assert_eq!(
        meta.last_membership.voter_ids().collect::<Vec<_>>(),
        vec![2]
    );
    // The store itself was not changed.
    assert_eq!(open(&dir).reader.applied_index(), Some(6));

    // 2. Wipe; 3. pristine store and Raft with every peer unreachable.
    tandem_storage::wipe(&dir).expect("wipe");
    tandem_storage::wipe(&dir).expect("a wipe can be repeated");
    assert!(dir.join("node.toml").exists(), "other files are kept");
    let store = open(&dir);
    assert_eq!(store.reader.applied_index(), None);
    let reader = store.reader.clone();
    let raft = Raft::<TypeConfig, _>::new(2, raft_config(), DeadNetwork, store.log, store.sm)
        .await
        .expect("raft starts");

    // 4. Install with the committed vote of the leader that proposed the
    //    snapshot's last entry (the FAQ recipe), then elect.
    let last = meta.last_log_id.expect("a last log id");
    let vote = openraft::Vote::new_committed(last.leader_id.term, last.leader_id.node_id);
    let file = tokio::fs::File::open(&path).await.expect("open snapshot");
    raft.install_full_snapshot(
        vote,
        openraft::Snapshot {
            meta: meta.clone(),
            snapshot: file,
        },
    )
    .await
    .expect("install");
    raft.trigger().elect(false).await.expect("elect");
    raft.wait(Some(Duration::from_secs(10)))
        .current_leader(2, "node 2 becomes leader alone")
        .await
        .expect("leader within 10 s");

    // 5. Writes work; the state from before is there, plus entry 7.
    let resp = raft
        .client_write(Request::RaiseEpoch {
            expected_epoch: 1,
            primary: 2,
            forced: true,
            forked_at: Some(last.index),
            at_ms: 99,
        })
        .await
        .expect("write");
    assert_eq!(resp.data, Response::Epoch { epoch: 2 });
    let resp = raft
        .client_write(put("after", "true"))
        .await
        .expect("write");
    assert_eq!(resp.data, Response::ConfigWritten { version: 1 });
    assert!(resp.log_id.index > last.index);
    assert_eq!(
        reader.config_get("net/ip").map(|e| e.value_json),
        Some("\"10.0.0.1/24\"".into())
    );
    assert!(reader.config_get("svc/web").is_some());
    assert!(
        reader.config_get("late").is_none(),
        "entry 8 was not committed"
    );
    assert_eq!(reader.history_total(), 2, "entry 7 (history) was caught up");
    assert_eq!(reader.settings().map(|s| s.version), Some(1));
    assert_eq!(
        reader.epoch(),
        EpochRecord {
            epoch: 2,
            primary: Some(2),
            forced: true,
            forked_at: Some(7),
            since_ms: 99
        }
    );
    let m = raft.metrics().borrow_watched().membership_config.clone();
    assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![2]);
    assert_eq!(
        m.membership().get_node(&2).map(|n| n.name.as_str()),
        Some("b")
    );
    raft.shutdown().await.expect("shutdown");
    drop(raft);
    drop(reader);
    // What `Raft` did not take: the reader and the db handle.
    drop(store.reader);
    drop(store.db);

    // After a restart the state machine reports the single-voter membership
    // (the snapshot's own `last_membership` record was rewritten too).
    std::fs::remove_file(&out).expect("the offline file is not needed any more");
    let mut store = None;
    for _ in 0..100 {
        match tandem_storage::open(&dir, 4 << 20) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut store = store.expect("the store reopens after shutdown");
    let (applied, membership) = store.sm.applied_state().await.expect("read");
    assert!(applied.expect("applied").index > last.index);
    assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![2]);
    assert_eq!(store.reader.config_get("after").map(|e| e.version), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_snapshot_catch_up_modes() {
    let base = tempfile::tempdir().expect("temp dir");
    let dir = base.path().join("data");
    {
        let mut store = open(&dir);
        let log = cluster_log();
        append(&mut store, log.clone()).await;
        store
            .log
            .save_committed(Some(log_id(3, 1, 7)))
            .await
            .expect("committed");
        apply(&mut store, log[..6].to_vec()).await;
    }
    // The log's flusher task ends just after it acknowledged the last
    // append; an offline open before that finds sled still locked.
    assert!(
        tandem_storage::wait_store_released(&dir, Duration::from_secs(10)).await,
        "the store was not released"
    );
    for (mode, index, late, total) in [
        (CatchUp::Applied, 6, false, 1),
        (CatchUp::Committed, 7, false, 2),
        (CatchUp::AllLogged, 8, true, 2),
    ] {
        let out = base.path().join(format!("{mode:?}.snap"));
        let (meta, path) =
            tandem_storage::build_snapshot_file_offline(&dir, 1 << 20, 3, node("w"), mode, &out)
                .expect("offline snapshot");
        assert_eq!(meta.last_log_id, Some(log_id(3, 1, index)), "{mode:?}");
        let target = tempfile::tempdir().expect("temp dir");
        let mut fresh = open(target.path());
        let file = tokio::fs::File::open(&path).await.expect("open");
        fresh
            .sm
            .install_snapshot(&meta, file)
            .await
            .expect("the offline file is a normal snapshot");
        let (applied, membership) = fresh.sm.applied_state().await.expect("read");
        assert_eq!(applied, meta.last_log_id);
        assert_eq!(membership, meta.last_membership);
        assert_eq!(fresh.reader.config_get("late").is_some(), late, "{mode:?}");
        assert_eq!(fresh.reader.history_total(), total, "{mode:?}");
        assert_eq!(fresh.reader.cluster_id().as_deref(), Some("c"));
    }
    // The source store is unchanged by all of it.
    assert_eq!(open(&dir).reader.applied_index(), Some(6));

    // Nothing applied: nothing to promote.
    let empty = base.path().join("empty");
    drop(open(&empty));
    let err = tandem_storage::build_snapshot_file_offline(
        &empty,
        1 << 20,
        1,
        node("a"),
        CatchUp::Applied,
        &base.path().join("e.snap"),
    )
    .expect_err("no state");
    assert!(
        err.to_string().contains("nothing was ever applied"),
        "{err}"
    );
}

fn is_busy(err: &StorageError) -> bool {
    matches!(err, StorageError::Io(e) if e.kind() == std::io::ErrorKind::ResourceBusy)
}

fn snapshot_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).expect("read dir").count()
}

/// Node 2 (backup of a 3-node cluster led by node 1): entries 1..=8 in its
/// log, 1..=6 applied, committed known up to 7, a snapshot file at 6. Index
/// 0 counts as purged (openraft reads the first log id at startup).
async fn backup_state(store: &mut Store) {
    let log = cluster_log();
    append(store, log.clone()).await;
    store.log.purge(log_id(3, 1, 0)).await.expect("purge 0");
    store
        .log
        .save_committed(Some(log_id(3, 1, 7)))
        .await
        .expect("committed");
    store
        .log
        .save_vote(&openraft::Vote::new_committed(3, 1))
        .await
        .expect("vote");
    apply(store, log[..6].to_vec()).await;
    store
        .sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot at 6");
    assert_eq!(snapshot_files(store.snapshot_dir()), 1);
    store.flush().expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_promotion_in_place() {
    let base = tempfile::tempdir().expect("temp dir");
    let dir = base.path().join("data");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("node.toml"), "id = 2\n").expect("write");

    let mut store = open(&dir);
    backup_state(&mut store).await;
    // The node's long-lived handles: the Db (admin API, background tasks),
    // a state reader and a log reader of the OLD store. They stay alive
    // through the whole promotion.
    let old_log_reader = store.log_reader();
    let snapshot_dir = store.snapshot_dir().to_path_buf();
    let old_reader = store.reader;
    let node_db = store.db;
    let db = node_db.clone();

    // The old Raft of the 3-node cluster runs on the store (every peer is
    // unreachable); at startup it applies up to the persisted committed 7.
    let raft = Raft::<TypeConfig, _>::new(2, raft_config(), DeadNetwork, store.log, store.sm)
        .await
        .expect("raft starts");
    raft.wait(Some(Duration::from_secs(10)))
        .applied_index(Some(7), "startup applies the committed entries")
        .await
        .expect("applied 7");

    // Refused while the old Raft owns the store: nothing is written.
    assert!(tandem_storage::store_in_use(&dir));
    let err = tandem_storage::reset_to_single_voter(&db, &dir, 2, node("b"), CatchUp::Committed)
        .expect_err("the old store is alive");
    assert!(is_busy(&err), "{err}");
    assert!(!dir.join(FORCED_SNAPSHOT_FILE).exists());
    assert!(!dir.join(RESET_MARKER_FILE).exists());
    let err = tandem_storage::open_with_db(db.clone(), &dir)
        .err()
        .expect("a second store over a live one is refused");
    assert!(is_busy(&err), "{err}");

    // 1. Shut the old Raft down; its tasks drop the log store and state
    //    machine (the state machine worker a moment after `shutdown`).
    raft.shutdown().await.expect("shutdown");
    drop(raft);
    assert!(
        tandem_storage::wait_store_released(&dir, Duration::from_secs(10)).await,
        "the old store objects are dropped after shutdown"
    );

    // 2. Reset in place: single-voter snapshot file, then a pristine store.
    let (meta, path) =
        tandem_storage::reset_to_single_voter(&db, &dir, 2, node("b"), CatchUp::Committed)
            .expect("reset");
    assert_eq!(path, dir.join(FORCED_SNAPSHOT_FILE));
    assert_eq!(meta.last_log_id, Some(log_id(3, 1, 7)));
    assert_eq!(
        meta.last_membership.voter_ids().collect::<Vec<_>>(),
        vec![2]
    );
    assert!(!dir.join(RESET_MARKER_FILE).exists());
    assert_eq!(snapshot_files(&snapshot_dir), 0, "old snapshots removed");
    assert!(dir.join("node.toml").exists(), "other files are kept");
    let pending = tandem_storage::pending_forced_snapshot(&dir).expect("read");
    assert_eq!(pending, Some((meta.clone(), path.clone())));

    // 3. A pristine store over the same, still open Db.
    let store = tandem_storage::open_with_db(db.clone(), &dir).expect("open_with_db");
    assert_eq!(store.reader.applied_index(), None);
    assert_eq!(store.reader.cluster_id(), None);
    assert_eq!(store.log_reader().last_index().expect("read"), None);
    assert_eq!(snapshot_files(store.snapshot_dir()), 0);
    let reader = store.reader.clone();
    let new_log_reader = store.log_reader();
    let mut log = store.log;
    let mut sm = store.sm;
    assert_eq!(log.read_vote().await.expect("read"), None);
    assert_eq!(log.read_committed().await.expect("read"), None);
    let state = log.get_log_state().await.expect("read");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
    assert!(sm.get_current_snapshot().await.expect("read").is_none());
    assert_eq!(
        sm.applied_state().await.expect("read"),
        (None, Default::default())
    );

    // 4. New Raft, install the single-voter snapshot, elect.
    let raft = Raft::<TypeConfig, _>::new(2, raft_config(), DeadNetwork, log, sm)
        .await
        .expect("raft starts");
    let last = meta.last_log_id.expect("a last log id");
    let vote = openraft::Vote::new_committed(last.leader_id.term, last.leader_id.node_id);
    let file = tokio::fs::File::open(&path).await.expect("open snapshot");
    raft.install_full_snapshot(
        vote,
        openraft::Snapshot {
            meta: meta.clone(),
            snapshot: file,
        },
    )
    .await
    .expect("install");
    raft.trigger().elect(false).await.expect("elect");
    raft.wait(Some(Duration::from_secs(10)))
        .current_leader(2, "node 2 becomes leader alone")
        .await
        .expect("leader within 10 s");

    // 5. Writes work; the old state is read through the NEW reader.
    let resp = raft
        .client_write(Request::RaiseEpoch {
            expected_epoch: 1,
            primary: 2,
            forced: true,
            forked_at: Some(last.index),
            at_ms: 99,
        })
        .await
        .expect("write");
    assert_eq!(resp.data, Response::Epoch { epoch: 2 });
    let resp = raft
        .client_write(put("after", "true"))
        .await
        .expect("write");
    assert_eq!(resp.data, Response::ConfigWritten { version: 1 });
    assert!(resp.log_id.index > last.index);
    assert_eq!(
        reader.config_get("net/ip").map(|e| e.value_json),
        Some("\"10.0.0.1/24\"".into())
    );
    assert!(reader.config_get("svc/web").is_some());
    assert!(
        reader.config_get("late").is_none(),
        "entry 8 was not committed"
    );
    assert_eq!(reader.history_total(), 2, "entry 7 (history) was caught up");
    assert_eq!(reader.settings().map(|s| s.version), Some(1));
    assert_eq!(reader.cluster_id().as_deref(), Some("c"));
    assert_eq!(
        reader.epoch(),
        EpochRecord {
            epoch: 2,
            primary: Some(2),
            forced: true,
            forked_at: Some(7),
            since_ms: 99
        }
    );
    let m = raft.metrics().borrow_watched().membership_config.clone();
    assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![2]);

    // The handles: the new store's log reader sees the new log; an old log
    // reader still answers, with the log as it was before the reset (the
    // node takes a new one from the new store); the old state reader's
    // generation is gone (replace it).
    assert_eq!(
        new_log_reader.last_index().expect("read"),
        Some(resp.log_id.index)
    );
    assert!(old_log_reader.last_index().is_ok());
    assert_eq!(old_reader.config_get("net/ip"), None);

    std::fs::remove_file(&path).expect("the forced snapshot is not needed any more");
    assert_eq!(
        tandem_storage::pending_forced_snapshot(&dir).expect("read"),
        None
    );

    // Restart: drop everything (Db included) and reopen with `open`.
    raft.shutdown().await.expect("shutdown");
    drop(raft);
    drop((reader, old_reader, old_log_reader, new_log_reader));
    drop((store.reader, store.db));
    // (`node_db` was open from the first `open` until here.)
    drop((db, node_db));
    let mut store = None;
    for _ in 0..100 {
        match tandem_storage::open(&dir, 4 << 20) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut store = store.expect("the store reopens after shutdown");
    let (applied, membership) = store.sm.applied_state().await.expect("read");
    assert!(applied.expect("applied").index > last.index);
    assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![2]);
    assert_eq!(store.reader.config_get("after").map(|e| e.version), Some(1));
    assert!(store.reader.config_get("net/ip").is_some());
    assert_eq!(store.reader.epoch().epoch, 2);
    assert!(store.log.read_vote().await.expect("read").is_some());
    let state = store.log.get_log_state().await.expect("read");
    assert!(state.last_log_id.expect("log").index > last.index);

    // And a Raft on it is leader again, alone.
    let raft = Raft::<TypeConfig, _>::new(2, raft_config(), DeadNetwork, store.log, store.sm)
        .await
        .expect("raft restarts");
    raft.wait(Some(Duration::from_secs(10)))
        .current_leader(2, "node 2 is leader again after the restart")
        .await
        .expect("leader within 10 s");
    let resp = raft
        .client_write(put("after-restart", "1"))
        .await
        .expect("write");
    assert_eq!(resp.data, Response::ConfigWritten { version: 1 });
    raft.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_reset_is_finished_at_open() {
    let base = tempfile::tempdir().expect("temp dir");
    let dir = base.path().join("data");
    let mut store = open(&dir);
    backup_state(&mut store).await;
    let db = store.db.clone();
    drop((store.log, store.sm, store.reader));
    assert!(!tandem_storage::store_in_use(&dir));

    // A crash right after the marker was written (step 2): the marker and
    // the forced snapshot are on disk, nothing is cleared yet.
    std::fs::write(dir.join(RESET_MARKER_FILE), "").expect("marker");
    let err = tandem_storage::reset_to_single_voter(&db, &dir, 2, node("b"), CatchUp::Committed)
        .expect_err("a pending reset is refused");
    assert!(err.to_string().contains("interrupted reset"), "{err}");
    drop((db, store.db));

    // `open` finishes the clear before anything reads the store.
    let mut store = open(&dir);
    assert!(!dir.join(RESET_MARKER_FILE).exists());
    assert_eq!(store.reader.applied_index(), None);
    assert_eq!(store.reader.cluster_id(), None);
    assert_eq!(store.log_reader().last_index().expect("read"), None);
    assert_eq!(snapshot_files(store.snapshot_dir()), 0);
    assert_eq!(store.log.read_vote().await.expect("read"), None);
    assert_eq!(store.log.read_committed().await.expect("read"), None);
    assert!(store
        .sm
        .get_current_snapshot()
        .await
        .expect("read")
        .is_none());

    // The same through open_with_db on a Db that stays open, after a real
    // reset of a store with state.
    backup_state(&mut store).await;
    let db = store.db.clone();
    drop((store.log, store.sm, store.reader));
    let (meta, path) =
        tandem_storage::reset_to_single_voter(&db, &dir, 3, node("w"), CatchUp::AllLogged)
            .expect("reset");
    assert_eq!(meta.last_log_id, Some(log_id(3, 1, 8)));
    std::fs::write(dir.join(RESET_MARKER_FILE), "").expect("marker");
    let mut again = tandem_storage::open_with_db(db.clone(), &dir).expect("open_with_db");
    assert!(!dir.join(RESET_MARKER_FILE).exists());
    assert_eq!(again.reader.applied_index(), None);
    assert!(path.exists(), "the forced snapshot is kept");
    let file = tokio::fs::File::open(&path).await.expect("open");
    again
        .sm
        .install_snapshot(&meta, file)
        .await
        .expect("the forced snapshot installs");
    assert_eq!(again.reader.applied_index(), Some(8));
    assert!(again.reader.config_get("late").is_some());
}
