//! Service checks (README "Service checks"): running one check, and each
//! check's state on this node with keepalived-style dampening — a healthy
//! check is failing only after `fall` failures in a row, a failing one
//! healthy again after `rise` successes in a row.
//!
//! The checks are in the replicated settings; each appliance runs those
//! that name it (or all, when they name no node) against its own target.
//! What a failing check does to the role is `actions::checks`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tandem_web::{CheckSpec, CheckView};
use tokio::io::AsyncReadExt;

use crate::util::lock;

/// Most bytes of a command's output (or an HTTP body) read.
pub const MAX_OUTPUT_BYTES: usize = 4096;
/// Characters of output shown.
const SNIPPET_CHARS: usize = 200;

/// A check's dampened state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not enough results yet.
    Unknown,
    /// Healthy.
    Healthy,
    /// Failing.
    Failing,
}

impl Health {
    /// As the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Failing => "failing",
        }
    }
}

/// One check's results on this node.
#[derive(Debug, Clone)]
pub struct CheckState {
    /// The dampened state.
    pub health: Health,
    /// Whether the last run succeeded.
    pub last_ok: Option<bool>,
    /// Results in a row like the last one.
    pub streak: u32,
    /// When it last ran (ms).
    pub last_run_ms: Option<u64>,
    /// When `health` last changed (ms).
    pub last_change_ms: Option<u64>,
    /// What the last run said.
    pub output: String,
    /// What was checked.
    pub target: String,
    /// The check's kind.
    pub kind: String,
}

impl CheckState {
    fn new(kind: &str, target: &str) -> Self {
        Self {
            health: Health::Unknown,
            last_ok: None,
            streak: 0,
            last_run_ms: None,
            last_change_ms: None,
            output: String::new(),
            target: target.to_string(),
            kind: kind.to_string(),
        }
    }

    /// Adds one result; returns the new health when it changed.
    pub fn record(
        &mut self,
        ok: bool,
        rise: u32,
        fall: u32,
        output: String,
        now_ms: u64,
    ) -> Option<Health> {
        self.streak = if self.last_ok == Some(ok) {
            self.streak.saturating_add(1)
        } else {
            1
        };
        self.last_ok = Some(ok);
        self.last_run_ms = Some(now_ms);
        self.output = snippet(&output);
        let next = match (self.health, ok) {
            (Health::Failing | Health::Unknown, true) if self.streak >= rise => Health::Healthy,
            (Health::Healthy | Health::Unknown, false) if self.streak >= fall => Health::Failing,
            (h, _) => h,
        };
        (next != self.health).then(|| {
            self.health = next;
            self.last_change_ms = Some(now_ms);
            next
        })
    }

    fn view(&self, name: &str) -> CheckView {
        CheckView {
            name: name.to_string(),
            kind: self.kind.clone(),
            target: self.target.clone(),
            state: self.health.as_str().to_string(),
            last_ok: self.last_ok,
            last_run_ms: self.last_run_ms,
            last_change_ms: self.last_change_ms,
            streak: self.streak,
            output: self.output.clone(),
        }
    }
}

/// The states of this node's checks, by name.
#[derive(Default)]
pub struct ServiceChecks {
    states: Mutex<BTreeMap<String, CheckState>>,
}

impl ServiceChecks {
    /// Keeps the states of `specs` (by name; a check whose kind or target
    /// changed starts over) and forgets the others.
    pub fn keep(&self, specs: &[(CheckSpec, String)]) {
        let mut states = lock(&self.states);
        states.retain(|name, st| {
            specs
                .iter()
                .any(|(s, t)| &s.name == name && s.kind == st.kind && *t == st.target)
        });
        for (s, target) in specs {
            states
                .entry(s.name.clone())
                .or_insert_with(|| CheckState::new(&s.kind, target));
        }
    }

    /// Adds a result of `spec`; the new health when it changed.
    pub fn record(
        &self,
        spec: &CheckSpec,
        ok: bool,
        output: String,
        now_ms: u64,
    ) -> Option<Health> {
        let mut states = lock(&self.states);
        let st = states.get_mut(&spec.name)?;
        st.record(ok, spec.rise, spec.fall, output, now_ms)
    }

    /// The checks that are failing now: name and last output.
    pub fn failing(&self) -> Vec<(String, String)> {
        lock(&self.states)
            .iter()
            .filter(|(_, s)| s.health == Health::Failing)
            .map(|(n, s)| (n.clone(), s.output.clone()))
            .collect()
    }

    /// The API views.
    pub fn views(&self) -> Vec<CheckView> {
        lock(&self.states).iter().map(|(n, s)| s.view(n)).collect()
    }
}

/// The checks of `all` that `node` runs, with the target it checks.
pub fn applicable(all: &[CheckSpec], node: &str) -> Vec<(CheckSpec, String)> {
    all.iter()
        .filter(|c| c.nodes.is_empty() || c.nodes.iter().any(|n| n == node))
        .map(|c| {
            let target = if c.kind == "exec" {
                c.command.join(" ")
            } else {
                c.targets
                    .get(node)
                    .cloned()
                    .unwrap_or_else(|| c.target.clone())
            };
            (c.clone(), target)
        })
        .filter(|(c, t)| c.kind == "exec" || !t.is_empty())
        .collect()
}

fn snippet(s: &str) -> String {
    let t = s.trim();
    if t.chars().count() <= SNIPPET_CHARS {
        t.to_string()
    } else {
        let mut out: String = t.chars().take(SNIPPET_CHARS).collect();
        out.push('…');
        out
    }
}

/// Runs `spec` once against `target`, bounded by its timeout: whether it
/// succeeded and what it said.
pub async fn run_once(spec: &CheckSpec, target: &str) -> (bool, String) {
    let limit = Duration::from_millis(spec.timeout_ms);
    let run = async {
        match spec.kind.as_str() {
            "http" => http(spec, target, limit).await,
            "tcp" => tcp(target).await,
            "exec" => exec(spec).await,
            other => (false, format!("unknown kind {other}")),
        }
    };
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => (false, format!("no answer within {} ms", spec.timeout_ms)),
    }
}

async fn tcp(target: &str) -> (bool, String) {
    match tokio::net::TcpStream::connect(target).await {
        Ok(_) => (true, format!("connected to {target}")),
        Err(e) => (false, format!("{target}: {e}")),
    }
}

/// One HTTP client per `tls_verify`, built on first use (the system's CA
/// certificates are read once).
fn http_client(verify: bool) -> Result<reqwest::Client, String> {
    static CLIENTS: [OnceLock<Result<reqwest::Client, String>>; 2] =
        [OnceLock::new(), OnceLock::new()];
    CLIENTS[usize::from(verify)]
        .get_or_init(|| {
            let tls = tandem_certs::service_check_client_config(verify)
                .map_err(|e| format!("TLS client: {e}"))?;
            reqwest::Client::builder()
                .tls_backend_preconfigured((*tls).clone())
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("http client: {e}"))
        })
        .clone()
}

async fn http(spec: &CheckSpec, url: &str, limit: Duration) -> (bool, String) {
    let client = match http_client(spec.tls_verify) {
        Ok(c) => c,
        Err(e) => return (false, e),
    };
    let resp = match client.get(url).timeout(limit).send().await {
        Ok(r) => r,
        Err(e) => return (false, format!("{url}: {e}")),
    };
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let mut stream = resp;
    while body.len() < MAX_OUTPUT_BYTES {
        match stream.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(MAX_OUTPUT_BYTES);
    let text = String::from_utf8_lossy(&body);
    if status != spec.expect_status {
        return (
            false,
            format!("status {status} (expected {}): {text}", spec.expect_status),
        );
    }
    if let Some(want) = &spec.body_contains {
        if !text.contains(want.as_str()) {
            return (false, format!("status {status}, body lacks {want:?}"));
        }
    }
    (true, format!("status {status}"))
}

async fn exec(spec: &CheckSpec) -> (bool, String) {
    let Some((program, args)) = spec.command.split_first() else {
        return (false, "no command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The timeout drops the future; the child goes with it.
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("{program}: {e}")),
    };
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout
            .take(MAX_OUTPUT_BYTES as u64)
            .read_to_end(&mut out)
            .await;
    }
    if out.is_empty() {
        if let Some(stderr) = child.stderr.take() {
            let _ = stderr
                .take(MAX_OUTPUT_BYTES as u64)
                .read_to_end(&mut out)
                .await;
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    match child.wait().await {
        Ok(s) if s.success() => (true, text),
        Ok(s) => (false, format!("{s}: {text}")),
        Err(e) => (false, format!("{program}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> CheckState {
        CheckState::new("tcp", "127.0.0.1:1")
    }

    #[test]
    fn fall_failures_in_a_row_make_it_failing_and_rise_successes_healthy() {
        let mut s = state();
        // rise 2, fall 3
        assert_eq!(s.record(true, 2, 3, "ok".into(), 1), None);
        assert_eq!(s.record(true, 2, 3, "ok".into(), 2), Some(Health::Healthy));
        assert_eq!(s.record(false, 2, 3, "x".into(), 3), None);
        assert_eq!(s.record(false, 2, 3, "x".into(), 4), None);
        // A success in between starts the count over (a flapping service).
        assert_eq!(s.record(true, 2, 3, "ok".into(), 5), None);
        assert_eq!(s.record(false, 2, 3, "x".into(), 6), None);
        assert_eq!(s.record(false, 2, 3, "x".into(), 7), None);
        assert_eq!(s.health, Health::Healthy);
        assert_eq!(s.record(false, 2, 3, "x".into(), 8), Some(Health::Failing));
        assert_eq!(s.last_change_ms, Some(8));
        assert_eq!(s.record(true, 2, 3, "ok".into(), 9), None);
        assert_eq!(s.record(true, 2, 3, "ok".into(), 10), Some(Health::Healthy));
    }

    #[test]
    fn output_is_cut() {
        let mut s = state();
        s.record(false, 1, 1, "y".repeat(1000), 1);
        assert_eq!(s.output.chars().count(), SNIPPET_CHARS + 1);
    }

    fn spec(kind: &str) -> CheckSpec {
        CheckSpec {
            name: "c".into(),
            kind: kind.into(),
            target: String::new(),
            targets: BTreeMap::new(),
            command: Vec::new(),
            nodes: Vec::new(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 1,
            fall: 1,
            expect_status: 200,
            body_contains: None,
            tls_verify: true,
        }
    }

    #[test]
    fn targets_per_node_and_nodes_filter() {
        let mut a = spec("tcp");
        a.target = "10.0.0.1:80".into();
        a.targets = [("b".to_string(), "10.0.0.2:80".to_string())].into();
        let mut only_a = spec("tcp");
        only_a.name = "only-a".into();
        only_a.target = "10.0.0.9:80".into();
        only_a.nodes = vec!["a".into()];
        let all = [a, only_a];
        let on_a: Vec<String> = applicable(&all, "a").into_iter().map(|(_, t)| t).collect();
        let on_b: Vec<String> = applicable(&all, "b").into_iter().map(|(_, t)| t).collect();
        assert_eq!(on_a, vec!["10.0.0.1:80", "10.0.0.9:80"]);
        assert_eq!(on_b, vec!["10.0.0.2:80"]);
    }

    #[tokio::test]
    async fn exec_and_tcp_run_for_real() {
        let mut ok = spec("exec");
        ok.command = vec!["sh".into(), "-c".into(), "echo fine".into()];
        assert_eq!(run_once(&ok, "").await, (true, "fine\n".to_string()));
        let mut bad = spec("exec");
        bad.command = vec!["sh".into(), "-c".into(), "echo broken; exit 3".into()];
        let (r, out) = run_once(&bad, "").await;
        assert!(!r && out.contains("broken") && out.contains('3'), "{out}");
        let mut slow = spec("exec");
        slow.timeout_ms = 100;
        slow.command = vec!["sleep".into(), "5".into()];
        let started = std::time::Instant::now();
        let (r, out) = run_once(&slow, "").await;
        assert!(!r && out.contains("no answer"), "{out}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        assert!(run_once(&spec("tcp"), &addr).await.0);
        drop(listener);
        assert!(!run_once(&spec("tcp"), &addr).await.0);
    }
}
