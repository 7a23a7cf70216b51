//! Maintenance mode and windows (README "Maintenance"): holding an
//! appliance out of service, the role moving away from it first, and the
//! primary's duty that runs the plan's times (reminders, starts, ends, the
//! role's return at a window's end).
//!
//! The plan is replicated ([`crate::maintenance::Plan`] in one
//! compare-and-set document), so every change is a write on the leader.
//! Each node keeps its own elections off while it is held
//! ([`Node::apply_eligibility`], from the role manager's tick); the
//! witness's hand-over, the pair-only failover and every swap look the
//! plan up before making a node primary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_storage::{NodeKind, Request, Response};
use tandem_web::{
    HoldView, MaintenanceOutcome, MaintenanceStart, MaintenanceView, WindowRequest, WindowView,
};

use crate::errors::{Refusal, StateRefusal};
use crate::maintenance::{Due, Hold, Plan};
use crate::node::{Node, NodeError};
use crate::roles::Role;
use crate::util::now_ms;

/// Who the duty's writes name.
const DUTY_ACTOR: &str = "tandem (maintenance)";
/// How often the primary retries moving the role away from itself while it
/// is held and could not move it.
const MOVE_RETRY: Duration = Duration::from_secs(5);
/// Writes of the plan retried after a version conflict (another writer).
const PLAN_WRITE_TRIES: usize = 3;

impl Node {
    /// The replicated maintenance plan and its version (0: never written).
    pub(crate) fn plan(&self) -> (Plan, u64) {
        let rec = self.reader().maintenance();
        let version = rec.as_ref().map_or(0, |r| r.version);
        (
            Plan::parse(rec.as_ref().map(|r| r.settings_json.as_str())),
            version,
        )
    }

    /// Whether `node` is in maintenance now.
    pub(crate) fn in_maintenance(&self, node: u64) -> bool {
        self.plan().0.holds(node, now_ms())
    }

    /// The API view of the plan, names from the membership.
    pub(crate) fn maintenance_view(&self) -> MaintenanceView {
        let (plan, _) = self.plan();
        let now = now_ms();
        let name = |id: u64| self.member_name(id);
        let mut windows: Vec<WindowView> = plan
            .windows
            .iter()
            .map(|w| WindowView {
                id: w.id,
                node: name(w.node),
                node_id: w.node,
                reason: w.reason.clone(),
                by: w.by.clone(),
                start_ms: w.start_ms,
                end_ms: w.end_ms,
            })
            .collect();
        windows.sort_by_key(|w| (w.start_ms, w.id));
        MaintenanceView {
            nodes: plan
                .nodes
                .iter()
                .filter(|h| h.until_ms > now)
                .map(|h| hold_view(h, name(h.node)))
                .collect(),
            windows,
        }
    }

    pub(crate) fn member_name(&self, id: u64) -> String {
        self.metrics()
            .membership_config
            .get_node(&id)
            .map_or_else(|| format!("node {id}"), |n| n.name.clone())
    }

    /// The appliance a request names (by name, or id in decimal).
    fn maintained_appliance(&self, node: &str) -> Result<u64, NodeError> {
        let m = self.metrics();
        let found = m
            .membership_config
            .membership()
            .nodes()
            .find(|(id, n)| n.name == node || id.to_string() == node)
            .map(|(id, n)| (*id, n.kind));
        match found {
            None => Err(NodeError::NotFound(format!(
                "no node {node:?} in this relationship"
            ))),
            Some((_, NodeKind::Witness)) => Err(NodeError::BadRequest(format!(
                "{node} is the witness: it is never primary, so it has no maintenance mode"
            ))),
            Some((id, NodeKind::Appliance)) => Ok(id),
        }
    }

    fn appliance_ids(&self) -> Vec<u64> {
        let m = self.metrics();
        let ids = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(_, n)| n.kind == NodeKind::Appliance)
            .map(|(id, _)| *id)
            .collect();
        ids
    }

    /// Maintenance changes are writes: refuse early (pointing at the
    /// leader) on a node that cannot make them, before anything is decided
    /// from a plan that may be stale.
    fn plan_writer(&self) -> Result<(), NodeError> {
        let m = self.metrics();
        if m.current_leader == Some(self.cfg.node_id) {
            Ok(())
        } else {
            Err(NodeError::NotLeader {
                leader_api: self.leader_api(),
            })
        }
    }

    /// Writes `plan` over `version`, with history events, all or nothing.
    async fn put_plan(
        &self,
        plan: &Plan,
        version: u64,
        actor: &str,
        events: Vec<(&str, serde_json::Value)>,
    ) -> Result<(), NodeError> {
        let at_ms = now_ms();
        let mut cmds = vec![Request::MaintenancePut {
            doc_json: plan.to_json(),
            if_version: Some(version),
            actor: actor.to_string(),
            at_ms,
        }];
        for (kind, details) in events {
            cmds.push(Request::HistoryAppend {
                at_ms,
                node: self.cfg.node_id,
                kind: kind.to_string(),
                actor: actor.to_string(),
                details_json: details.to_string(),
            });
        }
        match self.write(Request::Multi(cmds)).await? {
            Response::Multi(_) => Ok(()),
            Response::Refused { reason } => Err(NodeError::Rejected(reason)),
            other => Err(NodeError::Internal(format!(
                "unexpected maintenance answer {other:?}"
            ))),
        }
    }

    /// `POST /api/v1/maintenance`: holds an appliance out of service now.
    /// On the primary's own hold the role moves to the backup first (a
    /// planned swap); if it cannot, nothing changes unless `force`, and then
    /// the node stays primary, held, until the role can move.
    ///
    /// # Errors
    /// See [`tandem_web::AdminBackend::maintenance_start`].
    pub(crate) async fn maintenance_start(
        &self,
        req: MaintenanceStart,
        actor: &str,
    ) -> Result<MaintenanceOutcome, NodeError> {
        self.plan_writer()?;
        let node = self.maintained_appliance(&req.node)?;
        let settings = self.settings();
        let secs = req
            .seconds
            .or(req.minutes.map(|m| m.saturating_mul(60)))
            .unwrap_or(0);
        if secs > settings.maintenance_max_minutes.saturating_mul(60) {
            return Err(NodeError::BadRequest(format!(
                "maintenance may last at most {} minutes (setting maintenance_max_minutes)",
                settings.maintenance_max_minutes
            )));
        }
        let now = now_ms();
        let until_ms = now.saturating_add(secs.saturating_mul(1000));
        let (mut plan, version) = self.plan();
        plan.check(node, now, until_ms, &self.appliance_ids(), now)
            .map_err(|c| NodeError::Refused(Refusal::MaintenanceConflict(c.to_string())))?;
        let is_primary = self.epoch().primary == Some(node);
        let hold = Hold {
            node,
            reason: req.reason.clone(),
            by: actor.to_string(),
            since_ms: now,
            until_ms,
            window: None,
            moved_role: is_primary,
        };
        plan.put_hold(hold.clone());
        let details = json!({ "node": node, "reason": req.reason, "until_ms": until_ms,
                              "force": req.force });
        // This request moves the role itself: the duty that moves it away
        // from a held primary waits its retry time, not to race it.
        if is_primary {
            *crate::util::lock(&self.duties.maintenance_moved) = Some(Instant::now());
        }
        self.put_plan(&plan, version, actor, vec![("maintenance_start", details)])
            .await?;
        if !is_primary {
            return Ok(self.outcome(None, None));
        }
        match self.move_role_away(node, actor).await {
            Ok(to) => Ok(self.outcome(Some(to), None)),
            Err(e) if req.force => Ok(self.outcome(
                None,
                Some(format!(
                    "{} stays primary while in maintenance: the role could not move ({}); \
                     it moves as soon as the backup can take over",
                    self.member_name(node),
                    e.message()
                )),
            )),
            // The role left this node all the same (a peer took it
            // meanwhile): the hold stands and the move is done.
            Err(_) if self.epoch().primary.is_some_and(|p| p != node) => {
                Ok(self.outcome(self.epoch().primary, None))
            }
            Err(e) => {
                // Nothing changes: take the hold back.
                let (mut plan, version) = self.plan();
                if plan.end_hold(node).is_some() {
                    let details = json!({ "node": node, "reason": "the role could not move" });
                    if let Err(undo) = self
                        .put_plan(&plan, version, actor, vec![("maintenance_end", details)])
                        .await
                    {
                        tracing::error!(error = %undo, "could not take back a maintenance hold");
                    }
                }
                Err(NodeError::Refused(Refusal::CannotMoveRole {
                    node: self.member_name(node),
                    why: e.message(),
                }))
            }
        }
    }

    /// Moves the role from this node (the held primary) to the other
    /// appliance; returns where it went.
    async fn move_role_away(&self, held: u64, actor: &str) -> Result<u64, NodeError> {
        if held != self.cfg.node_id {
            return Err(NodeError::NotLeader {
                leader_api: self.primary_api(),
            });
        }
        let (to, _) = self
            .other_appliance()
            .ok_or(NodeError::Refused(Refusal::NoBackup))?;
        self.swap_to(to, false, actor).await.map(|o| o.new_primary)
    }

    fn outcome(&self, moved_to: Option<u64>, note: Option<String>) -> MaintenanceOutcome {
        MaintenanceOutcome {
            moved_to,
            note,
            maintenance: self.maintenance_view(),
        }
    }

    /// `DELETE /api/v1/maintenance/{node}`: ends a hold now.
    ///
    /// # Errors
    /// See [`tandem_web::AdminBackend::maintenance_end`].
    pub(crate) async fn maintenance_end(
        &self,
        node: &str,
        actor: &str,
    ) -> Result<MaintenanceOutcome, NodeError> {
        self.plan_writer()?;
        let id = self.maintained_appliance(node)?;
        let (mut plan, version) = self.plan();
        if !plan.holds(id, now_ms()) {
            return Err(NodeError::NotFound(format!("{node} is not in maintenance")));
        }
        let hold = plan.end_hold(id);
        let details = json!({ "node": id, "reason": format!("ended by {actor}") });
        self.put_plan(&plan, version, actor, vec![("maintenance_end", details)])
            .await?;
        let moved = match hold {
            Some(h) => self.give_role_back(&h, actor).await,
            None => None,
        };
        Ok(self.outcome(moved, None))
    }

    /// `POST /api/v1/maintenance/windows`.
    ///
    /// # Errors
    /// See [`tandem_web::AdminBackend::window_schedule`].
    pub(crate) async fn window_schedule(
        &self,
        req: WindowRequest,
        actor: &str,
    ) -> Result<MaintenanceView, NodeError> {
        self.plan_writer()?;
        let node = self.maintained_appliance(&req.node)?;
        let now = now_ms();
        if req.start_ms <= now {
            return Err(NodeError::BadRequest(format!(
                "start_ms {} is not in the future (now is {now}); start maintenance now with \
                 POST /api/v1/maintenance",
                req.start_ms
            )));
        }
        let max = self.settings().maintenance_max_minutes;
        if req.end_ms - req.start_ms > max.saturating_mul(60_000) {
            return Err(NodeError::BadRequest(format!(
                "a window may last at most {max} minutes (setting maintenance_max_minutes)"
            )));
        }
        let (mut plan, version) = self.plan();
        plan.check(node, req.start_ms, req.end_ms, &self.appliance_ids(), now)
            .map_err(|c| NodeError::Refused(Refusal::MaintenanceConflict(c.to_string())))?;
        let id = plan
            .schedule(node, &req.reason, actor, req.start_ms, req.end_ms)
            .map_err(|c| NodeError::Refused(Refusal::MaintenanceConflict(c.to_string())))?;
        let details = json!({ "node": node, "window": id, "reason": req.reason,
                              "start_ms": req.start_ms, "end_ms": req.end_ms });
        self.put_plan(
            &plan,
            version,
            actor,
            vec![("maintenance_scheduled", details)],
        )
        .await?;
        Ok(self.maintenance_view())
    }

    /// `DELETE /api/v1/maintenance/windows/{id}`.
    ///
    /// # Errors
    /// See [`tandem_web::AdminBackend::window_cancel`].
    pub(crate) async fn window_cancel(
        &self,
        id: u64,
        actor: &str,
    ) -> Result<MaintenanceView, NodeError> {
        self.plan_writer()?;
        let (mut plan, version) = self.plan();
        let w = plan.take_window(id).ok_or_else(|| {
            NodeError::NotFound(format!("no maintenance window {id} is scheduled"))
        })?;
        let details = json!({ "node": w.node, "window": id, "reason": w.reason });
        self.put_plan(
            &plan,
            version,
            actor,
            vec![("maintenance_cancelled", details)],
        )
        .await?;
        Ok(self.maintenance_view())
    }

    /// Keeps this node's own elections off while it may not become primary
    /// by itself — held for maintenance, a service check failing, stood
    /// down, or a backup where failover is manual — and on otherwise,
    /// unless an essential task died. From the role manager's tick.
    pub(crate) fn apply_eligibility(&self) {
        if self.cfg.kind != NodeKind::Appliance {
            return;
        }
        let held = self.in_maintenance(self.cfg.node_id);
        let sick = !self.checks.failing().is_empty();
        let stood_down = self
            .roles
            .stood_down
            .load(std::sync::atomic::Ordering::SeqCst);
        let manual = self.manual_failover() && self.epoch().primary != Some(self.cfg.node_id);
        let elect = !held && !sick && !stood_down && !manual && !self.supervision.any();
        let mut last = crate::util::lock(&self.duties.maintenance_elect);
        if *last != Some(elect) {
            if held {
                tracing::info!("in maintenance: this node stands for no election");
            } else if sick {
                tracing::info!("a service check is failing: this node stands for no election");
            } else if manual {
                tracing::info!("automatic failover is off: this backup stands for no election");
            } else if last.is_some() {
                tracing::info!("in service again: this node may become primary");
            }
            self.raft().runtime_config().elect(elect);
            *last = Some(elect);
        }
    }

    /// Failover is manual: a witness votes, and `auto_failover` is off.
    pub(crate) fn manual_failover(&self) -> bool {
        !self.settings().auto_failover
            && self
                .metrics()
                .membership_config
                .membership()
                .nodes()
                .any(|(_, n)| n.kind == NodeKind::Witness)
    }

    /// After a window's hold that moved the role away ended: gives the role
    /// back to the node (a planned swap), when this node is the primary and
    /// the node can take it. Returns where the role went.
    async fn give_role_back(&self, hold: &Hold, actor: &str) -> Option<u64> {
        if hold.window.is_none() || !hold.moved_role || hold.node == self.cfg.node_id {
            return None;
        }
        if self.epoch().primary != Some(self.cfg.node_id) {
            return None;
        }
        match self.swap_to(hold.node, false, actor).await {
            Ok(o) => Some(o.new_primary),
            Err(e) => {
                tracing::warn!(node = hold.node, error = %e, "could not give the role back after a maintenance window");
                self.record(
                    "maintenance_return_failed",
                    actor,
                    json!({ "node": hold.node, "window": hold.window, "error": e.message() }),
                )
                .await;
                None
            }
        }
    }
}

fn hold_view(h: &Hold, node: String) -> HoldView {
    HoldView {
        node,
        node_id: h.node,
        reason: h.reason.clone(),
        until_ms: h.until_ms,
        by: h.by.clone(),
        since_ms: h.since_ms,
        window: h.window,
    }
}

/// The primary's maintenance duty, from the role manager's tick: runs the
/// plan's due changes and moves the role away from itself while held. At
/// most one run at a time, in the background.
pub(crate) fn tick(node: &Arc<Node>, role: Role) {
    if role != Role::Primary {
        return;
    }
    let (plan, _) = node.plan();
    let now = now_ms();
    let reminder_ms = node
        .settings()
        .maintenance_reminder_secs
        .saturating_mul(1000);
    let due = plan.due(now, reminder_ms);
    let me = node.cfg.node_id;
    let move_due = plan.holds(me, now) && {
        let mut last = crate::util::lock(&node.duties.maintenance_moved);
        let due = last.is_none_or(|t| t.elapsed() >= MOVE_RETRY);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    if due.is_empty() && !move_due {
        return;
    }
    let Some(flight) = node.duties.maintenance.claim() else {
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        let _flight = flight;
        for d in due {
            if let Err(e) = run_due(&node, d, reminder_ms).await {
                tracing::warn!(error = %e, due = ?d, "maintenance duty");
            }
        }
        if move_due {
            match node.move_role_away(me, DUTY_ACTOR).await {
                Ok(to) => tracing::info!(to, "in maintenance: the role moved away from this node"),
                Err(e) => tracing::warn!(error = %e, "in maintenance but the role cannot move yet"),
            }
        }
    });
}

/// Makes one due change, re-reading the plan for each try.
async fn run_due(node: &Node, due: Due, reminder_ms: u64) -> Result<(), NodeError> {
    for _ in 0..PLAN_WRITE_TRIES {
        let (mut plan, version) = node.plan();
        let now = now_ms();
        if !plan.due(now, reminder_ms).contains(&due) {
            return Ok(());
        }
        let (event, details, ended) = match due {
            Due::Ended { node: id } => {
                let Some(h) = plan.end_hold(id) else {
                    return Ok(());
                };
                let why = if h.window.is_some() {
                    "the window ended"
                } else {
                    "it expired"
                };
                let d = json!({ "node": id, "window": h.window, "reason": why });
                ("maintenance_end", d, Some(h))
            }
            Due::Remind { window } => {
                let Some(w) = plan.window_mut(window) else {
                    return Ok(());
                };
                w.reminded = true;
                let d = json!({ "node": w.node, "window": window, "reason": w.reason,
                                "start_ms": w.start_ms, "end_ms": w.end_ms });
                ("maintenance_reminder", d, None)
            }
            Due::Start { window } => {
                let Some(w) = plan.take_window(window) else {
                    return Ok(());
                };
                let primary = node.epoch().primary == Some(w.node);
                let d = json!({ "node": w.node, "window": window, "reason": w.reason,
                                "until_ms": w.end_ms });
                plan.put_hold(Hold {
                    node: w.node,
                    reason: w.reason,
                    by: w.by,
                    since_ms: now,
                    until_ms: w.end_ms,
                    window: Some(window),
                    moved_role: primary,
                });
                ("maintenance_start", d, None)
            }
        };
        match node
            .put_plan(&plan, version, DUTY_ACTOR, vec![(event, details)])
            .await
        {
            Ok(()) => {
                if let Some(h) = ended {
                    node.give_role_back(&h, DUTY_ACTOR).await;
                }
                return Ok(());
            }
            Err(NodeError::Rejected(StateRefusal::VersionConflict { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
