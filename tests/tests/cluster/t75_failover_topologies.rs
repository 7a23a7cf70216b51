//! Failover in the other topologies: pair only (automatic failover guarded
//! by connectivity test addresses), forced swap with the peer down, break,
//! and removing / adding back the witness on a live pair.
use super::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tandem_web::{BreakOutcome, SettingsView, StatusView, SwapOutcome};
use tokio::net::TcpListener;

/// Bound on the nodes converging after an action.
const SETTLE: Duration = Duration::from_secs(15);
const ACTOR: &str = "t75";

async fn post(c: &Cluster, i: usize, path: &str, body: &Value) -> reqwest::Response {
    c.req(i, Method::POST, path)
        .header("x-tandem-actor", ACTOR)
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} on {}: {e}", c.nodes[i].name))
}

async fn ok_json<T: serde::de::DeserializeOwned>(resp: reqwest::Response, what: &str) -> T {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "{what}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

/// A rejoin token made on node `primary` for node id `node`.
async fn rejoin_token(c: &Cluster, primary: usize, node: u64) -> String {
    let resp = post(
        c,
        primary,
        "/api/v1/rejoin-tokens",
        &json!({ "node": node }),
    )
    .await;
    let text = resp.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {text}"))
        .to_string()
}

async fn status(c: &Cluster, i: usize) -> StatusView {
    c.status(i)
        .await
        .unwrap_or_else(|| panic!("status of {}", c.nodes[i].name))
}

/// SIGSTOP (`cont == false`) or SIGCONT of node `i` (our child, by PID).
fn signal(c: &Cluster, i: usize, cont: bool) {
    let pid = c.nodes[i].pid().expect("the node runs");
    let sig = if cont {
        Signal::SIGCONT
    } else {
        Signal::SIGSTOP
    };
    kill(Pid::from_raw(pid as i32), sig).expect("signalling our child");
}

/// A stale list of `prefix` on node `i`, if it answers 200.
async fn try_list(c: &Cluster, i: usize, prefix: &str) -> Option<BTreeMap<String, Value>> {
    let path = format!("/api/v1/config?prefix={prefix}&limit=1000&stale=true");
    let list: tandem_web::ListView<tandem_web::ConfigEntryView> = c.get_json(i, &path).await?;
    Some(list.items.into_iter().map(|e| (e.key, e.value)).collect())
}

/// Waits until node `i` serves (stale) exactly `want` under `prefix`.
async fn wait_has(c: &Cluster, i: usize, prefix: &str, want: &BTreeMap<String, Value>) {
    let what = format!(
        "{} to hold the {} {prefix} keys",
        c.nodes[i].name,
        want.len()
    );
    wait_until(&what, SETTLE, || async {
        (try_list(c, i, prefix).await? == *want).then_some(())
    })
    .await;
}

/// Waits until node `i` reports role `role` in its status.
async fn wait_role(c: &Cluster, i: usize, role: &str, within: Duration) -> StatusView {
    let what = format!("{} to report role {role}", c.nodes[i].name);
    wait_until(&what, within, || async {
        let s = c.status(i).await?;
        (s.this_host.role == role).then_some(s)
    })
    .await
}

/// Puts automatic failover on with `test_ips` (primary timeout 1 s)
/// through node `i`, and waits until every node in `on` has the settings.
async fn set_failover(c: &Cluster, i: usize, test_ips: &[String], on: &[usize]) {
    let s: SettingsView = c
        .get_json(i, "/api/v1/settings")
        .await
        .expect("GET settings");
    let body = json!({
        "primary_timeout_ms": 1000,
        "auto_failover": true,
        "test_ips": test_ips,
        "verify_interval_secs": s.verify_interval_secs,
        "bandwidth_limit_bps": s.bandwidth_limit_bps,
        "backup_operations": s.backup_operations,
        "shared_ips": s.shared_ips,
    });
    let resp = c
        .req(i, Method::PUT, "/api/v1/settings")
        .header("x-tandem-actor", ACTOR)
        .json(&body)
        .send()
        .await
        .expect("PUT settings");
    let view: SettingsView = ok_json(resp, "PUT settings").await;
    assert_eq!(view.test_ips, test_ips);
    for &j in on {
        let what = format!("the settings on {}", c.nodes[j].name);
        wait_until(&what, SETTLE, || async {
            let s: SettingsView = c.get_json(j, "/api/v1/settings").await?;
            (s == view).then_some(())
        })
        .await;
    }
}

/// A TCP listener owned by the test (a connectivity test address that
/// answers while it lives); returns it with its `127.0.0.1:port`.
async fn test_address() -> (tokio::task::JoinHandle<()>, String) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a test listener");
    let addr = l.local_addr().expect("its address").to_string();
    let task = tokio::spawn(async move {
        // Accepts and drops connections until the task is aborted (the
        // listener is dropped with it).
        while let Ok((conn, _)) = l.accept().await {
            drop(conn);
        }
    });
    (task, addr)
}

/// A test address that has gone silent, as one beyond a cut link: its
/// listener never accepts and its one-slot queue is full, so the kernel
/// drops every further SYN and a connect times out. (A closed port would
/// refuse, and a refusal is an answer: the host is there.)
struct Silent {
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
}

/// Replaces the test listener at `addr` by a silent one.
async fn silence(task: tokio::task::JoinHandle<()>, addr: &str) -> Silent {
    use socket2::{Domain, SockAddr, Socket, Type};
    task.abort();
    let _ = task.await;
    let sa: std::net::SocketAddr = addr.parse().expect("test address");
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    listener.set_reuse_address(true).expect("SO_REUSEADDR");
    listener
        .bind(&SockAddr::from(sa))
        .expect("binding the silent listener");
    listener.listen(0).expect("listen");
    let short = Duration::from_millis(300);
    let mut queued = Vec::new();
    // Bounded: the queue holds one or two connections.
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&sa, short) {
            Ok(conn) => queued.push(conn),
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut,
                    "a full queue drops the SYN: {e}"
                );
                return Silent {
                    _listener: listener,
                    _queued: queued,
                };
            }
        }
    }
    panic!("the silent listener at {addr} still completes connections");
}

/// One `/health/primary` probe: when it was sent, when it was answered
/// (or gave up), and whether the answer was 200.
type Sample = (Instant, Instant, bool);

/// Samples `/health/primary` of each of two nodes every 10 ms, one task
/// per node (200 ms timeout per request: a stopped process counts as
/// not 200).
struct Sampler {
    samples: [Arc<Mutex<Vec<Sample>>>; 2],
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Sampler {
    fn start(c: &Cluster, x: usize, y: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = [Arc::default(), Arc::default()];
        let handles = [x, y]
            .iter()
            .zip(&samples)
            .map(|(&i, out): (&usize, &Arc<Mutex<Vec<Sample>>>)| {
                let (http, url) = (c.http.clone(), c.url(i, "/health/primary"));
                let (out, stop) = (out.clone(), stop.clone());
                tokio::spawn(async move {
                    // Bounded by the test stopping it, and by a count.
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && n < 100_000 {
                        n += 1;
                        let sent = Instant::now();
                        let ok = http
                            .get(&url)
                            .timeout(Duration::from_millis(200))
                            .send()
                            .await
                            .is_ok_and(|r| r.status() == StatusCode::OK);
                        out.lock()
                            .expect("samples")
                            .push((sent, Instant::now(), ok));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Self {
            samples,
            stop,
            handles,
        }
    }

    async fn finish(self) -> [Vec<Sample>; 2] {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("the sampler stops")
                .expect("the sampler did not panic");
        }
        self.samples.map(|s| s.lock().expect("samples").clone())
    }
}

fn diverged_files(n: &NodeProc) -> Vec<String> {
    std::fs::read_dir(&n.dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with("diverged-") && f.ends_with(".jsonl"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until node `i` is fenced: its notes say the other side no
/// longer counts it, it is not primary, and `/health/primary` is 503.
async fn wait_fenced(c: &Cluster, i: usize) -> StatusView {
    let what = format!("{} to be fenced", c.nodes[i].name);
    let s = wait_until(&what, SETTLE, || async {
        let s = c.status(i).await?;
        (s.this_host.role != "primary"
            && s.this_host
                .notes
                .iter()
                .any(|n| n.contains("no longer counts this node")))
        .then_some(s)
    })
    .await;
    let (code, _) = c
        .role_health(i, "primary")
        .await
        .expect("/health/primary answers");
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{what}");
    s
}

/// A write on node `i` that must not be accepted (421 or 503).
async fn assert_write_refused(c: &Cluster, i: usize, key: &str) {
    let resp = c.put(i, key, &json!(1)).await.expect("an answer");
    let code = resp.status();
    assert!(
        code == StatusCode::MISDIRECTED_REQUEST || code == StatusCode::SERVICE_UNAVAILABLE,
        "a write on {} answered {code}",
        c.nodes[i].name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_only_sigstop_promotes_only_when_the_network_answers() {
    let mut c = Cluster::init("a", &[]).await;
    c.add_node("b", false).await;
    c.wait_members(2).await;
    let (a, b) = (0, 1);
    wait_role(&c, a, "primary", SETTLE).await;
    wait_role(&c, b, "backup", SETTLE).await;
    let s = status(&c, a).await;
    assert_eq!(s.topology, "pair");
    assert!(
        s.peers.iter().all(|p| !p.voter),
        "pair only: the backup is a learner: {:?}",
        s.peers
    );
    let (net1, addr1) = test_address().await;
    set_failover(&c, a, std::slice::from_ref(&addr1), &[a, b]).await;
    let mut acked = write_keys(&c, a, "k/", 50).await;
    let sampler = Sampler::start(&c, a, b);

    // Phase 1: the network is down; the primary stops for 3 s. The
    // backup cannot tell it is not cut off itself: it must not promote.
    let _silent = silence(net1, &addr1).await;
    c.wait_caught_up(b).await;
    let epoch0 = status(&c, b).await.epoch;
    signal(&c, a, false);
    let stopped = Instant::now();
    // The 3 s stop is what is measured; b is watched meanwhile.
    while stopped.elapsed() < Duration::from_secs(3) {
        if let Some(s) = c.status(b).await {
            assert_eq!(
                s.this_host.role, "backup",
                "b changed role without a test address answering"
            );
            assert_eq!(s.epoch, epoch0, "b raised the epoch");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&c, a, true);
    wait_role(&c, a, "primary", SETTLE).await;
    assert_eq!(status(&c, b).await.this_host.role, "backup");
    assert_eq!(status(&c, b).await.epoch, epoch0);
    acked.extend(write_keys(&c, a, "r/", 10).await);

    // Phase 2: a test address answers; the primary stops again.
    let (_net2, addr2) = test_address().await;
    set_failover(&c, a, std::slice::from_ref(&addr2), &[a, b]).await;
    c.wait_caught_up(b).await;
    signal(&c, a, false);
    let stopped = Instant::now();
    let promoted = wait_until("b to promote itself", Duration::from_secs(5), || async {
        let s = c.status(b).await?;
        (s.this_host.role == "primary" && s.primary == Some(c.nodes[b].id()) && s.epoch > epoch0)
            .then_some(s)
    })
    .await;
    eprintln!(
        "t75: b promoted itself {:?} after a was stopped (epoch {} -> {})",
        stopped.elapsed(),
        epoch0,
        promoted.epoch
    );
    assert!(
        promoted.peers.is_empty(),
        "after a forced promotion b is alone (topology {}): {:?}",
        promoted.topology,
        promoted.peers
    );
    let written_b = write_keys(&c, b, "p2/", 20).await;
    signal(&c, a, true);
    wait_until(
        "a to step down after its resume",
        Duration::from_secs(5),
        || async {
            let s = c.status(a).await?;
            (s.this_host.role != "primary").then_some(())
        },
    )
    .await;
    let fenced = wait_fenced(&c, a).await;
    assert_write_refused(&c, a, "on-a-after-resume").await;
    let files = wait_until("a diverged export in a's directory", SETTLE, || async {
        let f = diverged_files(&c.nodes[a]);
        (!f.is_empty()).then_some(f)
    })
    .await;
    let noted = wait_until("a's notes to name the export", SETTLE, || async {
        let s = c.status(a).await?;
        s.this_host
            .notes
            .iter()
            .any(|n| n.contains("diverged-"))
            .then_some(s)
    })
    .await;
    eprintln!(
        "t75: a fenced: {:?}; exports {files:?}; notes {:?}",
        fenced.this_host.notes, noted.this_host.notes
    );
    let [on_a, on_b] = sampler.finish().await;
    let ok_a: Vec<&Sample> = on_a.iter().filter(|s| s.2).collect();
    let ok_b: Vec<&Sample> = on_b.iter().filter(|s| s.2).collect();
    eprintln!(
        "t75: /health/primary samples: a {} (200: {}), b {} (200: {})",
        on_a.len(),
        ok_a.len(),
        on_b.len(),
        ok_b.len()
    );
    assert!(
        !ok_a.is_empty() && !ok_b.is_empty(),
        "each was primary once"
    );
    // a was primary first, b after the promotion, never a again: every
    // 200 of a was answered before any 200 of b was asked, so no two
    // 200 answers can have been true at the same time.
    let last_a = ok_a.iter().map(|s| s.1).max().expect("a 200 of a");
    let first_b = ok_b.iter().map(|s| s.0).min().expect("a 200 of b");
    assert!(
        last_a < first_b,
        "a answered 200 on /health/primary at {:?} after b's first 200 was asked",
        last_a - first_b
    );

    // Nothing acknowledged before the stop is lost on b.
    let mut on_b = c.list(b, "k/", false).await;
    on_b.extend(c.list(b, "r/", false).await);
    assert_eq!(on_b, acked, "keys acknowledged by a, as b serves them");
    let page = history(&c, b, "forced_promotion").await;
    assert!(
        page.items
            .iter()
            .any(|e| e.kind == "forced_promotion"
                && e.details["primary"] == json!(c.nodes[b].id())),
        "no forced_promotion of b: {:?}",
        page.items
    );

    // Rejoin needs a token made on the primary for this very node: none,
    // or one made for another node, is refused and changes nothing.
    let resp = post(&c, a, "/api/v1/relationship/rejoin", &json!({})).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "rejoin without a token"
    );
    let other = rejoin_token(&c, b, c.nodes[a].id() + 40).await;
    let resp = post(
        &c,
        a,
        "/api/v1/relationship/rejoin",
        &json!({ "token": other }),
    )
    .await;
    let (code, text) = (resp.status(), resp.text().await.unwrap_or_default());
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "rejoin with another node's token: {text}"
    );
    assert!(text.contains("for node"), "{text}");
    assert!(
        status(&c, a)
            .await
            .this_host
            .notes
            .iter()
            .any(|n| n.contains("no longer counts")),
        "a refused rejoin changed a's state"
    );
    // Rejoin: a becomes the backup of b and holds b's data.
    let token = rejoin_token(&c, b, c.nodes[a].id()).await;
    let resp = post(
        &c,
        a,
        "/api/v1/relationship/rejoin",
        &json!({ "token": token }),
    )
    .await;
    let out: BreakOutcome = ok_json(resp, "rejoin on a").await;
    assert_eq!(out.former_peers, vec![c.nodes[b].id()], "{out:?}");
    wait_role(&c, a, "backup", SETTLE).await;
    wait_has(&c, a, "p2/", &written_b).await;
    let mut on_a = try_list(&c, a, "k/").await.expect("stale list on a");
    on_a.extend(try_list(&c, a, "r/").await.expect("stale list on a"));
    assert_eq!(on_a, acked);
    let sb = status(&c, b).await;
    assert_eq!(sb.this_host.role, "primary");
    assert_eq!(sb.topology, "pair");
    let sa = status(&c, a).await;
    assert_eq!(sa.primary, Some(c.nodes[b].id()));
    assert!(
        !sa.this_host
            .notes
            .iter()
            .any(|n| n.contains("no longer counts")),
        "a is still fenced after the rejoin: {:?}",
        sa.this_host.notes
    );
    c.put_ok(b, "after-rejoin", &json!(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_swap_with_the_peer_down_then_rejoin() {
    forced_swap_scenario(true).await;
}

/// As above, but the old primary comes back before the witness resumes:
/// it is fenced by the new primary, yet it keeps leading its old
/// lineage and the witness follows it, so the witness never contacts
/// the new primary, is never fenced and cannot rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_swap_old_primary_back_first_fences_the_witness_too() {
    forced_swap_scenario(false).await;
}

/// Forced swap on the backup with the primary killed and the witness
/// stopped; then both come back (the witness first when
/// `witness_first`), are fenced, rejoin, and the relationship is whole.
async fn forced_swap_scenario(witness_first: bool) {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b, w) = (r.primary, r.backup, r.witness);
    let before = write_keys(&c, p, "before/", 30).await;
    c.wait_caught_up(b).await;

    c.kill9(p);
    signal(&c, w, false);
    // Staying down longer than the primary timeout is the point here.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = post(
        &c,
        b,
        "/api/v1/relationship/swap",
        &json!({"pull_sync": false, "force": true}),
    )
    .await;
    let out: SwapOutcome = ok_json(resp, "forced swap on the backup").await;
    eprintln!("t75: forced swap: {out:?}");
    assert!(out.forced, "{out:?}");
    assert_eq!(out.new_primary, c.nodes[b].id(), "{out:?}");
    assert_eq!(out.previous_primary, Some(c.nodes[p].id()), "{out:?}");
    assert!(out.epoch > r.epoch, "{out:?}");
    let after = write_keys(&c, b, "after/", 30).await;

    let (fp, fw) = if witness_first {
        signal(&c, w, true);
        let fw = wait_fenced(&c, w).await;
        c.restart(p).await;
        (wait_fenced(&c, p).await, fw)
    } else {
        c.restart(p).await;
        signal(&c, w, true);
        let fp = wait_fenced(&c, p).await;
        (fp, wait_fenced(&c, w).await)
    };
    eprintln!(
        "t75: fenced notes: {} {:?}; {} {:?}",
        c.nodes[p].name, fp.this_host.notes, c.nodes[w].name, fw.this_host.notes
    );
    assert_write_refused(&c, p, "on-old-primary").await;
    let sb = status(&c, b).await;
    assert_eq!(sb.this_host.role, "primary");
    assert_eq!(sb.epoch, out.epoch);

    let token = rejoin_token(&c, b, c.nodes[p].id()).await;
    let resp = post(
        &c,
        p,
        "/api/v1/relationship/rejoin",
        &json!({ "token": token }),
    )
    .await;
    let o: BreakOutcome = ok_json(resp, &format!("rejoin on {}", c.nodes[p].name)).await;
    assert_eq!(o.former_peers, vec![c.nodes[b].id()], "{o:?}");
    // The witness rejoins from the command line: `tandem token --rejoin ID`
    // on the primary, `tandem rejoin --rejoin-token` on the witness.
    let cli = |args: &[&str], on: usize| {
        let mut v: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        v.extend([
            "--dir".into(),
            c.nodes[on].dir.clone().into(),
            "--token".into(),
            c.admin_token.clone().into(),
        ]);
        tandem(v)
    };
    let w_id = c.nodes[w].id().to_string();
    let made = cli(&["token", "--rejoin", &w_id], b)
        .await
        .expect_ok("tandem token --rejoin");
    let token = made.stdout.trim().to_string();
    cli(&["rejoin", "--yes", "--json", "--rejoin-token", &token], w)
        .await
        .expect_ok("tandem rejoin --rejoin-token");

    let roles = c.wait_roles(WAIT).await;
    assert_eq!(roles.primary, b, "{roles:?}");
    assert_eq!(roles.epoch, out.epoch, "{roles:?}");
    c.wait_voters(3).await;
    for i in [p, b, w] {
        let s = status(&c, i).await;
        assert_eq!(s.topology, "pair+witness", "{}", c.nodes[i].name);
    }
    for i in [p, b] {
        wait_has(&c, i, "before/", &before).await;
        wait_has(&c, i, "after/", &after).await;
    }
    c.put_ok(b, "after-rejoin", &json!(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_leaves_everyone_standalone_with_their_data() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b, w) = (r.primary, r.backup, r.witness);
    let written = write_keys(&c, p, "br/", 40).await;
    c.wait_caught_up(b).await;

    let resp = post(&c, b, "/api/v1/relationship/break", &json!({})).await;
    let out: BreakOutcome = ok_json(resp, "break asked of the backup").await;
    assert_eq!(out.role, "standalone", "{out:?}");
    let mut former = out.former_peers.clone();
    former.sort_unstable();
    let mut want = vec![c.nodes[b].id(), c.nodes[w].id()];
    want.sort_unstable();
    assert_eq!(former, want, "{out:?}");
    for i in [p, b, w] {
        let s = wait_role(&c, i, "standalone", SETTLE).await;
        assert_eq!(s.topology, "standalone", "{}", c.nodes[i].name);
    }
    let page = history(&c, p, "break").await;
    assert!(
        page.items
            .iter()
            .any(|e| e.kind == "break" && e.actor == format!("admin-token:{ACTOR}")),
        "{:?}",
        page.items
    );
    assert!(status(&c, p).await.epoch > r.epoch);

    c.put_ok(p, "after-break", &json!(1)).await;
    assert_eq!(c.list(b, "br/", true).await, written);
    // The former backup is its own leader now.
    wait_until(
        "a linearizable read on the former backup",
        SETTLE,
        || async {
            let resp = c
                .req(b, Method::GET, "/api/v1/config?prefix=br/&limit=1000")
                .send()
                .await
                .ok()?;
            (resp.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    assert_eq!(c.list(b, "br/", false).await, written);
    assert!(c.list(b, "after-break", true).await.is_empty());

    for i in [p, b] {
        let resp = post(&c, i, "/api/v1/relationship/break", &json!({})).await;
        let (code, body) = error_body(resp, "a second break").await;
        assert_eq!(code, StatusCode::CONFLICT, "{}: {body}", c.nodes[i].name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_removed_and_added_back_live() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b, w) = (r.primary, r.backup, r.witness);

    // A writer on the primary, one key at a time.
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (acked, stop) = (acked.clone(), stop.clone());
        let (http, token) = (c.http.clone(), c.admin_token.clone());
        let api = c.nodes[p].api().to_string();
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && n < 100_000 {
                let ok = http
                    .put(format!("{api}/api/v1/config/wr/{n:06}"))
                    .bearer_auth(&token)
                    .json(&json!({ "value": n }))
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
                if ok {
                    acked.lock().expect("acked").push(n);
                    n += 1;
                } else {
                    // Client back-off on a refused write.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    let count = || acked.lock().expect("acked").len();
    wait_until("10 writes", WAIT, || async {
        (count() >= 10).then_some(())
    })
    .await;

    let resp = post(&c, p, "/api/v1/relationship/remove-witness", &json!({})).await;
    let out: BreakOutcome = ok_json(resp, "remove-witness").await;
    assert_eq!(out.former_peers, vec![c.nodes[w].id()], "{out:?}");
    let s = wait_until("pair topology with a learner backup", SETTLE, || async {
        let s = c.status(p).await?;
        let bp = s.peers.iter().find(|x| x.id == c.nodes[b].id())?;
        (s.topology == "pair" && !bp.voter && s.peers.len() == 1).then_some(s)
    })
    .await;
    assert_eq!(s.this_host.role, "primary");
    wait_role(&c, w, "standalone", SETTLE).await;
    wait_role(&c, b, "backup", SETTLE).await;
    let mark = count();
    wait_until("writes after the removal", SETTLE, || async {
        (count() >= mark + 10).then_some(())
    })
    .await;
    let history_removed = history(&c, p, "witness_removed").await;
    assert!(!history_removed.items.is_empty());

    // The old witness is gone for good; a new one joins.
    assert_eq!(c.stop(w).await, Some(0));
    c.nodes.remove(w);
    // The witness was the last node: the appliances keep their indexes.
    assert!(w > p && w > b, "the witness is the last node");

    let nw = c.add_node("w2", true).await;
    c.wait_voters(3).await;
    let s = wait_until("pair+witness with three voters", SETTLE, || async {
        let s = c.status(p).await?;
        (s.topology == "pair+witness" && s.peers.len() == 2 && s.peers.iter().all(|x| x.voter))
            .then_some(s)
    })
    .await;
    assert_eq!(s.this_host.role, "primary");
    let ids: Vec<u64> = s.peers.iter().map(|x| x.id).collect();
    assert!(ids.contains(&c.nodes[nw].id()) && ids.contains(&c.nodes[b].id()));
    let mark = count();
    wait_until("writes after the new witness", SETTLE, || async {
        (count() >= mark + 10).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer stops")
        .expect("the writer did not panic");
    let acked = acked.lock().expect("acked").clone();
    let got = c.list(p, "wr/", false).await;
    for n in &acked {
        assert_eq!(
            got.get(&format!("wr/{n:06}")),
            Some(&json!(n)),
            "acknowledged write {n} lost"
        );
    }
    eprintln!(
        "t75: {} writes acknowledged across the witness change",
        acked.len()
    );

    // A planned swap works in the new topology.
    let roles = c.wait_roles(WAIT).await;
    assert_eq!((roles.primary, roles.backup, roles.witness), (p, b, nw));
    c.wait_peer_reachable(p, b, true).await;
    let resp = post(
        &c,
        p,
        "/api/v1/relationship/swap",
        &json!({"pull_sync": false, "force": false}),
    )
    .await;
    let o: SwapOutcome = ok_json(resp, "planned swap after the new witness").await;
    assert!(!o.forced, "{o:?}");
    assert_eq!(o.new_primary, c.nodes[b].id(), "{o:?}");
    let next = c.wait_roles(SETTLE).await;
    assert_eq!(next.primary, b, "{next:?}");
    c.put_ok(b, "after-swap", &json!(1)).await;
}

/// *Become backup even if the peer cannot be contacted* on the primary,
/// with the backup stopped: the primary stands down (no writes, nobody
/// primary), stays down across a restart, and *Become primary* on it undoes
/// the demotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_demotion_of_a_primary_whose_peer_is_down_and_undo() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let before = write_keys(&c, p, "before/", 20).await;
    c.wait_caught_up(b).await;
    assert_eq!(c.stop(b).await, Some(0));

    let resp = post(
        &c,
        p,
        "/api/v1/relationship/swap",
        &json!({"pull_sync": false, "force": true}),
    )
    .await;
    let out: SwapOutcome = ok_json(resp, "forced demotion on the primary").await;
    eprintln!("t75: forced demotion: {out:?}");
    assert!(out.demoted && out.forced, "{out:?}");
    assert_eq!(out.previous_primary, Some(c.nodes[p].id()));
    assert!(
        out.epoch > r.epoch,
        "the epoch rises with nobody primary: {out:?}"
    );
    assert!(
        out.warning
            .as_deref()
            .is_some_and(|w| w.contains("by hand")),
        "{out:?}"
    );
    let s = status(&c, p).await;
    assert_eq!(s.this_host.role, "backup", "{:?}", s.this_host);
    assert_eq!(s.primary, None);
    assert!(
        s.this_host.notes.iter().any(|n| n.contains("stood down")),
        "{:?}",
        s.this_host.notes
    );
    assert_write_refused(&c, p, "after-demotion").await;
    let h = c
        .req(p, Method::GET, "/health/primary")
        .send()
        .await
        .expect("health");
    assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(history(&c, p, "forced_demotion").await.items.len(), 1);

    // It stays down across a restart.
    assert_eq!(c.stop(p).await, Some(0));
    c.restart(p).await;
    c.wait_health(p).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = status(&c, p).await;
    assert_ne!(s.this_host.role, "primary", "a restart undid the demotion");
    assert_write_refused(&c, p, "after-restart").await;

    // Undo: Become primary on it.
    let resp = post(&c, p, "/api/v1/relationship/swap", &json!({})).await;
    let undone: SwapOutcome = ok_json(resp, "undoing the demotion").await;
    assert_eq!(undone.new_primary, c.nodes[p].id(), "{undone:?}");
    assert!(!undone.demoted);
    c.put_ok(p, "after-undo", &json!(1)).await;
    assert_eq!(c.list(p, "before/", true).await, before);
    assert_eq!(
        history(&c, p, "forced_demotion_undone").await.items.len(),
        1
    );

    // The backup comes back as the backup.
    c.restart(b).await;
    let r2 = c.wait_roles(WAIT).await;
    assert_eq!(r2.primary, p);
    assert_eq!(r2.backup, b);
}

/// With a witness and automatic failover off, the backup does not take
/// over when the primary dies; it says so, and *Become primary* on it makes
/// it primary by election (no forced promotion: the old primary comes back
/// as the backup, not fenced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_failover_with_a_witness_when_automatic_failover_is_off() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let s0: SettingsView = c
        .get_json(p, "/api/v1/settings")
        .await
        .expect("GET settings");
    assert!(s0.auto_failover, "automatic failover is on by default");
    let mut body = settings_body(&s0);
    body["auto_failover"] = json!(false);
    let resp = c
        .req(p, Method::PUT, "/api/v1/settings")
        .json(&body)
        .send()
        .await
        .expect("PUT settings");
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
    let before = write_keys(&c, p, "before/", 20).await;
    c.wait_caught_up(b).await;

    c.kill9(p);
    let timeout = Duration::from_millis(s0.primary_timeout_ms);
    let killed = Instant::now();
    while killed.elapsed() < timeout * 4 {
        let s = status(&c, b).await;
        assert_ne!(
            s.this_host.role, "primary",
            "the backup took over by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = status(&c, b).await;
    assert!(
        s.this_host.notes.iter().any(|n| n.contains("by hand")),
        "{:?}",
        s.this_host.notes
    );

    let resp = post(&c, b, "/api/v1/relationship/swap", &json!({"force": true})).await;
    let out: SwapOutcome = ok_json(resp, "manual failover on the backup").await;
    assert_eq!(out.new_primary, c.nodes[b].id(), "{out:?}");
    assert!(!out.forced, "an election, not a forced promotion: {out:?}");
    assert_eq!(c.list(b, "before/", true).await, before);
    c.put_ok(b, "after", &json!(1)).await;

    // The old primary comes back as the backup (nothing diverged).
    c.restart(p).await;
    let r2 = c.wait_roles(WAIT).await;
    assert_eq!((r2.primary, r2.backup), (b, p));
}
