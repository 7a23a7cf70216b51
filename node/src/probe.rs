//! The one reachability probe: does a gateway or test address answer?
//! Automatic failover asks it before a backup promotes itself, and the
//! shared-IP manager asks it from each shared address after a takeover.
//!
//! - `IP:port`: one TCP connect. An accepted connection **and a refused
//!   one** are answers: a host that sends a reset is up and the path to it
//!   works, which is what is asked; whether a service listens there does
//!   not matter. Silence until the timeout is no answer.
//! - `IP`: one ICMP echo on a raw socket (root or `CAP_NET_RAW`, which the
//!   shared-IP drivers need too).
//!
//! A leaf: sockets and addresses only.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Whether `target` answers within `timeout`, and how fast: `IP:port` by
/// one TCP connect, `IP` by one ICMP echo; from the source address `from`
/// when given (a shared IP), else as the kernel routes it.
///
/// # Errors
/// The target did not answer, or is neither `IP` nor `IP:port`.
pub async fn answers(
    from: Option<IpAddr>,
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

/// The source address shown in errors.
fn source(from: Option<IpAddr>) -> String {
    from.map_or_else(|| "this host".to_string(), |f| f.to_string())
}

fn bind(s: &socket2::Socket, from: Option<IpAddr>) -> Result<(), String> {
    match from {
        Some(from) => s
            .bind(&socket2::SockAddr::from(SocketAddr::new(from, 0)))
            .map_err(|e| format!("binding to {from}: {e}")),
        None => Ok(()),
    }
}

fn tcp_probe(from: Option<IpAddr>, to: SocketAddr, timeout: Duration) -> Result<(), String> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).map_err(|e| e.to_string())?;
    bind(&s, from)?;
    match s.connect_timeout(&SockAddr::from(to), timeout) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!("TCP {} → {to}: {e}", source(from))),
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

fn icmp_probe(from: Option<IpAddr>, to: IpAddr, timeout: Duration) -> Result<(), String> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    if let Some(from) = from.filter(|f| f.is_ipv4() != to.is_ipv4()) {
        return Err(format!("{from} and {to} are of different families"));
    }
    let (domain, proto, req_type, reply_type) = if to.is_ipv4() {
        (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8)
    } else {
        (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8)
    };
    let s = Socket::new(domain, Type::RAW, Some(proto)).map_err(|e| format!("ICMP socket: {e}"))?;
    bind(&s, from)?;
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
        .map_err(|e| format!("ICMP echo {} → {to}: {e}", source(from)))?;
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
        "no ICMP echo reply from {to} to {} within {timeout:?}",
        source(from)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_and_a_refusal_answer_a_full_queue_does_not() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open_addr = open.local_addr().expect("addr").to_string();
        assert!(answers(None, &open_addr, Duration::from_secs(1))
            .await
            .is_ok());

        // A port nobody listens on refuses: the host answered.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        let from = Some(IpAddr::from([127, 0, 0, 1]));
        assert!(
            answers(from, &closed_addr.to_string(), Duration::from_secs(1))
                .await
                .is_ok()
        );

        // A listener that never accepts, its queue full: SYNs are dropped.
        let silent = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        silent
            .bind(&socket2::SockAddr::from(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                0,
            ))))
            .expect("bind");
        silent.listen(0).expect("listen");
        let silent_addr = silent
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        let mut queued = Vec::new();
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&silent_addr, Duration::from_millis(200)) {
                Ok(c) => queued.push(c),
                Err(_) => break,
            }
        }
        let r = answers(None, &silent_addr.to_string(), Duration::from_millis(300)).await;
        assert!(r.is_err(), "a silent address answered: {r:?}");
        assert!(answers(None, "not-an-address", Duration::from_millis(100))
            .await
            .is_err());
    }
}
