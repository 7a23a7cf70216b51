//! The views that gather the most: this node's `/health`, the status page
//! (with every peer's `/health`) and readiness.

use openraft::ServerState;
use tandem_storage::NodeKind;
use tandem_web::{
    ApiError, CertificateView, HealthView, HostView, PeerView, ReadinessView, RoleName, StatusView,
    Topology,
};

use crate::node::{kind_view, Node};
use crate::util::now_ms;

use super::backend::{peer_health, Backend};

/// What the status page says about a node's health, from its `/health`:
/// a disk below the reserve, an essential task that died, and Raft stopped
/// (by a storage failure).
pub(super) fn storage_notes(name: &str, h: &HealthView) -> Vec<String> {
    let mut notes = Vec::new();
    const MIB: f64 = 1024.0 * 1024.0;
    if let (Some(free), Some(reserve)) = (h.disk_free_bytes, h.disk_reserve_bytes) {
        if reserve > 0 && free < reserve {
            notes.push(format!(
                "{name}: only {:.1} MiB free for its data directory, below its reserve of {:.0} MiB: \
                 as primary it refuses configuration and session writes, and its Raft stops if the \
                 disk fills; free space there",
                free as f64 / MIB,
                reserve as f64 / MIB
            ));
        }
    }
    for p in &h.problems {
        notes.push(format!("{name}: {p}"));
    }
    if h.role == role_name(ServerState::Shutdown) {
        notes.push(format!(
            "{name}: Raft has stopped there after a storage failure (such as a full disk, see its \
             log): it neither replicates nor serves writes until it is restarted"
        ));
    }
    notes
}

pub(super) fn role_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Backend {
    pub(super) fn local_health(&self) -> HealthView {
        let m = self.node.metrics();
        let problems: Vec<String> = self
            .node
            .supervision
            .deaths()
            .iter()
            .map(|d| {
                format!(
                    "its {} died at {} ({}): it no longer leads and stays a backup until it is \
                     restarted",
                    d.task,
                    crate::cli::render::iso8601(d.at_ms),
                    d.why
                )
            })
            .collect();
        HealthView {
            status: if problems.is_empty() {
                "ok"
            } else {
                "degraded"
            }
            .into(),
            problems,
            node: self.node.cfg.name.clone(),
            node_id: self.node.cfg.node_id,
            role: role_name(m.state).into(),
            leader: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            shared_ips_held: self
                .node
                .shared_ips
                .get()
                .map(|h| h.report().held)
                .unwrap_or_default(),
            disk_free_bytes: self.node.disk.free(),
            disk_reserve_bytes: Some(self.node.disk.reserve()),
            checks: self.node.checks.views(),
            checks_ok: self.node.checks.failing().is_empty(),
            primary_timeout_ms: Some(self.node.timing().primary_timeout.as_millis() as u64),
            lease_timeout_ms: Some(self.node.lease_timing().primary_timeout.as_millis() as u64),
        }
    }

    /// `GET /api/v1/status`: this host, its peers (each asked for its own
    /// `/health`), the relationship and the notes.
    pub(super) async fn status_view(&self) -> Result<StatusView, ApiError> {
        let node = &self.node;
        let m = node.metrics();
        let ep = node.epoch();
        let (role, lease) = node.compute_role();
        let (_, _, since) = node.roles.current();
        let membership = m.membership_config.membership().clone();
        let facts = node.peer_facts();
        let me = node.cfg.node_id;
        let probes = facts.iter().map(|f| {
            let info = membership.get_node(&f.id).cloned();
            let probe = self.probe.clone();
            async move {
                // Every peer not known to be down is asked for its /health
                // (its own view: the shared IPs it holds, its indexes).
                let health = match (f.reachable, probe, &info) {
                    (None | Some(true), Some(client), Some(info)) => {
                        peer_health(&client, f.id, &info.api_addr).await
                    }
                    _ => None,
                };
                (f, info, health)
            }
        });
        let probed = futures::future::join_all(probes).await;
        let peer_notes: Vec<String> = probed
            .iter()
            .filter_map(|(_, info, health)| Some((info.as_ref()?, health.as_ref()?)))
            .flat_map(|(info, h)| storage_notes(&info.name, h))
            .collect();
        let places = node.places();
        let peers = probed
            .into_iter()
            .map(|(f, info, health)| {
                let info = info.unwrap_or_default();
                let role = if info.kind == NodeKind::Witness {
                    RoleName::Witness
                } else if ep.primary == Some(f.id) {
                    RoleName::Primary
                } else {
                    RoleName::Backup
                };
                let lag_bytes = match f.lag_entries {
                    Some(0) => Some(0),
                    Some(_) => node.lag_bytes(f.matched),
                    None => None,
                };
                PeerView {
                    site: places.get(f.id).and_then(|p| p.site.clone()),
                    id: f.id,
                    name: info.name.clone(),
                    kind: kind_view(info.kind),
                    role,
                    voter: f.voter,
                    reachable: f.reachable.unwrap_or(health.is_some()),
                    last_contact_ms: f.last_contact_ms.or(health.as_ref().map(|_| now_ms())),
                    lag_entries: f.lag_entries,
                    lag_bytes,
                    lag_ms: f.lag_ms,
                    api_addr: info.api_addr.clone(),
                    shared_ips_held: health.as_ref().map(|h| h.shared_ips_held.clone()),
                }
            })
            .collect::<Vec<_>>();
        let topology = if membership.nodes().count() <= 1 {
            Topology::Standalone
        } else if membership.nodes().any(|(_, n)| n.kind == NodeKind::Witness) {
            Topology::PairWitness
        } else {
            Topology::Pair
        };
        let notes = self.status_notes(&ep, peer_notes);
        Ok(StatusView {
            this_host: HostView {
                id: me,
                name: node.cfg.name.clone(),
                kind: kind_view(node.cfg.kind),
                role: role.into(),
                site: node.place.site.clone(),
                epoch: ep.epoch,
                term: m.current_term,
                leader: m.current_leader,
                last_log_index: m.last_log_index,
                committed_index: m.local_committed.map(|l| l.index),
                applied_index: m.last_applied.map(|l| l.index),
                lease_valid: lease,
                primary_since_ms: since,
                shared_ips_held: node
                    .shared_ips
                    .get()
                    .map(|h| h.report().held)
                    .unwrap_or_default(),
                notes,
                peer_addr: node.cfg.peer_advertise.clone(),
                checks: node.checks.views(),
            },
            peers,
            topology,
            settings: self.settings_view(),
            epoch: ep.epoch,
            primary: ep.primary,
            maintenance: node.maintenance_view().nodes,
        })
    }

    /// The names of `id`'s failing service checks, from its `/health`
    /// (none when it does not answer).
    async fn failing_checks_of(
        &self,
        membership: &openraft::Membership<u64, tandem_storage::NodeInfo>,
        id: u64,
    ) -> Vec<String> {
        let (Some(client), Some(info)) = (self.probe.clone(), membership.get_node(&id)) else {
            return Vec::new();
        };
        match peer_health(&client, id, &info.api_addr).await {
            Some(h) => h
                .checks
                .into_iter()
                .filter(|c| c.state == "failing")
                .map(|c| c.name)
                .collect(),
            None => Vec::new(),
        }
    }

    /// The notes of the status page: what an administrator should know
    /// about this node and, from their `/health`, its peers.
    fn status_notes(
        &self,
        ep: &tandem_storage::EpochRecord,
        peer_notes: Vec<String>,
    ) -> Vec<String> {
        let node = &self.node;
        let mut notes = Vec::new();
        let (running, target, lease) = (
            node.live.running().primary_timeout.as_millis(),
            node.live.target().primary_timeout.as_millis(),
            node.lease_timing().primary_timeout.as_millis(),
        );
        if running != target {
            let when = if node.metrics().current_leader == Some(node.cfg.node_id) {
                "when it no longer leads (it sends heartbeats at the new rate meanwhile)"
            } else {
                "once every lease given under the old timeout has run out"
            };
            notes.push(format!(
                "primary timeout changing to {target} ms: this node's timers switch from {running} ms {when}"
            ));
        } else if lease != target {
            notes.push(format!(
                "primary timeout change to {target} ms settling: leases follow {lease} ms until every voter holds the change"
            ));
        }
        // The primary is heard when it leads and reached this node lately
        // (a witness leading meanwhile is not the primary).
        let primary_heard = ep.primary.is_some()
            && node.metrics().current_leader == ep.primary
            && node
                .roles
                .since_leader_contact()
                .is_some_and(|d| d <= node.timing().primary_timeout);
        if node.manual_failover() && ep.primary != Some(node.cfg.node_id) && !primary_heard {
            notes.push(
                "automatic failover is off and the primary is silent: make this node primary by \
                 hand (Become primary)"
                    .into(),
            );
        }
        if node.stood_down() {
            notes.push(
                "this node stood down (forced demotion): it is not primary and accepts no writes; \
                 make the peer primary by hand, or undo with Become primary on this node"
                    .into(),
            );
        }
        if ep.forced {
            notes.push(format!("epoch {} began with a forced promotion", ep.epoch));
        }
        if let Some(n) = node.roles.fence.notice() {
            notes.push(format!(
                "node {} no longer counts this node as a member ({:?}, its epoch {}); this node does not serve; rejoin (with a rejoin token made on the primary) to resync as backup",
                n.by, n.kind, n.epoch
            ));
        }
        if let Some(report) = node.shared_ips.get().map(|h| h.report()) {
            for e in &report.errors {
                notes.push(format!("shared IP ({}): {e}", report.driver));
            }
            if let Some(r) = &report.reachability {
                notes.push(format!(
                    "after takeover (epoch {}), {} {} from {}: {}",
                    r.epoch,
                    r.target,
                    if r.ok { "answered" } else { "did not answer" },
                    r.from,
                    r.detail
                ));
            }
        }
        for (check, output) in node.checks.failing() {
            notes.push(format!(
                "service check {check} is failing on this node: {output}"
            ));
        }
        if let Some(why) = node.check_blocked() {
            notes.push(format!(
                "this node stays primary despite a failing check: {why}"
            ));
        }
        notes.extend(storage_notes(&node.cfg.name, &self.local_health()));
        notes.extend(peer_notes);
        notes.extend(node.placement_warnings());
        if let Some(path) = node.roles.diverged_export() {
            notes.push(format!(
                "writes this node never replicated were exported to {path}"
            ));
        }
        notes
    }

    /// `GET /api/v1/readiness`.
    pub(super) async fn readiness_view(&self) -> Result<ReadinessView, ApiError> {
        let node = &self.node;
        let m = node.metrics();
        let ep = node.epoch();
        let membership = m.membership_config.membership().clone();
        let mut reasons = Vec::new();
        let (certificates, certificates_ok) = certificate_list(node, &membership, &mut reasons);
        let settings = node.settings();
        let report = node.shared_ips.get().map(|h| h.report());
        let spec_errors = crate::shared_ip::specs_for_node(&settings.shared_ips, &node.cfg.name).1;
        for e in &spec_errors {
            reasons.push(format!("shared IP setting: {e}"));
        }
        for e in report.iter().flat_map(|r| r.errors.iter()) {
            reasons.push(format!("shared IP: {e}"));
        }
        let shared_ips_ok = spec_errors.is_empty() && report.is_none_or(|r| r.errors.is_empty());
        let facts = node.peer_facts();
        let backup = membership
            .nodes()
            .find(|(id, n)| Some(**id) != ep.primary && n.kind == NodeKind::Appliance)
            .map(|(id, _)| *id);
        let voters: Vec<u64> = membership.voter_ids().collect();
        let (would, lag) = match (ep.primary, backup) {
            (Some(primary), Some(b)) => {
                // Without the primary, the remaining voters must still form a majority.
                let remaining = voters.iter().filter(|v| **v != primary).count();
                let majority = remaining * 2 > voters.len();
                let backup_voter = voters.contains(&b);
                let fact = facts.iter().find(|f| f.id == b);
                let lag = fact.and_then(|f| f.lag_entries);
                let reachable = if b == node.cfg.node_id {
                    node.roles
                        .since_leader_contact()
                        .is_some_and(|d| d < node.timing().primary_timeout)
                } else {
                    fact.and_then(|f| f.reachable).unwrap_or(false)
                };
                // Pair + witness: the backup votes and wins the election with
                // the witness. Pair only: the backup is a learner and takes
                // over by itself only with automatic failover on and at least
                // one connectivity test address to tell "primary down" from
                // "cut off".
                let manual = node.manual_failover();
                if manual {
                    reasons.push(
                        "automatic failover is off: the backup waits for an administrator \
                         (Become primary on it)"
                            .into(),
                    );
                }
                let by_election = backup_voter && majority && !manual;
                let by_itself =
                    !backup_voter && settings.auto_failover && !settings.test_ips.is_empty();
                if !by_election && !by_itself {
                    if backup_voter {
                        reasons.push(
                            "without the primary the remaining voters are no majority (add a witness)"
                                .into(),
                        );
                    } else if !settings.auto_failover {
                        reasons.push("pair without a witness and automatic failover is off".into());
                    } else {
                        reasons.push(
                            "automatic failover is on but no connectivity test address is set"
                                .into(),
                        );
                    }
                }
                if !reachable {
                    reasons.push(format!("backup {b} is not in contact with the primary"));
                }
                let held = node.plan().0.hold(b, now_ms()).cloned();
                if let Some(h) = &held {
                    reasons.push(format!(
                        "backup {} is in maintenance until {} ms ({}): it will not take over; \
                         the pair waits for an administrator or the end of the maintenance",
                        node.member_name(b),
                        h.until_ms,
                        h.reason
                    ));
                }
                let sick = if b == node.cfg.node_id {
                    node.checks.failing().into_iter().map(|(n, _)| n).collect()
                } else {
                    self.failing_checks_of(&membership, b).await
                };
                if !sick.is_empty() {
                    reasons.push(format!(
                        "backup {}'s service checks are failing ({}): it will not take over",
                        node.member_name(b),
                        sick.join(", ")
                    ));
                }
                (
                    (by_election || by_itself) && reachable && held.is_none() && sick.is_empty(),
                    lag,
                )
            }
            (None, _) => {
                reasons.push("there is no primary".into());
                (false, None)
            }
            (_, None) => {
                reasons.push("there is no backup appliance".into());
                (false, None)
            }
        };
        Ok(ReadinessView {
            would_fail_over: would,
            after_ms: would.then(|| {
                let with_witness = membership.nodes().any(|(_, n)| n.kind == NodeKind::Witness);
                let t = &node.timing();
                // By election: the longest election timeout and a heartbeat;
                // pair only: the primary timeout plus the connectivity probe.
                let d = if with_witness {
                    t.election_max + t.heartbeat
                } else {
                    t.primary_timeout + t.primary_timeout / 2
                };
                d.as_millis() as u64
            }),
            lag_entries: lag,
            reasons,
            certificates_ok,
            shared_ips_ok,
            warnings: node.placement_warnings(),
            certificates,
        })
    }
}

/// Days before expiry from which a certificate is reported as not ok.
const CERT_WARN_DAYS: i64 = 30;

/// Each member's certificate as `node` knows it, and whether all are ok
/// (none expires within [`CERT_WARN_DAYS`]); reasons for the others.
fn certificate_list(
    node: &Node,
    membership: &openraft::Membership<u64, tandem_storage::NodeInfo>,
    reasons: &mut Vec<String>,
) -> (Vec<CertificateView>, bool) {
    let me = node.cfg.node_id;
    let mut list = vec![node.own_certificate()];
    for (id, info) in membership.nodes().filter(|(id, _)| **id != me) {
        let seen = node.identity.seen_certs.get(*id);
        list.push(crate::actions::certs::certificate_view(
            *id, &info.name, seen,
        ));
    }
    let now_ms = now_ms();
    let mut ok = true;
    for c in &list {
        let Some(end) = c.not_after_ms else { continue };
        let left_days = (end as i64 - now_ms as i64) / 86_400_000;
        if left_days < CERT_WARN_DAYS {
            ok = false;
            reasons.push(format!(
                "the certificate of {} expires in {left_days} days: renew it (`tandem certs renew` on that node)",
                c.name
            ));
        }
    }
    (list, ok)
}
