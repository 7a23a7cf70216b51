//! How many connections the peer listener keeps, and what each socket is
//! told before its handshake.
//!
//! Peers are few (two appliances and a witness), and each keeps a handful
//! of connections to another (a pool of four, an append stream, a call
//! beyond the pool now and then): the caps leave them ample room while a
//! flood of strangers holds at most [`PEER_CONNS_PER_ADDRESS`] places per
//! address, each for at most the pre-hello bound. A connection beyond the
//! caps is closed at once, before its handshake.
//!
//! After the hello a connection is never cut for being idle (an append
//! stream or a pooled connection may be silent for long), so a peer whose
//! host vanished without closing must not hold its places forever: TCP
//! keepalive and `TCP_USER_TIMEOUT` close such a connection within about
//! a minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::util::lock;

/// Peer connections kept open in all.
pub const PEER_CONNS_TOTAL: usize = 256;
/// Peer connections kept open from one address.
pub const PEER_CONNS_PER_ADDRESS: usize = 64;
/// A silent connection is probed after this long…
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// …then every this long…
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// …this many times before it is closed.
const KEEPALIVE_PROBES: u32 = 3;
/// Data the other end has not acknowledged for this long closes the
/// connection (keepalive probes only run while nothing is unacknowledged).
const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Open peer connections per source address.
#[derive(Default)]
pub struct OpenPeers {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted peer connection; gives its place back when dropped.
pub struct PeerPlace {
    open: Arc<Mutex<OpenPeers>>,
    ip: IpAddr,
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut o = lock(&self.open);
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.by_address.remove(&self.ip);
            }
        }
    }
}

/// A place for a connection from `ip`, if the caps leave one.
pub fn admit(open: &Arc<Mutex<OpenPeers>>, ip: IpAddr) -> Option<PeerPlace> {
    let mut o = lock(open);
    let here = o.by_address.get(&ip).copied().unwrap_or(0);
    if o.total >= PEER_CONNS_TOTAL || here >= PEER_CONNS_PER_ADDRESS {
        return None;
    }
    o.total += 1;
    *o.by_address.entry(ip).or_insert(0) += 1;
    Some(PeerPlace {
        open: Arc::clone(open),
        ip,
    })
}

/// How often a refusal beyond the caps is logged at `warn`.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);

/// Connections refused beyond the caps: the first is logged at `warn`,
/// then at most one line per [`REFUSAL_LOG_EVERY`] with the count since,
/// so a flood shows in the log without filling it.
#[derive(Default)]
pub struct Refusals {
    since_log: u64,
    logged_at: Option<std::time::Instant>,
}

impl Refusals {
    /// A connection from `remote` was refused.
    pub fn note(&mut self, remote: std::net::SocketAddr) {
        self.since_log += 1;
        let due = self
            .logged_at
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY);
        if due {
            tracing::warn!(
                %remote,
                refused = self.since_log,
                total_cap = PEER_CONNS_TOTAL,
                per_address_cap = PEER_CONNS_PER_ADDRESS,
                "peer connections refused: too many open"
            );
            self.since_log = 0;
            self.logged_at = Some(std::time::Instant::now());
        } else {
            tracing::debug!(%remote, "peer connection refused: too many open");
        }
    }
}

/// Sets what an accepted peer socket needs: no Nagle delay, and the
/// keepalive and user timeout that close it when its other end vanished.
/// A failure only costs that bound, so it is logged, not returned.
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| sock.set_tcp_user_timeout(Some(USER_TIMEOUT)))
    {
        tracing::debug!(error = %e, "cannot set TCP keepalive on a peer connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_all_and_places_come_back() {
        let open = Arc::new(Mutex::new(OpenPeers::default()));
        let a: IpAddr = "10.0.0.1".parse().expect("an address");
        let mut held: Vec<PeerPlace> = (0..PEER_CONNS_PER_ADDRESS)
            .map(|_| admit(&open, a).expect("within the per-address cap"))
            .collect();
        assert!(admit(&open, a).is_none(), "beyond the per-address cap");
        held.pop();
        assert!(admit(&open, a).is_some(), "a closed place comes back");

        let open = Arc::new(Mutex::new(OpenPeers::default()));
        let mut held = Vec::new();
        for n in 0..PEER_CONNS_TOTAL {
            let ip = IpAddr::from([10, 0, (n / 200) as u8, (n % 200) as u8]);
            held.push(admit(&open, ip).expect("within the total cap"));
        }
        let other: IpAddr = "10.9.9.9".parse().expect("an address");
        assert!(admit(&open, other).is_none(), "beyond the total cap");
        drop(held);
        assert_eq!(lock(&open).total, 0);
        assert!(lock(&open).by_address.is_empty());
    }
}
