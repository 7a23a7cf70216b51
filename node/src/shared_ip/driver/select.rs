//! The driver `[shared_ip] driver` names.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{SharedIpConfig, SharedIpDriverKind};

use super::netlink::{AnnounceSchedule, NetlinkDriver};
use super::none::NoneDriver;
use super::script::ScriptDriver;
use super::{DriverError, SharedIpDriver};

/// Builds the driver `cfg` names.
///
/// # Errors
/// `script` without a script path.
pub fn driver_from_config(cfg: &SharedIpConfig) -> Result<Arc<dyn SharedIpDriver>, DriverError> {
    Ok(match cfg.driver {
        SharedIpDriverKind::None => Arc::new(NoneDriver::default()),
        SharedIpDriverKind::Netlink => {
            Arc::new(NetlinkDriver::new(AnnounceSchedule::from_config(cfg)))
        }
        SharedIpDriverKind::Script => {
            let script = cfg.script.clone().ok_or_else(|| {
                DriverError::new(
                    "[shared_ip] driver = \"script\" needs script = \"/path/to/command\"",
                )
            })?;
            Arc::new(ScriptDriver::new(
                script,
                Duration::from_secs(cfg.script_timeout_secs.max(1)),
            ))
        }
    })
}
