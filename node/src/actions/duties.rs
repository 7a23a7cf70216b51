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
