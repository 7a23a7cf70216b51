//! The node's implementation of the web crate's [`AdminBackend`].
//!
//! Translates API calls into replicated commands and local reads, and node
//! errors into [`ApiError`]s.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tandem_storage::{ConfigEntry, NodeKind, Request, Response, Session};
use tandem_web::{
    AdminBackend, ApiError, BreakOutcome, ClusterView, ConfigEntryView, HealthView, HistoryPage,
    JoinRequest, JoinResponse, JoinTokenRequest, JoinTokenView, MemberView, ReadMeta,
    ReadinessView, RoleHealth, SessionCreate, SessionView, SettingsUpdate, SettingsView,
    StatusView, SwapOutcome, SwapRequest, SyncReport, SyncRequest,
};

use crate::client::ApiClient;
use crate::node::{kind_name, now_ms, random_secret, JoinRequest as NodeJoin, Node, NodeError};

/// Largest JSON value (config value or session data) accepted, in bytes of
/// its compact encoding. Keeps one log entry, and so one peer frame, small.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// How long `/api/v1/cluster` waits for each peer's `/health`.
const PEER_PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// The admin backend of one node.
pub struct Backend {
    node: Arc<Node>,
    /// Unauthenticated client (for peers' `/health`), trusting the cluster CA.
    probe: Option<ApiClient>,
}

impl Backend {
    /// Wraps a running node.
    pub fn new(node: Arc<Node>) -> Self {
        let probe = match ApiClient::new(&node.cfg.api_advertise, &node.ca_pem, None) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the peer probe client; cluster view will lack peer indexes");
                None
            }
        };
        Self { node, probe }
    }

    fn meta(&self, stale: bool) -> ReadMeta {
        ReadMeta {
            applied_index: self.node.reader().applied_index(),
            stale,
        }
    }

    fn local_health(&self) -> HealthView {
        let m = self.node.metrics();
        HealthView {
            status: "ok".into(),
            node: self.node.cfg.name.clone(),
            node_id: self.node.cfg.node_id,
            role: role_name(m.state).into(),
            leader: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
        }
    }
}

fn role_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Maps a node error to the API error with the same meaning.
fn api(e: NodeError) -> ApiError {
    match e {
        NodeError::NotLeader { leader_api } => ApiError::NotLeader { leader_api },
        NodeError::Refused(m) => ApiError::Forbidden(m),
        NodeError::BadRequest(m) => ApiError::BadRequest(m),
        NodeError::Unavailable(m) => ApiError::Unavailable(m),
        NodeError::Internal(m) => ApiError::Internal(m),
    }
}

fn parse_json(text: &str) -> serde_json::Value {
    // Stored values were produced by serde_json from a Value, so they parse;
    // should one ever not, show it as a string rather than fail the read.
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

fn config_view(e: ConfigEntry) -> ConfigEntryView {
    ConfigEntryView {
        value: parse_json(&e.value_json),
        key: e.key,
        version: e.version,
        updated_by: e.updated_by,
        updated_at_ms: e.updated_ms,
    }
}

fn session_view(s: Session) -> SessionView {
    SessionView {
        data: parse_json(&s.data_json),
        id: s.id,
        owner: s.owner,
        created_at_ms: s.created_ms,
        expires_at_ms: s.expires_ms,
    }
}

fn encode_value(v: &serde_json::Value) -> Result<String, ApiError> {
    let text = v.to_string();
    if text.len() > MAX_VALUE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "value is {} bytes; the limit is {MAX_VALUE_BYTES}",
            text.len()
        )));
    }
    Ok(text)
}

fn parse_kind(kind: Option<&str>) -> Result<NodeKind, ApiError> {
    match kind {
        None | Some("appliance") => Ok(NodeKind::Appliance),
        Some("witness") => Ok(NodeKind::Witness),
        Some(other) => Err(ApiError::BadRequest(format!(
            "kind must be \"appliance\" or \"witness\", not {other:?}"
        ))),
    }
}

fn unexpected(r: Response) -> ApiError {
    ApiError::Internal(format!("unexpected state machine response {r:?}"))
}

impl AdminBackend for Backend {
    fn authorize(&self, bearer_token: &str) -> bool {
        self.node.authorize(bearer_token)
    }

    async fn health(&self) -> Result<HealthView, ApiError> {
        Ok(self.local_health())
    }

    async fn config_get(
        &self,
        key: String,
        stale: bool,
    ) -> Result<(ConfigEntryView, ReadMeta), ApiError> {
        self.node.read_barrier(stale).await.map_err(api)?;
        let e = self
            .node
            .reader()
            .config_get(&key)
            .ok_or_else(|| ApiError::NotFound(format!("no config key {key:?}")))?;
        Ok((config_view(e), self.meta(stale)))
    }

    async fn config_list(
        &self,
        prefix: Option<String>,
        limit: usize,
        stale: bool,
    ) -> Result<(Vec<ConfigEntryView>, ReadMeta), ApiError> {
        self.node.read_barrier(stale).await.map_err(api)?;
        let items = self
            .node
            .reader()
            .config_list(prefix.as_deref().unwrap_or(""), limit);
        Ok((
            items.into_iter().map(config_view).collect(),
            self.meta(stale),
        ))
    }

    async fn config_put(
        &self,
        key: String,
        value: serde_json::Value,
        if_version: Option<u64>,
        actor: String,
    ) -> Result<ConfigEntryView, ApiError> {
        let value_json = encode_value(&value)?;
        let at_ms = now_ms();
        let req = Request::ConfigPut {
            key: key.clone(),
            value_json,
            actor: actor.clone(),
            at_ms,
            if_version,
        };
        match self.node.write_app(req).await.map_err(api)? {
            Response::ConfigWritten { version } => Ok(ConfigEntryView {
                key,
                value,
                version,
                updated_by: actor,
                updated_at_ms: at_ms,
            }),
            Response::Refused { reason } => Err(ApiError::Conflict(reason)),
            other => Err(unexpected(other)),
        }
    }

    async fn config_delete(&self, key: String, actor: String) -> Result<(), ApiError> {
        let req = Request::ConfigDelete {
            key: key.clone(),
            actor,
            at_ms: now_ms(),
        };
        match self.node.write_app(req).await.map_err(api)? {
            Response::Deleted { existed: true } => Ok(()),
            Response::Deleted { existed: false } => {
                Err(ApiError::NotFound(format!("no config key {key:?}")))
            }
            Response::Refused { reason } => Err(ApiError::Conflict(reason)),
            other => Err(unexpected(other)),
        }
    }

    async fn session_create(&self, req: SessionCreate) -> Result<SessionView, ApiError> {
        let data_json = encode_value(&req.data)?;
        let created_ms = now_ms();
        let expires_ms = created_ms.saturating_add(req.ttl_secs.saturating_mul(1000));
        let id = random_secret(18);
        let cmd = Request::SessionPut {
            id: id.clone(),
            owner: req.owner.clone(),
            data_json,
            created_ms,
            expires_ms,
        };
        match self.node.write_app(cmd).await.map_err(api)? {
            Response::Ok => Ok(SessionView {
                id,
                owner: req.owner,
                data: req.data,
                created_at_ms: created_ms,
                expires_at_ms: expires_ms,
            }),
            Response::Refused { reason } => Err(ApiError::Conflict(reason)),
            other => Err(unexpected(other)),
        }
    }

    async fn session_get(
        &self,
        id: String,
        stale: bool,
    ) -> Result<(SessionView, ReadMeta), ApiError> {
        self.node.read_barrier(stale).await.map_err(api)?;
        let s = self
            .node
            .reader()
            .session_get(&id, now_ms())
            .ok_or_else(|| ApiError::NotFound(format!("no session {id:?}")))?;
        Ok((session_view(s), self.meta(stale)))
    }

    async fn session_list(
        &self,
        limit: usize,
        stale: bool,
    ) -> Result<(Vec<SessionView>, ReadMeta), ApiError> {
        self.node.read_barrier(stale).await.map_err(api)?;
        let items = self.node.reader().session_list(now_ms(), limit);
        Ok((
            items.into_iter().map(session_view).collect(),
            self.meta(stale),
        ))
    }

    async fn session_delete(&self, id: String) -> Result<(), ApiError> {
        match self
            .node
            .write_app(Request::SessionDelete { id: id.clone() })
            .await
            .map_err(api)?
        {
            Response::Deleted { existed: true } => Ok(()),
            Response::Deleted { existed: false } => {
                Err(ApiError::NotFound(format!("no session {id:?}")))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn cluster(&self, stale: bool) -> Result<ClusterView, ApiError> {
        let _ = stale; // the view is always this node's own; peers are probed live.
        let m = self.node.metrics();
        let membership = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let me = self.node.cfg.node_id;
        let voters = &voters;
        let probes = membership.nodes().map(|(id, info)| {
            let (id, info) = (*id, info.clone());
            let probe = self.probe.clone();
            let local = (id == me).then(|| self.local_health());
            async move {
                let health = match (local, probe) {
                    (Some(h), _) => Some(h),
                    (None, Some(client)) => {
                        let c = client.with_base(&info.api_addr);
                        tokio::time::timeout(PEER_PROBE_TIMEOUT, c.get::<HealthView>("/health"))
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                    (None, None) => None,
                };
                MemberView {
                    id,
                    name: info.name.clone(),
                    kind: kind_name(info.kind).into(),
                    voter: voters.contains(&id),
                    peer_addr: info.peer_addr.clone(),
                    api_addr: info.api_addr.clone(),
                    last_log_index: health.as_ref().and_then(|h| h.last_log_index),
                    committed_index: health.as_ref().and_then(|h| h.committed_index),
                    applied_index: health.as_ref().and_then(|h| h.applied_index),
                    reachable: Some(health.is_some()),
                }
            }
        });
        let members = futures::future::join_all(probes).await;
        Ok(ClusterView {
            cluster_id: self.node.cfg.cluster_id.clone(),
            this_node: me,
            leader: m.current_leader,
            term: m.current_term,
            members,
        })
    }

    async fn create_join_token(
        &self,
        req: JoinTokenRequest,
        actor: String,
    ) -> Result<JoinTokenView, ApiError> {
        let kind = parse_kind(req.kind.as_deref())?;
        let ttl = req.ttl_secs.map(Duration::from_secs);
        let (token, expires_at_ms) = self
            .node
            .create_join_token(ttl, kind, &actor)
            .await
            .map_err(api)?;
        Ok(JoinTokenView {
            token,
            expires_at_ms,
        })
    }

    async fn join(&self, req: JoinRequest) -> Result<JoinResponse, ApiError> {
        let kind = parse_kind(Some(&req.kind))?;
        let grant = self
            .node
            .handle_join(NodeJoin {
                token: req.token,
                name: req.name,
                kind,
                peer_addr: req.peer_addr,
                api_addr: req.api_addr,
                csr_pem: req.csr_pem,
            })
            .await
            .map_err(api)?;
        Ok(JoinResponse {
            node_id: grant.node_id,
            cluster_id: grant.cluster_id,
            cert_pem: grant.cert_pem,
            ca_pem: grant.ca_pem,
            ca_key_pem: grant.ca_key_pem,
            members: self.cluster(true).await?.members,
        })
    }

    // --- relationship API: filled in by the node crate ---

    async fn status(&self) -> Result<StatusView, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn history(
        &self,
        _before: Option<u64>,
        _limit: usize,
        _kind: Option<String>,
    ) -> Result<HistoryPage, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn settings(&self) -> Result<SettingsView, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn settings_put(
        &self,
        _update: SettingsUpdate,
        _actor: String,
    ) -> Result<SettingsView, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn swap(&self, _req: SwapRequest, _actor: String) -> Result<SwapOutcome, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn sync(&self, _req: SyncRequest, _actor: String) -> Result<SyncReport, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn break_relationship(&self, _actor: String) -> Result<BreakOutcome, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn health_primary(&self) -> Result<RoleHealth, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn health_backup(&self, _max_lag: Option<u64>) -> Result<RoleHealth, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    async fn readiness(&self) -> Result<ReadinessView, ApiError> {
        Err(ApiError::Unavailable("not implemented yet".into()))
    }
}
