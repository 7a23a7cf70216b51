//! The manager: reconciles "should this node hold the addresses, at which
//! epoch" with what the driver holds, retries failures with backoff, keeps
//! the events for the history, refuses acquisitions after a final release,
//! and starts the reachability check after a takeover.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::SharedIpConfig;
use crate::util::{lock, now_ms};

use super::driver::select::driver_from_config;
use super::driver::{DriverError, SharedIpDriver};
use super::probe::{check_reachability, Reachability};
use super::spec::SharedIpSpec;

/// Events kept for the history until drained.
const MAX_EVENTS: usize = 256;
/// First retry delay after a failure; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay for an acquire.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Longest retry delay for a release (giving up an address is urgent).
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(1);
/// How often the background loop re-queries what is held when nothing changes.
const HELD_REFRESH: Duration = Duration::from_secs(2);
/// Bound on one reachability probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One thing the manager did, for the history and the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedIpEvent {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// `acquire`, `release`, `cleanup` (release at start) or `check`.
    pub action: String,
    /// `address/prefix`.
    pub address: String,
    /// The interface.
    pub interface: String,
    /// The epoch it was done for.
    pub epoch: u64,
    /// Whether it worked.
    pub ok: bool,
    /// The driver's note or error (a script's output).
    pub detail: String,
}

/// What the manager holds and what is wrong, after a reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedIpReport {
    /// The driver.
    pub driver: String,
    /// `address/prefix` present on this node now (as the driver last saw).
    pub held: Vec<String>,
    /// Current failures (acquire/release retried with backoff).
    pub errors: Vec<String>,
    /// The last reachability check after a takeover, if any.
    pub reachability: Option<Reachability>,
}

#[derive(Debug, Clone)]
struct Failure {
    attempts: u32,
    next_try: Instant,
    error: String,
}

#[derive(Default)]
struct State {
    /// What this manager acquired (key → spec, epoch).
    acquired: BTreeMap<String, (SharedIpSpec, u64)>,
    /// Current failures, keyed by `action key`.
    failures: BTreeMap<FailureKey, Failure>,
    /// The specs last asked for.
    desired: Vec<SharedIpSpec>,
    /// The epoch the reachability check was started for.
    checked_epoch: Option<u64>,
    /// The running check.
    check_task: Option<tokio::task::JoinHandle<()>>,
    /// The last `held` answer and when.
    held: Vec<String>,
    held_at: Option<Instant>,
    held_error: Option<String>,
    /// Acquisitions at this epoch or below are refused: set by a final
    /// release (hand-over: its epoch; shutdown: `u64::MAX`).
    floor: Option<u64>,
}

/// Why addresses are given up, and whether that is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The role was lost (demotion, lease loss, fence, break): taken again
    /// only when the role manager asks with a valid lease.
    RoleLost,
    /// Leadership is being handed over: nothing is taken again at this
    /// epoch or below.
    HandOver,
    /// The node is stopping: nothing is taken again in this process.
    Shutdown,
}

/// Reconciles the desired shared IPs with what the driver holds.
pub struct SharedIpManager {
    driver: Arc<dyn SharedIpDriver>,
    check_targets: Vec<String>,
    /// The guard process told of every address before it is taken.
    guard: Option<Arc<crate::shared_ip::guard::GuardLink>>,
    /// Wakes the background loop (the guard released something).
    kick: tokio::sync::Notify,
    /// The last pass skipped acquisitions for a lapsed lease.
    awaiting_lease: std::sync::atomic::AtomicBool,
    state: tokio::sync::Mutex<State>,
    events: Mutex<VecDeque<SharedIpEvent>>,
    reachability: Arc<Mutex<Option<Reachability>>>,
}

fn backoff(attempts: u32, max: Duration) -> Duration {
    RETRY_MIN
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(10))
        .min(max)
}

impl SharedIpManager {
    /// A manager for the driver `cfg` names.
    ///
    /// # Errors
    /// The configuration is incomplete (`script` without a path).
    pub fn from_config(cfg: &SharedIpConfig) -> Result<Self, DriverError> {
        Ok(Self::new(
            driver_from_config(cfg)?,
            cfg.check_targets.clone(),
        ))
    }

    /// A manager for `driver`; `check_targets` are probed from the shared
    /// address after a takeover (empty: the `test_ips` given to reconcile).
    pub fn new(driver: Arc<dyn SharedIpDriver>, check_targets: Vec<String>) -> Self {
        Self {
            driver,
            check_targets,
            guard: None,
            kick: tokio::sync::Notify::new(),
            awaiting_lease: std::sync::atomic::AtomicBool::new(false),
            state: tokio::sync::Mutex::new(State::default()),
            events: Mutex::new(VecDeque::new()),
            reachability: Arc::new(Mutex::new(None)),
        }
    }

    /// Tells `guard` of every address before it is taken and after each
    /// change (see [`crate::ip_guard`]).
    #[must_use]
    pub fn with_guard(mut self, guard: Arc<crate::shared_ip::guard::GuardLink>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Tells the guard (if any) that `extra` and everything acquired may be
    /// on this host now.
    async fn tell_guard(&self, st: &State, extra: &[&SharedIpSpec], epoch: u64) {
        let Some(g) = &self.guard else { return };
        let mut held: Vec<(SharedIpSpec, u64)> = st.acquired.values().cloned().collect();
        for s in extra {
            if !held.iter().any(|(h, _)| h == *s) {
                held.push(((*s).clone(), epoch));
            }
        }
        held.sort();
        let _ = g.tell(held).await;
    }

    /// The guard released `addresses` (the lease ran out without renewal):
    /// they are no longer held; a node that is still primary takes them
    /// again on the next pass, which starts at once.
    pub async fn guard_released(&self, reason: &str, addresses: &[String], errors: &[String]) {
        let mut st = self.state.lock().await;
        let gone: Vec<(String, SharedIpSpec, u64)> = st
            .acquired
            .iter()
            .filter(|(_, (s, _))| addresses.contains(&s.cidr()))
            .map(|(k, (s, e))| (k.clone(), s.clone(), *e))
            .collect();
        for (key, spec, epoch) in gone {
            st.acquired.remove(&key);
            self.record(
                "guard-release",
                &spec,
                epoch,
                &Ok(format!("by the shared-IP guard: {reason}")),
            );
        }
        for e in errors {
            tracing::error!(error = %e, "the shared-IP guard could not release an address");
        }
        st.checked_epoch = None;
        self.refresh_held(&mut st, true).await;
        drop(st);
        self.kick.notify_one();
    }

    /// The driver's name.
    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    /// Takes the events recorded since the last call (oldest first).
    pub fn drain_events(&self) -> Vec<SharedIpEvent> {
        lock(&self.events).drain(..).collect()
    }

    fn record(
        &self,
        action: &str,
        spec: &SharedIpSpec,
        epoch: u64,
        result: &Result<String, DriverError>,
    ) {
        let (ok, detail) = match result {
            Ok(d) => (true, d.clone()),
            Err(e) => (false, e.0.clone()),
        };
        if ok {
            tracing::info!(action, %spec, epoch, detail = %detail, "shared IP");
        } else {
            tracing::warn!(action, %spec, epoch, error = %detail, "shared IP action failed; will retry");
        }
        let mut ev = lock(&self.events);
        if ev.len() >= MAX_EVENTS {
            ev.pop_front();
        }
        ev.push_back(SharedIpEvent {
            at_ms: now_ms(),
            action: action.to_owned(),
            address: spec.cidr(),
            interface: spec.interface.clone(),
            epoch,
            ok,
            detail,
        });
    }

    /// One pass: when `should_hold`, acquires every spec of `specs` not yet
    /// acquired at `epoch` and releases acquired ones no longer in `specs`;
    /// otherwise releases everything acquired. Failed actions are retried on
    /// later passes with backoff (acquire up to 10 s apart, release up to 1 s).
    /// After all specs are acquired at a new epoch, starts the reachability
    /// check (in the background; its result appears in later reports).
    ///
    /// `test_ips` are the replicated test addresses, used for the check when
    /// `[shared_ip] check_targets` is empty.
    pub async fn reconcile(
        &self,
        should_hold: bool,
        epoch: u64,
        specs: &[SharedIpSpec],
        test_ips: &[String],
    ) -> SharedIpReport {
        let mut st = self.state.lock().await;
        st.desired = specs.to_vec();
        self.awaiting_lease
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // A final release stands: a wish to hold at its epoch (a role tick
        // that raced with the release) is a wish to hold nothing.
        let should_hold = should_hold && st.floor.is_none_or(|f| epoch > f);
        let mut changed = false;
        let wanted: BTreeSet<String> = if should_hold {
            specs.iter().map(SharedIpSpec::key).collect()
        } else {
            BTreeSet::new()
        };
        // Release first: what must go goes before anything else happens.
        let extra: Vec<(String, SharedIpSpec, u64)> = st
            .acquired
            .iter()
            .filter(|(k, _)| !wanted.contains(*k))
            .map(|(k, (s, e))| (k.clone(), s.clone(), *e))
            .collect();
        if !should_hold {
            if let Some(t) = st.check_task.take() {
                t.abort();
            }
            st.checked_epoch = None;
        }
        for (key, spec, held_epoch) in extra {
            let fkey = FailureKey::release(&key);
            if st
                .failures
                .get(&fkey)
                .is_some_and(|f| Instant::now() < f.next_try)
            {
                continue;
            }
            let r = self.driver.release(&spec, epoch.max(held_epoch)).await;
            self.record("release", &spec, epoch.max(held_epoch), &r);
            changed = true;
            match r {
                Ok(_) => {
                    st.acquired.remove(&key);
                    st.failures.remove(&fkey);
                }
                Err(e) => fail(&mut st.failures, fkey, e, RELEASE_RETRY_MAX),
            }
        }
        if !should_hold {
            // Failures of acquisitions no longer wanted are moot.
            st.failures.retain(|k, _| k.op == Op::Release);
        } else {
            st.failures.retain(|k, _| match k.op {
                Op::Acquire => wanted.contains(k.key.as_str()),
                Op::Release => !wanted.contains(k.key.as_str()),
            });
            // Nothing is taken on a lapsed lease (a pause, or a stale wish
            // of the role manager): the next renewal retries.
            let lapsed = self.guard.as_ref().is_some_and(|g| !g.lease_valid());
            self.awaiting_lease
                .store(lapsed, std::sync::atomic::Ordering::Relaxed);
            let due: Vec<&SharedIpSpec> = specs
                .iter()
                .filter(|_| !lapsed)
                .filter(|spec| {
                    let key = spec.key();
                    st.acquired.get(&key).is_none_or(|(_, e)| *e != epoch)
                        && st
                            .failures
                            .get(&FailureKey::acquire(&key))
                            .is_none_or(|f| Instant::now() >= f.next_try)
                })
                .collect();
            // The guard hears of an address before it is on this host.
            if !due.is_empty() {
                self.tell_guard(&st, &due, epoch).await;
            }
            for spec in due {
                let key = spec.key();
                let fkey = FailureKey::acquire(&key);
                let r = self.driver.acquire(spec, epoch).await;
                self.record("acquire", spec, epoch, &r);
                changed = true;
                match r {
                    Ok(_) => {
                        st.acquired.insert(key, (spec.clone(), epoch));
                        st.failures.remove(&fkey);
                    }
                    Err(e) => fail(&mut st.failures, fkey, e, RETRY_MAX),
                }
            }
            let all = !specs.is_empty() && specs.iter().all(|s| st.acquired.contains_key(&s.key()));
            if all && st.checked_epoch != Some(epoch) {
                st.checked_epoch = Some(epoch);
                let targets = if self.check_targets.is_empty() {
                    test_ips.to_vec()
                } else {
                    self.check_targets.clone()
                };
                if let Some(t) = st.check_task.take() {
                    t.abort();
                }
                st.check_task = self.start_check(epoch, specs, &targets);
            }
        }
        if changed {
            self.tell_guard(&st, &[], epoch).await;
        }
        self.refresh_held(&mut st, changed).await;
        self.report_of(&st)
    }

    async fn refresh_held(&self, st: &mut State, force: bool) {
        if !force && st.held_at.is_some_and(|t| t.elapsed() < HELD_REFRESH) {
            return;
        }
        let mut query: Vec<SharedIpSpec> = st.desired.clone();
        for (s, _) in st.acquired.values() {
            if !query.contains(s) {
                query.push(s.clone());
            }
        }
        match self.driver.held(&query).await {
            Ok(h) => {
                st.held = h;
                st.held_error = None;
            }
            Err(e) => {
                // Fall back to what we believe we hold.
                st.held = st.acquired.values().map(|(s, _)| s.cidr()).collect();
                st.held_error = Some(format!("querying held addresses: {e}"));
            }
        }
        st.held.sort();
        st.held.dedup();
        st.held_at = Some(Instant::now());
    }

    fn report_of(&self, st: &State) -> SharedIpReport {
        let mut errors: Vec<String> = st
            .failures
            .iter()
            .map(|(k, f)| format!("{k}: {} (attempt {})", f.error, f.attempts))
            .collect();
        errors.extend(st.held_error.clone());
        errors.extend(self.guard.as_ref().and_then(|g| g.error()));
        SharedIpReport {
            driver: self.driver.name().to_owned(),
            held: st.held.clone(),
            errors,
            reachability: lock(&self.reachability).clone(),
        }
    }

    fn start_check(
        &self,
        epoch: u64,
        specs: &[SharedIpSpec],
        targets: &[String],
    ) -> Option<tokio::task::JoinHandle<()>> {
        if targets.is_empty() {
            return None;
        }
        let slot = self.reachability.clone();
        let specs = specs.to_vec();
        let targets = targets.to_vec();
        Some(tokio::spawn(async move {
            let mut last = None;
            for t in &targets {
                let fam_v4 = t
                    .parse::<SocketAddr>()
                    .map(|s| s.is_ipv4())
                    .or_else(|_| t.parse::<IpAddr>().map(|i| i.is_ipv4()));
                let Ok(v4) = fam_v4 else { continue };
                let Some(from) = specs.iter().find(|s| s.address.is_ipv4() == v4) else {
                    continue;
                };
                let r = check_reachability(from.address, t, CHECK_TIMEOUT).await;
                let res = Reachability {
                    epoch,
                    from: from.address.to_string(),
                    target: t.clone(),
                    ok: r.is_ok(),
                    detail: match &r {
                        Ok(d) => format!("answered in {} ms", d.as_millis()),
                        Err(e) => e.clone(),
                    },
                    at_ms: now_ms(),
                };
                if res.ok {
                    tracing::info!(target = %t, from = %from.address, "gateway answers from the shared address");
                } else {
                    tracing::warn!(target = %t, from = %from.address, error = %res.detail, "gateway does not answer from the shared address");
                }
                let ok = res.ok;
                last = Some(res);
                if ok {
                    break;
                }
            }
            if last.is_some() {
                *lock(&slot) = last;
            }
        }))
    }

    /// Releases everything this manager acquired and every desired spec the
    /// driver reports held (demotion, lease loss, break, shutdown). Each
    /// release is tried once now, whatever the backoff; failures stay in the
    /// report and are retried by later passes with `should_hold = false`.
    ///
    /// With [`Release::HandOver`] or [`Release::Shutdown`] the release is
    /// final: later acquisitions at `epoch` or below (shutdown: any epoch)
    /// are refused.
    pub async fn release_all(&self, epoch: u64, why: Release) -> SharedIpReport {
        let mut st = self.state.lock().await;
        let floor = match why {
            Release::RoleLost => None,
            Release::HandOver => Some(epoch),
            Release::Shutdown => Some(u64::MAX),
        };
        if floor.is_some() {
            st.floor = st.floor.max(floor);
        }
        if let Some(t) = st.check_task.take() {
            t.abort();
        }
        st.checked_epoch = None;
        let mut todo: Vec<(SharedIpSpec, u64)> = st.acquired.values().cloned().collect();
        let desired = st.desired.clone();
        if let Ok(h) = self.driver.held(&desired).await {
            for s in desired.into_iter().filter(|s| h.contains(&s.cidr())) {
                if !todo.iter().any(|(t, _)| *t == s) {
                    todo.push((s, epoch));
                }
            }
        }
        for (spec, e) in todo {
            let key = spec.key();
            let r = self.driver.release(&spec, epoch.max(e)).await;
            self.record("release", &spec, epoch.max(e), &r);
            let fkey = FailureKey::release(&key);
            match r {
                Ok(_) => {
                    st.acquired.remove(&key);
                    st.failures.remove(&fkey);
                }
                Err(err) => {
                    // Keep it tracked so later passes retry.
                    st.acquired.entry(key).or_insert((spec, e));
                    fail(&mut st.failures, fkey, err, RELEASE_RETRY_MAX);
                }
            }
        }
        st.failures.retain(|k, _| k.op == Op::Release);
        self.tell_guard(&st, &[], epoch).await;
        self.refresh_held(&mut st, true).await;
        self.report_of(&st)
    }

    /// At start, on a node that is not primary: removes any of `specs` found
    /// on this node (left by a crash or a kill -9 of a former primary).
    pub async fn startup_cleanup(&self, specs: &[SharedIpSpec]) -> SharedIpReport {
        let mut st = self.state.lock().await;
        st.desired = specs.to_vec();
        match self.driver.held(specs).await {
            Ok(h) => {
                for spec in specs.iter().filter(|s| h.contains(&s.cidr())) {
                    let r = self.driver.release(spec, 0).await;
                    self.record("cleanup", spec, 0, &r);
                    if let Err(e) = r {
                        st.acquired.insert(spec.key(), (spec.clone(), 0));
                        fail(
                            &mut st.failures,
                            FailureKey::release(&spec.key()),
                            e,
                            RELEASE_RETRY_MAX,
                        );
                    }
                }
            }
            Err(e) => st.held_error = Some(format!("querying held addresses at start: {e}")),
        }
        self.tell_guard(&st, &[], 0).await;
        self.refresh_held(&mut st, true).await;
        self.report_of(&st)
    }

    /// Runs the manager in the background until `stop`; see [`SharedIpHandle`].
    /// On `stop` it releases everything (shutdown). Spawn the returned future
    /// on the node's task tracker.
    pub fn start(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> (SharedIpHandle, impl Future<Output = ()> + Send + 'static) {
        let (desired_tx, mut desired_rx) = watch::channel(Desired::default());
        let (report_tx, _) = watch::channel(SharedIpReport {
            driver: self.driver.name().to_owned(),
            ..SharedIpReport::default()
        });
        let report_tx = Arc::new(report_tx);
        let handle = SharedIpHandle {
            manager: self.clone(),
            desired: Arc::new(desired_tx),
            report: report_tx.clone(),
        };
        let mgr = self;
        let task = async move {
            let mut wait = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = desired_rx.changed() => if r.is_err() { break },
                    () = mgr.kick.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                let d = desired_rx.borrow_and_update().clone();
                if !d.started {
                    wait = HELD_REFRESH;
                    continue;
                }
                let report = mgr
                    .reconcile(d.should_hold, d.epoch, &d.specs, &d.test_ips)
                    .await;
                wait = if report.errors.is_empty()
                    && !mgr
                        .awaiting_lease
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    HELD_REFRESH
                } else {
                    RETRY_MIN
                };
                report_tx.send_replace(report);
            }
            let epoch = desired_rx.borrow().epoch;
            let report = mgr.release_all(epoch, Release::Shutdown).await;
            report_tx.send_replace(report);
        };
        (handle, task)
    }
}

/// What a failure was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Acquire,
    Release,
}

/// A failed acquisition or release of one address (by its spec key),
/// retried with backoff; shown as `acquire <key>` / `release <key>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FailureKey {
    op: Op,
    key: String,
}

impl FailureKey {
    fn acquire(key: &str) -> Self {
        Self {
            op: Op::Acquire,
            key: key.to_owned(),
        }
    }

    fn release(key: &str) -> Self {
        Self {
            op: Op::Release,
            key: key.to_owned(),
        }
    }
}

impl std::fmt::Display for FailureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            Op::Acquire => "acquire",
            Op::Release => "release",
        };
        write!(f, "{op} {}", self.key)
    }
}

fn fail(
    failures: &mut BTreeMap<FailureKey, Failure>,
    key: FailureKey,
    e: DriverError,
    max: Duration,
) {
    let attempts = failures.get(&key).map_or(0, |f| f.attempts) + 1;
    failures.insert(
        key,
        Failure {
            attempts,
            next_try: Instant::now() + backoff(attempts, max),
            error: e.0,
        },
    );
}

/// What the role manager wants (sent through [`SharedIpHandle::set_desired`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Desired {
    started: bool,
    should_hold: bool,
    epoch: u64,
    specs: Vec<SharedIpSpec>,
    test_ips: Vec<String>,
}

/// The role manager's side of a running [`SharedIpManager`].
#[derive(Clone)]
pub struct SharedIpHandle {
    manager: Arc<SharedIpManager>,
    desired: Arc<watch::Sender<Desired>>,
    /// Shared with the loop: `release_all` publishes its report at once, so
    /// status never shows an address as held after it was released.
    report: Arc<watch::Sender<SharedIpReport>>,
}

impl SharedIpHandle {
    /// Tells the manager what this node should hold; cheap, never waits (call
    /// it on every role tick). The background loop acts only on changes and
    /// on retries.
    pub fn set_desired(
        &self,
        should_hold: bool,
        epoch: u64,
        specs: Vec<SharedIpSpec>,
        test_ips: Vec<String>,
    ) {
        let d = Desired {
            started: true,
            should_hold,
            epoch,
            specs,
            test_ips,
        };
        self.desired.send_if_modified(|cur| {
            if *cur == d {
                false
            } else {
                *cur = d;
                true
            }
        });
    }

    /// Stops holding (the background loop will not re-acquire until
    /// `set_desired(true, …)`) and releases everything now, waiting for the
    /// driver. Use on demotion, lease loss and break.
    pub async fn release_all(&self) -> SharedIpReport {
        self.release(Release::RoleLost).await
    }

    /// [`Self::release_all`] before leadership is handed over: final for the
    /// current epoch. If the hand-over is abandoned while this node still
    /// leads, [`Self::abandon_hand_over`] lifts it.
    pub async fn release_for_hand_over(&self) -> SharedIpReport {
        self.release(Release::HandOver).await
    }

    /// [`Self::release_all`] at shutdown: final for this process.
    pub async fn release_for_shutdown(&self) -> SharedIpReport {
        self.release(Release::Shutdown).await
    }

    /// A planned swap failed before leadership moved: the addresses may be
    /// taken again at the current epoch (the role manager asks on its next
    /// tick, as it does for any primary). Does nothing after a shutdown
    /// release.
    pub async fn abandon_hand_over(&self) {
        let mut st = self.manager.state.lock().await;
        if st.floor != Some(u64::MAX) {
            st.floor = None;
        }
        drop(st);
        self.manager.kick.notify_one();
    }

    async fn release(&self, why: Release) -> SharedIpReport {
        let mut epoch = 0;
        self.desired.send_if_modified(|cur| {
            epoch = cur.epoch;
            let was = cur.should_hold;
            cur.should_hold = false;
            was
        });
        let report = self.manager.release_all(epoch, why).await;
        self.report.send_replace(report.clone());
        report
    }

    /// This primary's lease runs `valid_for` from now: the guard process
    /// releases the addresses if no renewal follows by then (the daemon is
    /// paused or stuck). Never waits; call it on every role tick while
    /// primary.
    pub fn renew_lease(&self, valid_for: Duration) {
        if let Some(g) = &self.manager.guard {
            g.renew(valid_for);
        }
    }

    /// Removes stale addresses at start (call once before the first
    /// `set_desired`, when this node is not primary).
    pub async fn startup_cleanup(&self, specs: &[SharedIpSpec]) -> SharedIpReport {
        self.manager.startup_cleanup(specs).await
    }

    /// The latest report (for status: `held` → `shared_ips_held`).
    pub fn report(&self) -> SharedIpReport {
        self.report.borrow().clone()
    }

    /// Events since the last call, for the history.
    pub fn drain_events(&self) -> Vec<SharedIpEvent> {
        self.manager.drain_events()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_ip::driver::none::NoneDriver;
    use crate::shared_ip::driver::BoxFuture;

    fn spec(a: &str) -> SharedIpSpec {
        SharedIpSpec::parse(a, "eth0").expect("valid spec")
    }

    /// A driver whose acquire fails the first `fail_first` times.
    struct Flaky {
        inner: NoneDriver,
        fail_first: Mutex<u32>,
    }
    impl SharedIpDriver for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn acquire<'a>(
            &'a self,
            spec: &'a SharedIpSpec,
            epoch: u64,
        ) -> BoxFuture<'a, Result<String, DriverError>> {
            Box::pin(async move {
                {
                    let mut n = lock(&self.fail_first);
                    if *n > 0 {
                        *n -= 1;
                        return Err(DriverError::new("simulated failure"));
                    }
                }
                self.inner.acquire(spec, epoch).await
            })
        }
        fn release<'a>(
            &'a self,
            spec: &'a SharedIpSpec,
            epoch: u64,
        ) -> BoxFuture<'a, Result<String, DriverError>> {
            self.inner.release(spec, epoch)
        }
        fn held<'a>(
            &'a self,
            specs: &'a [SharedIpSpec],
        ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
            self.inner.held(specs)
        }
    }

    #[tokio::test]
    async fn manager_acquires_releases_and_retries() {
        let m = SharedIpManager::new(
            Arc::new(Flaky {
                inner: NoneDriver::default(),
                fail_first: Mutex::new(1),
            }),
            vec![],
        );
        let specs = vec![spec("192.0.2.10/24"), spec("2001:db8::10/64")];
        let r = m.reconcile(true, 3, &specs, &[]).await;
        assert_eq!(r.held, vec!["2001:db8::10/64".to_owned()]);
        assert_eq!(r.errors.len(), 1, "{r:?}");
        // Within the backoff: not retried yet.
        let r = m.reconcile(true, 3, &specs, &[]).await;
        assert_eq!(r.errors.len(), 1);
        tokio::time::sleep(RETRY_MIN + Duration::from_millis(50)).await;
        let r = m.reconcile(true, 3, &specs, &[]).await;
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.held.len(), 2);
        // Settings drop one address: it is released.
        let r = m.reconcile(true, 3, &specs[1..], &[]).await;
        assert_eq!(r.held, vec!["2001:db8::10/64".to_owned()]);
        let r = m.reconcile(false, 4, &specs, &[]).await;
        assert!(r.held.is_empty());
        let ev = m.drain_events();
        let actions: Vec<(&str, bool)> = ev.iter().map(|e| (e.action.as_str(), e.ok)).collect();
        assert_eq!(
            actions,
            vec![
                ("acquire", false),
                ("acquire", true),
                ("acquire", true),
                ("release", true),
                ("release", true)
            ]
        );
    }

    #[tokio::test]
    async fn background_loop_follows_desired_state_and_releases_on_stop() {
        let m = Arc::new(SharedIpManager::new(
            Arc::new(NoneDriver::default()),
            vec![],
        ));
        let stop = CancellationToken::new();
        let (h, task) = m.start(stop.clone());
        let task = tokio::spawn(task);
        let specs = vec![spec("192.0.2.10/24")];
        assert!(h.startup_cleanup(&specs).await.held.is_empty());
        h.set_desired(true, 2, specs.clone(), vec![]);
        let mut held = Vec::new();
        for _ in 0..100 {
            held = h.report().held;
            if !held.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(held, vec!["192.0.2.10/24".to_owned()]);
        // Demotion: release_all waits for the driver and the loop does not re-acquire.
        assert!(h.release_all().await.held.is_empty());
        h.set_desired(true, 3, specs.clone(), vec![]);
        for _ in 0..100 {
            if !h.report().held.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!h.report().held.is_empty());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("loop ends")
            .expect("loop task");
        assert!(h.report().held.is_empty(), "released on stop");
        let actions: Vec<String> = h.drain_events().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["acquire", "release", "acquire", "release"]);
    }

    /// Polls the handle's report until `held` is what it says (bounded).
    async fn held_becomes(h: &SharedIpHandle, want: bool) -> bool {
        for _ in 0..100 {
            if h.report().held.is_empty() != want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// DESIGN rule 6: a wish to hold that races with a hand-over or
    /// shutdown release (a role tick that computed "primary" just before)
    /// takes nothing back; only a newer epoch does, and after a shutdown
    /// release nothing does.
    #[tokio::test]
    async fn a_final_release_is_final() {
        let m = Arc::new(SharedIpManager::new(
            Arc::new(NoneDriver::default()),
            vec![],
        ));
        let stop = CancellationToken::new();
        let (h, task) = m.clone().start(stop.clone());
        let task = tokio::spawn(task);
        let specs = vec![spec("192.0.2.10/24")];
        h.set_desired(true, 4, specs.clone(), vec![]);
        assert!(held_becomes(&h, true).await);

        assert!(h.release_for_hand_over().await.held.is_empty());
        h.set_desired(true, 4, specs.clone(), vec![]);
        let r = m.reconcile(true, 4, &specs, &[]).await;
        assert!(r.held.is_empty(), "taken back at the hand-over's epoch");
        assert!(!held_becomes(&h, true).await, "the loop took it back");
        // A failed swap lifts it; the same epoch may be held again.
        h.abandon_hand_over().await;
        assert!(held_becomes(&h, true).await);
        // Released for a hand-over again, then primary under a newer epoch.
        assert!(h.release_for_hand_over().await.held.is_empty());
        h.set_desired(true, 5, specs.clone(), vec![]);
        assert!(held_becomes(&h, true).await);

        assert!(h.release_for_shutdown().await.held.is_empty());
        for epoch in [5, 6, u64::MAX - 1] {
            h.set_desired(true, epoch, specs.clone(), vec![]);
            assert!(m.reconcile(true, epoch, &specs, &[]).await.held.is_empty());
        }
        h.abandon_hand_over().await;
        assert!(
            !held_becomes(&h, true).await,
            "taken after a shutdown release"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("loop ends")
            .expect("loop task");
        let acquired: Vec<u64> = h
            .drain_events()
            .into_iter()
            .filter(|e| e.action == "acquire")
            .map(|e| e.epoch)
            .collect();
        assert_eq!(acquired, [4, 4, 5]);
    }
}
