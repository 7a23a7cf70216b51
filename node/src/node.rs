//! A running node: storage, certificates and the Raft instance, plus the
//! operations the admin API and the background tasks perform on them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use tandem_certs::ClusterCa;
use tandem_storage::{LogReaderHandle, NodeInfo, NodeKind, Request, Response, StateReader};

use crate::config::{DataDir, NodeConfig, Tuning};
use crate::peer::client::{PeerIdentity, PeerNetwork};
use crate::placement::Place;
use crate::settings::{Settings, Timing};
use crate::util::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};

/// How long a write waits for a just-elected leader to become ready before it is redirected.
const NEW_LEADER_GRACE: Duration = Duration::from_secs(2);
/// How often that wait looks again.
const NEW_LEADER_POLL: Duration = Duration::from_millis(20);
/// Pause between attempts to add a learner while another membership change finishes.
const MEMBERSHIP_RETRY: Duration = Duration::from_millis(100);

/// How long a join token lives unless the caller asks otherwise.
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest a join token may live.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A join or rejoin token's lifetime: the default when not given.
///
/// # Errors
/// [`NodeError::BadRequest`] for zero or more than the maximum.
pub(crate) fn token_ttl(ttl: Option<Duration>) -> Result<Duration, NodeError> {
    let ttl = ttl.unwrap_or(DEFAULT_JOIN_TOKEN_TTL);
    if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
        return Err(NodeError::BadRequest(format!(
            "ttl must be between 1 s and {} s",
            MAX_JOIN_TOKEN_TTL.as_secs()
        )));
    }
    Ok(ttl)
}

use crate::errors::JoinDenial;
pub use crate::errors::NodeError;
use crate::join::{
    constant_time_eq, hash_secret, random_hex, random_secret, san_held_by_other, sans_for,
    validate_name, ParsedToken,
};
pub use crate::join::{JoinGrant, JoinRequest};

/// The Raft instance type of a Tandem node.
pub type TandemRaft = openraft::Raft<tandem_storage::TypeConfig, tandem_storage::StateMachineStore>;

/// The openraft configuration for this node's tuning and timing.
///
/// # Errors
/// If the values are inconsistent (openraft validates them).
pub fn raft_config(
    t: &Tuning,
    timing: Timing,
    kind: NodeKind,
) -> anyhow::Result<Arc<openraft::Config>> {
    // See `Timing`: the witness only votes (its election timeout bounds are
    // used by openraft as its vote lease), appliances elect.
    let (election_min, election_max, enable_elect) = match kind {
        NodeKind::Appliance => (timing.election_min, timing.election_max, true),
        NodeKind::Witness => (
            timing.witness_vote_lease / 2,
            timing.witness_vote_lease,
            false,
        ),
    };
    let cfg = openraft::Config {
        cluster_name: "tandem".into(),
        heartbeat_interval: timing.heartbeat.as_millis() as u64,
        election_timeout_min: election_min.as_millis() as u64,
        election_timeout_max: election_max.as_millis() as u64,
        enable_elect,
        // Snapshots are asked by the role manager (`roles::snapshot_duty`):
        // after `snapshot_every` entries, or after as many entries as the
        // last snapshot held records, whichever is more.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: t.keep_behind_snapshot,
        // Bounds one AppendEntries frame: 256 entries of at most 64 KiB each
        // stay well inside the 32 MiB frame limit.
        max_payload_entries: 256,
        // A node that cannot win (frozen, cut off, restarted) asks first
        // whether it would be granted a vote, without raising its term:
        // otherwise its higher term, seen in its first answer to the
        // leader, makes a healthy primary step down when it returns.
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate()?))
}

/// Starts Raft over an opened store.
///
/// # Errors
/// Invalid configuration or a storage failure while Raft recovers.
pub async fn start_engine(
    cfg: &NodeConfig,
    timing: Timing,
    network: PeerNetwork,
    store: tandem_storage::Store,
) -> anyhow::Result<Engine> {
    use anyhow::Context;
    let reader = store.reader.clone();
    let log_reader = store.log_reader();
    let flusher = store.flusher();
    let raft = TandemRaft::new(
        cfg.node_id,
        raft_config(&cfg.tuning, timing, cfg.kind)?,
        network,
        store.log,
        store.sm,
    )
    .await
    .context("starting raft")?;
    Ok(Engine {
        raft,
        reader,
        log_reader,
        flusher,
    })
}

/// What a reset of the Raft state (`actions::reset`) leaves behind. Here,
/// not there: the reset is an `impl Node` method, and a type it uses in the
/// module that extends `Node` would make that module and this one import
/// each other.
pub(crate) enum ResetTo {
    /// This node alone, leader of its own cluster, with its data.
    SingleVoter(tandem_storage::CatchUp),
    /// An empty store, waiting for a leader to send it everything.
    Pristine,
}

/// The parts of a node that are rebuilt when its Raft state is reset (a
/// forced promotion or a broken relationship makes it the single voter of a
/// fresh Raft over the same data).
pub struct Engine {
    /// The Raft handle.
    pub raft: TandemRaft,
    /// Concurrent reader of the replicated state.
    pub reader: StateReader,
    /// Concurrent reader of the Raft log (diverged exports, lag in bytes).
    pub log_reader: LogReaderHandle,
    /// The durable flush of its store (shutdown's last step).
    pub flusher: tandem_storage::DurableFlush,
}

/// A node with its Raft instance running.
pub struct Node {
    /// The node's configuration as in force for this run.
    pub cfg: NodeConfig,
    /// Its data directory.
    pub dir: DataDir,
    engine: std::sync::RwLock<Arc<Engine>>,
    /// The cluster CA (with its key on appliances, to sign joiners).
    pub ca: Option<ClusterCa>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Identity shared with the transport.
    pub identity: Arc<PeerIdentity>,
    /// The Raft network (also used for the relationship's own peer calls).
    pub network: PeerNetwork,
    /// Where snapshots live (incoming ones are spooled below it).
    pub snapshot_dir: std::path::PathBuf,
    /// Raft timing in force for this run (from the replicated primary timeout).
    /// The timing the engine runs with and the replicated one, while a
    /// change of the primary timeout settles (see `live_timing`).
    pub live: crate::live_timing::LiveTiming,
    /// Role state maintained by the role manager.
    pub roles: crate::roles::RoleState,
    /// Serialises engine resets.
    pub(crate) reset_lock: tokio::sync::Mutex<()>,
    /// Automatic failover and scheduled verify.
    pub(crate) duties: crate::actions::duties::Duties,
    /// This node's service checks and their states.
    pub(crate) checks: crate::checks::ServiceChecks,
    /// The shared-IP manager, once `run` started it.
    pub shared_ips: std::sync::OnceLock<crate::shared_ip::SharedIpHandle>,
    /// Bandwidth limit for snapshot and catch-up streams (bytes/s, 0 =
    /// none), refreshed from the replicated settings by the role manager.
    pub bandwidth: Arc<AtomicU64>,
    /// Cancelled when the node must restart in place (a join set up from
    /// the web UI changed its identity); `run` then stops and starts it.
    pub restart: tokio_util::sync::CancellationToken,
    /// The free-space reserve application writes are checked against.
    pub disk: crate::disk::DiskGuard,
    /// Essential background tasks that died (normally none).
    pub supervision: crate::supervise::Supervision,
    /// This node's site and host identity (from its configuration).
    pub place: Place,
    /// Held while a join is served (one at a time).
    pub(crate) join_lock: tokio::sync::Mutex<()>,
    /// This node's certificate and key, as every new connection presents
    /// them (replaced by a renewal).
    pub certs: Arc<tandem_certs::NodeCerts>,
    /// The admin listener's certificates, once it runs (a renewal replaces
    /// its cluster chain).
    pub admin_certs: std::sync::OnceLock<Arc<tandem_certs::AdminCerts>>,
    /// Held while this node's certificate is renewed.
    pub(crate) renewing: tokio::sync::Mutex<()>,
    db: sled::Db,
}

impl Node {
    /// Opens storage and certificates and starts Raft (not the listeners).
    ///
    /// # Errors
    /// Unreadable certificates or storage, invalid tuning.
    pub async fn open(dir: DataDir, cfg: NodeConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let ca_pem = std::fs::read_to_string(dir.ca_cert()).context("reading ca.pem")?;
        let ca = match std::fs::read_to_string(dir.ca_key()) {
            Ok(key) => Some(ClusterCa::from_pem(&ca_pem, &key).context("loading the cluster CA")?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).context("reading ca.key"),
        };
        let cert_pem = std::fs::read_to_string(dir.node_cert()).context("reading node.pem")?;
        let key_pem = std::fs::read_to_string(dir.node_key()).context("reading node.key")?;
        let certs = tandem_certs::NodeCerts::new(&ca_pem, &cert_pem, &key_pem)
            .context("loading this node's certificate")?;
        let client_tls = certs.peer_client_config()?;

        let db_dir = dir.db();
        // sled asserts (panics) on a cache under 256 bytes: refuse it here.
        anyhow::ensure!(
            cfg.tuning.cache_mb >= 1,
            "tuning.cache_mb must be at least 1 (MiB)"
        );
        let cache = cfg.tuning.cache_mb.saturating_mul(1024 * 1024);
        let disk = crate::disk::DiskGuard::new(db_dir.clone(), cfg.tuning.min_free_mb);
        let store = tokio::task::spawn_blocking(move || tandem_storage::open(&db_dir, cache))
            .await?
            .context("opening storage")?;
        let snapshot_dir = store.snapshot_dir().to_path_buf();
        let db = store.db.clone();
        let settings = Settings::parse(store.reader.settings().map(|s| s.settings_json).as_deref());
        let (timing, floor) = if store.reader.settings().is_some() {
            (settings.timing(), settings.floor_timing())
        } else {
            let t = Timing::from_primary_timeout_ms(cfg.tuning.primary_timeout_ms);
            (t, t)
        };
        let applied = store.reader.applied_index().unwrap_or(0);
        let epoch = Arc::new(AtomicU64::new(store.reader.epoch().epoch));
        let epoch_now = epoch.clone();
        let bandwidth = Arc::new(AtomicU64::new(settings.bandwidth_limit_bps));
        let bandwidth_now = bandwidth.clone();
        let fence = Arc::new(crate::peer::fence::Fence::default());
        let identity = Arc::new(PeerIdentity {
            node_id: cfg.node_id,
            cluster_id: cfg.cluster_id.clone(),
            epoch: Box::new(move || epoch_now.load(Ordering::Relaxed)),
            fence: fence.clone(),
            // Refreshed from the replicated settings on every role tick.
            bandwidth_limit: Box::new(move || bandwidth_now.load(Ordering::Relaxed)),
            heartbeat: timing.heartbeat,
            seen_certs: Default::default(),
        });
        let network = PeerNetwork::new(identity.clone(), client_tls);
        let engine = start_engine(&cfg, timing, network.clone(), store).await?;
        let roles = crate::roles::RoleState::new(epoch, fence);
        if dir.stood_down().exists() {
            tracing::warn!("this node stood down by a forced demotion: it is not primary until the demotion is undone");
            roles
                .stood_down
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(Self {
            place: Place::local(cfg.site.as_deref(), cfg.host_id.as_deref()),
            join_lock: tokio::sync::Mutex::new(()),
            certs,
            admin_certs: std::sync::OnceLock::new(),
            renewing: tokio::sync::Mutex::new(()),
            cfg,
            dir,
            engine: std::sync::RwLock::new(Arc::new(engine)),
            ca,
            ca_pem,
            identity,
            network,
            snapshot_dir,
            live: crate::live_timing::LiveTiming::new(
                timing,
                floor,
                applied,
                std::time::Instant::now(),
            ),
            roles,
            reset_lock: tokio::sync::Mutex::new(()),
            duties: crate::actions::duties::Duties::default(),
            checks: crate::checks::ServiceChecks::default(),
            shared_ips: std::sync::OnceLock::new(),
            bandwidth,
            restart: tokio_util::sync::CancellationToken::new(),
            disk,
            supervision: crate::supervise::Supervision::default(),
            db,
        })
    }

    /// The timing the engine runs with (election timeouts: the takeover
    /// side of a primary-timeout change).
    pub fn timing(&self) -> Timing {
        self.live.running()
    }

    /// The timing of this node's lease as primary: never longer than what
    /// any voter may still run (see `live_timing`).
    pub fn lease_timing(&self) -> Timing {
        self.live.lease()
    }

    /// The current engine (cheap: an `Arc` clone).
    pub fn engine(&self) -> Arc<Engine> {
        // A poisoned lock means a panic while swapping engines; the Arc inside
        // is still a complete engine, so keep serving with it.
        crate::util::read(&self.engine).clone()
    }

    /// The Raft handle of the current engine.
    pub fn raft(&self) -> TandemRaft {
        self.engine().raft.clone()
    }

    /// The state reader of the current engine.
    pub fn reader(&self) -> StateReader {
        self.engine().reader.clone()
    }

    /// Replaces the engine (after a reset).
    pub(crate) fn set_engine(&self, engine: Engine) {
        *crate::util::write(&self.engine) = Arc::new(engine);
    }

    /// The sled database under every engine of this node.
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// A copy of the current Raft metrics.
    pub fn metrics(&self) -> openraft::RaftMetrics<tandem_storage::TypeConfig> {
        self.raft().metrics().borrow_watched().clone()
    }

    /// This node's membership entry.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.cfg.name.clone(),
            kind: self.cfg.kind,
            peer_addr: self.cfg.peer_advertise.clone(),
            api_addr: self.cfg.api_advertise.clone(),
        }
    }

    /// The leader's API base URL, if a leader other than this node is known.
    pub fn leader_api(&self) -> Option<String> {
        let m = self.metrics();
        let leader = m.current_leader.filter(|l| *l != self.cfg.node_id)?;
        m.membership_config
            .get_node(&leader)
            .map(|n| n.api_addr.clone())
    }

    fn not_leader(&self) -> NodeError {
        NodeError::NotLeader {
            leader_api: self.leader_api(),
        }
    }

    /// Proposes `req` and waits until it is committed (fsynced on a quorum)
    /// and applied.
    ///
    /// # Errors
    /// [`NodeError::NotLeader`] on a follower, [`NodeError::Unavailable`] when
    /// the outcome is unknown or Raft stopped.
    pub async fn write(&self, req: Request) -> Result<Response, NodeError> {
        // A leader that was just elected (or whose quorum lease openraft
        // considers expired) forwards to itself: it is not ready yet. Give it
        // a moment rather than redirect a client to this very node.
        let deadline = std::time::Instant::now() + NEW_LEADER_GRACE;
        loop {
            match self.raft().client_write(req.clone()).await {
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
                    if f.leader_id == Some(self.cfg.node_id)
                        && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(reason = ?f.reason, "leader not ready; retrying the proposal");
                    tokio::time::sleep(NEW_LEADER_POLL).await;
                }
                other => return self.write_outcome(other),
            }
        }
    }

    fn write_outcome(
        &self,
        r: Result<
            openraft::raft::ClientWriteResponse<tandem_storage::TypeConfig>,
            RaftError<tandem_storage::TypeConfig, ClientWriteError<tandem_storage::TypeConfig>>,
        >,
    ) -> Result<Response, NodeError> {
        match r {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                tracing::debug!(leader = ?f.leader_id, reason = ?f.reason, "proposal forwarded");
                Err(self.not_leader())
            }
            Err(RaftError::APIError(e)) => Err(NodeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(NodeError::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    /// Waits until this node may serve a linearizable read (it is the leader,
    /// confirmed by a quorum, and has applied everything committed before the
    /// read began). A stale read skips the check.
    ///
    /// # Errors
    /// [`NodeError::NotLeader`] or [`NodeError::Unavailable`].
    pub async fn read_barrier(&self, stale: bool) -> Result<(), NodeError> {
        if stale {
            return Ok(());
        }
        match self.raft().ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                Err(self.not_leader())
            }
            Err(RaftError::APIError(e)) => Err(NodeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(NodeError::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    /// Checks a bearer token: the admin token, or a per-user API token
    /// (`tdu_<id>.<secret>`) whose user still exists, against the
    /// replicated hashes; answers who it is (`admin-token` or the user).
    pub fn authorize(&self, bearer: &str) -> Option<String> {
        let got = hash_secret(bearer);
        if let Some(id) = crate::users::api_token_id(bearer) {
            let reader = self.reader();
            return reader
                .api_token(id)
                .filter(|t| {
                    constant_time_eq(got.as_bytes(), t.secret_hash.as_bytes())
                        && reader.user(&t.user).is_some()
                })
                .map(|t| t.user);
        }
        let expected = self.reader().admin_token_hash()?;
        constant_time_eq(got.as_bytes(), expected.as_bytes())
            .then(|| tandem_web::ADMIN_TOKEN_ACTOR.to_owned())
    }

    /// Creates a one-time join token: `<id>.<secret>.<ca-fingerprint>`.
    ///
    /// # Errors
    /// As [`Node::write`]; [`NodeError::BadRequest`] for a TTL over the maximum.
    pub async fn create_join_token(
        &self,
        ttl: Option<Duration>,
        kind: NodeKind,
        actor: &str,
    ) -> Result<(String, u64), NodeError> {
        let ttl = token_ttl(ttl)?;
        let id = random_hex(8);
        let secret = random_secret(24);
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let fp = tandem_certs::fingerprint_of_pem(&self.ca_pem)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        match self
            .write(Request::JoinTokenCreate {
                id: id.clone(),
                secret_hash: hash_secret(&secret),
                expires_ms,
                kind,
                created_by: actor.to_string(),
            })
            .await?
        {
            Response::Refused { reason } => Err(NodeError::Rejected(reason)),
            _ => Ok((format!("{id}.{secret}.{fp}"), expires_ms)),
        }
    }

    /// Serves a join request: checks and consumes the token (a replicated,
    /// one-time operation), signs the joiner's certificate and adds it as a
    /// learner; the promotion task makes it a voter once it has caught up.
    ///
    /// # Errors
    /// [`NodeError::JoinDenied`] for a bad, reused or expired token, a
    /// taken name or place, or an address another member's certificate
    /// holds (all refused before the token is spent);
    /// [`NodeError::BadRequest`] for a malformed request; [`NodeError::NotLeader`].
    pub async fn handle_join(&self, req: JoinRequest) -> Result<JoinGrant, NodeError> {
        if !self.raft().is_leader() {
            return Err(self.not_leader());
        }
        // One join at a time: the room left in the topology is checked
        // against a membership no other join is changing.
        let _one = self.join_lock.lock().await;
        let ca = self
            .ca
            .as_ref()
            .ok_or(NodeError::JoinDenied(JoinDenial::NoCaKey))?;
        let token = ParsedToken::parse(&req.token)
            .map_err(|e| NodeError::JoinDenied(JoinDenial::MalformedToken(e)))?;
        let fp = ca.fingerprint();
        if !token.ca_fingerprint.eq_ignore_ascii_case(&fp) {
            return Err(NodeError::JoinDenied(JoinDenial::OtherCluster));
        }
        validate_name(&req.name).map_err(NodeError::BadRequest)?;
        // Checked here, on this node's applied state, before anything is
        // proposed: a forged, spent or expired token, or one for the other
        // kind, costs no replicated entry. The state machine checks again.
        let secret_hash = hash_secret(&token.secret);
        self.reader()
            .check_join_token(&token.id, &secret_hash, now_ms(), req.kind)
            .map_err(|r| NodeError::JoinDenied(JoinDenial::Token(r)))?;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        // Names select a node's interfaces in the shared-IP settings: two
        // members must not share one.
        if membership.nodes().any(|(_, n)| n.name == req.name) {
            return Err(NodeError::JoinDenied(JoinDenial::NameTaken {
                name: req.name.clone(),
            }));
        }
        // Two appliances and one witness at most.
        let same_kind = membership
            .nodes()
            .filter(|(_, n)| n.kind == req.kind)
            .count();
        let room = match req.kind {
            NodeKind::Appliance => 2,
            NodeKind::Witness => 1,
        };
        if same_kind >= room {
            return Err(NodeError::JoinDenied(JoinDenial::TopologyFull {
                kind: req.kind,
            }));
        }
        if let Some(site) = &req.place.site {
            crate::placement::validate_label("site", site).map_err(NodeError::BadRequest)?;
        }
        if let Some(host) = &req.place.host {
            crate::placement::validate_label("host identity", host)
                .map_err(NodeError::BadRequest)?;
        }
        if req.kind == NodeKind::Appliance && !req.allow_same_site {
            if let Some((name, shared)) = self.appliance_sharing_with(&req.place).into_iter().next()
            {
                return Err(NodeError::JoinDenied(JoinDenial::SameSite {
                    name,
                    shared: crate::placement::describe(&shared),
                }));
            }
        }
        let sans = sans_for(&req.peer_addr, &req.api_addr).map_err(NodeError::BadRequest)?;
        if let Some((address, name)) = san_held_by_other(&sans, membership.nodes().map(|(_, n)| n))
        {
            return Err(NodeError::JoinDenied(JoinDenial::AddressTaken {
                address,
                name,
            }));
        }
        // Check the CSR before the token is consumed, so a bad request does not burn it.
        tandem_certs::check_csr(&req.csr_pem)
            .map_err(|e| NodeError::BadRequest(format!("bad CSR: {e}")))?;
        self.disk.check()?;
        let node_id = match self
            .write(Request::JoinTokenUse {
                id: token.id,
                secret_hash,
                now_ms: now_ms(),
                kind: req.kind,
            })
            .await?
        {
            Response::NodeIdAssigned { node_id } => node_id,
            Response::Refused { reason } => {
                return Err(NodeError::JoinDenied(JoinDenial::Token(reason)))
            }
            other => {
                return Err(NodeError::Internal(format!(
                    "unexpected response {other:?}"
                )))
            }
        };
        let cert_pem = ca
            .sign_csr(&req.csr_pem, node_id, &sans)
            .map_err(|e| NodeError::Internal(format!("signing certificate: {e}")))?;
        let info = NodeInfo {
            name: req.name.clone(),
            kind: req.kind,
            peer_addr: req.peer_addr.clone(),
            api_addr: req.api_addr.clone(),
        };
        // The token is spent: adding the learner must now succeed. A
        // membership change already in progress (the previous joiner being
        // promoted) finishes within a few heartbeats, so wait for it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.raft().add_learner(node_id, info.clone(), false).await {
                Ok(_) => break,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(self.not_leader())
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))
                    if attempt < 100 =>
                {
                    tracing::debug!(error = %e, "membership change in progress; retrying add_learner");
                    tokio::time::sleep(MEMBERSHIP_RETRY).await;
                }
                Err(e) => return Err(NodeError::Unavailable(e.to_string())),
            }
        }
        // The next join must see this learner in the membership.
        let _ = self
            .raft()
            .wait(Some(self.timing().primary_timeout))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .get_node(&node_id)
                        .is_some()
                },
                "the joiner in the membership",
            )
            .await;
        tracing::info!(node = node_id, name = %req.name, kind = ?req.kind, "node joined as learner");
        if let Err(e) = self.record_place(node_id, &req.place, &req.actor).await {
            tracing::warn!(node = node_id, error = %e, "the joined node's site and host were not recorded");
        }
        self.record(
            "join",
            &req.actor,
            serde_json::json!({
                "node": node_id, "name": req.name, "kind": kind_name(req.kind),
                "peer_addr": req.peer_addr, "api_addr": req.api_addr,
                "site": req.place.site, "host": req.place.host,
                "allow_same_site": req.allow_same_site,
            }),
        )
        .await;
        Ok(JoinGrant {
            node_id,
            cluster_id: self.cfg.cluster_id.clone(),
            cert_pem,
            ca_pem: self.ca_pem.clone(),
            ca_key_pem: (req.kind == NodeKind::Appliance).then(|| ca.key_pem().to_string()),
        })
    }

    /// On the leader, keeps the membership in the shape of the topology:
    /// with a witness (pair + witness) every caught-up learner becomes a
    /// voter; without one (pair only) only the primary votes and the other
    /// appliance is a learner that receives the log asynchronously.
    /// Level-triggered: whichever node is leader finishes what a previous
    /// leader started.
    pub async fn shape_membership(&self) {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return;
        }
        let me = self.cfg.node_id;
        let Some(last) = m.last_log_index else { return };
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let kind = |id: &u64| membership.get_node(id).map(|n| n.kind);
        let caught_up = |id: &u64| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .is_some_and(|l| l.index + 100 >= last)
        };
        let witness_ready = voters
            .iter()
            .chain(learners.iter().filter(|id| caught_up(id)))
            .any(|id| kind(id) == Some(NodeKind::Witness));
        let promote: BTreeSet<u64> = learners
            .iter()
            .filter(|id| caught_up(id))
            .filter(|id| witness_ready || kind(id) == Some(NodeKind::Witness))
            .copied()
            .collect();
        if !promote.is_empty() {
            match self
                .raft()
                .change_membership(ChangeMembers::AddVoterIds(promote.clone()), true)
                .await
            {
                Ok(_) => tracing::info!(nodes = ?promote, "learners promoted to voters"),
                Err(e) => tracing::debug!(error = %e, "promotion deferred"),
            }
            return;
        }
        // Pair only: demote the other appliance once this node is primary.
        if !witness_ready && self.epoch().primary == Some(me) {
            let demote: BTreeSet<u64> = voters.iter().filter(|id| **id != me).copied().collect();
            if !demote.is_empty() {
                match self
                    .raft()
                    .change_membership(ChangeMembers::RemoveVoters(demote.clone()), true)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(nodes = ?demote, "pair without witness: backup receives the log as a learner")
                    }
                    Err(e) => tracing::debug!(error = %e, "demotion deferred"),
                }
            }
        }
    }

    /// On the leader, removes expired sessions through the log.
    pub async fn sweep_sessions(&self) {
        if !self.raft().is_leader() || !self.reader().has_expired_sessions(now_ms()) {
            return;
        }
        if let Err(e) = self.write(Request::SessionSweep { now_ms: now_ms() }).await {
            tracing::debug!(error = %e, "session sweep deferred");
        }
    }

    /// Per-node progress as the leader sees it (match index), or empty on a follower.
    pub fn replication_progress(&self) -> BTreeMap<u64, Option<u64>> {
        let m = self.metrics();
        m.replication
            .map(|r| {
                r.into_iter()
                    .map(|(id, l)| (id, l.map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes every write durable (shutdown's last step): sled's flush,
    /// its blob files and the `fdatasync`, as every other durable path.
    ///
    /// # Errors
    /// The flush's or the syncs' I/O error.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let flusher = self.engine().flusher.clone();
        tokio::task::spawn_blocking(move || flusher.flush()).await??;
        Ok(())
    }
}

/// The kind of a node from its membership entry, for display.
pub fn kind_name(kind: NodeKind) -> &'static str {
    kind_view(kind).as_str()
}

/// A node kind as the views name it.
pub fn kind_view(kind: NodeKind) -> tandem_web::KindName {
    match kind {
        NodeKind::Appliance => tandem_web::KindName::Appliance,
        NodeKind::Witness => tandem_web::KindName::Witness,
    }
}

/// The peer server's view of this node (`peer::server` declares it).
impl crate::peer::server::PeerHandler for Node {
    fn raft(&self) -> crate::peer::server::PeerRaft {
        Node::raft(self)
    }

    fn saw_epoch(&self, peer: u64, epoch: u64) {
        // Only members speak for the relationship: a removed or
        // broken-away node (or any other holder of a cluster certificate)
        // shows epochs nobody checks.
        if crate::peer::server::PeerHandler::is_member(self, peer) == Some(true) {
            Node::saw_epoch(self, epoch);
        } else if epoch > self.epoch().epoch {
            tracing::debug!(peer, epoch, "epoch shown by a non-member ignored");
        }
    }

    fn leader_contact(&self) {
        self.roles.leader_contact();
    }

    fn votes_held(&self) -> Option<String> {
        self.live.votes_held(std::time::Instant::now()).then(|| {
            "refusing votes for one vote lease after the engine was rebuilt for a new primary timeout".to_string()
        })
    }

    fn is_member(&self, peer: u64) -> Option<bool> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        membership.nodes().next()?;
        Some(membership.get_node(&peer).is_some())
    }

    fn epoch_record(&self) -> tandem_storage::EpochRecord {
        self.epoch()
    }

    async fn digest_at(&self, at_index: u64) -> Result<(u64, String), String> {
        Node::digest_at(self, at_index).await
    }

    async fn peer_action(
        &self,
        action: crate::peer::protocol::ActionRequest,
        from: u64,
    ) -> Result<String, String> {
        Node::peer_action(self, action, from).await
    }
}
