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
