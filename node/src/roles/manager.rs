//! The role manager: ticks every half heartbeat and on a change of
//! openraft's server metrics, recomputes the role, raises the epoch,
//! keeps the shared IPs on the primary, records peers lost and found, asks
//! for snapshots and runs the periodic duties.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ReadPolicy, ServerState};
use serde_json::json;
use tandem_storage::{EpochRecord, NodeKind, Request, Response};
use tokio_util::sync::CancellationToken;

use super::state::Role;
use crate::node::Node;
use crate::peer::protocol::{ActionRequest, PeerRequest};
use crate::util::now_ms;

/// A snapshot asked for and not yet made is asked again after this.
const SNAPSHOT_ASK_AGAIN: Duration = Duration::from_secs(60);
/// Bound on delivering a fence notice.
const NOTICE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps roles up to date: raises the epoch on a new leader appliance, makes
/// a witness leader hand over, records role changes and peers lost or found.
pub async fn manage_roles(node: Arc<Node>, stop: CancellationToken) {
    let tick_period =
        |node: &Node| (node.lease_timing().heartbeat / 2).max(Duration::from_millis(10));
    let mut period = tick_period(&node);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Changes of leader, vote or membership are acted on at once (a new
    // leader raises its epoch, an old one lets go of the shared IPs) rather
    // than at the next tick. The engine is replaced by a reset: follow it.
    let mut engine = Arc::downgrade(&node.engine());
    let mut server = node.raft().server_metrics();
    loop {
        // A primary-timeout change changes how often the role manager
        // must look (and pace heartbeats).
        if tick_period(&node) != period {
            period = tick_period(&node);
            tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let current = node.engine();
        if !std::ptr::eq(engine.as_ptr(), Arc::as_ptr(&current)) {
            engine = Arc::downgrade(&current);
            server = current.raft.server_metrics();
        }
        drop(current);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => role_tick(&node).await,
            _ = node.roles.wake.notified() => role_tick(&node).await,
            r = server.changed() => {
                if r.is_err() {
                    // That Raft stopped (shutdown or reset): ticks go on.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                }
                role_tick(&node).await;
            }
        }
    }
}

/// A new leader appliance waits for a quorum to acknowledge it before it may
/// raise its epoch: wakes the role manager as soon as that happens (within a
/// primary timeout) instead of at the next tick.
fn wake_on_first_quorum_ack(node: &Arc<Node>) {
    if std::mem::replace(&mut node.roles.lock().waiting_quorum, true) {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        let judge = node.clone();
        let _ = node
            .raft()
            .wait(Some(node.timing().primary_timeout))
            .metrics(
                move |m| {
                    m.state != ServerState::Leader
                        || judge.quorum_lease_left(m).is_none_or(|d| !d.is_zero())
                },
                "a quorum acknowledges the new leader",
            )
            .await;
        node.roles.lock().waiting_quorum = false;
        node.roles.wake.notify_one();
    });
}

async fn role_tick(node: &Arc<Node>) {
    {
        let mut i = node.roles.lock();
        let gap = i.last_tick.elapsed();
        if gap > node.lease_timing().primary_timeout {
            tracing::warn!(
                paused_ms = gap.as_millis() as u64,
                "this process was paused longer than the primary timeout; not serving as primary until a peer confirms"
            );
            i.resumed_at = Some(openraft::TokioInstant::now());
        }
        i.last_tick = Instant::now();
    }
    timing_duty(node);
    let ep = node.epoch();
    node.roles.epoch.store(ep.epoch, Ordering::SeqCst);
    let (role, lease) = node.compute_role();
    let m = node.metrics();
    let me = node.cfg.node_id;
    let leader = m.state == ServerState::Leader && m.current_leader == Some(me);
    let (old_role, raise) = {
        let mut i = node.roles.lock();
        let old = i.role;
        i.role = role;
        i.lease_valid = lease;
        if role == Role::Primary && old != Role::Primary {
            i.primary_since_ms = Some(now_ms());
        } else if role != Role::Primary && role != Role::Standalone {
            i.primary_since_ms = None;
        }
        if leader {
            if let Some(last) = m.last_log_index {
                if i.samples.back().is_none_or(|(idx, _)| *idx < last) {
                    i.samples.push_back((last, Instant::now()));
                }
            }
            while i.samples.len() > 4096 {
                i.samples.pop_front();
            }
        } else {
            i.samples.clear();
            i.leader_since = None;
            i.peers_up.clear();
        }
        let raise = leader
            && node.cfg.kind == NodeKind::Appliance
            && lease
            && ep.primary != Some(me)
            && !node.roles.stood_down.load(Ordering::SeqCst);
        (old, raise)
    };
    // At most one raise at a time; the flight ends with its task, also
    // when that task panics.
    let raise = raise.then(|| node.roles.raising.claim()).flatten();
    if leader && !lease && node.cfg.kind == NodeKind::Appliance && ep.primary != Some(me) {
        wake_on_first_quorum_ack(node);
    }
    if old_role != role {
        tracing::info!(
            from = old_role.as_str(),
            to = role.as_str(),
            epoch = ep.epoch,
            "role changed"
        );
    }
    check_seen_epoch(node, leader && lease, &ep);
    settings_duties(node, role, old_role, &ep);
    if let Some(flight) = raise {
        let node = node.clone();
        tokio::spawn(async move {
            raise_epoch(&node, ep).await;
            drop(flight);
            // Act on the new role at once (take the shared IPs) instead of at
            // the next tick.
            node.roles.wake.notify_one();
        });
    }
    if node.roles.fence.notice().is_some() {
        if let Some(flight) = node.roles.handling_fence.claim() {
            let node = node.clone();
            tokio::spawn(async move {
                let _flight = flight;
                node.handle_fence().await;
            });
        }
    }
    if leader && node.cfg.kind == NodeKind::Witness {
        hand_over_from_witness(node, &m).await;
    }
    if !leader && node.cfg.kind == NodeKind::Witness {
        witness_fallback_election(node).await;
    }
    if leader {
        track_peers(node);
    }
    snapshot_duty(node, &m);
    node.apply_eligibility();
    crate::actions::failover::tick(node, role);
    crate::actions::maintenance::tick(node, role);
    crate::actions::checks::tick(node, role);
    crate::actions::failback::tick(node, role);
    crate::actions::placement::tick(node, role);
}

/// A higher epoch a member showed on the wire: accepted at once (the
/// node stops serving until it has applied it) unless this node is the
/// primary with a valid lease. Then one quorum round decides: if a quorum
/// still follows this node as leader after the epoch was seen, no newer
/// primary can exist in this lineage, and the epoch is dismissed (a lying
/// member cannot fence the primary); otherwise it is accepted.
fn check_seen_epoch(node: &Arc<Node>, leading_with_lease: bool, ep: &EpochRecord) {
    let fence = &node.roles.fence;
    let seen = fence.pending();
    if seen == 0 {
        return;
    }
    if seen <= ep.epoch.max(fence.highest()) {
        fence.dismiss(seen);
        return;
    }
    let me = node.cfg.node_id;
    if !leading_with_lease || ep.primary != Some(me) {
        fence.accept(seen);
        return;
    }
    let Some(flight) = node.roles.checking_epoch.claim() else {
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        let _flight = flight;
        let confirmed = node
            .raft()
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .is_ok();
        let ep = node.epoch();
        let m = node.metrics();
        if confirmed
            && m.state == ServerState::Leader
            && m.current_leader == Some(me)
            && ep.primary == Some(me)
            && ep.epoch < seen
        {
            tracing::warn!(
                seen,
                epoch = ep.epoch,
                "a member showed a higher epoch, but a quorum still follows this node as the primary: ignored"
            );
            node.roles.fence.dismiss(seen);
        } else {
            tracing::warn!(
                seen,
                epoch = ep.epoch,
                "a member showed a higher epoch: not serving until it is applied"
            );
            node.roles.fence.accept(seen);
        }
        node.roles.wake.notify_one();
    });
}

/// A change of the primary timeout while the nodes run (`live_timing`):
/// notes the replicated one; on the leader, follows the voters until the
/// change settles and sends heartbeats at the lease side's rate; elsewhere
/// rebuilds the engine with the new timers when they are due.
fn timing_duty(node: &Arc<Node>) {
    let now = Instant::now();
    let settings = node.settings();
    let m = node.metrics();
    let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
    if node
        .live
        .observe(settings.timing(), settings.floor_timing(), applied, now)
    {
        tracing::info!(
            to_ms = settings.primary_timeout_ms,
            running_ms = node.timing().primary_timeout.as_millis() as u64,
            lease_ms = node.lease_timing().primary_timeout.as_millis() as u64,
            "primary timeout changed"
        );
    }
    let me = node.cfg.node_id;
    if m.state == ServerState::Leader && m.current_leader == Some(me) {
        let matched = m.replication.clone().unwrap_or_default();
        node.live.track(
            |mark| {
                // Learners too: the pair-only backup's wait is its timer.
                m.membership_config
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .filter(|id| *id != me)
                    .all(|id| {
                        matched
                            .get(&id)
                            .and_then(|l| l.as_ref())
                            .is_some_and(|l| l.index >= mark)
                    })
            },
            now,
        );
        if node.live.heartbeat_due(now) {
            let raft = node.raft();
            tokio::spawn(async move {
                let _ = raft.trigger().heartbeat().await;
            });
        }
        return;
    }
    let Some(timing) = node.live.rebuild_due(now) else {
        return;
    };
    let Some(flight) = node.roles.rebuilding.claim() else {
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        let _flight = flight;
        if let Err(e) = node.rebuild_engine(timing).await {
            tracing::error!(error = %e, "the Raft timers could not be switched to the new primary timeout");
        }
    });
}

/// Entries between snapshots: `snapshot_every`, or as many as the last
/// snapshot held records when that is more (at most 16 × `snapshot_every`).
/// Each snapshot writes the whole state, so a fixed interval makes the cost
/// per write grow with the state (100,000 sessions dumped every 10,000
/// writes: ten records per write); this keeps it near one, and the log at
/// most about the size of the state.
pub fn snapshot_interval(snapshot_every: u64, last_snapshot_records: u64) -> u64 {
    let every = snapshot_every.max(1);
    last_snapshot_records.clamp(every, every.saturating_mul(16))
}

/// Asks openraft for a snapshot when the log applied since the last one
/// reached [`snapshot_interval`] (one request at a time; asked again after
/// a minute if none came of it).
fn snapshot_duty(node: &Node, m: &openraft::RaftMetrics<tandem_storage::TypeConfig>) {
    let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
    let snap = m.snapshot.as_ref().map_or(0, |l| l.index);
    let every = snapshot_interval(
        node.cfg.tuning.snapshot_every,
        node.reader().snapshot_records(),
    );
    if applied < snap.saturating_add(every) {
        return;
    }
    {
        let mut i = node.roles.lock();
        if i.snapshot_asked
            .is_some_and(|(at, when)| snap < at && when.elapsed() < SNAPSHOT_ASK_AGAIN)
        {
            return;
        }
        i.snapshot_asked = Some((applied, Instant::now()));
    }
    tracing::debug!(applied, snap, every, "asking for a snapshot");
    // Not awaited here: under load openraft's request queue can be full for
    // a moment, and the role manager must not wait (it renews the guard).
    let raft = node.raft();
    tokio::spawn(async move {
        let _ = raft.trigger().snapshot().await;
    });
}

/// Applies the replicated settings that act locally: the bandwidth limit of
/// outgoing streams, and the shared IPs, kept on the primary only: desired state every tick, an
/// immediate release when the role is lost (demotion, lease loss, fence),
/// and the manager's events in the replicated history while primary.
fn settings_duties(node: &Arc<Node>, role: Role, old_role: Role, ep: &EpochRecord) {
    let settings = node.settings();
    node.bandwidth
        .store(settings.bandwidth_limit_bps, Ordering::Relaxed);
    let Some(h) = node.shared_ips.get() else {
        return;
    };
    let specs = crate::shared_ip::specs_for_node(&settings.shared_ips, &node.cfg.name).0;
    let hold = role == Role::Primary && !node.roles.handing_over();
    if hold {
        h.renew_lease(node.lease_remaining());
    }
    if old_role == Role::Primary && role != Role::Primary {
        let h = h.clone();
        tokio::spawn(async move {
            let report = h.release_all().await;
            tracing::info!(held = ?report.held, "role lost: shared IPs released");
        });
    }
    h.set_desired(hold, ep.epoch, specs, settings.test_ips.clone());
    let events = h.drain_events();
    for e in events {
        if hold {
            node.record_soon(
                "shared_ip",
                "tandem",
                json!({ "action": e.action, "address": e.address, "interface": e.interface,
                        "epoch": e.epoch, "ok": e.ok, "detail": e.detail }),
            );
        } else {
            tracing::info!(action = %e.action, address = %e.address, ok = e.ok, detail = %e.detail, "shared IP event");
        }
    }
}

/// The witness does not start elections on its own (so that the backup's
/// first election after the primary dies wins). If no leader has been heard
/// from a little after the longest election timeout — the backup cannot
/// win, e.g. because its log is behind the witness's — the witness stands,
/// leads just long enough to bring an appliance up to date, and hands over.
async fn witness_fallback_election(node: &Node) {
    // Just after the longest appliance election timeout: by then the backup
    // has won if it could (its log was as long as the witness's); if it
    // could not, the witness leads, brings it up to date and hands over.
    let limit = node.timing().election_max + node.timing().heartbeat;
    // Failover is manual: the primary stands for itself, and a witness
    // that led with the primary gone would only keep the backup's manual
    // election from being granted (its own lease would hold the vote).
    if node.manual_failover() {
        return;
    }
    {
        let mut i = node.roles.lock();
        let silent = match i.last_leader_contact {
            Some(t) => t.elapsed() > limit,
            None => i.started.elapsed() > limit * 2,
        };
        if !silent || i.last_witness_election.is_some_and(|t| t.elapsed() < limit) {
            return;
        }
        i.last_witness_election = Some(Instant::now());
    }
    tracing::info!("no leader after the longest election timeout: the witness stands for election");
    // With Pre-Vote: a witness whose log is behind the backup's cannot win,
    // and must not raise its term trying, or the backup's own Pre-Votes
    // (at the witness's last term + 1) keep arriving just after the next
    // raise and are refused, round after round.
    let _ = node.raft().trigger().elect(true).await;
}

impl Node {
    /// One entry that raises the epoch from `expected` with this node as
    /// primary and records `kind` in the history: both or neither apply.
    pub(crate) fn epoch_change(
        &self,
        expected: u64,
        forced: bool,
        forked_at: Option<u64>,
        kind: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Request {
        let me = self.cfg.node_id;
        Request::Multi(vec![
            Request::RaiseEpoch {
                expected_epoch: expected,
                primary: me,
                forced,
                forked_at,
                at_ms: now_ms(),
            },
            Request::HistoryAppend {
                at_ms: now_ms(),
                node: me,
                kind: kind.to_string(),
                actor: actor.to_string(),
                details_json: details.to_string(),
            },
        ])
    }

    /// Tells members that were just removed (break, witness removal) so they
    /// need not wait for their next Raft message to find out.
    pub(crate) async fn notify_removed(&self, members: &[(u64, String)], actor: &str) {
        for (id, addr) in members {
            let notice = PeerRequest::Action(ActionRequest::Break {
                actor: actor.into(),
            });
            if let Err(e) = self
                .network
                .call(*id, addr, notice, NOTICE_CALL_TIMEOUT)
                .await
            {
                tracing::info!(peer = id, error = %e, "removed member not told now; it learns at its next contact");
            }
        }
    }

    /// `(id, peer address)` of these members, from the current membership.
    pub(crate) fn peer_addresses(&self, ids: &[u64]) -> Vec<(u64, String)> {
        let m = self.metrics();
        ids.iter()
            .filter_map(|id| {
                m.membership_config
                    .get_node(id)
                    .map(|n| (*id, n.peer_addr.clone()))
            })
            .collect()
    }
}

async fn raise_epoch(node: &Node, ep: EpochRecord) {
    let me = node.cfg.node_id;
    let details = json!({
        "primary": me,
        "name": node.cfg.name,
        "previous_primary": ep.primary,
        "epoch": ep.epoch + 1,
    });
    let req = node.epoch_change(ep.epoch, false, None, "role_change", "tandem", details);
    match node.write(req).await {
        Ok(Response::Multi(_)) => {
            tracing::info!(epoch = ep.epoch + 1, "epoch raised; this node is primary")
        }
        Ok(Response::Refused { reason }) => tracing::debug!(%reason, "epoch raise refused"),
        Ok(other) => tracing::warn!(?other, "unexpected answer to epoch raise"),
        Err(e) => tracing::debug!(error = %e, "epoch raise failed"),
    }
}

async fn hand_over_from_witness(
    node: &Node,
    m: &openraft::RaftMetrics<tandem_storage::TypeConfig>,
) {
    // One transfer at a time: give a triggered transfer a few heartbeats to
    // complete before trying again (until then, no rate limit: the check
    // below is cheap and the hand-over should happen on the first tick an
    // appliance has caught up).
    if node
        .roles
        .lock()
        .last_handover
        .is_some_and(|t| t.elapsed() < node.timing().heartbeat * 3)
    {
        return;
    }
    let Some(last) = m.last_log_index else { return };
    let membership = m.membership_config.membership();
    // Failover is manual: leadership goes back to the primary only.
    let only = node.manual_failover().then(|| node.epoch().primary);
    let voters: Vec<u64> = membership
        .voter_ids()
        .filter(|id| only.is_none_or(|p| p == Some(*id)))
        .collect();
    let best = voters
        .iter()
        .filter(|id| {
            membership
                .get_node(id)
                .is_some_and(|n| n.kind == NodeKind::Appliance)
                && !node.in_maintenance(**id)
        })
        .filter_map(|id| {
            let matched = m.replication.as_ref()?.get(id).cloned().flatten()?.index;
            Some((*id, matched))
        })
        .filter(|(_, matched)| *matched >= last)
        .max_by_key(|(_, matched)| *matched);
    if let Some((to, _)) = best {
        tracing::info!(
            to,
            "witness is leader: handing leadership to a caught-up appliance"
        );
        node.roles.lock().last_handover = Some(Instant::now());
        let _ = node.raft().trigger().transfer_leader(to).await;
    }
}

fn track_peers(node: &Arc<Node>) {
    {
        // A new leader has no heartbeat answers yet: judge reachability only
        // once it has led for a whole primary timeout.
        let mut i = node.roles.lock();
        let since = *i.leader_since.get_or_insert_with(Instant::now);
        if since.elapsed() < node.timing().primary_timeout {
            return;
        }
    }
    let facts = node.peer_facts();
    let mut changes = Vec::new();
    {
        let mut i = node.roles.lock();
        for f in &facts {
            let up = f.reachable == Some(true);
            // The first observation after becoming leader is the baseline:
            // no event for it.
            if let Some(was) = i.peers_up.insert(f.id, up) {
                if was != up {
                    changes.push((f.id, up));
                }
            }
        }
        i.peers_up.retain(|id, _| facts.iter().any(|f| f.id == *id));
    }
    for (id, up) in changes {
        let name = node
            .metrics()
            .membership_config
            .get_node(&id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let kind = if up { "peer_found" } else { "peer_lost" };
        tracing::info!(peer = id, %name, event = kind, "peer reachability changed");
        node.record_soon(kind, "tandem", json!({ "peer": id, "name": name }));
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_interval;

    #[test]
    fn snapshot_interval_follows_the_state_size_within_bounds() {
        assert_eq!(snapshot_interval(10_000, 0), 10_000, "no snapshot yet");
        assert_eq!(snapshot_interval(10_000, 3_000), 10_000);
        assert_eq!(snapshot_interval(10_000, 100_000), 100_000);
        assert_eq!(snapshot_interval(10_000, 10_000_000), 160_000, "capped");
        assert_eq!(snapshot_interval(0, 0), 1);
    }
}
