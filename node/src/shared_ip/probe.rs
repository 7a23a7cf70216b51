//! After a takeover: does a gateway or test address answer *from* the
//! shared address? Asked of `crate::probe`, the one probe.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The result of checking that a gateway or test IP answers from the shared address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    /// The epoch of the takeover it was made after.
    pub epoch: u64,
    /// The source address (a shared IP).
    pub from: String,
    /// What was probed (`IP` → ICMP echo, `IP:port` → TCP connect).
    pub target: String,
    /// Whether it answered.
    pub ok: bool,
    /// Round trip or error.
    pub detail: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// Probes `target` with `from` as the source address (see `crate::probe`).
///
/// # Errors
/// The target did not answer, or is neither `IP` nor `IP:port`.
pub async fn check_reachability(
    from: IpAddr,
    target: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    crate::probe::answers(Some(from), target, timeout).await
}
