//! The `tandem` command line without a cluster: help texts, usage errors and
//! the exit codes scripts rely on. (Building this test also builds the
//! binary the cluster tests in `tests/` drive.)

use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env_remove("TANDEM_DIR")
        .env_remove("TANDEM_TOKEN")
        .env_remove("TANDEM_JOIN_TOKEN")
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
    for cmd in ["init", "run", "token", "join", "status", "demo"] {
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
