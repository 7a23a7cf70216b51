//! The node's implementation of the web crate's [`AdminBackend`].
//!
//! Translates API calls into replicated commands and local reads, and node
//! errors into [`ApiError`]s.

use std::sync::Arc;
use std::time::Duration;

use tandem_storage::{Request, Response};
use tandem_web::{
    AdminBackend, AdminTokenRotated, ApiError, ApiTokenCreated, ApiTokenView, BreakOutcome,
    CertificateView, ClusterView, ConfigEntryView, HealthView, HistoryEventView, HistoryPage,
    JoinRequest, JoinResponse, JoinTokenRequest, JoinTokenView, MaintenanceOutcome,
    MaintenanceStart, MaintenanceView, MemberView, ReadMeta, ReadinessView, RejoinTokenRequest,
    RoleHealth, SessionCreate, SessionView, SettingsUpdate, SettingsView, SetupOutcome,
    SetupRequest, StatusView, SwapOutcome, SwapRequest, SyncReport, SyncRequest, UserView,
    WindowRequest,
};

use crate::client::ApiClient;
use crate::join::{random_secret, JoinRequest as NodeJoin};
use crate::node::Node;
use crate::roles::Role;
use crate::settings::Settings;
use crate::util::now_ms;

use super::convert::*;
use super::errors::{api, rejected};
use serde_json::json;

/// The admin backend of one node.
pub struct Backend {
    pub(super) node: Arc<Node>,
    /// Unauthenticated client (for peers' `/health`), trusting the cluster
    /// CA; aimed at a member with `ApiClient::for_node`, which checks it is
    /// that member.
    pub(super) probe: Option<ApiClient>,
}

impl Backend {
    pub(super) fn settings_view(&self) -> SettingsView {
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
}

/// Member `id`'s own `/health` at `api_addr`, asked through `probe` so
/// that only that member's certificate (`tandem-node-<id>`) is accepted;
/// `None` when it does not answer in time (or cannot be asked).
pub(super) async fn peer_health(probe: &ApiClient, id: u64, api_addr: &str) -> Option<HealthView> {
    let client = match probe.for_node(api_addr, id) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(peer = id, error = %e, "no client to probe the peer");
            return None;
        }
    };
    tokio::time::timeout(PEER_PROBE_TIMEOUT, client.get::<HealthView>("/health"))
        .await
        .ok()?
        .ok()
}

/// Default `max_lag` of `/health/backup`, in entries.
pub const DEFAULT_BACKUP_MAX_LAG: u64 = 100;

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
        // Busy (other argon2 runs waiting) is a moment's unavailability.
        let password_hash = crate::users::hash_password(password)
            .await
            .map_err(ApiError::Unavailable)?;
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
            Response::Refused { reason } => Err(rejected(reason)),
            other => Err(unexpected(other)),
        }
    }
}

impl AdminBackend for Backend {
    fn authorize(&self, bearer_token: &str) -> Option<String> {
        self.node.authorize(bearer_token)
    }

    async fn status(&self) -> Result<StatusView, ApiError> {
        self.status_view().await
    }

    async fn readiness(&self) -> Result<ReadinessView, ApiError> {
        self.readiness_view().await
    }

    async fn maintenance(&self) -> Result<MaintenanceView, ApiError> {
        Ok(self.node.maintenance_view())
    }

    async fn maintenance_start(
        &self,
        req: MaintenanceStart,
        actor: String,
    ) -> Result<MaintenanceOutcome, ApiError> {
        self.node.maintenance_start(req, &actor).await.map_err(api)
    }

    async fn maintenance_end(
        &self,
        node: String,
        actor: String,
    ) -> Result<MaintenanceOutcome, ApiError> {
        self.node.maintenance_end(&node, &actor).await.map_err(api)
    }

    async fn window_schedule(
        &self,
        req: WindowRequest,
        actor: String,
    ) -> Result<MaintenanceView, ApiError> {
        self.node.window_schedule(req, &actor).await.map_err(api)
    }

    async fn window_cancel(&self, id: u64, actor: String) -> Result<MaintenanceView, ApiError> {
        self.node.window_cancel(id, &actor).await.map_err(api)
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
            Response::Refused { reason } => Err(rejected(reason)),
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
            Response::Refused { reason } => Err(rejected(reason)),
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
            Response::Refused { reason } => Err(rejected(reason)),
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
                    (None, Some(client)) => peer_health(&client, id, &info.api_addr).await,
                    (None, None) => None,
                };
                MemberView {
                    id,
                    name: info.name.clone(),
                    kind: crate::node::kind_view(info.kind),
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

    async fn create_rejoin_token(
        &self,
        req: RejoinTokenRequest,
        actor: String,
    ) -> Result<JoinTokenView, ApiError> {
        let ttl = req.ttl_secs.map(Duration::from_secs);
        let (token, expires_at_ms) = self
            .node
            .create_rejoin_token(ttl, req.node, &actor)
            .await
            .map_err(api)?;
        Ok(JoinTokenView {
            token,
            expires_at_ms,
        })
    }

    async fn renew_certificate(&self, actor: String) -> Result<CertificateView, ApiError> {
        self.node.renew_certificate(&actor).await.map_err(api)
    }

    async fn rotate_admin_token(&self, actor: String) -> Result<AdminTokenRotated, ApiError> {
        let token = format!("tdm_{}", random_secret(32));
        let at_ms = now_ms();
        let req = Request::Multi(vec![
            Request::SetAdminTokenHash {
                hash: crate::join::hash_secret(&token),
            },
            Request::HistoryAppend {
                at_ms,
                node: self.node.cfg.node_id,
                kind: "admin_token_rotated".into(),
                actor,
                details_json: "{}".into(),
            },
        ]);
        match self.node.write(req).await.map_err(api)? {
            Response::Multi(_) => Ok(AdminTokenRotated { token }),
            Response::Refused { reason } => Err(rejected(reason)),
            other => Err(unexpected(other)),
        }
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
                place: crate::placement::Place {
                    site: req.site,
                    host: req.host,
                },
                allow_same_site: req.allow_same_site,
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
        let before = self.node.settings();
        let settings = Settings::from_update(&update).after(&before);
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
            Response::Refused { reason } => Err(rejected(reason)),
            other => Err(unexpected(other)),
        }
    }

    async fn swap(&self, req: SwapRequest, actor: String) -> Result<SwapOutcome, ApiError> {
        self.node.swap(req, &actor).await.map_err(api)
    }

    async fn sync(&self, req: SyncRequest, actor: String) -> Result<SyncReport, ApiError> {
        self.node.sync(req.verify, &actor).await.map_err(api)
    }

    async fn break_relationship(&self, actor: String) -> Result<BreakOutcome, ApiError> {
        self.node.break_relationship(&actor).await.map_err(api)
    }

    async fn remove_witness(&self, actor: String) -> Result<BreakOutcome, ApiError> {
        self.node.remove_witness(&actor).await.map_err(api)
    }

    async fn rejoin(&self, token: String, actor: String) -> Result<BreakOutcome, ApiError> {
        self.node.rejoin(&token, &actor).await.map_err(api)
    }

    async fn setup(&self, req: SetupRequest, actor: String) -> Result<SetupOutcome, ApiError> {
        self.node.setup(req, &actor).await.map_err(api)
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
        let fresh = contact.is_some_and(|d| d < self.node.timing().primary_timeout);
        let limit = max_lag.unwrap_or(DEFAULT_BACKUP_MAX_LAG);
        let reason = if role != Role::Backup {
            Some(format!("this node is {}", role.as_str()))
        } else if self.node.in_maintenance(self.node.cfg.node_id) {
            Some("this node is in maintenance: it will not take over".to_string())
        } else if let Some((check, output)) = self.node.checks.failing().into_iter().next() {
            Some(format!(
                "service check {check} is failing ({output}): this node will not take over"
            ))
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
    async fn verify_user(&self, name: String, password: String) -> Result<bool, ApiError> {
        let hash = self.node.reader().user(&name).map(|u| u.password_hash);
        crate::users::verify_password(password, hash)
            .await
            .map_err(ApiError::Unavailable)
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
            Response::Refused { reason } => Err(rejected(reason)),
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
            Response::Refused { reason } => Err(rejected(reason)),
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
