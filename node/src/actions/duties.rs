//! The state of the periodic duties (`failover`): kept in `Node`, so it
//! lives apart from the code that runs them. Plain data.

use std::sync::Mutex;
use std::time::Instant;

use crate::util::SingleFlight;

/// State of the periodic duties.
#[derive(Default)]
pub struct Duties {
    pub(super) busy: SingleFlight,
    inner: Mutex<DutyTimes>,
    /// The maintenance duty (`maintenance::tick`), apart from the others:
    /// a scheduled verify must not delay a window's start.
    pub(super) maintenance: SingleFlight,
    /// When the held primary last tried to move the role away.
    pub(super) maintenance_moved: Mutex<Option<Instant>>,
    /// Whether this node's elections were last turned on or off for
    /// maintenance (`None`: never set).
    pub(super) maintenance_elect: Mutex<Option<bool>>,
    /// The service-check duty (`checks::tick`).
    pub(super) checks: SingleFlight,
    /// When the primary last tried a check-driven move.
    pub(super) check_tried: Mutex<Option<Instant>>,
    /// Why the last check-driven move could not be made (recorded once).
    pub(super) check_blocked: Mutex<Option<String>>,
    /// The failback duty (`failback::tick`).
    pub(super) failback: SingleFlight,
    /// When the primary last looked at the preferred node.
    pub(super) failback_looked: Mutex<Option<Instant>>,
    /// Since when the preferred node has been eligible, without a break.
    pub(super) failback_since: Mutex<Option<Instant>>,
    /// The placement duty (`placement::tick`).
    pub(super) place: SingleFlight,
    /// Whether the record holds this node's place (checked once).
    pub(super) place_current: std::sync::atomic::AtomicBool,
}

/// When each duty last ran.
#[derive(Default)]
pub(super) struct DutyTimes {
    pub(super) started: Option<Instant>,
    pub(super) last_failover_attempt: Option<Instant>,
    pub(super) last_verify: Option<Instant>,
    pub(super) last_cutoff_log: Option<Instant>,
}

impl Duties {
    pub(super) fn times(&self) -> std::sync::MutexGuard<'_, DutyTimes> {
        crate::util::lock(&self.inner)
    }
}
