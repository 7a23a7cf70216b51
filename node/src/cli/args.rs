//! The command line's shape: `Cli`, its commands and their arguments, and
//! the parsers clap calls for them (actors, token kinds, `KEY=VALUE`
//! settings). Nothing here runs anything.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bootstrap::Listen;
use crate::client::ApiClient;
use crate::config::Tuning;
use tandem_web::{SettingsUpdate, SharedIpView};

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
    Rejoin(RejoinArgs),
    /// Show or change the replicated relationship settings.
    Settings(SettingsArgs),
    /// Show the status history, newest first.
    History(HistoryArgs),
    /// Would the backup take over if the primary died now, after how long, losing what?
    Readiness(ReadinessArgs),
    /// Hold an appliance out of service (start, end, schedule, cancel, list).
    Maintenance(MaintenanceArgs),
    /// This node's certificate: `renew` it now (nodes also renew by
    /// themselves at two thirds of its life).
    Certs(CertsArgs),
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

/// Where a new node runs: its site and host identity.
#[derive(Debug, Args, Clone)]
pub struct PlaceArgs {
    /// Site (failure domain) of this node: a room, building or data centre.
    /// Two appliances on one site are refused at join unless
    /// --allow-same-site.
    #[arg(long)]
    pub site: Option<String>,
    /// Host identity: the machine or hypervisor this node runs on (default:
    /// derived from /etc/machine-id). Set it when appliances are virtual
    /// machines, to the hypervisor's name.
    #[arg(long, value_name = "NAME")]
    pub host_id: Option<String>,
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
    /// API base URL others use (default: `https://<api listen address>`).
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
    pub(crate) fn listen(&self) -> Listen {
        Listen {
            peer_listen: self.peer_listen,
            peer_advertise: self.peer_advertise.clone(),
            api_listen: self.api_listen,
            api_advertise: self.api_advertise.clone(),
        }
    }

    pub(crate) fn tuning(&self) -> Tuning {
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
    pub(crate) dir: DirArg,
    /// Name of this node.
    #[arg(long, default_value = "a")]
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) listen: ListenArgs,
    #[command(flatten)]
    pub(crate) place: PlaceArgs,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,
    /// Override the peer listen address from node.toml.
    #[arg(long)]
    pub(crate) peer_listen: Option<SocketAddr>,
    /// Override the admin listen address from node.toml.
    #[arg(long)]
    pub(crate) api_listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) the admin listener presents instead
    /// of the node certificate (overrides `[admin_tls]` of node.toml;
    /// re-read on SIGHUP).
    #[arg(long, value_name = "FILE", requires = "admin_key")]
    pub(crate) admin_cert: Option<PathBuf>,
    /// PEM private key of --admin-cert.
    #[arg(long, value_name = "FILE", requires = "admin_cert")]
    pub(crate) admin_key: Option<PathBuf>,
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
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TokenArgs {
    /// Without a subcommand: a one-time join token.
    #[command(subcommand)]
    pub(crate) action: Option<TokenAction>,
    #[command(flatten)]
    pub(crate) api: Option<ApiArgs>,
    /// Lifetime of the token in seconds.
    #[arg(long, default_value_t = 900)]
    pub(crate) ttl: u64,
    /// The token is for a witness.
    #[arg(long)]
    pub(crate) witness: bool,
    /// Instead of a join token: a one-time rejoin token for the node with
    /// this id (removed by a break or replaced by a forced promotion), to
    /// pass to `tandem rejoin --rejoin-token` on that node.
    #[arg(long, value_name = "NODE_ID", conflicts_with = "witness")]
    pub(crate) rejoin: Option<u64>,
}

/// `tandem token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Replace the admin token: prints the new one (shown once); the old
    /// one stops working at once on every node.
    RotateAdmin(ApiArgs),
}

/// `tandem join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,
    /// Name of this node.
    #[arg(long)]
    pub(crate) name: String,
    /// The one-time join token from `tandem token`.
    #[arg(long, env = "TANDEM_JOIN_TOKEN", hide_env_values = true)]
    pub(crate) token: String,
    /// API address of a node of the cluster (https://host:port or host:port).
    #[arg(long)]
    pub(crate) peer: String,
    /// Join as a witness: votes, stores the log, never primary.
    #[arg(long)]
    pub(crate) witness: bool,
    #[command(flatten)]
    pub(crate) listen: ListenArgs,
    #[command(flatten)]
    pub(crate) place: PlaceArgs,
    /// Join an appliance that shares its site or host with the other
    /// appliance (refused without it: one failure there would take both;
    /// status and readiness keep warning).
    #[arg(long)]
    pub(crate) allow_same_site: bool,
}

/// `tandem status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Show the cluster members table (GET /api/v1/cluster) instead.
    #[arg(long)]
    pub(crate) members: bool,
    /// Print the raw JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--yes` of the actions that change roles.
#[derive(Debug, Args, Clone, Copy)]
pub struct YesArg {
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

/// `tandem swap`.
#[derive(Debug, Args)]
pub struct SwapArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Pull a full data sync (by snapshot if need be) before swapping.
    #[arg(long)]
    pub(crate) pull_sync: bool,
    /// Swap even if the peer cannot be contacted (forced promotion: raises
    /// the epoch and is recorded as forced).
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) confirm: YesArg,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Compare state digests of both sides at one applied index afterwards
    /// (exit 1 when they differ).
    #[arg(long)]
    pub(crate) verify: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem break` (and, with its token, `tandem rejoin`).
#[derive(Debug, Args)]
pub struct ConfirmArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    #[command(flatten)]
    pub(crate) confirm: YesArg,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) action: CertsAction,
}

/// `tandem certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// Renew this node's certificate now (new key, same names); every new
    /// connection presents it, no restart.
    Renew(ApiArgs),
}

/// `tandem rejoin`.
#[derive(Debug, Args)]
pub struct RejoinArgs {
    #[command(flatten)]
    pub(crate) confirm: ConfirmArgs,
    /// The one-time rejoin token made for this node on the primary
    /// (`tandem token --rejoin <this node's id>` there).
    #[arg(long, value_name = "TOKEN")]
    pub(crate) rejoin_token: String,
}

/// `tandem settings`.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: SettingsCommand,
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

pub(crate) const SETTINGS_KEYS_HELP: &str = "\
Keys and values:
  primary_timeout_ms=MS        300..=60000
  auto_failover=BOOL           true|false (also on|off, yes|no, 1|0)
  test_ips=IP[,IP:PORT...]     comma separated, at most 8; empty clears
  verify_interval_secs=SECS    0 (off) or 60..=604800
  bandwidth_limit_bps=BYTES    0 (unlimited) or at least 65536
  backup_operations=BOOL       true|false
  shared_ips=JSON              e.g. '[{\"address\":\"192.0.2.10/24\",\"interfaces\":{\"a\":\"eth0\",\"b\":\"eth0\"}}]'
  checks=JSON                  service checks, e.g. '[{\"name\":\"web\",\"kind\":\"http\",\"target\":\"http://127.0.0.1/\"}]'
  check_hold_down_secs=SECS    0..=86400
  failback=off|NODE[:SECS]     off, or the preferred node and its delay (default 60 s)
  maintenance_max_minutes=MIN  1..=525600
  maintenance_reminder_secs=S  0..=604800";

/// `tandem settings show`.
#[derive(Debug, Args)]
pub struct SettingsShowArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Print the raw JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem settings set`.
#[derive(Debug, Args)]
pub struct SettingsSetArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Print the new settings as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// The changes, e.g. `primary_timeout_ms=1500 auto_failover=false`.
    #[arg(value_name = "KEY=VALUE", required = true, value_parser = parse_assignment)]
    pub(crate) changes: Vec<Assignment>,
}

/// `tandem history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// At most this many events (1..=500; the server's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=500))]
    pub(crate) limit: Option<u64>,
    /// Only events of this kind (swap, role_change, sync, settings_change,
    /// peer_lost, peer_found, break, forced_promotion…).
    #[arg(long, value_name = "K", value_parser = parse_kind)]
    pub(crate) kind: Option<String>,
    /// Only events older than this sequence number (the next page).
    #[arg(long, value_name = "SEQ")]
    pub(crate) before: Option<u64>,
    /// Print the raw JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem maintenance`.
#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    #[command(subcommand)]
    pub(crate) command: MaintenanceCommand,
}

/// The `tandem maintenance` verbs.
#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Hold a node out of service now; on the primary the role moves to the
    /// backup first.
    Start(MaintenanceStartArgs),
    /// End a node's maintenance now.
    End(MaintenanceEndArgs),
    /// Schedule a maintenance window.
    Schedule(MaintenanceScheduleArgs),
    /// Cancel a scheduled window that has not started.
    Cancel(MaintenanceCancelArgs),
    /// Show who is in maintenance and the scheduled windows.
    List(MaintenanceListArgs),
}

/// `tandem maintenance start`.
#[derive(Debug, Args)]
pub struct MaintenanceStartArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The node (name or id).
    #[arg(long)]
    pub(crate) node: String,
    /// Why (recorded in the history).
    #[arg(long)]
    pub(crate) reason: String,
    /// For how many minutes (it ends by itself then).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=525_600))]
    pub(crate) minutes: u64,
    /// Start it even if the role cannot move away from the node now.
    #[arg(long)]
    pub(crate) force: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem maintenance end`.
#[derive(Debug, Args)]
pub struct MaintenanceEndArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The node (name or id).
    #[arg(long)]
    pub(crate) node: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem maintenance schedule`.
#[derive(Debug, Args)]
pub struct MaintenanceScheduleArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The node (name or id).
    #[arg(long)]
    pub(crate) node: String,
    /// Why (recorded in the history).
    #[arg(long)]
    pub(crate) reason: String,
    /// Start, in milliseconds since the Unix epoch, or `+N` minutes from now.
    #[arg(long, value_parser = parse_when)]
    pub(crate) start: When,
    /// How many minutes it lasts.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=525_600))]
    pub(crate) minutes: u64,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A point in time as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Milliseconds since the Unix epoch.
    AtMs(u64),
    /// Minutes from now.
    InMinutes(u64),
}

impl When {
    /// Milliseconds since the Unix epoch, `now_ms` being now.
    pub(crate) fn at(self, now_ms: u64) -> u64 {
        match self {
            When::AtMs(t) => t,
            When::InMinutes(m) => now_ms.saturating_add(m.saturating_mul(60_000)),
        }
    }
}

fn parse_when(s: &str) -> Result<When, String> {
    let bad = || format!("{s:?}: give milliseconds since the Unix epoch or +MINUTES");
    match s.strip_prefix('+') {
        Some(m) => m.parse().map(When::InMinutes).map_err(|_| bad()),
        None => s.parse().map(When::AtMs).map_err(|_| bad()),
    }
}

/// `tandem maintenance cancel`.
#[derive(Debug, Args)]
pub struct MaintenanceCancelArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The window's id (see `tandem maintenance list`).
    #[arg(long)]
    pub(crate) window: u64,
}

/// `tandem maintenance list`.
#[derive(Debug, Args)]
pub struct MaintenanceListArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Print the raw JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem readiness`.
#[derive(Debug, Args)]
pub struct ReadinessArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Print the raw JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tandem demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the three nodes and demo.json (default: a fresh temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub(crate) fn is_actor_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | ':' | '-')
}

/// Checks `--actor` as the server does: 1..=64 characters of
/// `A-Z a-z 0-9 . _ @ : -`.
pub(crate) fn parse_actor(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 64 && s.chars().all(is_actor_char) {
        Ok(s.to_string())
    } else {
        Err("an actor is 1..=64 characters of A-Z a-z 0-9 . _ @ : -".into())
    }
}

/// The actor when `--actor` is absent: `$USER` when it is a valid actor
/// name, else `cli`.
pub(crate) fn default_actor() -> String {
    std::env::var("USER")
        .ok()
        .and_then(|u| parse_actor(&u).ok())
        .unwrap_or_else(|| "cli".to_string())
}

/// Checks `--kind` as the server does.
pub(crate) fn parse_kind(s: &str) -> Result<String, String> {
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
    /// `checks=JSON`.
    Checks(Vec<tandem_web::CheckSpec>),
    /// `check_hold_down_secs=SECS`.
    CheckHoldDownSecs(u64),
    /// `failback=off|NODE[:SECS]`.
    Failback(tandem_web::Failback),
    /// `maintenance_max_minutes=MIN`.
    MaintenanceMaxMinutes(u64),
    /// `maintenance_reminder_secs=SECS`.
    MaintenanceReminderSecs(u64),
}

/// Default failback delay when `failback=NODE` gives none.
const DEFAULT_FAILBACK_DELAY_SECS: u64 = 60;

fn parse_failback(v: &str) -> Result<tandem_web::Failback, String> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok(tandem_web::Failback::default());
    }
    let (node, delay) = match v.split_once(':') {
        Some((n, d)) => (n, parse_u64("failback delay", d)?),
        None => (v, DEFAULT_FAILBACK_DELAY_SECS),
    };
    if node.is_empty() {
        return Err("failback takes off or NODE[:SECS]".into());
    }
    Ok(tandem_web::Failback::Preferred {
        preferred: node.to_string(),
        delay_secs: delay,
    })
}

pub(crate) const SETTINGS_KEYS: &str = "primary_timeout_ms, auto_failover, test_ips, \
     verify_interval_secs, bandwidth_limit_bps, backup_operations, shared_ips, checks, \
     check_hold_down_secs, failback, maintenance_max_minutes, maintenance_reminder_secs";

pub(crate) fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!(
            "{key} takes true or false (also on/off, yes/no, 1/0), not {v:?}"
        )),
    }
}

pub(crate) fn parse_u64(key: &str, v: &str) -> Result<u64, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{key} takes a whole number, not {v:?}"))
}

/// Parses one `KEY=VALUE` (syntax only; the cluster checks the ranges).
pub(crate) fn parse_assignment(s: &str) -> Result<Assignment, String> {
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
        "checks" => Assignment::Checks(
            serde_json::from_str(value)
                .map_err(|e| format!("checks takes a JSON array of checks: {e}"))?,
        ),
        "check_hold_down_secs" => Assignment::CheckHoldDownSecs(parse_u64(key, value)?),
        "failback" => Assignment::Failback(parse_failback(value)?),
        "maintenance_max_minutes" => Assignment::MaintenanceMaxMinutes(parse_u64(key, value)?),
        "maintenance_reminder_secs" => Assignment::MaintenanceReminderSecs(parse_u64(key, value)?),
        other => return Err(format!("unknown setting {other:?} (keys: {SETTINGS_KEYS})")),
    })
}

impl Assignment {
    pub(crate) fn apply(&self, u: &mut SettingsUpdate) {
        match self {
            Self::PrimaryTimeoutMs(v) => u.primary_timeout_ms = *v,
            Self::AutoFailover(v) => u.auto_failover = *v,
            Self::TestIps(v) => u.test_ips.clone_from(v),
            Self::VerifyIntervalSecs(v) => u.verify_interval_secs = *v,
            Self::BandwidthLimitBps(v) => u.bandwidth_limit_bps = *v,
            Self::BackupOperations(v) => u.backup_operations = *v,
            Self::SharedIps(v) => u.shared_ips.clone_from(v),
            Self::Checks(v) => u.checks.clone_from(v),
            Self::CheckHoldDownSecs(v) => u.check_hold_down_secs = *v,
            Self::Failback(v) => u.failback = v.clone(),
            Self::MaintenanceMaxMinutes(v) => u.maintenance_max_minutes = *v,
            Self::MaintenanceReminderSecs(v) => u.maintenance_reminder_secs = *v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            parse_assignment("failback=a:30"),
            Ok(Assignment::Failback(tandem_web::Failback::Preferred {
                preferred: "a".into(),
                delay_secs: 30
            }))
        );
        assert_eq!(
            parse_assignment("failback=off"),
            Ok(Assignment::Failback(tandem_web::Failback::default()))
        );
        assert!(parse_assignment("failback=a:soon").is_err());
        let checks =
            parse_assignment(r#"checks=[{"name":"db","kind":"tcp","target":"127.0.0.1:5432"}]"#);
        assert!(matches!(checks, Ok(Assignment::Checks(v)) if v.len() == 1 && v[0].fall == 3));
        assert!(parse_assignment("checks=[{}]").is_err());
        assert_eq!(
            parse_assignment("check_hold_down_secs=0"),
            Ok(Assignment::CheckHoldDownSecs(0))
        );
    }

    #[test]
    fn actors() {
        assert!(parse_actor("alice@ops").is_ok());
        assert!(parse_actor("").is_err());
        assert!(parse_actor("a b").is_err());
        assert!(parse_actor(&"x".repeat(65)).is_err());
    }
}
