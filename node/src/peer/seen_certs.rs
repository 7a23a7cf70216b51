//! The certificates peers presented, as each handshake verified them: the
//! readiness page lists each member's expiry from here.

use std::collections::HashMap;
use std::sync::Mutex;

use tandem_certs::Validity;

/// Each peer's certificate validity, from its latest handshake with this
/// node (either direction).
#[derive(Debug, Default)]
pub struct SeenCerts {
    by_node: Mutex<HashMap<u64, Validity>>,
}

impl SeenCerts {
    /// Node `node` presented the (verified) certificate `der`.
    pub fn saw(&self, node: u64, der: &[u8]) {
        match Validity::of_der(der) {
            Ok(v) => {
                crate::util::lock(&self.by_node).insert(node, v);
            }
            Err(e) => tracing::debug!(node, error = %e, "peer certificate validity unreadable"),
        }
    }

    /// The validity of node `node`'s certificate, if it was seen.
    pub fn get(&self, node: u64) -> Option<Validity> {
        crate::util::lock(&self.by_node).get(&node).copied()
    }
}
