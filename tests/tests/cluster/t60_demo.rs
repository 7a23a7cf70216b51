use super::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Stdio};
use std::time::Instant;
use tandem_tests::pid_alive;

/// The demo process and the node processes it started; on drop (test
/// failure) the demo gets SIGINT then SIGKILL, and any of its nodes
/// still alive SIGKILL (all started by this test, killed by PID).
struct Demo {
    child: Option<Child>,
    nodes: Vec<u32>,
    root: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGINT);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
        }
        for &p in &self.nodes {
            if pid_alive(p) && is_tandem_run(p) {
                let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            for f in [
                "demo.out",
                "demo.err",
                "demo/a.log",
                "demo/b.log",
                "demo/w.log",
            ] {
                eprintln!(
                    "----- {f} -----\n{}",
                    tandem_tests::tail(&self.root.path().join(f), 30)
                );
            }
        }
    }
}

impl Demo {
    /// Starts `tandem demo --dir ROOT/demo` with `stdin`, its output in
    /// `ROOT/demo.out` and `ROOT/demo.err`; returns it and the demo's
    /// directory.
    fn start(stdin: Stdio) -> (Self, std::path::PathBuf) {
        let root = tempfile::Builder::new()
            .prefix("tandem-demo-test-")
            .tempdir()
            .expect("tempdir");
        let dir = root.path().join("demo");
        let out = std::fs::File::create(root.path().join("demo.out")).expect("demo.out");
        let err = std::fs::File::create(root.path().join("demo.err")).expect("demo.err");
        let child = std::process::Command::new(tandem_tests::tandem_bin())
            .arg("demo")
            .arg("--dir")
            .arg(&dir)
            .stdin(stdin)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting tandem demo");
        let demo = Self {
            child: Some(child),
            nodes: Vec::new(),
            root,
        };
        (demo, dir)
    }

    /// The demo process's PID.
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the demo runs").id()
    }

    /// Ctrl-C: SIGINT to the demo, which must exit 0 within 30 s.
    async fn interrupt(&mut self) {
        let mut child = self.child.take().expect("the demo runs");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT to our child");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for the demo") {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                self.child = Some(child);
                panic!("the demo did not exit within 30 s of SIGINT");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status.code(), Some(0), "demo exit status {status:?}");
    }
}

fn is_tandem_run(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.iter().any(|a| a.ends_with(b"tandem")) && args.iter().any(|a| *a == b"run")
    })
}

/// PIDs of the children of `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_three_nodes_and_stops_them_on_sigint() {
    let _slot = tandem_tests::cluster_slot().await;
    let (mut demo, dir) = Demo::start(Stdio::null());
    let demo_pid = demo.pid();

    let doc: Value = wait_until("demo.json", Duration::from_secs(90), || async {
        let text = std::fs::read_to_string(dir.join("demo.json")).ok()?;
        serde_json::from_str(&text).ok()
    })
    .await;
    let runs: Vec<u32> = children_of(demo_pid)
        .into_iter()
        .filter(|p| is_tandem_run(*p))
        .collect();
    demo.nodes = runs.clone();
    assert_eq!(runs.len(), 3, "the demo runs three nodes: {runs:?}");

    let token = doc["token"].as_str().expect("token").to_string();
    let ca = doc["ca"].as_str().expect("ca");
    let ca_pem = std::fs::read_to_string(ca).expect("the CA file");
    let nodes = doc["nodes"].as_array().expect("nodes");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["a", "b", "w"]);
    let apis: Vec<String> = nodes
        .iter()
        .map(|n| n["api"].as_str().expect("api").to_string())
        .collect();
    for n in nodes {
        let d = n["dir"].as_str().expect("dir");
        assert!(std::path::Path::new(d).join("node.toml").is_file(), "{d}");
    }
    let http = tandem_tests::https_client(&ca_pem);

    // The node that leads accepts a PUT, like the curl line the demo prints.
    let leader = wait_until("a demo leader", WAIT, || async {
        for (i, api) in apis.iter().enumerate() {
            let h: tandem_web::HealthView = http
                .get(format!("{api}/health"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            if h.role == "leader" {
                return Some(i);
            }
        }
        None
    })
    .await;
    let resp = http
        .put(format!("{}/api/v1/config/greeting", apis[leader]))
        .bearer_auth(&token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(r#"{"value":{"hello":"world"}}"#)
        .send()
        .await
        .expect("PUT greeting");
    assert_eq!(resp.status(), StatusCode::OK);
    for api in &apis {
        let v = wait_until(&format!("greeting on {api}"), WAIT, || async {
            let resp = http
                .get(format!("{api}/api/v1/config/greeting?stale=true"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            if resp.status() != StatusCode::OK {
                return None;
            }
            resp.json::<tandem_web::ConfigEntryView>().await.ok()
        })
        .await;
        assert_eq!(v.value, json!({"hello": "world"}));
    }

    // Ctrl-C: the demo exits 0 within 30 s and leaves no node behind.
    demo.interrupt().await;
    for p in &runs {
        assert!(!pid_alive(*p), "node process {p} outlived the demo");
    }
    for api in &apis {
        assert!(
            http.get(format!("{api}/health")).send().await.is_err(),
            "{api} still answers after the demo stopped"
        );
    }
}

/// `GET {api}/health` through `http`.
async fn health_of(http: &reqwest::Client, api: &str) -> Option<tandem_web::HealthView> {
    http.get(format!("{api}/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The demo's nodes with their pids, as demo.json says now.
fn demo_nodes(dir: &std::path::Path) -> Option<Vec<(String, String, u32)>> {
    let text = std::fs::read_to_string(dir.join("demo.json")).ok()?;
    let doc: Value = serde_json::from_str(&text).ok()?;
    doc["nodes"]
        .as_array()?
        .iter()
        .map(|n| {
            Some((
                n["name"].as_str()?.to_string(),
                n["api"].as_str()?.to_string(),
                u32::try_from(n["pid"].as_u64()?).ok()?,
            ))
        })
        .collect()
}

/// Kill -9 of the demo's primary: the backup takes over, the survivors
/// keep serving (checked for 10 s), the demo says which node died and
/// prints the command that starts it again; that command brings it back
/// as backup; Enter on the demo's standard input starts it again as the
/// demo's own child; Ctrl-C then stops everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keeps_the_survivors_when_a_node_dies_and_brings_it_back() {
    use std::io::Write;
    let _slot = tandem_tests::cluster_slot().await;
    let (mut demo, dir) = Demo::start(Stdio::piped());
    let demo_pid = demo.pid();
    let out_path = demo.root.path().join("demo.out");
    let mut stdin = demo
        .child
        .as_mut()
        .and_then(|c| c.stdin.take())
        .expect("piped stdin");
    let nodes = wait_until("demo.json", Duration::from_secs(90), || async {
        demo_nodes(&dir)
    })
    .await;
    demo.nodes = nodes.iter().map(|n| n.2).collect();
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("demo.json")).expect("json"))
            .expect("demo.json");
    let token = doc["token"].as_str().expect("token").to_string();
    let ca_pem = std::fs::read_to_string(doc["ca"].as_str().expect("ca")).expect("the CA file");
    let http = tandem_tests::https_client(&ca_pem);
    let role_of = |h: Option<tandem_web::HealthView>| h.map(|h| h.role);
    let leader = wait_until("a demo leader", WAIT, || async {
        // a and b are the appliances; w only votes.
        for (i, n) in nodes.iter().enumerate().take(2) {
            if role_of(health_of(&http, &n.1).await).as_deref() == Some("leader") {
                return Some(i);
            }
        }
        None
    })
    .await;
    let other = 1 - leader;
    let (dead, dead_api, dead_pid) = nodes[leader].clone();
    let put = |api: String, key: String| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            http.put(format!("{api}/api/v1/config/{key}"))
                .bearer_auth(&token)
                .json(&json!({ "value": key }))
                .send()
                .await
                .ok()
                .map(|r| r.status())
        }
    };
    assert_eq!(
        put(dead_api.clone(), "before".into()).await,
        Some(StatusCode::OK)
    );

    // kill -9 of the primary (a grandchild of this test, by PID).
    kill(Pid::from_raw(dead_pid as i32), Signal::SIGKILL).expect("SIGKILL");
    let survivor_api = nodes[other].1.clone();
    wait_until("the backup to take over", WAIT, || async {
        (put(survivor_api.clone(), "after".into()).await == Some(StatusCode::OK)).then_some(())
    })
    .await;
    // The survivors keep serving for 10 s and more.
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(10) {
        n += 1;
        assert_eq!(
            put(survivor_api.clone(), format!("k{n}")).await,
            Some(StatusCode::OK),
            "write {n} to the new primary, {:?} after the takeover",
            start.elapsed()
        );
        for (name, api, _) in nodes.iter().filter(|x| x.0 != dead) {
            assert!(
                health_of(&http, api).await.is_some(),
                "{name} stopped answering {:?} after the takeover",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(pid_alive(demo_pid), "the demo exited when one node died");

    // The demo named the node and printed the command.
    let printed = wait_until("the demo's restart command", WAIT, || async {
        let text = std::fs::read_to_string(&out_path).ok()?;
        let mut lines = text
            .lines()
            .skip_while(|l| !l.starts_with(&format!("node {dead} exited")));
        lines.next()?;
        let cmd = lines.find(|l| l.starts_with("  ") && l.contains(" run --dir "))?;
        Some(cmd.trim().to_string())
    })
    .await;
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{printed}");
    assert_eq!(&words[1..3], ["run", "--dir"], "{printed}");
    let log = std::fs::File::create(dir.join("restarted.log")).expect("log");
    let mut mine = std::process::Command::new(words[0])
        .args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("running the printed command");
    let back_as_backup = || async {
        let h = health_of(&http, &dead_api).await?;
        let s = health_of(&http, &survivor_api).await?;
        (h.role == "follower" && s.role == "leader" && h.applied_index >= s.applied_index)
            .then_some(())
    };
    wait_until(&format!("{dead} back as backup"), WAIT, back_as_backup).await;
    let _ = kill(Pid::from_raw(mine.id() as i32), Signal::SIGKILL);
    let _ = mine.wait();

    // Enter: the demo starts it again itself.
    wait_until(&format!("{dead} down again"), WAIT, || async {
        health_of(&http, &dead_api).await.is_none().then_some(())
    })
    .await;
    stdin.write_all(b"\n").expect("Enter to the demo");
    stdin.flush().expect("flush");
    wait_until(
        &format!("{dead} back as backup again"),
        WAIT,
        back_as_backup,
    )
    .await;
    let now = demo_nodes(&dir).expect("demo.json");
    let restarted = now.iter().find(|x| x.0 == dead).expect("the node").2;
    assert_ne!(restarted, dead_pid, "demo.json names the new process");
    demo.nodes = now.iter().map(|x| x.2).collect();

    // Ctrl-C stops all three, the restarted one included.
    demo.interrupt().await;
    for p in &demo.nodes {
        assert!(!pid_alive(*p), "node process {p} outlived the demo");
    }
}
