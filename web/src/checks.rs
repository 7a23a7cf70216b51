//! Service checks in the API: the `checks` entries of the settings, their
//! validation, and the view of a check's state. A leaf: it uses no other
//! module of this crate.
//!
//! What a check does and how its state moves the role is the node's.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most checks.
pub const MAX_CHECKS: usize = 16;
/// Allowed interval between two runs of a check (ms).
pub const CHECK_INTERVAL_MS: RangeInclusive<u64> = 100..=3_600_000;
/// Allowed `rise` and `fall`.
pub const CHECK_COUNT: RangeInclusive<u32> = 1..=100;
/// Allowed hold-down after a check-driven move (s).
pub const CHECK_HOLD_DOWN_SECS: RangeInclusive<u64> = 0..=86_400;
/// Default hold-down after a check-driven move (s).
pub const DEFAULT_CHECK_HOLD_DOWN_SECS: u64 = 300;
/// Longest check name.
const MAX_NAME_LEN: usize = 64;
/// Longest target, argument or body substring.
const MAX_TEXT_LEN: usize = 1024;
/// Most arguments of an `exec` check.
const MAX_ARGS: usize = 32;

/// One service check (an entry of `checks` in the settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Unique name (1..=64 of `[A-Za-z0-9._-]`), as the history names it.
    pub name: String,
    /// `http` (a URL answers with the expected status), `tcp` (`host:port`
    /// accepts a connection) or `exec` (a command exits 0; no shell).
    pub kind: String,
    /// The URL (`http`) or `host:port` (`tcp`) every node checks, unless
    /// `targets` names its own.
    #[serde(default)]
    pub target: String,
    /// Per-node targets: node name → URL or `host:port`.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    /// `exec`: the program and its arguments (run without a shell; its
    /// output is kept to 4 KiB).
    #[serde(default)]
    pub command: Vec<String>,
    /// The nodes that run it (names); empty: every appliance.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Time between two runs (ms), 100..=3600000; default 2000.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Longest run (ms), at least 10 and at most the interval; default 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Successes in a row before a failing check is healthy again
    /// (1..=100; default 2).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures in a row before a healthy check is failing (1..=100;
    /// default 3).
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// `http`: the status that means healthy (default 200).
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// `http`: a text the body must contain, if any.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// `http` with `https://`: verify the server's certificate (default on).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
}

fn default_interval_ms() -> u64 {
    2_000
}
fn default_timeout_ms() -> u64 {
    1_000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_status() -> u16 {
    200
}
fn default_true() -> bool {
    true
}

/// The default hold-down, for serde.
pub(crate) fn default_hold_down_secs() -> u64 {
    DEFAULT_CHECK_HOLD_DOWN_SECS
}

/// A check's state on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckView {
    /// The check's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// What this node checks (URL, `host:port` or the command).
    pub target: String,
    /// `healthy`, `failing`, or `unknown` (not enough results yet).
    pub state: String,
    /// Whether the last run succeeded, if it ran.
    pub last_ok: Option<bool>,
    /// When it last ran (ms since the Unix epoch).
    pub last_run_ms: Option<u64>,
    /// When its state last changed (ms since the Unix epoch).
    pub last_change_ms: Option<u64>,
    /// Results in a row like the last one.
    pub streak: u32,
    /// What the last run said (an error, a status, the command's output),
    /// at most 200 characters.
    pub output: String,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn host_port_ok(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && s.len() <= MAX_TEXT_LEN
        && port.parse::<u16>().is_ok_and(|p| p != 0)
        && !host.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn url_ok(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://"))
        && s.len() <= MAX_TEXT_LEN
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Checks the `checks` of a settings update; problems keyed
/// `checks[i].field`.
pub(crate) fn validate_checks(checks: &[CheckSpec], errors: &mut BTreeMap<String, String>) {
    if checks.len() > MAX_CHECKS {
        errors.insert("checks".into(), format!("at most {MAX_CHECKS} checks"));
        return;
    }
    let mut names = BTreeSet::new();
    for (i, c) in checks.iter().enumerate() {
        let mut bad = |field: &str, what: String| {
            errors.insert(format!("checks[{i}].{field}"), what);
        };
        if !name_ok(&c.name) {
            bad(
                "name",
                format!("1..={MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"),
            );
        } else if !names.insert(c.name.clone()) {
            bad("name", "used by another check".into());
        }
        let target_ok: fn(&str) -> bool = match c.kind.as_str() {
            "http" => url_ok,
            "tcp" => host_port_ok,
            "exec" => |_| true,
            _ => {
                bad("kind", "must be http, tcp or exec".into());
                continue;
            }
        };
        if c.kind == "exec" {
            if c.command.is_empty()
                || c.command.len() > MAX_ARGS
                || c.command
                    .iter()
                    .any(|a| a.len() > MAX_TEXT_LEN || a.contains('\0'))
                || c.command[0].is_empty()
            {
                bad(
                    "command",
                    format!("a program and at most {} arguments", MAX_ARGS - 1),
                );
            }
        } else {
            let what = if c.kind == "http" {
                "an http:// or https:// URL"
            } else {
                "host:port"
            };
            if c.target.is_empty() && c.targets.is_empty() {
                bad(
                    "target",
                    format!("must be {what} (or give targets per node)"),
                );
            } else if !c.target.is_empty() && !target_ok(&c.target) {
                bad("target", format!("must be {what}"));
            }
            for (node, t) in &c.targets {
                if !target_ok(t) {
                    bad(&format!("targets.{node}"), format!("must be {what}"));
                }
            }
        }
        if !CHECK_INTERVAL_MS.contains(&c.interval_ms) {
            bad(
                "interval_ms",
                format!(
                    "must be between {} and {}",
                    CHECK_INTERVAL_MS.start(),
                    CHECK_INTERVAL_MS.end()
                ),
            );
        }
        if c.timeout_ms < 10 || c.timeout_ms > c.interval_ms {
            bad(
                "timeout_ms",
                "must be at least 10 and at most interval_ms".into(),
            );
        }
        for (field, v) in [("rise", c.rise), ("fall", c.fall)] {
            if !CHECK_COUNT.contains(&v) {
                bad(field, "must be between 1 and 100".into());
            }
        }
        if !(100..=599).contains(&c.expect_status) {
            bad("expect_status", "must be an HTTP status (100..=599)".into());
        }
        if c.body_contains
            .as_ref()
            .is_some_and(|b| b.len() > MAX_TEXT_LEN)
        {
            bad("body_contains", format!("at most {MAX_TEXT_LEN} bytes"));
        }
        if c.nodes.iter().any(|n| !name_ok(n)) {
            bad("nodes", "node names".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(name: &str) -> CheckSpec {
        CheckSpec {
            name: name.into(),
            kind: "http".into(),
            target: "http://127.0.0.1:8080/health".into(),
            targets: BTreeMap::new(),
            command: Vec::new(),
            nodes: Vec::new(),
            interval_ms: 1_000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
            expect_status: 200,
            body_contains: None,
            tls_verify: true,
        }
    }

    fn problems(checks: &[CheckSpec]) -> Vec<String> {
        let mut e = BTreeMap::new();
        validate_checks(checks, &mut e);
        e.into_keys().collect()
    }

    #[test]
    fn good_checks_pass() {
        let mut tcp = http("db");
        tcp.kind = "tcp".into();
        tcp.target = "[::1]:5432".into();
        let mut exec = http("script");
        exec.kind = "exec".into();
        exec.target = String::new();
        exec.command = vec!["/bin/true".into()];
        let mut per_node = http("web");
        per_node.target = String::new();
        per_node.targets = [("a".to_string(), "https://a.example/".to_string())].into();
        assert_eq!(
            problems(&[http("apache"), tcp, exec, per_node]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut c = http("x y");
        c.interval_ms = 50;
        c.timeout_ms = 5;
        c.rise = 0;
        c.fall = 101;
        c.expect_status = 42;
        c.target = "ftp://x".into();
        assert_eq!(
            problems(&[c]),
            vec![
                "checks[0].expect_status",
                "checks[0].fall",
                "checks[0].interval_ms",
                "checks[0].name",
                "checks[0].rise",
                "checks[0].target",
                "checks[0].timeout_ms",
            ]
        );
        let mut exec = http("e");
        exec.kind = "exec".into();
        assert_eq!(problems(&[exec]), vec!["checks[0].command"]);
        let mut k = http("k");
        k.kind = "icmp".into();
        assert_eq!(problems(&[k]), vec!["checks[0].kind"]);
        assert_eq!(problems(&[http("d"), http("d")]), vec!["checks[1].name"]);
        let mut tcp = http("t");
        tcp.kind = "tcp".into();
        tcp.target = "nohostport".into();
        assert_eq!(problems(&[tcp]), vec!["checks[0].target"]);
        let many: Vec<CheckSpec> = (0..17).map(|i| http(&format!("c{i}"))).collect();
        assert_eq!(problems(&many), vec!["checks"]);
    }
}
