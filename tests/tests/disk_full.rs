//! A full disk. The node's data directory is on a small tmpfs this test
//! mounts (it needs root: when it cannot mount it says so and skips, or
//! fails when `CI=true`).
//!
//! Below the free-space reserve (`--min-free-mb`) application writes get a
//! 507 with kind `insufficient_storage` that names the directory and the
//! reserve; nothing changes; reads, health and status keep answering; once
//! space is freed, writes are accepted again and everything acknowledged
//! before is still there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tandem_tests::{pid_alive, wait_until, Cluster};

/// Size of the test's filesystem.
const FS_MIB: u64 = 64;
/// The node's reserve.
const RESERVE_MIB: u64 = 16;
const MIB: u64 = 1024 * 1024;

/// A tmpfs mounted by this test; unmounted (lazily, so a straggling open
/// file cannot keep it) and its mount point removed on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Mounts a `FS_MIB` tmpfs on `at`, or says why it cannot.
fn mount_tmpfs(at: &Path) -> Result<Tmpfs, String> {
    if !tandem_tests::is_root() {
        return Err("not running as root (mounting a tmpfs needs CAP_SYS_ADMIN)".into());
    }
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={FS_MIB}m,mode=0700")])
        .arg("tandem-test")
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Tmpfs(at.to_path_buf()))
}

fn free_bytes(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).expect("statvfs of the test filesystem");
    // Both are u64 here, narrower on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let free = (s.blocks_available() as u64) * (s.fragment_size() as u64);
    free
}

/// Fills `dir`'s filesystem with one file until `leave` bytes are free.
fn fill_until(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("creating the filler");
    let chunk = vec![0xA5u8; MIB as usize];
    // Bounded: the filesystem is FS_MIB in all.
    for _ in 0..FS_MIB {
        let free = free_bytes(dir);
        if free <= leave {
            break;
        }
        let n = (free - leave).min(MIB) as usize;
        f.write_all(&chunk[..n]).expect("writing the filler");
        f.sync_all().expect("syncing the filler");
    }
    path
}

/// A temporary directory with a `FS_MIB` tmpfs mounted on it (dropped
/// after the cluster that uses it), or `None` after saying why not (a
/// panic when `CI=true`: CI must run these tests).
fn small_fs(test: &str) -> Option<(tempfile::TempDir, Tmpfs)> {
    let root = tempfile::Builder::new()
        .prefix("tandem-test-disk-")
        .tempdir()
        .expect("temp dir");
    match mount_tmpfs(root.path()) {
        Ok(m) => Some((root, m)),
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: mounting a small filesystem is required in CI: {why}");
            }
            println!("{test}: SKIPPED: {why}");
            None
        }
    }
}

/// Node `i`'s status page has (within 10 s) a note containing every one
/// of `words`.
async fn assert_note(c: &Cluster, i: usize, words: &[&str]) {
    wait_until(
        &format!("a note on node {i}'s status page saying {words:?}"),
        Duration::from_secs(10),
        || async {
            let status = c.status(i).await?;
            let notes = &status.this_host.notes;
            notes
                .iter()
                .any(|n| words.iter().all(|w| n.contains(w)))
                .then_some(())
        },
    )
    .await;
}

/// Writes `key` on node 0 until the answer is `want` (at most `within`).
async fn put_until(c: &Cluster, key: &str, want: StatusCode, within: Duration) {
    wait_until(&format!("PUT {key} answered {want}"), within, || async {
        let r = c.put(0, key, &json!(0)).await.ok()?;
        (r.status() == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_writes_stop_at_the_reserve_and_resume_when_space_is_freed() {
    let test = "application_writes_stop_at_the_reserve_and_resume_when_space_is_freed";
    let Some((root, _fs)) = small_fs(test) else {
        return;
    };
    let reserve = RESERVE_MIB.to_string();
    let c = Cluster::init_in(root, "a", &["--min-free-mb", &reserve]).await;
    let data = c.path().to_path_buf();

    // Writes are accepted while there is room.
    for i in 0..20 {
        c.put_ok(0, &format!("before/{i}"), &json!({ "n": i }))
            .await;
    }
    let session: Value = c
        .req(0, Method::POST, "/api/v1/sessions")
        .json(&json!({ "owner": "alice", "ttl_secs": 3600 }))
        .send()
        .await
        .expect("session create")
        .json()
        .await
        .expect("session JSON");
    let session_id = session["id"].as_str().expect("session id").to_string();

    // Leave half the reserve free.
    let filler = fill_until(&data, RESERVE_MIB * MIB / 2);
    assert!(free_bytes(&data) < RESERVE_MIB * MIB);

    // Within the guard's re-read interval (a write may still pass in it)
    // writes start being refused.
    put_until(
        &c,
        "probe",
        StatusCode::INSUFFICIENT_STORAGE,
        Duration::from_secs(5),
    )
    .await;
    let r = c.put(0, "during", &json!(1)).await.expect("put");
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    let refused: Value = r.json().await.expect("error JSON");
    assert_eq!(refused["error"], "insufficient_storage", "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("MiB free") && message.contains(&format!("at least {RESERVE_MIB} MiB")),
        "the message says how much is free and what is needed: {message}"
    );
    assert!(
        message.contains(&data.display().to_string()),
        "the message names the data directory: {message}"
    );

    // Every kind of application write is refused, and nothing changes.
    let status = |method: Method, path: String, body: Option<Value>| {
        let c = &c;
        async move {
            let mut req = c.req(0, method.clone(), &path);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let r = req.send().await;
            r.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
                .status()
        }
    };
    let sessions = "/api/v1/sessions".to_string();
    let bob = json!({ "owner": "bob", "ttl_secs": 3600 });
    let one_session = format!("/api/v1/sessions/{session_id}");
    let entry = |key: &str| format!("/api/v1/config/{key}");
    for (method, path, body) in [
        (Method::POST, sessions.clone(), Some(bob)),
        (Method::DELETE, entry("before/0"), None),
        (Method::DELETE, one_session.clone(), None),
    ] {
        let what = format!("{method} {path}");
        assert_eq!(
            status(method, path, body).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "{what}"
        );
    }
    let unchanged = [
        (
            entry("during"),
            StatusCode::NOT_FOUND,
            "a refused write left nothing",
        ),
        (
            entry("before/0"),
            StatusCode::OK,
            "a refused delete removed nothing",
        ),
        (
            one_session,
            StatusCode::OK,
            "a refused session delete removed nothing",
        ),
    ];
    for (path, want, why) in unchanged {
        assert_eq!(status(Method::GET, path, None).await, want, "{why}");
    }
    let r = c
        .req(0, Method::GET, "/api/v1/sessions")
        .send()
        .await
        .expect("list sessions");
    let list: Value = r.json().await.expect("session list");
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "only the session created before: {list}"
    );

    // The node keeps serving: health, status, reads.
    let health = c.health(0).await.expect("health answers on a full disk");
    assert_eq!(health.leader, Some(health.node_id), "{health:?}");
    assert_note(&c, 0, &["a: only", "below its reserve of 16 MiB"]).await;
    let health = c.health(0).await.expect("health");
    assert_eq!(health.disk_reserve_bytes, Some(RESERVE_MIB * MIB));
    assert!(
        health
            .disk_free_bytes
            .is_some_and(|f| f < RESERVE_MIB * MIB),
        "{health:?}"
    );
    assert!(pid_alive(c.nodes[0].pid().expect("running")));

    // Space freed: writes are accepted again.
    std::fs::remove_file(&filler).expect("removing the filler");
    put_until(&c, "after", StatusCode::OK, Duration::from_secs(5)).await;
    for i in 0..20 {
        let v: Value = c
            .req(0, Method::GET, &format!("/api/v1/config/before/{i}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("entry JSON");
        assert_eq!(v["value"], json!({ "n": i }), "{v}");
    }
}

/// Without a reserve the disk fills under the Raft log: the write that
/// finds it full gets a 503 that says so, the node stays up (reads and
/// health answer) and logs what to do, and after kill -9, freeing space and
/// a restart every acknowledged write is there and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_log_loses_no_acknowledged_write() {
    let test = "a_full_disk_under_the_log_loses_no_acknowledged_write";
    let Some((root, _fs)) = small_fs(test) else {
        return;
    };
    let mut c = Cluster::init_in(root, "a", &["--min-free-mb", "0"]).await;
    let data = c.path().to_path_buf();
    c.put_ok(0, "first", &json!("before the disk filled")).await;
    let filler = fill_until(&data, 0);

    let value = "v".repeat(4096);
    let mut acknowledged = Vec::new();
    let mut failure = None;
    // Bounded: 4 KiB values, and whatever slack the files had is far less
    // than 400 of them.
    for i in 0..400 {
        let key = format!("k/{i}");
        let r = c
            .put(0, &key, &json!(value))
            .await
            .expect("the node answers");
        if r.status() == StatusCode::OK {
            acknowledged.push(key);
            continue;
        }
        let status = r.status();
        failure = Some((status, r.json::<Value>().await.expect("error JSON")));
        break;
    }
    let (status, body) = failure.expect("a write failed once the disk was full");
    println!(
        "{test}: {} writes acknowledged after the disk filled; then {status}: {body}",
        acknowledged.len()
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("No space left on device")),
        "the error says the disk is full: {body}"
    );
    let pid = c.nodes[0].pid().expect("running");
    assert!(pid_alive(pid), "the node process stays up");
    assert!(c.health(0).await.is_some(), "health answers");
    assert_note(&c, 0, &["a: Raft has stopped", "restarted"]).await;
    let log = wait_until(
        "the node's log explains",
        Duration::from_secs(5),
        || async {
            let log = std::fs::read_to_string(&c.nodes[0].log).ok()?;
            log.contains("is full").then_some(log)
        },
    )
    .await;
    assert!(
        log.contains("free space on that filesystem, then restart the node"),
        "{log}"
    );

    // Crash, make room, restart: nothing acknowledged is lost.
    c.kill9(0);
    std::fs::remove_file(&filler).expect("removing the filler");
    c.spawn(0);
    c.wait_health(0).await;
    let get = |key: String| {
        let c = &c;
        async move {
            let r = c
                .req(0, Method::GET, &format!("/api/v1/config/{key}"))
                .send()
                .await
                .ok()?;
            (r.status() == StatusCode::OK).then_some(())?;
            r.json::<Value>().await.ok()
        }
    };
    let first = wait_until("reads after the restart", Duration::from_secs(20), || {
        get("first".into())
    })
    .await;
    assert_eq!(first["value"], json!("before the disk filled"));
    for key in &acknowledged {
        let v = get(key.clone())
            .await
            .unwrap_or_else(|| panic!("acknowledged {key} is missing after the restart"));
        assert_eq!(v["value"], json!(value), "{key}");
    }
    put_until(&c, "after", StatusCode::OK, Duration::from_secs(20)).await;
}

/// A backup's disk fills (its data directory is on the small filesystem,
/// the primary's is not): the primary's status page says so from the
/// backup's `/health`, first below the reserve, then that Raft stopped on
/// the backup once its log could not be written; the primary and the
/// witness keep committing writes; after freeing space and restarting the
/// backup, it catches up with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_a_full_disk_is_reported_and_the_pair_goes_on() {
    let test = "a_backup_with_a_full_disk_is_reported_and_the_pair_goes_on";
    let Some((small, _fs)) = small_fs(test) else {
        return;
    };
    let root = tempfile::Builder::new()
        .prefix("tandem-test-")
        .tempdir()
        .expect("temp dir");
    // `b`'s data directory lives on the small filesystem.
    let b_dir = small.path().join("b");
    std::fs::create_dir(&b_dir).expect("creating b's directory");
    std::os::unix::fs::symlink(&b_dir, root.path().join("b")).expect("symlink");
    let reserve = RESERVE_MIB.to_string();
    let mut c = Cluster::init_in(root, "a", &["--min-free-mb", &reserve]).await;
    c.add_node("b", false).await;
    c.wait_members(2).await;
    c.add_node("w", true).await;
    c.wait_voters(3).await;
    let leader = c.leader().await;
    assert_eq!(c.nodes[leader].name, "a", "the node that ran init leads");
    c.put_ok(leader, "before", &json!(1)).await;

    // Below b's reserve: a's page says so; writes on a go on.
    let filler = fill_until(small.path(), RESERVE_MIB * MIB / 2);
    assert_note(&c, leader, &["b: only", "below its reserve of 16 MiB"]).await;
    c.put_ok(leader, "below-reserve", &json!(2)).await;

    // b's disk full: its Raft stops, a and w commit without it.
    fill_until(small.path(), 0);
    let value = "v".repeat(4096);
    let mut acknowledged = Vec::new();
    // Bounded: b has at most a few MiB of slack in its files.
    for i in 0..2_000 {
        let key = format!("k/{i}");
        c.put_ok(leader, &key, &json!(value)).await;
        acknowledged.push(key);
        if i % 50 == 49 && c.health(1).await.is_some_and(|h| h.role == "shutdown") {
            break;
        }
    }
    assert_eq!(
        c.health(1).await.map(|h| h.role),
        Some("shutdown".to_string()),
        "b's Raft stopped once its disk was full"
    );
    assert_note(&c, leader, &["b: Raft has stopped", "restarted"]).await;
    c.put_ok(leader, "after-b-stopped", &json!(3)).await;

    // Free space, restart b: it catches up.
    c.kill9(1);
    std::fs::remove_file(&filler).expect("removing the filler");
    c.spawn(1);
    c.wait_health(1).await;
    c.wait_caught_up(1).await;
    for key in acknowledged.iter().map(String::as_str).chain([
        "before",
        "below-reserve",
        "after-b-stopped",
    ]) {
        let r = c
            .req(1, Method::GET, &format!("/api/v1/config/{key}?stale=true"))
            .send()
            .await
            .expect("stale read on b");
        assert_eq!(r.status(), StatusCode::OK, "{key} on b after catching up");
    }
}
