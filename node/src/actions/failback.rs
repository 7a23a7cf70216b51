//! Failback (README "Failback"): with `failback: {"preferred": NODE,
//! "delay_secs": N}`, the primary gives the role back to the preferred
//! appliance once it has been eligible — answering, its service checks
//! healthy, out of maintenance, no hold in force, no check hold-down
//! running, this primary's own checks not failing — for `delay_secs` in a
//! row. The move is a planned swap recorded with the actor
//! `tandem (failback)`. With `"off"` (the default) the role stays where it
//! is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_storage::NodeKind;
use tandem_web::Failback;

use crate::node::Node;
use crate::roles::Role;
use crate::util::{lock, now_ms};

/// How often the primary looks at the preferred node's eligibility.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// The actor of a failback swap.
pub(crate) const FAILBACK_ACTOR: &str = "tandem (failback)";

/// The primary's failback duty, from the role manager's tick.
pub(crate) fn tick(node: &Arc<Node>, role: Role) {
    let Failback::Preferred {
        preferred,
        delay_secs,
    } = node.settings().failback
    else {
        *lock(&node.duties.failback_since) = None;
        return;
    };
    if role != Role::Primary || preferred == node.cfg.name {
        *lock(&node.duties.failback_since) = None;
        return;
    }
    {
        let mut last = lock(&node.duties.failback_looked);
        if last.is_some_and(|t| t.elapsed() < LOOK_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    let Some(flight) = node.duties.failback.claim() else {
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        let _flight = flight;
        match eligible(&node, &preferred).await {
            Err(why) => {
                if lock(&node.duties.failback_since).take().is_some() {
                    tracing::info!(%preferred, %why, "failback waits");
                }
            }
            Ok(to) => {
                let since = *lock(&node.duties.failback_since).get_or_insert_with(Instant::now);
                if since.elapsed() < Duration::from_secs(delay_secs) {
                    return;
                }
                match node.swap_to(to, false, FAILBACK_ACTOR).await {
                    Ok(_) => {
                        tracing::info!(%preferred, "failback: the role went back to the preferred node")
                    }
                    Err(e) => {
                        tracing::warn!(%preferred, error = %e, "failback failed; trying again after the delay");
                        *lock(&node.duties.failback_since) = None;
                    }
                }
            }
        }
    });
}

/// The preferred node's id when the role may go back to it now.
async fn eligible(node: &Node, preferred: &str) -> Result<u64, String> {
    let m = node.metrics();
    let (id, info) = m
        .membership_config
        .membership()
        .nodes()
        .find(|(_, n)| n.name == preferred && n.kind == NodeKind::Appliance)
        .map(|(id, n)| (*id, n.clone()))
        .ok_or_else(|| format!("{preferred} is not an appliance of this relationship"))?;
    if !node.checks.failing().is_empty() {
        return Err("a service check of this primary is failing".into());
    }
    let (plan, _) = node.plan();
    if plan.nodes.iter().any(|h| h.until_ms > now_ms()) {
        return Err("a maintenance hold is in force".into());
    }
    if let Some(why) = node.check_move_blocked() {
        return Err(why);
    }
    let reachable = node
        .peer_facts()
        .iter()
        .any(|p| p.id == id && p.reachable == Some(true));
    if !reachable {
        return Err(format!("{preferred} is not reachable"));
    }
    let health = node.backup_health(id, &info).await?;
    if !health.checks_ok {
        return Err(format!("{preferred}'s service checks are failing"));
    }
    Ok(id)
}
