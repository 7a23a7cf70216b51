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
        own.setup(json!({"primary": primary, "token": own_token["token"], "discard_data": true}))
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

    // Both run on this machine: refused unless the administrator allows
    // it, and the token is not spent by the refusal.
    let reverse = c.nodes[1].cfg.peer_advertise.clone();
    let msg = refused(
        own.setup(
            json!({"primary": primary, "token": token, "discard_data": true,
                         "reverse_address": reverse}),
        )
        .await,
        "the same host",
    )
    .await;
    assert!(
        msg.contains("shares host") && msg.contains("allow"),
        "{msg}"
    );
    assert_unchanged(&c, &own, &a_cluster).await;

    // The join.
    let resp = own
        .setup(
            json!({"primary": primary, "token": token, "discard_data": true,
                      "reverse_address": reverse, "allow_same_site": true}),
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
            .any(|e| e.actor == "admin-token:alice (on b)" && e.details["node"] == json!(b_id)),
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
