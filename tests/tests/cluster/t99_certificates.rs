//! Node certificates renew without a restart: `tandem certs renew` on an
//! appliance and on a witness (whose renewal the primary signs) puts a new
//! pair on disk, every new connection presents it, the relationship goes
//! on, and a restart comes back with it. Readiness lists each member's
//! certificate.
use super::*;
use std::ffi::OsString;
use tandem_web::ReadinessView;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// SHA-256 of the leaf certificate node `i`'s admin listener presents to
/// a Tandem client (ALPN `tandem-cluster`, trusting the cluster CA).
async fn served_leaf(c: &Cluster, i: usize) -> String {
    let ca_pem = std::fs::read_to_string(c.nodes[i].dir.join("ca.pem")).expect("ca.pem");
    let client = tandem_certs::admin_client_config(&ca_pem).expect("client config");
    let tcp = TcpStream::connect(c.nodes[i].cfg.api_listen)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("an IP name");
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(client).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
    tandem_certs::fingerprint_sha256(&leaf)
}

fn on_disk(c: &Cluster, i: usize) -> (String, String) {
    let read = |f: &str| std::fs::read_to_string(c.nodes[i].dir.join(f)).expect(f);
    (read("node.pem"), read("node.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_without_a_restart() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    // Readiness on the primary lists the three members' certificates,
    // about two years of validity each, renewed at two thirds of it.
    let ready: ReadinessView = wait_until("every member's certificate seen", WAIT, || async {
        let v: ReadinessView = c.get_json(r.primary, "/api/v1/readiness").await?;
        (v.certificates.len() == 3 && v.certificates.iter().all(|c| c.not_after_ms.is_some()))
            .then_some(v)
    })
    .await;
    assert!(ready.certificates_ok, "{ready:?}");
    let now = tandem_tests::now_ms();
    for cert in &ready.certificates {
        let (end, renew) = (
            cert.not_after_ms.unwrap_or(0),
            cert.renew_at_ms.unwrap_or(0),
        );
        assert!(end > now + 700 * 86_400_000, "{cert:?}");
        assert!(renew > now && renew < end, "{cert:?}");
    }

    for i in [r.backup, r.witness] {
        let (old_cert, old_key) = on_disk(&c, i);
        let old_leaf = served_leaf(&c, i).await;
        assert_eq!(
            old_leaf,
            tandem_certs::fingerprint_of_pem(&old_cert).expect("pem")
        );
        let out = tandem([
            OsString::from("certs"),
            "renew".into(),
            "--dir".into(),
            c.nodes[i].dir.clone().into(),
            "--token".into(),
            c.admin_token.clone().into(),
        ])
        .await
        .expect_ok("tandem certs renew");
        assert!(out.stdout.contains("certificate renewed"), "{out:?}");
        let (new_cert, new_key) = on_disk(&c, i);
        assert_ne!(
            new_cert, old_cert,
            "{}: node.pem unchanged",
            c.nodes[i].name
        );
        assert_ne!(new_key, old_key, "{}: node.key unchanged", c.nodes[i].name);
        // The admin listener presents the new certificate, without a restart.
        assert_eq!(
            served_leaf(&c, i).await,
            tandem_certs::fingerprint_of_pem(&new_cert).expect("pem"),
            "{} still presents its old certificate",
            c.nodes[i].name
        );
    }
    // The primary recorded both renewals (it signed them).
    let h = history(&c, r.primary, "certificate_renewed").await;
    let renewed: Vec<Value> = h.items.iter().map(|e| e.details["node"].clone()).collect();
    for i in [r.backup, r.witness] {
        assert!(renewed.contains(&json!(c.nodes[i].id())), "{renewed:?}");
    }

    // The relationship goes on with the new certificates: the renewed
    // nodes come back from a restart (new connections, new certificate)
    // and replicate.
    for i in [r.witness, r.backup] {
        c.kill9(i);
        c.restart(i).await;
    }
    c.put_ok(r.primary, "after-renewal", &json!(1)).await;
    c.wait_caught_up(r.backup).await;
    let roles = c.wait_roles(WAIT).await;
    assert_eq!(roles.primary, r.primary, "{roles:?}");
    assert_eq!(roles.epoch, r.epoch, "a renewal moved the role: {roles:?}");
    // The primary renews its own, signing with its CA key.
    let resp = c
        .req(r.primary, Method::POST, "/api/v1/certs/renew")
        .send()
        .await
        .expect("renew on the primary");
    assert_eq!(resp.status(), StatusCode::OK);
    c.put_ok(r.primary, "after-primary-renewal", &json!(2))
        .await;
}
