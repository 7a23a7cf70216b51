//! Cluster and end-to-end tests: real `tandem` processes on loopback, driven
//! through the CLI, the HTTPS admin API and the peer listener.
//!
//! Each test owns a temporary directory and its own ports; at most two
//! clusters run at once (see `tandem_tests::cluster_slot`).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tandem_tests::{tandem, wait_until, Cluster, NodeProc, WAIT};

/// Writes `count` keys `<prefix><n:05>` = `{"n": n, "s": "value-n"}` through
/// node `i`, 16 at a time; panics on any answer but 200.
async fn write_keys(c: &Cluster, i: usize, prefix: &str, count: usize) -> BTreeMap<String, Value> {
    use futures::StreamExt;
    let results: Vec<(String, Value)> = futures::stream::iter(0..count)
        .map(|n| async move {
            let key = format!("{prefix}{n:05}");
            let value = json!({ "n": n, "s": format!("value-{n}") });
            c.put_ok(i, &key, &value).await;
            (key, value)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The JSON error body of a failed request, checking it has an `error` field.
async fn error_body(resp: reqwest::Response, what: &str) -> (StatusCode, Value) {
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "{what}: {status} with content-type {ctype:?}: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON ({e}): {text}"));
    assert!(
        body.get("error").and_then(Value::as_str).is_some(),
        "{what}: {status} body has no \"error\": {text}"
    );
    (status, body)
}

mod t10_bootstrap {
    use super::*;
    use std::ffi::OsString;

    /// A `tandem join` that must be refused: non-zero exit (3 when the
    /// cluster refused), a one-line `tandem: ...` reason containing
    /// `expect`, and no `node.toml` in the joiner's directory.
    async fn assert_join_refused(
        c: &Cluster,
        name: &str,
        token: &str,
        code: Option<i32>,
        expect: &str,
    ) {
        let out = c.join_cmd(name, token, false).await;
        let reason = out.reason().to_string();
        match code {
            Some(code) => assert_eq!(
                out.code,
                Some(code),
                "join {name}: stdout {} stderr {}",
                out.stdout,
                out.stderr
            ),
            None => assert!(
                out.code.is_some_and(|c| c != 0),
                "join {name} did not fail: {:?} {}",
                out.code,
                out.stderr
            ),
        }
        assert!(
            reason.starts_with("tandem: ") && reason.contains(expect),
            "join {name}: reason {reason:?} does not mention {expect:?}"
        );
        assert!(
            !c.path().join(name).join("node.toml").exists(),
            "a refused join left {name}/node.toml"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_join_and_bad_tokens_are_refused() {
        let c = Cluster::three(&[]).await;
        let view = c.wait_voters(3).await;
        assert_eq!(view.cluster_id, c.cluster_id);
        assert_eq!(view.members.len(), 3, "{view:?}");
        let kinds: BTreeMap<&str, (&str, bool)> = view
            .members
            .iter()
            .map(|m| (m.name.as_str(), (m.kind.as_str(), m.voter)))
            .collect();
        assert_eq!(
            kinds,
            BTreeMap::from([
                ("a", ("appliance", true)),
                ("b", ("appliance", true)),
                ("w", ("witness", true)),
            ])
        );
        let leader_id = view.leader.expect("a leader");
        let leader = c.index_of(leader_id).expect("the leader is a member");
        assert!(!c.nodes[leader].witness(), "the witness leads");
        // Exactly one node says it leads, and all agree on who.
        let mut leaders = 0;
        for i in 0..3 {
            let h = wait_until("a health view naming the leader", WAIT, || async {
                c.health(i).await.filter(|h| h.leader == Some(leader_id))
            })
            .await;
            assert_eq!(h.node, c.nodes[i].name);
            if h.role == "leader" {
                leaders += 1;
            }
        }
        assert_eq!(leaders, 1);

        // `tandem status` prints a table with the three names.
        let out = tandem([
            OsString::from("status"),
            OsString::from("--members"),
            "--dir".into(),
            c.nodes[0].dir.clone().into(),
            "--token".into(),
            c.admin_token.clone().into(),
        ])
        .await
        .expect_ok("tandem status");
        let mut lines = out.stdout.lines();
        assert!(
            lines.next().is_some_and(|l| l.contains(&c.cluster_id)),
            "status: {}",
            out.stdout
        );
        let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
        assert_eq!(
            &header[..3],
            ["ID", "NAME", "KIND"],
            "status: {}",
            out.stdout
        );
        let rows: BTreeMap<String, String> = lines
            .map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                (cells[1].to_string(), cells[2].to_string())
            })
            .collect();
        assert_eq!(
            rows,
            BTreeMap::from([
                ("a".to_string(), "appliance".to_string()),
                ("b".to_string(), "appliance".to_string()),
                ("w".to_string(), "witness".to_string()),
            ]),
            "status: {}",
            out.stdout
        );

        // Refusals.
        let reused = c.used_tokens[0].clone();
        assert_join_refused(&c, "x-reused", &reused, Some(3), "already used").await;

        let before_ms = tandem_tests::now_ms();
        let expiring = c.token(false, Some(1)).await;
        let after_ms = tandem_tests::now_ms();
        assert!(after_ms - before_ms < 30_000);
        // Expires at most 1 s after the token was minted: wait for that
        // moment (bounded: about one second).
        wait_until(
            "the 1 s token to expire",
            Duration::from_secs(5),
            || async { (tandem_tests::now_ms() > after_ms + 1_200).then_some(()) },
        )
        .await;
        assert_join_refused(&c, "x-expired", &expiring, Some(3), "expired").await;

        let genuine = c.token(false, None).await;
        let parts: Vec<&str> = genuine.split('.').collect();
        assert_eq!(
            parts.len(),
            3,
            "token format id.secret.fingerprint: {genuine}"
        );
        let forged = format!("{}.{}.{}", parts[0], "A".repeat(parts[1].len()), parts[2]);
        assert_join_refused(&c, "x-forged", &forged, Some(3), "does not match").await;

        let other_ca = tandem_certs::ClusterCa::generate("another-cluster").expect("a CA");
        let foreign = format!("{}.{}.{}", parts[0], parts[1], other_ca.fingerprint());
        // The joiner pins the CA from the token: the TLS handshake with the
        // real cluster fails before anything is sent.
        let out = c.join_cmd("x-foreign", &foreign, false).await;
        eprintln!("t10: foreign CA join: {:?} {}", out.code, out.reason());
        assert!(out.code.is_some_and(|code| code != 0), "{out:?}");
        assert!(
            out.reason().starts_with("tandem: "),
            "reason {:?}",
            out.reason()
        );
        assert!(!c.path().join("x-foreign").join("node.toml").exists());

        // Membership unchanged.
        let after = c.wait_voters(3).await;
        let ids = |v: &tandem_web::ClusterView| -> Vec<(u64, bool)> {
            v.members.iter().map(|m| (m.id, m.voter)).collect()
        };
        assert_eq!(ids(&after), ids(&view));

        // The genuine token was not burnt by the forged attempts.
        let ok = c.join_cmd("x-genuine", &genuine, false).await;
        assert_eq!(ok.code, Some(0), "genuine token after forgeries: {ok:?}");
        assert!(c.path().join("x-genuine").join("node.toml").exists());
    }

    /// Joins that overlap (three joiners at once, as an installer running
    /// on several machines would) must all succeed, or fail without burning
    /// their token so that a retry works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_joins_succeed_or_can_be_retried() {
        let c = Cluster::three(&[]).await;
        let mut tokens = Vec::new();
        for _ in 0..3 {
            tokens.push(c.token(false, None).await);
        }
        let names = ["j1", "j2", "j3"];
        let first = futures::future::join_all(
            names
                .iter()
                .zip(&tokens)
                .map(|(name, token)| c.join_cmd(name, token, false)),
        )
        .await;
        let mut failures = Vec::new();
        for ((name, token), out) in names.iter().zip(&tokens).zip(first) {
            if out.code == Some(0) {
                continue;
            }
            // A failed join must leave its token usable: retry once.
            let retry = c.join_cmd(&format!("{name}-retry"), token, false).await;
            if retry.code != Some(0) {
                failures.push(format!(
                    "{name}: first {:?} {:?}; retry {:?} {:?}",
                    out.code,
                    out.reason(),
                    retry.code,
                    retry.reason()
                ));
            }
        }
        assert!(failures.is_empty(), "joins lost: {failures:#?}");
    }
}

mod t20_replication {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_replicate_and_followers_redirect() {
        let c = Cluster::three(&[]).await;
        let l = c.leader().await;
        let written = write_keys(&c, l, "k/", 1000).await;
        assert_eq!(written.len(), 1000);

        let on_leader = c.list(l, "k/", false).await;
        assert_eq!(on_leader, written, "leader's linearizable list");
        let leader_applied = c.applied(l).await.expect("leader applied index");

        for f in (0..3).filter(|&i| i != l) {
            let name = &c.nodes[f].name;
            wait_until(
                &format!("{name} to apply {leader_applied}"),
                WAIT,
                || async {
                    c.applied(f)
                        .await
                        .filter(|&a| a >= leader_applied)
                        .map(|_| ())
                },
            )
            .await;
            assert_eq!(c.list(f, "k/", true).await, written, "stale list on {name}");

            // One stale read: 200 with the applied-index header.
            let resp = c
                .req(f, Method::GET, "/api/v1/config/k/00042?stale=true")
                .send()
                .await
                .expect("stale read");
            assert_eq!(resp.status(), StatusCode::OK);
            let idx: u64 = resp
                .headers()
                .get("x-tandem-applied-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("X-Tandem-Applied-Index on a stale read");
            assert!(idx >= leader_applied, "{idx} < {leader_applied}");
            let entry: tandem_web::ConfigEntryView = resp.json().await.expect("an entry");
            assert_eq!(entry.value, written["k/00042"]);

            // A write on a follower: 421 pointing at the leader.
            let resp = c
                .put(f, "k/follower", &json!(1))
                .await
                .expect("put on a follower");
            assert_eq!(
                resp.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "PUT on {name}"
            );
            let loc = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            assert_eq!(
                loc.as_deref(),
                Some(c.url(l, "/api/v1/config/k/follower").as_str()),
                "Location of a write on {name}"
            );
            error_body(resp, "PUT on a follower").await;

            // A linearizable read on a follower: 421 too.
            let resp = c
                .req(f, Method::GET, "/api/v1/config/k/00042")
                .send()
                .await
                .expect("read on a follower");
            assert_eq!(
                resp.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "GET on {name}"
            );
            let loc = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            assert_eq!(
                loc.as_deref(),
                Some(c.url(l, "/api/v1/config/k/00042").as_str())
            );
        }
        // The refused follower write did not happen.
        let resp = c
            .req(l, Method::GET, "/api/v1/config/k/follower")
            .send()
            .await
            .expect("read on the leader");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}

mod t30_failover {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// Keys are `fw/<n / 1000>/<n>` so that each bucket fits one list call.
    fn key(n: u64) -> String {
        format!("fw/{}/{n:06}", n / 1000)
    }

    struct Writer {
        acked: Arc<Mutex<Vec<u64>>>,
        stop: Arc<AtomicBool>,
        handle: tokio::task::JoinHandle<()>,
    }

    impl Writer {
        /// Writes `fw/...` keys with value `n` one after the other, following
        /// 421s and moving to another node on errors; records each 200.
        fn start(c: &Cluster) -> Self {
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

        fn count(&self) -> usize {
            self.acked.lock().expect("acked lock").len()
        }

        async fn finish(self) -> Vec<u64> {
            self.stop.store(true, Ordering::SeqCst);
            tokio::time::timeout(Duration::from_secs(30), self.handle)
                .await
                .expect("the writer stops within 30 s")
                .expect("the writer did not panic");
            let acked = self.acked.lock().expect("acked lock").clone();
            acked
        }
    }

    async fn assert_has_all(c: &Cluster, i: usize, acked: &[u64], stale: bool) {
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
}

mod t40_snapshot_catch_up {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follower_behind_a_purged_log_catches_up_by_snapshot() {
        let mut c =
            Cluster::three(&["--snapshot-every", "100", "--keep-behind-snapshot", "10"]).await;
        let l = c.leader().await;
        let f = (0..3)
            .find(|&i| i != l && !c.nodes[i].witness())
            .expect("an appliance follower");
        c.wait_caught_up(f).await;
        let f_last = c
            .health(f)
            .await
            .and_then(|h| h.last_log_index)
            .expect("follower last log index");
        assert_eq!(c.stop(f).await, Some(0), "SIGTERM exit code");

        let written = write_keys(&c, l, "s/", 600).await;
        let purged = wait_until(
            "the leader to purge the log the follower needs",
            WAIT,
            || async {
                c.health(l)
                    .await
                    .and_then(|h| h.purged_index)
                    .filter(|&p| p > f_last)
            },
        )
        .await;
        let leader_h = c.health(l).await.expect("leader health");
        assert!(leader_h.snapshot_index.is_some_and(|s| s >= purged));

        c.restart(f).await;
        c.wait_caught_up(f).await;
        let h = c.health(f).await.expect("follower health");
        let snap = h.snapshot_index.expect("the follower has a snapshot");
        eprintln!(
            "t40: follower {} stopped at log {f_last}; leader purged {purged}; follower now {h:?}",
            c.nodes[f].name
        );
        assert!(
            snap > f_last,
            "snapshot index {snap} should cover entries written while it was down (last log {f_last})"
        );
        assert_eq!(c.list(f, "s/", true).await, written);
        assert_eq!(c.list(l, "s/", false).await, written);
    }
}

mod t50_bad_input {
    use super::*;
    use std::sync::Arc;
    use tandem_node::frame::{read_frame, write_frame, FrameError};
    use tandem_node::protocol::{Hello, PeerResponse, PROTOCOL_VERSION};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    async fn assert_healthy(c: &Cluster, i: usize, after: &str) {
        let h = c.health(i).await;
        assert!(
            h.as_ref().is_some_and(|h| h.status == "ok"),
            "node unhealthy after {after}: {h:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_refuses_bad_requests_cleanly() {
        let c = Cluster::three(&[]).await;
        let l = c.leader().await;
        let url = |p: &str| c.url(l, p);
        let big_body = format!(r#"{{"value":"{}"}}"#, "x".repeat(1024 * 1024 + 100));
        let big_value = format!(r#"{{"value":"{}"}}"#, "x".repeat(100 * 1024));
        let long_key = "k".repeat(300);
        type Case<'a> = (&'a str, reqwest::RequestBuilder, Option<StatusCode>);
        let json_put = |path: &str, body: String| {
            c.http
                .put(url(path))
                .bearer_auth(&c.admin_token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        };
        let cases: Vec<Case> = vec![
            (
                "bad JSON",
                json_put("/api/v1/config/x", r#"{"value": "#.into()),
                Some(StatusCode::BAD_REQUEST),
            ),
            (
                "unknown field",
                json_put("/api/v1/config/x", r#"{"value":1,"bogus":2}"#.into()),
                None,
            ),
            (
                "missing value",
                json_put("/api/v1/config/x", "{}".into()),
                None,
            ),
            (
                "wrong JSON type",
                json_put("/api/v1/config/x", "[1,2]".into()),
                None,
            ),
            (
                "body over 1 MiB",
                json_put("/api/v1/config/x", big_body),
                Some(StatusCode::PAYLOAD_TOO_LARGE),
            ),
            (
                "value over the value limit",
                json_put("/api/v1/config/x", big_value),
                Some(StatusCode::BAD_REQUEST),
            ),
            (
                "if_version of the wrong type",
                json_put(
                    "/api/v1/config/x",
                    r#"{"value":1,"if_version":"one"}"#.into(),
                ),
                None,
            ),
            (
                "key too long",
                json_put(
                    &format!("/api/v1/config/{long_key}"),
                    r#"{"value":1}"#.into(),
                ),
                Some(StatusCode::BAD_REQUEST),
            ),
            (
                "key with a space",
                json_put("/api/v1/config/a%20b", r#"{"value":1}"#.into()),
                Some(StatusCode::BAD_REQUEST),
            ),
            (
                "text/plain body",
                c.http
                    .put(url("/api/v1/config/x"))
                    .bearer_auth(&c.admin_token)
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .body(r#"{"value":1}"#),
                None,
            ),
            (
                "no bearer",
                c.http
                    .put(url("/api/v1/config/x"))
                    .json(&json!({"value": 1})),
                Some(StatusCode::UNAUTHORIZED),
            ),
            (
                "no bearer on a read",
                c.http.get(url("/api/v1/config")),
                Some(StatusCode::UNAUTHORIZED),
            ),
            (
                "wrong bearer",
                c.http
                    .get(url("/api/v1/cluster"))
                    .bearer_auth("tdm_not-the-token"),
                Some(StatusCode::UNAUTHORIZED),
            ),
            (
                "basic auth",
                c.http
                    .get(url("/api/v1/cluster"))
                    .basic_auth("admin", Some(&c.admin_token)),
                Some(StatusCode::UNAUTHORIZED),
            ),
            (
                "limit=0",
                c.req(l, Method::GET, "/api/v1/config?limit=0"),
                Some(StatusCode::BAD_REQUEST),
            ),
            (
                "limit=abc",
                c.req(l, Method::GET, "/api/v1/config?limit=abc"),
                Some(StatusCode::BAD_REQUEST),
            ),
            (
                "session without owner",
                c.req(l, Method::POST, "/api/v1/sessions")
                    .json(&json!({"owner": "", "ttl_secs": 0})),
                Some(StatusCode::BAD_REQUEST),
            ),
            (
                "join token with a bad kind",
                c.req(l, Method::POST, "/api/v1/join-tokens")
                    .json(&json!({"kind": "overlord"})),
                Some(StatusCode::BAD_REQUEST),
            ),
            (
                "join with an empty body",
                c.http.post(url("/api/v1/join")).json(&json!({})),
                None,
            ),
            (
                "join with a made-up token",
                c.http.post(url("/api/v1/join")).json(&json!({
                    "token": format!("id.secret.{}", "0".repeat(64)),
                    "name": "evil",
                    "kind": "appliance",
                    "peer_addr": "127.0.0.1:1",
                    "api_addr": "https://127.0.0.1:2",
                    "csr_pem": "not a csr",
                })),
                None,
            ),
            (
                "delete of a missing key",
                c.req(l, Method::DELETE, "/api/v1/config/missing"),
                Some(StatusCode::NOT_FOUND),
            ),
            (
                "unknown route",
                c.req(l, Method::GET, "/api/v2/nothing"),
                Some(StatusCode::NOT_FOUND),
            ),
            (
                "wrong method",
                c.http.post(url("/health")),
                Some(StatusCode::METHOD_NOT_ALLOWED),
            ),
        ];
        for (what, req, expected) in cases {
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: no answer: {e:?}"));
            let (status, body) = error_body(resp, what).await;
            assert!(!status.is_server_error(), "{what}: {status} {body}");
            match expected {
                Some(s) => assert_eq!(status, s, "{what}: {body}"),
                None => assert!(status.is_client_error(), "{what}: {status} {body}"),
            }
            assert_healthy(&c, l, what).await;
        }
        // Nothing was written by the refused requests; good writes work.
        let resp = c
            .req(l, Method::GET, "/api/v1/config/x")
            .send()
            .await
            .expect("read x");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        c.put_ok(l, "x", &json!({"fine": true})).await;
    }

    async fn connect(
        addr: &str,
        node_id: u64,
        tls: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from(tandem_certs::server_name_for(node_id))
            .expect("a valid server name");
        tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(tls).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
    }

    /// Reads the next frame, bounded by 15 s (the node's hello timeout is 10 s).
    async fn next(conn: &mut TlsStream<TcpStream>) -> Result<PeerResponse, FrameError> {
        tokio::time::timeout(Duration::from_secs(15), read_frame::<PeerResponse, _>(conn))
            .await
            .expect("the node answers or closes within 15 s")
    }

    async fn hello(conn: &mut TlsStream<TcpStream>, cluster_id: &str, node_id: u64) {
        let h = Hello {
            protocol: PROTOCOL_VERSION,
            cluster_id: cluster_id.to_string(),
            node_id,
            epoch: 0,
        };
        write_frame(conn, &h).await.expect("hello sent");
    }

    /// After garbage, the node must close the connection without answering.
    async fn assert_closed(conn: &mut TlsStream<TcpStream>, what: &str) {
        match next(conn).await {
            Err(FrameError::Closed | FrameError::Io(_)) => {}
            other => panic!("{what}: expected the connection to be closed, got {other:?}"),
        }
    }

    async fn write_raw(conn: &mut TlsStream<TcpStream>, bytes: &[u8]) {
        // The node may close while we write; that is fine.
        let _ = conn.write_all(bytes).await;
        let _ = conn.flush().await;
    }

    async fn still_serving(c: &Cluster, l: usize, after: &str) {
        for i in 0..3 {
            assert_healthy(c, i, after).await;
        }
        let key = format!("after/{}", after.replace(' ', "-"));
        c.put_ok(l, &key, &json!(after)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_listener_refuses_strangers_and_garbage() {
        let c = Cluster::three(&[]).await;
        let l = c.leader().await;
        // Attack a node: node 0 (`a`, which holds the CA key).
        let target = &c.nodes[0];
        let addr = target.cfg.peer_listen.to_string();
        let id = target.id();
        let ca_key = std::fs::read_to_string(target.dir.join("ca.key")).expect("ca.key");
        let cluster_ca = tandem_certs::ClusterCa::from_pem(&c.ca_pem, &ca_key).expect("the CA");
        let sans = vec!["127.0.0.1".to_string()];

        // (1) A certificate from another CA (the client trusts the real CA,
        // so only the node's check of the client certificate can fail).
        let other = tandem_certs::ClusterCa::generate(&c.cluster_id).expect("another CA");
        let stranger = other.issue_node_cert(99, &sans).expect("a stranger cert");
        let tls =
            tandem_certs::peer_client_config(&c.ca_pem, &stranger.cert_pem, &stranger.key_pem)
                .expect("client config");
        match connect(&addr, id, tls).await {
            Err(_) => {}
            Ok(mut conn) => {
                // TLS 1.3: the client may finish before the server rejects
                // its certificate; the rejection then shows on first use.
                hello(&mut conn, &c.cluster_id, 99).await;
                match next(&mut conn).await {
                    Err(_) => {}
                    Ok(r) => panic!("a foreign certificate got an answer: {r:?}"),
                }
            }
        }
        still_serving(&c, l, "foreign certificate").await;

        // A valid certificate of the cluster CA for a node id nobody has.
        let cert = cluster_ca.issue_node_cert(99, &sans).expect("cert 99");
        let tls = tandem_certs::peer_client_config(&c.ca_pem, &cert.cert_pem, &cert.key_pem)
            .expect("client config");

        // (2) A frame announcing 4 GiB, as the hello and after a welcome.
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0xAB; 64]);
        let mut conn = connect(&addr, id, tls.clone()).await.expect("handshake");
        write_raw(&mut conn, &huge).await;
        assert_closed(&mut conn, "4 GiB hello").await;
        still_serving(&c, l, "4 GiB hello").await;

        let mut conn = connect(&addr, id, tls.clone()).await.expect("handshake");
        hello(&mut conn, &c.cluster_id, 99).await;
        assert!(
            matches!(next(&mut conn).await, Ok(PeerResponse::Welcome { node_id, .. }) if node_id == id),
            "a valid hello is welcomed"
        );
        write_raw(&mut conn, &huge).await;
        assert_closed(&mut conn, "4 GiB envelope").await;
        still_serving(&c, l, "4 GiB envelope").await;

        // (3) A short frame of garbage, as the hello and after a welcome.
        let mut garbage = 16u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xFF; 16]);
        let mut conn = connect(&addr, id, tls.clone()).await.expect("handshake");
        write_raw(&mut conn, &garbage).await;
        assert_closed(&mut conn, "garbage hello").await;
        still_serving(&c, l, "garbage hello").await;

        let mut conn = connect(&addr, id, tls.clone()).await.expect("handshake");
        hello(&mut conn, &c.cluster_id, 99).await;
        assert!(matches!(
            next(&mut conn).await,
            Ok(PeerResponse::Welcome { .. })
        ));
        write_raw(&mut conn, &garbage).await;
        assert_closed(&mut conn, "garbage envelope").await;
        still_serving(&c, l, "garbage envelope").await;

        // (4) A hello with the wrong cluster id, and one claiming another
        // node's id than the certificate's.
        for (what, cluster, node) in [
            ("wrong cluster id", "not-this-cluster".to_string(), 99),
            ("impersonating node 1", c.cluster_id.clone(), 1),
        ] {
            let mut conn = connect(&addr, id, tls.clone()).await.expect("handshake");
            hello(&mut conn, &cluster, node).await;
            match next(&mut conn).await {
                Ok(PeerResponse::Refused { reason }) => {
                    assert!(!reason.is_empty(), "{what}");
                }
                other => panic!("{what}: expected Refused, got {other:?}"),
            }
            assert_closed(&mut conn, what).await;
            still_serving(&c, l, what).await;
        }
    }
}

mod t60_demo {
    use super::*;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::process::{Child, Stdio};
    use std::time::Instant;
    use tandem_tests::pid_alive;

    /// The demo process and the node processes it started; on drop (test
    /// failure) the demo gets SIGINT then SIGKILL, and any of its nodes
    /// still alive SIGKILL (all started by this test, killed by PID).
    struct Demo {
        child: Option<Child>,
        nodes: Vec<u32>,
        root: tempfile::TempDir,
    }

    impl Drop for Demo {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = kill(pid, Signal::SIGINT);
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(20) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
            }
            for &p in &self.nodes {
                if pid_alive(p) && is_tandem_run(p) {
                    let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
                }
            }
            if std::thread::panicking() {
                for f in [
                    "demo.out",
                    "demo.err",
                    "demo/a.log",
                    "demo/b.log",
                    "demo/w.log",
                ] {
                    eprintln!(
                        "----- {f} -----\n{}",
                        tandem_tests::tail(&self.root.path().join(f), 30)
                    );
                }
            }
        }
    }

    impl Demo {
        /// Ctrl-C: SIGINT to the demo, which must exit 0 within 30 s.
        async fn interrupt(&mut self) {
            let mut child = self.child.take().expect("the demo runs");
            kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT to our child");
            let start = Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().expect("waiting for the demo") {
                    break s;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    self.child = Some(child);
                    panic!("the demo did not exit within 30 s of SIGINT");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(status.code(), Some(0), "demo exit status {status:?}");
        }
    }

    fn is_tandem_run(pid: u32) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.iter().any(|a| a.ends_with(b"tandem")) && args.iter().any(|a| *a == b"run")
        })
    }

    /// PIDs of the children of `parent` (from /proc).
    fn children_of(parent: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name: state, ppid, ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) {
                out.push(pid);
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_starts_three_nodes_and_stops_them_on_sigint() {
        let _slot = tandem_tests::cluster_slot().await;
        let root = tempfile::Builder::new()
            .prefix("tandem-demo-test-")
            .tempdir()
            .expect("tempdir");
        let dir = root.path().join("demo");
        let out = std::fs::File::create(root.path().join("demo.out")).expect("demo.out");
        let err = std::fs::File::create(root.path().join("demo.err")).expect("demo.err");
        let child = std::process::Command::new(tandem_tests::tandem_bin())
            .arg("demo")
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting tandem demo");
        let demo_pid = child.id();
        let mut demo = Demo {
            child: Some(child),
            nodes: Vec::new(),
            root,
        };

        let doc: Value = wait_until("demo.json", Duration::from_secs(90), || async {
            let text = std::fs::read_to_string(dir.join("demo.json")).ok()?;
            serde_json::from_str(&text).ok()
        })
        .await;
        let runs: Vec<u32> = children_of(demo_pid)
            .into_iter()
            .filter(|p| is_tandem_run(*p))
            .collect();
        demo.nodes = runs.clone();
        assert_eq!(runs.len(), 3, "the demo runs three nodes: {runs:?}");

        let token = doc["token"].as_str().expect("token").to_string();
        let ca = doc["ca"].as_str().expect("ca");
        let ca_pem = std::fs::read_to_string(ca).expect("the CA file");
        let nodes = doc["nodes"].as_array().expect("nodes");
        let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
        assert_eq!(names, ["a", "b", "w"]);
        let apis: Vec<String> = nodes
            .iter()
            .map(|n| n["api"].as_str().expect("api").to_string())
            .collect();
        for n in nodes {
            let d = n["dir"].as_str().expect("dir");
            assert!(std::path::Path::new(d).join("node.toml").is_file(), "{d}");
        }
        let http = tandem_tests::https_client(&ca_pem);

        // The node that leads accepts a PUT, like the curl line the demo prints.
        let leader = wait_until("a demo leader", WAIT, || async {
            for (i, api) in apis.iter().enumerate() {
                let h: tandem_web::HealthView = http
                    .get(format!("{api}/health"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                if h.role == "leader" {
                    return Some(i);
                }
            }
            None
        })
        .await;
        let resp = http
            .put(format!("{}/api/v1/config/greeting", apis[leader]))
            .bearer_auth(&token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(r#"{"value":{"hello":"world"}}"#)
            .send()
            .await
            .expect("PUT greeting");
        assert_eq!(resp.status(), StatusCode::OK);
        for api in &apis {
            let v = wait_until(&format!("greeting on {api}"), WAIT, || async {
                let resp = http
                    .get(format!("{api}/api/v1/config/greeting?stale=true"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .ok()?;
                if resp.status() != StatusCode::OK {
                    return None;
                }
                resp.json::<tandem_web::ConfigEntryView>().await.ok()
            })
            .await;
            assert_eq!(v.value, json!({"hello": "world"}));
        }

        // Ctrl-C: the demo exits 0 within 30 s and leaves no node behind.
        demo.interrupt().await;
        for p in &runs {
            assert!(!pid_alive(*p), "node process {p} outlived the demo");
        }
        for api in &apis {
            assert!(
                http.get(format!("{api}/health")).send().await.is_err(),
                "{api} still answers after the demo stopped"
            );
        }
    }

    /// `GET {api}/health` through `http`.
    async fn health_of(http: &reqwest::Client, api: &str) -> Option<tandem_web::HealthView> {
        http.get(format!("{api}/health"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// The demo's nodes with their pids, as demo.json says now.
    fn demo_nodes(dir: &std::path::Path) -> Option<Vec<(String, String, u32)>> {
        let text = std::fs::read_to_string(dir.join("demo.json")).ok()?;
        let doc: Value = serde_json::from_str(&text).ok()?;
        doc["nodes"]
            .as_array()?
            .iter()
            .map(|n| {
                Some((
                    n["name"].as_str()?.to_string(),
                    n["api"].as_str()?.to_string(),
                    u32::try_from(n["pid"].as_u64()?).ok()?,
                ))
            })
            .collect()
    }

    /// Kill -9 of the demo's primary: the backup takes over, the survivors
    /// keep serving (checked for 10 s), the demo says which node died and
    /// prints the command that starts it again; that command brings it back
    /// as backup; Enter on the demo's standard input starts it again as the
    /// demo's own child; Ctrl-C then stops everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_keeps_the_survivors_when_a_node_dies_and_brings_it_back() {
        use std::io::Write;
        let _slot = tandem_tests::cluster_slot().await;
        let root = tempfile::Builder::new()
            .prefix("tandem-demo-test-")
            .tempdir()
            .expect("tempdir");
        let dir = root.path().join("demo");
        let out_path = root.path().join("demo.out");
        let out = std::fs::File::create(&out_path).expect("demo.out");
        let err = std::fs::File::create(root.path().join("demo.err")).expect("demo.err");
        let mut child = std::process::Command::new(tandem_tests::tandem_bin())
            .arg("demo")
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting tandem demo");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let demo_pid = child.id();
        let mut demo = Demo {
            child: Some(child),
            nodes: Vec::new(),
            root,
        };
        let nodes = wait_until("demo.json", Duration::from_secs(90), || async {
            demo_nodes(&dir)
        })
        .await;
        demo.nodes = nodes.iter().map(|n| n.2).collect();
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("demo.json")).expect("json"))
                .expect("demo.json");
        let token = doc["token"].as_str().expect("token").to_string();
        let ca_pem = std::fs::read_to_string(doc["ca"].as_str().expect("ca")).expect("the CA file");
        let http = tandem_tests::https_client(&ca_pem);
        let role_of = |h: Option<tandem_web::HealthView>| h.map(|h| h.role);
        let leader = wait_until("a demo leader", WAIT, || async {
            // a and b are the appliances; w only votes.
            for (i, n) in nodes.iter().enumerate().take(2) {
                if role_of(health_of(&http, &n.1).await).as_deref() == Some("leader") {
                    return Some(i);
                }
            }
            None
        })
        .await;
        let other = 1 - leader;
        let (dead, dead_api, dead_pid) = nodes[leader].clone();
        let put = |api: String, key: String| {
            let (http, token) = (http.clone(), token.clone());
            async move {
                http.put(format!("{api}/api/v1/config/{key}"))
                    .bearer_auth(&token)
                    .json(&json!({ "value": key }))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status())
            }
        };
        assert_eq!(
            put(dead_api.clone(), "before".into()).await,
            Some(StatusCode::OK)
        );

        // kill -9 of the primary (a grandchild of this test, by PID).
        kill(Pid::from_raw(dead_pid as i32), Signal::SIGKILL).expect("SIGKILL");
        let survivor_api = nodes[other].1.clone();
        wait_until("the backup to take over", WAIT, || async {
            (put(survivor_api.clone(), "after".into()).await == Some(StatusCode::OK)).then_some(())
        })
        .await;
        // The survivors keep serving for 10 s and more.
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(10) {
            n += 1;
            assert_eq!(
                put(survivor_api.clone(), format!("k{n}")).await,
                Some(StatusCode::OK),
                "write {n} to the new primary, {:?} after the takeover",
                start.elapsed()
            );
            for (name, api, _) in nodes.iter().filter(|x| x.0 != dead) {
                assert!(
                    health_of(&http, api).await.is_some(),
                    "{name} stopped answering {:?} after the takeover",
                    start.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(pid_alive(demo_pid), "the demo exited when one node died");

        // The demo named the node and printed the command.
        let printed = wait_until("the demo's restart command", WAIT, || async {
            let text = std::fs::read_to_string(&out_path).ok()?;
            let mut lines = text
                .lines()
                .skip_while(|l| !l.starts_with(&format!("node {dead} exited")));
            lines.next()?;
            let cmd = lines.find(|l| l.starts_with("  ") && l.contains(" run --dir "))?;
            Some(cmd.trim().to_string())
        })
        .await;
        let words: Vec<&str> = printed.split_whitespace().collect();
        assert_eq!(words.len(), 4, "{printed}");
        assert_eq!(&words[1..3], ["run", "--dir"], "{printed}");
        let log = std::fs::File::create(dir.join("restarted.log")).expect("log");
        let mut mine = std::process::Command::new(words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("running the printed command");
        let back_as_backup = || async {
            let h = health_of(&http, &dead_api).await?;
            let s = health_of(&http, &survivor_api).await?;
            (h.role == "follower" && s.role == "leader" && h.applied_index >= s.applied_index)
                .then_some(())
        };
        wait_until(&format!("{dead} back as backup"), WAIT, back_as_backup).await;
        let _ = kill(Pid::from_raw(mine.id() as i32), Signal::SIGKILL);
        let _ = mine.wait();

        // Enter: the demo starts it again itself.
        wait_until(&format!("{dead} down again"), WAIT, || async {
            health_of(&http, &dead_api).await.is_none().then_some(())
        })
        .await;
        stdin.write_all(b"\n").expect("Enter to the demo");
        stdin.flush().expect("flush");
        wait_until(
            &format!("{dead} back as backup again"),
            WAIT,
            back_as_backup,
        )
        .await;
        let now = demo_nodes(&dir).expect("demo.json");
        let restarted = now.iter().find(|x| x.0 == dead).expect("the node").2;
        assert_ne!(restarted, dead_pid, "demo.json names the new process");
        demo.nodes = now.iter().map(|x| x.2).collect();

        // Ctrl-C stops all three, the restarted one included.
        demo.interrupt().await;
        for p in &demo.nodes {
            assert!(!pid_alive(*p), "node process {p} outlived the demo");
        }
    }
}

/// The relationship API (the failover page): planned swaps, failover after
/// a crash, sync and verify, refusals, settings, status.
mod t70_relationship {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tandem_web::{HistoryPage, ReadinessView, SettingsView, SwapOutcome, SyncReport};

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

    async fn history(c: &Cluster, i: usize, kind: &str) -> HistoryPage {
        let path = format!("/api/v1/history?kind={kind}&limit=500");
        c.get_json(i, &path)
            .await
            .unwrap_or_else(|| panic!("GET {path} on {}", c.nodes[i].name))
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
                                if let Some(t) =
                                    apis.iter().position(|a| loc.starts_with(a.as_str()))
                                {
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
            .filter(|e| e.kind == "swap" && e.actor == SWAP_ACTOR)
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
        let mut c =
            Cluster::three(&["--snapshot-every", "100", "--keep-behind-snapshot", "10"]).await;
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

        // A forced swap asked of the primary (it is already primary) or of
        // the witness (never primary), and a planned swap on the witness.
        // (A forced swap asked of a backup that still hears the primary is
        // done as a planned swap: not a refusal, not tested here.)
        for (i, force, what) in [
            (p, true, "a forced swap on the primary"),
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
        assert_eq!(view.updated_by.as_deref(), Some(actor));
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
                .any(|e| e.kind == "settings_change" && e.actor == actor),
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
}

mod t80_cli {
    //! The relationship commands of the `tandem` CLI against a live cluster.
    use super::*;
    use std::ffi::OsString;
    use tandem_tests::{CliOutput, Roles};

    const SETTLE: Duration = Duration::from_secs(15);
    const ACTOR: &str = "t80-cli";

    /// `tandem <cmd...> --dir <node i> --token <admin> --actor t80-cli <extra...>`.
    async fn cli(c: &Cluster, i: usize, cmd: &[&str], extra: &[&str]) -> CliOutput {
        let mut args: Vec<OsString> = cmd.iter().map(OsString::from).collect();
        args.extend([
            "--dir".into(),
            c.nodes[i].dir.clone().into_os_string(),
            "--token".into(),
            c.admin_token.clone().into(),
            "--actor".into(),
            ACTOR.into(),
        ]);
        args.extend(extra.iter().map(OsString::from));
        tandem(args).await
    }

    fn role_of(r: &Roles, i: usize) -> &'static str {
        if i == r.primary {
            "primary"
        } else if i == r.witness {
            "witness"
        } else {
            "backup"
        }
    }

    /// The value of the `role` line of the "This host" block.
    fn shown_role(stdout: &str) -> Option<String> {
        stdout
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("role "))
            .map(|v| v.trim().to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_and_settings() {
        let c = Cluster::three(&[]).await;
        let r = c.wait_roles(WAIT).await;

        for i in 0..3 {
            let name = c.nodes[i].name.clone();
            let out = cli(&c, i, &["status"], &[])
                .await
                .expect_ok(&format!("tandem status on {name}"));
            assert!(out.stdout.starts_with("This host"), "{}", out.stdout);
            assert_eq!(
                shown_role(&out.stdout).as_deref(),
                Some(role_of(&r, i)),
                "status on {name}:\n{}",
                out.stdout
            );
            assert!(out.stdout.contains("Peer hosts"), "{}", out.stdout);
            for (j, other) in c.nodes.iter().enumerate().filter(|&(j, _)| j != i) {
                assert!(
                    out.stdout
                        .lines()
                        .any(|l| l.trim_start().starts_with(&format!("{} ", other.name))
                            && l.contains(role_of(&r, j))),
                    "status on {name} lacks peer {}:\n{}",
                    other.name,
                    out.stdout
                );
            }
            // --json is the raw status; --members the old cluster table.
            let out = cli(&c, i, &["status"], &["--json"])
                .await
                .expect_ok("tandem status --json");
            let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
            assert_eq!(v["this_host"]["role"], role_of(&r, i), "{v}");
            let out = cli(&c, i, &["status"], &["--members"])
                .await
                .expect_ok("tandem status --members");
            assert!(out.stdout.contains(&c.cluster_id), "{}", out.stdout);
        }

        // Set on the backup (the write follows the 421 to the primary),
        // read on the witness.
        let out = cli(
            &c,
            r.backup,
            &["settings", "set", "primary_timeout_ms=1500"],
            &[],
        )
        .await
        .expect_ok("tandem settings set primary_timeout_ms=1500");
        assert!(out.stdout.contains("primary_timeout_ms"), "{}", out.stdout);
        wait_until("primary_timeout_ms=1500 on the witness", SETTLE, || async {
            let out = cli(&c, r.witness, &["settings", "show"], &["--json"]).await;
            if out.code != Some(0) {
                return None;
            }
            let v: Value = serde_json::from_str(&out.stdout).ok()?;
            (v["primary_timeout_ms"] == 1500).then_some(())
        })
        .await;
        let out = cli(&c, r.witness, &["settings", "show"], &[])
            .await
            .expect_ok("tandem settings show");
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("primary_timeout_ms") && l.ends_with("1500")),
            "{}",
            out.stdout
        );

        // Out of range: refused by the cluster, exit 3, the field named.
        let out = cli(
            &c,
            r.primary,
            &["settings", "set", "primary_timeout_ms=5"],
            &[],
        )
        .await;
        assert_eq!(
            out.code,
            Some(3),
            "stdout {} stderr {}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr
                .lines()
                .any(|l| l.trim_start().starts_with("primary_timeout_ms:")),
            "no field error line: {}",
            out.stderr
        );
        // Nothing changed.
        let out = cli(&c, r.primary, &["settings", "show"], &["--json"])
            .await
            .expect_ok("tandem settings show --json");
        let v: Value = serde_json::from_str(&out.stdout).expect("settings JSON");
        assert_eq!(v["primary_timeout_ms"], 1500, "{v}");

        // The actor header reached the history.
        let out = cli(
            &c,
            r.primary,
            &["history"],
            &["--kind", "settings_change", "--json"],
        )
        .await
        .expect_ok("tandem history --kind settings_change --json");
        let page: Value = serde_json::from_str(&out.stdout).expect("history JSON");
        assert!(
            page["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|e| e["actor"] == ACTOR)),
            "{page}"
        );

        let out = cli(&c, r.primary, &["readiness"], &[])
            .await
            .expect_ok("tandem readiness");
        assert!(out.stdout.starts_with("would fail over:"), "{}", out.stdout);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn swap_sync_and_history() {
        let c = Cluster::three(&[]).await;
        let r = c.wait_roles(WAIT).await;
        let (old_primary, old_backup) = (r.primary, r.backup);

        let out = cli(&c, old_backup, &["swap"], &["--yes"])
            .await
            .expect_ok("tandem swap --yes on the backup");
        assert!(
            out.stdout.lines().any(|l| l.starts_with("new primary:")
                && l.contains(&format!("node {}", c.nodes[old_backup].id()))),
            "{}",
            out.stdout
        );
        let after = c.wait_roles(WAIT).await;
        assert_eq!(after.primary, old_backup, "{after:?}");
        assert!(after.epoch > r.epoch, "{r:?} -> {after:?}");
        let s = c.status(old_primary).await.expect("status");
        assert_eq!(s.primary, Some(c.nodes[old_backup].id()));

        c.wait_peer_reachable(old_backup, old_primary, true).await;
        let out = cli(&c, old_backup, &["sync"], &["--verify"])
            .await
            .expect_ok("tandem sync --verify");
        assert!(
            out.stdout.lines().any(|l| l.starts_with("verify:")
                && l.trim_end().ends_with("MATCH")
                && !l.contains("MISMATCH")),
            "{}",
            out.stdout
        );
        for key in ["bytes:", "entries:", "duration:", "indexes:", "snapshot:"] {
            assert!(
                out.stdout.lines().any(|l| l.starts_with(key)),
                "sync output lacks {key}: {}",
                out.stdout
            );
        }

        let out = cli(&c, old_primary, &["history"], &["--kind", "swap"])
            .await
            .expect_ok("tandem history --kind swap");
        let mut lines = out.stdout.lines();
        let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
        assert_eq!(header[0], "SEQ", "{}", out.stdout);
        assert!(
            lines.any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.len() >= 6
                    && cells[1].ends_with('Z')
                    && cells[3] == "swap"
                    && cells[4] == ACTOR
            }),
            "no swap by {ACTOR}: {}",
            out.stdout
        );

        // Forcing a swap on the primary: refused, exit 3, nothing changes.
        let out = cli(&c, old_backup, &["swap"], &["--yes", "--force"]).await;
        assert_eq!(
            out.code,
            Some(3),
            "stdout {} stderr {}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.reason().starts_with("tandem: ") && out.reason().contains("already the primary"),
            "{}",
            out.stderr
        );
        let still = c.wait_roles(WAIT).await;
        assert_eq!(still, after);
    }
}

/// Failover in the other topologies: pair only (automatic failover guarded
/// by connectivity test addresses), forced swap with the peer down, break,
/// and removing / adding back the witness on a live pair.
mod t75_failover_topologies {
    use super::*;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tandem_web::{BreakOutcome, HistoryPage, SettingsView, StatusView, SwapOutcome};
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

    async fn status(c: &Cluster, i: usize) -> StatusView {
        c.status(i)
            .await
            .unwrap_or_else(|| panic!("status of {}", c.nodes[i].name))
    }

    async fn history(c: &Cluster, i: usize, kind: &str) -> HistoryPage {
        let path = format!("/api/v1/history?kind={kind}&limit=500");
        c.get_json(i, &path)
            .await
            .unwrap_or_else(|| panic!("GET {path} on {}", c.nodes[i].name))
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

    /// Ends a test listener and waits until its port refuses connections.
    async fn close(task: tokio::task::JoinHandle<()>, addr: &str) {
        task.abort();
        let _ = task.await;
        wait_until("the test address to refuse connections", SETTLE, || async {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        })
        .await;
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
        close(net1, &addr1).await;
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
            (s.this_host.role == "primary"
                && s.primary == Some(c.nodes[b].id())
                && s.epoch > epoch0)
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

        // Rejoin: a becomes the backup of b and holds b's data.
        let resp = post(&c, a, "/api/v1/relationship/rejoin", &json!({})).await;
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

        for i in [p, w] {
            let resp = post(&c, i, "/api/v1/relationship/rejoin", &json!({})).await;
            let o: BreakOutcome = ok_json(resp, &format!("rejoin on {}", c.nodes[i].name)).await;
            assert_eq!(o.former_peers, vec![c.nodes[b].id()], "{o:?}");
        }
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
                .any(|e| e.kind == "break" && e.actor == ACTOR),
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
}

/// The replicated `bandwidth_limit_bps` setting holds snapshot and catch-up
/// streams to the limit (±20 %), and lifting it (0) speeds catch-up up.
mod t85_bandwidth {
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
        eprintln!(
            "t85: limited catch-up {limited:?} from spawn, {from_health:?} from first /health"
        );
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
}

mod t90_admin_tls {
    //! An administrator-provided certificate on the admin listener.
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use tandem_tests::CliOutput;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    /// A CA of the administrator's own (not the cluster's), made with rcgen.
    struct AdminCa {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        pem: String,
    }

    impl AdminCa {
        fn new() -> Self {
            let key = rcgen::KeyPair::generate().expect("CA key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Example Corp admin CA");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).expect("CA certificate").pem();
            Self {
                issuer: rcgen::Issuer::new(params, key),
                pem,
            }
        }

        /// A server certificate for 127.0.0.1 named `cn`: (cert PEM, key PEM).
        fn leaf(&self, cn: &str) -> (String, String) {
            let key = rcgen::KeyPair::generate().expect("leaf key");
            let mut params =
                rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
                    .expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let cert = params.signed_by(&key, &self.issuer).expect("leaf");
            (cert.pem(), key.serialize_pem())
        }

        /// A browser-like TLS client trusting only this CA (ALPN h2, http/1.1).
        fn client(&self) -> Arc<rustls::ClientConfig> {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
                roots.add(c.expect("CA PEM")).expect("CA usable");
            }
            let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(cfg)
        }
    }

    use rustls_pki_types::pem::PemObject as _;

    fn fingerprint_of(pem: &str) -> String {
        tandem_certs::fingerprint_of_pem(pem).expect("certificate PEM")
    }

    /// SHA-256 of the leaf certificate node `i`'s admin listener serves to a
    /// client trusting only `ca`; `None` when the handshake fails.
    async fn served_leaf(c: &Cluster, i: usize, ca: &AdminCa) -> Option<String> {
        let addr = c.nodes[i].cfg.api_listen;
        let tcp = TcpStream::connect(addr).await.ok()?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("an IP name");
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(ca.client()).connect(name, tcp),
        )
        .await
        .ok()?
        .ok()?;
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates()?.first()?;
        Some(tandem_certs::fingerprint_sha256(leaf))
    }

    fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("writing a certificate file");
        std::fs::rename(&tmp, path).expect("renaming a certificate file");
    }

    async fn run_expecting_failure(dir: &Path, cert: &Path, key: &Path) -> CliOutput {
        let out = tandem([
            "run".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--admin-cert".as_ref(),
            cert.as_os_str(),
            "--admin-key".as_ref(),
            key.as_os_str(),
        ])
        .await;
        assert_eq!(out.code, Some(1), "run should fail: {out:?}");
        assert!(
            out.reason().starts_with("tandem: admin TLS"),
            "one clear line: {out:?}"
        );
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_listener_serves_the_administrators_certificate() {
        let mut c = Cluster::init("a", &[]).await;
        let ca = AdminCa::new();
        assert!(
            served_leaf(&c, 0, &ca).await.is_none(),
            "before: the node certificate, which the admin CA does not sign"
        );
        c.stop(0).await;

        // Bad input: nothing starts, one line says why.
        let dir = c.nodes[0].dir.clone();
        let certs = c.path().join("admin-certs");
        std::fs::create_dir_all(&certs).expect("mkdir");
        let (cert_pem, key_pem) = ca.leaf("admin one");
        let (cert, key) = (certs.join("admin.pem"), certs.join("admin.key"));
        write(&cert, &cert_pem);
        write(&key, &key_pem);
        let missing = certs.join("missing.key");
        let out = run_expecting_failure(&dir, &cert, &missing).await;
        assert!(
            out.reason().contains("missing.key") && out.reason().contains("No such file"),
            "{out:?}"
        );
        let (_, other_key) = ca.leaf("other");
        let wrong = certs.join("wrong.key");
        write(&wrong, &other_key);
        let out = run_expecting_failure(&dir, &cert, &wrong).await;
        assert!(out.reason().contains("does not match"), "{out:?}");
        let out = run_expecting_failure(&dir, &key, &key).await;
        assert!(out.reason().contains("no certificate"), "{out:?}");

        // node.toml names the files (relative to the data directory).
        let mut cfg = tandem_node::config::DataDir::new(&dir)
            .load()
            .expect("node.toml");
        cfg.admin_tls = Some(tandem_node::config::AdminTlsConfig {
            cert: "../admin-certs/admin.pem".into(),
            key: key.clone(),
        });
        tandem_node::config::DataDir::new(&dir)
            .save(&cfg)
            .expect("saving node.toml");
        c.restart(0).await;
        let served = served_leaf(&c, 0, &ca)
            .await
            .expect("a client trusting only the administrator's CA connects");
        assert_eq!(served, fingerprint_of(&cert_pem));
        // Over HTTPS, as a browser would.
        let browser = reqwest::Client::builder()
            .tls_backend_preconfigured((*ca.client()).clone())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let resp = browser
            .get(c.url(0, "/health"))
            .send()
            .await
            .expect("GET /health trusting only the administrator's CA");
        assert_eq!(resp.status(), StatusCode::OK);
        // Tandem's own clients (the harness, the CLI) still get the cluster chain.
        c.wait_health(0).await;
        let out = tandem([
            "status",
            "--dir",
            dir.to_str().expect("utf-8 path"),
            "--token",
            &c.admin_token,
        ])
        .await;
        out.expect_ok("tandem status with an administrator certificate installed");
        // The peer listener keeps the cluster certificate: a node joins and replicates.
        c.add_node("b", false).await;
        c.put_ok(0, "after/admin-cert", &json!(1)).await;

        // SIGHUP re-reads the files; a bad pair is refused and the running one kept.
        let pid = c.nodes[0].pid().expect("running");
        let hup = || {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .expect("SIGHUP")
        };
        write(&key, &other_key);
        hup();
        wait_until("the refused reload to be logged", WAIT, || async {
            let log = std::fs::read_to_string(&c.nodes[0].log).unwrap_or_default();
            log.contains("admin TLS certificate not reloaded")
                .then_some(())
        })
        .await;
        assert_eq!(
            served_leaf(&c, 0, &ca).await.as_deref(),
            Some(fingerprint_of(&cert_pem).as_str())
        );
        let (cert2_pem, key2_pem) = ca.leaf("admin two");
        write(&key, &key2_pem);
        write(&cert, &cert2_pem);
        hup();
        let want = fingerprint_of(&cert2_pem);
        wait_until("the renewed certificate to be served", WAIT, || async {
            (served_leaf(&c, 0, &ca).await.as_deref() == Some(want.as_str())).then_some(())
        })
        .await;
        assert!(c.health(0).await.is_some(), "the node kept running");
    }
}

mod t95_setup_relationship {
    //! *Set up relationship* from the page: a standalone node joins a
    //! primary through `POST /api/v1/relationship/setup`, no shell.
    use super::*;
    use tandem_node::config::DataDir;
    use tandem_tests::{pid_alive, Standalone};
    use tandem_web::{HistoryPage, SetupOutcome};

    async fn refused(resp: reqwest::Response, what: &str) -> String {
        let (status, body) = error_body(resp, what).await;
        assert_eq!(status, StatusCode::CONFLICT, "{what}: {body}");
        assert_eq!(body["error"], "refused", "{what}: {body}");
        body["message"].as_str().unwrap_or_default().to_string()
    }

    /// What a refusal must leave as it was, on both sides.
    async fn assert_unchanged(c: &Cluster, own: &Standalone, cluster_id: &str) {
        let s = own
            .status()
            .await
            .expect("the second node still answers with its own CA");
        assert_eq!(s.this_host.role, "standalone");
        let resp = own
            .req(Method::GET, "/api/v1/config/b/own")
            .send()
            .await
            .expect("GET its own key");
        assert_eq!(resp.status(), StatusCode::OK, "its own data is kept");
        let v = c
            .cluster_view(0, false)
            .await
            .expect("the primary's members");
        assert_eq!(v.members.len(), 1, "the primary admitted nobody: {v:?}");
        assert_eq!(v.cluster_id, cluster_id);
        assert!(!c.nodes[1].dir.join("join-pending.json").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn standalone_node_joins_the_primary_from_the_page() {
        let mut c = Cluster::init("a", &[]).await;
        c.put_ok(0, "from/a", &json!({"written": "on the primary"}))
            .await;
        let own = c.add_standalone("b").await;
        let resp = own
            .req(Method::PUT, "/api/v1/config/b/own")
            .json(&json!({"value": "b's own data"}))
            .send()
            .await
            .expect("PUT on b");
        assert_eq!(resp.status(), StatusCode::OK);
        let b_pid = c.nodes[1].pid().expect("b runs");
        let a_cluster = c.cluster_id.clone();
        let token = c.token(false, None).await;
        let primary = c.nodes[0].api().to_string();

        // Refusals change nothing.
        let msg = refused(
            own.setup(json!({"primary": primary, "token": token})).await,
            "data without discard_data",
        )
        .await;
        assert!(msg.contains("discards them"), "{msg}");
        let msg = refused(
            own.setup(json!({"primary": primary, "token": "not-a-token", "discard_data": true}))
                .await,
            "malformed token",
        )
        .await;
        assert!(msg.contains("malformed join token"), "{msg}");
        let resp = own
            .req(Method::POST, "/api/v1/join-tokens")
            .json(&json!({}))
            .send()
            .await
            .expect("a token of b's own");
        let own_token: Value = resp.json().await.expect("token JSON");
        let msg = refused(
            own.setup(
                json!({"primary": primary, "token": own_token["token"], "discard_data": true}),
            )
            .await,
            "token of its own cluster",
        )
        .await;
        assert!(msg.contains("own cluster"), "{msg}");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let msg = refused(
            own.setup(
                json!({"primary": format!("https://{closed}"), "token": token, "discard_data": true}),
            )
            .await,
            "primary unreachable",
        )
        .await;
        assert!(msg.contains("cannot be contacted"), "{msg}");
        let expiring = c.token(false, Some(1)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let msg = refused(
            own.setup(json!({"primary": primary, "token": expiring, "discard_data": true}))
                .await,
            "expired token",
        )
        .await;
        assert!(msg.contains("join refused"), "{msg}");
        let (status, body) = error_body(
            own.setup(
                json!({"primary": primary, "token": token, "discard_data": true,
                              "reverse_address": "no-port"}),
            )
            .await,
            "bad reverse address",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_unchanged(&c, &own, &a_cluster).await;

        // The join.
        let reverse = c.nodes[1].cfg.peer_advertise.clone();
        let resp = own
            .setup(
                json!({"primary": primary, "token": token, "discard_data": true,
                          "reverse_address": reverse}),
            )
            .await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "setup: {text}");
        let out: SetupOutcome = serde_json::from_str(&text).expect("a SetupOutcome");
        assert_eq!(out.role, "backup");
        assert_eq!(out.cluster_id, a_cluster);
        assert_eq!(out.discarded_config_keys, 1);
        assert_eq!(out.reverse_address, reverse);

        // b restarts in place (same process) as a member of a's cluster: it
        // answers with the cluster's CA and admin token.
        c.wait_health(1).await;
        assert!(pid_alive(b_pid), "the same process restarted in place");
        assert_eq!(c.nodes[1].pid(), Some(b_pid));
        let cfg = DataDir::new(&c.nodes[1].dir).load().expect("b's node.toml");
        assert_eq!(cfg.node_id, out.node_id);
        assert_eq!(cfg.cluster_id, a_cluster);
        c.nodes[1].cfg = cfg;
        let (a_id, b_id) = (c.nodes[0].id(), c.nodes[1].id());
        wait_until("a primary and b backup, on both", WAIT, || async {
            let sa = c.status(0).await?;
            let sb = c.status(1).await?;
            let ok = sa.this_host.role == "primary"
                && sa.peers.iter().any(|p| p.id == b_id && p.role == "backup")
                && sb.this_host.role == "backup"
                && sb.primary == Some(a_id)
                && sb.peers.iter().any(|p| p.id == a_id && p.role == "primary");
            ok.then_some(())
        })
        .await;
        // The primary's data is on b; b's own is gone.
        c.put_ok(0, "from/a-after", &json!(2)).await;
        wait_until("the primary's data on b", WAIT, || async {
            let got = c.list(1, "from/", true).await;
            (got.len() == 2).then_some(())
        })
        .await;
        assert!(
            c.list(1, "b/", true).await.is_empty(),
            "b's own data was discarded"
        );
        // The join is in the replicated history, with who asked.
        let h: HistoryPage = c
            .get_json(0, "/api/v1/history?kind=join&limit=50")
            .await
            .expect("history");
        assert!(
            h.items
                .iter()
                .any(|e| e.actor == "alice (on b)" && e.details["node"] == json!(b_id)),
            "{h:?}"
        );
        // The token is spent, and a node in a relationship cannot set one up.
        let resp = c
            .req(0, Method::POST, "/api/v1/relationship/setup")
            .json(&json!({"primary": c.nodes[1].api(), "token": token, "discard_data": true}))
            .send()
            .await
            .expect("setup on the primary");
        let msg = refused(resp, "setup on a node in a relationship").await;
        assert!(msg.contains("not standalone"), "{msg}");
        let other = c.add_standalone("c").await;
        let msg = refused(
            other
                .setup(json!({"primary": primary, "token": token}))
                .await,
            "a used token",
        )
        .await;
        assert!(msg.contains("join refused"), "{msg}");
        let s = other
            .status()
            .await
            .expect("c still answers with its own CA");
        assert_eq!(s.this_host.role, "standalone");
        let v = c
            .cluster_view(0, false)
            .await
            .expect("the primary's members");
        assert_eq!(v.members.len(), 2, "nobody else was admitted: {v:?}");
        // b keeps its identity across a normal restart.
        c.stop(1).await;
        c.restart(1).await;
        wait_until("b backup again after a restart", WAIT, || async {
            (c.status(1).await?.this_host.role == "backup").then_some(())
        })
        .await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn standalone_node_joins_a_pair_as_witness() {
        let mut c = Cluster::init("a", &[]).await;
        c.add_node("b", false).await;
        c.wait_members(2).await;
        let w = c.add_standalone("w").await;
        let token = c.token(true, None).await;
        let resp = w
            .setup(json!({"primary": c.nodes[0].api(), "token": token, "witness": true}))
            .await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "setup: {text}");
        let out: SetupOutcome = serde_json::from_str(&text).expect("a SetupOutcome");
        assert_eq!(out.role, "witness");
        // Answering with the cluster's CA means it restarted with the grant.
        c.wait_health(w.index).await;
        let cfg = DataDir::new(&c.nodes[w.index].dir)
            .load()
            .expect("w's node.toml");
        assert_eq!(cfg.kind, tandem_storage::NodeKind::Witness);
        assert!(
            !c.nodes[w.index].dir.join("ca.key").exists(),
            "a witness holds no CA key"
        );
        c.nodes[w.index].cfg = cfg;
        // Pair + witness: three voters, and everyone agrees on the roles.
        c.wait_voters(3).await;
        let roles = c.wait_roles(WAIT).await;
        assert_eq!(roles.witness, w.index);
        c.put_ok(roles.primary, "after/witness", &json!(true)).await;
    }
}

/// DESIGN rule 8: a backup stopped for maintenance (SIGTERM) or killed
/// (-9) costs the primary nothing: its log grows by a few summary lines,
/// not a line per retry, its CPU stays where the writer's load puts it,
/// writes go on, and the backup is caught up within 2 s of answering again.
mod t87_dead_peer {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    use tandem_node::bench::cpu_time;

    /// How long the backup stays down.
    const DOWN: Duration = Duration::from_secs(30);
    /// The writer's pace.
    const WRITE_EVERY: Duration = Duration::from_millis(20);

    #[derive(Clone, Copy, Debug)]
    enum Down {
        Sigterm,
        Kill9,
    }

    /// Lines and bytes of a log file.
    fn size_of(log: &std::path::Path) -> (usize, u64) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        (text.lines().count(), text.len() as u64)
    }

    /// The fraction of one core process `pid` used over `window`.
    async fn cpu_share(pid: u32, window: Duration) -> f64 {
        let (t0, c0) = (Instant::now(), cpu_time(pid).expect("cpu time"));
        tokio::time::sleep(window).await;
        let (t1, c1) = (Instant::now(), cpu_time(pid).expect("cpu time"));
        (c1 - c0).as_secs_f64() / (t1 - t0).as_secs_f64()
    }

    async fn backup_down_costs_the_primary_nothing(how: Down) {
        let mut c = Cluster::three(&[]).await;
        let r = c.wait_roles(WAIT).await;
        let (p, b) = (r.primary, r.backup);
        let pid = c.nodes[p].pid().expect("the primary runs");

        // A writer at a steady pace, counting outcomes.
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let writer = {
            let req = c.req(p, Method::PUT, "/api/v1/config/x");
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut tick = tokio::time::interval(WRITE_EVERY);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let Some(rb) = req.try_clone() else { return };
                    match rb.json(&json!({ "value": n })).send().await {
                        Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        };
        wait_until("the writer's first writes", WAIT, || async {
            (ok.load(Ordering::Relaxed) > 10).then_some(())
        })
        .await;
        let baseline = cpu_share(pid, Duration::from_secs(5)).await;

        let log = c.nodes[p].log.clone();
        let (lines0, bytes0) = size_of(&log);
        let (ok0, failed0) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        match how {
            Down::Sigterm => {
                c.stop(b).await;
            }
            Down::Kill9 => c.kill9(b),
        }
        let down = cpu_share(pid, DOWN).await;
        let (lines1, bytes1) = size_of(&log);
        let (ok1, failed1) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        let grew = (lines1 - lines0, bytes1 - bytes0);
        println!(
            "{how:?} of the backup for {DOWN:?}: the primary's log grew by {} lines, {} bytes; \
             CPU {:.1} % of a core (writer alone {:.1} %); {} writes ok, {} failed",
            grew.0,
            grew.1,
            down * 100.0,
            baseline * 100.0,
            ok1 - ok0,
            failed1 - failed0
        );
        assert!(
            grew.0 <= 100 && grew.1 <= 64 * 1024,
            "{how:?}: the primary's log grew by {} lines, {} bytes:\n{}",
            grew.0,
            grew.1,
            tandem_tests::tail(&log, 40)
        );
        assert!(
            down <= baseline + 0.10,
            "{how:?}: the primary used {:.1} % of a core with the backup down, {:.1} % before",
            down * 100.0,
            baseline * 100.0
        );
        assert_eq!(
            failed1, failed0,
            "{how:?}: writes failed while the backup was down"
        );
        assert!(
            ok1 - ok0 >= (DOWN.as_millis() / WRITE_EVERY.as_millis() / 4) as u64,
            "{how:?}: only {} writes in {DOWN:?}",
            ok1 - ok0
        );

        // Back: caught up within 2 s of answering, the writer still running.
        c.spawn(b);
        c.wait_health(b).await;
        let answered = Instant::now();
        let caught_up = wait_until("the backup to catch up", WAIT, || async {
            // The leader first: a backup in step has applied as far a
            // moment later.
            let leader = c.applied(p).await?;
            let mine = c.applied(b).await?;
            (mine >= leader).then(|| answered.elapsed())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let _ = writer.await;
        println!("{how:?}: the backup caught up {caught_up:?} after it answered again");
        assert!(
            caught_up <= Duration::from_secs(2),
            "{how:?}: caught up only {caught_up:?} after it answered"
        );
        c.wait_caught_up(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_stopped_for_maintenance_costs_the_primary_nothing() {
        backup_down_costs_the_primary_nothing(Down::Sigterm).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_backup_costs_the_primary_nothing() {
        backup_down_costs_the_primary_nothing(Down::Kill9).await;
    }
}
