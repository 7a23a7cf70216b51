//! Validation of `PUT /api/v1/settings` bodies: pure, no backend needed, so
//! the node can run the same checks on settings it receives another way
//! (CLI, replicated command).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use crate::backend::SettingsUpdate;
use crate::maintenance::{MAINTENANCE_MAX_MINUTES, MAINTENANCE_REMINDER_SECS};

/// Allowed primary timeout (ms).
pub const PRIMARY_TIMEOUT_MS: RangeInclusive<u64> = 300..=60_000;
/// Most connectivity test targets.
pub const MAX_TEST_IPS: usize = 8;
/// Allowed verify interval (s) when not 0 (off): one minute to one week.
pub const VERIFY_INTERVAL_SECS: RangeInclusive<u64> = 60..=604_800;
/// Smallest bandwidth limit (bytes/s) when not 0 (unlimited).
pub const MIN_BANDWIDTH_BPS: u64 = 65_536;
/// Most shared IPs.
pub const MAX_SHARED_IPS: usize = 16;
/// Longest interface name (Linux `IFNAMSIZ - 1`).
pub const MAX_INTERFACE_LEN: usize = 15;
/// Longest node name (as the node accepts them).
const MAX_NODE_NAME_LEN: usize = 63;

/// Checks a settings update field by field.
///
/// Rules: `primary_timeout_ms` 300..=60000; `test_ips` at most 8, each an
/// IP address (ICMP) or `IP:port` (TCP, port not 0), no duplicates, not
/// unspecified or multicast; `verify_interval_secs` 0 (off) or
/// 60..=604800; `bandwidth_limit_bps` 0 (unlimited) or >= 65536;
/// `shared_ips` at most 16, each `address/prefix` with prefix 1..=32 (IPv4)
/// or 1..=128 (IPv6), not unspecified or multicast, no duplicate address,
/// and an `interfaces` map of at least one node name (1..=63 chars of
/// `[A-Za-z0-9._-]`) to an interface name (1..=15 chars of
/// `[A-Za-z0-9._-]`); `maintenance_max_minutes` 1..=525600;
/// `maintenance_reminder_secs` 0..=604800.
///
/// # Errors
/// Every problem found, keyed by field path: `primary_timeout_ms`,
/// `test_ips`, `test_ips[2]`, `shared_ips`, `shared_ips[0].address`,
/// `shared_ips[0].interfaces`, `shared_ips[0].interfaces.<node>`…
pub fn validate_settings(update: &SettingsUpdate) -> Result<(), BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();

    if !PRIMARY_TIMEOUT_MS.contains(&update.primary_timeout_ms) {
        errors.insert(
            "primary_timeout_ms".to_owned(),
            format!(
                "must be between {} and {}",
                PRIMARY_TIMEOUT_MS.start(),
                PRIMARY_TIMEOUT_MS.end()
            ),
        );
    }

    if !MAINTENANCE_MAX_MINUTES.contains(&update.maintenance_max_minutes) {
        errors.insert(
            "maintenance_max_minutes".to_owned(),
            format!(
                "must be between {} and {}",
                MAINTENANCE_MAX_MINUTES.start(),
                MAINTENANCE_MAX_MINUTES.end()
            ),
        );
    }
    if !MAINTENANCE_REMINDER_SECS.contains(&update.maintenance_reminder_secs) {
        errors.insert(
            "maintenance_reminder_secs".to_owned(),
            format!("must be at most {}", MAINTENANCE_REMINDER_SECS.end()),
        );
    }

    crate::checks::validate_checks(&update.checks, &mut errors);
    if let crate::backend::Failback::Preferred {
        preferred,
        delay_secs,
    } = &update.failback
    {
        if !is_name(preferred, MAX_NODE_NAME_LEN) {
            errors.insert(
                "failback.preferred".to_owned(),
                "must be a node name".to_owned(),
            );
        }
        if *delay_secs > 86_400 {
            errors.insert(
                "failback.delay_secs".to_owned(),
                "must be at most 86400".to_owned(),
            );
        }
    }
    if !crate::checks::CHECK_HOLD_DOWN_SECS.contains(&update.check_hold_down_secs) {
        errors.insert(
            "check_hold_down_secs".to_owned(),
            format!(
                "must be at most {}",
                crate::checks::CHECK_HOLD_DOWN_SECS.end()
            ),
        );
    }

    if update.test_ips.len() > MAX_TEST_IPS {
        errors.insert(
            "test_ips".to_owned(),
            format!("at most {MAX_TEST_IPS} test addresses"),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, target) in update.test_ips.iter().enumerate() {
        let problem = match parse_test_target(target) {
            Err(e) => Some(e),
            Ok(parsed) if !seen.insert(parsed) => Some("duplicate test address".to_owned()),
            Ok(_) => None,
        };
        if let Some(p) = problem {
            errors.insert(format!("test_ips[{i}]"), p);
        }
    }

    let v = update.verify_interval_secs;
    if v != 0 && !VERIFY_INTERVAL_SECS.contains(&v) {
        errors.insert(
            "verify_interval_secs".to_owned(),
            format!(
                "must be 0 (off) or between {} and {}",
                VERIFY_INTERVAL_SECS.start(),
                VERIFY_INTERVAL_SECS.end()
            ),
        );
    }

    let b = update.bandwidth_limit_bps;
    if b != 0 && b < MIN_BANDWIDTH_BPS {
        errors.insert(
            "bandwidth_limit_bps".to_owned(),
            format!("must be 0 (unlimited) or at least {MIN_BANDWIDTH_BPS}"),
        );
    }

    if update.shared_ips.len() > MAX_SHARED_IPS {
        errors.insert(
            "shared_ips".to_owned(),
            format!("at most {MAX_SHARED_IPS} shared IPs"),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, ip) in update.shared_ips.iter().enumerate() {
        match parse_cidr(&ip.address) {
            Err(e) => {
                errors.insert(format!("shared_ips[{i}].address"), e);
            }
            Ok((addr, _)) if !seen.insert(addr) => {
                errors.insert(
                    format!("shared_ips[{i}].address"),
                    "duplicate address".to_owned(),
                );
            }
            Ok(_) => {}
        }
        if ip.interfaces.is_empty() {
            errors.insert(
                format!("shared_ips[{i}].interfaces"),
                "must name the interface of at least one node".to_owned(),
            );
        }
        for (node, iface) in &ip.interfaces {
            if !is_name(node, MAX_NODE_NAME_LEN) {
                errors.insert(
                    format!("shared_ips[{i}].interfaces"),
                    format!(
                        "node names must be 1..={MAX_NODE_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
                    ),
                );
            } else if !is_name(iface, MAX_INTERFACE_LEN) {
                errors.insert(
                    format!("shared_ips[{i}].interfaces.{node}"),
                    format!(
                        "interface names must be 1..={MAX_INTERFACE_LEN} characters of A-Z a-z 0-9 . _ -"
                    ),
                );
            }
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A connectivity test target: `IP` (ICMP) or `IP:port` / `[IPv6]:port`
/// (TCP).
fn parse_test_target(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let (ip, port) = if let Ok(ip) = s.parse::<IpAddr>() {
        (ip, None)
    } else if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err("TCP port must not be 0".to_owned());
        }
        (sa.ip(), Some(sa.port()))
    } else {
        return Err("must be an IP address (ICMP) or IP:port / [IPv6]:port (TCP)".to_owned());
    };
    if ip.is_unspecified() || ip.is_multicast() {
        return Err("must be a unicast, specified address".to_owned());
    }
    Ok((ip, port))
}

/// `address/prefix` with the prefix in range for the address family.
fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, prefix)) = s.split_once('/') else {
        return Err("must be address/prefix, e.g. 192.0.2.10/24 or 2001:db8::10/64".to_owned());
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=max).contains(p) && !prefix.starts_with('+'))
        .ok_or_else(|| format!("prefix must be between 1 and {max}"))?;
    if addr.is_unspecified() || addr.is_multicast() {
        return Err("must be a unicast, specified address".to_owned());
    }
    Ok((addr, prefix))
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SharedIpView;

    fn valid() -> SettingsUpdate {
        SettingsUpdate {
            primary_timeout_ms: 3_000,
            auto_failover: true,
            test_ips: vec!["192.0.2.1".into(), "[2001:db8::1]:443".into()],
            verify_interval_secs: 3_600,
            bandwidth_limit_bps: 0,
            backup_operations: false,
            shared_ips: vec![SharedIpView {
                address: "2001:db8::10/64".into(),
                interfaces: [("a".to_owned(), "eth0".to_owned())].into(),
            }],
            maintenance_max_minutes: 60,
            maintenance_reminder_secs: 0,
            checks: Vec::new(),
            check_hold_down_secs: 300,
            failback: crate::backend::Failback::default(),
            if_version: None,
        }
    }

    fn keys(u: &SettingsUpdate) -> Vec<String> {
        validate_settings(u)
            .err()
            .map(|m| m.into_keys().collect())
            .unwrap_or_default()
    }

    #[test]
    fn accepts_valid_and_bounds() {
        assert_eq!(validate_settings(&valid()), Ok(()));
        let mut u = valid();
        u.primary_timeout_ms = 300;
        u.verify_interval_secs = 0;
        u.bandwidth_limit_bps = MIN_BANDWIDTH_BPS;
        u.test_ips = (1..=8).map(|i| format!("10.0.0.{i}:22")).collect();
        u.shared_ips = (1..=16)
            .map(|i| SharedIpView {
                address: format!("10.1.0.{i}/32"),
                interfaces: [("n-1".to_owned(), "a".repeat(15))].into(),
            })
            .collect();
        assert_eq!(validate_settings(&u), Ok(()));
    }

    #[test]
    fn failback_is_off_or_a_node_with_a_delay() {
        let mut u = valid();
        let parsed: crate::backend::Failback =
            serde_json::from_str(r#""off""#).expect("off parses");
        assert_eq!(parsed, crate::backend::Failback::default());
        u.failback = serde_json::from_str(r#"{"preferred": "a", "delay_secs": 60}"#)
            .expect("a preference parses");
        assert_eq!(validate_settings(&u), Ok(()));
        u.failback = crate::backend::Failback::Preferred {
            preferred: "no such name!".into(),
            delay_secs: 90_000,
        };
        assert_eq!(keys(&u), vec!["failback.delay_secs", "failback.preferred"]);
        assert!(serde_json::from_str::<crate::backend::Failback>(r#""on""#).is_err());
    }

    #[test]
    fn maintenance_bounds() {
        let mut u = valid();
        u.maintenance_max_minutes = 0;
        u.maintenance_reminder_secs = 604_801;
        assert_eq!(
            keys(&u),
            vec!["maintenance_max_minutes", "maintenance_reminder_secs"]
        );
        u.maintenance_max_minutes = 525_600;
        u.maintenance_reminder_secs = 604_800;
        assert_eq!(validate_settings(&u), Ok(()));
    }

    #[test]
    fn cidr() {
        assert!(parse_cidr("192.0.2.10/24").is_ok());
        assert!(parse_cidr("192.0.2.10/32").is_ok());
        assert!(parse_cidr("2001:db8::10/128").is_ok());
        for bad in [
            "192.0.2.10",
            "192.0.2.10/0",
            "192.0.2.10/33",
            "192.0.2.10/+8",
            "2001:db8::10/129",
            "0.0.0.0/8",
            "224.0.0.1/4",
            "host/24",
            "/24",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_targets() {
        assert!(parse_test_target("192.0.2.1").is_ok());
        assert!(parse_test_target("2001:db8::1").is_ok());
        assert!(parse_test_target("192.0.2.1:80").is_ok());
        for bad in [
            "example.com",
            "192.0.2.1:0",
            "0.0.0.0",
            "ff02::1",
            "1.2.3",
            "",
        ] {
            assert!(parse_test_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn duplicates_and_names() {
        let mut u = valid();
        u.test_ips = vec!["192.0.2.1".into(), "192.0.2.1".into()];
        assert_eq!(keys(&u), ["test_ips[1]"]);
        let mut u = valid();
        u.shared_ips.push(u.shared_ips[0].clone());
        assert_eq!(keys(&u), ["shared_ips[1].address"]);
        let mut u = valid();
        u.shared_ips[0].interfaces = [("bad name".to_owned(), "eth0".to_owned())].into();
        assert_eq!(keys(&u), ["shared_ips[0].interfaces"]);
        u.shared_ips[0].interfaces = BTreeMap::new();
        assert_eq!(keys(&u), ["shared_ips[0].interfaces"]);
        u.shared_ips[0].interfaces = [("a".to_owned(), "eth0:1".to_owned())].into();
        assert_eq!(keys(&u), ["shared_ips[0].interfaces.a"]);
    }
}
