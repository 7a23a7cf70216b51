use super::*;
use std::sync::Arc;
use tandem_node::frame::{read_frame, write_frame, FrameError};
use tandem_node::protocol::{
    ActionRequest, Envelope, Hello, PeerRequest, PeerResponse, PROTOCOL_VERSION,
};
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
    let tls = tandem_certs::peer_client_config(&c.ca_pem, &stranger.cert_pem, &stranger.key_pem)
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

/// Sends a hello showing `epoch`, then `body` in an envelope showing it
/// again; returns the node's answer to it (`None`: not welcomed, or no
/// answer).
async fn ask(
    addr: &str,
    target: u64,
    tls: Arc<rustls::ClientConfig>,
    cluster_id: &str,
    me: u64,
    epoch: u64,
    body: PeerRequest,
) -> Option<PeerResponse> {
    let mut conn = connect(addr, target, tls).await.ok()?;
    let h = Hello {
        protocol: PROTOCOL_VERSION,
        cluster_id: cluster_id.to_string(),
        node_id: me,
        epoch,
    };
    write_frame(&mut conn, &h).await.expect("hello sent");
    if !matches!(next(&mut conn).await, Ok(PeerResponse::Welcome { .. })) {
        return None;
    }
    write_frame(&mut conn, &Envelope { epoch, body })
        .await
        .expect("envelope sent");
    next(&mut conn).await.ok()
}

/// One frame with a huge epoch, from a member (the witness's own
/// certificate) or from a holder of a cluster certificate that is no
/// member, does not fence the primary: a quorum still follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_epoch_does_not_fence_the_primary_by_itself() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, w) = (r.primary, r.witness);
    let target = &c.nodes[p];
    let addr = target.cfg.peer_listen.to_string();
    let before = c.status(p).await.expect("status").epoch;
    let huge = before + 1_000_000;

    let read = |f: &str| std::fs::read_to_string(c.nodes[w].dir.join(f)).expect(f);
    let tls = tandem_certs::peer_client_config(&c.ca_pem, &read("node.pem"), &read("node.key"))
        .expect("client config");
    let digest = || PeerRequest::Digest { at_index: 0 };
    let answer = ask(
        &addr,
        target.id(),
        tls,
        &c.cluster_id,
        c.nodes[w].id(),
        huge,
        digest(),
    )
    .await;
    assert!(
        matches!(answer, Some(PeerResponse::Digest(_))),
        "a member is answered: {answer:?}"
    );

    let ca_key = std::fs::read_to_string(c.nodes[0].dir.join("ca.key")).expect("ca.key");
    let ca = tandem_certs::ClusterCa::from_pem(&c.ca_pem, &ca_key).expect("the CA");
    let stranger = ca
        .issue_node_cert(99, &["127.0.0.1".to_string()])
        .expect("a certificate for no member");
    let tls = tandem_certs::peer_client_config(&c.ca_pem, &stranger.cert_pem, &stranger.key_pem)
        .expect("client config");
    // A certificate alone opens nothing: a node that is no member is
    // fenced for every request, a break of the relationship included.
    for body in [
        digest(),
        PeerRequest::Action(ActionRequest::Break {
            actor: "intruder".into(),
        }),
    ] {
        let answer = ask(
            &addr,
            target.id(),
            tls.clone(),
            &c.cluster_id,
            99,
            huge,
            body,
        )
        .await;
        assert!(
            matches!(answer, Some(PeerResponse::Fenced { .. })),
            "a non-member got {answer:?}"
        );
    }

    // Still the primary of the same epoch, acknowledging writes, for two
    // seconds (ten writes 200 ms apart).
    for n in 0..10 {
        c.put_ok(p, &format!("epoch-shown/{n}"), &json!(n)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = c.status(p).await.expect("status");
    assert_eq!(
        (s.this_host.role.as_str(), s.epoch),
        ("primary", before),
        "{:?}",
        s.this_host
    );
    let again = c.wait_roles(WAIT).await;
    assert_eq!(again.primary, p);
}
