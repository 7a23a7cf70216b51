//! A primary that stood down (*Become backup even if the peer cannot be
//! contacted*) with no quorum to record it: its backup and witness are
//! frozen, so the replicated epoch still names it as the primary.
use super::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tandem_web::{BreakOutcome, StatusView, SwapOutcome};

const ACTOR: &str = "t76";

async fn post(c: &Cluster, i: usize, path: &str, body: &Value) -> reqwest::Response {
    c.req(i, Method::POST, path)
        .header("x-tandem-actor", ACTOR)
        .json(body)
        .timeout(Duration::from_secs(60))
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

/// *Break* there leaves the relationship with the node's data: no other
/// primary is known to ask. (Found by the schemathesis run: the node asked
/// the primary its record names, itself, over the peer link, took its own
/// request for the primary's break notice, left, and answered 500 because
/// the notice's answer is no `BreakOutcome`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_on_a_primary_that_stood_down_without_a_quorum() {
    // A primary timeout long enough that the primary still holds its lease
    // when the forced swap reaches it, under any load: it stands down then
    // (without its lease it would promote itself instead).
    let c = Cluster::three(&["--primary-timeout-ms", "5000"]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b, w) = (r.primary, r.backup, r.witness);
    let before = write_keys(&c, p, "before/", 10).await;
    c.wait_caught_up(b).await;
    signal(&c, b, false);
    signal(&c, w, false);

    let resp = post(
        &c,
        p,
        "/api/v1/relationship/swap",
        &json!({"pull_sync": false, "force": true}),
    )
    .await;
    let out: SwapOutcome = ok_json(resp, "forced demotion without a quorum").await;
    assert!(out.demoted, "the primary stood down: {out:?}");
    let s = status(&c, p).await;
    assert_eq!(s.this_host.role, "backup", "{:?}", s.this_host);
    assert_eq!(
        s.primary,
        Some(c.nodes[p].id()),
        "the demotion could not be recorded: the epoch still names the node"
    );

    let resp = post(&c, p, "/api/v1/relationship/break", &json!({})).await;
    let out: BreakOutcome = ok_json(resp, "break on the stood-down primary").await;
    assert_eq!(out.role, "standalone", "{out:?}");
    let mut former = out.former_peers.clone();
    former.sort_unstable();
    let mut expected = vec![c.nodes[b].id(), c.nodes[w].id()];
    expected.sort_unstable();
    assert_eq!(former, expected, "{out:?}");
    let s = status(&c, p).await;
    assert_eq!(s.this_host.role, "standalone", "{:?}", s.this_host);
    assert_eq!(c.list(p, "before/", true).await, before);
    signal(&c, b, true);
    signal(&c, w, true);
}
