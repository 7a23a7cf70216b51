//! Joining: the join request and grant, the one-time token's text form
//! (`id.secret.ca-fingerprint`), names and certificate SANs, and the
//! secret helpers tokens use. A leaf: strings and hashes only.

use std::net::IpAddr;

use rand::RngCore;
use tandem_storage::{NodeInfo, NodeKind};

/// SHA-256 of `secret`, hex: how tokens are stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `n` random bytes from the OS generator, hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// `n` random bytes from the OS generator, URL-safe base64 without padding.
pub fn random_secret(n: usize) -> String {
    use base64::Engine;
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a joining node sends.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The one-time token.
    pub token: String,
    /// Its name.
    pub name: String,
    /// Appliance or witness.
    pub kind: NodeKind,
    /// Its advertised peer address.
    pub peer_addr: String,
    /// Its advertised API base URL.
    pub api_addr: String,
    /// Its certificate signing request.
    pub csr_pem: String,
    /// Who asked for it (recorded in the history).
    pub actor: String,
    /// Its site and host identity.
    pub place: crate::placement::Place,
    /// Admit it even if it shares its site or host with the other appliance.
    pub allow_same_site: bool,
}

/// What a joining node receives.
#[derive(Debug, Clone)]
pub struct JoinGrant {
    /// Assigned node id.
    pub node_id: u64,
    /// The cluster id.
    pub cluster_id: String,
    /// Its signed certificate.
    pub cert_pem: String,
    /// The CA certificate.
    pub ca_pem: String,
    /// The CA key, for appliances (so any appliance can sign the next joiner).
    pub ca_key_pem: Option<String>,
}

/// A join token split into its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedToken {
    /// Token id (public, names the stored hash).
    pub id: String,
    /// The secret (only its hash is stored).
    pub secret: String,
    /// SHA-256 fingerprint of the cluster CA, hex.
    pub ca_fingerprint: String,
}

impl ParsedToken {
    /// Splits `id.secret.fingerprint`.
    ///
    /// # Errors
    /// A message saying what is malformed.
    pub fn parse(token: &str) -> Result<Self, String> {
        let mut parts = token.trim().split('.');
        let (Some(id), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed join token (expected id.secret.ca-fingerprint)".into());
        };
        if id.is_empty()
            || secret.is_empty()
            || fp.len() != 64
            || !fp.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err("malformed join token (expected id.secret.ca-fingerprint)".into());
        }
        Ok(Self {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }
}

/// Node names: 1 to 63 characters of letters, digits, `-`, `_`, `.`.
///
/// # Errors
/// A message saying what is wrong.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?}: use 1-63 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Host part of `host:port` or `https://host:port/...`.
pub fn host_of(addr: &str) -> Option<String> {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    let host = if let Some(stripped) = hostport.strip_prefix('[') {
        stripped.split(']').next()?
    } else {
        hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Certificate SANs for a node advertised at these addresses.
///
/// # Errors
/// If either address has no host part.
pub fn sans_for(peer_addr: &str, api_addr: &str) -> Result<Vec<String>, String> {
    let mut sans = Vec::new();
    for a in [peer_addr, api_addr] {
        let h = host_of(a).ok_or_else(|| format!("address {a:?} has no host"))?;
        if !sans.contains(&h) {
            sans.push(h);
        }
    }
    if !sans.iter().any(|s| s == "localhost") {
        sans.push("localhost".into());
    }
    Ok(sans)
}

/// Whether the SAN `name` only means "this machine": an address of
/// 127.0.0.0/8 or `::1` (also IPv4-mapped), or `localhost`. Every node of
/// a cluster on one machine (the demo, the tests) holds these names, and no
/// client takes them for one member, so they are not refused at a join.
pub fn is_loopback_name(name: &str) -> bool {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => name.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

/// Whether two SANs name the same thing: equal addresses (in any spelling),
/// or DNS names equal but for case and a final dot.
fn same_name(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a.to_canonical() == b.to_canonical(),
        (Err(_), Err(_)) => a
            .trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.')),
        _ => false,
    }
}

/// The first of a joiner's certificate `sans` that the certificate of one
/// of `others` (the members but the joiner) also holds, and that member's
/// name. A member's SANs are computed from its advertised addresses, as
/// its certificate's were ([`sans_for`]). Loopback names
/// ([`is_loopback_name`]) are shared by design and never clash.
///
/// A certificate naming another member's address would pass for that
/// member with every client that checks only the address.
pub fn san_held_by_other<'a>(
    sans: &[String],
    others: impl IntoIterator<Item = &'a NodeInfo>,
) -> Option<(String, String)> {
    others.into_iter().find_map(|member| {
        // A member's addresses gave its certificate's SANs once; if they no
        // longer parse, they name nothing to compare with.
        let held = sans_for(&member.peer_addr, &member.api_addr).ok()?;
        sans.iter()
            .filter(|san| !is_loopback_name(san))
            .find(|san| held.iter().any(|h| same_name(san, h)))
            .map(|san| (san.clone(), member.name.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parse() {
        let fp = "ab".repeat(32);
        let t = ParsedToken::parse(&format!("0a1b.s3cret.{fp}")).expect("valid");
        assert_eq!(t.id, "0a1b");
        assert_eq!(t.secret, "s3cret");
        assert!(ParsedToken::parse("a.b").is_err());
        assert!(ParsedToken::parse(&format!("a.b.{fp}.d")).is_err());
        assert!(ParsedToken::parse("a.b.nothex").is_err());
    }

    #[test]
    fn hosts_and_sans() {
        assert_eq!(host_of("127.0.0.1:7001").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("https://[::1]:8443/x").as_deref(), Some("::1"));
        assert_eq!(
            host_of("https://node-a.example:8443").as_deref(),
            Some("node-a.example")
        );
        let sans = sans_for("10.0.0.1:7001", "https://10.0.0.1:8001").expect("valid");
        assert_eq!(sans, vec!["10.0.0.1".to_string(), "localhost".to_string()]);
    }

    fn member(name: &str, peer: &str, api: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            kind: NodeKind::Appliance,
            peer_addr: peer.into(),
            api_addr: api.into(),
        }
    }

    #[test]
    fn loopback_names() {
        for name in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "localhost",
            "LocalHost.",
        ] {
            assert!(is_loopback_name(name), "{name}");
        }
        for name in [
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "fe80::1",
            "localhost.example",
            "a",
        ] {
            assert!(!is_loopback_name(name), "{name}");
        }
    }

    #[test]
    fn a_joiner_may_not_hold_another_members_names() {
        let members = [
            member("a", "10.0.0.1:7001", "https://10.0.0.1:8443"),
            member("b", "node-b.example:7001", "https://[fd00::2]:8443"),
        ];
        let clash = |peer: &str, api: &str| {
            let sans = sans_for(peer, api).expect("valid addresses");
            san_held_by_other(&sans, &members)
        };
        let taken = |address: &str, name: &str| Some((address.to_string(), name.to_string()));
        // Another member's address, by either of the joiner's addresses,
        // whatever the port.
        assert_eq!(
            clash("10.0.0.3:7001", "https://10.0.0.1:9999"),
            taken("10.0.0.1", "a")
        );
        assert_eq!(
            clash("10.0.0.1:7002", "https://10.0.0.3:8443"),
            taken("10.0.0.1", "a")
        );
        // Names compare as names: case, a final dot, an address's spelling.
        assert_eq!(
            clash("NODE-B.example.:7001", "https://10.0.0.3:8443"),
            taken("NODE-B.example.", "b")
        );
        assert_eq!(
            clash("10.0.0.3:7001", "https://[fd00:0::2]:8443"),
            taken("fd00:0::2", "b")
        );
        // Its own addresses are fine.
        assert_eq!(clash("10.0.0.3:7001", "https://10.0.0.3:8443"), None);
        // Loopback names are everyone's: a cluster on one machine.
        let local = [member("a", "127.0.0.1:7001", "https://127.0.0.1:8443")];
        let sans = sans_for("127.0.0.1:7002", "https://127.0.0.1:8444").expect("valid");
        assert_eq!(san_held_by_other(&sans, &local), None);
        let sans = sans_for("[::1]:7002", "https://localhost:8444").expect("valid");
        assert_eq!(san_held_by_other(&sans, &local), None);
        // No member, no clash.
        assert_eq!(san_held_by_other(&sans, &[]), None);
    }

    #[test]
    fn names() {
        assert!(validate_name("node-a.1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
    }
}
