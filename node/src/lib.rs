//! The Tandem daemon: the only crate that wires everything together.
//!
//! It owns configuration, the mutual-TLS peer transport, the Raft instance,
//! the implementation of the admin API's backend, shutdown, and the `tandem`
//! command line. It must not contain storage-format or HTTP-routing logic:
//! those live in `tandem-storage` and `tandem-web`.
//!
//! Modules, by room. Public (for the binary and the tests crate) are only
//! [`cli`], [`client`], [`config`], [`log_limit`] and [`shared_ip`], plus the
//! re-exports [`demo`], [`frame`], [`protocol`] and [`ip_guard`]; every other
//! module is `pub(crate)`.
//! - `node`: a running node: storage, certificates, the Raft instance, the
//!   write path, joins. The hub the rooms below extend with `impl Node`.
//! - `roles`: the role rules (`role_of`, a pure function), the write gate,
//!   the role manager and the replicated history.
//! - `actions`: swap, sync/verify, forced promotion/break/rejoin, failover
//!   duties, set-up from the page.
//! - `peer`: the mutual-TLS peer transport: frames, protocol, client,
//!   server behind a `PeerHandler`, bandwidth limit, reachability, fence
//!   notices. [`frame`] and [`protocol`] are re-exported for the tests that
//!   speak the wire.
//! - [`shared_ip`]: the shared addresses: spec, drivers, announcements,
//!   manager and the guard process ([`ip_guard`]).
//! - `api`: the `AdminBackend` the web crate serves, its views and the one
//!   `NodeError` → `ApiError` mapping.
//! - [`cli`] (with [`demo`]): the commands; [`client`]: the admin API client
//!   the commands use.
//! - Leaves: [`config`] (`node.toml`, the data directory), `settings`,
//!   `errors` (typed refusals), `probe` (the one reachability probe),
//!   `bootstrap` (`init`, `join`), `join` (join request, grant, token text,
//!   names and SANs), `maintenance` (the maintenance plan and its pure
//!   rules), `checks` (running one service check; each check's dampened
//!   state), `users`, `disk` (free-space reserve),
//!   `admin_tls`, `handshakes` (the low-priority thread the admin listener's
//!   TLS handshakes run on), `supervise` (essential tasks), [`log_limit`],
//!   `util`.
//! - `fuzzing` (hidden): entry points of the fuzz targets in `fuzz/` and of
//!   the corpus regression test; not an API.
//!
//! `ARCHITECTURE.md` says what each room must not touch.

pub(crate) mod actions;
pub(crate) mod admin_runtime;
pub(crate) mod admin_tls;
pub(crate) mod api;
pub(crate) mod bootstrap;
pub(crate) mod cert_files;
pub(crate) mod checks;
pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod disk;
pub(crate) mod errors;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod handshakes;
pub(crate) mod join;
pub(crate) mod live_timing;
pub mod log_limit;
pub(crate) mod maintenance;
pub(crate) mod node;
pub(crate) mod peer;
pub(crate) mod placement;
pub(crate) mod probe;
pub(crate) mod roles;
pub(crate) mod settings;
pub mod shared_ip;
pub(crate) mod supervise;
pub(crate) mod users;
pub(crate) mod util;

pub use cli::demo;
pub use peer::{frame, protocol};
pub use shared_ip::guard as ip_guard;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DataDir;
use crate::handshakes::HandshakeThread;
use crate::node::Node;
use crate::peer::server::{serve_peers, PeerServer};

/// How long a restart in place waits for the old node's parts to let go.
const RESTART_RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How often a restart in place looks whether the old node let go.
const RESTART_RELEASE_POLL: Duration = Duration::from_millis(20);
/// How often the leader looks for learners to promote.
const PROMOTE_EVERY: Duration = Duration::from_millis(300);
/// How often the leader sweeps expired sessions.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping leader waits for the hand-over to show.
const HAND_OVER_WAIT: Duration = Duration::from_secs(3);

/// Each shutdown step is bounded by this.
const SHUTDOWN_STEP: Duration = Duration::from_secs(5);

/// Flags of `run` that override `node.toml` for this run.
#[derive(Debug, Clone, Default)]
pub struct RunOverrides {
    /// Peer listener bind address.
    pub peer_listen: Option<SocketAddr>,
    /// Admin listener bind address.
    pub api_listen: Option<SocketAddr>,
    /// Administrator-provided certificate for the admin listener (replaces
    /// `[admin_tls]` of `node.toml`).
    pub admin_tls: Option<config::AdminTlsConfig>,
}

impl RunOverrides {
    /// `cfg` with the overrides given.
    fn apply(self, mut cfg: config::NodeConfig) -> config::NodeConfig {
        if let Some(a) = self.peer_listen {
            cfg.peer_listen = a;
        }
        if let Some(a) = self.api_listen {
            cfg.api_listen = a;
        }
        if let Some(t) = self.admin_tls {
            cfg.admin_tls = Some(t);
        }
        cfg
    }
}

/// Runs the node in `dir` until `shutdown` is cancelled, then stops it in
/// order: admin listener, leadership hand-over, peer listener, Raft, sled.
/// When the node asks to restart in place (a join set up from the web UI
/// changed its identity, see `actions::setup`), it is stopped in the same order,
/// the join is applied to the directory, and it starts again in this
/// process.
///
/// # Errors
/// The directory is missing, locked or unreadable, a listener cannot bind,
/// or a critical task died.
pub async fn run(
    dir: PathBuf,
    overrides: RunOverrides,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dir = DataDir::new(dir);
    let _lock = dir.lock()?;
    loop {
        // A join set up from the web UI (or one a crash interrupted) is
        // applied before anything is opened.
        apply_pending_join(&dir).await?;
        let Some(old) = run_once(&dir, overrides.clone(), &shutdown).await? else {
            return Ok(());
        };
        // Restart in place: everything the old node owned must be gone
        // before its store is replaced (tasks still holding it finish
        // within moments once Raft has stopped).
        let deadline = tokio::time::Instant::now() + RESTART_RELEASE_WAIT;
        while old.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(RESTART_RELEASE_POLL).await;
        }
        if old.strong_count() > 0 {
            tracing::warn!("parts of the old node are still alive; restarting anyway");
        }
        if !tandem_storage::wait_store_released(&dir.db(), RESTART_RELEASE_WAIT).await {
            anyhow::bail!(
                "the old store was not released; start `tandem run` again to finish the join"
            );
        }
        if shutdown.is_cancelled() {
            apply_pending_join(&dir).await?;
            return Ok(());
        }
        tracing::info!("restarting in place with the new identity");
    }
}

/// [`actions::setup::apply_pending_join`] on the blocking pool (it fsyncs).
async fn apply_pending_join(dir: &DataDir) -> anyhow::Result<()> {
    let dir = dir.clone();
    tokio::task::spawn_blocking(move || actions::setup::apply_pending_join(&dir))
        .await?
        .context("applying the pending join")?;
    Ok(())
}

/// One life of the node: runs until `shutdown` (returns `None`) or until
/// the node asks to restart in place (returns the old node, to wait for its
/// last references to go).
async fn run_once(
    dir: &DataDir,
    overrides: RunOverrides,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<std::sync::Weak<Node>>> {
    let dir = dir.clone();
    let cfg = overrides.apply(dir.load()?);
    let peer_listener = TcpListener::bind(cfg.peer_listen)
        .await
        .with_context(|| format!("binding the peer listener on {}", cfg.peer_listen))?;
    let api_listener = TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", cfg.api_listen))?;

    // A renewal a crash interrupted is finished before any file is read.
    cert_files::finish_staged(&dir).context("finishing a certificate renewal")?;
    let cert_pem = std::fs::read_to_string(dir.node_cert()).context("reading node.pem")?;
    let key_pem = std::fs::read_to_string(dir.node_key()).context("reading node.key")?;
    let ca_pem = std::fs::read_to_string(dir.ca_cert()).context("reading ca.pem")?;
    // The admin certificate is checked before storage is opened, so a bad
    // one stops the node at once with one line saying why.
    let admin_certs =
        tandem_certs::AdminCerts::new(&tandem_certs::chain_pem(&cert_pem, &ca_pem), &key_pem)?;
    let admin_tls_paths = cfg.admin_tls.as_ref().map(|t| admin_tls::resolve(&dir, t));
    if let Some(paths) = &admin_tls_paths {
        admin_tls::install(&admin_certs, paths)?;
    }
    let admin_tls = admin_certs.server_config()?;
    let node = Arc::new(Node::open(dir.clone(), cfg.clone()).await?);
    node.resume_pending_reset().await?;
    let peer_tls = node.certs.peer_server_config()?;
    let _ = node.admin_certs.set(admin_certs.clone());

    // The admin listener's TLS handshakes run on this thread, below the
    // runtime's priority; it ends when this life of the node does.
    let handshakes = HandshakeThread::start().context("starting the TLS handshake thread")?;
    let tasks = TaskTracker::new();
    let peer_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let background_stop = CancellationToken::new();
    // A critical task that ends on its own stops the node loudly.
    let failed = CancellationToken::new();

    let peer_server = Arc::new(PeerServer {
        me: node.identity.clone(),
        handler: node.clone(),
        snapshot_dir: node.snapshot_dir.join("incoming"),
    });
    let peer_task = tasks.spawn({
        let (stop, tasks2, failed) = (peer_stop.clone(), tasks.clone(), failed.clone());
        async move {
            serve_peers(peer_listener, peer_tls, peer_server, stop.clone(), tasks2).await;
            if !stop.is_cancelled() {
                tracing::error!("peer listener stopped unexpectedly");
                failed.cancel();
            }
        }
    });
    let backend = Arc::new(api::Backend::new(node.clone()));
    // The admin listener runs apart (admin_runtime).
    let admin_rt = admin_runtime::AdminRuntime::new().context("starting the admin runtime")?;
    let admin_task = admin_rt.handle().spawn({
        let (stop, failed, handshakes) = (admin_stop.clone(), failed.clone(), handshakes.handle());
        async move {
            let app = tandem_web::router(backend);
            let r = tandem_web::serve_tls(
                api_listener,
                admin_tls,
                app,
                stop.clone(),
                admin_conn_limits(),
                handshakes,
            )
            .await;
            if !stop.is_cancelled() {
                tracing::error!(result = ?r, "admin listener stopped unexpectedly");
                failed.cancel();
            }
        }
    });
    start_shared_ips(&node, &cfg, &tasks, &background_stop).await?;
    tasks.spawn(essential(
        &node,
        "leader duties",
        &background_stop,
        background(node.clone(), background_stop.clone()),
    ));
    tasks.spawn(actions::certs::renew_when_due(
        node.clone(),
        background_stop.clone(),
    ));
    tasks.spawn(actions::checks::run_checks(
        node.clone(),
        background_stop.clone(),
    ));
    tasks.spawn(essential(
        &node,
        "role manager",
        &background_stop,
        roles::manage_roles(node.clone(), background_stop.clone()),
    ));
    if let Some(paths) = admin_tls_paths {
        tasks.spawn(admin_tls::reload_on_sighup(
            admin_certs,
            paths,
            background_stop.clone(),
        ));
    }

    tracing::info!(
        node = cfg.node_id,
        name = %cfg.name,
        peer = %cfg.peer_listen,
        api = %cfg.api_advertise,
        "node running"
    );
    tokio::select! {
        _ = shutdown.cancelled() => tracing::info!("shutting down"),
        _ = failed.cancelled() => tracing::error!("a critical task died; shutting down"),
        _ = node.restart.cancelled() => tracing::info!("stopping to restart in place"),
    }

    Stopping {
        admin_stop,
        admin_task,
        background_stop,
        peer_stop,
        peer_task,
        tasks,
    }
    .stop_in_order(&node)
    .await;
    node.flush().await.context("flushing storage")?;
    tracing::info!("stopped");
    if failed.is_cancelled() && !shutdown.is_cancelled() {
        anyhow::bail!("a critical task died");
    }
    Ok(node.restart.is_cancelled().then(|| Arc::downgrade(&node)))
}

/// Descriptors kept for everything but the admin listener's connections:
/// the peer listener's connections, log segments, sled, snapshots, the
/// runtime, children.
const FD_RESERVE: u64 = 1024 + peer::admit::PEER_CONNS_TOTAL as u64;
/// The fewest admin connections kept, however low the open-files limit.
const MIN_ADMIN_CONNS: u64 = 64;

/// The admin listener's [`tandem_web::ConnLimits`]: the defaults, fewer
/// when the open-files limit (raised by `main` to its hard limit) leaves
/// less than [`FD_RESERVE`] beside them, so a flood of admin connections
/// never takes the descriptors Raft and storage need.
fn admin_conn_limits() -> tandem_web::ConnLimits {
    let d = tandem_web::ConnLimits::default();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return d;
    }
    let room = lim.rlim_cur.saturating_sub(FD_RESERVE).max(MIN_ADMIN_CONNS);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if room < d.total {
        tracing::warn!(
            open_files = lim.rlim_cur,
            admin_connections = room,
            "the open-files limit is low: the admin listener keeps fewer connections"
        );
    }
    tandem_web::ConnLimits {
        total: d.total.min(room),
        per_address: d.per_address.min(room),
        ..d
    }
}

/// Starts the shared-IP manager (with its guard process when a driver is
/// configured) and removes any configured shared address found on this
/// host's interfaces: a node that starts is not primary yet.
async fn start_shared_ips(
    node: &Arc<Node>,
    cfg: &config::NodeConfig,
    tasks: &TaskTracker,
    background_stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut ip_manager =
        shared_ip::SharedIpManager::from_config(&cfg.shared_ip).context("shared-IP driver")?;
    // The guard process releases them if this process dies or stalls while
    // holding them (kill -9, SIGSTOP): see `ip_guard`.
    let mut guard_reports = None;
    if cfg.shared_ip.driver != config::SharedIpDriverKind::None {
        let (link, rx) = ip_guard::GuardLink::new(cfg.shared_ip.clone(), "/proc/self/exe");
        link.start(background_stop.clone()).await;
        ip_manager = ip_manager.with_guard(link);
        guard_reports = Some(rx);
    }
    let ip_manager = Arc::new(ip_manager);
    if let Some(mut rx) = guard_reports {
        let (mgr, stop) = (ip_manager.clone(), background_stop.clone());
        tokio::spawn(async move {
            loop {
                let report = tokio::select! {
                    () = stop.cancelled() => return,
                    r = rx.recv() => r,
                };
                let Some(ip_guard::FromGuard::Released {
                    reason,
                    addresses,
                    errors,
                }) = report
                else {
                    return;
                };
                mgr.guard_released(&reason, &addresses, &errors).await;
            }
        });
    }
    let (ip_handle, ip_task) = ip_manager.start(background_stop.clone());
    tasks.spawn(essential(
        node,
        "shared-IP manager",
        background_stop,
        ip_task,
    ));
    let specs = shared_ip::specs_for_node(&node.settings().shared_ips, &cfg.name).0;
    ip_handle.startup_cleanup(&specs).await;
    let _ = node.shared_ips.set(ip_handle);
    Ok(())
}

/// What `run_once` stops, in order, when the node stops.
struct Stopping {
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
    background_stop: CancellationToken,
    peer_stop: CancellationToken,
    peer_task: tokio::task::JoinHandle<()>,
    tasks: TaskTracker,
}

impl Stopping {
    /// Stops the listeners, releases the shared IPs, hands leadership over
    /// and stops Raft, each step bounded by [`SHUTDOWN_STEP`].
    async fn stop_in_order(self, node: &Arc<Node>) {
        let Stopping {
            admin_stop,
            admin_task,
            background_stop,
            peer_stop,
            peer_task,
            tasks,
        } = self;
        // 1. Stop the admin listener: no new requests.
        admin_stop.cancel();
        if tokio::time::timeout(SHUTDOWN_STEP, admin_task)
            .await
            .is_err()
        {
            tracing::warn!("admin listener did not stop in time");
        }
        // 2. Release the shared IPs, then hand leadership over so the cluster
        //    does not wait for an election timeout. The release is final: the
        //    role manager still runs until the hand-over, and its ticks cannot
        //    take the addresses back (DESIGN rule 6).
        if let Some(h) = node.shared_ips.get() {
            if tokio::time::timeout(SHUTDOWN_STEP, h.release_for_shutdown())
                .await
                .is_err()
            {
                tracing::warn!("releasing shared IPs timed out");
            }
        }
        background_stop.cancel();
        if tokio::time::timeout(SHUTDOWN_STEP, hand_over(node))
            .await
            .is_err()
        {
            tracing::warn!("leadership hand-over timed out");
        }
        // 3. Close the peer listener and its connections.
        peer_stop.cancel();
        tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_STEP, peer_task).await;
        if tokio::time::timeout(SHUTDOWN_STEP, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("peer connections did not close in time");
        }
        // 4. Stop Raft, 5. flush sled.
        match tokio::time::timeout(SHUTDOWN_STEP, node.raft().shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
            Err(_) => tracing::warn!("raft shutdown timed out"),
        }
    }
}

/// Runs an essential task (see [`supervise`]): if it ends or panics while
/// the node is not stopping, the node stops leading for good and says so.
/// `TANDEM_TEST_FAULT` can make it panic (a test hook, see
/// [`supervise::injected_fault`]).
fn essential(
    node: &Arc<Node>,
    name: &'static str,
    stop: &CancellationToken,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (node, stop) = (node.clone(), stop.clone());
    async move {
        let hook = name.replace(' ', "-");
        let task = async move {
            tokio::select! {
                () = task => {}
                () = supervise::injected_fault(&hook) => {}
            }
        };
        supervise::essential(name, stop, task, |name, why| {
            node.essential_task_died(name, why);
        })
        .await;
    }
}

/// Periodic leader duties: promote caught-up learners, sweep expired sessions.
async fn background(node: Arc<Node>, stop: CancellationToken) {
    let mut promote = tokio::time::interval(PROMOTE_EVERY);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    promote.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = promote.tick() => node.shape_membership().await,
            _ = sweep.tick() => node.sweep_sessions().await,
        }
    }
}

/// If this node leads, transfers leadership to an up-to-date voter and waits
/// (bounded by the caller) until another node leads.
pub(crate) async fn hand_over(node: &Node) {
    let m = node.metrics();
    if m.current_leader != Some(node.cfg.node_id) {
        return;
    }
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let progress = node.replication_progress();
    let best = voters
        .iter()
        .filter(|id| **id != node.cfg.node_id)
        .filter(|id| {
            m.membership_config
                .get_node(id)
                .is_some_and(|n| n.kind == tandem_storage::NodeKind::Appliance)
        })
        .max_by_key(|id| progress.get(id).copied().flatten());
    let Some(&target) = best else { return };
    tracing::info!(to = target, "handing leadership over before shutdown");
    if node.raft().trigger().transfer_leader(target).await.is_err() {
        return;
    }
    let _ = node
        .raft()
        .wait(Some(HAND_OVER_WAIT))
        .metrics(
            |m| m.current_leader != Some(node.cfg.node_id),
            "leadership moved",
        )
        .await;
}
