//! After a takeover: does a gateway or test address answer *from* the
//! shared address? One TCP connect (a refusal is an answer) or one ICMP echo.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

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

/// Probes `target` (`IP` → one ICMP echo, `IP:port` → TCP connect; a
/// refused connection counts as an answer) with `from` as the source address.
pub async fn check_reachability(
    from: IpAddr,
    target: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let target = target.trim().to_owned();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        if let Ok(sa) = target.parse::<SocketAddr>() {
            tcp_probe(from, sa, timeout)?;
        } else if let Ok(ip) = target.parse::<IpAddr>() {
            icmp_probe(from, ip, timeout)?;
        } else {
            return Err(format!("{target:?} is neither IP nor IP:port"));
        }
        Ok(start.elapsed())
    })
    .await
    .map_err(|e| format!("probe task: {e}"))?
}

fn tcp_probe(from: IpAddr, to: SocketAddr, timeout: Duration) -> Result<(), String> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).map_err(|e| e.to_string())?;
    s.bind(&SockAddr::from(SocketAddr::new(from, 0)))
        .map_err(|e| format!("binding to {from}: {e}"))?;
    match s.connect_timeout(&SockAddr::from(to), timeout) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!("TCP {from} → {to}: {e}")),
    }
}

pub(crate) fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp_probe(from: IpAddr, to: IpAddr, timeout: Duration) -> Result<(), String> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    if from.is_ipv4() != to.is_ipv4() {
        return Err(format!("{from} and {to} are of different families"));
    }
    let (domain, proto, req_type, reply_type) = if to.is_ipv4() {
        (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8)
    } else {
        (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8)
    };
    let s = Socket::new(domain, Type::RAW, Some(proto)).map_err(|e| format!("ICMP socket: {e}"))?;
    s.bind(&SockAddr::from(SocketAddr::new(from, 0)))
        .map_err(|e| format!("binding to {from}: {e}"))?;
    let id = (std::process::id() as u16) ^ 0x7464;
    let seq = rand::random::<u16>();
    let mut p = vec![req_type, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"tandem-shared-ip");
    if to.is_ipv4() {
        let c = icmp_checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    s.send_to(&p, &SockAddr::from(SocketAddr::new(to, 0)))
        .map_err(|e| format!("ICMP echo {from} → {to}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    // Bounded: ends at the deadline or after 1000 unrelated packets.
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let (n, src) = match s.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(format!("ICMP receive: {e}")),
        };
        // SAFETY: recv_from initialised the first n bytes.
        let data: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if src.as_socket().map(|a| a.ip()) != Some(to) {
            continue;
        }
        // IPv4 raw sockets deliver the IP header too.
        let icmp = if to.is_ipv4() {
            let ihl = usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4;
            data.get(ihl..).unwrap_or(&[])
        } else {
            &data[..]
        };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(());
        }
    }
    Err(format!(
        "no ICMP echo reply from {to} to {from} within {timeout:?}"
    ))
}
