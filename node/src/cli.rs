//! The `tandem` command line (clap). `main` parses, installs tracing and
//! calls [`execute`].
//!
//! Exit codes scripts can rely on: 0 success; 1 failure (one line on
//! stderr says why; also a `sync --verify` whose digests differ); 2 usage
//! error (from clap, a malformed `KEY=VALUE`, or a `swap`/`break`/`rejoin`
//! without `--yes` when stdin is not a terminal); 3 the cluster refused the
//! request (any 4xx answer: bad token, not allowed, invalid settings, an
//! action refused in the current situation with 409…); 4 the node could
//! not be reached.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
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
use crate::util::now_ms;
use tandem_web::{
    BreakOutcome, HistoryPage, ReadinessView, SettingsUpdate, SettingsView, SharedIpView,
    StatusView, SwapOutcome, SwapRequest, SyncReport, SyncRequest,
};

/// Exit code: usage error.
pub const EXIT_USAGE: i32 = 2;
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
    /// Show the relationship as this node sees it (`--members`: the cluster table).
    Status(StatusArgs),
    /// Swap the roles of primary and backup (planned unless --force).
    Swap(SwapArgs),
    /// Bring the backup up to every committed entry now (--verify: compare digests).
    Sync(SyncArgs),
    /// End the relationship: each side becomes standalone with its own copy.
    Break(ConfirmArgs),
    /// Take this node back into the relationship as the backup (discards its copy).
    Rejoin(ConfirmArgs),
    /// Show or change the replicated relationship settings.
    Settings(SettingsArgs),
    /// Show the status history, newest first.
    History(HistoryArgs),
    /// Would the backup take over if the primary died now, after how long, losing what?
    Readiness(ReadinessArgs),
    /// Start a local primary, backup and witness on loopback.
    Demo(DemoArgs),
    /// Internal: the shared-IP guard `tandem run` starts (see `ip_guard`).
    #[command(name = "shared-ip-guard", hide = true)]
    SharedIpGuard,
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
    /// Build a Raft snapshot after this many log entries (or after as many
    /// as the last snapshot held records, if more; at most 16 times this).
    #[arg(long, default_value_t = Tuning::default().snapshot_every)]
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, default_value_t = Tuning::default().keep_behind_snapshot)]
    pub keep_behind_snapshot: u64,
    /// sled page cache in MiB (at least 1).
    #[arg(long, default_value_t = Tuning::default().cache_mb,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_mb: u64,
    /// Free space in MiB the data directory's filesystem keeps: below it
    /// application writes (config, sessions) are refused with 507 (0: no
    /// check).
    #[arg(long, default_value_t = Tuning::default().min_free_mb)]
    pub min_free_mb: u64,
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
            min_free_mb: self.min_free_mb,
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
    /// PEM certificate chain (leaf first) the admin listener presents instead
    /// of the node certificate (overrides `[admin_tls]` of node.toml;
    /// re-read on SIGHUP).
    #[arg(long, value_name = "FILE", requires = "admin_key")]
    admin_cert: Option<PathBuf>,
    /// PEM private key of --admin-cert.
    #[arg(long, value_name = "FILE", requires = "admin_cert")]
    admin_key: Option<PathBuf>,
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
    /// Who is acting, recorded in the status history (default: $USER, else "cli").
    #[arg(long, value_name = "NAME", value_parser = parse_actor)]
    pub actor: Option<String>,
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
        .map(|c| c.with_actor(self.actor.clone().unwrap_or_else(default_actor)))
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
    /// Show the cluster members table (GET /api/v1/cluster) instead.
    #[arg(long)]
    members: bool,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

/// `--yes` of the actions that change roles.
#[derive(Debug, Args, Clone, Copy)]
pub struct YesArg {
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

/// `tandem swap`.
#[derive(Debug, Args)]
pub struct SwapArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Pull a full data sync (by snapshot if need be) before swapping.
    #[arg(long)]
    pull_sync: bool,
    /// Swap even if the peer cannot be contacted (forced promotion: raises
    /// the epoch and is recorded as forced).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    confirm: YesArg,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// `tandem sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Compare state digests of both sides at one applied index afterwards
    /// (exit 1 when they differ).
    #[arg(long)]
    verify: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `tandem break` and `tandem rejoin`.
#[derive(Debug, Args)]
pub struct ConfirmArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    confirm: YesArg,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// `tandem settings`.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// What to do.
    #[command(subcommand)]
    command: SettingsCommand,
}

/// `tandem settings show|set`.
#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Show the replicated settings.
    Show(SettingsShowArgs),
    /// Change some settings: read them, change the named fields, write
    /// them back if nobody changed them meanwhile.
    #[command(after_help = SETTINGS_KEYS_HELP)]
    Set(SettingsSetArgs),
}

const SETTINGS_KEYS_HELP: &str = "\
Keys and values:
  primary_timeout_ms=MS        300..=60000
  auto_failover=BOOL           true|false (also on|off, yes|no, 1|0)
  test_ips=IP[,IP:PORT...]     comma separated, at most 8; empty clears
  verify_interval_secs=SECS    0 (off) or 60..=604800
  bandwidth_limit_bps=BYTES    0 (unlimited) or at least 65536
  backup_operations=BOOL       true|false
  shared_ips=JSON              e.g. '[{\"address\":\"192.0.2.10/24\",\"interfaces\":{\"a\":\"eth0\",\"b\":\"eth0\"}}]'";

/// `tandem settings show`.
#[derive(Debug, Args)]
pub struct SettingsShowArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

/// `tandem settings set`.
#[derive(Debug, Args)]
pub struct SettingsSetArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the new settings as JSON.
    #[arg(long)]
    json: bool,
    /// The changes, e.g. `primary_timeout_ms=1500 auto_failover=false`.
    #[arg(value_name = "KEY=VALUE", required = true, value_parser = parse_assignment)]
    changes: Vec<Assignment>,
}

/// `tandem history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// At most this many events (1..=500; the server's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=500))]
    limit: Option<u64>,
    /// Only events of this kind (swap, role_change, sync, settings_change,
    /// peer_lost, peer_found, break, forced_promotion…).
    #[arg(long, value_name = "K", value_parser = parse_kind)]
    kind: Option<String>,
    /// Only events older than this sequence number (the next page).
    #[arg(long, value_name = "SEQ")]
    before: Option<u64>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

/// `tandem readiness`.
#[derive(Debug, Args)]
pub struct ReadinessArgs {
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

/// `--admin-cert`/`--admin-key` as a config section, with paths made
/// absolute against the current directory (a relative path in `node.toml`
/// is relative to the data directory instead).
fn admin_tls_flags(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<crate::config::AdminTlsConfig>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    Ok(Some(crate::config::AdminTlsConfig {
        cert: std::path::absolute(&cert).map_err(|e| anyhow::anyhow!("--admin-cert: {e}"))?,
        key: std::path::absolute(&key).map_err(|e| anyhow::anyhow!("--admin-key: {e}"))?,
    }))
}

/// Runs one command.
///
/// # Errors
/// A [`Failure`] carrying the exit code.
pub async fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::SharedIpGuard => Ok(crate::shared_ip::guard::run_guard().await?),
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
                println!(
                    "web UI user {:?}, one-time password (shown once, stored hashed): {}",
                    out.admin_user, out.admin_password
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
                    admin_tls: admin_tls_flags(a.admin_cert, a.admin_key)?,
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
        Command::Status(a) if a.members => {
            let client = a.api.client()?;
            let v: Value = client.get("/api/v1/cluster").await?;
            if a.json {
                print_json(&v)?;
            } else {
                print!("{}", render_status(&v));
            }
            Ok(())
        }
        Command::Status(a) => {
            let client = a.api.client()?;
            let v: Value = client.get("/api/v1/status").await?;
            if a.json {
                print_json(&v)?;
            } else {
                let view: StatusView = serde_json::from_value(v)
                    .map_err(|e| anyhow::anyhow!("unexpected status answer: {e}"))?;
                print!("{}", render_relationship(&view, now_ms()));
            }
            Ok(())
        }
        Command::Swap(a) => swap(a).await,
        Command::Sync(a) => sync(a).await,
        Command::Break(a) => break_or_rejoin(a, false).await,
        Command::Rejoin(a) => break_or_rejoin(a, true).await,
        Command::Settings(a) => match a.command {
            SettingsCommand::Show(a) => {
                let client = a.api.client()?;
                let v: Value = client.get("/api/v1/settings").await?;
                if a.json {
                    print_json(&v)?;
                } else {
                    let view: SettingsView = serde_json::from_value(v)
                        .map_err(|e| anyhow::anyhow!("unexpected settings answer: {e}"))?;
                    print!("{}", render_settings(&view, ""));
                }
                Ok(())
            }
            SettingsCommand::Set(a) => settings_set(a).await,
        },
        Command::History(a) => {
            let client = a.api.client()?;
            let mut query = Vec::new();
            if let Some(l) = a.limit {
                query.push(format!("limit={l}"));
            }
            if let Some(k) = &a.kind {
                query.push(format!("kind={k}"));
            }
            if let Some(b) = a.before {
                query.push(format!("before={b}"));
            }
            let path = if query.is_empty() {
                "/api/v1/history".to_string()
            } else {
                format!("/api/v1/history?{}", query.join("&"))
            };
            let v: Value = client.get(&path).await?;
            if a.json {
                print_json(&v)?;
            } else {
                let page: HistoryPage = serde_json::from_value(v)
                    .map_err(|e| anyhow::anyhow!("unexpected history answer: {e}"))?;
                print!("{}", render_history(&page));
            }
            Ok(())
        }
        Command::Readiness(a) => {
            let client = a.api.client()?;
            let v: Value = client.get("/api/v1/readiness").await?;
            if a.json {
                print_json(&v)?;
            } else {
                let view: ReadinessView = serde_json::from_value(v)
                    .map_err(|e| anyhow::anyhow!("unexpected readiness answer: {e}"))?;
                print!("{}", render_readiness(&view));
            }
            Ok(())
        }
        Command::Demo(a) => {
            crate::demo::run_demo(a.dir, shutdown_on_signals()).await?;
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
    out.push_str(&table(&rows));
    out
}

/// Rows (the first is the header) as left-aligned columns two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
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

// ---- relationship commands ------------------------------------------------

/// How long the CLI waits for an action (swap, sync, break, rejoin): a sync
/// may stream a large snapshot at a limited bandwidth.
const ACTION_TIMEOUT: Duration = Duration::from_secs(900);

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?
    );
    Ok(())
}

fn usage(message: String) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: anyhow::anyhow!(message),
    }
}

fn is_actor_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | ':' | '-')
}

/// Checks `--actor` as the server does: 1..=64 characters of
/// `A-Z a-z 0-9 . _ @ : -`.
fn parse_actor(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 64 && s.chars().all(is_actor_char) {
        Ok(s.to_string())
    } else {
        Err("an actor is 1..=64 characters of A-Z a-z 0-9 . _ @ : -".into())
    }
}

/// The actor when `--actor` is absent: `$USER` when it is a valid actor
/// name, else `cli`.
fn default_actor() -> String {
    std::env::var("USER")
        .ok()
        .and_then(|u| parse_actor(&u).ok())
        .unwrap_or_else(|| "cli".to_string())
}

/// Checks `--kind` as the server does.
fn parse_kind(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("a kind is 1..=64 characters of A-Z a-z 0-9 . _ -".into())
    }
}

/// One `KEY=VALUE` of `tandem settings set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// `primary_timeout_ms=MS`.
    PrimaryTimeoutMs(u64),
    /// `auto_failover=BOOL`.
    AutoFailover(bool),
    /// `test_ips=A,B`.
    TestIps(Vec<String>),
    /// `verify_interval_secs=SECS`.
    VerifyIntervalSecs(u64),
    /// `bandwidth_limit_bps=BYTES`.
    BandwidthLimitBps(u64),
    /// `backup_operations=BOOL`.
    BackupOperations(bool),
    /// `shared_ips=JSON`.
    SharedIps(Vec<SharedIpView>),
}

const SETTINGS_KEYS: &str = "primary_timeout_ms, auto_failover, test_ips, \
     verify_interval_secs, bandwidth_limit_bps, backup_operations, shared_ips";

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!(
            "{key} takes true or false (also on/off, yes/no, 1/0), not {v:?}"
        )),
    }
}

fn parse_u64(key: &str, v: &str) -> Result<u64, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{key} takes a whole number, not {v:?}"))
}

/// Parses one `KEY=VALUE` (syntax only; the cluster checks the ranges).
fn parse_assignment(s: &str) -> Result<Assignment, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?} (keys: {SETTINGS_KEYS})"))?;
    let key = key.trim();
    Ok(match key {
        "primary_timeout_ms" => Assignment::PrimaryTimeoutMs(parse_u64(key, value)?),
        "auto_failover" => Assignment::AutoFailover(parse_bool(key, value)?),
        "test_ips" => Assignment::TestIps(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        "verify_interval_secs" => Assignment::VerifyIntervalSecs(parse_u64(key, value)?),
        "bandwidth_limit_bps" => Assignment::BandwidthLimitBps(parse_u64(key, value)?),
        "backup_operations" => Assignment::BackupOperations(parse_bool(key, value)?),
        "shared_ips" => Assignment::SharedIps(serde_json::from_str(value).map_err(|e| {
            format!(
                "shared_ips takes a JSON array of {{\"address\": \"IP/PREFIX\", \
                 \"interfaces\": {{\"NODE\": \"IFACE\"}}}}: {e}"
            )
        })?),
        other => return Err(format!("unknown setting {other:?} (keys: {SETTINGS_KEYS})")),
    })
}

impl Assignment {
    fn apply(&self, u: &mut SettingsUpdate) {
        match self {
            Self::PrimaryTimeoutMs(v) => u.primary_timeout_ms = *v,
            Self::AutoFailover(v) => u.auto_failover = *v,
            Self::TestIps(v) => u.test_ips.clone_from(v),
            Self::VerifyIntervalSecs(v) => u.verify_interval_secs = *v,
            Self::BandwidthLimitBps(v) => u.bandwidth_limit_bps = *v,
            Self::BackupOperations(v) => u.backup_operations = *v,
            Self::SharedIps(v) => u.shared_ips.clone_from(v),
        }
    }
}

/// The whole update body for `view` as it is now.
fn update_from(view: &SettingsView) -> SettingsUpdate {
    SettingsUpdate {
        primary_timeout_ms: view.primary_timeout_ms,
        auto_failover: view.auto_failover,
        test_ips: view.test_ips.clone(),
        verify_interval_secs: view.verify_interval_secs,
        bandwidth_limit_bps: view.bandwidth_limit_bps,
        backup_operations: view.backup_operations,
        shared_ips: view.shared_ips.clone(),
        if_version: Some(view.version),
    }
}

async fn settings_set(a: SettingsSetArgs) -> Result<(), Failure> {
    let client = a.api.client()?;
    let current: SettingsView = client.get("/api/v1/settings").await?;
    let mut update = update_from(&current);
    for change in &a.changes {
        change.apply(&mut update);
    }
    let written: Result<SettingsView, ClientError> = client
        .call_leader(Method::PUT, "/api/v1/settings", Some(&update))
        .await;
    let view = match written {
        Ok(v) => v,
        Err(ClientError::Api {
            status,
            kind,
            fields,
            message,
            ..
        }) if !fields.is_empty() || kind.as_deref() == Some("invalid") => {
            for (field, problem) in &fields {
                eprintln!("  {field}: {problem}");
            }
            return Err(Failure {
                code: EXIT_REFUSED,
                error: anyhow::anyhow!("the cluster refused the settings ({status}): {message}"),
            });
        }
        Err(ClientError::Api {
            status, message, ..
        }) if status == reqwest::StatusCode::CONFLICT => {
            return Err(Failure {
                code: EXIT_REFUSED,
                error: anyhow::anyhow!(
                    "{status}: {message} (the settings changed since version {}; run the command again)",
                    current.version
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        return print_json(&view);
    }
    let before = render_settings(&current, "");
    let after = render_settings(&view, "");
    println!("settings updated to version {}", view.version);
    // Show the lines that changed (the first line is the version line).
    for (old, new) in before.lines().skip(1).zip(after.lines().skip(1)) {
        if old != new {
            println!("  {}   (was {})", new.trim(), value_part(old));
        }
    }
    Ok(())
}

/// The value column of a `render_settings` line.
fn value_part(line: &str) -> &str {
    line.trim()
        .split_once(char::is_whitespace)
        .map_or("", |(_, v)| v.trim())
}

/// Exits 2 unless `--yes` was given or stdin is a terminal (where the
/// command will ask). Runs before anything is contacted.
fn check_confirmable(yes: bool, command: &str) -> Result<(), Failure> {
    if yes || std::io::stdin().is_terminal() {
        Ok(())
    } else {
        Err(usage(format!(
            "`tandem {command}` changes the relationship and stdin is not a terminal to confirm on; pass --yes to proceed"
        )))
    }
}

/// Prints `plan` and asks on the terminal; `Ok` when the answer is yes.
fn ask(plan: &str) -> Result<(), Failure> {
    eprintln!("{plan}");
    eprint!("Proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            error: anyhow::anyhow!("not confirmed; nothing was done"),
        })
    }
}

/// `name (node id)` for the node ids the status of `client`'s node knows.
fn names(status: Option<&StatusView>) -> BTreeMap<u64, String> {
    let mut m = BTreeMap::new();
    if let Some(s) = status {
        m.insert(s.this_host.id, s.this_host.name.clone());
        for p in &s.peers {
            m.insert(p.id, p.name.clone());
        }
    }
    m
}

fn node_label(names: &BTreeMap<u64, String>, id: u64) -> String {
    match names.get(&id) {
        Some(n) if !n.is_empty() => format!("{n} (node {id})"),
        _ => format!("node {id}"),
    }
}

fn swap_plan(s: Option<&StatusView>, a: &SwapArgs) -> String {
    let mut plan = String::new();
    let n = names(s);
    match s {
        Some(s) => {
            let me = node_label(&n, s.this_host.id);
            let other = s
                .peers
                .iter()
                .find(|p| p.kind == "appliance")
                .map(|p| node_label(&n, p.id));
            let other = other.as_deref().unwrap_or("the other appliance");
            let _ = match s.this_host.role.as_str() {
                "primary" => writeln!(
                    plan,
                    "{me} is the primary: it hands the primary role to {other} and becomes the backup."
                ),
                "backup" => writeln!(
                    plan,
                    "{me} is the backup: it becomes the primary and {other} becomes the backup."
                ),
                role => writeln!(plan, "{me} is {role}; the cluster will say whether it can swap."),
            };
        }
        None => plan.push_str("The primary and backup swap roles.\n"),
    }
    if a.pull_sync {
        plan.push_str("A full data sync is pulled first (by snapshot if need be).\n");
    }
    if a.force {
        plan.push_str(
            "FORCED: if the peer cannot be contacted this node takes over alone; the epoch is \
             raised and recorded as forced, and writes the old primary never replicated are \
             exported on its side, not merged.\n",
        );
    } else {
        plan.push_str(
            "Writes pause until the new primary holds every committed entry; shared IPs move to it.\n",
        );
    }
    plan.trim_end().to_string()
}

async fn swap(a: SwapArgs) -> Result<(), Failure> {
    check_confirmable(a.confirm.yes, "swap")?;
    let client = a.api.client()?;
    let before: Option<StatusView> = client.get("/api/v1/status").await.ok();
    if !a.confirm.yes {
        ask(&swap_plan(before.as_ref(), &a))?;
    }
    let req = SwapRequest {
        pull_sync: a.pull_sync,
        force: a.force,
    };
    let out: SwapOutcome = client
        .clone()
        .with_timeout(ACTION_TIMEOUT)
        .call(Method::POST, "/api/v1/relationship/swap", Some(&req))
        .await?;
    if a.json {
        return print_json(&out);
    }
    let after: Option<StatusView> = client.get("/api/v1/status").await.ok();
    let mut n = names(before.as_ref());
    n.extend(names(after.as_ref()));
    print!("{}", render_swap(&out, &n));
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn render_swap(out: &SwapOutcome, n: &BTreeMap<u64, String>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "new primary:  {}", node_label(n, out.new_primary));
    let _ = writeln!(
        s,
        "was:          {}",
        out.previous_primary
            .map_or("none".to_string(), |p| node_label(n, p))
    );
    let _ = writeln!(s, "epoch:        {}", out.epoch);
    let _ = writeln!(s, "duration:     {} ms", out.duration_ms);
    let _ = writeln!(s, "forced:       {}", yes_no(out.forced));
    let _ = writeln!(s, "pull sync:    {}", yes_no(out.pull_sync));
    if let Some(sync) = &out.sync {
        for line in render_sync(sync).lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

async fn sync(a: SyncArgs) -> Result<(), Failure> {
    let client = a.api.client()?;
    let out: SyncReport = client
        .clone()
        .with_timeout(ACTION_TIMEOUT)
        .call(
            Method::POST,
            "/api/v1/relationship/sync",
            Some(&SyncRequest { verify: a.verify }),
        )
        .await?;
    if a.json {
        print_json(&out)?;
    } else {
        print!("{}", render_sync(&out));
    }
    match &out.verify {
        Some(v) if !v.matches => Err(Failure {
            code: 1,
            error: anyhow::anyhow!(
                "state digests differ at index {}: local {} peer {}",
                v.index,
                v.local_digest,
                v.peer_digest
            ),
        }),
        _ => Ok(()),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

fn render_sync(r: &SyncReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "backup:       node {}", r.backup);
    let _ = writeln!(s, "bytes:        {}", r.bytes);
    let _ = writeln!(s, "entries:      {}", r.entries);
    let _ = writeln!(s, "duration:     {} ms", r.duration_ms);
    let _ = writeln!(s, "indexes:      {} -> {}", opt(r.from_index), r.to_index);
    let _ = writeln!(s, "snapshot:     {}", yes_no(r.snapshot));
    if let Some(v) = &r.verify {
        let _ = writeln!(s, "verify index: {}", v.index);
        let _ = writeln!(s, "local digest: {}", v.local_digest);
        let _ = writeln!(s, "peer digest:  {}", v.peer_digest);
        let _ = writeln!(
            s,
            "verify:       {}",
            if v.matches { "MATCH" } else { "MISMATCH" }
        );
    }
    s
}

async fn break_or_rejoin(a: ConfirmArgs, rejoin: bool) -> Result<(), Failure> {
    let command = if rejoin { "rejoin" } else { "break" };
    check_confirmable(a.confirm.yes, command)?;
    let client = a.api.client()?;
    let status: Option<StatusView> = client.get("/api/v1/status").await.ok();
    if !a.confirm.yes {
        let me = status.as_ref().map_or("This node".to_string(), |s| {
            format!(
                "{} ({})",
                node_label(&names(Some(s)), s.this_host.id),
                s.this_host.role
            )
        });
        let plan = if rejoin {
            format!(
                "{me} discards its copy of the data and resyncs from the primary as the backup."
            )
        } else {
            format!(
                "This ends the relationship of {me}: each side becomes standalone with its own \
                 copy of the data; the primary keeps serving and its shared IPs, the backup \
                 releases them. Pairing again later makes one side discard its data."
            )
        };
        ask(&plan)?;
    }
    let path = if rejoin {
        "/api/v1/relationship/rejoin"
    } else {
        "/api/v1/relationship/break"
    };
    let out: BreakOutcome = client
        .clone()
        .with_timeout(ACTION_TIMEOUT)
        .call(Method::POST, path, Some(&json!({})))
        .await?;
    if a.json {
        return print_json(&out);
    }
    let n = names(status.as_ref());
    let former: Vec<String> = out
        .former_peers
        .iter()
        .map(|&p| node_label(&n, p))
        .collect();
    println!("role now:     {}", out.role);
    println!(
        "former peers: {}",
        if former.is_empty() {
            "-".to_string()
        } else {
            former.join(", ")
        }
    );
    Ok(())
}

/// `ms` since the Unix epoch as ISO 8601 UTC with milliseconds.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// How long ago `then_ms` was, e.g. `0.3 s ago`, `5 min ago`.
pub fn age(then_ms: u64, now_ms: u64) -> String {
    let d = now_ms.saturating_sub(then_ms);
    if d < 60_000 {
        format!("{}.{} s ago", d / 1000, d % 1000 / 100)
    } else if d < 3_600_000 {
        format!("{} min ago", d / 60_000)
    } else if d < 86_400_000 {
        format!("{} h ago", d / 3_600_000)
    } else {
        format!("{} d ago", d / 86_400_000)
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The settings, one `key value` line each after a version line, every
/// line starting with `indent`.
pub fn render_settings(v: &SettingsView, indent: &str) -> String {
    let mut s = String::new();
    let mut version = format!("version {}", v.version);
    if v.version == 0 {
        version.push_str(" (defaults, never changed)");
    } else {
        let by = v.updated_by.as_deref().unwrap_or("?");
        let at = v.updated_at_ms.map_or("?".to_string(), iso8601);
        let _ = write!(version, " (by {by} at {at})");
    }
    let _ = writeln!(s, "{indent}{version}");
    let shared = if v.shared_ips.is_empty() {
        "-".to_string()
    } else {
        v.shared_ips
            .iter()
            .map(|ip| {
                let ifs: Vec<String> = ip
                    .interfaces
                    .iter()
                    .map(|(node, iface)| format!("{node}:{iface}"))
                    .collect();
                format!("{} [{}]", ip.address, ifs.join(" "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = [
        ("primary_timeout_ms", v.primary_timeout_ms.to_string()),
        ("auto_failover", on_off(v.auto_failover).to_string()),
        (
            "test_ips",
            if v.test_ips.is_empty() {
                "-".to_string()
            } else {
                v.test_ips.join(",")
            },
        ),
        (
            "verify_interval_secs",
            if v.verify_interval_secs == 0 {
                "0 (off)".to_string()
            } else {
                v.verify_interval_secs.to_string()
            },
        ),
        (
            "bandwidth_limit_bps",
            if v.bandwidth_limit_bps == 0 {
                "0 (unlimited)".to_string()
            } else {
                v.bandwidth_limit_bps.to_string()
            },
        ),
        ("backup_operations", on_off(v.backup_operations).to_string()),
        ("shared_ips", shared),
    ];
    for (k, val) in rows {
        let _ = writeln!(s, "{indent}{k:<22}{val}");
    }
    s
}

/// `GET /api/v1/status` as a readable block.
pub fn render_relationship(v: &StatusView, now_ms: u64) -> String {
    let h = &v.this_host;
    let mut s = String::from("This host\n");
    let mut field = |k: &str, val: String| {
        let _ = writeln!(s, "  {k:<15}{val}");
    };
    field("name", format!("{} (node {}, {})", h.name, h.id, h.kind));
    field("role", h.role.clone());
    field("epoch", h.epoch.to_string());
    field("term", h.term.to_string());
    field("leader", opt(h.leader));
    field(
        "indexes",
        format!(
            "last log {}, committed {}, applied {}",
            opt(h.last_log_index),
            opt(h.committed_index),
            opt(h.applied_index)
        ),
    );
    field(
        "lease",
        if h.lease_valid { "valid" } else { "none" }.to_string(),
    );
    field(
        "primary since",
        h.primary_since_ms.map_or("-".to_string(), |t| {
            format!("{} ({})", iso8601(t), age(t, now_ms))
        }),
    );
    if let Some(site) = &h.site {
        field("site", site.clone());
    }
    field(
        "shared IPs",
        if h.shared_ips_held.is_empty() {
            "-".to_string()
        } else {
            h.shared_ips_held.join(", ")
        },
    );
    if h.notes.is_empty() {
        field("notes", "-".to_string());
    } else {
        for (i, note) in h.notes.iter().enumerate() {
            field(if i == 0 { "notes" } else { "" }, format!("- {note}"));
        }
    }
    s.push_str("\nPeer hosts\n");
    if v.peers.is_empty() {
        s.push_str("  (none)\n");
    } else {
        let mut rows = vec![[
            "NAME",
            "ID",
            "KIND",
            "ROLE",
            "VOTER",
            "REACHABLE",
            "LAST CONTACT",
            "LAG ENTRIES",
            "LAG BYTES",
            "LAG MS",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()];
        for p in &v.peers {
            rows.push(vec![
                p.name.clone(),
                p.id.to_string(),
                p.kind.clone(),
                p.role.clone(),
                yes_no(p.voter).to_string(),
                yes_no(p.reachable).to_string(),
                p.last_contact_ms
                    .map_or("never".to_string(), |t| age(t, now_ms)),
                opt(p.lag_entries),
                opt(p.lag_bytes),
                opt(p.lag_ms),
            ]);
        }
        for line in table(&rows).lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    let n = {
        let mut n = BTreeMap::new();
        n.insert(h.id, h.name.clone());
        for p in &v.peers {
            n.insert(p.id, p.name.clone());
        }
        n
    };
    let _ = writeln!(
        s,
        "\nTopology {}, primary {}, epoch {}",
        v.topology,
        v.primary.map_or("none".to_string(), |p| node_label(&n, p)),
        v.epoch
    );
    s.push_str("\nSettings ");
    s.push_str(render_settings(&v.settings, "  ").trim_start());
    s
}

/// A history page as a table, newest first.
pub fn render_history(page: &HistoryPage) -> String {
    let mut rows = vec![["SEQ", "TIME (UTC)", "NODE", "KIND", "ACTOR", "DETAILS"]
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()];
    for e in &page.items {
        rows.push(vec![
            e.seq.to_string(),
            iso8601(e.at_ms),
            e.node_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| e.node.to_string()),
            e.kind.clone(),
            e.actor.clone(),
            match &e.details {
                Value::Null => "-".to_string(),
                d => d.to_string(),
            },
        ]);
    }
    let mut s = if page.items.is_empty() {
        "no events\n".to_string()
    } else {
        table(&rows)
    };
    if let Some(b) = page.next_before.filter(|&b| b > 0) {
        let _ = writeln!(
            s,
            "({} shown of {} recorded; older: --before {b})",
            page.items.len(),
            page.total
        );
    }
    s
}

/// The readiness answer as a readable block.
pub fn render_readiness(r: &ReadinessView) -> String {
    let mut s = String::new();
    let failover = if r.would_fail_over {
        match r.after_ms {
            Some(ms) => format!("yes, after {ms} ms"),
            None => "yes".to_string(),
        }
    } else {
        "NO".to_string()
    };
    let _ = writeln!(s, "would fail over: {failover}");
    let _ = writeln!(
        s,
        "data at risk:    {}",
        r.lag_entries
            .map_or("unknown".to_string(), |l| format!("{l} committed entries"))
    );
    let _ = writeln!(
        s,
        "certificates:    {}",
        if r.certificates_ok { "ok" } else { "NOT OK" }
    );
    let _ = writeln!(
        s,
        "shared IPs:      {}",
        if r.shared_ips_ok { "ok" } else { "NOT OK" }
    );
    if r.reasons.is_empty() {
        let _ = writeln!(s, "reasons:         -");
    } else {
        for (i, reason) in r.reasons.iter().enumerate() {
            let label = if i == 0 { "reasons:" } else { "" };
            let _ = writeln!(s, "{label:<17}- {reason}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }

    #[test]
    fn ages() {
        assert_eq!(age(1_000, 1_300), "0.3 s ago");
        assert_eq!(age(2_000, 1_000), "0.0 s ago");
        assert_eq!(age(0, 125_000), "2 min ago");
        assert_eq!(age(0, 7_300_000), "2 h ago");
    }

    #[test]
    fn assignments() {
        assert_eq!(
            parse_assignment("primary_timeout_ms=1500"),
            Ok(Assignment::PrimaryTimeoutMs(1500))
        );
        assert_eq!(
            parse_assignment("auto_failover=off"),
            Ok(Assignment::AutoFailover(false))
        );
        assert_eq!(
            parse_assignment("test_ips=10.0.0.1, 10.0.0.2:443"),
            Ok(Assignment::TestIps(vec![
                "10.0.0.1".into(),
                "10.0.0.2:443".into()
            ]))
        );
        assert_eq!(
            parse_assignment("test_ips="),
            Ok(Assignment::TestIps(vec![]))
        );
        let ips = parse_assignment(
            r#"shared_ips=[{"address":"192.0.2.10/24","interfaces":{"a":"eth0"}}]"#,
        );
        assert!(matches!(ips, Ok(Assignment::SharedIps(v)) if v.len() == 1));
        assert!(parse_assignment("primary_timeout_ms").is_err());
        assert!(parse_assignment("primary_timeout_ms=fast").is_err());
        assert!(parse_assignment("nope=1").is_err());
        assert!(parse_assignment("auto_failover=maybe").is_err());
        assert!(parse_assignment("shared_ips=[1]").is_err());
    }

    #[test]
    fn actors() {
        assert!(parse_actor("alice@ops").is_ok());
        assert!(parse_actor("").is_err());
        assert!(parse_actor("a b").is_err());
        assert!(parse_actor(&"x".repeat(65)).is_err());
    }
}
