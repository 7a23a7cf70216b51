//! Maintenance in the API: the request bodies and views of
//! `/api/v1/maintenance…` and their checks (the handlers are in `routes`).
//! A leaf: it uses no other module of this crate.
//!
//! What maintenance means (a node held out of service is never made
//! primary; starting it on the primary moves the role first) is the node's;
//! this module only carries it.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest reason text.
pub const MAX_MAINTENANCE_REASON_LEN: usize = 200;
/// Longest node name accepted in a maintenance request.
const MAX_NODE_LEN: usize = 64;
/// Allowed longest maintenance hold (the `maintenance_max_minutes`
/// setting, minutes): a minute to a year.
pub const MAINTENANCE_MAX_MINUTES: RangeInclusive<u64> = 1..=525_600;
/// Allowed maintenance reminder lead (the `maintenance_reminder_secs`
/// setting, s): none to a week.
pub const MAINTENANCE_REMINDER_SECS: RangeInclusive<u64> = 0..=604_800;
/// Longest hold asked in one request, whatever the setting (a year).
const MAX_MINUTES: u64 = *MAINTENANCE_MAX_MINUTES.end();

/// Body of `POST /api/v1/maintenance`: hold `node` out of service now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceStart {
    /// The node's name (or its id, in decimal).
    pub node: String,
    /// Why (1..=200 characters).
    pub reason: String,
    /// For how long, in minutes (at most the `maintenance_max_minutes`
    /// setting). One of `minutes` and `seconds` is required.
    #[serde(default)]
    pub minutes: Option<u64>,
    /// For how long, in seconds (for short holds and tests).
    #[serde(default)]
    pub seconds: Option<u64>,
    /// Start it even if the role cannot be moved away from the node now (it
    /// then stays primary, in maintenance, until the role can move).
    #[serde(default)]
    pub force: bool,
}

/// Body of `POST /api/v1/maintenance/windows`: hold `node` out of service
/// from `start_ms` to `end_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowRequest {
    /// The node's name (or its id, in decimal).
    pub node: String,
    /// Why (1..=200 characters).
    pub reason: String,
    /// Start (ms since the Unix epoch), in the future.
    pub start_ms: u64,
    /// End (ms since the Unix epoch), after the start.
    pub end_ms: u64,
}

/// A node held out of service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HoldView {
    /// The node's name.
    pub node: String,
    /// The node's id.
    pub node_id: u64,
    /// Why.
    pub reason: String,
    /// When it ends by itself (ms since the Unix epoch).
    pub until_ms: u64,
    /// Who started it.
    pub by: String,
    /// When it started (ms since the Unix epoch).
    pub since_ms: u64,
    /// The window it came from, if it was scheduled.
    pub window: Option<u64>,
}

/// A window scheduled ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WindowView {
    /// Its id (`DELETE /api/v1/maintenance/windows/{id}` cancels it).
    pub id: u64,
    /// The node's name.
    pub node: String,
    /// The node's id.
    pub node_id: u64,
    /// Why.
    pub reason: String,
    /// Who scheduled it.
    pub by: String,
    /// Start (ms since the Unix epoch).
    pub start_ms: u64,
    /// End (ms since the Unix epoch).
    pub end_ms: u64,
}

/// `GET /api/v1/maintenance`: who is held now, what is scheduled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceView {
    /// Nodes in maintenance now.
    pub nodes: Vec<HoldView>,
    /// Windows not yet started, earliest first.
    pub windows: Vec<WindowView>,
}

/// Answer to starting or ending maintenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceOutcome {
    /// The node the role was moved to first, if it was moved.
    pub moved_to: Option<u64>,
    /// What the administrator should know (e.g. the node stays primary).
    pub note: Option<String>,
    /// The maintenance state after the change.
    pub maintenance: MaintenanceView,
}

pub(crate) fn check_node(node: &str, fields: &mut BTreeMap<String, String>) {
    if node.is_empty() || node.len() > MAX_NODE_LEN {
        fields.insert(
            "node".into(),
            format!("must be a node name of 1..={MAX_NODE_LEN} characters"),
        );
    }
}

fn check_reason(reason: &str, fields: &mut BTreeMap<String, String>) {
    let n = reason.chars().count();
    if n == 0 || n > MAX_MAINTENANCE_REASON_LEN || reason.chars().any(char::is_control) {
        fields.insert(
            "reason".into(),
            format!(
                "must be 1..={MAX_MAINTENANCE_REASON_LEN} characters without control characters"
            ),
        );
    }
}

/// Checks a start request's fields.
///
/// # Errors
/// Each bad field and what is wrong with it.
pub fn validate_maintenance_start(req: &MaintenanceStart) -> Result<(), BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    check_node(&req.node, &mut fields);
    check_reason(&req.reason, &mut fields);
    match (req.minutes, req.seconds) {
        (None, None) | (Some(_), Some(_)) => {
            fields.insert(
                "minutes".into(),
                "give exactly one of minutes and seconds".into(),
            );
        }
        (Some(m), None) if m == 0 || m > MAX_MINUTES => {
            fields.insert("minutes".into(), format!("must be 1..={MAX_MINUTES}"));
        }
        (None, Some(s)) if s == 0 || s > MAX_MINUTES * 60 => {
            fields.insert(
                "seconds".into(),
                format!("must be 1..={}", MAX_MINUTES * 60),
            );
        }
        _ => {}
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(fields)
    }
}

/// Checks a window request's fields (times against the node's clock are
/// the node's to check).
///
/// # Errors
/// Each bad field and what is wrong with it.
pub fn validate_window(req: &WindowRequest) -> Result<(), BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    check_node(&req.node, &mut fields);
    check_reason(&req.reason, &mut fields);
    if req.end_ms <= req.start_ms {
        fields.insert("end_ms".into(), "must be after start_ms".into());
    } else if req.end_ms - req.start_ms > MAX_MINUTES * 60_000 {
        fields.insert("end_ms".into(), "the window is longer than a year".into());
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(minutes: Option<u64>, seconds: Option<u64>) -> MaintenanceStart {
        MaintenanceStart {
            node: "a".into(),
            reason: "kernel update".into(),
            minutes,
            seconds,
            force: false,
        }
    }

    #[test]
    fn a_start_needs_one_duration_a_node_and_a_reason() {
        assert_eq!(validate_maintenance_start(&start(Some(30), None)), Ok(()));
        assert_eq!(validate_maintenance_start(&start(None, Some(5))), Ok(()));
        for bad in [
            start(None, None),
            start(Some(1), Some(1)),
            start(Some(0), None),
            start(None, Some(0)),
        ] {
            assert!(validate_maintenance_start(&bad).is_err(), "{bad:?}");
        }
        let mut r = start(Some(1), None);
        r.reason = String::new();
        let e = validate_maintenance_start(&r).expect_err("empty reason");
        assert!(e.contains_key("reason"));
        r.reason = "a\nb".into();
        assert!(validate_maintenance_start(&r).is_err());
        r.reason = "ok".into();
        r.node = String::new();
        let e = validate_maintenance_start(&r).expect_err("no node");
        assert!(e.contains_key("node"));
    }

    #[test]
    fn a_window_ends_after_it_starts() {
        let w = |start_ms, end_ms| WindowRequest {
            node: "b".into(),
            reason: "disk swap".into(),
            start_ms,
            end_ms,
        };
        assert_eq!(validate_window(&w(10, 20)), Ok(()));
        assert!(validate_window(&w(20, 20))
            .expect_err("empty")
            .contains_key("end_ms"));
        assert!(validate_window(&w(20, 10)).is_err());
    }
}
