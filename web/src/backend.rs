//! The trait the admin API consumes ([`AdminBackend`]) and its view types.
//!
//! The `node` crate implements the trait; `web` never sees Raft or storage
//! types. Views derive both `Serialize` and `Deserialize` so that clients (the
//! CLI, the cluster tests) can decode responses with the same types.

use std::future::Future;

use serde::{Deserialize, Serialize};

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
pub trait AdminBackend: Send + Sync + 'static {
    /// Whether `bearer_token` grants access to the authenticated API.
    ///
    /// Called on every `/api` request except `/api/v1/join`. The comparison
    /// must be constant-time; that is the implementation's job.
    fn authorize(&self, bearer_token: &str) -> bool;

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

    /// Admits a node: checks the join token, signs its CSR and adds it to the
    /// cluster. Not behind the bearer token: the join token is the credential.
    ///
    /// # Errors
    /// `Forbidden` for an invalid, used or expired token; `BadRequest` for a
    /// bad CSR; `NotLeader` on a follower.
    fn join(&self, req: JoinRequest)
        -> impl Future<Output = Result<JoinResponse, ApiError>> + Send;
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// Always `"ok"` when the node answers.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPut {
    /// The new value (required; may be `null`).
    pub value: serde_json::Value,
    /// Optimistic concurrency: write only if the current version equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
}

/// Body of `POST /api/v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCreate {
    /// Who owns the session (1..=256 chars).
    pub owner: String,
    /// Free-form data (default `null`).
    #[serde(default)]
    pub data: serde_json::Value,
    /// Lifetime in seconds, 1..=31_536_000 (one year).
    pub ttl_secs: u64,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// Node name.
    pub name: String,
    /// `appliance` or `witness`.
    pub kind: String,
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// A minted join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenView {
    /// The secret to pass in [`JoinRequest::token`].
    pub token: String,
    /// Expiry, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Body of `POST /api/v1/join` (no bearer token; `token` is the credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Answer to a successful join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListView<T> {
    /// The listed items, in backend order.
    pub items: Vec<T>,
}
