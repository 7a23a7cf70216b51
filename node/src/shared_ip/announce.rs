//! Announcements of a taken address: gratuitous ARP (IPv4) and unsolicited
//! neighbour advertisements (IPv6), sent in bursts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::driver::DriverError;
use super::spec::SharedIpSpec;

/// Sends `count` announcements of `spec` (blocking syscalls on the blocking
/// pool). Returns how many were sent.
///
/// # Errors
/// The socket cannot be opened or a send fails.
pub async fn announce(
    spec: SharedIpSpec,
    ifindex: u32,
    mac: Option<[u8; 6]>,
    count: u32,
) -> Result<u32, DriverError> {
    if count == 0 {
        return Ok(0);
    }
    tokio::task::spawn_blocking(move || match spec.address {
        IpAddr::V4(ip) => {
            let mac = mac.ok_or_else(|| {
                DriverError(format!(
                    "{}: no Ethernet address, cannot send gratuitous ARP",
                    spec.interface
                ))
            })?;
            send_gratuitous_arp(ifindex, mac, ip, count)
        }
        IpAddr::V6(ip) => send_unsolicited_na(&spec.interface, ifindex, mac, ip, count),
    })
    .await
    .map_err(|e| DriverError(format!("announcement task: {e}")))?
    .map(|()| count)
}

/// The Ethernet frame of a gratuitous ARP request for `ip` from `mac`.
pub fn gratuitous_arp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]); // to broadcast
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac); // sender MAC
    f[28..32].copy_from_slice(&ip.octets()); // sender IP
                                             // target MAC stays zero
    f[38..42].copy_from_slice(&ip.octets()); // target IP = sender IP
    f
}

fn send_gratuitous_arp(
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    count: u32,
) -> Result<(), DriverError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(DriverError(format!(
            "opening an AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let frame = gratuitous_arp_frame(mac, ip);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex =
        i32::try_from(ifindex).map_err(|_| DriverError::new("interface index out of range"))?;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..count {
        // SAFETY: frame and sll are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(DriverError(format!(
                "sending gratuitous ARP for {ip}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// The ICMPv6 body of an unsolicited neighbour advertisement for `ip`
/// (override flag, target link-layer address option when `mac` is known).
/// The kernel fills in the checksum.
pub fn unsolicited_na(ip: Ipv6Addr, mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut p = vec![136u8, 0, 0, 0, 0x20, 0, 0, 0]; // type NA, code, checksum, flags O
    p.extend_from_slice(&ip.octets());
    if let Some(mac) = mac {
        p.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
        p.extend_from_slice(&mac);
    }
    p
}

fn send_unsolicited_na(
    iface: &str,
    ifindex: u32,
    mac: Option<[u8; 6]>,
    ip: Ipv6Addr,
    count: u32,
) -> Result<(), DriverError> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let io = |what: &str, e: std::io::Error| {
        DriverError(format!("neighbour advertisement for {ip}: {what}: {e}"))
    };
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(|e| io("socket", e))?;
    s.set_multicast_hops_v6(255)
        .map_err(|e| io("hop limit", e))?;
    s.set_unicast_hops_v6(255).map_err(|e| io("hop limit", e))?;
    s.set_multicast_if_v6(ifindex)
        .map_err(|e| io("interface", e))?;
    s.bind_device(Some(iface.as_bytes()))
        .map_err(|e| io("bind to device", e))?;
    let scope = if ip.is_unicast_link_local() {
        ifindex
    } else {
        0
    };
    s.bind(&SockAddr::from(std::net::SocketAddrV6::new(
        ip, 0, 0, scope,
    )))
    .map_err(|e| io("bind to the shared address", e))?;
    let to = SockAddr::from(std::net::SocketAddrV6::new(
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        0,
        0,
        ifindex,
    ));
    let packet = unsolicited_na(ip, mac);
    for _ in 0..count {
        s.send_to(&packet, &to).map_err(|e| io("send", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::icmp_checksum;

    #[test]
    fn packets() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = gratuitous_arp_frame(mac, Ipv4Addr::new(198, 51, 100, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[28..32], &f[38..42]);
        let na = unsolicited_na("2001:db8::1".parse().expect("ip"), Some(mac));
        assert_eq!((na[0], na[4], na.len()), (136, 0x20, 32));
        assert_eq!(&na[24..26], &[2, 1]);
        // RFC 1071 example.
        assert_eq!(
            icmp_checksum(&[0, 1, 0xf2, 3, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
