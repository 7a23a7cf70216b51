//! The node's implementation of the web crate's [`AdminBackend`].
//!
//! Translates API calls into replicated commands and local reads, and node
//! errors into [`ApiError`]s.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tandem_storage::{AdminUser, ConfigEntry, NodeKind, Request, Response, Session};
use tandem_web::{
    AdminBackend, ApiError, ApiTokenCreated, ApiTokenView, BreakOutcome, ClusterView,
    ConfigEntryView, HealthView, HistoryEventView, HistoryPage, HostView, JoinRequest,
    JoinResponse, JoinTokenRequest, JoinTokenView, MemberView, PeerView, ReadMeta, ReadinessView,
    RoleHealth, SessionCreate, SessionView, SettingsUpdate, SettingsView, SetupOutcome,
    SetupRequest, StatusView, SwapOutcome, SwapRequest, SyncReport, SyncRequest, UserView,
};

use crate::client::ApiClient;
use crate::node::{kind_name, random_secret, JoinRequest as NodeJoin, Node, NodeError};
use crate::roles::Role;
use crate::settings::Settings;
use crate::util::now_ms;
use serde_json::json;

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
    fn settings_view(&self) -> SettingsView {
        let record = self.node.reader().settings();
        let settings = Settings::parse(record.as_ref().map(|r| r.settings_json.as_str()));
        match record {
            Some(r) => settings.view(r.version, Some(r.updated_by), Some(r.updated_ms)),
            None => settings.view(0, None, None),
        }
    }

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
        let problems: Vec<String> = self
            .node
            .supervision
            .deaths()
            .iter()
            .map(|d| {
                format!(
                    "its {} died at {} ({}): it no longer leads and stays a backup until it is \
                     restarted",
                    d.task,
                    crate::cli::render::iso8601(d.at_ms),
                    d.why
                )
            })
            .collect();
        HealthView {
            status: if problems.is_empty() {
                "ok"
            } else {
                "degraded"
            }
            .into(),
            problems,
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
            shared_ips_held: self
                .node
                .shared_ips
                .get()
                .map(|h| h.report().held)
                .unwrap_or_default(),
            disk_free_bytes: self.node.disk.free(),
            disk_reserve_bytes: Some(self.node.disk.reserve()),
        }
    }
}

/// What the status page says about a node's health, from its `/health`:
/// a disk below the reserve, an essential task that died, and Raft stopped
/// (by a storage failure).
fn storage_notes(name: &str, h: &HealthView) -> Vec<String> {
    let mut notes = Vec::new();
    const MIB: f64 = 1024.0 * 1024.0;
    if let (Some(free), Some(reserve)) = (h.disk_free_bytes, h.disk_reserve_bytes) {
        if reserve > 0 && free < reserve {
            notes.push(format!(
                "{name}: only {:.1} MiB free for its data directory, below its reserve of {:.0} MiB: \
                 as primary it refuses configuration and session writes, and its Raft stops if the \
                 disk fills; free space there",
                free as f64 / MIB,
                reserve as f64 / MIB
            ));
        }
    }
    for p in &h.problems {
        notes.push(format!("{name}: {p}"));
    }
    if h.role == role_name(ServerState::Shutdown) {
        notes.push(format!(
            "{name}: Raft has stopped there after a storage failure (such as a full disk, see its \
             log): it neither replicates nor serves writes until it is restarted"
        ));
    }
    notes
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

/// Default `max_lag` of `/health/backup`, in entries.
pub const DEFAULT_BACKUP_MAX_LAG: u64 = 100;

/// Maps an action's error: refusals are 409 with the reason.
fn action(e: NodeError) -> ApiError {
    match e {
        NodeError::Refused(m) => ApiError::Refused(m),
        other => api(other),
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
        NodeError::InsufficientStorage(m) => ApiError::InsufficientStorage(m),
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

fn user_view(u: AdminUser) -> UserView {
    UserView {
        name: u.name,
        created_at_ms: u.created_ms,
        updated_at_ms: u.updated_ms,
        updated_by: u.updated_by,
    }
}

impl Backend {
    /// Proposes `req` together with a history event of `kind` by `actor`;
    /// returns the response to `req`.
    async fn write_recorded(
        &self,
        req: Request,
        kind: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<Response, ApiError> {
        let cmd = Request::Multi(vec![
            req,
            Request::HistoryAppend {
                at_ms: now_ms(),
                node: self.node.cfg.node_id,
                kind: kind.into(),
                actor: actor.into(),
                details_json: details.to_string(),
            },
        ]);
        match self.node.write(cmd).await.map_err(api)? {
            Response::Multi(mut r) if !r.is_empty() => Ok(r.remove(0)),
            other => Ok(other),
        }
    }

    async fn set_password(
        &self,
        name: &str,
        password: String,
        actor: &str,
        kind: &str,
    ) -> Result<UserView, ApiError> {
        let password_hash = crate::users::hash_password(password)
            .await
            .map_err(ApiError::Internal)?;
        let at_ms = now_ms();
        let req = Request::UserPut {
            name: name.to_owned(),
            password_hash,
            actor: actor.to_owned(),
            at_ms,
        };
        match self
            .write_recorded(req, kind, actor, json!({ "user": name }))
            .await?
        {
            Response::Ok => self
                .node
                .reader()
                .user(name)
                .map(user_view)
                .ok_or_else(|| ApiError::Internal(format!("user {name:?} vanished"))),
            Response::Refused { reason } => Err(ApiError::BadRequest(reason)),
            other => Err(unexpected(other)),
        }
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
                actor: req.actor.unwrap_or_else(|| "tandem join".into()),
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

    // --- relationship API ---

    async fn status(&self) -> Result<StatusView, ApiError> {
        let node = &self.node;
        let m = node.metrics();
        let ep = node.epoch();
        let (role, lease) = node.compute_role();
        let (_, _, since) = node.roles.current();
        let membership = m.membership_config.membership().clone();
        let facts = node.peer_facts();
        let me = node.cfg.node_id;
        let probes = facts.iter().map(|f| {
            let info = membership.get_node(&f.id).cloned();
            let probe = self.probe.clone();
            async move {
                // Every peer not known to be down is asked for its /health
                // (its own view: the shared IPs it holds, its indexes).
                let health = match (f.reachable, probe, &info) {
                    (None | Some(true), Some(client), Some(info)) => {
                        let c = client.with_base(&info.api_addr);
                        tokio::time::timeout(PEER_PROBE_TIMEOUT, c.get::<HealthView>("/health"))
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                    _ => None,
                };
                (f, info, health)
            }
        });
        let probed = futures::future::join_all(probes).await;
        let peer_notes: Vec<String> = probed
            .iter()
            .filter_map(|(_, info, health)| Some((info.as_ref()?, health.as_ref()?)))
            .flat_map(|(info, h)| storage_notes(&info.name, h))
            .collect();
        let peers = probed
            .into_iter()
            .map(|(f, info, health)| {
                let info = info.unwrap_or_default();
                let role = if info.kind == NodeKind::Witness {
                    "witness"
                } else if ep.primary == Some(f.id) {
                    "primary"
                } else {
                    "backup"
                };
                let lag_bytes = match f.lag_entries {
                    Some(0) => Some(0),
                    Some(_) => node.lag_bytes(f.matched),
                    None => None,
                };
                PeerView {
                    id: f.id,
                    name: info.name.clone(),
                    kind: kind_name(info.kind).into(),
                    role: role.into(),
                    voter: f.voter,
                    reachable: f.reachable.unwrap_or(health.is_some()),
                    last_contact_ms: f.last_contact_ms.or(health.as_ref().map(|_| now_ms())),
                    lag_entries: f.lag_entries,
                    lag_bytes,
                    lag_ms: f.lag_ms,
                    api_addr: info.api_addr.clone(),
                    shared_ips_held: health.as_ref().map(|h| h.shared_ips_held.clone()),
                }
            })
            .collect::<Vec<_>>();
        let topology = if membership.nodes().count() <= 1 {
            "standalone"
        } else if membership.nodes().any(|(_, n)| n.kind == NodeKind::Witness) {
            "pair+witness"
        } else {
            "pair"
        };
        let mut notes = Vec::new();
        let settings = node.settings();
        if settings.timing() != node.timing {
            notes.push(format!(
                "primary timeout {} ms takes effect when this node restarts (running with {} ms)",
                settings.primary_timeout_ms,
                node.timing.primary_timeout.as_millis()
            ));
        }
        if ep.forced {
            notes.push(format!("epoch {} began with a forced promotion", ep.epoch));
        }
        if let Some(n) = node.roles.fence.notice() {
            notes.push(format!(
                "node {} no longer counts this node as a member ({:?}, its epoch {}); this node does not serve; rejoin to resync as backup",
                n.by, n.kind, n.epoch
            ));
        }
        if let Some(report) = node.shared_ips.get().map(|h| h.report()) {
            for e in &report.errors {
                notes.push(format!("shared IP ({}): {e}", report.driver));
            }
            if let Some(r) = &report.reachability {
                notes.push(format!(
                    "after takeover (epoch {}), {} {} from {}: {}",
                    r.epoch,
                    r.target,
                    if r.ok { "answered" } else { "did not answer" },
                    r.from,
                    r.detail
                ));
            }
        }
        notes.extend(storage_notes(&node.cfg.name, &self.local_health()));
        notes.extend(peer_notes);
        if let Some(path) = node.roles.diverged_export() {
            notes.push(format!(
                "writes this node never replicated were exported to {path}"
            ));
        }
        Ok(StatusView {
            this_host: HostView {
                id: me,
                name: node.cfg.name.clone(),
                kind: kind_name(node.cfg.kind).into(),
                role: role.as_str().into(),
                site: None,
                epoch: ep.epoch,
                term: m.current_term,
                leader: m.current_leader,
                last_log_index: m.last_log_index,
                committed_index: m.local_committed.map(|l| l.index),
                applied_index: m.last_applied.map(|l| l.index),
                lease_valid: lease,
                primary_since_ms: since,
                shared_ips_held: node
                    .shared_ips
                    .get()
                    .map(|h| h.report().held)
                    .unwrap_or_default(),
                notes,
                peer_addr: node.cfg.peer_advertise.clone(),
            },
            peers,
            topology: topology.into(),
            settings: self.settings_view(),
            epoch: ep.epoch,
            primary: ep.primary,
        })
    }

    async fn history(
        &self,
        before: Option<u64>,
        limit: usize,
        kind: Option<String>,
    ) -> Result<HistoryPage, ApiError> {
        let reader = self.node.reader();
        let events = reader.history(before, limit, kind.as_deref());
        let m = self.node.metrics();
        let next_before = if events.len() == limit {
            events.last().map(|e| e.seq)
        } else {
            None
        };
        let items = events
            .into_iter()
            .map(|e| HistoryEventView {
                node_name: m
                    .membership_config
                    .get_node(&e.node)
                    .map(|n| n.name.clone()),
                details: parse_json(&e.details_json),
                seq: e.seq,
                at_ms: e.at_ms,
                node: e.node,
                kind: e.kind,
                actor: e.actor,
            })
            .collect();
        Ok(HistoryPage {
            items,
            next_before,
            total: reader.history_total(),
        })
    }

    async fn settings(&self) -> Result<SettingsView, ApiError> {
        Ok(self.settings_view())
    }

    async fn settings_put(
        &self,
        update: SettingsUpdate,
        actor: String,
    ) -> Result<SettingsView, ApiError> {
        let settings = Settings::from_update(&update);
        let before = self.node.settings();
        let at_ms = now_ms();
        let req = Request::Multi(vec![
            Request::SettingsPut {
                settings_json: settings.to_json(),
                if_version: update.if_version,
                actor: actor.clone(),
                at_ms,
            },
            Request::HistoryAppend {
                at_ms,
                node: self.node.cfg.node_id,
                kind: "settings_change".into(),
                actor: actor.clone(),
                details_json: json!({ "before": before, "after": settings }).to_string(),
            },
        ]);
        match self.node.write(req).await.map_err(api)? {
            Response::Multi(r) => match r.first() {
                Some(Response::SettingsWritten { version }) => {
                    Ok(settings.view(*version, Some(actor), Some(at_ms)))
                }
                other => Err(ApiError::Internal(format!(
                    "unexpected settings answer {other:?}"
                ))),
            },
            Response::Refused { reason } => Err(ApiError::Conflict(reason)),
            other => Err(unexpected(other)),
        }
    }

    async fn swap(&self, req: SwapRequest, actor: String) -> Result<SwapOutcome, ApiError> {
        self.node.swap(req, &actor).await.map_err(action)
    }

    async fn sync(&self, req: SyncRequest, actor: String) -> Result<SyncReport, ApiError> {
        self.node.sync(req.verify, &actor).await.map_err(action)
    }

    async fn break_relationship(&self, actor: String) -> Result<BreakOutcome, ApiError> {
        self.node.break_relationship(&actor).await.map_err(action)
    }

    async fn remove_witness(&self, actor: String) -> Result<BreakOutcome, ApiError> {
        self.node.remove_witness(&actor).await.map_err(action)
    }

    async fn rejoin(&self, actor: String) -> Result<BreakOutcome, ApiError> {
        self.node.rejoin(&actor).await.map_err(action)
    }

    async fn setup(&self, req: SetupRequest, actor: String) -> Result<SetupOutcome, ApiError> {
        self.node.setup(req, &actor).await.map_err(action)
    }

    async fn health_primary(&self) -> Result<RoleHealth, ApiError> {
        let (role, lease) = self.node.compute_role();
        let ok = match role {
            Role::Primary => self.node.check_writable().is_ok(),
            Role::Standalone => lease,
            _ => false,
        };
        let reason = (!ok).then(|| match role {
            Role::Primary => {
                "primary, but writes are paused (swap or verify in progress)".to_string()
            }
            Role::Standalone => "standalone without a confirmed lease".to_string(),
            other => format!("this node is {}", other.as_str()),
        });
        Ok(RoleHealth {
            ok,
            role: role.as_str().into(),
            reason,
        })
    }

    async fn health_backup(&self, max_lag: Option<u64>) -> Result<RoleHealth, ApiError> {
        let (role, _) = self.node.compute_role();
        let m = self.node.metrics();
        let lag = m
            .local_committed
            .map(|c| c.index)
            .unwrap_or(0)
            .saturating_sub(m.last_applied.map_or(0, |l| l.index));
        let contact = self.node.roles.since_leader_contact();
        let fresh = contact.is_some_and(|d| d < self.node.timing.primary_timeout);
        let limit = max_lag.unwrap_or(DEFAULT_BACKUP_MAX_LAG);
        let reason = if role != Role::Backup {
            Some(format!("this node is {}", role.as_str()))
        } else if !fresh {
            Some("no contact with the primary within the primary timeout".to_string())
        } else if lag > limit {
            Some(format!(
                "{lag} committed entries not yet applied (limit {limit})"
            ))
        } else {
            None
        };
        Ok(RoleHealth {
            ok: reason.is_none(),
            role: role.as_str().into(),
            reason,
        })
    }

    async fn readiness(&self) -> Result<ReadinessView, ApiError> {
        let node = &self.node;
        let m = node.metrics();
        let ep = node.epoch();
        let membership = m.membership_config.membership().clone();
        let mut reasons = Vec::new();
        let cert_pem = std::fs::read_to_string(node.dir.node_cert()).unwrap_or_default();
        let certificates_ok = match tandem_certs::expires_at(&cert_pem) {
            Ok(t) => {
                let left = t - (now_ms() / 1000) as i64;
                if left < 30 * 86_400 {
                    reasons.push(format!(
                        "this node's certificate expires in {} days",
                        left / 86_400
                    ));
                }
                left >= 30 * 86_400
            }
            Err(e) => {
                reasons.push(format!("this node's certificate cannot be read: {e}"));
                false
            }
        };
        let settings = node.settings();
        let report = node.shared_ips.get().map(|h| h.report());
        let spec_errors = crate::shared_ip::specs_for_node(&settings.shared_ips, &node.cfg.name).1;
        for e in &spec_errors {
            reasons.push(format!("shared IP setting: {e}"));
        }
        for e in report.iter().flat_map(|r| r.errors.iter()) {
            reasons.push(format!("shared IP: {e}"));
        }
        let shared_ips_ok = spec_errors.is_empty() && report.is_none_or(|r| r.errors.is_empty());
        let facts = node.peer_facts();
        let backup = membership
            .nodes()
            .find(|(id, n)| Some(**id) != ep.primary && n.kind == NodeKind::Appliance)
            .map(|(id, _)| *id);
        let voters: Vec<u64> = membership.voter_ids().collect();
        let (would, lag) = match (ep.primary, backup) {
            (Some(primary), Some(b)) => {
                // Without the primary, the remaining voters must still form a majority.
                let remaining = voters.iter().filter(|v| **v != primary).count();
                let majority = remaining * 2 > voters.len();
                let backup_voter = voters.contains(&b);
                let fact = facts.iter().find(|f| f.id == b);
                let lag = fact.and_then(|f| f.lag_entries);
                let reachable = if b == node.cfg.node_id {
                    node.roles
                        .since_leader_contact()
                        .is_some_and(|d| d < node.timing.primary_timeout)
                } else {
                    fact.and_then(|f| f.reachable).unwrap_or(false)
                };
                // Pair + witness: the backup votes and wins the election with
                // the witness. Pair only: the backup is a learner and takes
                // over by itself only with automatic failover on and at least
                // one connectivity test address to tell "primary down" from
                // "cut off".
                let by_election = backup_voter && majority;
                let by_itself =
                    !backup_voter && settings.auto_failover && !settings.test_ips.is_empty();
                if !by_election && !by_itself {
                    if backup_voter {
                        reasons.push(
                            "without the primary the remaining voters are no majority (add a witness)"
                                .into(),
                        );
                    } else if !settings.auto_failover {
                        reasons.push("pair without a witness and automatic failover is off".into());
                    } else {
                        reasons.push(
                            "automatic failover is on but no connectivity test address is set"
                                .into(),
                        );
                    }
                }
                if !reachable {
                    reasons.push(format!("backup {b} is not in contact with the primary"));
                }
                ((by_election || by_itself) && reachable, lag)
            }
            (None, _) => {
                reasons.push("there is no primary".into());
                (false, None)
            }
            (_, None) => {
                reasons.push("there is no backup appliance".into());
                (false, None)
            }
        };
        Ok(ReadinessView {
            would_fail_over: would,
            after_ms: would.then(|| {
                let with_witness = membership.nodes().any(|(_, n)| n.kind == NodeKind::Witness);
                let t = &node.timing;
                // By election: the longest election timeout and a heartbeat;
                // pair only: the primary timeout plus the connectivity probe.
                let d = if with_witness {
                    t.election_max + t.heartbeat
                } else {
                    t.primary_timeout + t.primary_timeout / 2
                };
                d.as_millis() as u64
            }),
            lag_entries: lag,
            reasons,
            certificates_ok,
            shared_ips_ok,
        })
    }
    async fn verify_user(&self, name: String, password: String) -> Result<bool, ApiError> {
        let hash = self.node.reader().user(&name).map(|u| u.password_hash);
        crate::users::verify_password(password, hash)
            .await
            .map_err(ApiError::Internal)
    }

    async fn users(&self) -> Result<Vec<UserView>, ApiError> {
        Ok(self
            .node
            .reader()
            .users()
            .into_iter()
            .map(user_view)
            .collect())
    }

    async fn user_put(
        &self,
        name: String,
        password: String,
        actor: String,
    ) -> Result<UserView, ApiError> {
        let kind = if self.node.reader().user(&name).is_some() {
            "user_password_set"
        } else {
            "user_added"
        };
        self.set_password(&name, password, &actor, kind).await
    }

    async fn user_delete(&self, name: String, actor: String) -> Result<(), ApiError> {
        let req = Request::UserDelete {
            name: name.clone(),
            actor: actor.clone(),
            at_ms: now_ms(),
        };
        match self
            .write_recorded(req, "user_removed", &actor, json!({ "user": name }))
            .await?
        {
            Response::Deleted { existed: true } => Ok(()),
            Response::Deleted { existed: false } => {
                Err(ApiError::NotFound(format!("no user {name:?}")))
            }
            Response::Refused { reason } => Err(ApiError::Refused(reason)),
            other => Err(unexpected(other)),
        }
    }

    async fn change_password(
        &self,
        name: String,
        old_password: String,
        new_password: String,
    ) -> Result<(), ApiError> {
        if !self.verify_user(name.clone(), old_password).await? {
            return Err(ApiError::Forbidden("the current password is wrong".into()));
        }
        self.set_password(&name, new_password, &name, "user_password_changed")
            .await
            .map(|_| ())
    }

    async fn api_token_create(
        &self,
        user: String,
        actor: String,
    ) -> Result<ApiTokenCreated, ApiError> {
        let (id, token, secret_hash) = crate::users::new_api_token();
        let at_ms = now_ms();
        let req = Request::ApiTokenCreate {
            id: id.clone(),
            user: user.clone(),
            secret_hash,
            at_ms,
        };
        match self
            .write_recorded(
                req,
                "api_token_created",
                &actor,
                json!({ "id": id, "user": user }),
            )
            .await?
        {
            Response::Ok => Ok(ApiTokenCreated {
                id,
                user,
                token,
                created_at_ms: at_ms,
            }),
            Response::Refused { reason } if reason.starts_with("no user") => {
                Err(ApiError::NotFound(reason))
            }
            Response::Refused { reason } => Err(ApiError::Conflict(reason)),
            other => Err(unexpected(other)),
        }
    }

    async fn api_token_revoke(&self, id: String, actor: String) -> Result<(), ApiError> {
        let req = Request::ApiTokenRevoke { id: id.clone() };
        match self
            .write_recorded(req, "api_token_revoked", &actor, json!({ "id": id }))
            .await?
        {
            Response::Deleted { existed: true } => Ok(()),
            Response::Deleted { existed: false } => {
                Err(ApiError::NotFound(format!("no API token {id:?}")))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn api_token_list(&self) -> Result<Vec<ApiTokenView>, ApiError> {
        Ok(self
            .node
            .reader()
            .api_tokens()
            .into_iter()
            .map(|t| ApiTokenView {
                id: t.id,
                user: t.user,
                created_at_ms: t.created_ms,
            })
            .collect())
    }
}
