//! Certificates name one member: a join may not take another member's
//! address, and a client that knows which node it calls checks that node's
//! identity (`tandem-node-<id>`), not just the address.
use super::*;
use tandem_node::config::DataDir;

/// TEST-NET-1: an address of no machine here. A member advertising it
/// joins and never runs, so nothing dials it.
const FAR: &str = "192.0.2.10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_may_not_name_another_members_address() {
    let c = Cluster::init("a", &[]).await;
    let far_token = c.token(false, None).await;
    let far_peer = format!("{FAR}:7001");
    let far_api = format!("https://{FAR}:8443");
    c.join_cmd_with(
        "far",
        &far_token,
        false,
        &[
            "--allow-same-site",
            "--peer-advertise",
            &far_peer,
            "--api-advertise",
            &far_api,
        ],
    )
    .await
    .expect_ok("far joins with its own address");
    c.wait_members(2).await;

    // A witness whose certificate would name far's address, by either of
    // its addresses (another port does not matter): 403, nothing spent.
    let token = c.token(true, None).await;
    let csr = tandem_certs::NodeKey::generate()
        .expect("a key")
        .csr_pem()
        .expect("a CSR");
    for (peer_addr, api_addr) in [
        ("127.0.0.1:1".to_string(), format!("https://{FAR}:9443")),
        (format!("{FAR}:7002"), "https://127.0.0.1:2".to_string()),
    ] {
        let what = format!("a join at {peer_addr} {api_addr}");
        let resp = c
            .http
            .post(c.url(0, "/api/v1/join"))
            .json(&json!({
                "token": token, "name": "w", "kind": "witness",
                "peer_addr": peer_addr, "api_addr": api_addr, "csr_pem": csr,
            }))
            .send()
            .await
            .expect("POST /api/v1/join");
        let (status, body) = error_body(resp, &what).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(FAR) && message.contains("member far"),
            "{what}: {message}"
        );
    }
    // The command line says so too: refused by the cluster.
    let out = c
        .join_cmd_with("w-bad", &token, true, &["--api-advertise", &far_api])
        .await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.reason().contains("member far"), "{out:?}");
    let v = c.cluster_view(0, false).await.expect("the members");
    assert_eq!(v.members.len(), 2, "nobody was admitted: {v:?}");

    // Loopback names are every local node's: the same token admits a
    // witness on this machine.
    c.join_cmd("w", &token, true)
        .await
        .expect_ok("the token was not spent by the refusals");
    c.wait_members(3).await;
}

/// `tandem --dir` knows the node's id from its `node.toml`: a node that
/// answers at the address with another node's certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_checks_the_identity_of_the_node_of_its_directory() {
    let c = Cluster::init("a", &[]).await;
    let status = |dir: std::path::PathBuf| {
        tandem([
            "status".into(),
            "--dir".into(),
            dir.into_os_string(),
            "--token".into(),
            std::ffi::OsString::from(&c.admin_token),
        ])
    };
    status(c.nodes[0].dir.clone())
        .await
        .expect_ok("status of a through its own directory");

    // A directory that says a's address is node 2's: a answers with node
    // 1's certificate, valid for the address but not for tandem-node-2.
    let other = c.path().join("says-node-2");
    std::fs::create_dir_all(&other).expect("a directory");
    let mut cfg = c.nodes[0].cfg.clone();
    cfg.node_id = c.nodes[0].id() + 1;
    DataDir::new(&other).save(&cfg).expect("node.toml");
    std::fs::write(other.join("ca.pem"), &c.ca_pem).expect("ca.pem");
    let out = status(other).await;
    assert_eq!(out.code, Some(4), "{out:?}");
    assert!(
        out.reason()
            .contains(&format!("tandem-node-{}", cfg.node_id)),
        "{out:?}"
    );
}
