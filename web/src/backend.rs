//! The trait the admin API consumes ([`AdminBackend`]) and its view types.
//!
//! The `node` crate implements the trait; `web` never sees Raft or storage
//! types. Views derive both `Serialize` and `Deserialize` so that clients (the
//! CLI, the cluster tests) can decode responses with the same types, and
//! `ToSchema`, from which the OpenAPI document takes their schemas (utoipa
//! reads the serde attributes, so the schema follows the wire format).

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::checks::{default_hold_down_secs, CheckSpec, CheckView};
use crate::maintenance::{
    HoldView, MaintenanceOutcome, MaintenanceStart, MaintenanceView, WindowRequest,
};
use crate::names::{KindName, RoleName, Topology};
use crate::ApiError;

/// What the admin API needs from the node.
///
/// Async methods return `impl Future + Send` so the router stays generic
/// (no boxing, no `async_trait`). Implementations may write `async fn`.
///
/// Writes (`*_put`, `*_create`, `*_delete`, `create_join_token`, `join`) go
/// to the leader: on a follower return [`ApiError::NotLeader`] and the router
/// turns it into a 421 with a `Location` on the leader. Reads with
/// `stale == false` must be linearizable (or also answer `NotLeader`); with
/// `stale == true` the node serves from its local state machine and reports
/// how far it has applied in [`ReadMeta`].
/// The caller the admin token is recorded as.
pub const ADMIN_TOKEN_ACTOR: &str = "admin-token";

pub trait AdminBackend: Send + Sync + 'static {
    /// Who `bearer_token` is, if it grants access to the authenticated
    /// API: [`ADMIN_TOKEN_ACTOR`] for the admin token, the user's name for
    /// a per-user API token. Writes are recorded as that caller.
    ///
    /// Called on every `/api` request except `/api/v1/join`. The comparison
    /// must be constant-time; that is the implementation's job.
    fn authorize(&self, bearer_token: &str) -> Option<String>;

    /// Liveness and role of this node (`GET /health`, no authentication).
    ///
    /// # Errors
    /// Any [`ApiError`]; `Unavailable` makes load balancers skip the node.
    fn health(&self) -> impl Future<Output = Result<HealthView, ApiError>> + Send;

    /// One configuration entry.
    ///
    /// # Errors
    /// `NotFound` when the key does not exist; `NotLeader` for a
    /// linearizable read on a follower.
    fn config_get(
        &self,
        key: String,
        stale: bool,
    ) -> impl Future<Output = Result<(ConfigEntryView, ReadMeta), ApiError>> + Send;

    /// Up to `limit` entries in key order, optionally only keys starting
    /// with `prefix`.
    ///
    /// # Errors
    /// `NotLeader` for a linearizable read on a follower.
    fn config_list(
        &self,
        prefix: Option<String>,
        limit: usize,
        stale: bool,
    ) -> impl Future<Output = Result<(Vec<ConfigEntryView>, ReadMeta), ApiError>> + Send;

    /// Creates or replaces an entry. With `if_version`, only when the current
    /// version equals it (`Some(0)`: only when the key does not exist).
    ///
    /// # Errors
    /// `Conflict` when `if_version` does not match; `NotLeader` on a follower.
    fn config_put(
        &self,
        key: String,
        value: serde_json::Value,
        if_version: Option<u64>,
        actor: String,
    ) -> impl Future<Output = Result<ConfigEntryView, ApiError>> + Send;

    /// Removes an entry.
    ///
    /// # Errors
    /// `NotFound` when the key does not exist; `NotLeader` on a follower.
    fn config_delete(
        &self,
        key: String,
        actor: String,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Creates a session expiring `ttl_secs` from now.
    ///
    /// # Errors
    /// `NotLeader` on a follower.
    fn session_create(
        &self,
        req: SessionCreate,
    ) -> impl Future<Output = Result<SessionView, ApiError>> + Send;

    /// One session.
    ///
    /// # Errors
    /// `NotFound` when unknown or expired; `NotLeader` as for reads.
    fn session_get(
        &self,
        id: String,
        stale: bool,
    ) -> impl Future<Output = Result<(SessionView, ReadMeta), ApiError>> + Send;

    /// Up to `limit` sessions.
    ///
    /// # Errors
    /// `NotLeader` as for reads.
    fn session_list(
        &self,
        limit: usize,
        stale: bool,
    ) -> impl Future<Output = Result<(Vec<SessionView>, ReadMeta), ApiError>> + Send;

    /// Removes a session.
    ///
    /// # Errors
    /// `NotFound` when unknown; `NotLeader` on a follower.
    fn session_delete(&self, id: String) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Membership and replication progress as this node sees it.
    ///
    /// # Errors
    /// `NotLeader` when `stale == false` and this node cannot answer
    /// authoritatively.
    fn cluster(&self, stale: bool) -> impl Future<Output = Result<ClusterView, ApiError>> + Send;

    /// Mints a one-time token a new node presents to [`AdminBackend::join`].
    ///
    /// # Errors
    /// `NotLeader` on a follower; `BadRequest` for an unsupported request.
    fn create_join_token(
        &self,
        req: JoinTokenRequest,
        actor: String,
    ) -> impl Future<Output = Result<JoinTokenView, ApiError>> + Send;

    /// Mints a one-time token with which node `req.node` (removed by a
    /// break or replaced by a forced promotion) rejoins as the backup.
    ///
    /// # Errors
    /// `NotLeader` on a follower; `BadRequest` for a node that is a member.
    fn create_rejoin_token(
        &self,
        req: RejoinTokenRequest,
        actor: String,
    ) -> impl Future<Output = Result<JoinTokenView, ApiError>> + Send;

    /// Renews this node's certificate now (`POST /api/v1/certs/renew`): a
    /// new key and certificate, presented from the next connection on.
    ///
    /// # Errors
    /// `Refused` when a witness's primary cannot sign now; `Internal` when
    /// signing or writing fails (the old certificate stays in force).
    fn renew_certificate(
        &self,
        actor: String,
    ) -> impl Future<Output = Result<CertificateView, ApiError>> + Send;

    /// Replaces the admin token with a new one (shown once, stored
    /// hashed); the old one stops working at once, on every node.
    ///
    /// # Errors
    /// `NotLeader` on a follower.
    fn rotate_admin_token(
        &self,
        actor: String,
    ) -> impl Future<Output = Result<AdminTokenRotated, ApiError>> + Send;

    /// Admits a node: checks the join token, signs its CSR and adds it to the
    /// cluster. Not behind the bearer token: the join token is the credential.
    ///
    /// # Errors
    /// `Forbidden` for an invalid, used or expired token; `BadRequest` for a
    /// bad CSR; `NotLeader` on a follower.
    fn join(&self, req: JoinRequest)
        -> impl Future<Output = Result<JoinResponse, ApiError>> + Send;

    // ---- relationship API (the failover page) ----------------------------
    //
    // Actions (`settings_put`, `swap`, `sync`, `break_relationship`) take the
    // actor (the `X-Tandem-Actor` header or `api`) so the node can record
    // who did what in the status history. An action the node declines in
    // the current situation (peer unreachable without `force`, nothing to
    // break, a swap already running…) answers [`ApiError::Refused`] (409).

    /// This node, its peers, the topology, settings, epoch and primary
    /// (`GET /api/v1/status`). Served from this node's own state, so it
    /// answers on a backup and on a node cut off from its peers.
    ///
    /// # Errors
    /// `Unavailable` when the node cannot assemble its own state.
    fn status(&self) -> impl Future<Output = Result<StatusView, ApiError>> + Send;

    /// Status history, newest first (`GET /api/v1/history`): up to `limit`
    /// (already checked to be 1..=[`crate::MAX_HISTORY_LIMIT`]) events with
    /// `seq < before` (all when `None`), only those of `kind` when given.
    ///
    /// # Errors
    /// `Unavailable` when the history cannot be read.
    fn history(
        &self,
        before: Option<u64>,
        limit: usize,
        kind: Option<String>,
    ) -> impl Future<Output = Result<HistoryPage, ApiError>> + Send;

    /// The replicated relationship settings (`GET /api/v1/settings`).
    ///
    /// # Errors
    /// `Unavailable` when they cannot be read.
    fn settings(&self) -> impl Future<Output = Result<SettingsView, ApiError>> + Send;

    /// Replaces the settings (`PUT /api/v1/settings`). The router has
    /// already run [`crate::validate_settings`] on `update`. With
    /// `update.if_version`, only when the current version equals it.
    ///
    /// # Errors
    /// `Conflict` when `if_version` does not match; `Invalid` for a check
    /// only the node can make (an interface map naming an unknown node…);
    /// `NotLeader` when the write must go elsewhere.
    fn settings_put(
        &self,
        update: SettingsUpdate,
        actor: String,
    ) -> impl Future<Output = Result<SettingsView, ApiError>> + Send;

    /// Swaps the roles of primary and backup (`POST
    /// /api/v1/relationship/swap`): planned unless `req.force`, with a full
    /// catch-up first when `req.pull_sync`. Works from either side.
    ///
    /// # Errors
    /// `Refused` when the swap cannot be done safely as asked (the peer is
    /// unreachable and `force` is off, this node is a witness or standalone,
    /// another action is running…).
    fn swap(
        &self,
        req: SwapRequest,
        actor: String,
    ) -> impl Future<Output = Result<SwapOutcome, ApiError>> + Send;

    /// Brings the backup up to every committed entry now (`POST
    /// /api/v1/relationship/sync`), comparing state digests when
    /// `req.verify`.
    ///
    /// # Errors
    /// `Refused` when there is no backup to sync or it is unreachable.
    fn sync(
        &self,
        req: SyncRequest,
        actor: String,
    ) -> impl Future<Output = Result<SyncReport, ApiError>> + Send;

    /// Ends the relationship (`POST /api/v1/relationship/break`): each side
    /// becomes standalone with its own copy of the data.
    ///
    /// # Errors
    /// `Refused` when this node is already standalone.
    fn break_relationship(
        &self,
        actor: String,
    ) -> impl Future<Output = Result<BreakOutcome, ApiError>> + Send;

    /// Takes this node back into the relationship as the backup after it was
    /// replaced by a forced promotion or removed (`POST
    /// /api/v1/relationship/rejoin`): it discards its copy and resyncs.
    ///
    /// # Errors
    /// `Refused` when there is nothing to rejoin or the other side refuses
    /// (a token that is not for this node, spent or expired).
    fn rejoin(
        &self,
        token: String,
        actor: String,
    ) -> impl Future<Output = Result<BreakOutcome, ApiError>> + Send;

    /// *Set up relationship* from a standalone node (`POST
    /// /api/v1/relationship/setup`): joins the primary's cluster with a join
    /// token made there, as its backup (or witness), discarding this node's
    /// own data; the node then restarts itself with the new identity. The
    /// router has checked the field lengths.
    ///
    /// # Errors
    /// `Refused` (nothing changed) when this node is not standalone, holds
    /// data and `discard_data` is off, the token is malformed, expired, used
    /// or from this node's own cluster, or the primary cannot be reached or
    /// refuses; `BadRequest` for a malformed address.
    fn setup(
        &self,
        req: SetupRequest,
        actor: String,
    ) -> impl Future<Output = Result<SetupOutcome, ApiError>> + Send;

    /// Removes the witness from a live pair (`POST
    /// /api/v1/relationship/remove-witness`, on the primary): the topology
    /// becomes pair only and the backup receives the log asynchronously.
    ///
    /// # Errors
    /// `Refused` when there is no witness or this node is not the primary.
    fn remove_witness(
        &self,
        actor: String,
    ) -> impl Future<Output = Result<BreakOutcome, ApiError>> + Send;

    /// Whether this node is the serving primary (`GET /health/primary`, no
    /// authentication): the router answers 200 when `ok`, else 503.
    ///
    /// # Errors
    /// Any [`ApiError`] (mapped as usual; load balancers treat it as down).
    fn health_primary(&self) -> impl Future<Output = Result<RoleHealth, ApiError>> + Send;

    /// Whether this node is a backup in sync (`GET /health/backup`, no
    /// authentication): with `max_lag`, `ok` only when it is at most that
    /// many committed entries behind. 200 when `ok`, else 503.
    ///
    /// # Errors
    /// Any [`ApiError`].
    fn health_backup(
        &self,
        max_lag: Option<u64>,
    ) -> impl Future<Output = Result<RoleHealth, ApiError>> + Send;

    /// "If the primary died now, would the backup take over, after how
    /// long, losing what?" (`GET /api/v1/readiness`).
    ///
    /// # Errors
    /// `Unavailable` when the node cannot tell.
    fn readiness(&self) -> impl Future<Output = Result<ReadinessView, ApiError>> + Send;

    // ---- maintenance (`crate::maintenance`) -------------------------------

    /// Who is in maintenance now and what is scheduled (`GET
    /// /api/v1/maintenance`), served locally.
    ///
    /// # Errors
    /// `Unavailable` when it cannot be read.
    fn maintenance(&self) -> impl Future<Output = Result<MaintenanceView, ApiError>> + Send;

    /// Holds a node out of service now (`POST /api/v1/maintenance`); the
    /// router has checked the fields. On the primary's own hold the role
    /// moves away first.
    ///
    /// # Errors
    /// `NotFound` for an unknown node; `Refused` when the role cannot move
    /// (unless `force`) or no appliance would be left to be primary;
    /// `BadRequest` for a witness or a hold longer than the setting allows;
    /// `NotLeader` when the write must go elsewhere.
    fn maintenance_start(
        &self,
        req: MaintenanceStart,
        actor: String,
    ) -> impl Future<Output = Result<MaintenanceOutcome, ApiError>> + Send;

    /// Ends a node's maintenance now (`DELETE /api/v1/maintenance/{node}`).
    ///
    /// # Errors
    /// `NotFound` for an unknown node or one not in maintenance;
    /// `NotLeader` when the write must go elsewhere.
    fn maintenance_end(
        &self,
        node: String,
        actor: String,
    ) -> impl Future<Output = Result<MaintenanceOutcome, ApiError>> + Send;

    /// Schedules a window (`POST /api/v1/maintenance/windows`).
    ///
    /// # Errors
    /// `NotFound` for an unknown node; `BadRequest` for a start in the
    /// past, a witness or a window longer than the setting allows;
    /// `Refused` when it would leave no appliance to be primary.
    fn window_schedule(
        &self,
        req: WindowRequest,
        actor: String,
    ) -> impl Future<Output = Result<MaintenanceView, ApiError>> + Send;

    /// Cancels a window that has not started (`DELETE
    /// /api/v1/maintenance/windows/{id}`).
    ///
    /// # Errors
    /// `NotFound` when no such window is scheduled.
    fn window_cancel(
        &self,
        id: u64,
        actor: String,
    ) -> impl Future<Output = Result<MaintenanceView, ApiError>> + Send;

    // ---- admin users and API tokens (the web UI) ---------------------------
    //
    // Users live in the replicated state (argon2id hashes), so the same
    // credentials work on every node. Writes go to the leader (`NotLeader`
    // otherwise); reads and `verify_user` are served locally.

    /// Whether `password` is `name`'s password. Unknown users answer
    /// `false` (after about the same time as a wrong password).
    ///
    /// # Errors
    /// `Unavailable`/`Internal` when the check cannot run.
    fn verify_user(
        &self,
        name: String,
        password: String,
    ) -> impl Future<Output = Result<bool, ApiError>> + Send;

    /// Every admin user, in name order (never the hashes).
    ///
    /// # Errors
    /// `Unavailable` when they cannot be read.
    fn users(&self) -> impl Future<Output = Result<Vec<UserView>, ApiError>> + Send;

    /// Creates a user or sets an existing user's password (the router has
    /// checked the name and the password's length).
    ///
    /// # Errors
    /// `NotLeader` on a follower.
    fn user_put(
        &self,
        name: String,
        password: String,
        actor: String,
    ) -> impl Future<Output = Result<UserView, ApiError>> + Send;

    /// Removes a user and its API tokens.
    ///
    /// # Errors
    /// `NotFound` for an unknown user; `Refused` for the last user;
    /// `NotLeader` on a follower.
    fn user_delete(
        &self,
        name: String,
        actor: String,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Changes `name`'s own password after checking the old one.
    ///
    /// # Errors
    /// `Forbidden` when `old_password` is wrong; `NotLeader` on a follower.
    fn change_password(
        &self,
        name: String,
        old_password: String,
        new_password: String,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Creates a per-user API token (a bearer credential of the JSON API);
    /// the secret is in the answer only.
    ///
    /// # Errors
    /// `NotFound` for an unknown user; `NotLeader` on a follower.
    fn api_token_create(
        &self,
        user: String,
        actor: String,
    ) -> impl Future<Output = Result<ApiTokenCreated, ApiError>> + Send;

    /// Revokes a per-user API token.
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `NotLeader` on a follower.
    fn api_token_revoke(
        &self,
        id: String,
        actor: String,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Every per-user API token (never the secrets).
    ///
    /// # Errors
    /// `Unavailable` when they cannot be read.
    fn api_token_list(&self) -> impl Future<Output = Result<Vec<ApiTokenView>, ApiError>> + Send;
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// `"ok"`, or `"degraded"` when an essential task of the node died (see
    /// `problems`).
    pub status: String,
    /// This node's name.
    pub node: String,
    /// This node's id.
    pub node_id: u64,
    /// Raft role: `leader`, `follower`, `candidate`, `learner`…
    pub role: String,
    /// Current leader's node id, if known.
    pub leader: Option<u64>,
    /// Current Raft term.
    pub term: u64,
    /// Last log index applied to the state machine, if any.
    pub applied_index: Option<u64>,
    /// Last index in this node's log, if any.
    pub last_log_index: Option<u64>,
    /// Last index this node knows to be committed, if any.
    pub committed_index: Option<u64>,
    /// Last log index covered by this node's newest snapshot, if any.
    #[serde(default)]
    pub snapshot_index: Option<u64>,
    /// Last log index removed from this node's log (compacted), if any.
    #[serde(default)]
    pub purged_index: Option<u64>,
    /// Shared IPs (`address/prefix`) this node holds right now.
    #[serde(default)]
    pub shared_ips_held: Vec<String>,
    /// Bytes available on the filesystem of this node's data directory
    /// (read at most every 200 ms), when it can be asked.
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    /// The free space below which this node refuses application writes
    /// (`tuning.min_free_mb`; 0: no reserve).
    #[serde(default)]
    pub disk_reserve_bytes: Option<u64>,
    /// What is wrong with this node that a restart must fix (an essential
    /// task died: it no longer leads); empty when nothing is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// This node's service checks (empty when none apply to it).
    #[serde(default)]
    pub checks: Vec<CheckView>,
    /// Whether none of this node's checks is failing.
    #[serde(default = "yes")]
    pub checks_ok: bool,
    /// The primary timeout this node's Raft timers run with (ms). After a
    /// change of the setting each node switches in turn: see the README's
    /// "Changing the primary timeout".
    #[serde(default)]
    pub primary_timeout_ms: Option<u64>,
    /// The primary timeout its lease as primary follows (ms): the shortest
    /// any voter may still run while a change settles.
    #[serde(default)]
    pub lease_timeout_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// How a read was served; rendered as the `X-Tandem-Applied-Index` and
/// `X-Tandem-Stale` response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReadMeta {
    /// Applied index of the state machine the read was served from.
    pub applied_index: Option<u64>,
    /// Whether the read was served locally without a leader check.
    pub stale: bool,
}

/// One configuration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConfigEntryView {
    /// The key (1..=256 chars of `[A-Za-z0-9._:/-]`).
    pub key: String,
    /// Any JSON value.
    pub value: serde_json::Value,
    /// Starts at 1, incremented by every put.
    pub version: u64,
    /// Actor of the last write.
    pub updated_by: String,
    /// Time of the last write, ms since the Unix epoch.
    pub updated_at_ms: u64,
}

/// Body of `PUT /api/v1/config/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigPut {
    /// The new value (required; may be `null`).
    pub value: serde_json::Value,
    /// Optimistic concurrency: write only if the current version equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
}

/// Body of `POST /api/v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCreate {
    /// Who owns the session (1..=256 chars).
    #[schema(min_length = 1, max_length = 256)]
    pub owner: String,
    /// Free-form data (default `null`).
    #[serde(default)]
    pub data: serde_json::Value,
    /// Lifetime in seconds, 1..=31_536_000 (one year).
    #[schema(minimum = 1, maximum = 31_536_000)]
    pub ttl_secs: u64,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Session id, chosen by the backend.
    pub id: String,
    /// Owner given at creation.
    pub owner: String,
    /// Data given at creation.
    pub data: serde_json::Value,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Expiry time, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    /// Cluster identity.
    pub cluster_id: String,
    /// Id of the node that answered.
    pub this_node: u64,
    /// Current leader, if known.
    pub leader: Option<u64>,
    /// Current Raft term.
    pub term: u64,
    /// All members, voters and non-voters.
    pub members: Vec<MemberView>,
}

/// One cluster member; fields the answering node does not know are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// Node name.
    pub name: String,
    /// `appliance` or `witness`.
    pub kind: KindName,
    /// Whether the member votes.
    pub voter: bool,
    /// Peer listener address (`host:port`).
    pub peer_addr: String,
    /// Admin API base URL or address.
    pub api_addr: String,
    /// Last log index known for this member.
    pub last_log_index: Option<u64>,
    /// Committed index known for this member.
    pub committed_index: Option<u64>,
    /// Applied index known for this member.
    pub applied_index: Option<u64>,
    /// Whether the answering node can currently reach it.
    pub reachable: Option<bool>,
}

/// Body of `POST /api/v1/join-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Token lifetime in seconds (1..=31_536_000); the backend's default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Kind of node the token admits: `appliance` or `witness`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Body of `POST /api/v1/rejoin-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejoinTokenRequest {
    /// The id of the node a break removed or a forced promotion replaced
    /// (history and `tandem status` name it); only that node can use the
    /// token.
    pub node: u64,
    /// Token lifetime in seconds (1..=31_536_000); the backend's default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// Body of `POST /api/v1/relationship/rejoin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejoinRequest {
    /// The one-time rejoin token an administrator made for this node on
    /// the primary (`POST /api/v1/rejoin-tokens`, `tandem token --rejoin`).
    pub token: String,
}

/// A minted join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    /// The secret to pass in [`JoinRequest::token`].
    pub token: String,
    /// Expiry, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Answer of `POST /api/v1/admin-token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminTokenRotated {
    /// The new admin token: shown this once, stored only hashed.
    pub token: String,
}

/// Body of `POST /api/v1/join` (no bearer token; `token` is the credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Join token from `POST /api/v1/join-tokens`.
    pub token: String,
    /// Name of the joining node.
    pub name: String,
    /// `appliance` or `witness`.
    pub kind: String,
    /// The joining node's peer listener address.
    pub peer_addr: String,
    /// The joining node's admin API address.
    pub api_addr: String,
    /// PEM certificate signing request for the node's peer certificate.
    pub csr_pem: String,
    /// Who asked for the join, recorded in the status history (a joining
    /// node's UI user, `tandem join` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The joining node's site (failure domain label), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The joining node's host identity (configured, or derived from its
    /// machine id), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Admit an appliance that shares its site or host with the other
    /// appliance (refused without it: one failure there would take both).
    #[serde(default)]
    pub allow_same_site: bool,
}

/// Body of `POST /api/v1/relationship/setup`: on a standalone node, join the
/// primary's relationship from here (*Set up relationship*).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The primary's admin address (`https://host:port` or `host:port`), as
    /// given to `tandem join --peer`.
    pub primary: String,
    /// A join token created on the primary (`POST /api/v1/join-tokens`).
    pub token: String,
    /// The reverse connection address: the `host:port` at which the primary
    /// reaches this node's peer listener. Absent: this node's advertised
    /// peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_address: Option<String>,
    /// Join as a witness (votes, never primary) instead of as the backup.
    #[serde(default)]
    pub witness: bool,
    /// Confirms that this node's own configuration entries and sessions are
    /// discarded (refused without it when it holds any).
    #[serde(default)]
    pub discard_data: bool,
    /// Join even though this node shares its site or host with the primary
    /// (refused without it: one failure there would take both).
    #[serde(default)]
    pub allow_same_site: bool,
}

/// Answer to a successful *Set up relationship*. The node then restarts in
/// place with its new identity and resyncs from the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SetupOutcome {
    /// This node's id in the primary's cluster.
    pub node_id: u64,
    /// The cluster it joined.
    pub cluster_id: String,
    /// Its role once it has caught up: `backup` or `witness`.
    pub role: RoleName,
    /// The primary's admin address as given.
    pub primary: String,
    /// Its peer address as the primary will dial it.
    pub reverse_address: String,
    /// Configuration entries of its own that were discarded.
    pub discarded_config_keys: u64,
    /// Sessions of its own that were discarded.
    pub discarded_sessions: u64,
}

/// Answer to a successful join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    /// Id assigned to the new node.
    pub node_id: u64,
    /// Cluster identity.
    pub cluster_id: String,
    /// The signed node certificate (PEM).
    pub cert_pem: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// The cluster CA key (PEM), given to appliances only, so that any
    /// appliance can sign the certificate of the next node that joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key_pem: Option<String>,
    /// Members after the join.
    pub members: Vec<MemberView>,
}

/// Items of a list response: `{"items": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListView<T> {
    /// The listed items, in backend order.
    pub items: Vec<T>,
}

// ---- relationship API views --------------------------------------------

/// `GET /api/v1/status`: everything the failover page shows at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    /// The node that answered.
    pub this_host: HostView,
    /// The other members of the relationship (appliances and witness).
    pub peers: Vec<PeerView>,
    /// `pair+witness`, `pair` or `standalone`.
    pub topology: Topology,
    /// The replicated settings.
    pub settings: SettingsView,
    /// Current epoch (raised by every change of primary).
    pub epoch: u64,
    /// Node id of the current primary, if there is one.
    pub primary: Option<u64>,
    /// Nodes in maintenance now (the page shows a banner while any is).
    #[serde(default)]
    pub maintenance: Vec<HoldView>,
}

/// The answering node in [`StatusView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    /// Node id.
    pub id: u64,
    /// Node name.
    pub name: String,
    /// `appliance` or `witness`.
    pub kind: KindName,
    /// `primary`, `backup`, `witness` or `standalone`.
    pub role: RoleName,
    /// Site (failure domain) label, if configured.
    pub site: Option<String>,
    /// The epoch this node knows.
    pub epoch: u64,
    /// Current Raft term.
    pub term: u64,
    /// Current Raft leader, if known.
    pub leader: Option<u64>,
    /// Last index in this node's log.
    pub last_log_index: Option<u64>,
    /// Last index this node knows to be committed.
    pub committed_index: Option<u64>,
    /// Last index applied to this node's state machine.
    pub applied_index: Option<u64>,
    /// Whether this node holds a valid primary lease.
    pub lease_valid: bool,
    /// When this node became primary (ms since the Unix epoch), if it is.
    pub primary_since_ms: Option<u64>,
    /// Shared IPs this node holds now (`address/prefix`).
    pub shared_ips_held: Vec<String>,
    /// Things the administrator should know, e.g. `diverged export at …`.
    pub notes: Vec<String>,
    /// The address peers dial to reach this node (`host:port`): the reverse
    /// connection address of *Set up relationship*.
    #[serde(default)]
    pub peer_addr: String,
    /// This node's service checks.
    #[serde(default)]
    pub checks: Vec<CheckView>,
}

/// A peer in [`StatusView`]; what this node cannot know is `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerView {
    /// Node id.
    pub id: u64,
    /// Node name.
    pub name: String,
    /// `appliance` or `witness`.
    pub kind: KindName,
    /// `primary`, `backup`, `witness` or `standalone`.
    pub role: RoleName,
    /// Its site (failure domain label), if recorded.
    #[serde(default)]
    pub site: Option<String>,
    /// Whether it votes.
    pub voter: bool,
    /// Whether this node can reach it now.
    pub reachable: bool,
    /// Last successful contact (ms since the Unix epoch).
    pub last_contact_ms: Option<u64>,
    /// How many committed entries it lacks.
    pub lag_entries: Option<u64>,
    /// Approximate bytes of the entries it lacks.
    pub lag_bytes: Option<u64>,
    /// Age of the oldest entry it lacks (ms).
    pub lag_ms: Option<u64>,
    /// Its admin API address.
    pub api_addr: String,
    /// Shared IPs the peer reports holding (from its `/health`), when it answered.
    #[serde(default)]
    pub shared_ips_held: Option<Vec<String>>,
}

/// One status history event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEventView {
    /// Sequence number (0 for the first event ever).
    pub seq: u64,
    /// When it happened (ms since the Unix epoch).
    pub at_ms: u64,
    /// Node it happened on.
    pub node: u64,
    /// That node's name, when known.
    pub node_name: Option<String>,
    /// Event kind (`role_change`, `peer_lost`, `sync`, `settings`…).
    pub kind: String,
    /// Who caused it (an API actor, `system`…).
    pub actor: String,
    /// Kind-specific details (a JSON object).
    pub details: serde_json::Value,
}

/// `GET /api/v1/history`: one page, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    /// The events.
    pub items: Vec<HistoryEventView>,
    /// Pass as `?before=` for the next (older) page; `null` on the last.
    pub next_before: Option<u64>,
    /// Events ever recorded (the oldest may have been dropped).
    pub total: u64,
}

/// A shared IP address and the interface each node puts it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedIpView {
    /// Address with prefix: `192.0.2.10/24` or `2001:db8::10/64`.
    pub address: String,
    /// Node name → interface name on that node.
    pub interfaces: BTreeMap<String, String>,
}

/// The replicated relationship settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SettingsView {
    /// Starts at 0 (defaults, never written), +1 per write.
    pub version: u64,
    /// Actor of the last write.
    pub updated_by: Option<String>,
    /// Time of the last write (ms since the Unix epoch).
    pub updated_at_ms: Option<u64>,
    /// How long the primary must be unreachable before failing over (ms).
    pub primary_timeout_ms: u64,
    /// Automatic failover on/off (pair-only topology).
    pub auto_failover: bool,
    /// Connectivity test targets: `IP` (ICMP) or `IP:port` (TCP).
    pub test_ips: Vec<String>,
    /// Automatic verify interval (s); 0 = off.
    pub verify_interval_secs: u64,
    /// Sync bandwidth limit (bytes/s); 0 = unlimited.
    pub bandwidth_limit_bps: u64,
    /// Scheduled backup archives on the backup on/off.
    pub backup_operations: bool,
    /// Shared IPs held by the primary.
    pub shared_ips: Vec<SharedIpView>,
    /// Longest maintenance hold (minutes).
    #[serde(default = "default_maintenance_max_minutes")]
    pub maintenance_max_minutes: u64,
    /// How long before a maintenance window's start its reminder is
    /// recorded (s); 0 = no reminder.
    #[serde(default = "default_maintenance_reminder_secs")]
    pub maintenance_reminder_secs: u64,
    /// Service checks that move the role (see [`CheckSpec`]).
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// After a check-driven move, how long (s) a check cannot move the role
    /// again.
    #[serde(default = "default_hold_down_secs")]
    pub check_hold_down_secs: u64,
    /// Failback policy.
    #[serde(default)]
    pub failback: Failback,
}

/// Failback policy (`failback` in the settings): `"off"` (the role stays
/// where it is), or `{"preferred": NODE, "delay_secs": N}`: when the
/// preferred appliance has been healthy, caught up and out of maintenance
/// for `delay_secs`, a planned swap gives it the role back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Failback {
    /// `"off"`.
    #[schema(value_type = String)]
    Off(FailbackOff),
    /// Return the role to `preferred` after `delay_secs`.
    Preferred {
        /// The preferred appliance's name.
        preferred: String,
        /// How long it must have been eligible (s), 0..=86400.
        delay_secs: u64,
    },
}

impl Default for Failback {
    fn default() -> Self {
        Failback::Off(FailbackOff::Off)
    }
}

/// The word `off` of [`Failback::Off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailbackOff {
    /// `"off"`.
    #[default]
    Off,
}

/// Default of `maintenance_max_minutes`: a day.
pub const DEFAULT_MAINTENANCE_MAX_MINUTES: u64 = 24 * 60;
/// Default of `maintenance_reminder_secs`: 15 minutes.
pub const DEFAULT_MAINTENANCE_REMINDER_SECS: u64 = 15 * 60;

fn default_maintenance_max_minutes() -> u64 {
    DEFAULT_MAINTENANCE_MAX_MINUTES
}

fn default_maintenance_reminder_secs() -> u64 {
    DEFAULT_MAINTENANCE_REMINDER_SECS
}

/// Body of `PUT /api/v1/settings`: the whole settings (every field
/// required), checked by [`crate::validate_settings`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    /// 300..=60000.
    pub primary_timeout_ms: u64,
    /// Automatic failover on/off.
    pub auto_failover: bool,
    /// At most 8; each an IP address or `IP:port`.
    pub test_ips: Vec<String>,
    /// 0 (off) or 60..=604800.
    pub verify_interval_secs: u64,
    /// 0 (unlimited) or at least 65536.
    pub bandwidth_limit_bps: u64,
    /// Backup operations on/off.
    pub backup_operations: bool,
    /// At most 16.
    pub shared_ips: Vec<SharedIpView>,
    /// 1..=525600 (a year); default 1440 (a day).
    #[serde(default = "default_maintenance_max_minutes")]
    pub maintenance_max_minutes: u64,
    /// 0 (no reminder) ..=604800; default 900.
    #[serde(default = "default_maintenance_reminder_secs")]
    pub maintenance_reminder_secs: u64,
    /// At most 16 service checks; default none.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// 0..=86400; default 300.
    #[serde(default = "default_hold_down_secs")]
    pub check_hold_down_secs: u64,
    /// `"off"` (default) or `{"preferred": NODE, "delay_secs": 0..=86400}`.
    #[serde(default)]
    pub failback: Failback,
    /// Optimistic concurrency: write only if the current version equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
}

/// Body of `POST /api/v1/relationship/swap` (an empty body means defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwapRequest {
    /// Wait for a full catch-up (by snapshot if need be) before swapping.
    #[serde(default)]
    pub pull_sync: bool,
    /// Swap even if the peer cannot be contacted (forced promotion or
    /// demotion; raises the epoch and is recorded as forced).
    #[serde(default)]
    pub force: bool,
}

/// Answer to a swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SwapOutcome {
    /// Primary before the swap, if there was one.
    pub previous_primary: Option<u64>,
    /// Primary after the swap (0 after a forced demotion: nobody).
    pub new_primary: u64,
    /// Epoch after the swap.
    pub epoch: u64,
    /// Whether it was forced.
    pub forced: bool,
    /// Whether a data sync was pulled first.
    pub pull_sync: bool,
    /// How long it took (ms).
    pub duration_ms: u64,
    /// The sync pulled first, when `pull_sync`.
    pub sync: Option<SyncReport>,
    /// A forced demotion: this primary stood down with its peer out of
    /// reach; nobody is primary until one is made primary by hand.
    #[serde(default)]
    pub demoted: bool,
    /// What the administrator must do next, when anything.
    #[serde(default)]
    pub warning: Option<String>,
}

/// Body of `POST /api/v1/relationship/sync` (an empty body means defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Compare state digests of both sides at one applied index afterwards.
    #[serde(default)]
    pub verify: bool,
}

/// Answer to a sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SyncReport {
    /// Node id of the backup that was synced.
    pub backup: u64,
    /// The backup's last index before the sync.
    pub from_index: Option<u64>,
    /// The index it holds now.
    pub to_index: u64,
    /// Entries sent.
    pub entries: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Whether a snapshot was sent.
    pub snapshot: bool,
    /// How long it took (ms).
    pub duration_ms: u64,
    /// The digest comparison, when asked for.
    pub verify: Option<VerifyReport>,
}

/// State digest comparison at one applied index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// The applied index both digests were taken at.
    pub index: u64,
    /// This node's digest (hex).
    pub local_digest: String,
    /// The peer's digest (hex).
    pub peer_digest: String,
    /// Whether they are equal.
    pub matches: bool,
}

/// Answer to a break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BreakOutcome {
    /// Node ids that were in the relationship with this node.
    pub former_peers: Vec<u64>,
    /// This node's role now (`standalone`).
    pub role: RoleName,
}

/// `GET /health/primary` and `GET /health/backup` (200 when `ok`, else 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleHealth {
    /// Whether the node is in the asked-for role (and in sync, for backup).
    pub ok: bool,
    /// The node's role: `primary`, `backup`, `witness` or `standalone`.
    pub role: String,
    /// Why not, when `ok` is false.
    pub reason: Option<String>,
}

/// `GET /api/v1/readiness`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadinessView {
    /// Whether a backup would take over if the primary died now.
    pub would_fail_over: bool,
    /// After how long (ms), when it would.
    pub after_ms: Option<u64>,
    /// Committed entries the backup lacks (the data a failover would lose in
    /// the pair-only topology).
    pub lag_entries: Option<u64>,
    /// Why not, or what is wrong.
    pub reasons: Vec<String>,
    /// Whether certificates are valid and not about to expire.
    pub certificates_ok: bool,
    /// Whether shared IPs are configured for the backup's interfaces.
    pub shared_ips_ok: bool,
    /// What does not stop a failover but makes the pair weaker than it
    /// looks: two appliances on one site or host, a witness on an
    /// appliance's host.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Each member's certificate as this node knows it (its own, and the
    /// ones its peers presented).
    #[serde(default)]
    pub certificates: Vec<CertificateView>,
}

/// A member's node certificate (readiness; `POST /api/v1/certs/renew`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateView {
    /// Node id.
    pub node: u64,
    /// Node name.
    pub name: String,
    /// When it expires (ms since the Unix epoch); absent when this node has
    /// not seen that member's certificate since it started.
    pub not_after_ms: Option<u64>,
    /// When it is renewed automatically (two thirds of its life).
    pub renew_at_ms: Option<u64>,
}

// ---- admin users and API tokens ------------------------------------------

/// An admin user (`GET /api/v1/users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// User name.
    pub name: String,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Last change (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// Who changed it last.
    pub updated_by: String,
}

/// Body of `POST /api/v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    /// 1..=64 chars of `[A-Za-z0-9._@-]`.
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    /// 8..=256 characters.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
}

/// Body of `PUT /api/v1/users/{name}`: sets the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPassword {
    /// 8..=256 characters.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
}

/// Body of `POST /api/v1/account/password` (own password, login session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The current password.
    pub old_password: String,
    /// The new password, 8..=256 characters.
    pub new_password: String,
}

/// Body of `POST /api/v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenRequest {
    /// The user the token acts for; default: the logged-in user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    pub user: Option<String>,
}

/// A per-user API token (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenView {
    /// Token id.
    pub id: String,
    /// The user it acts for.
    pub user: String,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
}

/// A new per-user API token: `token` is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenCreated {
    /// Token id.
    pub id: String,
    /// The user it acts for.
    pub user: String,
    /// The bearer token (only its hash is stored).
    pub token: String,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
}
