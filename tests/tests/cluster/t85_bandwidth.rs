//! The replicated `bandwidth_limit_bps` setting holds snapshot and catch-up
//! streams to the limit (±20 %), and lifting it (0) speeds catch-up up.
use super::*;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tandem_web::SettingsView;

/// The limit under test: 512 KiB/s.
const LIMIT: u64 = 512 * 1024;
/// Size of each large value (bytes of its JSON string).
const VALUE_LEN: usize = 32 * 1024;
/// Large values per run: 128 × 32 KiB = 4 MiB (about 8 s at the limit,
/// so the node's fixed restart overhead, about 0.4 s, stays small).
const VALUES: usize = 128;
/// Interval between two probes of the backup's applied index.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Bound on one timed catch-up.
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);

/// A deterministic, poorly compressible alphanumeric string of `len`
/// bytes (no JSON escaping, so its size on the wire is its length).
fn big_value(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Writes [`VALUES`] keys `<prefix><n>` of [`VALUE_LEN`] bytes each
/// through node `i`; returns the sum of the value sizes.
async fn write_big(c: &Cluster, i: usize, prefix: &str, seed: u64) -> u64 {
    futures::stream::iter(0..VALUES)
        .map(|n| async move {
            let v = big_value(seed * 1000 + n as u64, VALUE_LEN);
            c.put_ok(i, &format!("{prefix}{n:03}"), &json!(v)).await;
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    (VALUES * VALUE_LEN) as u64
}

/// Sets `bandwidth_limit_bps` (other settings unchanged) through the
/// primary `p` and waits until it serves the new value.
async fn set_limit(c: &Cluster, p: usize, bps: u64) {
    let s: SettingsView = c
        .get_json(p, "/api/v1/settings")
        .await
        .expect("GET settings");
    let body = json!({
        "primary_timeout_ms": s.primary_timeout_ms,
        "auto_failover": s.auto_failover,
        "test_ips": s.test_ips,
        "verify_interval_secs": s.verify_interval_secs,
        "bandwidth_limit_bps": bps,
        "backup_operations": s.backup_operations,
        "shared_ips": s.shared_ips,
        "if_version": s.version,
    });
    let resp = c
        .req(p, Method::PUT, "/api/v1/settings")
        .header("x-tandem-actor", "t85")
        .json(&body)
        .send()
        .await
        .expect("PUT settings");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "PUT settings: {text}");
    wait_until("the new bandwidth limit on the primary", WAIT, || async {
        let s: SettingsView = c.get_json(p, "/api/v1/settings").await?;
        (s.bandwidth_limit_bps == bps).then_some(())
    })
    .await;
}

/// The newest `*.snap` file of node `n` (under `db/snapshots`, or
/// `snapshots`) and its size.
fn newest_snapshot(n: &NodeProc) -> (PathBuf, u64) {
    let mut found: Vec<(PathBuf, u64, std::time::SystemTime)> = Vec::new();
    for dir in [n.dir.join("db").join("snapshots"), n.dir.join("snapshots")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "snap") {
                if let Ok(md) = e.metadata() {
                    let mtime = md.modified().expect("mtime");
                    found.push((path, md.len(), mtime));
                }
            }
        }
    }
    found
        .into_iter()
        .max_by_key(|(_, _, t)| *t)
        .map(|(p, len, _)| (p, len))
        .unwrap_or_else(|| panic!("no snapshot file in {}", n.dir.display()))
}

/// The `bytes=` of the last "snapshot sent" line of a node log.
fn logged_snapshot_bytes(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains("snapshot sent"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes=")?.parse().ok())
}

/// Restarts the stopped backup `b` and times it until its applied index
/// reaches `target` (probed every [`PROBE_EVERY`], bounded). Returns the
/// time from the spawn and the time from its first `/health` answer.
async fn timed_catch_up(c: &mut Cluster, b: usize, target: u64) -> (Duration, Duration) {
    let start = Instant::now();
    c.spawn(b);
    let mut answered: Option<Instant> = None;
    loop {
        if let Some(h) = c.health(b).await {
            answered.get_or_insert_with(Instant::now);
            if h.applied_index.is_some_and(|a| a >= target) {
                let done = Instant::now();
                let from_health = done - answered.expect("set above");
                return (done - start, from_health);
            }
        }
        assert!(
            start.elapsed() < CATCH_UP_BOUND,
            "backup {} did not reach applied index {target} within {CATCH_UP_BOUND:?} \
             (now {:?})",
            c.nodes[b].name,
            c.applied(b).await
        );
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Asserts `took` is within [0.8, 1.25] × `bytes` / [`LIMIT`].
fn assert_rate(what: &str, bytes: u64, took: Duration) {
    let expected = bytes as f64 / LIMIT as f64;
    let ratio = took.as_secs_f64() / expected;
    let rate = bytes as f64 / took.as_secs_f64();
    eprintln!(
        "t85: {what}: {bytes} bytes in {:.3} s = {:.0} B/s (limit {LIMIT}); \
         expected {expected:.3} s, ratio {ratio:.3}",
        took.as_secs_f64(),
        rate
    );
    assert!(
        (0.8..=1.25).contains(&ratio),
        "{what}: {bytes} bytes took {took:?}, expected {expected:.3} s at {LIMIT} B/s \
         (ratio {ratio:.3}, rate {rate:.0} B/s)"
    );
}

/// Stops the (caught-up) backup `b`; returns its last log index.
async fn stop_backup(c: &mut Cluster, b: usize) -> u64 {
    c.wait_caught_up(b).await;
    let last = c
        .health(b)
        .await
        .and_then(|h| h.last_log_index)
        .expect("backup last log index");
    assert_eq!(c.stop(b).await, Some(0), "SIGTERM exit code");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limit_holds_snapshot_and_catch_up_streams() {
    // (1) Snapshot path.
    {
        let mut c =
            Cluster::three(&["--snapshot-every", "100", "--keep-behind-snapshot", "10"]).await;
        let r = c.wait_roles(WAIT).await;
        let (p, b) = (r.primary, r.backup);
        let b_last = stop_backup(&mut c, b).await;
        // Written unlimited: the witness stream shares the limiter.
        write_big(&c, p, "big/", 1).await;
        write_keys(&c, p, "small/", 200).await;
        wait_until("the primary to purge past the backup", WAIT, || async {
            c.health(p)
                .await
                .and_then(|h| h.purged_index)
                .filter(|&x| x > b_last)
        })
        .await;
        set_limit(&c, p, LIMIT).await;
        let (file, file_bytes) = newest_snapshot(&c.nodes[p]);
        let target = c.applied(p).await.expect("primary applied index");
        let (took, from_health) = timed_catch_up(&mut c, b, target).await;
        let h = c.health(b).await.expect("backup health");
        assert!(
            h.snapshot_index.is_some_and(|s| s > b_last),
            "the backup did not catch up by snapshot: {h:?}"
        );
        let (_, file_after) = newest_snapshot(&c.nodes[p]);
        let sent = logged_snapshot_bytes(&c.nodes[p].log);
        eprintln!(
            "t85: snapshot {} = {file_bytes} bytes (after: {file_after}); logged sent {sent:?}; \
             catch-up {took:?} from spawn, {from_health:?} from first /health",
            file.display()
        );
        assert_eq!(
            sent,
            Some(file_bytes),
            "the snapshot sent is not the one measured"
        );
        assert!(
            file_bytes >= (VALUES * VALUE_LEN) as u64,
            "snapshot {file_bytes} bytes"
        );
        assert_rate("snapshot", file_bytes, took);
    }

    // (2) Catch-up by log entries (default thresholds: no snapshot), and
    // (3) the same without a limit.
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let b_last = stop_backup(&mut c, b).await;
    let bytes = write_big(&c, p, "big/", 2).await;
    set_limit(&c, p, LIMIT).await;
    let target = c.applied(p).await.expect("primary applied index");
    let (limited, from_health) = timed_catch_up(&mut c, b, target).await;
    let h = c.health(b).await.expect("backup health");
    assert!(
        h.snapshot_index.is_none_or(|s| s <= b_last),
        "the backup caught up by snapshot, not by log entries: {h:?}"
    );
    eprintln!("t85: limited catch-up {limited:?} from spawn, {from_health:?} from first /health");
    assert_rate("catch-up", bytes, limited);

    set_limit(&c, p, 0).await;
    stop_backup(&mut c, b).await;
    write_big(&c, p, "big2/", 3).await;
    let target = c.applied(p).await.expect("primary applied index");
    let (unlimited, from_health) = timed_catch_up(&mut c, b, target).await;
    eprintln!(
        "t85: unlimited catch-up of {bytes} bytes: {unlimited:?} from spawn, \
         {from_health:?} from first /health; limited/unlimited = {:.1}",
        limited.as_secs_f64() / unlimited.as_secs_f64()
    );
    assert!(
        limited >= unlimited * 3,
        "with the limit {limited:?}, without {unlimited:?}: not 3× faster"
    );
}
