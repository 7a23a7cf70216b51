//! Harness for the cluster and end-to-end tests: drives the real `tandem`
//! binary as child processes on loopback.
//!
//! - [`tandem_bin`] locates the binary (`TANDEM_BIN`, else next to the test
//!   executable's parent directory, i.e. `target/debug/tandem`).
//! - [`Cluster`] owns a temporary directory, creates nodes through the real
//!   `init` / `token` / `join` flow, runs each node as a child process with
//!   its stderr in a log file, and offers API clients, leader discovery,
//!   bounded waits, `kill9`, `stop` and `restart`.
//! - Dropping a [`Cluster`] kills (by PID) every child still running; when the
//!   thread is panicking it first prints the tail of every node's log.
//!
//! - [`proc_stats`]: a process's CPU time and memory from `/proc`.
//! - [`bench`]: the benchmarks of the `tandem-bench` binary.
//!
//! Every wait is bounded by time (and polls at a fixed interval, so by count
//! too); nothing synchronises on a fixed sleep.

pub mod bench;
pub mod netcluster;
pub mod netns;
pub mod proc_stats;
pub mod service;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tandem_node::config::{DataDir, NodeConfig};
use tandem_web::{ClusterView, HealthView, RoleHealth, StatusView};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Interval between two probes of a [`wait_until`].
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// Bound on one HTTP request of the harness.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one short CLI command (`init`, `token`, `join`, `status`).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound on waiting for a cluster condition.
pub const WAIT: Duration = Duration::from_secs(60);

/// At most this many clusters run at once in one test binary (2 cores in
/// debug mode: more makes elections flaky). `TANDEM_TEST_CLUSTERS` overrides.
static CLUSTER_SLOTS: Semaphore = Semaphore::const_new(2);

/// Takes one of the cluster slots for the life of the returned permit.
pub async fn cluster_slot() -> SemaphorePermit<'static> {
    static EXTRA: std::sync::Once = std::sync::Once::new();
    EXTRA.call_once(|| {
        let wanted: usize = std::env::var("TANDEM_TEST_CLUSTERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        if wanted > 2 {
            CLUSTER_SLOTS.add_permits(wanted - 2);
        }
    });
    CLUSTER_SLOTS
        .acquire()
        .await
        .expect("the cluster semaphore is never closed")
}

/// Whether this process runs with effective user id 0 (what mounts and
/// network namespaces need).
pub fn is_root() -> bool {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
    euid.as_deref() == Some("0")
}

/// Path of the `tandem` binary.
///
/// # Panics
/// When it cannot be found: build it with `cargo build -p tandem-node`.
pub fn tandem_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TANDEM_BIN={} is not a file; run `cargo build -p tandem-node`",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("locating the test executable");
    // target/debug/deps/<test> -> target/debug/tandem
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("tandem"))
        .expect("the test executable has a parent directory");
    assert!(
        candidate.is_file(),
        "the tandem binary is missing at {}: run `cargo build -p tandem-node` \
         (or set TANDEM_BIN)",
        candidate.display()
    );
    candidate
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Outcome of one finished CLI command.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// The last non-empty line of stderr (the CLI's one-line reason).
    pub fn reason(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    /// Panics with the output unless the command exited 0.
    pub fn expect_ok(self, what: &str) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "{what} failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `tandem <args>` to completion (bounded by [`CLI_TIMEOUT`]).
pub async fn tandem<I, S>(args: I) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let fut = tokio::process::Command::new(tandem_bin())
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLI_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("`tandem {shown}` did not finish within {CLI_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run `tandem {shown}`: {e}"));
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tandem init --json` of node `name` in `dir` on loopback with free
/// ports (`flags` added): its printed outcome, its CA certificate (PEM) and
/// its `node.toml`.
///
/// # Panics
/// When `init` fails or prints something else.
pub async fn init_node(dir: &Path, name: &str, flags: &[&str]) -> (Value, String, NodeConfig) {
    let mut args: Vec<OsString> = vec![
        "init".into(),
        "--dir".into(),
        dir.into(),
        "--name".into(),
        name.into(),
        "--peer-listen".into(),
        listen_addr().into(),
        "--api-listen".into(),
        listen_addr().into(),
        "--json".into(),
    ];
    args.extend(flags.iter().map(OsString::from));
    let out = tandem(args).await.expect_ok("tandem init");
    let init: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("init --json printed {:?}: {e}", out.stdout));
    let ca_file = init
        .get("ca_file")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("init output lacks ca_file: {init}"));
    let ca_pem = std::fs::read_to_string(ca_file).expect("reading ca.pem");
    let cfg = DataDir::new(dir).load().expect("node.toml after init");
    (init, ca_pem, cfg)
}

/// Ports the harness gives its nodes: below the kernel's ephemeral range
/// (32768–60999 by default), so that no outgoing connection of another
/// test can take a stopped node's port before it restarts (a node keeps
/// its ports in `node.toml`).
const NODE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback address with a port from [`NODE_PORTS`] that is free now.
/// Ports are handed out in turn from a varying start, so one test process
/// never hands out the same port twice while others remain.
///
/// # Panics
/// When no port of the range can be bound.
pub fn listen_addr() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(NODE_PORTS.end - NODE_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        // A start that differs between runs and processes.
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id())
            % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    // Bounded: one pass over the range at most.
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = NODE_PORTS.start + n as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
    panic!("no free loopback port in {NODE_PORTS:?}");
}

/// Polls `probe` every [`POLL_EVERY`] until it returns `Some`, for at most
/// `timeout`.
///
/// # Panics
/// On timeout, naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} ({attempts} attempts) waiting for {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// An HTTPS client trusting only the cluster CA `ca_pem`; never follows
/// redirects (421 answers are checked, not followed).
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    let tls = tandem_certs::admin_client_config(ca_pem).expect("the cluster CA parses");
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(HTTP_TIMEOUT)
        // Below the admin listener's keep-alive bound (10 s): a pooled
        // connection is never reused just as the node closes it.
        .pool_idle_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building the HTTPS client")
}

/// Tail (last `lines` lines) of a text file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised command name) is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Who is what in the relationship (node indexes), see [`Cluster::find_roles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// The primary.
    pub primary: usize,
    /// The other appliance.
    pub backup: usize,
    /// The witness.
    pub witness: usize,
    /// The epoch the appliances agree on.
    pub epoch: u64,
}

/// The relationship the nodes report, when they agree: `nodes` holds each
/// node's `(id, is witness)`, `reports` the status of every running node.
/// Every running appliance must name the same primary and epoch, the primary
/// must say `primary`, the other running appliance `backup`, the witness
/// `witness`. Shared by the process and the network-namespace harnesses.
pub fn agree_on_roles(nodes: &[(u64, bool)], reports: &[(usize, StatusView)]) -> Option<Roles> {
    let witness = nodes.iter().position(|n| n.1)?;
    let mut agreed: Option<(u64, u64)> = None;
    for (i, s) in reports {
        if nodes[*i].1 {
            continue;
        }
        let here = (s.primary?, s.epoch);
        if agreed.is_some_and(|a| a != here) {
            return None;
        }
        agreed = Some(here);
    }
    let (primary_id, epoch) = agreed?;
    let primary = nodes.iter().position(|n| n.0 == primary_id)?;
    let backup = (0..nodes.len()).find(|&i| i != primary && !nodes[i].1)?;
    let ok = reports.iter().all(|(i, s)| {
        let want = if *i == primary {
            "primary"
        } else if *i == witness {
            "witness"
        } else {
            "backup"
        };
        s.this_host.role == want
    });
    ok.then_some(Roles {
        primary,
        backup,
        witness,
        epoch,
    })
}

/// One node of a [`Cluster`].
#[derive(Debug)]
pub struct NodeProc {
    /// Node name (`a`, `b`, `w`…).
    pub name: String,
    /// Data directory.
    pub dir: PathBuf,
    /// Its `node.toml`.
    pub cfg: NodeConfig,
    /// Log file (stderr of every run, appended).
    pub log: PathBuf,
    /// The running `tandem run` process, if any.
    pub child: Option<Child>,
}

impl NodeProc {
    /// API base URL.
    pub fn api(&self) -> &str {
        &self.cfg.api_advertise
    }
    /// Raft node id.
    pub fn id(&self) -> u64 {
        self.cfg.node_id
    }
    /// Whether this node is a witness.
    pub fn witness(&self) -> bool {
        self.cfg.kind == tandem_storage::NodeKind::Witness
    }
    /// PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A node `init`ed on its own beside a [`Cluster`] (see
/// [`Cluster::add_standalone`]), reached with its own CA and admin token.
pub struct Standalone {
    /// Its index in [`Cluster::nodes`].
    pub index: usize,
    /// HTTPS client trusting its own CA.
    pub http: reqwest::Client,
    /// Its admin bearer token.
    pub token: String,
    /// Its API base URL.
    pub api: String,
    /// Its first web UI user and one-time password.
    pub admin_user: String,
    /// See `admin_user`.
    pub admin_password: String,
}

impl Standalone {
    /// A request to it with its admin token, acting as `alice`.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .header("x-tandem-actor", "alice")
    }

    /// `POST /api/v1/relationship/setup` with `body`.
    ///
    /// # Panics
    /// When the node does not answer.
    pub async fn setup(&self, body: Value) -> reqwest::Response {
        self.req(Method::POST, "/api/v1/relationship/setup")
            .json(&body)
            .send()
            .await
            .expect("POST /api/v1/relationship/setup")
    }

    /// Its `GET /api/v1/status`, while it answers with its own identity.
    pub async fn status(&self) -> Option<StatusView> {
        let resp = self.req(Method::GET, "/api/v1/status").send().await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        resp.json().await.ok()
    }
}

/// A cluster of `tandem run` child processes in one temporary directory.
pub struct Cluster {
    /// The temporary root (removed on drop).
    pub root: tempfile::TempDir,
    /// Admin bearer token.
    pub admin_token: String,
    /// Cluster CA certificate (PEM).
    pub ca_pem: String,
    /// Cluster id.
    pub cluster_id: String,
    /// The nodes, in creation order.
    pub nodes: Vec<NodeProc>,
    /// HTTPS client trusting the cluster CA.
    pub http: reqwest::Client,
    /// Extra flags given to `init` and every `join` (tuning).
    pub flags: Vec<String>,
    /// Join tokens used so far, in order (for refusal tests).
    pub used_tokens: Vec<String>,
    _slot: SemaphorePermit<'static>,
}

impl Cluster {
    /// Creates a cluster: `init` of `a`, then `b` (appliance) and `w`
    /// (witness) through `tandem token` + `tandem join`, all running and all
    /// voters. `flags` go to `init` and to every `join`.
    pub async fn three(flags: &[&str]) -> Self {
        let mut c = Self::init("a", flags).await;
        c.add_node("b", false).await;
        // Without a witness `b` stays a learner (pair-only topology); it
        // becomes a voter with the witness.
        c.wait_members(2).await;
        c.add_node("w", true).await;
        c.wait_voters(3).await;
        c
    }

    /// `tandem init` of the first node `name`, then starts it and waits until
    /// it answers `/health` as leader.
    pub async fn init(name: &str, flags: &[&str]) -> Self {
        let root = tempfile::Builder::new()
            .prefix("tandem-test-")
            .tempdir()
            .expect("creating a temporary directory");
        Self::init_in(root, name, flags).await
    }

    /// As [`Cluster::init`], with the nodes' directories and logs under
    /// `root` (a filesystem the test prepared, such as a small tmpfs).
    pub async fn init_in(root: tempfile::TempDir, name: &str, flags: &[&str]) -> Self {
        let slot = cluster_slot().await;
        let dir = root.path().join(name);
        let (init, ca_pem, cfg) = init_node(&dir, name, flags).await;
        let field = |k: &str| {
            init.get(k)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("init output lacks {k}: {init}"))
                .to_string()
        };
        assert_eq!(field("api"), cfg.api_advertise);
        let mut c = Self {
            admin_token: field("admin_token"),
            cluster_id: field("cluster_id"),
            http: https_client(&ca_pem),
            ca_pem,
            nodes: vec![NodeProc {
                name: name.into(),
                log: root.path().join(format!("{name}.log")),
                dir,
                cfg,
                child: None,
            }],
            root,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            used_tokens: Vec::new(),
            _slot: slot,
        };
        c.spawn(0);
        c.wait_health(0).await;
        c
    }

    /// `tandem init` of a separate one-node cluster `name` beside this
    /// cluster's nodes (its own CA and admin token), started as the next
    /// node index; waits until it serves as standalone. For *Set up
    /// relationship*, which joins such a node to this cluster.
    pub async fn add_standalone(&mut self, name: &str) -> Standalone {
        let dir = self.path().join(name);
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let (init, ca_pem, cfg) = init_node(&dir, name, &flags).await;
        let index = self.push_and_spawn(name, dir, cfg);
        let field = |k: &str| {
            init.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let own = Standalone {
            index,
            http: https_client(&ca_pem),
            token: field("admin_token"),
            api: self.nodes[index].api().to_string(),
            admin_user: field("admin_user"),
            admin_password: field("admin_password"),
        };
        wait_until(&format!("{name} to serve as standalone"), WAIT, || async {
            own.status()
                .await
                .filter(|s| s.this_host.role == "standalone" && s.this_host.lease_valid)
        })
        .await;
        own
    }

    /// Root of the temporary directory.
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// A join token from `tandem token` (via the first node's directory).
    pub async fn token(&self, witness: bool, ttl_secs: Option<u64>) -> String {
        let mut args: Vec<OsString> = vec![
            "token".into(),
            "--dir".into(),
            self.nodes[0].dir.clone().into(),
            "--token".into(),
            self.admin_token.clone().into(),
        ];
        if witness {
            args.push("--witness".into());
        }
        if let Some(ttl) = ttl_secs {
            args.push("--ttl".into());
            args.push(ttl.to_string().into());
        }
        let out = tandem(args).await.expect_ok("tandem token");
        let token = out.stdout.trim().to_string();
        assert!(!token.is_empty(), "tandem token printed nothing");
        token
    }

    /// Runs `tandem join` for a new directory `root/<name>` (does not start
    /// the node). The API of the first running node is the `--peer`. Every
    /// test node runs on this one machine, so it says `--allow-same-site`.
    pub async fn join_cmd(&self, name: &str, token: &str, witness: bool) -> CliOutput {
        self.join_cmd_with(name, token, witness, &["--allow-same-site"])
            .await
    }

    /// [`Self::join_cmd`] with `extra` flags instead of `--allow-same-site`.
    pub async fn join_cmd_with(
        &self,
        name: &str,
        token: &str,
        witness: bool,
        extra: &[&str],
    ) -> CliOutput {
        let dir = self.path().join(name);
        let peer = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .map_or(self.nodes[0].api(), NodeProc::api)
            .to_string();
        let mut args: Vec<OsString> = vec![
            "join".into(),
            "--dir".into(),
            dir.into(),
            "--name".into(),
            name.into(),
            "--token".into(),
            token.into(),
            "--peer".into(),
            peer.into(),
            "--peer-listen".into(),
            listen_addr().into(),
            "--api-listen".into(),
            listen_addr().into(),
        ];
        if witness {
            args.push("--witness".into());
        }
        args.extend(extra.iter().map(OsString::from));
        args.extend(self.flags.iter().map(OsString::from));
        tandem(args).await
    }

    /// Token + join + start of a new node; returns its index.
    pub async fn add_node(&mut self, name: &str, witness: bool) -> usize {
        let token = self.token(witness, None).await;
        self.join_cmd(name, &token, witness)
            .await
            .expect_ok(&format!("tandem join {name}"));
        self.used_tokens.push(token);
        let dir = self.path().join(name);
        let cfg = DataDir::new(&dir).load().expect("node.toml after join");
        let i = self.push_and_spawn(name, dir, cfg);
        self.wait_health(i).await;
        i
    }

    /// Adds a node prepared in `dir` and starts it; returns its index.
    fn push_and_spawn(&mut self, name: &str, dir: PathBuf, cfg: NodeConfig) -> usize {
        self.nodes.push(NodeProc {
            name: name.into(),
            log: self.path().join(format!("{name}.log")),
            dir,
            cfg,
            child: None,
        });
        let i = self.nodes.len() - 1;
        self.spawn(i);
        i
    }

    /// Starts `tandem run` for node `i` (stderr appended to its log).
    pub fn spawn(&mut self, i: usize) {
        self.spawn_with_env(i, &[]);
    }

    /// [`Cluster::spawn`] with extra environment variables (test hooks such
    /// as `TANDEM_TEST_FAULT`).
    pub fn spawn_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "node {} is already running", n.name);
        let mut cmd = std::process::Command::new(tandem_bin());
        cmd.envs(env.iter().copied());
        n.child = Some(spawn_run(cmd, &n.name, &n.dir, &n.log));
    }

    /// URL of `path` on node `i`.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("{}{}", self.nodes[i].api(), path)
    }

    /// A request to node `i` carrying the admin token.
    pub fn req(&self, i: usize, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(i, path))
            .bearer_auth(&self.admin_token)
    }

    /// `/health` of node `i`, if it answers.
    pub async fn health(&self, i: usize) -> Option<HealthView> {
        let resp = self.http.get(self.url(i, "/health")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// Waits until node `i` answers `/health`.
    pub async fn wait_health(&self, i: usize) -> HealthView {
        let what = format!("node {} to answer /health", self.nodes[i].name);
        wait_until(&what, WAIT, || self.health(i)).await
    }

    /// `/api/v1/cluster` from node `i` (linearizable unless `stale`).
    pub async fn cluster_view(&self, i: usize, stale: bool) -> Option<ClusterView> {
        let path = if stale {
            "/api/v1/cluster?stale=true"
        } else {
            "/api/v1/cluster"
        };
        let resp = self.req(i, Method::GET, path).send().await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        resp.json().await.ok()
    }

    /// Indexes of the nodes whose process runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    /// Index of node id `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == id)
    }

    /// The leader, if one running node says it leads and no running node
    /// knows of a higher term.
    pub async fn find_leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        let mut max_term = 0;
        for i in self.running() {
            if let Some(h) = self.health(i).await {
                max_term = max_term.max(h.term);
                if h.role == "leader" && h.leader == Some(h.node_id) {
                    best = Some((h.term, i));
                }
            }
        }
        best.filter(|(term, _)| *term == max_term).map(|(_, i)| i)
    }

    /// Waits until a leader is known (see [`Cluster::find_leader`]).
    pub async fn leader(&self) -> usize {
        wait_until("a leader", WAIT, || self.find_leader()).await
    }

    /// Waits until a node answers 200 on `/health/primary` (the node that
    /// accepts writes; the Raft leader can briefly be the witness, which
    /// never serves) and returns it.
    pub async fn primary(&self) -> usize {
        wait_until("a primary", WAIT, || async {
            for i in 0..self.nodes.len() {
                if let Some((StatusCode::OK, _)) = self.role_health(i, "primary").await {
                    return Some(i);
                }
            }
            None
        })
        .await
    }

    /// Waits until the cluster (as its leader sees it) has `n` members.
    pub async fn wait_members(&self, n: usize) -> ClusterView {
        wait_until(&format!("{n} members"), WAIT, || async {
            let l = self.find_leader().await?;
            let v = self.cluster_view(l, false).await?;
            (v.members.len() == n).then_some(v)
        })
        .await
    }

    /// Waits until the cluster (as its leader sees it) has `n` voters.
    pub async fn wait_voters(&self, n: usize) -> ClusterView {
        wait_until(&format!("{n} voters"), WAIT, || async {
            let l = self.find_leader().await?;
            let v = self.cluster_view(l, false).await?;
            (v.members.iter().filter(|m| m.voter).count() == n).then_some(v)
        })
        .await
    }

    /// Applied index of node `i`.
    pub async fn applied(&self, i: usize) -> Option<u64> {
        self.health(i).await.and_then(|h| h.applied_index)
    }

    /// Waits until node `i` has applied as far as the current leader (and
    /// the leader's applied index did not move between the two probes).
    pub async fn wait_caught_up(&self, i: usize) -> u64 {
        let what = format!("node {} to catch up with the leader", self.nodes[i].name);
        wait_until(&what, WAIT, || async {
            let l = self.find_leader().await?;
            let before = self.applied(l).await?;
            let mine = self.applied(i).await?;
            let after = self.applied(l).await?;
            (before == after && mine == after).then_some(mine)
        })
        .await
    }

    /// `PUT /api/v1/config/{key}` on node `i`.
    pub async fn put(
        &self,
        i: usize,
        key: &str,
        value: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        self.req(i, Method::PUT, &format!("/api/v1/config/{key}"))
            .json(&serde_json::json!({ "value": value }))
            .send()
            .await
    }

    /// Like [`Cluster::put`], panicking unless the answer is 200.
    pub async fn put_ok(&self, i: usize, key: &str, value: &Value) {
        let resp = self
            .put(i, key, value)
            .await
            .unwrap_or_else(|e| panic!("PUT {key} on {}: {e}", self.nodes[i].name));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::OK,
            "PUT {key} on {}: {body}",
            self.nodes[i].name
        );
    }

    /// Every configuration entry under `prefix` as served by node `i`
    /// (`stale` or linearizable), as `key -> value`. At most 1000 entries.
    pub async fn list(
        &self,
        i: usize,
        prefix: &str,
        stale: bool,
    ) -> std::collections::BTreeMap<String, Value> {
        let path = format!("/api/v1/config?prefix={prefix}&limit=1000&stale={stale}");
        let resp = self
            .req(i, Method::GET, &path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.nodes[i].name));
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "GET {path} on {}",
            self.nodes[i].name
        );
        let list: tandem_web::ListView<tandem_web::ConfigEntryView> =
            resp.json().await.expect("a config list");
        list.items.into_iter().map(|e| (e.key, e.value)).collect()
    }

    /// An authenticated `GET path` on node `i` decoded as JSON, if it answers
    /// 200.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
    ) -> Option<T> {
        let resp = self.req(i, Method::GET, path).send().await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        resp.json().await.ok()
    }

    /// `GET /api/v1/status` of node `i`, if it answers 200.
    pub async fn status(&self, i: usize) -> Option<StatusView> {
        self.get_json(i, "/api/v1/status").await
    }

    /// `GET /health/{which}` (`primary` or `backup`, no authentication) of
    /// node `i`: the HTTP status and the body, if it answers.
    pub async fn role_health(&self, i: usize, which: &str) -> Option<(StatusCode, RoleHealth)> {
        let resp = self
            .http
            .get(self.url(i, &format!("/health/{which}")))
            .send()
            .await
            .ok()?;
        let status = resp.status();
        Some((status, resp.json().await.ok()?))
    }

    /// The relationship as the running nodes report it, when they agree:
    /// every running appliance names the same primary and epoch in
    /// `/api/v1/status`, the primary says `primary`, the other running
    /// appliance `backup`, the witness `witness`.
    pub async fn find_roles(&self) -> Option<Roles> {
        let ids: Vec<(u64, bool)> = self.nodes.iter().map(|n| (n.id(), n.witness())).collect();
        let mut reports = Vec::new();
        for i in self.running() {
            reports.push((i, self.status(i).await?));
        }
        agree_on_roles(&ids, &reports)
    }

    /// Waits (bounded by `timeout`) for [`Cluster::find_roles`].
    pub async fn wait_roles(&self, timeout: Duration) -> Roles {
        wait_until(
            "the nodes to agree on primary, backup and epoch",
            timeout,
            || self.find_roles(),
        )
        .await
    }

    /// Waits until node `i`'s status shows peer `peer` (an index) with
    /// `reachable == want`.
    pub async fn wait_peer_reachable(&self, i: usize, peer: usize, want: bool) {
        let id = self.nodes[peer].id();
        let what = format!(
            "{} to see {} as reachable={want}",
            self.nodes[i].name, self.nodes[peer].name
        );
        wait_until(&what, WAIT, || async {
            let s = self.status(i).await?;
            s.peers
                .iter()
                .any(|p| p.id == id && p.reachable == want)
                .then_some(())
        })
        .await;
    }

    /// SIGKILL of node `i` (our child, by PID) and reaping.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM of node `i` and a bounded wait for its exit; returns its exit
    /// code.
    ///
    /// # Panics
    /// If it does not exit within 30 s (it is then killed).
    pub async fn stop(&mut self, i: usize) -> Option<i32> {
        let mut child = self.nodes[i].child.take().expect("the node is running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                panic!(
                    "node {} did not stop within 30 s of SIGTERM",
                    self.nodes[i].name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a stopped node again and waits until it answers `/health`.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_health(i).await;
    }

    /// Tails of every node log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            // A panic inside a node (openraft's core, say) scrolls out of the
            // tail quickly: show those lines first.
            let panics: Vec<String> = std::fs::read_to_string(&n.log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("panicked at") || l.contains("RaftCore panicked"))
                .take(5)
                .map(str::to_owned)
                .collect();
            out.push_str(&format!(
                "----- {} (id {}) log {} -----\n{}{}\n",
                n.name,
                n.id(),
                n.log.display(),
                if panics.is_empty() {
                    String::new()
                } else {
                    format!("panics:\n{}\n...\n", panics.join("\n"))
                },
                tail(&n.log, lines)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(40));
        }
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                // Only our own children, by PID.
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

/// Starts `cmd run --dir DIR` (`cmd` runs the `tandem` binary, possibly
/// through `ip netns exec`) with its stderr appended to `log`, after a
/// harness line naming `name`.
pub fn spawn_run(
    mut cmd: std::process::Command,
    name: &str,
    dir: &Path,
    log: &Path,
) -> std::process::Child {
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("opening the node log");
    let _ = writeln!(out, "===== harness: starting {name} at {} ms", now_ms());
    cmd.arg("run")
        .arg("--dir")
        .arg(dir)
        // `TANDEM_TEST_LOG` widens the nodes' logs when a test is chased
        // (e.g. `info,openraft::engine=info`).
        .env(
            "RUST_LOG",
            std::env::var("TANDEM_TEST_LOG")
                .unwrap_or_else(|_| "info,sled=warn,openraft=warn".to_string()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("starting tandem run")
}
