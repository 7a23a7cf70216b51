//! A relationship of real `tandem` processes, one per network namespace of
//! a [`Topology`] (see [`crate::netns`]), for the end-to-end shared-IP tests.
//!
//! - `a` is created with `tandem init`, `b` (appliance) and `w` (witness) with
//!   `tandem token` + `tandem join`; every command and every `tandem run`
//!   runs inside the node's namespace (`ip netns exec`). The peer listener is
//!   on the namespace's address (`198.51.100.1x:7400`), the admin listener on
//!   `0.0.0.0:8443` (advertised as `https://198.51.100.1x:8443`), so a client
//!   that connects to the shared address reaches whichever node holds it.
//! - Each `node.toml` gets `[shared_ip] driver = "netlink"` (announce
//!   defaults) before the node first runs; the shared address
//!   [`SHARED_CIDR`] on [`IFACE`] of `a` and `b` is put in the settings.
//! - The test process talks to the APIs from the client namespace
//!   ([`Topology::run_in`]); [`health_probe`] is the client that only knows
//!   the shared address (HTTPS `GET /health`, trusting the cluster CA without
//!   checking the name: the certificates do not list the shared address).
//! - Dropping a [`NetCluster`] kills (SIGKILL, by PID) every node still
//!   running, then deletes the namespaces; while panicking it first prints
//!   the tail of every node's log. Every wait is bounded.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tandem_web::{HealthView, StatusView};

use crate::netns::{addr4, Topology, IFACE};
use crate::{agree_on_roles, now_ms, tail, tandem_bin, CliOutput, Roles, CLI_TIMEOUT};

/// The shared address (without prefix).
pub const SHARED: &str = "198.51.100.100";
/// The shared address as it is configured.
pub const SHARED_CIDR: &str = "198.51.100.100/24";
/// Port of every node's admin listener.
pub const API_PORT: u16 = 8443;
/// Port of every node's peer listener.
pub const PEER_PORT: u16 = 7400;
/// Interval between two probes of [`wait_for`].
pub const POLL: Duration = Duration::from_millis(50);
/// Bound on one API request while the cluster is busy (a stopped node must
/// not hold a wait up for long).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The shared address as an [`IpAddr`].
pub fn shared() -> IpAddr {
    SHARED.parse().expect("a valid address")
}

/// Polls `probe` every [`POLL`] until it returns `Some`, at most `timeout`.
///
/// # Panics
/// On timeout, naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} ({attempts} attempts) waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// One node of a [`NetCluster`]; its namespace is the host of the same name.
#[derive(Debug)]
pub struct NetNode {
    /// `a`, `b` or `w` (also the host in the topology).
    pub name: &'static str,
    /// Data directory.
    pub dir: PathBuf,
    /// Log file (stderr of every run, appended).
    pub log: PathBuf,
    /// Raft node id.
    pub id: u64,
    /// Whether this node is the witness.
    pub witness: bool,
    /// The running `tandem run` process, if any.
    pub child: Option<Child>,
}

impl NetNode {
    /// API base URL (on the namespace's own address).
    pub fn api(&self) -> String {
        format!("https://{}:{API_PORT}", addr4(self.name))
    }
}

/// A pair + witness relationship in network namespaces.
pub struct NetCluster {
    /// The namespaces (deleted after the processes are killed).
    pub topo: Topology,
    /// Data directories and logs (removed on drop).
    pub root: tempfile::TempDir,
    /// Admin bearer token.
    pub admin_token: String,
    /// Cluster CA (PEM).
    pub ca_pem: String,
    /// `a`, `b`, `w`.
    pub nodes: Vec<NetNode>,
}

impl NetCluster {
    /// Builds the topology, creates and starts `a`, `b` and `w` with
    /// `primary_timeout_ms`, waits until they agree on the roles, puts the
    /// shared address in the settings and waits until the primary holds it.
    ///
    /// # Panics
    /// Any step fails or does not finish in time.
    pub fn start(primary_timeout_ms: u64) -> Self {
        let topo = Topology::create().expect("creating the namespaces");
        let root = tempfile::Builder::new()
            .prefix("tandem-netns-")
            .tempdir()
            .expect("creating a temporary directory");
        let mut c = Self {
            topo,
            root,
            admin_token: String::new(),
            ca_pem: String::new(),
            nodes: Vec::new(),
        };
        let timeout = primary_timeout_ms.to_string();

        // a: init.
        let dir = c.root.path().join("a");
        let mut args = vec![
            OsString::from("init"),
            "--dir".into(),
            dir.clone().into(),
            "--name".into(),
            "a".into(),
        ];
        args.extend(listen_args("a"));
        args.extend(["--primary-timeout-ms".into(), timeout.clone().into()]);
        args.push("--json".into());
        let out = c.cli("a", &args).expect_ok("tandem init");
        let init: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("init --json printed {:?}: {e}", out.stdout));
        let field = |k: &str| {
            init.get(k)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("init output lacks {k}: {init}"))
                .to_string()
        };
        c.admin_token = field("admin_token");
        c.ca_pem = std::fs::read_to_string(field("ca_file")).expect("reading ca.pem");
        c.add_dir("a", dir, false);
        c.spawn(0);
        c.wait_health(0);

        // b and w: token + join.
        for (name, witness) in [("b", false), ("w", true)] {
            let mut args = vec![
                OsString::from("token"),
                "--dir".into(),
                c.nodes[0].dir.clone().into(),
                "--token".into(),
                c.admin_token.clone().into(),
            ];
            if witness {
                args.push("--witness".into());
            }
            let token = c.cli("a", &args).expect_ok("tandem token").stdout;
            let dir = c.root.path().join(name);
            let mut args = vec![
                OsString::from("join"),
                "--dir".into(),
                dir.clone().into(),
                "--name".into(),
                name.into(),
                "--token".into(),
                token.trim().into(),
                "--peer".into(),
                c.nodes[0].api().into(),
            ];
            args.extend(listen_args(name));
            args.extend(["--primary-timeout-ms".into(), timeout.clone().into()]);
            // Every namespace runs on this one machine.
            args.push("--allow-same-site".into());
            if witness {
                args.push("--witness".into());
            }
            c.cli(name, &args).expect_ok(&format!("tandem join {name}"));
            let i = c.add_dir(name, dir, witness);
            c.spawn(i);
            c.wait_health(i);
            if !witness {
                // Without the witness b is a learner; wait until it is a member.
                c.wait_members(2, false);
            }
        }
        c.wait_members(3, true);
        let roles = c.wait_roles(Duration::from_secs(60));

        // The shared address, on eth0 of both appliances.
        c.put_shared_ips(roles.primary);
        let p = c.nodes[roles.primary].name;
        wait_for(
            &format!("{p} to hold {SHARED_CIDR}"),
            Duration::from_secs(30),
            || (c.holders() == vec![p] && c.held_by_status(roles.primary)).then_some(()),
        );
        c
    }

    fn add_dir(&mut self, name: &'static str, dir: PathBuf, witness: bool) -> usize {
        // The netlink driver, announce settings left at their defaults.
        // (`init`/`join` already write a `[shared_ip]` section, with the
        // `none` driver: it is edited, not appended.)
        let data = tandem_node::config::DataDir::new(&dir);
        let mut cfg = data.load().expect("node.toml after init/join");
        cfg.shared_ip.driver = tandem_node::config::SharedIpDriverKind::Netlink;
        data.save(&cfg).expect("writing node.toml");
        let text = std::fs::read_to_string(data.config()).expect("reading node.toml");
        assert!(text.contains("driver = \"netlink\""), "{text}");
        assert_eq!(
            data.load().expect("node.toml reloads").shared_ip,
            tandem_node::config::SharedIpConfig {
                driver: tandem_node::config::SharedIpDriverKind::Netlink,
                ..Default::default()
            }
        );
        self.nodes.push(NetNode {
            name,
            log: self.root.path().join(format!("{name}.log")),
            dir,
            id: cfg.node_id,
            witness,
            child: None,
        });
        self.nodes.len() - 1
    }

    /// Index of node `name`.
    ///
    /// # Panics
    /// No such node.
    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Runs `tandem ARGS` inside host `h` to completion (bounded by
    /// [`CLI_TIMEOUT`]; killed on timeout).
    ///
    /// # Panics
    /// It cannot run or does not finish in time.
    pub fn cli(&self, h: &str, args: &[OsString]) -> CliOutput {
        let n = now_ms();
        let out_path = self.root.path().join(format!("cli-{h}-{n}.out"));
        let err_path = self.root.path().join(format!("cli-{h}-{n}.err"));
        let mut child = self
            .topo
            .command(h, tandem_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("cli stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("cli stderr file"))
            .spawn()
            .expect("running tandem");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for tandem") {
                break s;
            }
            if start.elapsed() > CLI_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`tandem {args:?}` in {h} did not finish within {CLI_TIMEOUT:?}");
            }
            std::thread::sleep(POLL);
        };
        CliOutput {
            code: status.code(),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Starts `tandem run` of node `i` inside its namespace (stderr appended
    /// to its log). `ip netns exec` execs the binary: the PID is tandem's.
    pub fn spawn(&mut self, i: usize) {
        let n = &self.nodes[i];
        assert!(n.child.is_none(), "node {} is already running", n.name);
        let child = crate::spawn_run(
            self.topo.command(n.name, tandem_bin()),
            n.name,
            &n.dir,
            &n.log,
        );
        self.nodes[i].child = Some(child);
    }

    /// SIGKILL of node `i` (by PID) and reaping.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = kill(pid_of(&child), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Sends `sig` to node `i`'s process (e.g. SIGSTOP, SIGCONT).
    pub fn signal(&self, i: usize, sig: Signal) {
        let child = self.nodes[i].child.as_ref().expect("the node is running");
        kill(pid_of(child), sig).expect("signalling the node");
    }

    /// SIGTERM of node `i` (the documented graceful stop) and a bounded
    /// wait for its exit; returns its exit code.
    ///
    /// # Panics
    /// If it does not exit within 30 s (it is then killed).
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        let mut child = self.nodes[i].child.take().expect("the node is running");
        let _ = kill(pid_of(&child), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(pid_of(&child), Signal::SIGKILL);
        let _ = child.wait();
        panic!(
            "node {} did not stop within 30 s of SIGTERM",
            self.nodes[i].name
        );
    }

    /// The PID of node `i`'s process, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Starts a stopped node again and waits until it answers `/health`.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_health(i);
    }

    /// Indexes of the nodes whose process runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    /// One HTTPS request to node `i`'s API from the client namespace, with
    /// the admin token: status and body, if it answered.
    pub fn request(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Option<(StatusCode, String)> {
        let url = format!("{}{path}", self.nodes[i].api());
        let (ca, token) = (self.ca_pem.clone(), self.admin_token.clone());
        self.topo.run_in("client", move || async move {
            let http = crate::https_client(&ca);
            let mut rb = http
                .request(method, &url)
                .bearer_auth(&token)
                .header("x-tandem-actor", "shared-ip-e2e")
                .timeout(timeout);
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            let resp = rb.send().await.ok()?;
            let status = resp.status();
            Some((status, resp.text().await.unwrap_or_default()))
        })
    }

    /// A `GET path` on node `i` decoded as `T`, if it answers 200.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, i: usize, path: &str) -> Option<T> {
        let (status, body) = self.request(i, Method::GET, path, None, REQUEST_TIMEOUT)?;
        (status == StatusCode::OK)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// `/health` of node `i`.
    pub fn health(&self, i: usize) -> Option<HealthView> {
        self.get_json(i, "/health")
    }

    /// `/api/v1/status` of node `i`.
    pub fn status(&self, i: usize) -> Option<StatusView> {
        self.get_json(i, "/api/v1/status")
    }

    /// Waits until node `i` answers `/health`.
    pub fn wait_health(&self, i: usize) -> HealthView {
        let what = format!("node {} to answer /health", self.nodes[i].name);
        wait_for(&what, Duration::from_secs(60), || self.health(i))
    }

    /// Waits until some running node leads a membership of `n` members
    /// (`voters`: all of them voters).
    pub fn wait_members(&self, n: usize, voters: bool) {
        wait_for(
            &format!("{n} members (voters: {voters})"),
            Duration::from_secs(60),
            || {
                self.running().into_iter().find_map(|i| {
                    let h = self.health(i)?;
                    if h.role != "leader" {
                        return None;
                    }
                    let v: tandem_web::ClusterView = self.get_json(i, "/api/v1/cluster")?;
                    let ok = v.members.len() == n && (!voters || v.members.iter().all(|m| m.voter));
                    ok.then_some(())
                })
            },
        );
    }

    /// The relationship as the running nodes report it, when they agree
    /// (as [`crate::Cluster::find_roles`]).
    pub fn find_roles(&self) -> Option<Roles> {
        let ids: Vec<(u64, bool)> = self.nodes.iter().map(|n| (n.id, n.witness)).collect();
        let mut reports = Vec::new();
        for i in self.running() {
            reports.push((i, self.status(i)?));
        }
        agree_on_roles(&ids, &reports)
    }

    /// Waits for [`NetCluster::find_roles`].
    pub fn wait_roles(&self, timeout: Duration) -> Roles {
        wait_for(
            "the nodes to agree on primary, backup and epoch",
            timeout,
            || self.find_roles(),
        )
    }

    /// `PUT /api/v1/settings` on node `i`: the settings in force with the
    /// shared address on `eth0` of `a` and `b`.
    ///
    /// # Panics
    /// The node does not answer 200.
    pub fn put_shared_ips(&self, i: usize) {
        self.put_settings(i, |v| {
            v["shared_ips"] =
                json!([{"address": SHARED_CIDR, "interfaces": {"a": IFACE, "b": IFACE}}]);
        });
    }

    /// `PUT /api/v1/settings` on node `i`: the settings in force with
    /// `edit` applied.
    ///
    /// # Panics
    /// The node does not answer 200.
    pub fn put_settings(&self, i: usize, edit: impl FnOnce(&mut Value)) {
        let mut body: Value = wait_for("the settings", Duration::from_secs(30), || {
            self.get_json(i, "/api/v1/settings")
        });
        if let Some(o) = body.as_object_mut() {
            for k in ["version", "updated_by", "updated_at_ms"] {
                o.remove(k);
            }
        }
        edit(&mut body);
        let (status, text) = self
            .request(
                i,
                Method::PUT,
                "/api/v1/settings",
                Some(body),
                Duration::from_secs(10),
            )
            .expect("PUT /api/v1/settings answered");
        assert_eq!(status, StatusCode::OK, "PUT /api/v1/settings: {text}");
    }

    /// `POST /api/v1/relationship/swap` on node `i`.
    pub fn swap(&self, i: usize, force: bool) -> Option<(StatusCode, String)> {
        self.request(
            i,
            Method::POST,
            "/api/v1/relationship/swap",
            Some(json!({"pull_sync": false, "force": force})),
            Duration::from_secs(30),
        )
    }

    /// The hosts whose namespace holds the shared address now.
    pub fn holders(&self) -> Vec<&'static str> {
        self.topo.holders(shared())
    }

    /// Whether node `i`'s status says it holds exactly the shared address.
    pub fn held_by_status(&self, i: usize) -> bool {
        self.status(i)
            .is_some_and(|s| s.this_host.shared_ips_held == vec![SHARED_CIDR.to_string()])
    }

    /// Node `i`'s status says it holds no shared address.
    pub fn holds_nothing_by_status(&self, i: usize) -> bool {
        self.status(i)
            .is_some_and(|s| s.this_host.shared_ips_held.is_empty())
    }

    /// The client of the shared address: HTTPS `GET /health` on
    /// `SHARED:8443`, answering the `node` it names; three probe loops
    /// 3.3 ms apart, each a new connection every 10 ms (a request caught by the
    /// move waits for its timeout; the other loop goes on).
    pub fn prober(&self) -> crate::netns::Prober {
        let target = SocketAddr::new(shared(), API_PORT);
        let lanes = (0..3).map(|_| health_probe(&self.ca_pem, target)).collect();
        crate::netns::Prober::start_lanes(&self.topo, "client", lanes)
    }

    /// Tails of every node log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "----- {} (id {}) log {} -----\n{}\n",
                n.name,
                n.id,
                n.log.display(),
                tail(&n.log, lines)
            ));
        }
        out
    }

    /// Root of the temporary directory.
    pub fn path(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(60));
        }
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                // Only our own children, by PID (SIGKILL also ends a stopped one).
                let _ = kill(pid_of(&child), Signal::SIGKILL);
                let _ = child.wait();
            }
        }
        // Then `topo` drops: the namespaces are deleted.
    }
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("a PID fits in i32"))
}

fn listen_args(name: &str) -> Vec<OsString> {
    let a = addr4(name);
    vec![
        "--peer-listen".into(),
        format!("{a}:{PEER_PORT}").into(),
        "--api-listen".into(),
        format!("0.0.0.0:{API_PORT}").into(),
        "--api-advertise".into(),
        format!("https://{a}:{API_PORT}").into(),
    ]
}

/// Certificate verification that checks the chain up to the cluster CA but
/// not the name (the shared address is in no certificate).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS client configuration trusting `ca_pem` without checking names.
///
/// # Panics
/// The PEM does not parse.
pub fn chain_only_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("the cluster CA parses"))
            .expect("the cluster CA is a usable root");
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("a certificate verifier");
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// One probe of `target`: TCP connect (≤ 25 ms), TLS handshake against the
/// cluster CA, `GET /health` (≤ 100 ms per read); the `node` it names.
pub fn health_probe(
    ca_pem: &str,
    target: SocketAddr,
) -> impl FnMut() -> Option<String> + Send + 'static {
    let cfg = chain_only_config(ca_pem);
    move || probe_health(&cfg, target)
}

fn probe_health(cfg: &Arc<rustls::ClientConfig>, target: SocketAddr) -> Option<String> {
    // A connect on this LAN takes well under a millisecond (the kernel
    // answers even a busy node): a short bound keeps the probes frequent
    // while the address has no holder or a stale neighbour entry.
    let tcp = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(25)).ok()?;
    // A healthy node answers in ~10 ms (debug build); a handshake caught by
    // the address moving away must not hide the new holder for long.
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    tcp.set_write_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    tcp.set_nodelay(true).ok()?;
    let name = rustls_pki_types::ServerName::IpAddress(target.ip().into());
    let conn = rustls::ClientConnection::new(cfg.clone(), name).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: shared\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: at most 16 reads of at most 100 ms each.
    for _ in 0..16 {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(node) = node_in(&buf) {
            return Some(node);
        }
    }
    node_in(&buf)
}

/// The `node` field of the JSON body of an HTTP response, once complete.
fn node_in(buf: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let (start, end) = (body.find('{')?, body.rfind('}')?);
    let v: Value = serde_json::from_str(body.get(start..=end)?).ok()?;
    v["node"].as_str().map(str::to_owned)
}
