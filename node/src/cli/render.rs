//! How the CLI prints what nodes answer: status, relationship, settings,
//! history, readiness, swap and sync outcomes. Pure functions of views.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::failure::Failure;
use tandem_web::{
    HistoryPage, MaintenanceView, ReadinessView, SettingsView, StatusView, SwapOutcome, SyncReport,
};

pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The cluster view as a readable table.
pub fn render_status(v: &Value) -> String {
    let leader = v.get("leader").and_then(Value::as_u64);
    let mut out = format!(
        "cluster {}  term {}  leader {}\n",
        cell(v.get("cluster_id").unwrap_or(&Value::Null)),
        cell(v.get("term").unwrap_or(&Value::Null)),
        leader.map_or("none".to_string(), |l| l.to_string()),
    );
    let header = [
        "ID",
        "NAME",
        "KIND",
        "ROLE",
        "PEER",
        "API",
        "LAST LOG",
        "COMMITTED",
        "APPLIED",
        "REACHABLE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let empty = Vec::new();
    for m in v.get("members").and_then(Value::as_array).unwrap_or(&empty) {
        let id = m.get("id").and_then(Value::as_u64);
        let voter = m.get("voter").and_then(Value::as_bool).unwrap_or(false);
        let role = if id.is_some() && id == leader {
            "leader"
        } else if voter {
            "voter"
        } else {
            "learner"
        };
        let g = |k: &str| cell(m.get(k).unwrap_or(&Value::Null));
        rows.push(vec![
            g("id"),
            g("name"),
            g("kind"),
            role.to_string(),
            g("peer_addr"),
            g("api_addr"),
            g("last_log_index"),
            g("committed_index"),
            g("applied_index"),
            g("reachable"),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// Rows (the first is the header) as left-aligned columns two spaces apart.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub(crate) fn render_swap(out: &SwapOutcome, n: &BTreeMap<u64, String>) -> String {
    let mut s = String::new();
    if out.demoted {
        let _ = writeln!(s, "STOOD DOWN:   {}", out.warning.as_deref().unwrap_or(""));
    }
    let primary = if out.demoted {
        "none".to_string()
    } else {
        node_label(n, out.new_primary)
    };
    let _ = writeln!(s, "new primary:  {primary}");
    let _ = writeln!(
        s,
        "was:          {}",
        out.previous_primary
            .map_or("none".to_string(), |p| node_label(n, p))
    );
    let _ = writeln!(s, "epoch:        {}", out.epoch);
    let _ = writeln!(s, "duration:     {} ms", out.duration_ms);
    let _ = writeln!(s, "forced:       {}", yes_no(out.forced));
    let _ = writeln!(s, "pull sync:    {}", yes_no(out.pull_sync));
    if let Some(sync) = &out.sync {
        for line in render_sync(sync).lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

pub(crate) fn opt(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

pub(crate) fn render_sync(r: &SyncReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "backup:       node {}", r.backup);
    let _ = writeln!(s, "bytes:        {}", r.bytes);
    let _ = writeln!(s, "entries:      {}", r.entries);
    let _ = writeln!(s, "duration:     {} ms", r.duration_ms);
    let _ = writeln!(s, "indexes:      {} -> {}", opt(r.from_index), r.to_index);
    let _ = writeln!(s, "snapshot:     {}", yes_no(r.snapshot));
    if let Some(v) = &r.verify {
        let _ = writeln!(s, "verify index: {}", v.index);
        let _ = writeln!(s, "local digest: {}", v.local_digest);
        let _ = writeln!(s, "peer digest:  {}", v.peer_digest);
        let _ = writeln!(
            s,
            "verify:       {}",
            if v.matches { "MATCH" } else { "MISMATCH" }
        );
    }
    s
}

/// `ms` since the Unix epoch as ISO 8601 UTC with milliseconds.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// How long ago `then_ms` was, e.g. `0.3 s ago`, `5 min ago`.
pub fn age(then_ms: u64, now_ms: u64) -> String {
    let d = now_ms.saturating_sub(then_ms);
    if d < 60_000 {
        format!("{}.{} s ago", d / 1000, d % 1000 / 100)
    } else if d < 3_600_000 {
        format!("{} min ago", d / 60_000)
    } else if d < 86_400_000 {
        format!("{} h ago", d / 3_600_000)
    } else {
        format!("{} d ago", d / 86_400_000)
    }
}

pub(crate) fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The settings, one `key value` line each after a version line, every
/// line starting with `indent`.
pub fn render_settings(v: &SettingsView, indent: &str) -> String {
    let mut s = String::new();
    let mut version = format!("version {}", v.version);
    if v.version == 0 {
        version.push_str(" (defaults, never changed)");
    } else {
        let by = v.updated_by.as_deref().unwrap_or("?");
        let at = v.updated_at_ms.map_or("?".to_string(), iso8601);
        let _ = write!(version, " (by {by} at {at})");
    }
    let _ = writeln!(s, "{indent}{version}");
    let shared = if v.shared_ips.is_empty() {
        "-".to_string()
    } else {
        v.shared_ips
            .iter()
            .map(|ip| {
                let ifs: Vec<String> = ip
                    .interfaces
                    .iter()
                    .map(|(node, iface)| format!("{node}:{iface}"))
                    .collect();
                format!("{} [{}]", ip.address, ifs.join(" "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = [
        ("primary_timeout_ms", v.primary_timeout_ms.to_string()),
        ("auto_failover", on_off(v.auto_failover).to_string()),
        (
            "test_ips",
            if v.test_ips.is_empty() {
                "-".to_string()
            } else {
                v.test_ips.join(",")
            },
        ),
        (
            "verify_interval_secs",
            if v.verify_interval_secs == 0 {
                "0 (off)".to_string()
            } else {
                v.verify_interval_secs.to_string()
            },
        ),
        (
            "bandwidth_limit_bps",
            if v.bandwidth_limit_bps == 0 {
                "0 (unlimited)".to_string()
            } else {
                v.bandwidth_limit_bps.to_string()
            },
        ),
        ("backup_operations", on_off(v.backup_operations).to_string()),
        ("shared_ips", shared),
        (
            "maintenance_max_minutes",
            v.maintenance_max_minutes.to_string(),
        ),
        (
            "maintenance_reminder_secs",
            v.maintenance_reminder_secs.to_string(),
        ),
        (
            "failback",
            match &v.failback {
                tandem_web::Failback::Off(_) => "off".to_string(),
                tandem_web::Failback::Preferred {
                    preferred,
                    delay_secs,
                } => format!("to {preferred} after {delay_secs} s"),
            },
        ),
        (
            "checks",
            if v.checks.is_empty() {
                "-".to_string()
            } else {
                v.checks
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("check_hold_down_secs", v.check_hold_down_secs.to_string()),
    ];
    for (k, val) in rows {
        let _ = writeln!(s, "{indent}{k:<26}{val}");
    }
    s
}

/// `GET /api/v1/status` as a readable block.
pub fn render_relationship(v: &StatusView, now_ms: u64) -> String {
    let h = &v.this_host;
    let mut s = String::from("This host\n");
    let mut field = |k: &str, val: String| {
        let _ = writeln!(s, "  {k:<15}{val}");
    };
    field("name", format!("{} (node {}, {})", h.name, h.id, h.kind));
    field("role", h.role.to_string());
    field("epoch", h.epoch.to_string());
    field("term", h.term.to_string());
    field("leader", opt(h.leader));
    field(
        "indexes",
        format!(
            "last log {}, committed {}, applied {}",
            opt(h.last_log_index),
            opt(h.committed_index),
            opt(h.applied_index)
        ),
    );
    field(
        "lease",
        if h.lease_valid { "valid" } else { "none" }.to_string(),
    );
    field(
        "primary since",
        h.primary_since_ms.map_or("-".to_string(), |t| {
            format!("{} ({})", iso8601(t), age(t, now_ms))
        }),
    );
    if let Some(site) = &h.site {
        field("site", site.clone());
    }
    field(
        "shared IPs",
        if h.shared_ips_held.is_empty() {
            "-".to_string()
        } else {
            h.shared_ips_held.join(", ")
        },
    );
    if h.notes.is_empty() {
        field("notes", "-".to_string());
    } else {
        for (i, note) in h.notes.iter().enumerate() {
            field(if i == 0 { "notes" } else { "" }, format!("- {note}"));
        }
    }
    if !h.checks.is_empty() {
        s.push_str("\nService checks\n");
        let mut rows = vec![vec![
            "CHECK".to_string(),
            "STATE".to_string(),
            "LAST".to_string(),
            "CHANGED".to_string(),
            "TARGET".to_string(),
            "OUTPUT".to_string(),
        ]];
        for c in &h.checks {
            rows.push(vec![
                c.name.clone(),
                c.state.to_uppercase(),
                match c.last_ok {
                    Some(true) => format!("ok x{}", c.streak),
                    Some(false) => format!("failed x{}", c.streak),
                    None => "-".to_string(),
                },
                c.last_change_ms.map_or("-".to_string(), |t| age(t, now_ms)),
                c.target.clone(),
                c.output.replace('\n', " "),
            ]);
        }
        for line in table(&rows).lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s.push_str("\nPeer hosts\n");
    if v.peers.is_empty() {
        s.push_str("  (none)\n");
    } else {
        let mut rows = vec![[
            "NAME",
            "ID",
            "KIND",
            "SITE",
            "ROLE",
            "VOTER",
            "REACHABLE",
            "LAST CONTACT",
            "LAG ENTRIES",
            "LAG BYTES",
            "LAG MS",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()];
        for p in &v.peers {
            rows.push(vec![
                p.name.clone(),
                p.id.to_string(),
                p.kind.to_string(),
                p.site.clone().unwrap_or_else(|| "-".into()),
                p.role.to_string(),
                yes_no(p.voter).to_string(),
                yes_no(p.reachable).to_string(),
                p.last_contact_ms
                    .map_or("never".to_string(), |t| age(t, now_ms)),
                opt(p.lag_entries),
                opt(p.lag_bytes),
                opt(p.lag_ms),
            ]);
        }
        for line in table(&rows).lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    let n = {
        let mut n = BTreeMap::new();
        n.insert(h.id, h.name.clone());
        for p in &v.peers {
            n.insert(p.id, p.name.clone());
        }
        n
    };
    let _ = writeln!(
        s,
        "\nTopology {}, primary {}, epoch {}",
        v.topology,
        v.primary.map_or("none".to_string(), |p| node_label(&n, p)),
        v.epoch
    );
    for hold in &v.maintenance {
        let _ = writeln!(
            s,
            "MAINTENANCE: {} until {} ({}, by {})",
            hold.node,
            iso8601(hold.until_ms),
            hold.reason,
            hold.by
        );
    }
    s.push_str("\nSettings ");
    s.push_str(render_settings(&v.settings, "  ").trim_start());
    s
}

/// `GET /api/v1/maintenance` as two tables.
pub fn render_maintenance(v: &MaintenanceView, now_ms: u64) -> String {
    let mut s = String::new();
    if v.nodes.is_empty() {
        let _ = writeln!(s, "In maintenance: none");
    } else {
        let _ = writeln!(s, "In maintenance:");
        let mut rows = vec![vec![
            "NODE".to_string(),
            "UNTIL".to_string(),
            "SINCE".to_string(),
            "BY".to_string(),
            "WINDOW".to_string(),
            "REASON".to_string(),
        ]];
        for h in &v.nodes {
            rows.push(vec![
                h.node.clone(),
                iso8601(h.until_ms),
                age(h.since_ms, now_ms),
                h.by.clone(),
                opt(h.window),
                h.reason.clone(),
            ]);
        }
        for line in table(&rows).lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    if v.windows.is_empty() {
        let _ = writeln!(s, "Scheduled windows: none");
    } else {
        let _ = writeln!(s, "Scheduled windows:");
        let mut rows = vec![vec![
            "ID".to_string(),
            "NODE".to_string(),
            "START".to_string(),
            "END".to_string(),
            "BY".to_string(),
            "REASON".to_string(),
        ]];
        for w in &v.windows {
            rows.push(vec![
                w.id.to_string(),
                w.node.clone(),
                iso8601(w.start_ms),
                iso8601(w.end_ms),
                w.by.clone(),
                w.reason.clone(),
            ]);
        }
        for line in table(&rows).lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

/// A history page as a table, newest first.
pub fn render_history(page: &HistoryPage) -> String {
    let mut rows = vec![["SEQ", "TIME (UTC)", "NODE", "KIND", "ACTOR", "DETAILS"]
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()];
    for e in &page.items {
        rows.push(vec![
            e.seq.to_string(),
            iso8601(e.at_ms),
            e.node_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| e.node.to_string()),
            e.kind.clone(),
            e.actor.clone(),
            match &e.details {
                Value::Null => "-".to_string(),
                d => d.to_string(),
            },
        ]);
    }
    let mut s = if page.items.is_empty() {
        "no events\n".to_string()
    } else {
        table(&rows)
    };
    if let Some(b) = page.next_before.filter(|&b| b > 0) {
        let _ = writeln!(
            s,
            "({} shown of {} recorded; older: --before {b})",
            page.items.len(),
            page.total
        );
    }
    s
}

/// The readiness answer as a readable block.
pub fn render_readiness(r: &ReadinessView) -> String {
    let mut s = String::new();
    let failover = if r.would_fail_over {
        match r.after_ms {
            Some(ms) => format!("yes, after {ms} ms"),
            None => "yes".to_string(),
        }
    } else {
        "NO".to_string()
    };
    let _ = writeln!(s, "would fail over: {failover}");
    let _ = writeln!(
        s,
        "data at risk:    {}",
        r.lag_entries
            .map_or("unknown".to_string(), |l| format!("{l} committed entries"))
    );
    let _ = writeln!(
        s,
        "certificates:    {}",
        if r.certificates_ok { "ok" } else { "NOT OK" }
    );
    let _ = writeln!(
        s,
        "shared IPs:      {}",
        if r.shared_ips_ok { "ok" } else { "NOT OK" }
    );
    for c in &r.certificates {
        let until = c.not_after_ms.map_or("not seen".to_string(), iso8601);
        let _ = writeln!(s, "  {:<14} valid until {until}", c.name);
    }
    if r.reasons.is_empty() {
        let _ = writeln!(s, "reasons:         -");
    } else {
        for (i, reason) in r.reasons.iter().enumerate() {
            let label = if i == 0 { "reasons:" } else { "" };
            let _ = writeln!(s, "{label:<17}- {reason}");
        }
    }
    for (i, warning) in r.warnings.iter().enumerate() {
        let label = if i == 0 { "warnings:" } else { "" };
        let _ = writeln!(s, "{label:<17}- {warning}");
    }
    s
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?
    );
    Ok(())
}

/// `name (node id)` for the node ids the status of `client`'s node knows.
pub(crate) fn names(status: Option<&StatusView>) -> BTreeMap<u64, String> {
    let mut m = BTreeMap::new();
    if let Some(s) = status {
        m.insert(s.this_host.id, s.this_host.name.clone());
        for p in &s.peers {
            m.insert(p.id, p.name.clone());
        }
    }
    m
}

pub(crate) fn node_label(names: &BTreeMap<u64, String>, id: u64) -> String {
    match names.get(&id) {
        Some(n) if !n.is_empty() => format!("{n} (node {id})"),
        _ => format!("node {id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }

    #[test]
    fn ages() {
        assert_eq!(age(1_000, 1_300), "0.3 s ago");
        assert_eq!(age(2_000, 1_000), "0.0 s ago");
        assert_eq!(age(0, 125_000), "2 min ago");
        assert_eq!(age(0, 7_300_000), "2 h ago");
    }
}
