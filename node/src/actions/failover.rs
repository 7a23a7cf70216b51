//! Periodic relationship duties beyond role bookkeeping: automatic failover
//! in the pair-only topology (guarded by connectivity test IPs), scheduled
//! verification, and removing the witness from a live pair.

use std::time::{Duration, Instant};

use serde_json::json;
use tandem_storage::NodeKind;
use tandem_web::BreakOutcome;

use crate::errors::Refusal;
use crate::node::{Node, NodeError};
use crate::roles::Role;
use crate::settings::Settings;

/// The shortest wait for a test address's answer.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// At most one "cut off" line per this period.
const CUT_OFF_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether at least one connectivity test address answers ([`crate::probe`]:
/// `host:port` by TCP connect, where a refusal is an answer too; bare
/// addresses by one ICMP echo). With no test addresses configured, the
/// answer is `false`: a backup that cannot tell "the primary is down" from
/// "I am cut off" must not promote itself.
pub async fn connectivity_ok(test_ips: &[String], timeout: Duration) -> bool {
    let probes = test_ips
        .iter()
        .map(|t| crate::probe::answers(None, t, timeout));
    futures::future::join_all(probes)
        .await
        .into_iter()
        .any(|r| r.is_ok())
}

/// Runs the duties once (called from the role manager's tick); each duty
/// runs in the background and at most one at a time.
pub(crate) fn tick(node: &std::sync::Arc<Node>, role: Role) {
    if node.duties.busy.held() {
        return;
    }
    let settings = node.settings();
    let now = Instant::now();
    let due_failover = role == Role::Backup && failover_due(node, &settings, now);
    let due_verify = role == Role::Primary && verify_due(node, &settings, now);
    if !due_failover && !due_verify {
        return;
    }
    let Some(flight) = node.duties.busy.claim() else {
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        // Released when the duty ends, also when it panics.
        let _flight = flight;
        if due_failover {
            automatic_failover(&node, &settings).await;
        } else if let Err(e) = node.sync(true, "tandem (scheduled verify)").await {
            tracing::warn!(error = %e, "scheduled verify failed");
        }
    });
}

fn failover_due(node: &Node, settings: &Settings, now: Instant) -> bool {
    if !settings.auto_failover || node.cfg.kind != NodeKind::Appliance {
        return false;
    }
    // Pair only: with a witness, failover happens by election. The backup
    // is then a learner following a primary that is someone else.
    let m = node.metrics();
    let me = node.cfg.node_id;
    let membership = m.membership_config.membership();
    if membership.nodes().any(|(_, n)| n.kind == NodeKind::Witness)
        || membership.voter_ids().any(|v| v == me)
        || m.current_leader == Some(me)
        || node.epoch().primary.is_none_or(|p| p == me)
        || node.roles.fence.notice().is_some()
        || node.in_maintenance(me)
    {
        return false;
    }
    let mut t = node.duties.times();
    let started = *t.started.get_or_insert(now);
    let silent = match node.roles.since_leader_contact() {
        Some(d) => d > node.timing().primary_timeout,
        // Never heard from the primary since start: wait a few timeouts
        // before calling it dead.
        None => now.duration_since(started) > node.timing().primary_timeout * 3,
    };
    if !silent {
        return false;
    }
    if t.last_failover_attempt
        .is_some_and(|a| now.duration_since(a) < node.timing().primary_timeout)
    {
        return false;
    }
    t.last_failover_attempt = Some(now);
    true
}

fn verify_due(node: &Node, settings: &Settings, now: Instant) -> bool {
    if settings.verify_interval_secs == 0 {
        return false;
    }
    let mut t = node.duties.times();
    let last = *t.last_verify.get_or_insert(now);
    if now.duration_since(last) < Duration::from_secs(settings.verify_interval_secs) {
        return false;
    }
    t.last_verify = Some(now);
    true
}

async fn automatic_failover(node: &Node, settings: &Settings) {
    let probe_timeout = (node.timing().primary_timeout / 2).max(MIN_PROBE_TIMEOUT);
    if !connectivity_ok(&settings.test_ips, probe_timeout).await {
        let mut t = node.duties.times();
        if t.last_cutoff_log
            .is_none_or(|l| l.elapsed() > CUT_OFF_LOG_EVERY)
        {
            t.last_cutoff_log = Some(Instant::now());
            tracing::warn!(
                test_ips = ?settings.test_ips,
                "primary silent but no connectivity test address answers: this node may be cut off; not promoting"
            );
        }
        return;
    }
    tracing::warn!(
        "primary silent beyond the primary timeout and the network answers: automatic failover"
    );
    match node.forced_swap("tandem (automatic failover)").await {
        Ok(o) => tracing::warn!(
            epoch = o.epoch,
            "automatic failover done: this node is primary"
        ),
        Err(e) => tracing::error!(error = %e, "automatic failover failed"),
    }
}

impl Node {
    /// Removes the witness from a live pair (pair + witness → pair only).
    /// The backup then receives the log asynchronously as a learner.
    ///
    /// # Errors
    /// [`NodeError::Refused`] when there is no witness or this node is not
    /// the primary.
    pub async fn remove_witness(&self, actor: &str) -> Result<BreakOutcome, NodeError> {
        if self.compute_role().0 != Role::Primary {
            return Err(NodeError::Refused(Refusal::RemoveWitnessOnPrimary));
        }
        let m = self.metrics();
        let witnesses: Vec<(u64, String)> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(_, n)| n.kind == NodeKind::Witness)
            .map(|(id, n)| (*id, n.peer_addr.clone()))
            .collect();
        if witnesses.is_empty() {
            return Err(NodeError::Refused(Refusal::NoWitness));
        }
        let ids: std::collections::BTreeSet<u64> = witnesses.iter().map(|(id, _)| *id).collect();
        self.record("witness_removed", actor, json!({ "witnesses": ids }))
            .await;
        self.raft()
            .change_membership(openraft::ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
            .map_err(|e| NodeError::Unavailable(format!("removing the witness: {e}")))?;
        self.notify_removed(&witnesses, actor).await;
        tracing::info!(witnesses = ?ids, "witness removed: pair-only topology");
        Ok(BreakOutcome {
            former_peers: ids.into_iter().collect(),
            role: Role::Primary.into(),
        })
    }
}
