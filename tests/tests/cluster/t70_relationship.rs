//! The relationship API (the failover page): planned swaps, failover after
//! a crash, sync and verify, refusals, settings, status.
use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tandem_web::{ReadinessView, SettingsView, SwapOutcome, SyncReport};

/// Bound on the nodes converging after an action.
const SETTLE: Duration = Duration::from_secs(15);
const SWAP_ACTOR: &str = "t70-swap";

/// `POST path` on node `i` with a JSON body and an actor header.
async fn post(c: &Cluster, i: usize, path: &str, body: &Value) -> reqwest::Response {
    c.req(i, Method::POST, path)
        .header("x-tandem-actor", SWAP_ACTOR)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} on {}: {e}", c.nodes[i].name))
}

/// A 200 answer decoded as `T`, else a panic with the body.
async fn ok_json<T: serde::de::DeserializeOwned>(resp: reqwest::Response, what: &str) -> T {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "{what}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

/// A 409 `refused` (or `conflict`) answer; returns its message.
async fn refused(resp: reqwest::Response, what: &str) -> String {
    let (status, body) = error_body(resp, what).await;
    assert_eq!(status, StatusCode::CONFLICT, "{what}: {body}");
    body["message"].as_str().unwrap_or_default().to_string()
}

async fn settings(c: &Cluster, i: usize) -> SettingsView {
    c.get_json(i, "/api/v1/settings")
        .await
        .unwrap_or_else(|| panic!("GET /api/v1/settings on {}", c.nodes[i].name))
}

/// `(primary, epoch)` as node `i` reports it.
async fn primary_epoch(c: &Cluster, i: usize) -> (Option<u64>, u64) {
    let s = c
        .status(i)
        .await
        .unwrap_or_else(|| panic!("status of {}", c.nodes[i].name));
    (s.primary, s.epoch)
}

/// A whole `SettingsUpdate` body from a view, with `edit` applied.
/// The shared address the tests configure.
const SHARED_IP: &str = "198.51.100.100/24";

/// `PUT /api/v1/settings` on node `i`: the settings in force with
/// [`SHARED_IP`] on the given interface of each given node.
async fn put_shared_ip(c: &Cluster, i: usize, on: &[(usize, &str)]) {
    let s0 = settings(c, i).await;
    let body = update_from(&s0, |v| {
        let interfaces: serde_json::Map<String, Value> = on
            .iter()
            .map(|(n, iface)| (c.nodes[*n].name.clone(), json!(iface)))
            .collect();
        v["shared_ips"] = json!([{ "address": SHARED_IP, "interfaces": interfaces }]);
    });
    let resp = c
        .req(i, Method::PUT, "/api/v1/settings")
        .json(&body)
        .send()
        .await
        .expect("PUT settings");
    assert_eq!(resp.status(), StatusCode::OK);
}

fn update_from(v: &SettingsView, edit: impl FnOnce(&mut Value)) -> Value {
    let mut body = json!({
        "primary_timeout_ms": v.primary_timeout_ms,
        "auto_failover": v.auto_failover,
        "test_ips": v.test_ips,
        "verify_interval_secs": v.verify_interval_secs,
        "bandwidth_limit_bps": v.bandwidth_limit_bps,
        "backup_operations": v.backup_operations,
        "shared_ips": v.shared_ips,
    });
    edit(&mut body);
    body
}

fn sw_key(n: u64) -> String {
    format!("sw/{}/{n:06}", n / 1000)
}

/// A writer of `sw/...` keys (value `n`), one at a time, following 421
/// `Location`s and retrying 503s with a short fixed back-off.
struct Writer {
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    failed: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(c: &Cluster, first: usize) -> Self {
        let apis: Vec<String> = c.nodes.iter().map(|n| n.api().to_string()).collect();
        let http = c.http.clone();
        let token = c.admin_token.clone();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn({
            let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
            async move {
                let mut target = first;
                let mut n = 0u64;
                // Bounded: at most 100_000 keys, and the test stops it.
                while !stop.load(Ordering::SeqCst) && n < 100_000 {
                    let url = format!("{}/api/v1/config/{}", apis[target], sw_key(n));
                    let r = http
                        .put(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "value": n }))
                        .timeout(Duration::from_secs(3))
                        .send()
                        .await;
                    let status = r.as_ref().map(reqwest::Response::status).ok();
                    if status == Some(StatusCode::OK) {
                        acked.lock().expect("acked lock").push((n, Instant::now()));
                        n += 1;
                        continue;
                    }
                    failed.lock().expect("failed lock").push(Instant::now());
                    // Client back-off, not synchronisation.
                    let pause = match (status, r) {
                        (Some(StatusCode::MISDIRECTED_REQUEST), Ok(resp)) => {
                            let loc = resp
                                .headers()
                                .get(reqwest::header::LOCATION)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            if let Some(t) = apis.iter().position(|a| loc.starts_with(a.as_str())) {
                                target = t;
                            }
                            10
                        }
                        (Some(StatusCode::SERVICE_UNAVAILABLE), _) => 10,
                        _ => {
                            target = (target + 1) % apis.len();
                            50
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        });
        Self {
            acked,
            failed,
            stop,
            handle,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("acked lock").len()
    }

    async fn finish(self) -> (Vec<(u64, Instant)>, Vec<Instant>) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the writer stops within 30 s")
            .expect("the writer did not panic");
        let acked = self.acked.lock().expect("acked lock").clone();
        let failed = self.failed.lock().expect("failed lock").clone();
        (acked, failed)
    }
}

/// Longest time without an acknowledged write around `[start, end]`.
fn max_gap(acked: &[(u64, Instant)], start: Instant, end: Instant) -> Duration {
    let before = acked
        .iter()
        .rev()
        .find(|(_, t)| *t < start)
        .map(|(_, t)| *t);
    let after = acked.iter().find(|(_, t)| *t > end).map(|(_, t)| *t);
    let mut points: Vec<Instant> = before.into_iter().collect();
    points.extend(
        acked
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t >= start && *t <= end),
    );
    points.extend(after);
    points
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// Waits until `/health/primary` answers 200 on `primary` only and
/// `/health/backup` 200 on `backup` (503 on the witness for both).
async fn wait_role_health(c: &Cluster, primary: usize, backup: usize, witness: usize) {
    let what = format!(
        "/health/primary 200 only on {} and /health/backup 200 on {}",
        c.nodes[primary].name, c.nodes[backup].name
    );
    wait_until(&what, SETTLE, || async {
        let mut ok = true;
        for i in [primary, backup, witness] {
            let (p, ph) = c.role_health(i, "primary").await?;
            let (b, bh) = c.role_health(i, "backup").await?;
            let want_p = if i == primary {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let want_b = if i == backup {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            ok &= p == want_p && ph.ok == (p == StatusCode::OK);
            ok &= b == want_b && bh.ok == (b == StatusCode::OK);
            if i == witness {
                assert_eq!(ph.role, "witness", "the witness's /health/primary");
            }
        }
        ok.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_swap_20_times_under_a_writer() {
    let c = Cluster::three(&[]).await;
    let mut roles = c.wait_roles(WAIT).await;
    let w = roles.witness;
    let writer = Writer::start(&c, roles.primary);
    wait_until("20 acknowledged writes", WAIT, || async {
        (writer.count() >= 20).then_some(())
    })
    .await;

    let mut windows = Vec::new();
    for round in 0..20 {
        let (p, b) = (roles.primary, roles.backup);
        // The primary must see the backup before a planned swap.
        c.wait_peer_reachable(p, b, true).await;
        let from = if round % 2 == 0 { p } else { b };
        let start = Instant::now();
        let resp = post(
            &c,
            from,
            "/api/v1/relationship/swap",
            &json!({"pull_sync": false, "force": false}),
        )
        .await;
        let what = format!("swap {round} asked of {}", c.nodes[from].name);
        let outcome: SwapOutcome = ok_json(resp, &what).await;
        assert_eq!(outcome.new_primary, c.nodes[b].id(), "{what}: {outcome:?}");
        assert_eq!(
            outcome.previous_primary,
            Some(c.nodes[p].id()),
            "{what}: {outcome:?}"
        );
        assert!(
            outcome.epoch > roles.epoch,
            "{what}: epoch {} after {}",
            outcome.epoch,
            roles.epoch
        );
        assert!(!outcome.forced, "{what}: {outcome:?}");
        let next = c.wait_roles(SETTLE).await;
        assert_eq!(next.primary, b, "{what}: roles {next:?}");
        assert_eq!(next.epoch, outcome.epoch, "{what}: roles {next:?}");
        wait_role_health(&c, b, p, w).await;
        let ws = c.status(w).await.expect("witness status");
        assert_eq!(ws.this_host.role, "witness");
        assert_ne!(ws.primary, Some(c.nodes[w].id()), "the witness is primary");
        windows.push((start, Instant::now(), outcome.duration_ms));
        roles = next;
    }
    let at_end = writer.count();
    let (acked, failed) = writer.finish().await;
    assert!(acked.len() >= at_end && at_end >= 20);

    for (k, (start, end, dur)) in windows.iter().enumerate() {
        let fails = failed.iter().filter(|t| *t >= start && *t <= end).count();
        eprintln!(
            "t70 swap {k:2}: swap took {dur} ms, max write gap {:?}, {fails} failed attempts",
            max_gap(&acked, *start, *end)
        );
    }
    eprintln!(
        "t70: {} writes acknowledged, {} failed attempts in all",
        acked.len(),
        failed.len()
    );

    // Every acknowledged write is on the final primary.
    let p = roles.primary;
    let last_bucket = acked.iter().map(|(n, _)| n / 1000).max().unwrap_or(0);
    let mut found = BTreeMap::new();
    for bucket in 0..=last_bucket {
        found.extend(c.list(p, &format!("sw/{bucket}/"), false).await);
    }
    for (n, _) in &acked {
        assert_eq!(
            found.get(&sw_key(*n)),
            Some(&json!(n)),
            "acknowledged write {} missing or wrong on the final primary {}",
            sw_key(*n),
            c.nodes[p].name
        );
    }

    let page = history(&c, p, "swap").await;
    let ours = page
        .items
        .iter()
        .filter(|e| e.kind == "swap" && e.actor == format!("admin-token:{SWAP_ACTOR}"))
        .count();
    assert!(
        ours >= 20,
        "{ours} swap events by {SWAP_ACTOR} in the history: {:?}",
        page.items
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_primary_backup_takes_over_and_old_restarts_as_backup() {
    let mut c = Cluster::three(&[]).await;
    let before = c.wait_roles(WAIT).await;
    let (old, new) = (before.primary, before.backup);
    c.put_ok(old, "before-kill", &json!(1)).await;

    let killed_at = Instant::now();
    c.kill9(old);
    let taken = wait_until(
        "the backup to become primary after the kill",
        Duration::from_secs(10),
        || async {
            let s = c.status(new).await?;
            (s.this_host.role == "primary"
                && s.primary == Some(c.nodes[new].id())
                && s.epoch > before.epoch)
                .then_some(s)
        },
    )
    .await;
    eprintln!(
        "t70: {} took over {:?} after the kill of {} (epoch {} -> {})",
        c.nodes[new].name,
        killed_at.elapsed(),
        c.nodes[old].name,
        before.epoch,
        taken.epoch
    );
    let written = write_keys(&c, new, "down/", 100).await;

    c.restart(old).await;
    let after = c.wait_roles(WAIT).await;
    assert_eq!(after.primary, new, "no automatic failback: {after:?}");
    assert_eq!(after.epoch, taken.epoch, "{after:?}");
    let s = c.status(old).await.expect("status of the restarted node");
    assert_eq!(s.this_host.role, "backup", "{:?}", s.this_host);
    let applied = c.wait_caught_up(old).await;
    assert_eq!(c.applied(new).await, Some(applied));
    assert_eq!(c.list(old, "down/", true).await, written);
    assert_eq!(
        c.list(old, "before-kill", true).await.get("before-kill"),
        Some(&json!(1))
    );
    wait_role_health(&c, new, old, before.witness).await;

    let page = history(&c, new, "role_change").await;
    let id = c.nodes[new].id();
    assert!(
        page.items.iter().any(|e| e.kind == "role_change"
            && e.details["primary"] == json!(id)
            && e.details["epoch"] == json!(taken.epoch)),
        "no role_change to {id} at epoch {}: {:?}",
        taken.epoch,
        page.items
    );
}

fn check_report(r: &SyncReport, backup: u64, at_least: u64, what: &str) {
    assert_eq!(r.backup, backup, "{what}: {r:?}");
    assert!(
        r.to_index >= at_least,
        "{what}: to_index < {at_least}: {r:?}"
    );
    let v = r
        .verify
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no verify: {r:?}"));
    assert!(v.matches, "{what}: digests differ: {v:?}");
    assert!(!v.local_digest.is_empty(), "{what}: {v:?}");
    assert_eq!(v.local_digest, v.peer_digest, "{what}: {v:?}");
    assert!(v.index >= at_least, "{what}: {v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_and_verify() {
    let mut c = Cluster::three(&["--snapshot-every", "100", "--keep-behind-snapshot", "10"]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let backup_id = c.nodes[b].id();
    write_keys(&c, p, "v/", 200).await;
    let idx = c.applied(p).await.expect("primary applied index");
    c.wait_peer_reachable(p, b, true).await;

    for (i, side) in [(b, "backup (forwarded)"), (p, "primary")] {
        let resp = post(&c, i, "/api/v1/relationship/sync", &json!({"verify": true})).await;
        let what = format!("sync on the {side}");
        let report: SyncReport = ok_json(resp, &what).await;
        check_report(&report, backup_id, idx, &what);
    }
    for kind in ["sync", "verify"] {
        let page = history(&c, p, kind).await;
        assert!(
            page.items.len() >= 2 && page.items.iter().all(|e| e.kind == kind),
            "{kind} events: {:?}",
            page.items
        );
    }

    // The backup misses writes (beyond the primary's purged log).
    let b_last = c
        .health(b)
        .await
        .and_then(|h| h.last_log_index)
        .expect("backup last log index");
    assert_eq!(c.stop(b).await, Some(0), "SIGTERM exit code");
    let written = write_keys(&c, p, "m/", 300).await;
    wait_until("the primary to purge past the backup", WAIT, || async {
        c.health(p)
            .await
            .and_then(|h| h.purged_index)
            .filter(|&x| x > b_last)
    })
    .await;
    let idx = c.applied(p).await.expect("primary applied index");
    c.restart(b).await;
    c.wait_peer_reachable(p, b, true).await;
    let resp = post(&c, p, "/api/v1/relationship/sync", &json!({"verify": true})).await;
    let report: SyncReport = ok_json(resp, "sync after a missed stretch").await;
    eprintln!("t70: sync after the backup missed 300 writes: {report:?}");
    check_report(&report, backup_id, idx, "sync after a missed stretch");
    let verified = report.verify.as_ref().map_or(0, |v| v.index);
    let b_applied = c.applied(b).await.expect("backup applied index");
    assert!(
        b_applied >= verified,
        "backup applied {b_applied} < {verified}"
    );
    // The sync's own history events follow it; then both sides are equal.
    let applied = c.wait_caught_up(b).await;
    assert_eq!(c.applied(p).await, Some(applied));
    assert_eq!(c.list(b, "m/", true).await, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b, w) = (r.primary, r.backup, r.witness);
    c.wait_peer_reachable(p, b, true).await;
    let base = primary_epoch(&c, p).await;
    let unchanged = |what: &'static str| {
        let c = &c;
        async move {
            for i in [p, b] {
                assert_eq!(primary_epoch(c, i).await, base, "after {what}");
            }
        }
    };

    // A forced swap asked of the witness (never primary), and a planned
    // swap on the witness. (A forced swap asked of the primary is *Become
    // backup even if the peer cannot be contacted*, and one asked of a
    // backup that still hears the primary a planned swap: neither is a
    // refusal; see t75's forced demotion.)
    for (i, force, what) in [
        (w, true, "a forced swap on the witness"),
        (w, false, "a swap on the witness"),
    ] {
        let resp = post(
            &c,
            i,
            "/api/v1/relationship/swap",
            &json!({"pull_sync": false, "force": force}),
        )
        .await;
        let msg = refused(resp, what).await;
        eprintln!("t70: {what}: 409 {msg}");
        unchanged(what).await;
    }

    // Invalid settings and a stale if_version.
    let s0 = settings(&c, p).await;
    let resp = c
        .req(p, Method::PUT, "/api/v1/settings")
        .json(&update_from(&s0, |v| v["primary_timeout_ms"] = json!(5)))
        .send()
        .await
        .expect("PUT settings");
    let (status, body) = error_body(resp, "primary_timeout_ms 5").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["fields"]["primary_timeout_ms"].is_string(),
        "no fields.primary_timeout_ms: {body}"
    );
    assert_eq!(settings(&c, p).await, s0);
    let resp = c
        .req(p, Method::PUT, "/api/v1/settings")
        .json(&update_from(&s0, |v| {
            v["auto_failover"] = json!(!s0.auto_failover);
            v["if_version"] = json!(s0.version + 7);
        }))
        .send()
        .await
        .expect("PUT settings");
    refused(resp, "settings with a wrong if_version").await;
    assert_eq!(settings(&c, p).await, s0);
    unchanged("refused settings").await;

    // The backup is down: no planned swap, no sync; writes go on.
    assert_eq!(c.stop(b).await, Some(0));
    c.wait_peer_reachable(p, b, false).await;
    let resp = post(
        &c,
        p,
        "/api/v1/relationship/swap",
        &json!({"pull_sync": false, "force": false}),
    )
    .await;
    let msg = refused(resp, "swap with the backup down").await;
    assert!(msg.contains("cannot be contacted"), "{msg}");
    assert_eq!(primary_epoch(&c, p).await, base);
    c.put_ok(p, "still-writable", &json!(true)).await;
    let resp = post(
        &c,
        p,
        "/api/v1/relationship/sync",
        &json!({"verify": false}),
    )
    .await;
    refused(resp, "sync with the backup down").await;
    assert_eq!(primary_epoch(&c, p).await, base);
    let s = c.status(p).await.expect("primary status");
    assert_eq!(s.this_host.role, "primary");

    // Break: the primary leaves with its data (the witness is told; the
    // stopped backup learns it when it comes back). A second break on
    // the now standalone node is refused and changes nothing.
    let resp = post(&c, p, "/api/v1/relationship/break", &json!({})).await;
    let out: tandem_web::BreakOutcome = ok_json(resp, "break on the primary").await;
    assert_eq!(out.role, "standalone", "{out:?}");
    let mut former = out.former_peers.clone();
    former.sort_unstable();
    let mut others = vec![c.nodes[b].id(), c.nodes[w].id()];
    others.sort_unstable();
    assert_eq!(former, others, "{out:?}");
    let alone = wait_until("the old primary to be standalone", SETTLE, || async {
        let s = c.status(p).await?;
        (s.this_host.role == "standalone" && s.topology == "standalone").then_some(s)
    })
    .await;
    let resp = post(&c, p, "/api/v1/relationship/break", &json!({})).await;
    refused(resp, "a second break").await;
    let again = c.status(p).await.expect("status after the refused break");
    assert_eq!(again.this_host.role, "standalone");
    assert_eq!((again.primary, again.epoch), (alone.primary, alone.epoch));
    // Standalone with its data: still writable, the old keys kept.
    c.put_ok(p, "after-break", &json!(1)).await;
    assert_eq!(
        c.list(p, "still-writable", false)
            .await
            .get("still-writable"),
        Some(&json!(true))
    );
}

/// A planned swap asked just after the backup died (before the primary
/// timeout has marked it unreachable) must be refused promptly, record
/// no swap, and not stop the primary from taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_just_after_the_backup_died_is_refused_without_pausing_writes() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    c.wait_peer_reachable(p, b, true).await;
    let base = primary_epoch(&c, p).await;
    let swaps_before = history(&c, p, "swap").await.items.len();
    assert_eq!(c.stop(b).await, Some(0));
    let asked = Instant::now();
    let done = AtomicBool::new(false);
    let swap = async {
        let r = c
            .req(p, Method::POST, "/api/v1/relationship/swap")
            .header("x-tandem-actor", SWAP_ACTOR)
            .json(&json!({"pull_sync": false, "force": false}))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        done.store(true, Ordering::SeqCst);
        r
    };
    // A client writing meanwhile (retrying 503s with a short back-off);
    // bounded by the swap request's own 30 s timeout.
    let writes = async {
        let (mut last_ok, mut longest, mut failed) = (asked, Duration::ZERO, 0u32);
        while !done.load(Ordering::SeqCst) {
            let ok = c
                .put(p, "during-swap", &json!(failed))
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ok {
                longest = longest.max(last_ok.elapsed());
                last_ok = Instant::now();
            } else {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (longest.max(last_ok.elapsed()), failed)
    };
    let (resp, (longest, failed)) = tokio::join!(swap, writes);
    let answered = asked.elapsed();
    let resp = resp.expect("an answer to the swap");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    eprintln!(
        "t70: swap after the backup died: {status} after {answered:?}: {text}; \
         longest time without a write meanwhile {longest:?} ({failed} failed attempts)"
    );
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("cannot be contacted"), "{text}");
    assert!(
        answered < Duration::from_secs(5),
        "answered after {answered:?}"
    );
    assert!(
        longest < Duration::from_secs(3),
        "the primary took no write for {longest:?} ({failed} failed attempts)"
    );
    assert_eq!(primary_epoch(&c, p).await, base);
    let swaps_after = history(&c, p, "swap").await.items.len();
    assert_eq!(
        swaps_after, swaps_before,
        "a refused swap was recorded as a swap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_replicate_and_record_history() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let s0 = settings(&c, p).await;
    let body = update_from(&s0, |v| {
        v["primary_timeout_ms"] = json!(1500);
        v["auto_failover"] = json!(true);
        v["test_ips"] = json!(["127.0.0.1", "127.0.0.1:9"]);
        v["verify_interval_secs"] = json!(3600);
        v["bandwidth_limit_bps"] = json!(1_000_000);
        v["backup_operations"] = json!(true);
        v["shared_ips"] =
            json!([{"address": "192.0.2.10/24", "interfaces": {"a": "eth0", "b": "eth1"}}]);
        v["if_version"] = json!(s0.version);
    });
    let actor = "t70-admin@site";
    let put = |url: String| {
        c.http
            .put(url)
            .bearer_auth(&c.admin_token)
            .header("x-tandem-actor", actor)
            .json(&body)
            .send()
    };
    // On the backup: 421 pointing at the primary; follow it.
    let resp = put(c.url(b, "/api/v1/settings"))
        .await
        .expect("PUT on the backup");
    assert_eq!(
        resp.status(),
        StatusCode::MISDIRECTED_REQUEST,
        "settings PUT on the backup"
    );
    let loc = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_string();
    assert_eq!(loc, c.url(p, "/api/v1/settings"));
    let view: SettingsView = ok_json(put(loc).await.expect("PUT on the primary"), "PUT").await;
    assert_eq!(view.version, s0.version + 1);
    // The admin token is recorded as such, with the given name as a label.
    let recorded = format!("admin-token:{actor}");
    assert_eq!(view.updated_by.as_deref(), Some(recorded.as_str()));
    assert_eq!(view.primary_timeout_ms, 1500);
    assert!(view.auto_failover && view.backup_operations);
    assert_eq!(view.test_ips, ["127.0.0.1", "127.0.0.1:9"]);
    assert_eq!(view.verify_interval_secs, 3600);
    assert_eq!(view.bandwidth_limit_bps, 1_000_000);
    assert_eq!(view.shared_ips.len(), 1);
    assert_eq!(view.shared_ips[0].address, "192.0.2.10/24");

    for i in 0..3 {
        let name = &c.nodes[i].name;
        wait_until(&format!("the new settings on {name}"), SETTLE, || async {
            let s: SettingsView = c.get_json(i, "/api/v1/settings").await?;
            (s == view).then_some(())
        })
        .await;
        let s = c.status(i).await.expect("status");
        assert_eq!(s.settings, view, "status settings on {name}");
    }

    let page = history(&c, p, "settings_change").await;
    assert!(
        page.items
            .iter()
            .any(|e| e.kind == "settings_change" && e.actor == recorded),
        "no settings_change by {actor}: {:?}",
        page.items
    );
}

/// A planned swap with the `script` driver (one script for both
/// appliances, each naming its own interface, appending what it did to
/// one file): when the old primary cannot release the address the swap
/// is refused and it keeps serving with the address; once it can, it
/// releases *before* the new primary starts to acquire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_swap_releases_the_shared_ips_before_the_new_primary_takes_them() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let root = c.path().to_path_buf();
    let script = root.join("shared-ip.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# $1 action, $2 address/prefix, $3 interface, $4 epoch
d='{dir}'
case "$1" in
  acquire) echo "acquire-start $3 $4" >> "$d/actions"; touch "$d/held-$3" ;;
  release) if [ -e "$d/fail-release" ]; then echo "release refused by the test" >&2; exit 1; fi
           rm -f "$d/held-$3"; echo "released $3 $4" >> "$d/actions" ;;
  check) [ -e "$d/held-$3" ] || exit 1 ;;
esac
"#,
            dir = root.display()
        ),
    )
    .expect("writing the script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Both appliances use it (backup first; stopping the primary fails
    // over, which is fine here).
    for i in [r.backup, r.primary] {
        assert_eq!(c.stop(i).await, Some(0));
        let data = tandem_node::config::DataDir::new(&c.nodes[i].dir);
        let mut cfg = data.load().expect("node.toml");
        cfg.shared_ip.driver = tandem_node::config::SharedIpDriverKind::Script;
        cfg.shared_ip.script = Some(script.clone());
        data.save(&cfg).expect("writing node.toml");
        c.restart(i).await;
        c.wait_roles(WAIT).await;
    }
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    c.wait_peer_reachable(p, b, true).await;
    let iface = |i: usize| format!("if{}", c.nodes[i].name);
    put_shared_ip(&c, p, &[(p, &iface(p)), (b, &iface(b))]).await;
    let want = vec![SHARED_IP.to_string()];
    let holds = |i: usize| {
        let want = want.clone();
        let c = &c;
        async move {
            let s = c.status(i).await?;
            (s.this_host.shared_ips_held == want).then_some(())
        }
    };
    wait_until("the primary to hold the shared IP", SETTLE, || holds(p)).await;
    assert!(root.join(format!("held-{}", iface(p))).exists());

    // 1. The release fails: the swap is refused, nothing moves.
    std::fs::write(root.join("fail-release"), b"").expect("flag");
    let before = primary_epoch(&c, p).await;
    let resp = post(
        &c,
        p,
        "/api/v1/relationship/swap",
        &json!({"pull_sync": false, "force": false}),
    )
    .await;
    let (status, err) = error_body(resp, "swap with a failing release").await;
    assert!(
        status.is_server_error() || status == StatusCode::CONFLICT,
        "{status}: {err}"
    );
    assert!(
        err.to_string().contains("could not be released"),
        "{status}: {err}"
    );
    assert_eq!(primary_epoch(&c, p).await, before, "no new primary");
    wait_until("the primary to hold the shared IP again", SETTLE, || {
        holds(p)
    })
    .await;
    assert!(root.join(format!("held-{}", iface(p))).exists());
    assert!(!root.join(format!("held-{}", iface(b))).exists());
    let w = c
        .put(p, "after-refused-swap", &json!(1))
        .await
        .expect("write");
    assert_eq!(
        w.status(),
        StatusCode::OK,
        "writes go on after a refused swap"
    );

    // 2. The release works: the old primary lets go first.
    std::fs::remove_file(root.join("fail-release")).expect("unflag");
    let _: SwapOutcome = ok_json(
        post(
            &c,
            p,
            "/api/v1/relationship/swap",
            &json!({"pull_sync": false, "force": false}),
        )
        .await,
        "swap",
    )
    .await;
    wait_until("the new primary to hold the shared IP", SETTLE, || holds(b)).await;
    let actions = std::fs::read_to_string(root.join("actions")).expect("actions");
    let lines: Vec<&str> = actions.lines().collect();
    let released = lines
        .iter()
        .rposition(|l| l.starts_with(&format!("released {} ", iface(p))))
        .unwrap_or_else(|| panic!("no release by the old primary: {actions}"));
    let acquired = lines
        .iter()
        .rposition(|l| l.starts_with(&format!("acquire-start {} ", iface(b))))
        .unwrap_or_else(|| panic!("no acquisition by the new primary: {actions}"));
    eprintln!("t70: shared-IP actions:\n{actions}");
    assert!(
        released < acquired,
        "the new primary began to acquire before the old one had released:\n{actions}"
    );
    assert!(!root.join(format!("held-{}", iface(p))).exists());
    // The history (recorded by the role manager without waiting) names
    // the new primary's acquisition, on the node it happened on.
    let b_id = c.nodes[b].id();
    let page = wait_until("the acquisition in the history", SETTLE, || async {
        let page = history(&c, b, "shared_ip").await;
        page.items
            .iter()
            .any(|e| {
                e.node == b_id
                    && e.details["action"] == json!("acquire")
                    && e.details["address"] == json!(SHARED_IP)
                    && e.details["ok"] == json!(true)
            })
            .then_some(page)
    })
    .await;
    assert!(page.items.iter().all(|e| e.kind == "shared_ip"), "{page:?}");
}

/// Status shows, per node, the shared IPs it holds: the primary in its
/// own view, and the backup's view of the primary (from the primary's
/// `/health`). The cluster tests use the `none` driver, which holds
/// addresses in memory only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_shared_ips_each_node_holds() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    put_shared_ip(&c, p, &[(p, "eth0"), (b, "eth0")]).await;
    let want = vec![SHARED_IP.to_string()];
    wait_until("the primary to report the shared IP", SETTLE, || async {
        let s = c.status(p).await?;
        (s.this_host.shared_ips_held == want).then_some(())
    })
    .await;
    wait_until(
        "the backup to see the primary holding it",
        SETTLE,
        || async {
            let s = c.status(b).await?;
            let primary = s.peers.iter().find(|x| x.id == c.nodes[p].id())?;
            (s.this_host.shared_ips_held.is_empty()
                && primary.shared_ips_held.as_ref() == Some(&want))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_roles_and_peers() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let role_of = |i: usize| {
        if i == r.primary {
            "primary"
        } else if i == r.witness {
            "witness"
        } else {
            "backup"
        }
    };
    for i in 0..3 {
        let name = &c.nodes[i].name;
        let s = wait_until(&format!("{name} to see both peers"), SETTLE, || async {
            let s = c.status(i).await?;
            (s.peers.len() == 2 && s.peers.iter().all(|p| p.reachable)).then_some(s)
        })
        .await;
        assert_eq!(s.this_host.id, c.nodes[i].id());
        assert_eq!(&s.this_host.name, name);
        assert_eq!(s.this_host.role, role_of(i), "{name}: {:?}", s.this_host);
        assert_eq!(s.topology, "pair+witness");
        assert_eq!(s.primary, Some(c.nodes[r.primary].id()));
        assert_eq!(s.epoch, r.epoch);
        let mut peers: Vec<(u64, &str, &str, bool)> = s
            .peers
            .iter()
            .map(|p| (p.id, p.name.as_str(), p.role.as_str(), p.voter))
            .collect();
        peers.sort_unstable();
        let mut want: Vec<(u64, &str, &str, bool)> = (0..3)
            .filter(|&j| j != i)
            .map(|j| (c.nodes[j].id(), c.nodes[j].name.as_str(), role_of(j), true))
            .collect();
        want.sort_unstable();
        assert_eq!(peers, want, "peers seen by {name}: {:?}", s.peers);
    }
    let ready: ReadinessView = wait_until("readiness on the primary", SETTLE, || async {
        let v: ReadinessView = c.get_json(r.primary, "/api/v1/readiness").await?;
        v.would_fail_over.then_some(v)
    })
    .await;
    assert!(ready.reasons.is_empty(), "{ready:?}");
    assert!(ready.after_ms.is_some(), "{ready:?}");
}
