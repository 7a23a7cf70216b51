//! The relationship commands of the `tandem` CLI against a live cluster.
use super::*;
use std::ffi::OsString;
use tandem_tests::{CliOutput, Roles};

const SETTLE: Duration = Duration::from_secs(15);
const ACTOR: &str = "t80-cli";
/// How a call with the admin token and `--actor t80-cli` is recorded.
const RECORDED: &str = "admin-token:t80-cli";

/// `tandem <cmd...> --dir <node i> --token <admin> --actor t80-cli <extra...>`.
async fn cli(c: &Cluster, i: usize, cmd: &[&str], extra: &[&str]) -> CliOutput {
    let mut args: Vec<OsString> = cmd.iter().map(OsString::from).collect();
    args.extend([
        "--dir".into(),
        c.nodes[i].dir.clone().into_os_string(),
        "--token".into(),
        c.admin_token.clone().into(),
        "--actor".into(),
        ACTOR.into(),
    ]);
    args.extend(extra.iter().map(OsString::from));
    tandem(args).await
}

fn role_of(r: &Roles, i: usize) -> &'static str {
    if i == r.primary {
        "primary"
    } else if i == r.witness {
        "witness"
    } else {
        "backup"
    }
}

/// The value of the `role` line of the "This host" block.
fn shown_role(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("role "))
        .map(|v| v.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_settings() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;

    for i in 0..3 {
        let name = c.nodes[i].name.clone();
        let out = cli(&c, i, &["status"], &[])
            .await
            .expect_ok(&format!("tandem status on {name}"));
        assert!(out.stdout.starts_with("This host"), "{}", out.stdout);
        assert_eq!(
            shown_role(&out.stdout).as_deref(),
            Some(role_of(&r, i)),
            "status on {name}:\n{}",
            out.stdout
        );
        assert!(out.stdout.contains("Peer hosts"), "{}", out.stdout);
        for (j, other) in c.nodes.iter().enumerate().filter(|&(j, _)| j != i) {
            assert!(
                out.stdout
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{} ", other.name))
                        && l.contains(role_of(&r, j))),
                "status on {name} lacks peer {}:\n{}",
                other.name,
                out.stdout
            );
        }
        // --json is the raw status; --members the old cluster table.
        let out = cli(&c, i, &["status"], &["--json"])
            .await
            .expect_ok("tandem status --json");
        let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
        assert_eq!(v["this_host"]["role"], role_of(&r, i), "{v}");
        let out = cli(&c, i, &["status"], &["--members"])
            .await
            .expect_ok("tandem status --members");
        assert!(out.stdout.contains(&c.cluster_id), "{}", out.stdout);
    }

    // Set on the backup (the write follows the 421 to the primary),
    // read on the witness.
    let out = cli(
        &c,
        r.backup,
        &["settings", "set", "primary_timeout_ms=1500"],
        &[],
    )
    .await
    .expect_ok("tandem settings set primary_timeout_ms=1500");
    assert!(out.stdout.contains("primary_timeout_ms"), "{}", out.stdout);
    wait_until("primary_timeout_ms=1500 on the witness", SETTLE, || async {
        let out = cli(&c, r.witness, &["settings", "show"], &["--json"]).await;
        if out.code != Some(0) {
            return None;
        }
        let v: Value = serde_json::from_str(&out.stdout).ok()?;
        (v["primary_timeout_ms"] == 1500).then_some(())
    })
    .await;
    let out = cli(&c, r.witness, &["settings", "show"], &[])
        .await
        .expect_ok("tandem settings show");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("primary_timeout_ms") && l.ends_with("1500")),
        "{}",
        out.stdout
    );

    // Out of range: refused by the cluster, exit 3, the field named.
    let out = cli(
        &c,
        r.primary,
        &["settings", "set", "primary_timeout_ms=5"],
        &[],
    )
    .await;
    assert_eq!(
        out.code,
        Some(3),
        "stdout {} stderr {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.trim_start().starts_with("primary_timeout_ms:")),
        "no field error line: {}",
        out.stderr
    );
    // Nothing changed.
    let out = cli(&c, r.primary, &["settings", "show"], &["--json"])
        .await
        .expect_ok("tandem settings show --json");
    let v: Value = serde_json::from_str(&out.stdout).expect("settings JSON");
    assert_eq!(v["primary_timeout_ms"], 1500, "{v}");

    // The operating settings: failback, a check, the hold-down.
    let primary = c.nodes[r.primary].name.clone();
    let out = cli(
        &c,
        r.primary,
        &[
            "settings",
            "set",
            &format!("failback={primary}:30"),
            r#"checks=[{"name":"admin","kind":"tcp","target":"127.0.0.1:1","nodes":["nobody"]}]"#,
            "check_hold_down_secs=120",
        ],
        &[],
    )
    .await
    .expect_ok("tandem settings set failback checks check_hold_down_secs");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("failback") && l.contains(&primary)),
        "{}",
        out.stdout
    );
    let out = cli(&c, r.primary, &["settings", "show"], &["--json"])
        .await
        .expect_ok("tandem settings show --json");
    let v: Value = serde_json::from_str(&out.stdout).expect("settings JSON");
    assert_eq!(
        v["failback"],
        json!({"preferred": primary, "delay_secs": 30}),
        "{v}"
    );
    assert_eq!(v["checks"][0]["name"], "admin", "{v}");
    assert_eq!(v["check_hold_down_secs"], 120, "{v}");

    // The actor header reached the history.
    let out = cli(
        &c,
        r.primary,
        &["history"],
        &["--kind", "settings_change", "--json"],
    )
    .await
    .expect_ok("tandem history --kind settings_change --json");
    let page: Value = serde_json::from_str(&out.stdout).expect("history JSON");
    assert!(
        page["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|e| e["actor"] == RECORDED)),
        "{page}"
    );

    let out = cli(&c, r.primary, &["readiness"], &[])
        .await
        .expect_ok("tandem readiness");
    assert!(out.stdout.starts_with("would fail over:"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_sync_and_history() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (old_primary, old_backup) = (r.primary, r.backup);

    let out = cli(&c, old_backup, &["swap"], &["--yes"])
        .await
        .expect_ok("tandem swap --yes on the backup");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("new primary:")
            && l.contains(&format!("node {}", c.nodes[old_backup].id()))),
        "{}",
        out.stdout
    );
    let after = c.wait_roles(WAIT).await;
    assert_eq!(after.primary, old_backup, "{after:?}");
    assert!(after.epoch > r.epoch, "{r:?} -> {after:?}");
    let s = c.status(old_primary).await.expect("status");
    assert_eq!(s.primary, Some(c.nodes[old_backup].id()));

    c.wait_peer_reachable(old_backup, old_primary, true).await;
    let out = cli(&c, old_backup, &["sync"], &["--verify"])
        .await
        .expect_ok("tandem sync --verify");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("verify:")
            && l.trim_end().ends_with("MATCH")
            && !l.contains("MISMATCH")),
        "{}",
        out.stdout
    );
    for key in ["bytes:", "entries:", "duration:", "indexes:", "snapshot:"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(key)),
            "sync output lacks {key}: {}",
            out.stdout
        );
    }

    let out = cli(&c, old_primary, &["history"], &["--kind", "swap"])
        .await
        .expect_ok("tandem history --kind swap");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header[0], "SEQ", "{}", out.stdout);
    assert!(
        lines.any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.len() >= 6
                && cells[1].ends_with('Z')
                && cells[3] == "swap"
                && cells[4] == RECORDED
        }),
        "no swap by {ACTOR}: {}",
        out.stdout
    );

    // Forcing *Become backup* on the primary while the backup answers: a
    // planned swap, not forced.
    let out = cli(&c, old_backup, &["swap"], &["--yes", "--force"])
        .await
        .expect_ok("tandem swap --force on the primary");
    assert!(out.stdout.contains("forced:       no"), "{}", out.stdout);
    let back = c.wait_roles(WAIT).await;
    assert_eq!((back.primary, back.backup), (after.backup, after.primary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_start_list_schedule_cancel_end() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let bname = c.nodes[b].name.clone();

    // Asked of the backup's own node: the write goes to the primary.
    let out = cli(
        &c,
        b,
        &["maintenance", "start"],
        &[
            "--node",
            &bname,
            "--reason",
            "swap a fan",
            "--minutes",
            "30",
        ],
    )
    .await
    .expect_ok("tandem maintenance start");
    assert!(out.stdout.contains(&bname), "{}", out.stdout);
    assert!(out.stdout.contains("swap a fan"), "{}", out.stdout);
    let out = cli(&c, p, &["maintenance", "list"], &[])
        .await
        .expect_ok("tandem maintenance list");
    assert!(out.stdout.contains("In maintenance:"), "{}", out.stdout);
    assert!(out.stdout.contains(ACTOR), "{}", out.stdout);
    let out = cli(&c, p, &["status"], &[])
        .await
        .expect_ok("tandem status");
    assert!(
        out.stdout.contains(&format!("MAINTENANCE: {bname}")),
        "{}",
        out.stdout
    );
    // A second start on the other appliance is refused (no primary left).
    let pname = c.nodes[p].name.clone();
    let out = cli(
        &c,
        p,
        &["maintenance", "start"],
        &["--node", &pname, "--reason", "x", "--minutes", "5"],
    )
    .await;
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stderr.contains("no appliance would be left"),
        "{}",
        out.stderr
    );

    let out = cli(&c, p, &["maintenance", "end"], &["--node", &bname])
        .await
        .expect_ok("tandem maintenance end");
    assert!(
        out.stdout.contains("In maintenance: none"),
        "{}",
        out.stdout
    );

    let out = cli(
        &c,
        p,
        &["maintenance", "schedule"],
        &[
            "--node",
            &bname,
            "--reason",
            "disks",
            "--start",
            "+60",
            "--minutes",
            "20",
        ],
    )
    .await
    .expect_ok("tandem maintenance schedule");
    assert!(out.stdout.contains("disks"), "{}", out.stdout);
    let out = cli(&c, p, &["maintenance", "list", "--json"], &[])
        .await
        .expect_ok("tandem maintenance list --json");
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    let id = v["windows"][0]["id"].as_u64().expect("a window id");
    let span = v["windows"][0]["end_ms"].as_u64().unwrap_or(0)
        - v["windows"][0]["start_ms"].as_u64().unwrap_or(0);
    assert_eq!(span, 20 * 60_000, "{v}");
    cli(
        &c,
        p,
        &["maintenance", "cancel"],
        &["--window", &id.to_string()],
    )
    .await
    .expect_ok("tandem maintenance cancel");
    let out = cli(&c, p, &["maintenance", "list"], &[])
        .await
        .expect_ok("tandem maintenance list");
    assert!(
        out.stdout.contains("Scheduled windows: none"),
        "{}",
        out.stdout
    );
}
