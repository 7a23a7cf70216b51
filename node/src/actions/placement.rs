//! The primary keeps its own site and host identity current in the
//! replicated placement record: `init` and `join` record them, and an
//! administrator who later edits `site` or `host_id` in `node.toml` sees
//! the change once that node is primary (or standalone) after a restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;

use crate::node::Node;
use crate::roles::Role;

/// Who the duty's writes name.
const ACTOR: &str = "tandem (node.toml)";

/// The placement duty, from the role manager's tick: once per process,
/// on the primary.
pub(crate) fn tick(node: &Arc<Node>, role: Role) {
    if !matches!(role, Role::Primary | Role::Standalone)
        || node.duties.place_current.load(Ordering::SeqCst)
    {
        return;
    }
    let Some(flight) = node.duties.place.claim() else {
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        let _flight = flight;
        let me = node.cfg.node_id;
        let recorded = node.places().get(me).cloned();
        if recorded.as_ref() == Some(&node.place) {
            node.duties.place_current.store(true, Ordering::SeqCst);
            return;
        }
        match node.record_place(me, &node.place, ACTOR).await {
            Ok(()) => {
                node.duties.place_current.store(true, Ordering::SeqCst);
                tracing::info!(site = ?node.place.site, host = ?node.place.host, "site and host identity recorded");
                node.record(
                    "placement",
                    ACTOR,
                    json!({ "node": me, "site": node.place.site, "host": node.place.host,
                            "was": recorded }),
                )
                .await;
            }
            Err(e) => tracing::debug!(error = %e, "site and host identity not recorded yet"),
        }
    });
}
