//! How an address is taken and given up: the [`SharedIpDriver`] trait and
//! its three drivers, chosen by `[shared_ip] driver`.
//!
//! - [`netlink`]: Linux netlink add/remove, then announcements.
//! - [`script`]: the administrator's command (cloud floating-IP APIs).
//! - [`none`]: logs only (the demo default).

pub mod netlink;
pub mod none;
pub mod script;
pub mod select;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use super::spec::SharedIpSpec;

/// A boxed, sendable future (keeps [`SharedIpDriver`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A driver failure, with whatever the driver could say about it (for a
/// script: its exit status and output).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

impl DriverError {
    pub(crate) fn new(what: impl fmt::Display) -> Self {
        Self(what.to_string())
    }
}

/// How shared addresses are taken and given up.
///
/// `acquire` and `release` are idempotent and return a human-readable note
/// for the history (a script's output, "already present"…). `held` asks the
/// system (not the driver's memory, where it can) which of `specs` are
/// present now and returns their `address/prefix`.
pub trait SharedIpDriver: Send + Sync {
    /// `none`, `netlink` or `script`.
    fn name(&self) -> &'static str;
    /// Takes `spec` for `epoch` (and announces it).
    fn acquire<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>>;
    /// Gives `spec` up.
    fn release<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>>;
    /// Which of `specs` are present now (`address/prefix`).
    fn held<'a>(
        &'a self,
        specs: &'a [SharedIpSpec],
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>>;
}
