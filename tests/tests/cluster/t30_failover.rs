use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Keys are `fw/<n / 1000>/<n>` so that each bucket fits one list call.
fn key(n: u64) -> String {
    format!("fw/{}/{n:06}", n / 1000)
}

pub(super) struct Writer {
    acked: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Writes `fw/...` keys with value `n` one after the other, following
    /// 421s and moving to another node on errors; records each 200.
    pub(super) fn start(c: &Cluster) -> Self {
        let apis: Vec<String> = c.nodes.iter().map(|n| n.api().to_string()).collect();
        let http = c.http.clone();
        let token = c.admin_token.clone();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn({
            let (acked, stop) = (acked.clone(), stop.clone());
            async move {
                let mut target = 0usize;
                let mut n = 0u64;
                // Bounded: at most 50_000 keys, and the test stops it.
                while !stop.load(Ordering::SeqCst) && n < 50_000 {
                    let url = format!("{}/api/v1/config/{}", apis[target], key(n));
                    let r = http
                        .put(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "value": n }))
                        .timeout(Duration::from_secs(3))
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            acked.lock().expect("acked lock").push(n);
                            n += 1;
                        }
                        Ok(resp) if resp.status() == StatusCode::MISDIRECTED_REQUEST => {
                            let loc = resp
                                .headers()
                                .get(reqwest::header::LOCATION)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            target = apis
                                .iter()
                                .position(|a| loc.starts_with(a.as_str()))
                                .unwrap_or((target + 1) % apis.len());
                            // Client back-off, not synchronisation.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => {
                            target = (target + 1) % apis.len();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
        Self {
            acked,
            stop,
            handle,
        }
    }

    pub(super) fn count(&self) -> usize {
        self.acked.lock().expect("acked lock").len()
    }

    pub(super) async fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the writer stops within 30 s")
            .expect("the writer did not panic");
        let acked = self.acked.lock().expect("acked lock").clone();
        acked
    }
}

pub(super) async fn assert_has_all(c: &Cluster, i: usize, acked: &[u64], stale: bool) {
    let last_bucket = acked.iter().max().map_or(0, |m| m / 1000);
    let mut found = BTreeMap::new();
    for b in 0..=last_bucket {
        found.extend(c.list(i, &format!("fw/{b}/"), stale).await);
    }
    for n in acked {
        assert_eq!(
            found.get(&key(*n)),
            Some(&json!(n)),
            "acknowledged write {} missing or wrong on {}",
            key(*n),
            c.nodes[i].name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_no_acknowledged_write_lost() {
    let mut c = Cluster::three(&[]).await;
    let old = c.leader().await;
    let writer = Writer::start(&c);
    wait_until("30 acknowledged writes", WAIT, || async {
        (writer.count() >= 30).then_some(())
    })
    .await;

    c.kill9(old);
    let at_kill = writer.count();
    let new = c.primary().await;
    assert_ne!(new, old);
    wait_until("30 writes acknowledged after the kill", WAIT, || async {
        (writer.count() >= at_kill + 30).then_some(())
    })
    .await;
    // The new leader also accepts a write directly.
    c.put_ok(new, "after-failover", &json!("yes")).await;
    let acked = writer.finish().await;
    assert!(acked.len() >= at_kill + 30);
    eprintln!(
        "t30: killed {} (leader), {} acked before the kill, {} in all; new leader {}",
        c.nodes[old].name,
        at_kill,
        acked.len(),
        c.nodes[new].name
    );
    assert_has_all(&c, new, &acked, false).await;

    c.restart(old).await;
    let applied = c.wait_caught_up(old).await;
    assert!(applied > 0);
    assert_has_all(&c, old, &acked, true).await;
    assert_eq!(
        c.list(old, "after-failover", true)
            .await
            .get("after-failover"),
        Some(&json!("yes"))
    );
}

/// DESIGN.md §2: "A witness leader never serves: as soon as an appliance
/// is caught up it transfers leadership to it, and until then writes
/// wait." The witness only stands for election when the backup cannot
/// win; force that: pause the backup, commit writes on primary + witness,
/// kill -9 the primary and resume the backup. Its log is shorter than the
/// witness's, so only the witness can lead: it must bring the backup up
/// to date and hand over, and the backup must end primary with every
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_leader_hands_over_to_an_appliance() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut c = Cluster::three(&[]).await;
    let p = c.primary().await;
    let b = (0..3)
        .find(|&i| i != p && !c.nodes[i].witness())
        .expect("a backup appliance");
    let pid = |c: &Cluster, i: usize| Pid::from_raw(c.nodes[i].pid().expect("runs") as i32);
    kill(pid(&c, b), Signal::SIGSTOP).expect("pausing our child");
    let mut acked = Vec::new();
    for k in 0..20 {
        let key = format!("while-backup-paused-{k}");
        c.put_ok(p, &key, &json!(k)).await;
        acked.push(key);
    }
    c.kill9(p);
    kill(pid(&c, b), Signal::SIGCONT).expect("resuming our child");
    let new = c.primary().await;
    assert_eq!(new, b, "the backup appliance ends primary, not the witness");
    let found = c.list(b, "while-backup-paused-", false).await;
    for (k, key) in acked.iter().enumerate() {
        assert_eq!(found.get(key), Some(&json!(k)), "{key} on the new primary");
    }
}
