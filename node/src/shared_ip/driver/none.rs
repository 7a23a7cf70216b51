//! The `none` driver: logs what it would do, changes nothing on the system.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::util::lock;

use super::super::spec::SharedIpSpec;
use super::{BoxFuture, DriverError, SharedIpDriver};

/// Logs only and holds nothing on the system; remembers what it "acquired"
/// so that status shows something meaningful in the demo.
#[derive(Debug, Default)]
pub struct NoneDriver {
    held: Mutex<BTreeSet<SharedIpSpec>>,
}

impl SharedIpDriver for NoneDriver {
    fn name(&self) -> &'static str {
        "none"
    }
    fn acquire<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            tracing::info!(%spec, epoch, "shared IP acquired (driver none: nothing changed on the system)");
            lock(&self.held).insert(spec.clone());
            Ok("driver none: logged only".to_owned())
        })
    }
    fn release<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            tracing::info!(%spec, epoch, "shared IP released (driver none: nothing changed on the system)");
            lock(&self.held).remove(spec);
            Ok("driver none: logged only".to_owned())
        })
    }
    fn held<'a>(
        &'a self,
        specs: &'a [SharedIpSpec],
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let held = lock(&self.held);
            Ok(specs
                .iter()
                .filter(|s| held.contains(*s))
                .map(SharedIpSpec::cidr)
                .collect())
        })
    }
}
