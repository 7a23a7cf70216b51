//! The `tandem` command line without a cluster: help texts, usage errors and
//! the exit codes scripts rely on. (Building this test also builds the
//! binary the cluster tests in `tests/` drive.)

use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    // `output()` gives the child a null stdin: never a terminal.
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env_remove("TANDEM_DIR")
        .env_remove("TANDEM_TOKEN")
        .env_remove("TANDEM_JOIN_TOKEN")
        .env_remove("TANDEM_API")
        .env_remove("TANDEM_CA")
        .output()
        .expect("running tandem")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The last non-empty line of stderr.
fn reason(out: &Output) -> String {
    text(&out.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

#[test]
fn help_lists_the_commands() {
    let out = tandem(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for cmd in [
        "init",
        "run",
        "token",
        "join",
        "status",
        "demo",
        "swap",
        "sync",
        "break",
        "rejoin",
        "settings",
        "history",
        "readiness",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "`tandem --help` does not list {cmd}:\n{help}"
        );
    }
}

#[test]
fn join_help_names_its_flags() {
    let out = tandem(&["join", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for flag in [
        "--dir",
        "--name",
        "--token",
        "--peer",
        "--witness",
        "--peer-listen",
        "--api-listen",
        "--snapshot-every",
        "--keep-behind-snapshot",
    ] {
        assert!(
            help.contains(flag),
            "`tandem join --help` lacks {flag}:\n{help}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = tandem(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // join without its required flags
    let out = tandem(&["join"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn a_zero_page_cache_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("n");
    let d_s = d.to_string_lossy();
    let init = |extra: &[&str]| {
        let mut args = vec![
            "init",
            "--dir",
            &d_s,
            "--peer-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        tandem(&args)
    };
    let out = init(&["--cache-mb", "0"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cache-mb"),
        "{}",
        text(&out.stderr)
    );
    assert!(!d.join("node.toml").exists());

    // A node.toml edited by hand to 0: `run` refuses it with a clear line.
    let out = init(&[]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let toml = std::fs::read_to_string(d.join("node.toml")).expect("node.toml");
    assert!(toml.contains("cache_mb = 4"), "{toml}");
    std::fs::write(
        d.join("node.toml"),
        toml.replace("cache_mb = 4", "cache_mb = 0"),
    )
    .expect("write");
    let out = tandem(&["run", "--dir", &d.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(
        reason(&out).contains("cache_mb must be at least 1"),
        "{}",
        reason(&out)
    );
}

#[test]
fn run_on_an_empty_directory_exits_1_naming_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tandem(&["run", "--dir", &dir.path().to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let line = reason(&out);
    assert!(
        line.starts_with("tandem: ") && line.contains("tandem init"),
        "unexpected reason {line:?}"
    );
    assert!(!dir.path().join("node.toml").exists());
}

#[test]
fn join_with_a_malformed_token_fails_and_writes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("x");
    let out = tandem(&[
        "join",
        "--dir",
        &dir.to_string_lossy(),
        "--name",
        "x",
        "--token",
        "not-a-token",
        "--peer",
        "127.0.0.1:1",
        "--peer-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let line = reason(&out);
    assert!(
        line.contains("malformed join token"),
        "unexpected reason {line:?}"
    );
    assert!(!dir.join("node.toml").exists());
}

#[test]
fn status_without_a_node_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tandem(&[
        "status",
        "--dir",
        &dir.path().to_string_lossy(),
        "--token",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(reason(&out).contains("tandem init"), "{}", reason(&out));
}

/// Every relationship command documents its flags, and the API flags.
#[test]
fn relationship_commands_help_names_their_flags() {
    let api = ["--dir", "--api", "--ca", "--token", "--actor"];
    let cases: &[(&[&str], &[&str])] = &[
        (&["status"], &["--members", "--json"]),
        (&["swap"], &["--pull-sync", "--force", "--yes", "--json"]),
        (&["sync"], &["--verify", "--json"]),
        (&["break"], &["--yes", "--json"]),
        (&["rejoin"], &["--yes", "--json"]),
        (&["settings", "show"], &["--json"]),
        (
            &["settings", "set"],
            &[
                "KEY=VALUE",
                "primary_timeout_ms",
                "auto_failover",
                "test_ips",
                "verify_interval_secs",
                "bandwidth_limit_bps",
                "backup_operations",
                "shared_ips",
            ],
        ),
        (&["history"], &["--limit", "--kind", "--before", "--json"]),
        (&["readiness"], &["--json"]),
    ];
    for (cmd, flags) in cases {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = tandem(&args);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}: {}", text(&out.stderr));
        let help = text(&out.stdout);
        for flag in flags
            .iter()
            .chain(if cmd[0] == "settings" && cmd.len() == 1 {
                [].iter()
            } else {
                api.iter()
            })
        {
            assert!(
                help.contains(flag),
                "`tandem {} --help` lacks {flag}:\n{help}",
                cmd.join(" ")
            );
        }
    }
    let out = tandem(&["settings", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for sub in ["show", "set"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "`tandem settings --help` does not list {sub}:\n{help}"
        );
    }
}

/// Without `--yes` and without a terminal, role-changing actions refuse
/// with exit 2 before contacting anything (the directory does not exist).
#[test]
fn actions_without_yes_and_without_a_terminal_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    let missing = missing.to_string_lossy();
    for cmd in [
        &["swap"][..],
        &["swap", "--force"],
        &["break"],
        &["rejoin", "--rejoin-token", "t"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--dir", &missing, "--token", "x"]);
        let out = tandem(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd:?}: stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let line = reason(&out);
        assert!(
            line.starts_with("tandem: ") && line.contains("--yes"),
            "{cmd:?}: unexpected reason {line:?}"
        );
    }
    // With --yes it goes on and fails on the missing node (exit 1).
    let out = tandem(&["swap", "--yes", "--dir", &missing, "--token", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// A malformed `KEY=VALUE` is a usage error naming the problem, found
/// before anything is contacted.
#[test]
fn settings_set_rejects_malformed_assignments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    let missing = missing.to_string_lossy();
    for (arg, expect) in [
        ("primary_timeout_ms", "KEY=VALUE"),
        ("primary_timeout_ms=fast", "whole number"),
        ("no_such_key=1", "unknown setting"),
        ("auto_failover=maybe", "true or false"),
        ("shared_ips=[1]", "JSON array"),
    ] {
        let out = tandem(&["settings", "set", "--dir", &missing, "--token", "x", arg]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{arg}: stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(
            err.contains(expect),
            "{arg}: stderr lacks {expect:?}: {err}"
        );
        assert!(
            !err.contains("tandem init") && !err.contains("cannot reach"),
            "{arg}: it contacted something: {err}"
        );
    }
    // Without any change it is a usage error too.
    let out = tandem(&["settings", "set", "--dir", &missing, "--token", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// A bad `--actor` is a usage error.
#[test]
fn bad_actor_is_a_usage_error() {
    let out = tandem(&[
        "status",
        "--dir",
        "/nonexistent",
        "--token",
        "x",
        "--actor",
        "not valid",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("actor"), "{}", text(&out.stderr));
}

/// The binary runs on jemalloc with the options `src/main.rs` documents
/// (the memory and CPU figures in the README depend on them): jemalloc's
/// `confirm_conf` prints each option it took, and from where.
#[cfg(feature = "jemalloc")]
#[test]
fn allocator_is_jemalloc_with_the_documented_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "confirm_conf:true")
        .output()
        .expect("running tandem");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("global variable malloc_conf") && l.contains("narenas:1")),
        "the binary's malloc_conf was not read:\n{err}"
    );
    for option in [
        "narenas:1",
        "tcache_max:1024",
        "lg_tcache_nslots_mul:-2",
        "background_thread:true",
        "dirty_decay_ms:100",
        "muzzy_decay_ms:0",
    ] {
        assert!(
            err.contains(&format!("Set conf value: {option}")),
            "jemalloc did not take {option}:\n{err}"
        );
    }
}
