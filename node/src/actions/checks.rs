//! Service checks that move the role (README "Service checks"): the task
//! that runs this node's checks, and the primary's duty that hands the role
//! to a healthy backup when one of its own checks is failing.
//!
//! A move is a planned swap (`swap_to`: nothing acknowledged is lost, the
//! shared IPs follow the role); its history event names the check as the
//! actor (`tandem (check NAME)`). After such a move no check moves the role
//! again for `check_hold_down_secs` (no flapping between two sick nodes).
//! A backup whose checks fail is not eligible: it stands for no election
//! (`Node::apply_eligibility`), and `/health/backup` and readiness say so.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_storage::NodeKind;
use tandem_web::{CheckSpec, HealthView};
use tokio_util::sync::CancellationToken;

use crate::checks::{applicable, run_once, Health};
use crate::client::ApiClient;
use crate::node::Node;
use crate::roles::Role;
use crate::util::{lock, now_ms};

/// How often the checker looks for checks that are due.
const CHECK_TICK: Duration = Duration::from_millis(20);
/// How often a primary with a failing check retries a move it could not
/// make (no healthy backup, hold-down).
const MOVE_RETRY: Duration = Duration::from_secs(1);
/// How long the primary waits for the backup's `/health`.
const PEER_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The actor of a check-driven swap starts with this.
const ACTOR_PREFIX: &str = "tandem (check ";
/// Swap events looked at for the last check-driven one.
const HOLD_DOWN_LOOKBACK: usize = 50;

/// Runs this node's service checks at their intervals until `stop`; each
/// state change is recorded in the history (`check_state`).
pub(crate) async fn run_checks(node: Arc<Node>, stop: CancellationToken) {
    if node.cfg.kind != NodeKind::Appliance {
        return;
    }
    let mut tick = tokio::time::interval(CHECK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next: HashMap<String, Instant> = HashMap::new();
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    // The checks of the settings version last read (parsed only when the
    // settings change, not every tick).
    let mut read: Option<(u64, Vec<(CheckSpec, String)>)> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let version = node.reader().settings().map_or(0, |r| r.version);
        if read.as_ref().is_none_or(|(v, _)| *v != version) {
            let specs = applicable(&node.settings().checks, &node.cfg.name);
            node.checks.keep(&specs);
            next.retain(|name, _| specs.iter().any(|(s, _)| &s.name == name));
            read = Some((version, specs));
        }
        let Some((_, specs)) = &read else { continue };
        let now = Instant::now();
        for (spec, target) in specs.iter().cloned() {
            if next.get(&spec.name).is_some_and(|t| *t > now)
                || !lock(&running).insert(spec.name.clone())
            {
                continue;
            }
            next.insert(
                spec.name.clone(),
                now + Duration::from_millis(spec.interval_ms),
            );
            let (node, running) = (node.clone(), running.clone());
            tokio::spawn(async move {
                let (ok, output) = run_once(&spec, &target).await;
                lock(&running).remove(&spec.name);
                if let Some(health) = node.checks.record(&spec, ok, output.clone(), now_ms()) {
                    tracing::info!(check = %spec.name, state = health.as_str(), %output, "service check changed state");
                    node.record_soon(
                        "check_state",
                        "tandem",
                        json!({ "check": spec.name, "node": node.cfg.node_id,
                                "state": health.as_str(), "target": target, "output": output }),
                    );
                    if health == Health::Failing {
                        // Act now, not at the next tick.
                        node.roles.wake.notify_one();
                    }
                }
            });
        }
    }
}

impl Node {
    /// When the last check-driven move was (ms), from the history.
    fn last_check_move_ms(&self) -> Option<u64> {
        self.reader()
            .history(None, HOLD_DOWN_LOOKBACK, Some("swap"))
            .into_iter()
            .find(|e| e.actor.starts_with(ACTOR_PREFIX))
            .map(|e| e.at_ms)
    }

    /// Why a check-driven move cannot be made now, if it cannot (before
    /// asking the backup).
    pub(crate) fn check_move_blocked(&self) -> Option<String> {
        let hold = self.settings().check_hold_down_secs.saturating_mul(1000);
        let last = self.last_check_move_ms()?;
        let left = (last + hold).saturating_sub(now_ms());
        (left > 0).then(|| {
            format!(
                "a service check moved the role {} s ago; no check moves it again for {} s (check_hold_down_secs)",
                now_ms().saturating_sub(last) / 1000,
                left.div_ceil(1000)
            )
        })
    }

    /// Why the last check-driven move could not be made, while a check
    /// still fails on this primary.
    pub(crate) fn check_blocked(&self) -> Option<String> {
        lock(&self.duties.check_blocked).clone()
    }

    /// The backup's own view of its checks (its `/health`), from that
    /// backup (node `id`'s certificate) only.
    pub(crate) async fn backup_health(
        &self,
        id: u64,
        backup: &tandem_storage::NodeInfo,
    ) -> Result<HealthView, String> {
        let client = ApiClient::new(&backup.api_addr, &self.ca_pem, None)
            .and_then(|c| c.for_node(&backup.api_addr, id))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(PEER_HEALTH_TIMEOUT, client.get::<HealthView>("/health")).await {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} ms",
                PEER_HEALTH_TIMEOUT.as_millis()
            )),
        }
    }
}

/// The primary's duty, from the role manager's tick: while one of its own
/// checks is failing, hand the role to a backup that is healthy, caught up
/// and not in maintenance; otherwise stay and say why (once per reason).
pub(crate) fn tick(node: &Arc<Node>, role: Role) {
    let failing = node.checks.failing();
    if role != Role::Primary || failing.is_empty() {
        *lock(&node.duties.check_blocked) = None;
        return;
    }
    {
        let mut last = lock(&node.duties.check_tried);
        if last.is_some_and(|t| t.elapsed() < MOVE_RETRY) {
            return;
        }
        *last = Some(Instant::now());
    }
    let Some(flight) = node.duties.checks.claim() else {
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        let _flight = flight;
        let (check, output) = failing[0].clone();
        match move_for_check(&node, &check).await {
            Ok(to) => {
                tracing::warn!(%check, %output, to, "service check failing: the role moved to the backup")
            }
            Err(why) => {
                let news = lock(&node.duties.check_blocked).as_deref() != Some(why.as_str());
                if news {
                    tracing::warn!(%check, %output, %why, "service check failing, but this node stays primary");
                    node.record(
                        "check_move_blocked",
                        "tandem",
                        json!({ "check": check, "output": output, "reason": why }),
                    )
                    .await;
                    *lock(&node.duties.check_blocked) = Some(why);
                }
            }
        }
    });
}

async fn move_for_check(node: &Node, check: &str) -> Result<u64, String> {
    if let Some(why) = node.check_move_blocked() {
        return Err(why);
    }
    let (to, info) = node
        .other_appliance()
        .ok_or_else(|| "there is no backup appliance".to_string())?;
    if node.in_maintenance(to) {
        return Err(format!("the backup {} is in maintenance", info.name));
    }
    let health = node
        .backup_health(to, &info)
        .await
        .map_err(|e| format!("the backup {} does not answer: {e}", info.name))?;
    if !health.checks_ok {
        let sick: Vec<String> = health
            .checks
            .iter()
            .filter(|c| c.state == Health::Failing.as_str())
            .map(|c| c.name.clone())
            .collect();
        return Err(format!(
            "the backup {}'s own checks are failing ({})",
            info.name,
            sick.join(", ")
        ));
    }
    let mut actor = format!("{ACTOR_PREFIX}{check})");
    actor.truncate(tandem_storage::MAX_HISTORY_ACTOR_BYTES);
    node.swap_to(to, false, &actor)
        .await
        .map(|o| o.new_primary)
        .map_err(|e| e.message())
}
