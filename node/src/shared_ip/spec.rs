//! One shared address as this node holds it: address, prefix and this
//! node's interface, parsed from the replicated settings. Plain data.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::settings::SharedIp;

/// One shared address as this node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SharedIpSpec {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The interface it lives on, on this node.
    pub interface: String,
}

/// A shared-IP entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared IP {input:?}: {reason}")]
pub struct SpecError {
    /// What was given.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

impl SharedIpSpec {
    /// Parses `address/prefix` (`192.0.2.10/24`, `2001:db8::10/64`) for
    /// `interface`. A missing prefix means a host address (/32 or /128).
    ///
    /// # Errors
    /// Malformed address or prefix, unspecified or multicast address, or an
    /// empty or over-long interface name.
    pub fn parse(address: &str, interface: &str) -> Result<Self, SpecError> {
        let err = |reason: String| SpecError {
            input: address.to_owned(),
            reason,
        };
        let (ip, prefix) = match address.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (address.trim(), None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| err(format!("{ip:?} is not an IP address")))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=max).contains(p))
                .ok_or_else(|| err(format!("prefix {p:?} is not in 1..={max}")))?,
        };
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(err("unspecified or multicast address".into()));
        }
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ', '\0']) {
            return Err(err(format!("bad interface name {interface:?}")));
        }
        Ok(Self {
            address: ip,
            prefix,
            interface: interface.to_owned(),
        })
    }

    /// `address/prefix`, the form status and the settings use.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }

    /// Identity of the spec inside the manager.
    pub(crate) fn key(&self) -> String {
        format!("{}@{}", self.cidr(), self.interface)
    }
}

impl fmt::Display for SharedIpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.cidr(), self.interface)
    }
}

/// The specs this node (`node_name`) should hold when primary: every
/// settings entry with an interface for it. Entries without one are skipped
/// (the other node holds them elsewhere or the settings are incomplete);
/// entries that do not parse are returned as errors (the settings API
/// validates them, so this only happens with hand-made documents).
pub fn specs_for_node(shared: &[SharedIp], node_name: &str) -> (Vec<SharedIpSpec>, Vec<SpecError>) {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for s in shared {
        let Some(iface) = s.interfaces.get(node_name) else {
            continue;
        };
        match SharedIpSpec::parse(&s.address, iface) {
            Ok(spec) if !specs.contains(&spec) => specs.push(spec),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    (specs, errors)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::settings::SharedIp;

    fn spec(a: &str) -> SharedIpSpec {
        SharedIpSpec::parse(a, "eth0").expect("valid spec")
    }

    #[test]
    fn parse_specs() {
        let s = spec("192.0.2.10/24");
        assert_eq!(s.address, "192.0.2.10".parse::<IpAddr>().expect("ip"));
        assert_eq!((s.prefix, s.cidr()), (24, "192.0.2.10/24".to_owned()));
        assert_eq!(spec("2001:db8::10/64").cidr(), "2001:db8::10/64");
        assert_eq!(spec("192.0.2.10").prefix, 32);
        for bad in [
            "192.0.2.10/33",
            "192.0.2.10/0",
            "x/24",
            "0.0.0.0/8",
            "224.0.0.1/4",
            "2001:db8::1/129",
        ] {
            assert!(SharedIpSpec::parse(bad, "eth0").is_err(), "{bad}");
        }
        assert!(SharedIpSpec::parse("192.0.2.10/24", "").is_err());
        assert!(SharedIpSpec::parse("192.0.2.10/24", "a-very-long-interface").is_err());
    }

    #[test]
    fn specs_for_a_node() {
        let shared = vec![
            SharedIp {
                address: "192.0.2.10/24".into(),
                interfaces: [
                    ("a".to_owned(), "eth0".to_owned()),
                    ("b".to_owned(), "ens3".to_owned()),
                ]
                .into(),
            },
            SharedIp {
                address: "2001:db8::10/64".into(),
                interfaces: [("a".to_owned(), "eth1".to_owned())].into(),
            },
            SharedIp {
                address: "nonsense".into(),
                interfaces: [("b".to_owned(), "eth0".to_owned())].into(),
            },
        ];
        let (a, errs) = specs_for_node(&shared, "a");
        assert_eq!(a.len(), 2);
        assert!(errs.is_empty());
        let (b, errs) = specs_for_node(&shared, "b");
        assert_eq!(
            b,
            vec![SharedIpSpec::parse("192.0.2.10/24", "ens3").expect("spec")]
        );
        assert_eq!(errs.len(), 1);
        assert!(specs_for_node(&shared, "w").0.is_empty());
    }
}
