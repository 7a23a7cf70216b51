//! Placement as `Node` sees it: each member's place (its own from its
//! configuration, the others' from the replicated record), what the join
//! and the status warnings compare, and the record's writes. The primary
//! also keeps its own site and host identity current in the
//! replicated placement record: `init` and `join` record them, and an
//! administrator who later edits `site` or `host_id` in `node.toml` sees
//! the change once that node is primary (or standalone) after a restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;
use tandem_storage::{NodeInfo, NodeKind, Request, Response};

use crate::node::{Node, NodeError};
use crate::placement::{Place, Places, Shared};
use crate::roles::Role;
use crate::util::now_ms;

/// Who the duty's writes name.
const ACTOR: &str = "tandem (node.toml)";
/// Writes of the placement record retried after a concurrent writer.
const PLACE_WRITE_TRIES: usize = 3;

impl Node {
    /// The replicated placement record (each node's site and host).
    pub fn places(&self) -> Places {
        Places::from_json(
            self.reader()
                .places()
                .as_ref()
                .map_or("{}", |r| r.settings_json.as_str()),
        )
    }

    /// `id`'s place: this node's from its configuration, another's from
    /// the replicated record.
    pub fn place_of(&self, id: u64) -> Option<Place> {
        if id == self.cfg.node_id {
            Some(self.place.clone())
        } else {
            self.places().get(id).cloned()
        }
    }

    /// The appliances of the membership (other than a joiner) that share a
    /// site or host with `place`, by name, and what they share.
    pub fn appliance_sharing_with(&self, place: &Place) -> Vec<(String, Vec<Shared>)> {
        let m = self.metrics();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(_, n)| n.kind == NodeKind::Appliance)
            .filter_map(|(id, n)| {
                let shared = self.place_of(*id)?.shared_with(place);
                (!shared.is_empty()).then(|| (n.name.clone(), shared))
            })
            .collect()
    }

    /// What the administrator should be warned of about where the members
    /// run: two appliances sharing a site or host, a witness on an
    /// appliance's host.
    pub fn placement_warnings(&self) -> Vec<String> {
        let m = self.metrics();
        let members: Vec<(u64, NodeInfo)> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let mut out = Vec::new();
        for (i, (a, na)) in members.iter().enumerate() {
            for (b, nb) in &members[i + 1..] {
                let (Some(pa), Some(pb)) = (self.place_of(*a), self.place_of(*b)) else {
                    continue;
                };
                let shared = pa.shared_with(&pb);
                match (na.kind, nb.kind) {
                    (NodeKind::Appliance, NodeKind::Appliance) if !shared.is_empty() => {
                        out.push(format!(
                            "appliances {} and {} share {}: one failure there takes both",
                            na.name,
                            nb.name,
                            crate::placement::describe(&shared)
                        ));
                    }
                    (NodeKind::Appliance, NodeKind::Witness)
                    | (NodeKind::Witness, NodeKind::Appliance) => {
                        if let Some(h) = shared.iter().find(|s| matches!(s, Shared::Host(_))) {
                            let (app, wit) = if na.kind == NodeKind::Witness {
                                (&nb.name, &na.name)
                            } else {
                                (&na.name, &nb.name)
                            };
                            out.push(format!(
                                "witness {wit} runs on the same {h} as appliance {app}: losing that host loses two votes"
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Writes `id`'s place into the replicated record (on the leader),
    /// re-reading it after a concurrent writer.
    pub async fn record_place(&self, id: u64, place: &Place, actor: &str) -> Result<(), NodeError> {
        for _ in 0..PLACE_WRITE_TRIES {
            let rec = self.reader().places();
            let version = rec.as_ref().map_or(0, |r| r.version);
            let mut places =
                Places::from_json(rec.as_ref().map_or("{}", |r| r.settings_json.as_str()));
            if places.get(id) == Some(place) {
                return Ok(());
            }
            places.0.insert(id, place.clone());
            match self
                .write(Request::PlacesPut {
                    doc_json: places.to_json(),
                    if_version: Some(version),
                    actor: actor.to_string(),
                    at_ms: now_ms(),
                })
                .await?
            {
                Response::PlacesWritten { .. } => return Ok(()),
                Response::Refused {
                    reason: tandem_storage::Refusal::VersionConflict { .. },
                } => continue,
                Response::Refused { reason } => return Err(NodeError::Rejected(reason)),
                other => {
                    return Err(NodeError::Internal(format!(
                        "unexpected response {other:?}"
                    )))
                }
            }
        }
        Err(NodeError::Unavailable(
            "the placement record kept changing; try again".into(),
        ))
    }
}

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
