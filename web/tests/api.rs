//! Handler tests: the router against a small in-memory backend, driven with
//! `tower::ServiceExt::oneshot` (no sockets).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Value};
use tandem_web::AdminApp;
use tandem_web::{
    openapi, router, AdminBackend, AdminTokenRotated, ApiError, ApiTokenCreated, ApiTokenView,
    BreakOutcome, CertificateView, ClusterView, ConfigEntryView, HealthView, HistoryEventView,
    HistoryPage, HostView, JoinRequest, JoinResponse, JoinTokenRequest, JoinTokenView, MemberView,
    PeerView, ReadMeta, ReadinessView, RejoinTokenRequest, RoleHealth, SessionCreate, SessionView,
    SettingsUpdate, SettingsView, SetupOutcome, SetupRequest, StatusView, SwapOutcome, SwapRequest,
    SyncReport, SyncRequest, UserView, VerifyReport, LOGIN_MAX_FAILURES, MAX_BODY_BYTES, ROUTES,
};
use tandem_web::{
    HoldView, MaintenanceOutcome, MaintenanceStart, MaintenanceView, WindowRequest, WindowView,
    DEFAULT_MAINTENANCE_MAX_MINUTES, DEFAULT_MAINTENANCE_REMINDER_SECS,
};
use tower::ServiceExt;

const TOKEN: &str = "s3cret";
const APPLIED: u64 = 42;

#[derive(Default)]
struct State {
    config: BTreeMap<String, ConfigEntryView>,
    sessions: BTreeMap<String, SessionView>,
    next_session: u64,
    /// When set, every leader-only call answers `NotLeader` with this.
    not_leader: Option<Option<String>>,
    last_actor: Option<String>,
    /// Relationship API calls received, as `method` or `method(args)`.
    calls: Vec<String>,
    /// When set, swap/sync/break answer `Refused` with this.
    refuse: Option<String>,
    /// What `/health/primary` and `/health/backup` say.
    is_primary: bool,
    /// Lag reported to `/health/backup`.
    lag: u64,
    settings: Option<SettingsView>,
    /// Admin users: name → password (plain text: a test double).
    users: BTreeMap<String, String>,
    /// API tokens: id → (user, token).
    api_tokens: BTreeMap<String, (String, String)>,
    /// The maintenance state.
    maintenance: MaintenanceView,
}

#[derive(Default)]
struct MemBackend {
    state: Mutex<State>,
}

impl MemBackend {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread poisons the lock; the test fails anyway.
        self.state.lock().expect("test backend lock poisoned")
    }

    fn record(&self, call: String) {
        self.lock().calls.push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    fn refusal(&self) -> Result<(), ApiError> {
        match self.lock().refuse.clone() {
            Some(m) => Err(ApiError::Refused(m)),
            None => Ok(()),
        }
    }

    fn current_settings(&self) -> SettingsView {
        self.lock()
            .settings
            .clone()
            .unwrap_or_else(|| SettingsView {
                version: 0,
                updated_by: None,
                updated_at_ms: None,
                primary_timeout_ms: 5_000,
                auto_failover: false,
                test_ips: Vec::new(),
                verify_interval_secs: 0,
                bandwidth_limit_bps: 0,
                backup_operations: false,
                shared_ips: Vec::new(),
                maintenance_max_minutes: DEFAULT_MAINTENANCE_MAX_MINUTES,
                maintenance_reminder_secs: DEFAULT_MAINTENANCE_REMINDER_SECS,
                checks: Vec::new(),
                check_hold_down_secs: 300,
                failback: tandem_web::Failback::default(),
            })
    }

    fn sync_report(verify: bool) -> SyncReport {
        SyncReport {
            backup: 2,
            from_index: Some(40),
            to_index: APPLIED,
            entries: 2,
            bytes: 512,
            snapshot: false,
            duration_ms: 7,
            verify: verify.then(|| VerifyReport {
                index: APPLIED,
                local_digest: "ab".into(),
                peer_digest: "ab".into(),
                matches: true,
            }),
        }
    }

    /// Leader-only gate: linearizable reads and writes.
    fn leader_check(&self, stale: bool) -> Result<ReadMeta, ApiError> {
        if !stale {
            if let Some(leader_api) = self.lock().not_leader.clone() {
                return Err(ApiError::NotLeader { leader_api });
            }
        }
        Ok(ReadMeta {
            applied_index: Some(APPLIED),
            stale,
        })
    }
}

impl AdminBackend for MemBackend {
    async fn verify_user(&self, name: String, password: String) -> Result<bool, ApiError> {
        Ok(self.lock().users.get(&name) == Some(&password))
    }

    async fn users(&self) -> Result<Vec<UserView>, ApiError> {
        Ok(self
            .lock()
            .users
            .iter()
            .map(|(n, p)| UserView {
                name: n.clone(),
                created_at_ms: 1,
                // Changes with the password, as a real user's does.
                updated_at_ms: p.bytes().map(u64::from).sum::<u64>() + p.len() as u64,
                updated_by: "init".into(),
            })
            .collect())
    }

    async fn user_put(
        &self,
        name: String,
        password: String,
        actor: String,
    ) -> Result<UserView, ApiError> {
        self.record(format!("user_put({name})"));
        let mut st = self.lock();
        if let Some(l) = st.not_leader.clone() {
            return Err(ApiError::NotLeader { leader_api: l });
        }
        st.last_actor = Some(actor.clone());
        st.users.insert(name.clone(), password);
        Ok(UserView {
            name,
            created_at_ms: 1,
            updated_at_ms: 2,
            updated_by: actor,
        })
    }

    async fn user_delete(&self, name: String, actor: String) -> Result<(), ApiError> {
        self.record(format!("user_delete({name})"));
        let mut st = self.lock();
        st.last_actor = Some(actor);
        if !st.users.contains_key(&name) {
            return Err(ApiError::NotFound(format!("no user {name:?}")));
        }
        if st.users.len() == 1 {
            return Err(ApiError::Refused(
                "cannot delete the last admin user".into(),
            ));
        }
        st.users.remove(&name);
        st.api_tokens.retain(|_, (u, _)| *u != name);
        Ok(())
    }

    async fn change_password(
        &self,
        name: String,
        old_password: String,
        new_password: String,
    ) -> Result<(), ApiError> {
        let mut st = self.lock();
        if st.users.get(&name) != Some(&old_password) {
            return Err(ApiError::Forbidden("the current password is wrong".into()));
        }
        st.users.insert(name, new_password);
        Ok(())
    }

    async fn api_token_create(
        &self,
        user: String,
        actor: String,
    ) -> Result<ApiTokenCreated, ApiError> {
        let mut st = self.lock();
        if !st.users.contains_key(&user) {
            return Err(ApiError::NotFound(format!("no user {user:?}")));
        }
        st.last_actor = Some(actor);
        let id = format!("t{}", st.api_tokens.len() + 1);
        let token = format!("tdu_{id}.secret");
        st.api_tokens
            .insert(id.clone(), (user.clone(), token.clone()));
        Ok(ApiTokenCreated {
            id,
            user,
            token,
            created_at_ms: 3,
        })
    }

    async fn api_token_revoke(&self, id: String, actor: String) -> Result<(), ApiError> {
        let mut st = self.lock();
        st.last_actor = Some(actor);
        st.api_tokens
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| ApiError::NotFound(format!("no API token {id:?}")))
    }

    async fn api_token_list(&self) -> Result<Vec<ApiTokenView>, ApiError> {
        Ok(self
            .lock()
            .api_tokens
            .iter()
            .map(|(id, (user, _))| ApiTokenView {
                id: id.clone(),
                user: user.clone(),
                created_at_ms: 3,
            })
            .collect())
    }

    fn authorize(&self, bearer_token: &str) -> Option<String> {
        if bearer_token == TOKEN {
            return Some(tandem_web::ADMIN_TOKEN_ACTOR.into());
        }
        self.lock()
            .api_tokens
            .values()
            .find(|(_, t)| t == bearer_token)
            .map(|(user, _)| user.clone())
    }

    async fn health(&self) -> Result<HealthView, ApiError> {
        Ok(HealthView {
            problems: Vec::new(),
            status: "ok".into(),
            node: "n1".into(),
            node_id: 1,
            role: "leader".into(),
            leader: Some(1),
            term: 3,
            applied_index: Some(APPLIED),
            last_log_index: Some(APPLIED),
            committed_index: Some(APPLIED),
            snapshot_index: None,
            purged_index: None,
            shared_ips_held: Vec::new(),
            disk_free_bytes: Some(1 << 30),
            disk_reserve_bytes: Some(256 << 20),
            checks: Vec::new(),
            checks_ok: true,
            primary_timeout_ms: Some(1000),
            lease_timeout_ms: Some(1000),
        })
    }

    async fn config_get(
        &self,
        key: String,
        stale: bool,
    ) -> Result<(ConfigEntryView, ReadMeta), ApiError> {
        let meta = self.leader_check(stale)?;
        let entry = self.lock().config.get(&key).cloned();
        entry
            .map(|e| (e, meta))
            .ok_or_else(|| ApiError::NotFound(format!("no key {key}")))
    }

    async fn config_list(
        &self,
        prefix: Option<String>,
        limit: usize,
        stale: bool,
    ) -> Result<(Vec<ConfigEntryView>, ReadMeta), ApiError> {
        let meta = self.leader_check(stale)?;
        let items = self
            .lock()
            .config
            .values()
            .filter(|e| prefix.as_deref().is_none_or(|p| e.key.starts_with(p)))
            .take(limit)
            .cloned()
            .collect();
        Ok((items, meta))
    }

    async fn config_put(
        &self,
        key: String,
        value: Value,
        if_version: Option<u64>,
        actor: String,
    ) -> Result<ConfigEntryView, ApiError> {
        self.leader_check(false)?;
        let mut st = self.lock();
        let current = st.config.get(&key).map_or(0, |e| e.version);
        if if_version.is_some_and(|v| v != current) {
            return Err(ApiError::Conflict(format!(
                "version is {current}, not {}",
                if_version.unwrap_or_default()
            )));
        }
        let entry = ConfigEntryView {
            key: key.clone(),
            value,
            version: current + 1,
            updated_by: actor.clone(),
            updated_at_ms: 1_000,
        };
        st.config.insert(key, entry.clone());
        st.last_actor = Some(actor);
        Ok(entry)
    }

    async fn config_delete(&self, key: String, actor: String) -> Result<(), ApiError> {
        self.leader_check(false)?;
        let mut st = self.lock();
        st.last_actor = Some(actor);
        st.config
            .remove(&key)
            .map(|_| ())
            .ok_or_else(|| ApiError::NotFound(format!("no key {key}")))
    }

    async fn session_create(&self, req: SessionCreate) -> Result<SessionView, ApiError> {
        self.leader_check(false)?;
        let mut st = self.lock();
        st.next_session += 1;
        let view = SessionView {
            id: format!("s{}", st.next_session),
            owner: req.owner,
            data: req.data,
            created_at_ms: 1_000,
            expires_at_ms: 1_000 + req.ttl_secs * 1_000,
        };
        st.sessions.insert(view.id.clone(), view.clone());
        Ok(view)
    }

    async fn session_get(
        &self,
        id: String,
        stale: bool,
    ) -> Result<(SessionView, ReadMeta), ApiError> {
        let meta = self.leader_check(stale)?;
        let view = self.lock().sessions.get(&id).cloned();
        view.map(|v| (v, meta))
            .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))
    }

    async fn session_list(
        &self,
        limit: usize,
        stale: bool,
    ) -> Result<(Vec<SessionView>, ReadMeta), ApiError> {
        let meta = self.leader_check(stale)?;
        let items = self.lock().sessions.values().take(limit).cloned().collect();
        Ok((items, meta))
    }

    async fn session_delete(&self, id: String) -> Result<(), ApiError> {
        self.leader_check(false)?;
        self.lock()
            .sessions
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))
    }

    async fn cluster(&self, stale: bool) -> Result<ClusterView, ApiError> {
        self.leader_check(stale)?;
        Ok(ClusterView {
            cluster_id: "c1".into(),
            this_node: 1,
            leader: Some(1),
            term: 3,
            members: vec![MemberView {
                id: 1,
                name: "n1".into(),
                kind: tandem_web::KindName::Appliance,
                voter: true,
                peer_addr: "127.0.0.1:7000".into(),
                api_addr: "https://127.0.0.1:8443".into(),
                last_log_index: Some(APPLIED),
                committed_index: None,
                applied_index: Some(APPLIED),
                reachable: None,
            }],
        })
    }

    async fn create_join_token(
        &self,
        _req: JoinTokenRequest,
        _actor: String,
    ) -> Result<JoinTokenView, ApiError> {
        self.leader_check(false)?;
        Ok(JoinTokenView {
            token: "join-abc".into(),
            expires_at_ms: 9_000,
        })
    }

    async fn create_rejoin_token(
        &self,
        req: RejoinTokenRequest,
        _actor: String,
    ) -> Result<JoinTokenView, ApiError> {
        self.leader_check(false)?;
        Ok(JoinTokenView {
            token: format!("rejoin-{}", req.node),
            expires_at_ms: 9_000,
        })
    }

    async fn renew_certificate(&self, actor: String) -> Result<CertificateView, ApiError> {
        self.record(format!("renew_certificate({actor})"));
        Ok(CertificateView {
            node: 1,
            name: "a".into(),
            not_after_ms: Some(9_000),
            renew_at_ms: Some(6_000),
        })
    }

    async fn rotate_admin_token(&self, _actor: String) -> Result<AdminTokenRotated, ApiError> {
        self.leader_check(false)?;
        Ok(AdminTokenRotated {
            token: "tdm_new".into(),
        })
    }

    async fn join(&self, req: JoinRequest) -> Result<JoinResponse, ApiError> {
        self.leader_check(false)?;
        if req.token != "join-abc" {
            return Err(ApiError::Forbidden("invalid join token".into()));
        }
        Ok(JoinResponse {
            node_id: 2,
            cluster_id: "c1".into(),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
            ca_key_pem: None,
            members: Vec::new(),
        })
    }

    async fn status(&self) -> Result<StatusView, ApiError> {
        self.record("status".into());
        Ok(StatusView {
            this_host: HostView {
                id: 1,
                name: "n1".into(),
                kind: tandem_web::KindName::Appliance,
                role: tandem_web::RoleName::Primary,
                site: Some("dc1".into()),
                epoch: 4,
                term: 3,
                leader: Some(1),
                last_log_index: Some(APPLIED),
                committed_index: Some(APPLIED),
                applied_index: Some(APPLIED),
                lease_valid: true,
                primary_since_ms: Some(1_000),
                shared_ips_held: vec!["192.0.2.10/24".into()],
                notes: Vec::new(),
                peer_addr: "10.0.0.1:7000".into(),
                checks: Vec::new(),
            },
            peers: vec![PeerView {
                id: 2,
                name: "n2".into(),
                kind: tandem_web::KindName::Appliance,
                role: tandem_web::RoleName::Backup,
                site: Some("north".into()),
                voter: true,
                reachable: true,
                last_contact_ms: Some(2_000),
                lag_entries: Some(0),
                lag_bytes: Some(0),
                lag_ms: Some(0),
                api_addr: "https://10.0.0.2:8443".into(),
                shared_ips_held: Some(Vec::new()),
            }],
            topology: tandem_web::Topology::PairWitness,
            settings: self.current_settings(),
            epoch: 4,
            primary: Some(1),
            maintenance: self.lock().maintenance.nodes.clone(),
        })
    }

    async fn history(
        &self,
        before: Option<u64>,
        limit: usize,
        kind: Option<String>,
    ) -> Result<HistoryPage, ApiError> {
        self.record(format!("history({before:?},{limit},{kind:?})"));
        // Ten events, seq 0..=9, alternating kinds; newest first.
        let items: Vec<HistoryEventView> = (0..10u64)
            .rev()
            .filter(|seq| before.is_none_or(|b| *seq < b))
            .map(|seq| HistoryEventView {
                seq,
                at_ms: 1_000 + seq,
                node: 1,
                node_name: Some("n1".into()),
                kind: if seq % 2 == 0 { "role_change" } else { "sync" }.into(),
                actor: "api".into(),
                details: json!({"seq": seq}),
            })
            .filter(|e| kind.as_deref().is_none_or(|k| k == e.kind))
            .take(limit)
            .collect();
        let next_before = if items.len() == limit {
            items.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(HistoryPage {
            items,
            next_before,
            total: 10,
        })
    }

    async fn settings(&self) -> Result<SettingsView, ApiError> {
        self.record("settings".into());
        Ok(self.current_settings())
    }

    async fn settings_put(
        &self,
        update: SettingsUpdate,
        actor: String,
    ) -> Result<SettingsView, ApiError> {
        self.record(format!("settings_put({actor})"));
        let current = self.current_settings();
        if update.if_version.is_some_and(|v| v != current.version) {
            return Err(ApiError::Conflict(format!(
                "settings version is {}",
                current.version
            )));
        }
        let view = SettingsView {
            version: current.version + 1,
            updated_by: Some(actor),
            updated_at_ms: Some(5_000),
            primary_timeout_ms: update.primary_timeout_ms,
            auto_failover: update.auto_failover,
            test_ips: update.test_ips,
            verify_interval_secs: update.verify_interval_secs,
            bandwidth_limit_bps: update.bandwidth_limit_bps,
            backup_operations: update.backup_operations,
            shared_ips: update.shared_ips,
            maintenance_max_minutes: update.maintenance_max_minutes,
            maintenance_reminder_secs: update.maintenance_reminder_secs,
            checks: update.checks,
            check_hold_down_secs: update.check_hold_down_secs,
            failback: update.failback,
        };
        self.lock().settings = Some(view.clone());
        Ok(view)
    }

    async fn swap(&self, req: SwapRequest, actor: String) -> Result<SwapOutcome, ApiError> {
        self.record(format!(
            "swap(pull_sync={},force={},{actor})",
            req.pull_sync, req.force
        ));
        self.refusal()?;
        Ok(SwapOutcome {
            previous_primary: Some(1),
            new_primary: 2,
            epoch: 5,
            forced: req.force,
            pull_sync: req.pull_sync,
            duration_ms: 120,
            sync: req.pull_sync.then(|| Self::sync_report(false)),
            demoted: false,
            warning: None,
        })
    }

    async fn sync(&self, req: SyncRequest, actor: String) -> Result<SyncReport, ApiError> {
        self.record(format!("sync(verify={},{actor})", req.verify));
        self.refusal()?;
        Ok(Self::sync_report(req.verify))
    }

    async fn remove_witness(&self, actor: String) -> Result<BreakOutcome, ApiError> {
        self.record(format!("remove_witness({actor})"));
        self.refusal()?;
        Ok(BreakOutcome {
            former_peers: vec![3],
            role: tandem_web::RoleName::Primary,
        })
    }

    async fn setup(&self, req: SetupRequest, actor: String) -> Result<SetupOutcome, ApiError> {
        self.record(format!(
            "setup({},{},{:?},witness={},discard={},{actor})",
            req.primary, req.token, req.reverse_address, req.witness, req.discard_data
        ));
        self.refusal()?;
        Ok(SetupOutcome {
            node_id: 2,
            cluster_id: "c1".into(),
            role: if req.witness {
                tandem_web::RoleName::Witness
            } else {
                tandem_web::RoleName::Backup
            },
            primary: req.primary,
            reverse_address: req
                .reverse_address
                .unwrap_or_else(|| "10.0.0.2:7000".into()),
            discarded_config_keys: 0,
            discarded_sessions: 0,
        })
    }

    async fn rejoin(&self, token: String, actor: String) -> Result<BreakOutcome, ApiError> {
        self.record(format!("rejoin({token}, {actor})"));
        self.refusal()?;
        Ok(BreakOutcome {
            former_peers: vec![1],
            role: tandem_web::RoleName::Backup,
        })
    }

    async fn break_relationship(&self, actor: String) -> Result<BreakOutcome, ApiError> {
        self.record(format!("break({actor})"));
        self.refusal()?;
        Ok(BreakOutcome {
            former_peers: vec![2, 3],
            role: tandem_web::RoleName::Standalone,
        })
    }

    async fn health_primary(&self) -> Result<RoleHealth, ApiError> {
        self.record("health_primary".into());
        let primary = self.lock().is_primary;
        Ok(RoleHealth {
            ok: primary,
            role: if primary { "primary" } else { "backup" }.into(),
            reason: (!primary).then(|| "this node is the backup".into()),
        })
    }

    async fn health_backup(&self, max_lag: Option<u64>) -> Result<RoleHealth, ApiError> {
        self.record(format!("health_backup({max_lag:?})"));
        let (primary, lag) = {
            let st = self.lock();
            (st.is_primary, st.lag)
        };
        let reason = if primary {
            Some("this node is the primary".to_owned())
        } else if max_lag.is_some_and(|m| lag > m) {
            Some(format!("{lag} entries behind"))
        } else {
            None
        };
        Ok(RoleHealth {
            ok: reason.is_none(),
            role: if primary { "primary" } else { "backup" }.into(),
            reason,
        })
    }

    async fn readiness(&self) -> Result<ReadinessView, ApiError> {
        self.record("readiness".into());
        Ok(ReadinessView {
            would_fail_over: true,
            after_ms: Some(5_000),
            lag_entries: Some(0),
            reasons: Vec::new(),
            certificates_ok: true,
            shared_ips_ok: true,
            warnings: Vec::new(),
            certificates: Vec::new(),
        })
    }

    async fn maintenance(&self) -> Result<MaintenanceView, ApiError> {
        Ok(self.lock().maintenance.clone())
    }

    async fn maintenance_start(
        &self,
        req: MaintenanceStart,
        actor: String,
    ) -> Result<MaintenanceOutcome, ApiError> {
        self.record(format!("maintenance_start({},{})", req.node, req.force));
        self.refusal()?;
        let mut st = self.lock();
        if req.node != "a" && req.node != "b" {
            return Err(ApiError::NotFound(format!("no node {:?}", req.node)));
        }
        st.maintenance.nodes.retain(|h| h.node != req.node);
        st.maintenance.nodes.push(HoldView {
            node: req.node.clone(),
            node_id: if req.node == "a" { 1 } else { 2 },
            reason: req.reason,
            until_ms: 10_000,
            by: actor,
            since_ms: 1_000,
            window: None,
        });
        Ok(MaintenanceOutcome {
            moved_to: None,
            note: None,
            maintenance: st.maintenance.clone(),
        })
    }

    async fn maintenance_end(
        &self,
        node: String,
        actor: String,
    ) -> Result<MaintenanceOutcome, ApiError> {
        self.record(format!("maintenance_end({node})"));
        let mut st = self.lock();
        st.last_actor = Some(actor);
        let before = st.maintenance.nodes.len();
        st.maintenance.nodes.retain(|h| h.node != node);
        if st.maintenance.nodes.len() == before {
            return Err(ApiError::NotFound(format!("{node} is not in maintenance")));
        }
        Ok(MaintenanceOutcome {
            moved_to: None,
            note: None,
            maintenance: st.maintenance.clone(),
        })
    }

    async fn window_schedule(
        &self,
        req: WindowRequest,
        actor: String,
    ) -> Result<MaintenanceView, ApiError> {
        self.record(format!("window_schedule({})", req.node));
        let mut st = self.lock();
        let id = st.maintenance.windows.len() as u64 + 1;
        st.maintenance.windows.push(WindowView {
            id,
            node: req.node,
            node_id: 1,
            reason: req.reason,
            by: actor,
            start_ms: req.start_ms,
            end_ms: req.end_ms,
        });
        Ok(st.maintenance.clone())
    }

    async fn window_cancel(&self, id: u64, actor: String) -> Result<MaintenanceView, ApiError> {
        self.record(format!("window_cancel({id})"));
        let mut st = self.lock();
        st.last_actor = Some(actor);
        let before = st.maintenance.windows.len();
        st.maintenance.windows.retain(|w| w.id != id);
        if st.maintenance.windows.len() == before {
            return Err(ApiError::NotFound(format!("no window {id}")));
        }
        Ok(st.maintenance.clone())
    }
}

fn app() -> (Arc<MemBackend>, AdminApp) {
    let backend = Arc::new(MemBackend::default());
    (Arc::clone(&backend), router(backend))
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a JSON error body of this kind.
    #[track_caller]
    fn assert_error(&self, status: StatusCode, kind: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["error"], kind, "body: {}", self.body);
        assert!(self.body["message"].is_string(), "body: {}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "error bodies are JSON"
        );
    }
}

async fn send(app: &AdminApp, req: Request<Body>) -> Resp {
    let resp = app
        .clone()
        .oneshot(req)
        .await
        .expect("router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body readable");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("non-JSON body ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn request(method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).expect("valid request")
}

async fn call(app: &AdminApp, method: Method, uri: &str, body: Option<Value>) -> Resp {
    send(app, request(method, uri, Some(TOKEN), body)).await
}

#[tokio::test]
async fn health_is_open() {
    let (_, app) = app();
    let r = send(&app, request(Method::GET, "/health", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.body["applied_index"], APPLIED);
}

#[tokio::test]
async fn every_api_route_requires_the_bearer_token() {
    let (backend, app) = app();
    let routes = [
        (Method::GET, "/api/v1/config", None),
        (Method::GET, "/api/v1/config/a", None),
        (Method::PUT, "/api/v1/config/a", Some(json!({"value": 1}))),
        (Method::DELETE, "/api/v1/config/a", None),
        (Method::GET, "/api/v1/sessions", None),
        (
            Method::POST,
            "/api/v1/sessions",
            Some(json!({"owner": "o", "ttl_secs": 5})),
        ),
        (Method::GET, "/api/v1/sessions/s1", None),
        (Method::DELETE, "/api/v1/sessions/s1", None),
        (Method::GET, "/api/v1/cluster", None),
        (Method::POST, "/api/v1/join-tokens", Some(json!({}))),
        (
            Method::POST,
            "/api/v1/rejoin-tokens",
            Some(json!({"node": 2})),
        ),
        (Method::POST, "/api/v1/admin-token", None),
        (Method::POST, "/api/v1/certs/renew", None),
        (Method::GET, "/api/v1/status", None),
        (Method::GET, "/api/v1/history", None),
        (Method::GET, "/api/v1/settings", None),
        (Method::PUT, "/api/v1/settings", Some(valid_settings())),
        (Method::POST, "/api/v1/relationship/swap", Some(json!({}))),
        (Method::POST, "/api/v1/relationship/sync", Some(json!({}))),
        (Method::POST, "/api/v1/relationship/break", None),
        (
            Method::POST,
            "/api/v1/relationship/rejoin",
            Some(json!({"token": "t"})),
        ),
        (Method::POST, "/api/v1/relationship/remove-witness", None),
        (
            Method::POST,
            "/api/v1/relationship/setup",
            Some(json!({"primary": "10.0.0.1:8443", "token": "t"})),
        ),
        (Method::GET, "/api/v1/readiness", None),
        (Method::GET, "/api/v1/users", None),
        (
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "bob", "password": "password1"})),
        ),
        (
            Method::PUT,
            "/api/v1/users/bob",
            Some(json!({"password": "password1"})),
        ),
        (Method::DELETE, "/api/v1/users/bob", None),
        (
            Method::POST,
            "/api/v1/account/password",
            Some(json!({"old_password": "x", "new_password": "password1"})),
        ),
        (Method::GET, "/api/v1/api-tokens", None),
        (Method::POST, "/api/v1/api-tokens", Some(json!({}))),
        (Method::DELETE, "/api/v1/api-tokens/t1", None),
        (Method::GET, "/api/v1/maintenance", None),
        (
            Method::POST,
            "/api/v1/maintenance",
            Some(json!({"node": "a", "reason": "r", "minutes": 5})),
        ),
        (Method::DELETE, "/api/v1/maintenance/a", None),
        (
            Method::POST,
            "/api/v1/maintenance/windows",
            Some(json!({"node": "a", "reason": "r", "start_ms": 1, "end_ms": 2})),
        ),
        (Method::DELETE, "/api/v1/maintenance/windows/1", None),
    ];
    for (method, uri, body) in routes {
        for token in [None, Some("wrong"), Some("")] {
            let r = send(&app, request(method.clone(), uri, token, body.clone())).await;
            r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer"),
                "{method} {uri}"
            );
        }
        // Not a bearer scheme at all.
        let mut req = request(method.clone(), uri, None, body.clone());
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Basic {TOKEN}").parse().expect("ascii"),
        );
        send(&app, req)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(backend.calls(), Vec::<String>::new(), "{method} {uri}");
        // And the right token gets past authentication.
        let r = call(&app, method.clone(), uri, body).await;
        assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        backend.lock().calls.clear();
    }
    // Every bearer-protected route in the table was exercised above.
    let protected = ROUTES.iter().filter(|r| r.auth).count();
    assert_eq!(protected, 37, "new protected route: add it to this test");
}

#[tokio::test]
async fn maintenance_routes_check_their_input_and_reach_the_backend() {
    let (backend, app) = app();
    // Bad bodies: 400 with the fields named, and the backend is not called.
    for (body, field) in [
        (json!({"node": "a", "reason": "r"}), "minutes"),
        (
            json!({"node": "a", "reason": "r", "minutes": 1, "seconds": 1}),
            "minutes",
        ),
        (json!({"node": "a", "reason": "r", "minutes": 0}), "minutes"),
        (json!({"node": "", "reason": "r", "minutes": 1}), "node"),
        (json!({"node": "a", "reason": "", "minutes": 1}), "reason"),
    ] {
        let r = call(
            &app,
            Method::POST,
            "/api/v1/maintenance",
            Some(body.clone()),
        )
        .await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid");
        assert!(
            r.body["fields"].get(field).is_some(),
            "{body}: {:?}",
            r.body
        );
    }
    let r = call(
        &app,
        Method::POST,
        "/api/v1/maintenance",
        Some(json!({"node": "a", "reason": "r", "minutes": 1, "extra": true})),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let r = call(
        &app,
        Method::POST,
        "/api/v1/maintenance/windows",
        Some(json!({"node": "a", "reason": "r", "start_ms": 5, "end_ms": 5})),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid");
    assert_eq!(backend.calls(), Vec::<String>::new());

    // Start, list, end; ending again is 404.
    let r = call(
        &app,
        Method::POST,
        "/api/v1/maintenance",
        Some(json!({"node": "b", "reason": "kernel", "minutes": 30, "force": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["maintenance"]["nodes"][0]["node"], "b");
    assert_eq!(
        backend.calls(),
        vec!["maintenance_start(b,true)".to_string()]
    );
    let r = call(&app, Method::GET, "/api/v1/maintenance", None).await;
    assert_eq!(r.body["nodes"][0]["reason"], "kernel");
    let r = call(&app, Method::GET, "/api/v1/status", None).await;
    assert_eq!(r.body["maintenance"][0]["node"], "b");
    let r = call(&app, Method::DELETE, "/api/v1/maintenance/b", None).await;
    assert_eq!(r.status, StatusCode::OK);
    call(&app, Method::DELETE, "/api/v1/maintenance/b", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // Windows: schedule, cancel; a window id is a number.
    let r = call(
        &app,
        Method::POST,
        "/api/v1/maintenance/windows",
        Some(json!({"node": "a", "reason": "disk", "start_ms": 10, "end_ms": 20})),
    )
    .await;
    assert_eq!(r.body["windows"][0]["id"], 1);
    call(&app, Method::DELETE, "/api/v1/maintenance/windows/x", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let r = call(&app, Method::DELETE, "/api/v1/maintenance/windows/1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["windows"], json!([]));
}

#[tokio::test]
async fn join_needs_no_bearer_token() {
    let (_, app) = app();
    let body = json!({
        "token": "join-abc", "name": "n2", "kind": "witness",
        "peer_addr": "10.0.0.2:7000", "api_addr": "https://10.0.0.2:8443",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----"
    });
    let r = send(
        &app,
        request(Method::POST, "/api/v1/join", None, Some(body.clone())),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["node_id"], 2);

    let mut bad = body.clone();
    bad["token"] = json!("nope");
    send(&app, request(Method::POST, "/api/v1/join", None, Some(bad)))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");

    let mut bad = body;
    bad["kind"] = json!("toaster");
    send(&app, request(Method::POST, "/api/v1/join", None, Some(bad)))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn join_token_create() {
    let (_, app) = app();
    let r = call(
        &app,
        Method::POST,
        "/api/v1/join-tokens",
        Some(json!({"ttl_secs": 600, "kind": "witness"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["token"], "join-abc");
    // A secret in the answer: kept by no cache, read as nothing but JSON.
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    call(
        &app,
        Method::POST,
        "/api/v1/join-tokens",
        Some(json!({"kind": "toaster"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    call(
        &app,
        Method::POST,
        "/api/v1/join-tokens",
        Some(json!({"ttl_secs": 0})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn config_round_trip() {
    let (backend, app) = app();
    let r = call(
        &app,
        Method::PUT,
        "/api/v1/config/app/db.url",
        Some(json!({"value": {"host": "db", "port": 5432}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["key"], "app/db.url");
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["updated_by"], "admin-token");

    let r = call(&app, Method::GET, "/api/v1/config/app/db.url", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["value"], json!({"host": "db", "port": 5432}));

    // Second put with the actor header and a matching if_version.
    let mut req = request(
        Method::PUT,
        "/api/v1/config/app/db.url",
        Some(TOKEN),
        Some(json!({"value": null, "if_version": 1})),
    );
    req.headers_mut()
        .insert("x-tandem-actor", "alice@ops".parse().expect("ascii"));
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.body["value"], Value::Null);
    assert_eq!(r.body["updated_by"], "admin-token:alice@ops");

    call(
        &app,
        Method::PUT,
        "/api/v1/config/other",
        Some(json!({"value": "x"})),
    )
    .await;
    let r = call(&app, Method::GET, "/api/v1/config", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(2));
    let r = call(
        &app,
        Method::GET,
        "/api/v1/config?prefix=app/&limit=10",
        None,
    )
    .await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.body["items"][0]["key"], "app/db.url");
    let r = call(&app, Method::GET, "/api/v1/config?limit=1", None).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));

    let r = call(&app, Method::DELETE, "/api/v1/config/app/db.url", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(backend.lock().last_actor.as_deref(), Some("admin-token"));
    call(&app, Method::GET, "/api/v1/config/app/db.url", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    call(&app, Method::DELETE, "/api/v1/config/app/db.url", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn config_if_version_conflict() {
    let (_, app) = app();
    let put = |v: Value| call(&app, Method::PUT, "/api/v1/config/k", Some(v));
    // if_version 0: create only.
    assert_eq!(
        put(json!({"value": 1, "if_version": 0})).await.status,
        StatusCode::OK
    );
    put(json!({"value": 2, "if_version": 0}))
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    put(json!({"value": 2, "if_version": 7}))
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(
        put(json!({"value": 2, "if_version": 1})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn config_key_validation() {
    let (_, app) = app();
    let long = "k".repeat(257);
    for bad in ["a%20b", "a$b", "%C3%A9", long.as_str()] {
        let uri = format!("/api/v1/config/{bad}");
        call(&app, Method::GET, &uri, None)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        call(&app, Method::PUT, &uri, Some(json!({"value": 1})))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    let ok = format!("/api/v1/config/{}", "k".repeat(256));
    assert_eq!(
        call(&app, Method::PUT, &ok, Some(json!({"value": 1})))
            .await
            .status,
        StatusCode::OK
    );
    let r = call(
        &app,
        Method::PUT,
        "/api/v1/config/A-z_0.9:x/y",
        Some(json!({"value": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["key"], "A-z_0.9:x/y");
    // Bad list parameters.
    call(&app, Method::GET, "/api/v1/config?limit=0", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    call(&app, Method::GET, "/api/v1/config?limit=abc", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    call(&app, Method::GET, "/api/v1/config?prefix=a%20b", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    call(&app, Method::GET, "/api/v1/config/k?stale=maybe", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn body_errors_are_json() {
    let (_, app) = app();
    // Unknown field.
    let r = call(
        &app,
        Method::PUT,
        "/api/v1/config/k",
        Some(json!({"value": 1, "extra": true})),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("extra")),
        "{}",
        r.body
    );
    // Missing required field.
    call(
        &app,
        Method::PUT,
        "/api/v1/config/k",
        Some(json!({"if_version": 1})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    // Wrong type.
    call(
        &app,
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"owner": "o", "ttl_secs": "ten"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");

    // Bad JSON.
    let raw = |body: &'static str, ct: Option<&str>| {
        let mut b = Request::builder()
            .method(Method::PUT)
            .uri("/api/v1/config/k")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::from(body)).expect("valid request")
    };
    send(&app, raw("{\"value\": ", Some("application/json")))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    send(&app, raw("", Some("application/json")))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    // Wrong or missing content type.
    send(&app, raw("{\"value\": 1}", Some("text/plain")))
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    send(&app, raw("{\"value\": 1}", None))
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let (_, app) = app();
    let big = format!("{{\"value\": \"{}\"}}", "x".repeat(MAX_BODY_BYTES));
    let req = |with_length: bool| {
        let mut b = Request::builder()
            .method(Method::PUT)
            .uri("/api/v1/config/k")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json");
        if with_length {
            b = b.header(header::CONTENT_LENGTH, big.len());
        }
        b.body(Body::from(big.clone())).expect("valid request")
    };
    send(&app, req(true))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    send(&app, req(false))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // The unauthenticated join route has the same limit.
    let join = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/join")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big.clone()))
        .expect("valid request");
    send(&app, join)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let (_, app) = app();
    call(&app, Method::GET, "/nope", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    call(&app, Method::GET, "/api/v2/config", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = call(&app, Method::POST, "/api/v1/cluster", Some(json!({}))).await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(r.header("allow").is_some());
    send(&app, request(Method::DELETE, "/health", None, None))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn not_leader_redirects_to_the_leader() {
    let (backend, app) = app();
    backend.lock().not_leader = Some(Some("https://10.0.0.9:8443/".into()));

    let r = call(
        &app,
        Method::PUT,
        "/api/v1/config/a/b?x=1",
        Some(json!({"value": 1})),
    )
    .await;
    r.assert_error(StatusCode::MISDIRECTED_REQUEST, "not_leader");
    assert_eq!(
        r.header("location"),
        Some("https://10.0.0.9:8443/api/v1/config/a/b?x=1")
    );
    assert_eq!(r.body["leader_api"], "https://10.0.0.9:8443/");

    let r = call(
        &app,
        Method::GET,
        "/api/v1/sessions?limit=5&stale=false",
        None,
    )
    .await;
    r.assert_error(StatusCode::MISDIRECTED_REQUEST, "not_leader");
    assert_eq!(
        r.header("location"),
        Some("https://10.0.0.9:8443/api/v1/sessions?limit=5&stale=false")
    );

    // Stale reads are served locally on a follower.
    let r = call(&app, Method::GET, "/api/v1/config?stale=true", None).await;
    assert_eq!(r.status, StatusCode::OK);

    // No known leader: 503 with Retry-After and no Location.
    backend.lock().not_leader = Some(None);
    let r = call(&app, Method::DELETE, "/api/v1/sessions/s1", None).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "not_leader");
    assert!(r.header("retry-after").is_some());
    assert!(r.header("location").is_none());
}

#[tokio::test]
async fn reads_carry_applied_index_and_stale_headers() {
    let (_, app) = app();
    call(
        &app,
        Method::PUT,
        "/api/v1/config/k",
        Some(json!({"value": 1})),
    )
    .await;
    let s = call(
        &app,
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"owner": "o", "ttl_secs": 5})),
    )
    .await;
    let sid = s.body["id"].as_str().expect("session id").to_owned();
    let reads = [
        "/api/v1/config".to_owned(),
        "/api/v1/config/k".to_owned(),
        "/api/v1/sessions".to_owned(),
        format!("/api/v1/sessions/{sid}"),
        "/api/v1/cluster".to_owned(),
    ];
    for path in reads {
        for (query, stale) in [
            ("", "false"),
            ("?stale=false", "false"),
            ("?stale=true", "true"),
        ] {
            let uri = format!("{path}{query}");
            let r = call(&app, Method::GET, &uri, None).await;
            assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
            assert_eq!(r.header("x-tandem-stale"), Some(stale), "{uri}");
            assert_eq!(
                r.header("x-tandem-applied-index"),
                Some(APPLIED.to_string().as_str()),
                "{uri}"
            );
        }
    }
}

#[tokio::test]
async fn sessions_round_trip() {
    let (_, app) = app();
    let r = call(
        &app,
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"owner": "alice", "data": {"k": [1, 2]}, "ttl_secs": 60})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("session id").to_owned();
    assert_eq!(r.body["expires_at_ms"], 61_000);

    // `data` defaults to null.
    let r = call(
        &app,
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"owner": "bob", "ttl_secs": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["data"], Value::Null);

    let r = call(&app, Method::GET, &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["owner"], "alice");
    assert_eq!(r.body["data"], json!({"k": [1, 2]}));

    let r = call(&app, Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(2));
    let r = call(&app, Method::GET, "/api/v1/sessions?limit=1", None).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));
    call(&app, Method::GET, "/api/v1/sessions?limit=1001", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");

    let r = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    call(&app, Method::GET, &format!("/api/v1/sessions/{id}"), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    call(&app, Method::GET, "/api/v1/sessions/bad%20id", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn session_ttl_and_owner_validation() {
    let (_, app) = app();
    for body in [
        json!({"owner": "o", "ttl_secs": 0}),
        json!({"owner": "o", "ttl_secs": 31_536_001}),
        json!({"owner": "o", "ttl_secs": -1}),
        json!({"owner": "", "ttl_secs": 5}),
        json!({"owner": "o"}),
        json!({"owner": "o", "ttl_secs": 5, "extra": 1}),
    ] {
        call(&app, Method::POST, "/api/v1/sessions", Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    for ttl in [1, 31_536_000] {
        let r = call(
            &app,
            Method::POST,
            "/api/v1/sessions",
            Some(json!({"owner": "o", "ttl_secs": ttl})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "ttl {ttl}: {}", r.body);
    }
}

#[tokio::test]
async fn backend_errors_map_to_one_status_each() {
    use axum::response::IntoResponse;
    let cases = [
        (
            ApiError::NotLeader {
                leader_api: Some("https://192.0.2.2:8443".into()),
            },
            421,
            "not_leader",
        ),
        (ApiError::NotLeader { leader_api: None }, 503, "not_leader"),
        (ApiError::Unauthorized, 401, "unauthorized"),
        (ApiError::Forbidden("f".into()), 403, "forbidden"),
        (ApiError::NotFound("n".into()), 404, "not_found"),
        (ApiError::BadRequest("b".into()), 400, "bad_request"),
        (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
        (ApiError::Conflict("c".into()), 409, "conflict"),
        (ApiError::Refused("r".into()), 409, "refused"),
        (
            ApiError::Invalid {
                fields: BTreeMap::new(),
            },
            400,
            "invalid",
        ),
        (ApiError::PayloadTooLarge, 413, "payload_too_large"),
        (
            ApiError::UnsupportedMediaType("m".into()),
            415,
            "unsupported_media_type",
        ),
        (ApiError::Unavailable("u".into()), 503, "unavailable"),
        (ApiError::Internal("secret detail".into()), 500, "internal"),
        (
            ApiError::InsufficientStorage("s".into()),
            507,
            "insufficient_storage",
        ),
        (
            ApiError::TooManyRequests {
                message: "t".into(),
                retry_after_secs: 7,
            },
            429,
            "too_many_requests",
        ),
    ];
    // The table covers every variant: `ApiError::examples` has one of each
    // (a new variant does not compile until it is there).
    let examples = ApiError::examples();
    let kinds = |list: Vec<&'static str>| list.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        kinds(cases.iter().map(|c| c.2).collect()),
        kinds(examples.iter().map(ApiError::kind).collect()),
        "a kind of ApiError::examples() is missing from this table"
    );
    for err in examples {
        let (status, kind) = (err.status(), err.kind());
        let resp = err.into_response();
        assert_eq!(resp.status(), status, "{kind}");
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body readable");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON body");
        assert_eq!(body["error"], kind);
    }
    for (err, status, kind) in cases {
        let resp = err.into_response();
        assert_eq!(resp.status().as_u16(), status);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body readable");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON body");
        assert_eq!(body["error"], kind);
        assert!(!body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("secret"));
    }
}

// ---- relationship API ------------------------------------------------------

fn valid_settings() -> Value {
    json!({
        "primary_timeout_ms": 3000,
        "auto_failover": true,
        "test_ips": ["192.0.2.1", "192.0.2.2:443", "[2001:db8::1]:22", "2001:db8::2"],
        "verify_interval_secs": 3600,
        "bandwidth_limit_bps": 65536,
        "backup_operations": false,
        "shared_ips": [
            {"address": "192.0.2.10/24", "interfaces": {"n1": "eth0", "n2": "ens3.100"}},
            {"address": "2001:db8::10/64", "interfaces": {"n1": "bond0"}}
        ]
    })
}

async fn put_settings(app: &AdminApp, body: Value) -> Resp {
    call(app, Method::PUT, "/api/v1/settings", Some(body)).await
}

#[tokio::test]
async fn role_health_routes_are_open_and_follow_the_backend() {
    let (backend, app) = app();
    let get = |uri: &'static str| send(&app, request(Method::GET, uri, None, None));

    backend.lock().is_primary = true;
    let r = get("/health/primary").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"ok": true, "role": "primary", "reason": null})
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = get("/health/backup").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["ok"], false);
    assert_eq!(r.body["role"], "primary");
    assert_eq!(r.header("content-type"), Some("application/json"));

    backend.lock().is_primary = false;
    backend.lock().lag = 7;
    let r = get("/health/primary").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["reason"], "this node is the backup");
    assert_eq!(get("/health/backup").await.status, StatusCode::OK);
    assert_eq!(get("/health/backup?max_lag=7").await.status, StatusCode::OK);
    let r = get("/health/backup?max_lag=6").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["reason"], "7 entries behind");
    assert_eq!(
        backend.calls(),
        [
            "health_primary",
            "health_backup(None)",
            "health_primary",
            "health_backup(None)",
            "health_backup(Some(7))",
            "health_backup(Some(6))"
        ]
    );

    // A bad max_lag is a JSON 400 and does not reach the backend.
    backend.lock().calls.clear();
    for bad in ["-1", "abc", "1.5", "99999999999999999999999"] {
        let uri = format!("/health/backup?max_lag={bad}");
        send(&app, request(Method::GET, &uri, None, None))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    assert!(backend.calls().is_empty());

    // Only GET; other methods get the usual JSON 405.
    send(&app, request(Method::POST, "/health/primary", None, None))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn status_and_readiness() {
    let (_, app) = app();
    let r = call(&app, Method::GET, "/api/v1/status", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["this_host"]["role"], "primary");
    assert_eq!(r.body["this_host"]["shared_ips_held"][0], "192.0.2.10/24");
    assert_eq!(r.body["peers"][0]["role"], "backup");
    assert_eq!(r.body["topology"], "pair+witness");
    assert_eq!(r.body["settings"]["version"], 0);
    assert_eq!(r.body["primary"], 1);
    assert_eq!(
        r.header("x-tandem-applied-index"),
        Some(APPLIED.to_string().as_str())
    );
    let view: StatusView = serde_json::from_value(r.body).expect("decodes as StatusView");
    assert_eq!(view.epoch, 4);

    let r = call(&app, Method::GET, "/api/v1/readiness", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let view: ReadinessView = serde_json::from_value(r.body).expect("decodes");
    assert!(view.would_fail_over);
    assert_eq!(view.after_ms, Some(5_000));
}

#[tokio::test]
async fn history_paging_and_parameters() {
    let (backend, app) = app();
    let r = call(&app, Method::GET, "/api/v1/history", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(10));
    assert_eq!(r.body["items"][0]["seq"], 9, "newest first");
    assert_eq!(r.body["total"], 10);
    assert_eq!(r.body["next_before"], Value::Null);

    let r = call(&app, Method::GET, "/api/v1/history?limit=4", None).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(4));
    assert_eq!(r.body["next_before"], 6);
    let r = call(
        &app,
        Method::GET,
        "/api/v1/history?limit=4&before=6&kind=sync",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let page: HistoryPage = serde_json::from_value(r.body).expect("decodes");
    let seqs: Vec<u64> = page.items.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [5, 3, 1]);
    let r = call(&app, Method::GET, "/api/v1/history?limit=500&kind=", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        backend.calls(),
        [
            "history(None,50,None)",
            "history(None,4,None)",
            "history(Some(6),4,Some(\"sync\"))",
            "history(None,500,None)"
        ]
    );

    backend.lock().calls.clear();
    for bad in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=x",
        "before=-1",
        "before=x",
        "kind=a%20b",
        "kind=%C3%A9",
    ] {
        call(&app, Method::GET, &format!("/api/v1/history?{bad}"), None)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    let long = "k".repeat(65);
    call(
        &app,
        Method::GET,
        &format!("/api/v1/history?kind={long}"),
        None,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());
}

#[tokio::test]
async fn settings_round_trip() {
    let (backend, app) = app();
    let r = call(&app, Method::GET, "/api/v1/settings", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["version"], 0);
    assert_eq!(r.body["updated_by"], Value::Null);

    let mut req = request(
        Method::PUT,
        "/api/v1/settings",
        Some(TOKEN),
        Some(valid_settings()),
    );
    req.headers_mut()
        .insert("x-tandem-actor", "alice@ops".parse().expect("ascii"));
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["updated_by"], "admin-token:alice@ops");
    assert_eq!(r.body["shared_ips"][0]["interfaces"]["n2"], "ens3.100");
    let view: SettingsView = serde_json::from_value(r.body).expect("decodes");
    assert_eq!(view.primary_timeout_ms, 3000);

    // if_version: matching writes, stale conflicts.
    let mut body = valid_settings();
    body["if_version"] = json!(1);
    assert_eq!(
        put_settings(&app, body.clone()).await.status,
        StatusCode::OK
    );
    put_settings(&app, body)
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(
        backend.calls(),
        [
            "settings",
            "settings_put(admin-token:alice@ops)",
            "settings_put(admin-token)",
            "settings_put(admin-token)"
        ]
    );
}

/// Each rule of `validate_settings`, through the route: 400 `invalid`, the
/// expected keys in `fields`, and nothing reaches the backend.
#[tokio::test]
async fn settings_validation_names_the_fields() {
    let (backend, app) = app();
    let with = |field: &str, v: Value| {
        let mut b = valid_settings();
        b[field] = v;
        b
    };
    let shared = |address: &str, interfaces: Value| {
        with(
            "shared_ips",
            json!([{"address": address, "interfaces": interfaces}]),
        )
    };
    let many_ips: Vec<String> = (1..=9).map(|i| format!("192.0.2.{i}")).collect();
    let many_shared: Vec<Value> = (1..=17)
        .map(|i| json!({"address": format!("10.0.0.{i}/32"), "interfaces": {"n1": "eth0"}}))
        .collect();
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            with("primary_timeout_ms", json!(299)),
            vec!["primary_timeout_ms"],
        ),
        (
            with("primary_timeout_ms", json!(60_001)),
            vec!["primary_timeout_ms"],
        ),
        (
            with("primary_timeout_ms", json!(0)),
            vec!["primary_timeout_ms"],
        ),
        (with("test_ips", json!(many_ips)), vec!["test_ips"]),
        (
            with(
                "test_ips",
                json!(["192.0.2.1", "example.com", "192.0.2.3:0", "300.1.1.1"]),
            ),
            vec!["test_ips[1]", "test_ips[2]", "test_ips[3]"],
        ),
        (with("test_ips", json!(["0.0.0.0"])), vec!["test_ips[0]"]),
        (
            with("verify_interval_secs", json!(59)),
            vec!["verify_interval_secs"],
        ),
        (
            with("verify_interval_secs", json!(604_801)),
            vec!["verify_interval_secs"],
        ),
        (
            with("bandwidth_limit_bps", json!(1)),
            vec!["bandwidth_limit_bps"],
        ),
        (
            with("bandwidth_limit_bps", json!(65_535)),
            vec!["bandwidth_limit_bps"],
        ),
        (with("shared_ips", json!(many_shared)), vec!["shared_ips"]),
        (
            shared("192.0.2.10", json!({"n1": "eth0"})),
            vec!["shared_ips[0].address"],
        ),
        (
            shared("192.0.2.10/0", json!({"n1": "eth0"})),
            vec!["shared_ips[0].address"],
        ),
        (
            shared("192.0.2.10/33", json!({"n1": "eth0"})),
            vec!["shared_ips[0].address"],
        ),
        (
            shared("2001:db8::10/129", json!({"n1": "eth0"})),
            vec!["shared_ips[0].address"],
        ),
        (
            shared("2001:db8::10/0", json!({"n1": "eth0"})),
            vec!["shared_ips[0].address"],
        ),
        (
            shared("not-an-ip/24", json!({"n1": "eth0"})),
            vec!["shared_ips[0].address"],
        ),
        (
            shared("192.0.2.10/24", json!({"n1": "an-interface-16c"})),
            vec!["shared_ips[0].interfaces.n1"],
        ),
        (
            shared("192.0.2.10/24", json!({"n1": ""})),
            vec!["shared_ips[0].interfaces.n1"],
        ),
        (
            shared("192.0.2.10/24", json!({"n1": "eth 0"})),
            vec!["shared_ips[0].interfaces.n1"],
        ),
        (
            shared("192.0.2.10/24", json!({})),
            vec!["shared_ips[0].interfaces"],
        ),
        // Several problems at once: all reported.
        (
            json!({
                "primary_timeout_ms": 1, "auto_failover": false, "test_ips": ["x"],
                "verify_interval_secs": 1, "bandwidth_limit_bps": 1, "backup_operations": true,
                "shared_ips": [{"address": "1.2.3.4/99", "interfaces": {"n1": "eth0/1"}}]
            }),
            vec![
                "bandwidth_limit_bps",
                "primary_timeout_ms",
                "shared_ips[0].address",
                "shared_ips[0].interfaces.n1",
                "test_ips[0]",
                "verify_interval_secs",
            ],
        ),
    ];
    for (body, keys) in cases {
        let r = put_settings(&app, body.clone()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid");
        let fields = r.body["fields"]
            .as_object()
            .unwrap_or_else(|| panic!("no fields in {}", r.body));
        let got: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(got, keys, "body {body}");
        assert!(fields.values().all(Value::is_string), "{}", r.body);
        for k in keys {
            assert!(
                r.body["message"].as_str().is_some_and(|m| m.contains(k)),
                "{}",
                r.body
            );
        }
    }
    // The error message of a single rule, as documented.
    let r = put_settings(&app, with("primary_timeout_ms", json!(10))).await;
    assert_eq!(
        r.body["fields"],
        json!({"primary_timeout_ms": "must be between 300 and 60000"})
    );
    // Edges that are valid.
    for (field, v) in [
        ("primary_timeout_ms", json!(300)),
        ("primary_timeout_ms", json!(60_000)),
        ("verify_interval_secs", json!(0)),
        ("verify_interval_secs", json!(60)),
        ("verify_interval_secs", json!(604_800)),
        ("bandwidth_limit_bps", json!(0)),
        ("test_ips", json!([])),
        ("shared_ips", json!([])),
    ] {
        backend.lock().calls.clear();
        let r = put_settings(&app, with(field, v.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{field}={v}: {}", r.body);
        assert_eq!(backend.calls(), ["settings_put(admin-token)"]);
    }
    backend.lock().calls.clear();

    // Shape errors are plain 400s, also without reaching the backend.
    let mut missing = valid_settings();
    missing
        .as_object_mut()
        .expect("object")
        .remove("auto_failover");
    let mut nested_extra = valid_settings();
    nested_extra["shared_ips"][0]["vlan"] = json!(5);
    for body in [
        with("extra", json!(1)),
        nested_extra,
        missing,
        with("primary_timeout_ms", json!(-1)),
        with("test_ips", json!("192.0.2.1")),
        json!({}),
    ] {
        let r = put_settings(&app, body.clone()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(r.body.get("fields").is_none(), "{}", r.body);
    }
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());
}

#[tokio::test]
async fn relationship_actions() {
    let (backend, app) = app();
    let mut req = request(
        Method::POST,
        "/api/v1/relationship/swap",
        Some(TOKEN),
        Some(json!({"pull_sync": true, "force": false})),
    );
    req.headers_mut()
        .insert("x-tandem-actor", "bob".parse().expect("ascii"));
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let out: SwapOutcome = serde_json::from_value(r.body).expect("decodes");
    assert_eq!(out.new_primary, 2);
    assert!(out.pull_sync && !out.forced);
    assert_eq!(out.sync.map(|s| s.to_index), Some(APPLIED));

    // Options default to false: `{}`, `{"force": true}` and no body at all.
    let r = call(
        &app,
        Method::POST,
        "/api/v1/relationship/swap",
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["sync"], Value::Null);
    let r = call(
        &app,
        Method::POST,
        "/api/v1/relationship/swap",
        Some(json!({"force": true})),
    )
    .await;
    assert_eq!(r.body["forced"], true);
    let r = call(&app, Method::POST, "/api/v1/relationship/swap", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let r = call(
        &app,
        Method::POST,
        "/api/v1/relationship/sync",
        Some(json!({"verify": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["verify"]["matches"], true);
    assert_eq!(r.body["bytes"], 512);
    let r = call(&app, Method::POST, "/api/v1/relationship/sync", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["verify"], Value::Null);

    let r = call(&app, Method::POST, "/api/v1/relationship/break", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"former_peers": [2, 3], "role": "standalone"})
    );
    let r = call(
        &app,
        Method::POST,
        "/api/v1/relationship/break",
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    assert_eq!(
        backend.calls(),
        [
            "swap(pull_sync=true,force=false,admin-token:bob)",
            "swap(pull_sync=false,force=false,admin-token)",
            "swap(pull_sync=false,force=true,admin-token)",
            "swap(pull_sync=false,force=false,admin-token)",
            "sync(verify=true,admin-token)",
            "sync(verify=false,admin-token)",
            "break(admin-token)",
            "break(admin-token)"
        ]
    );
}

#[tokio::test]
async fn refused_actions_are_409() {
    let (backend, app) = app();
    backend.lock().refuse =
        Some("planned swap needs the peer: it is unreachable; use force".into());
    for uri in [
        "/api/v1/relationship/swap",
        "/api/v1/relationship/sync",
        "/api/v1/relationship/break",
    ] {
        let r = call(&app, Method::POST, uri, Some(json!({}))).await;
        r.assert_error(StatusCode::CONFLICT, "refused");
        assert_eq!(
            r.body["message"],
            "planned swap needs the peer: it is unreachable; use force"
        );
    }
}

#[tokio::test]
async fn action_bodies_are_checked() {
    let (backend, app) = app();
    let cases = [
        ("/api/v1/relationship/swap", json!({"forced": true})),
        ("/api/v1/relationship/swap", json!({"force": "yes"})),
        ("/api/v1/relationship/swap", json!([])),
        ("/api/v1/relationship/swap", json!([true, true])),
        ("/api/v1/relationship/sync", json!("verify")),
        ("/api/v1/relationship/sync", json!({"verify": 1})),
        ("/api/v1/relationship/sync", json!({"pull_sync": true})),
        ("/api/v1/relationship/break", json!({"force": true})),
        ("/api/v1/relationship/break", json!(null)),
    ];
    for (uri, body) in cases {
        call(&app, Method::POST, uri, Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    // A non-empty body must still be JSON.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/relationship/swap")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("force"))
        .expect("valid request");
    send(&app, req)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    // And the body limit holds for the optional bodies too.
    let big = format!(
        "{{\"force\": true, \"x\": \"{}\"}}",
        "x".repeat(MAX_BODY_BYTES)
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/relationship/swap")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .expect("valid request");
    send(&app, req)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // A bad actor header is refused before the action.
    let mut req = request(
        Method::POST,
        "/api/v1/relationship/break",
        Some(TOKEN),
        None,
    );
    req.headers_mut()
        .insert("x-tandem-actor", "bad actor".parse().expect("ascii"));
    send(&app, req)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());
}

#[tokio::test]
async fn setup_checks_its_body_and_maps_refusals() {
    let (backend, app) = app();
    for body in [
        json!({"primary": "", "token": "t"}),
        json!({"primary": "a b", "token": "t"}),
        json!({"primary": "h:1", "token": ""}),
        json!({"primary": "h:1", "token": "x".repeat(600)}),
        json!({"primary": "h:1", "token": "t", "reverse_address": "x".repeat(300)}),
    ] {
        call(&app, Method::POST, "/api/v1/relationship/setup", Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid");
    }
    for body in [
        json!({"primary": "h:1"}),
        json!({"primary": "h:1", "token": "t", "force": true}),
        json!({"primary": "h:1", "token": "t", "witness": "yes"}),
    ] {
        call(&app, Method::POST, "/api/v1/relationship/setup", Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());

    let r = call(
        &app,
        Method::POST,
        "/api/v1/relationship/setup",
        Some(json!({"primary": "https://10.0.0.1:8443", "token": "t1", "witness": true, "discard_data": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["role"], "witness");
    assert_eq!(r.body["node_id"], 2);
    backend.lock().refuse = Some("this node is already in a relationship".into());
    let r = call(
        &app,
        Method::POST,
        "/api/v1/relationship/setup",
        Some(json!({"primary": "h:1", "token": "t2", "reverse_address": "10.0.0.9:7400"})),
    )
    .await;
    r.assert_error(StatusCode::CONFLICT, "refused");
    assert_eq!(
        backend.calls(),
        [
            "setup(https://10.0.0.1:8443,t1,None,witness=true,discard=true,admin-token)",
            "setup(h:1,t2,Some(\"10.0.0.9:7400\"),witness=false,discard=false,admin-token)",
        ]
    );
}

#[tokio::test]
async fn new_error_variants_map_once() {
    use axum::response::IntoResponse;
    let fields: BTreeMap<String, String> = [("test_ips[0]".to_owned(), "bad".to_owned())].into();
    let resp = ApiError::Invalid {
        fields: fields.clone(),
    }
    .into_response();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body readable");
    let body: tandem_web::ErrorBody = serde_json::from_slice(&bytes).expect("error body");
    assert_eq!(body.error, "invalid");
    assert_eq!(body.fields, Some(fields));
    assert_eq!(ApiError::Refused("r".into()).status(), StatusCode::CONFLICT);
    assert_eq!(ApiError::Refused("r".into()).kind(), "refused");
    // Other errors carry no `fields` member.
    let resp = ApiError::BadRequest("b".into()).into_response();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body readable");
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert!(body.get("fields").is_none());
}

/// Path template (axum syntax) → OpenAPI syntax, and → a concrete URI.
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push('x');
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn openapi_lists_exactly_the_routes() {
    let (_, app) = app();
    let r = send(
        &app,
        request(Method::GET, "/api/v1/openapi.json", None, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "open route");
    let doc = r.body;
    assert_eq!(doc, openapi(), "the served document is the generated one");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert_eq!(doc["info"]["title"], "Tandem admin API");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({
            "type": "http",
            "scheme": "bearer",
            "description": doc["components"]["securitySchemes"]["bearer"]["description"],
        })
    );
    let paths = doc["paths"].as_object().expect("paths");

    let methods = ["get", "put", "post", "delete", "patch"];
    // Every route in the table is in the document, with its security.
    for route in ROUTES {
        let p = openapi_path(route.path);
        let m = route.method.to_lowercase();
        let op = &paths
            .get(&p)
            .unwrap_or_else(|| panic!("{p} missing from openapi.json"))[&m];
        assert!(
            op.is_object(),
            "{} {p} missing from openapi.json",
            route.method
        );
        let secured = op["security"] == json!([{ "bearer": [] }]);
        assert_eq!(secured, route.auth, "{} {p}: security", route.method);
        // Each path parameter is declared.
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|param| param["in"] == "path")
            .filter_map(|param| param["name"].as_str())
            .collect();
        let in_path: BTreeSet<&str> = p
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
            .collect();
        assert_eq!(declared, in_path, "{} {p}: path parameters", route.method);
        assert_eq!(
            op["responses"].get("401").is_some(),
            route.auth,
            "{} {p}: 401",
            route.method
        );
    }
    // And nothing else.
    for (p, item) in paths {
        for m in methods {
            if item.get(m).is_some() {
                assert!(
                    ROUTES
                        .iter()
                        .any(|r| openapi_path(r.path) == *p && r.method.to_lowercase() == m),
                    "{m} {p} documented but not in ROUTES"
                );
            }
        }
    }
    // The router answers each listed method on each path, and 405s the
    // others: the table matches what is registered. (`router` refuses, in
    // debug builds, to register a path not in the table.)
    for route in ROUTES {
        let uri = concrete(route.path);
        for m in methods {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).expect("method");
            let listed = ROUTES
                .iter()
                .any(|r| r.path == route.path && r.method.eq_ignore_ascii_case(m));
            let resp = call(&app, method, &uri, Some(json!({}))).await;
            let unrouted = resp.status == StatusCode::METHOD_NOT_ALLOWED
                || (resp.status == StatusCode::NOT_FOUND
                    && resp.body["message"]
                        .as_str()
                        .is_some_and(|msg| msg.starts_with("no route")));
            assert_eq!(
                !unrouted, listed,
                "{m} {uri}: {} {}",
                resp.status, resp.body
            );
        }
    }
    // Every $ref resolves.
    let mut found = Vec::new();
    refs_in(&doc, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let pointer = r.strip_prefix('#').expect("local ref");
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
}

/// Every `$ref` (a JSON pointer into the document) below `v`.
fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => refs_in(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

/// Every operation of the document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(&str, &str, &Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(p, item)| {
            let item = item.as_object().expect("path item");
            item.iter().map(move |(m, op)| (p.as_str(), m.as_str(), op))
        })
        .collect()
}

#[test]
fn openapi_covers_every_error_kind_and_status() {
    let doc = openapi();
    let examples = ApiError::examples();

    // Every kind is in the error body's `error` enum, and nothing else.
    let error_body = "#/components/schemas/ErrorBody";
    let listed: BTreeSet<&str> = doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]
        ["enum"]
        .as_array()
        .expect("ErrorBody.error is an enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let kinds: BTreeSet<&str> = examples.iter().map(ApiError::kind).collect();
    assert_eq!(listed, kinds);

    // Every status the mapping produces is a documented response somewhere,
    // and every error response (but the role health checks' "not in this
    // role", which answers with their own body) has the one error body.
    let mut documented = BTreeSet::new();
    for (p, m, op) in operations(&doc) {
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|code| code.starts_with('2')),
            "{m} {p}: no success response"
        );
        for (code, response) in responses {
            let status: u16 = code.parse().expect("numeric status");
            documented.insert(status);
            if status < 400 {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            let role_health = p.starts_with("/health/") && status == 503;
            let expected = if role_health {
                "#/components/schemas/RoleHealth"
            } else {
                error_body
            };
            assert_eq!(schema, expected, "{m} {p}: {status}");
        }
    }
    for err in &examples {
        let status = err.status().as_u16();
        assert!(
            documented.contains(&status),
            "status {status} ({}) is in no response",
            err.kind()
        );
    }
}

#[test]
fn openapi_has_no_unused_schemas() {
    let doc = openapi();
    // Follow the references from the operations, through responses and
    // schemas, to every schema they reach.
    let mut todo = Vec::new();
    refs_in(&doc["paths"], &mut todo);
    let mut reached = BTreeSet::new();
    while let Some(r) = todo.pop() {
        if reached.insert(r.clone()) {
            let target = doc
                .pointer(r.strip_prefix('#').expect("local ref"))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            refs_in(target, &mut todo);
        }
    }
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(schemas.contains_key("ErrorBody"));
    for name in schemas.keys() {
        assert!(
            reached.contains(&format!("#/components/schemas/{name}")),
            "schema {name} is referenced by no route"
        );
    }
}

// ---- web UI: login sessions, CSRF, pages, events ---------------------------

const PASSWORD: &str = "correct horse";

fn ui_app() -> (Arc<MemBackend>, AdminApp) {
    let (backend, app) = app();
    backend.lock().users.insert("admin".into(), PASSWORD.into());
    (backend, app)
}

struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn raw(app: &AdminApp, req: Request<Body>) -> Raw {
    let resp = app
        .clone()
        .oneshot(req)
        .await
        .expect("router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body readable");
    Raw {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn login_request(user: &str, password: &str) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/ui/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!(
            "user={user}&password={}",
            password.replace(' ', "+")
        )))
        .expect("valid request")
}

/// Logs in; returns the cookie header value and the page's CSRF token.
async fn login(app: &AdminApp) -> (String, String) {
    let r = raw(app, login_request("admin", PASSWORD)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(r.header("location"), Some("/"));
    let set = r.header("set-cookie").expect("a session cookie").to_owned();
    let cookie = set.split(';').next().expect("name=value").to_owned();
    let page = raw(app, with_cookie(Method::GET, "/", &cookie, None, None)).await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page
        .text
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("the page carries the CSRF token")
        .to_owned();
    (cookie, csrf)
}

fn with_cookie(
    method: Method,
    uri: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::COOKIE, cookie);
    if let Some(t) = csrf {
        b = b.header("x-csrf-token", t);
    }
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).expect("valid request")
}

#[tokio::test]
async fn login_sets_a_strict_session_cookie() {
    let (_, app) = ui_app();
    let page = raw(&app, request(Method::GET, "/login", None, None)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/html")));
    assert!(page.text.contains("action=\"/ui/login\""));
    let r = raw(&app, login_request("admin", PASSWORD)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/"));
    let cookie = r.header("set-cookie").expect("cookie");
    assert!(cookie.starts_with("tandem_session="), "{cookie}");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|f| f == flag), "{flag} in {cookie}");
    }
    let id = cookie
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v);
    assert!(
        id.is_some_and(|v| v.len() >= 32),
        "a long random id: {cookie}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_refused_with_the_login_page() {
    let (_, app) = ui_app();
    for (user, password) in [("admin", "wrong password"), ("nobody", PASSWORD), ("", "")] {
        let r = raw(&app, login_request(user, password)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{user}");
        assert!(r.header("set-cookie").is_none());
        assert!(r
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/html")));
        assert!(r.text.contains("wrong user name or password"), "{}", r.text);
    }
}

#[tokio::test]
async fn login_failures_are_rate_limited_per_user_and_address() {
    let (backend, app) = ui_app();
    backend.lock().users.insert("bob".into(), PASSWORD.into());
    for _ in 0..LOGIN_MAX_FAILURES {
        let r = raw(&app, login_request("admin", "wrong password")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused while limited, with Retry-After.
    let r = raw(&app, login_request("admin", PASSWORD)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=60).contains(&wait));
    assert!(r.text.contains("too many failed logins"));
    // The same client address is limited for other users too.
    let r = raw(&app, login_request("bob", PASSWORD)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another address is not: a flood on `admin` from some addresses does
    // not lock the administrator out from every one.
    let mut from_elsewhere = login_request("admin", PASSWORD);
    from_elsewhere
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 7],
            40_000,
        ))));
    let r = raw(&app, from_elsewhere).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    // A huge user name is one key, not a key of its own.
    let long = "x".repeat(100_000);
    let mut huge = login_request(&long, "wrong password");
    huge.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 8],
            40_000,
        ))));
    let r = raw(&app, huge).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn pages_need_a_session() {
    let (_, app) = ui_app();
    for page in ["/", "/settings", "/data", "/setup", "/users"] {
        let r = raw(&app, request(Method::GET, page, None, None)).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(r.header("location"), Some("/login"), "{page}");
        let r = raw(
            &app,
            with_cookie(Method::GET, page, "tandem_session=forged", None, None),
        )
        .await;
        assert_eq!(r.header("location"), Some("/login"), "{page}");
    }
    let (cookie, _) = login(&app).await;
    for page in ["/", "/settings", "/data", "/setup", "/users"] {
        let r = raw(&app, with_cookie(Method::GET, page, &cookie, None, None)).await;
        assert_eq!(r.status, StatusCode::OK, "{page}");
        assert!(r.text.contains("/ui/app.js"), "{page}");
        assert!(r
            .header("content-security-policy")
            .is_some_and(|v| v.contains("default-src 'self'")));
    }
    // Assets are embedded and need no session.
    for (asset, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = raw(&app, request(Method::GET, asset, None, None)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r
            .header("content-type")
            .is_some_and(|v| v.starts_with(kind)));
        assert!(r.text.len() > 1000, "{asset} is embedded");
    }
    // The API without any credential stays 401.
    call_raw_401(&app).await;
}

async fn call_raw_401(app: &AdminApp) {
    send(app, request(Method::GET, "/api/v1/status", None, None))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn a_session_ends_when_its_user_is_removed_elsewhere() {
    let (backend, app) = ui_app();
    let (cookie, _) = login(&app).await;
    let status = |app: AdminApp, cookie: String| async move {
        raw(
            &app,
            with_cookie(Method::GET, "/api/v1/status", &cookie, None, None),
        )
        .await
        .status
    };
    assert_eq!(status(app.clone(), cookie.clone()).await, StatusCode::OK);
    // The user is removed through another node: only the replicated users
    // change here, not this node's session map.
    backend.lock().users.remove("admin");
    assert_eq!(
        status(app.clone(), cookie.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let page = raw(&app, with_cookie(Method::GET, "/", &cookie, None, None)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.header("location"), Some("/login"));
    // Re-created with the same name, the old session does not come back.
    backend.lock().users.insert("admin".into(), PASSWORD.into());
    assert_eq!(status(app, cookie).await, StatusCode::UNAUTHORIZED);
}

/// Password lengths count characters where a password is set and where
/// it is checked: 200 three-byte characters (600 bytes) log in.
#[tokio::test]
async fn a_long_password_of_wide_characters_logs_in() {
    let (backend, app) = ui_app();
    let wide = "€".repeat(200);
    backend.lock().users.insert("carol".into(), wide.clone());
    let mut body = String::from("user=carol&password=");
    for b in wide.bytes() {
        body.push_str(&format!("%{b:02X}"));
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri("/ui/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .expect("valid request");
    let r = raw(&app, req).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
}

#[tokio::test]
async fn a_password_change_ends_the_users_sessions() {
    let (backend, app) = ui_app();
    let (cookie, _) = login(&app).await;
    let status = |cookie: String| {
        let app = app.clone();
        async move {
            raw(
                &app,
                with_cookie(Method::GET, "/api/v1/status", &cookie, None, None),
            )
            .await
            .status
        }
    };
    assert_eq!(status(cookie.clone()).await, StatusCode::OK);
    // Changed through any node: the replicated user changes.
    backend
        .lock()
        .users
        .insert("admin".into(), "a new password".into());
    assert_eq!(status(cookie).await, StatusCode::UNAUTHORIZED);
    // A login with the new password works.
    let r = raw(&app, login_request("admin", "a new password")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
}

#[tokio::test]
async fn csrf_is_enforced_on_state_changing_calls_with_the_cookie() {
    let (backend, app) = ui_app();
    let (cookie, csrf) = login(&app).await;
    // Reads need no CSRF token.
    let r = raw(
        &app,
        with_cookie(Method::GET, "/api/v1/status", &cookie, None, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    backend.lock().calls.clear();
    // Writes without, or with a wrong, token are 403 and reach nothing.
    for token in [None, Some("wrong"), Some("")] {
        for (method, uri, body) in [
            (Method::POST, "/api/v1/relationship/sync", Some(json!({}))),
            (Method::PUT, "/api/v1/settings", Some(valid_settings())),
            (Method::DELETE, "/api/v1/config/a", None),
            (
                Method::POST,
                "/api/v1/users",
                Some(json!({"name": "eve", "password": "password1"})),
            ),
        ] {
            let r = send(&app, with_cookie(method.clone(), uri, &cookie, token, body)).await;
            r.assert_error(StatusCode::FORBIDDEN, "forbidden");
            assert!(r.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("CSRF")));
        }
    }
    assert_eq!(backend.calls(), Vec::<String>::new());
    // With the token the call goes through and acts as the logged-in user,
    // whatever X-Tandem-Actor says.
    let mut req = with_cookie(
        Method::POST,
        "/api/v1/relationship/sync",
        &cookie,
        Some(&csrf),
        Some(json!({"verify": true})),
    );
    req.headers_mut()
        .insert("x-tandem-actor", "mallory".parse().expect("ascii"));
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(backend.calls(), ["sync(verify=true,admin)"]);
    // The logout form needs it too.
    let r = raw(
        &app,
        Request::builder()
            .method(Method::POST)
            .uri("/ui/logout")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("csrf=wrong"))
            .expect("valid"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = raw(
        &app,
        Request::builder()
            .method(Method::POST)
            .uri("/ui/logout")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}")))
            .expect("valid"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/login"));
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.contains("Max-Age=0")));
    let r = raw(&app, with_cookie(Method::GET, "/", &cookie, None, None)).await;
    assert_eq!(r.header("location"), Some("/login"), "the session ended");
}

#[tokio::test]
async fn bearer_calls_need_no_csrf_token() {
    let (backend, app) = ui_app();
    let r = call(
        &app,
        Method::POST,
        "/api/v1/relationship/sync",
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = call(
        &app,
        Method::POST,
        "/api/v1/users",
        Some(json!({"name": "bob", "password": "password1"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["name"], "bob");
    assert_eq!(backend.lock().last_actor.as_deref(), Some("admin-token"));
    // A per-user API token made on the page works as a bearer token.
    let (cookie, csrf) = login(&app).await;
    let r = send(
        &app,
        with_cookie(
            Method::POST,
            "/api/v1/api-tokens",
            &cookie,
            Some(&csrf),
            Some(json!({})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["user"], "admin");
    let token = r.body["token"].as_str().expect("token").to_owned();
    let r = send(
        &app,
        request(Method::GET, "/api/v1/status", Some(&token), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // A write with it is recorded as its user, whatever the request says.
    let mut req = request(
        Method::POST,
        "/api/v1/relationship/sync",
        Some(&token),
        Some(json!({})),
    );
    req.headers_mut()
        .insert("x-tandem-actor", "mallory".parse().expect("ascii"));
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        backend.calls().last().map(String::as_str),
        Some("sync(verify=false,admin)")
    );
    // A user makes API tokens for itself only; the admin token for anyone.
    backend
        .lock()
        .users
        .insert("bob".into(), "bob's password".into());
    let for_bob = || Some(json!({"user": "bob"}));
    let r = send(
        &app,
        request(Method::POST, "/api/v1/api-tokens", Some(&token), for_bob()),
    )
    .await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    let r = send(
        &app,
        with_cookie(
            Method::POST,
            "/api/v1/api-tokens",
            &cookie,
            Some(&csrf),
            for_bob(),
        ),
    )
    .await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    let r = call(&app, Method::POST, "/api/v1/api-tokens", for_bob()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["user"], "bob");
    let id = backend
        .lock()
        .api_tokens
        .keys()
        .next()
        .cloned()
        .expect("one token");
    let r = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/api-tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    send(
        &app,
        request(Method::GET, "/api/v1/status", Some(&token), None),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // A bearer call must name the user of a new token.
    call(&app, Method::POST, "/api/v1/api-tokens", Some(json!({})))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn users_are_validated_and_the_last_one_stays() {
    let (_, app) = ui_app();
    let r = call(
        &app,
        Method::POST,
        "/api/v1/users",
        Some(json!({"name": "a b", "password": "password1"})),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(r.body["fields"]["name"].is_string());
    let r = call(
        &app,
        Method::POST,
        "/api/v1/users",
        Some(json!({"name": "bob", "password": "short"})),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(r.body["fields"]["password"].is_string());
    call(
        &app,
        Method::POST,
        "/api/v1/users",
        Some(json!({"name": "admin", "password": "password1"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "conflict");
    call(&app, Method::DELETE, "/api/v1/users/admin", None)
        .await
        .assert_error(StatusCode::CONFLICT, "refused");
    call(&app, Method::DELETE, "/api/v1/users/nobody", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = call(&app, Method::GET, "/api/v1/users", None).await;
    assert_eq!(r.body["items"][0]["name"], "admin");
    assert!(r.body["items"][0].get("password").is_none());
    // Own password: only with a login session, and the old one must match.
    call(
        &app,
        Method::POST,
        "/api/v1/account/password",
        Some(json!({"old_password": PASSWORD, "new_password": "password2"})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let (cookie, csrf) = login(&app).await;
    let r = send(
        &app,
        with_cookie(
            Method::POST,
            "/api/v1/account/password",
            &cookie,
            Some(&csrf),
            Some(json!({"old_password": "nope", "new_password": "password2"})),
        ),
    )
    .await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    let r = send(
        &app,
        with_cookie(
            Method::POST,
            "/api/v1/account/password",
            &cookie,
            Some(&csrf),
            Some(json!({"old_password": PASSWORD, "new_password": "password2"})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = raw(&app, login_request("admin", "password2")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn events_stream_status() {
    use futures::StreamExt as _;
    let (_, app) = ui_app();
    let resp = app
        .clone()
        .oneshot(request(Method::GET, "/api/v1/events", Some(TOKEN), None))
        .await
        .expect("router is infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let mut stream = resp.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .expect("a chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: status\n"), "{text}");
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let view: StatusView = serde_json::from_str(data).expect("a StatusView");
    assert!(!view.this_host.name.is_empty());
    // Without credentials: 401.
    send(&app, request(Method::GET, "/api/v1/events", None, None))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}
