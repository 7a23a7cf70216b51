//! Rough append throughput of the log store (ignored by default; run with
//! `cargo test -p tandem-storage --release --test throughput -- --ignored --nocapture`).
//!
//! Mimics openraft's log IO task: appends are issued back to back (openraft
//! does not wait for one flush before the next append) and the callbacks are
//! awaited at the end.

use std::time::Instant;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use tandem_storage::{Entry, LogId, Request, TypeConfig};

fn log_id(index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn append_throughput() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = tandem_storage::open(dir.path(), 16 << 20).expect("open");
    for per_append in [1u64, 8, 64] {
        let total = 20_000u64;
        let start_index = store.reader.applied_index().unwrap_or(0);
        let _ = start_index;
        let base = per_append * 1_000_000;
        let t = Instant::now();
        let mut waits = Vec::new();
        let mut i = 0;
        while i < total {
            let entries: Vec<Entry> = (0..per_append)
                .map(|k| {
                    Entry::new_normal(
                        log_id(base + i + k),
                        Request::SessionPut {
                            id: format!("s{}", i + k),
                            owner: "alice".into(),
                            data_json: "{\"a\":1}".into(),
                            created_ms: 1,
                            expires_ms: 2,
                        },
                    )
                })
                .collect();
            let (tx, rx) = TypeConfig::oneshot();
            store
                .log
                .append(entries, IOFlushed::signal(tx))
                .await
                .expect("append");
            waits.push(rx);
            i += per_append;
            // Let the flusher run now and then, as openraft's task would.
            if waits.len() % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let issued = t.elapsed();
        for rx in waits {
            rx.await.expect("callback").expect("flushed");
        }
        let el = t.elapsed();
        println!(
            "{per_append} entries/append: {total} entries in {el:?} (issued in {issued:?}) = {:.0} entries/s",
            total as f64 / el.as_secs_f64()
        );
    }
}
