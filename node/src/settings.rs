//! The relationship's replicated settings, as the node uses them.
//!
//! Stored in the state machine as JSON text (so fields can be added without
//! a storage format change); every field has a default so older documents
//! keep parsing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_web::{SettingsUpdate, SettingsView, SharedIpView};

/// Default primary timeout: how long without contact before failover.
pub const DEFAULT_PRIMARY_TIMEOUT_MS: u64 = 1000;
/// The fastest primary timeout supported.
pub const MIN_PRIMARY_TIMEOUT_MS: u64 = 300;

/// One shared address and the interface it lives on, per node name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SharedIp {
    /// `address/prefix`.
    pub address: String,
    /// Node name → interface.
    pub interfaces: BTreeMap<String, String>,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Time without contact after which the primary is considered dead.
    pub primary_timeout_ms: u64,
    /// The shortest primary timeout the relationship ran with before the
    /// current one (set when the timeout changes, never by the API): while
    /// a change settles, leases are no longer than it allows, since a voter
    /// may still run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_timeout_floor_ms: Option<u64>,
    /// Automatic failover. With a witness: off makes failover manual (only
    /// the primary stands for election; the backup waits for an
    /// administrator). Pair only: the backup promotes itself after the
    /// timeout, and only when a connectivity test address answers.
    pub auto_failover: bool,
    /// Addresses that prove a node is not cut off (IP for ICMP-less TCP/ping checks, or host:port).
    pub test_ips: Vec<String>,
    /// Automatic verify interval (0: off).
    pub verify_interval_secs: u64,
    /// Bandwidth limit for snapshot and catch-up streams, bytes/s (0: unlimited).
    pub bandwidth_limit_bps: u64,
    /// Scheduled backup archives on the backup.
    pub backup_operations: bool,
    /// Shared addresses held by the primary.
    pub shared_ips: Vec<SharedIp>,
    /// Longest maintenance hold (minutes).
    pub maintenance_max_minutes: u64,
    /// How long before a maintenance window's start its reminder is
    /// recorded (s); 0 = none.
    pub maintenance_reminder_secs: u64,
    /// Service checks.
    pub checks: Vec<tandem_web::CheckSpec>,
    /// No check-driven move within this long of the last one (s).
    pub check_hold_down_secs: u64,
    /// Failback policy.
    pub failback: tandem_web::Failback,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            primary_timeout_ms: DEFAULT_PRIMARY_TIMEOUT_MS,
            primary_timeout_floor_ms: None,
            auto_failover: true,
            test_ips: Vec::new(),
            verify_interval_secs: 0,
            bandwidth_limit_bps: 0,
            backup_operations: false,
            shared_ips: Vec::new(),
            maintenance_max_minutes: tandem_web::DEFAULT_MAINTENANCE_MAX_MINUTES,
            maintenance_reminder_secs: tandem_web::DEFAULT_MAINTENANCE_REMINDER_SECS,
            checks: Vec::new(),
            check_hold_down_secs: tandem_web::DEFAULT_CHECK_HOLD_DOWN_SECS,
            failback: tandem_web::Failback::default(),
        }
    }
}

/// Raft timing derived from a primary timeout `t`.
///
/// openraft makes a node refuse votes for its own longest election timeout
/// after it last heard from a leader (its vote lease), and a candidate whose
/// election is refused waits a whole new timeout. So: appliances time out
/// after a random time in [0.3 t, 0.4 t]; the witness never starts an
/// election on its own (it is only a tie-breaker; see the role manager for
/// its fallback) and its vote lease is 0.3 t, so the backup's first
/// election after the primary dies is granted. A dead primary is replaced
/// well within a primary timeout of its last heartbeat. Heartbeats go out
/// every t/10; the primary's lease is 80 % of 0.3 t: no node can win an
/// election before both the witness's vote lease and the backup's timer have
/// run (both at least 0.3 t after they last heard the leader), and the 20 %
/// margin covers clock drift between the leader, which measures from the
/// send time of the acknowledged heartbeat, and followers, which measure from
/// its arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The primary timeout.
    pub primary_timeout: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout lower bound (appliances).
    pub election_min: Duration,
    /// Election timeout upper bound (appliances).
    pub election_max: Duration,
    /// The witness's vote lease.
    pub witness_vote_lease: Duration,
    /// Leader lease.
    pub lease: Duration,
}

impl Timing {
    /// Timing for a primary timeout in milliseconds (clamped to the supported minimum).
    pub fn from_primary_timeout_ms(ms: u64) -> Self {
        let t = ms.max(MIN_PRIMARY_TIMEOUT_MS);
        let election_min = t * 3 / 10;
        Self {
            primary_timeout: Duration::from_millis(t),
            heartbeat: Duration::from_millis((t / 10).max(20)),
            election_min: Duration::from_millis(election_min),
            election_max: Duration::from_millis(t * 2 / 5),
            witness_vote_lease: Duration::from_millis(election_min),
            lease: Duration::from_millis(election_min * 4 / 5),
        }
    }
}

impl Settings {
    /// Parses stored settings JSON; unknown or missing fields fall back to defaults.
    pub fn parse(json: Option<&str>) -> Self {
        json.and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }

    /// The document stored in the state machine.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and maps always serialises.
        serde_json::to_string(self).expect("settings serialise to JSON")
    }

    /// Settings from an API update (already validated by the web crate).
    pub fn from_update(u: &SettingsUpdate) -> Self {
        Self {
            primary_timeout_ms: u.primary_timeout_ms,
            primary_timeout_floor_ms: None,
            auto_failover: u.auto_failover,
            test_ips: u.test_ips.clone(),
            verify_interval_secs: u.verify_interval_secs,
            bandwidth_limit_bps: u.bandwidth_limit_bps,
            backup_operations: u.backup_operations,
            shared_ips: u
                .shared_ips
                .iter()
                .map(|s| SharedIp {
                    address: s.address.clone(),
                    interfaces: s.interfaces.clone(),
                })
                .collect(),
            maintenance_max_minutes: u.maintenance_max_minutes,
            maintenance_reminder_secs: u.maintenance_reminder_secs,
            checks: u.checks.clone(),
            check_hold_down_secs: u.check_hold_down_secs,
            failback: u.failback.clone(),
        }
    }

    /// The API view, with the stored version and author.
    pub fn view(
        &self,
        version: u64,
        updated_by: Option<String>,
        updated_at_ms: Option<u64>,
    ) -> SettingsView {
        SettingsView {
            version,
            updated_by,
            updated_at_ms,
            primary_timeout_ms: self.primary_timeout_ms,
            auto_failover: self.auto_failover,
            test_ips: self.test_ips.clone(),
            verify_interval_secs: self.verify_interval_secs,
            bandwidth_limit_bps: self.bandwidth_limit_bps,
            backup_operations: self.backup_operations,
            shared_ips: self
                .shared_ips
                .iter()
                .map(|s| SharedIpView {
                    address: s.address.clone(),
                    interfaces: s.interfaces.clone(),
                })
                .collect(),
            maintenance_max_minutes: self.maintenance_max_minutes,
            maintenance_reminder_secs: self.maintenance_reminder_secs,
            checks: self.checks.clone(),
            check_hold_down_secs: self.check_hold_down_secs,
            failback: self.failback.clone(),
        }
    }

    /// Timing derived from the primary timeout.
    pub fn timing(&self) -> Timing {
        Timing::from_primary_timeout_ms(self.primary_timeout_ms)
    }

    /// The timing of the shortest timeout voters may still run.
    pub fn floor_timing(&self) -> Timing {
        Timing::from_primary_timeout_ms(
            self.primary_timeout_floor_ms
                .unwrap_or(self.primary_timeout_ms)
                .min(self.primary_timeout_ms),
        )
    }

    /// These settings written over `before`: a changed timeout keeps the
    /// shorter of the old one and the old floor as the floor.
    pub fn after(mut self, before: &Settings) -> Self {
        self.primary_timeout_floor_ms = if self.primary_timeout_ms == before.primary_timeout_ms {
            before.primary_timeout_floor_ms
        } else {
            Some(
                before
                    .primary_timeout_floor_ms
                    .unwrap_or(before.primary_timeout_ms)
                    .min(before.primary_timeout_ms),
            )
        };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_is_derived_and_lease_is_shorter_than_any_election() {
        let t = Timing::from_primary_timeout_ms(1000);
        assert_eq!(t.heartbeat, Duration::from_millis(100));
        assert_eq!(t.election_min, Duration::from_millis(300));
        assert_eq!(t.election_max, Duration::from_millis(400));
        assert!(t.witness_vote_lease <= t.election_min);
        assert!(t.lease < t.election_min);
        assert!(t.election_max < t.primary_timeout);
        assert!(t.heartbeat * 3 <= t.election_min);
        let fast = Timing::from_primary_timeout_ms(10);
        assert_eq!(
            fast.primary_timeout,
            Duration::from_millis(MIN_PRIMARY_TIMEOUT_MS)
        );
        assert!(fast.lease < fast.election_min && fast.heartbeat < fast.lease);
    }

    #[test]
    fn parse_tolerates_missing_and_garbage() {
        assert_eq!(Settings::parse(None), Settings::default());
        assert_eq!(Settings::parse(Some("not json")), Settings::default());
        let s = Settings::parse(Some(r#"{"auto_failover":true}"#));
        assert!(s.auto_failover);
        assert_eq!(s.primary_timeout_ms, DEFAULT_PRIMARY_TIMEOUT_MS);
        assert_eq!(Settings::parse(Some(&s.to_json())), s);
    }
}
