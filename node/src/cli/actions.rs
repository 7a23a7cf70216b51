//! The relationship commands that ask a node to act (settings, swap, sync,
//! break, rejoin, maintenance): plan, confirmation, call and rendering of
//! the outcome.

use std::fmt::Write as _;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::client::ClientError;
use crate::util::now_ms;

use super::args::*;
use super::failure::*;
use super::render::*;
use tandem_web::{
    BreakOutcome, MaintenanceOutcome, MaintenanceStart, MaintenanceView, SettingsUpdate,
    SettingsView, StatusView, SwapOutcome, SwapRequest, SyncReport, SyncRequest, WindowRequest,
};

// ---- relationship commands ------------------------------------------------

/// How long the CLI waits for an action (swap, sync, break, rejoin): a sync
/// may stream a large snapshot at a limited bandwidth.
pub(crate) const ACTION_TIMEOUT: Duration = Duration::from_secs(900);

/// The whole update body for `view` as it is now.
pub(crate) fn update_from(view: &SettingsView) -> SettingsUpdate {
    SettingsUpdate {
        primary_timeout_ms: view.primary_timeout_ms,
        auto_failover: view.auto_failover,
        test_ips: view.test_ips.clone(),
        verify_interval_secs: view.verify_interval_secs,
        bandwidth_limit_bps: view.bandwidth_limit_bps,
        backup_operations: view.backup_operations,
        shared_ips: view.shared_ips.clone(),
        maintenance_max_minutes: view.maintenance_max_minutes,
        maintenance_reminder_secs: view.maintenance_reminder_secs,
        checks: view.checks.clone(),
        check_hold_down_secs: view.check_hold_down_secs,
        failback: view.failback.clone(),
        if_version: Some(view.version),
    }
}

pub(crate) async fn settings_set(a: SettingsSetArgs) -> Result<(), Failure> {
    let client = a.api.client()?;
    let current: SettingsView = client.get("/api/v1/settings").await?;
    let mut update = update_from(&current);
    for change in &a.changes {
        change.apply(&mut update);
    }
    let written: Result<SettingsView, ClientError> = client
        .call_leader(Method::PUT, "/api/v1/settings", Some(&update))
        .await;
    let view = match written {
        Ok(v) => v,
        Err(ClientError::Api {
            status,
            kind,
            fields,
            message,
            ..
        }) if !fields.is_empty() || kind.as_deref() == Some("invalid") => {
            for (field, problem) in &fields {
                eprintln!("  {field}: {problem}");
            }
            return Err(Failure {
                code: EXIT_REFUSED,
                error: anyhow::anyhow!("the cluster refused the settings ({status}): {message}"),
            });
        }
        Err(ClientError::Api {
            status, message, ..
        }) if status == reqwest::StatusCode::CONFLICT => {
            return Err(Failure {
                code: EXIT_REFUSED,
                error: anyhow::anyhow!(
                    "{status}: {message} (the settings changed since version {}; run the command again)",
                    current.version
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        return print_json(&view);
    }
    let before = render_settings(&current, "");
    let after = render_settings(&view, "");
    println!("settings updated to version {}", view.version);
    // Show the lines that changed (the first line is the version line).
    for (old, new) in before.lines().skip(1).zip(after.lines().skip(1)) {
        if old != new {
            println!("  {}   (was {})", new.trim(), value_part(old));
        }
    }
    Ok(())
}

/// The value column of a `render_settings` line.
pub(crate) fn value_part(line: &str) -> &str {
    line.trim()
        .split_once(char::is_whitespace)
        .map_or("", |(_, v)| v.trim())
}

/// Exits 2 unless `--yes` was given or stdin is a terminal (where the
/// command will ask). Runs before anything is contacted.
pub(crate) fn check_confirmable(yes: bool, command: &str) -> Result<(), Failure> {
    if yes || std::io::stdin().is_terminal() {
        Ok(())
    } else {
        Err(usage(format!(
            "`tandem {command}` changes the relationship and stdin is not a terminal to confirm on; pass --yes to proceed"
        )))
    }
}

/// Prints `plan` and asks on the terminal; `Ok` when the answer is yes.
pub(crate) fn ask(plan: &str) -> Result<(), Failure> {
    eprintln!("{plan}");
    eprint!("Proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            error: anyhow::anyhow!("not confirmed; nothing was done"),
        })
    }
}

pub(crate) fn swap_plan(s: Option<&StatusView>, a: &SwapArgs) -> String {
    let mut plan = String::new();
    let n = names(s);
    match s {
        Some(s) => {
            let me = node_label(&n, s.this_host.id);
            let other = s
                .peers
                .iter()
                .find(|p| p.kind == "appliance")
                .map(|p| node_label(&n, p.id));
            let other = other.as_deref().unwrap_or("the other appliance");
            let _ = match s.this_host.role.as_str() {
                "primary" => writeln!(
                    plan,
                    "{me} is the primary: it hands the primary role to {other} and becomes the backup."
                ),
                "backup" => writeln!(
                    plan,
                    "{me} is the backup: it becomes the primary and {other} becomes the backup."
                ),
                role => writeln!(plan, "{me} is {role}; the cluster will say whether it can swap."),
            };
        }
        None => plan.push_str("The primary and backup swap roles.\n"),
    }
    if a.pull_sync {
        plan.push_str("A full data sync is pulled first (by snapshot if need be).\n");
    }
    if a.force {
        plan.push_str(
            "FORCED: if the peer cannot be contacted this node takes over alone; the epoch is \
             raised and recorded as forced, and writes the old primary never replicated are \
             exported on its side, not merged.\n",
        );
    } else {
        plan.push_str(
            "Writes pause until the new primary holds every committed entry; shared IPs move to it.\n",
        );
    }
    plan.trim_end().to_string()
}

pub(crate) async fn swap(a: SwapArgs) -> Result<(), Failure> {
    check_confirmable(a.confirm.yes, "swap")?;
    let client = a.api.client()?;
    let before: Option<StatusView> = client.get("/api/v1/status").await.ok();
    if !a.confirm.yes {
        ask(&swap_plan(before.as_ref(), &a))?;
    }
    let req = SwapRequest {
        pull_sync: a.pull_sync,
        force: a.force,
    };
    let out: SwapOutcome = client
        .clone()
        .with_timeout(ACTION_TIMEOUT)
        .call(Method::POST, "/api/v1/relationship/swap", Some(&req))
        .await?;
    if a.json {
        return print_json(&out);
    }
    let after: Option<StatusView> = client.get("/api/v1/status").await.ok();
    let mut n = names(before.as_ref());
    n.extend(names(after.as_ref()));
    print!("{}", render_swap(&out, &n));
    Ok(())
}

pub(crate) async fn sync(a: SyncArgs) -> Result<(), Failure> {
    let client = a.api.client()?;
    let out: SyncReport = client
        .clone()
        .with_timeout(ACTION_TIMEOUT)
        .call(
            Method::POST,
            "/api/v1/relationship/sync",
            Some(&SyncRequest { verify: a.verify }),
        )
        .await?;
    if a.json {
        print_json(&out)?;
    } else {
        print!("{}", render_sync(&out));
    }
    match &out.verify {
        Some(v) if !v.matches => Err(Failure {
            code: 1,
            error: anyhow::anyhow!(
                "state digests differ at index {}: local {} peer {}",
                v.index,
                v.local_digest,
                v.peer_digest
            ),
        }),
        _ => Ok(()),
    }
}

/// `tandem break`, or `tandem rejoin` when `rejoin_token` is given.
pub(crate) async fn break_or_rejoin(
    a: ConfirmArgs,
    rejoin_token: Option<String>,
) -> Result<(), Failure> {
    let rejoin = rejoin_token.is_some();
    let command = if rejoin { "rejoin" } else { "break" };
    check_confirmable(a.confirm.yes, command)?;
    let client = a.api.client()?;
    let status: Option<StatusView> = client.get("/api/v1/status").await.ok();
    if !a.confirm.yes {
        let me = status.as_ref().map_or("This node".to_string(), |s| {
            format!(
                "{} ({})",
                node_label(&names(Some(s)), s.this_host.id),
                s.this_host.role
            )
        });
        let plan = if rejoin {
            format!(
                "{me} discards its copy of the data and resyncs from the primary as the backup."
            )
        } else {
            format!(
                "This ends the relationship of {me}: each side becomes standalone with its own \
                 copy of the data; the primary keeps serving and its shared IPs, the backup \
                 releases them. Pairing again later makes one side discard its data."
            )
        };
        ask(&plan)?;
    }
    let (path, body) = match rejoin_token {
        Some(token) => ("/api/v1/relationship/rejoin", json!({ "token": token })),
        None => ("/api/v1/relationship/break", json!({})),
    };
    let out: BreakOutcome = client
        .clone()
        .with_timeout(ACTION_TIMEOUT)
        .call(Method::POST, path, Some(&body))
        .await?;
    if a.json {
        return print_json(&out);
    }
    let n = names(status.as_ref());
    let former: Vec<String> = out
        .former_peers
        .iter()
        .map(|&p| node_label(&n, p))
        .collect();
    println!("role now:     {}", out.role);
    println!(
        "former peers: {}",
        if former.is_empty() {
            "-".to_string()
        } else {
            former.join(", ")
        }
    );
    Ok(())
}

// ---- maintenance ----------------------------------------------------------

pub(crate) async fn maintenance(a: MaintenanceArgs) -> Result<(), Failure> {
    match a.command {
        MaintenanceCommand::List(a) => {
            let v: MaintenanceView = a.api.client()?.get("/api/v1/maintenance").await?;
            if a.json {
                return print_json(&v);
            }
            print!("{}", render_maintenance(&v, now_ms()));
            Ok(())
        }
        MaintenanceCommand::Start(a) => {
            let req = MaintenanceStart {
                node: a.node,
                reason: a.reason,
                minutes: Some(a.minutes),
                seconds: None,
                force: a.force,
            };
            let out: MaintenanceOutcome = a
                .api
                .client()?
                .with_timeout(ACTION_TIMEOUT)
                .call_leader(Method::POST, "/api/v1/maintenance", Some(&req))
                .await?;
            maintenance_outcome(&out, a.json)
        }
        MaintenanceCommand::End(a) => {
            let path = format!("/api/v1/maintenance/{}", a.node);
            let out: MaintenanceOutcome = a
                .api
                .client()?
                .with_timeout(ACTION_TIMEOUT)
                .call_leader::<(), _>(Method::DELETE, &path, None)
                .await?;
            maintenance_outcome(&out, a.json)
        }
        MaintenanceCommand::Schedule(a) => {
            let start_ms = a.start.at(now_ms());
            let req = WindowRequest {
                node: a.node,
                reason: a.reason,
                start_ms,
                end_ms: start_ms.saturating_add(a.minutes.saturating_mul(60_000)),
            };
            let v: MaintenanceView = a
                .api
                .client()?
                .call_leader(Method::POST, "/api/v1/maintenance/windows", Some(&req))
                .await?;
            if a.json {
                return print_json(&v);
            }
            print!("{}", render_maintenance(&v, now_ms()));
            Ok(())
        }
        MaintenanceCommand::Cancel(a) => {
            let path = format!("/api/v1/maintenance/windows/{}", a.window);
            let v: MaintenanceView = a
                .api
                .client()?
                .call_leader::<(), _>(Method::DELETE, &path, None)
                .await?;
            print!("{}", render_maintenance(&v, now_ms()));
            Ok(())
        }
    }
}

fn maintenance_outcome(out: &MaintenanceOutcome, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(out);
    }
    if let Some(to) = out.moved_to {
        println!("The role moved to node {to} first.");
    }
    if let Some(note) = &out.note {
        println!("Note: {note}");
    }
    print!("{}", render_maintenance(&out.maintenance, now_ms()));
    Ok(())
}
