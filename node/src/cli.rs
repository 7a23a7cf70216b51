//! The `tandem` command line (clap). `main` parses, installs tracing and
//! calls [`execute`].
//!
//! Exit codes scripts can rely on: 0 success; 1 failure (one line on
//! stderr says why); 2 usage error (from clap); 3 the cluster refused the
//! request (bad token, not allowed); 4 the node could not be reached.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::bootstrap::{InitOptions, JoinOptions, Listen};
use crate::client::{ApiClient, ClientError};
use crate::config::Tuning;

/// Exit code: the cluster refused the request.
pub const EXIT_REFUSED: i32 = 3;
/// Exit code: the node could not be reached.
pub const EXIT_UNREACHABLE: i32 = 4;

/// Tandem: two appliances, one service.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "TANDEM_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new cluster with this node as its first member.
    Init(InitArgs),
    /// Run the node in a data directory until SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Print a one-time join token for a new node.
    Token(TokenArgs),
    /// Join an existing cluster (prepares the data directory; then `tandem run`).
    Join(JoinArgs),
    /// Show the cluster as a table.
    Status(StatusArgs),
    /// Start a local primary, backup and witness on loopback.
    Demo(DemoArgs),
    /// Measure write throughput and latency on a local 3-node cluster.
    Bench(crate::bench::BenchArgs),
}

/// Where the data directory is.
#[derive(Debug, Args, Clone)]
pub struct DirArg {
    /// Data directory of the node.
    #[arg(long, env = "TANDEM_DIR", default_value = "./tandem-data")]
    pub dir: PathBuf,
}

/// Listen and advertise addresses of a new node.
#[derive(Debug, Args, Clone)]
pub struct ListenArgs {
    /// Peer listener address (port 0: pick a free port now and keep it).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub peer_listen: SocketAddr,
    /// Address peers dial (default: the peer listen address).
    #[arg(long)]
    pub peer_advertise: Option<String>,
    /// Admin (HTTPS API and UI) listener address (port 0 as above).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub api_listen: SocketAddr,
    /// API base URL others use (default: https://<api listen address>).
    #[arg(long)]
    pub api_advertise: Option<String>,
    /// Build a Raft snapshot every this many log entries.
    #[arg(long, default_value_t = Tuning::default().snapshot_every)]
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, default_value_t = Tuning::default().keep_behind_snapshot)]
    pub keep_behind_snapshot: u64,
    /// sled page cache in MiB.
    #[arg(long, default_value_t = Tuning::default().cache_mb)]
    pub cache_mb: u64,
    /// Primary timeout in ms (Raft heartbeat and election timeouts derive
    /// from it); `init` also stores it in the replicated settings.
    #[arg(long, default_value_t = Tuning::default().primary_timeout_ms)]
    pub primary_timeout_ms: u64,
}

impl ListenArgs {
    fn listen(&self) -> Listen {
        Listen {
            peer_listen: self.peer_listen,
            peer_advertise: self.peer_advertise.clone(),
            api_listen: self.api_listen,
            api_advertise: self.api_advertise.clone(),
        }
    }

    fn tuning(&self) -> Tuning {
        Tuning {
            snapshot_every: self.snapshot_every,
            keep_behind_snapshot: self.keep_behind_snapshot,
            cache_mb: self.cache_mb,
            primary_timeout_ms: self.primary_timeout_ms,
        }
    }
}

/// `tandem init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Name of this node.
    #[arg(long, default_value = "a")]
    name: String,
    #[command(flatten)]
    listen: ListenArgs,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// `tandem run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Override the peer listen address from node.toml.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Override the admin listen address from node.toml.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
}

/// How the CLI reaches a node's API.
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// Data directory of a local node (API address and CA are read from it).
    #[arg(long, env = "TANDEM_DIR")]
    pub dir: Option<PathBuf>,
    /// API base URL (instead of --dir).
    #[arg(long, env = "TANDEM_API", requires = "ca")]
    pub api: Option<String>,
    /// CA certificate file (with --api).
    #[arg(long, env = "TANDEM_CA")]
    pub ca: Option<PathBuf>,
    /// Admin bearer token.
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: String,
}

impl ApiArgs {
    /// The client these arguments describe.
    ///
    /// # Errors
    /// Missing or unreadable directory or CA.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        match (&self.api, &self.ca, &self.dir) {
            (Some(api), Some(ca), _) => {
                let ca = std::fs::read_to_string(ca)
                    .map_err(|e| anyhow::anyhow!("reading CA file {}: {e}", ca.display()))?;
                ApiClient::new(api, &ca, Some(self.token.clone()))
            }
            (_, _, Some(dir)) => ApiClient::for_dir(dir, Some(self.token.clone())),
            _ => anyhow::bail!("say which node: --dir DIR, or --api URL --ca FILE"),
        }
    }
}

/// `tandem token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Lifetime of the token in seconds.
    #[arg(long, default_value_t = 900)]
    ttl: u64,
    /// The token is for a witness.
    #[arg(long)]
    witness: bool,
}

/// `tandem join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Name of this node.
    #[arg(long)]
    name: String,
    /// The one-time join token from `tandem token`.
    #[arg(long, env = "TANDEM_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// API address of a node of the cluster (https://host:port or host:port).
    #[arg(long)]
    peer: String,
    /// Join as a witness: votes, stores the log, never primary.
    #[arg(long)]
    witness: bool,
    #[command(flatten)]
    listen: ListenArgs,
}

/// `tandem status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

/// `tandem demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the three nodes and demo.json (default: a fresh temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: i32,
    /// The one-line reason.
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = match error.downcast_ref::<ClientError>() {
            Some(ClientError::Transport { .. }) => EXIT_UNREACHABLE,
            Some(ClientError::Api { status, .. }) if status.is_client_error() => EXIT_REFUSED,
            _ => 1,
        };
        Self { code, error }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        anyhow::Error::from(e).into()
    }
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

/// Runs one command.
///
/// # Errors
/// A [`Failure`] carrying the exit code.
pub async fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Init(a) => {
            let out = crate::bootstrap::init(InitOptions {
                dir: a.dir.dir.clone(),
                name: a.name,
                listen: a.listen.listen(),
                tuning: a.listen.tuning(),
            })
            .await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).map_err(anyhow::Error::from)?
                );
            } else {
                println!(
                    "cluster {} created in {}",
                    out.cluster_id,
                    a.dir.dir.display()
                );
                println!(
                    "admin token (shown once, stored hashed): {}",
                    out.admin_token
                );
                println!("CA certificate: {}", out.ca_file.display());
                println!("API: {}", out.api);
                println!("start it with: tandem run --dir {}", a.dir.dir.display());
            }
            Ok(())
        }
        Command::Run(a) => {
            let shutdown = shutdown_on_signals();
            crate::run(
                a.dir.dir,
                crate::RunOverrides {
                    peer_listen: a.peer_listen,
                    api_listen: a.api_listen,
                },
                shutdown,
            )
            .await?;
            Ok(())
        }
        Command::Token(a) => {
            let client = a.api.client()?;
            let body = json!({
                "ttl_secs": a.ttl,
                "kind": if a.witness { "witness" } else { "appliance" },
            });
            let v: Value = client
                .call_leader(Method::POST, "/api/v1/join-tokens", Some(&body))
                .await?;
            let token = v.get("token").and_then(Value::as_str).unwrap_or_default();
            println!("{token}");
            Ok(())
        }
        Command::Join(a) => {
            let out = crate::bootstrap::join(JoinOptions {
                dir: a.dir.dir.clone(),
                name: a.name,
                witness: a.witness,
                token: a.token,
                peer: a.peer,
                listen: a.listen.listen(),
                tuning: a.listen.tuning(),
            })
            .await
            .map_err(|e| {
                let refused = e.to_string().starts_with("join refused");
                Failure {
                    code: if refused { EXIT_REFUSED } else { 1 },
                    error: e,
                }
            })?;
            println!(
                "joined cluster {} as node {}; start it with: tandem run --dir {}",
                out.cluster_id,
                out.node_id,
                a.dir.dir.display()
            );
            Ok(())
        }
        Command::Status(a) => {
            let client = a.api.client()?;
            let v: Value = client.get("/api/v1/cluster").await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?
                );
            } else {
                print!("{}", render_status(&v));
            }
            Ok(())
        }
        Command::Demo(a) => {
            crate::demo::run_demo(a.dir, shutdown_on_signals()).await?;
            Ok(())
        }
        Command::Bench(a) => {
            crate::bench::run_bench(a).await?;
            Ok(())
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The cluster view as a readable table.
pub fn render_status(v: &Value) -> String {
    let leader = v.get("leader").and_then(Value::as_u64);
    let mut out = format!(
        "cluster {}  term {}  leader {}\n",
        cell(v.get("cluster_id").unwrap_or(&Value::Null)),
        cell(v.get("term").unwrap_or(&Value::Null)),
        leader.map_or("none".to_string(), |l| l.to_string()),
    );
    let header = [
        "ID",
        "NAME",
        "KIND",
        "ROLE",
        "PEER",
        "API",
        "LAST LOG",
        "COMMITTED",
        "APPLIED",
        "REACHABLE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let empty = Vec::new();
    for m in v.get("members").and_then(Value::as_array).unwrap_or(&empty) {
        let id = m.get("id").and_then(Value::as_u64);
        let voter = m.get("voter").and_then(Value::as_bool).unwrap_or(false);
        let role = if id.is_some() && id == leader {
            "leader"
        } else if voter {
            "voter"
        } else {
            "learner"
        };
        let g = |k: &str| cell(m.get(k).unwrap_or(&Value::Null));
        rows.push(vec![
            g("id"),
            g("name"),
            g("kind"),
            role.to_string(),
            g("peer_addr"),
            g("api_addr"),
            g("last_log_index"),
            g("committed_index"),
            g("applied_index"),
            g("reachable"),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Polls `probe` until it returns `Some`, at most `attempts` times, `every` apart.
pub async fn poll<T, F, Fut>(attempts: u32, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..attempts {
        if let Some(v) = probe().await {
            return Some(v);
        }
        tokio::time::sleep(every).await;
    }
    None
}
