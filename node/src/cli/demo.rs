//! `tandem demo`: a primary `a`, a backup `b` and a witness `w` as three
//! real processes on loopback, joined through the real join flow.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::bootstrap::InitOutcome;
use crate::cli::dispatch::poll;
use crate::client::ApiClient;

/// How long the demo waits for a node it stops to exit.
const NODE_STOP_WAIT: Duration = Duration::from_secs(15);
/// How often the demo looks at its nodes.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// One started node process.
pub struct DemoNode {
    /// Its name.
    pub name: String,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its API base URL.
    pub api: String,
    /// The process.
    pub child: Child,
}

/// A running local cluster of three processes (used by the demo and the benchmark).
pub struct LocalCluster {
    /// The `tandem` binary the nodes run.
    pub exe: PathBuf,
    /// Root directory.
    pub root: PathBuf,
    /// Admin token.
    pub token: String,
    /// The first web UI user.
    pub admin_user: String,
    /// Its one-time password.
    pub admin_password: String,
    /// CA certificate file.
    pub ca_file: PathBuf,
    /// The nodes: a, b, w.
    pub nodes: Vec<DemoNode>,
}

fn tandem_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the tandem executable")
}

async fn run_to_end(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running tandem {}", args.join(" ")))?;
    std::fs::write(log, &out.stderr).ok();
    if !out.status.success() {
        bail!(
            "tandem {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `exe run --dir DIR` with its stderr appended to `log`.
fn spawn_run(exe: &Path, dir: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn().context("starting tandem run")
}

impl LocalCluster {
    /// Creates and starts `a` (init), then joins `b` and witness `w`, each
    /// with free loopback ports, running the binary `exe`. Extra `init`
    /// flags (tuning) go to every node.
    ///
    /// # Errors
    /// Any step of init, join or start-up failing.
    pub async fn start(exe: &Path, root: &Path, tuning_flags: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let dir_a = root.join("a");
        let dir_a_s = dir_a.to_string_lossy().into_owned();
        let mut args = vec![
            "init",
            "--dir",
            &dir_a_s,
            "--name",
            "a",
            "--peer-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--site",
            "room-a",
            "--json",
        ];
        args.extend_from_slice(tuning_flags);
        let out = run_to_end(exe, &args, &root.join("a-init.log")).await?;
        let init: InitOutcome = serde_json::from_str(&out).context("reading init output")?;
        let child = spawn_run(exe, &dir_a, &root.join("a.log"))?;
        let mut cluster = Self {
            exe: exe.to_path_buf(),
            root: root.to_path_buf(),
            token: init.admin_token.clone(),
            admin_user: init.admin_user.clone(),
            admin_password: init.admin_password.clone(),
            ca_file: init.ca_file.clone(),
            nodes: vec![DemoNode {
                name: "a".into(),
                dir: dir_a,
                api: init.api.clone(),
                child,
            }],
        };
        let client = cluster.client(0)?;
        wait_healthy(&client).await?;
        for (name, witness) in [("b", false), ("w", true)] {
            let v: Value = client
                .call_leader(
                    Method::POST,
                    "/api/v1/join-tokens",
                    Some(&json!({ "kind": if witness { "witness" } else { "appliance" } })),
                )
                .await?;
            let token = v
                .get("token")
                .and_then(Value::as_str)
                .context("no token in answer")?;
            let dir = root.join(name);
            let dir_s = dir.to_string_lossy().into_owned();
            let site = format!("room-{name}");
            // Every demo node runs on this one machine: said on purpose, and
            // status keeps warning about it.
            let mut args = vec![
                "join",
                "--dir",
                &dir_s,
                "--name",
                name,
                "--token",
                token,
                "--peer",
                &init.api,
                "--peer-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
                "--site",
                &site,
                "--allow-same-site",
            ];
            if witness {
                args.push("--witness");
            }
            args.extend_from_slice(tuning_flags);
            run_to_end(exe, &args, &root.join(format!("{name}-join.log"))).await?;
            let cfg = crate::config::DataDir::new(&dir).load()?;
            let child = spawn_run(exe, &dir, &root.join(format!("{name}.log")))?;
            cluster.nodes.push(DemoNode {
                name: name.into(),
                dir,
                api: cfg.api_advertise,
                child,
            });
        }
        let voters = poll(300, Duration::from_millis(100), || async {
            let v: Value = client.get("/api/v1/cluster").await.ok()?;
            let members = v.get("members")?.as_array()?;
            let voters = members
                .iter()
                .filter(|m| m.get("voter").and_then(Value::as_bool) == Some(true))
                .count();
            (voters == 3).then_some(voters)
        })
        .await;
        if voters.is_none() {
            bail!(
                "the three nodes did not become voters within 30 s (logs in {})",
                root.display()
            );
        }
        Ok(cluster)
    }

    /// Kills node `i` with SIGKILL (our own child, by PID) and reaps it.
    pub async fn kill9(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let _ = n.child.kill().await;
    }

    /// Starts node `i` again in its data directory.
    ///
    /// # Errors
    /// If the process cannot be started.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        let log = self.root.join(format!("{}.log", n.name));
        n.child = spawn_run(&self.exe, &n.dir, &log)?;
        Ok(())
    }

    /// A client of node `i` with the admin token, checking it is that node.
    ///
    /// # Errors
    /// If its directory's configuration or CA cannot be read.
    pub fn client(&self, i: usize) -> anyhow::Result<ApiClient> {
        ApiClient::for_dir(&self.nodes[i].dir, Some(self.token.clone()))
    }

    /// The `demo.json` document.
    pub fn describe(&self) -> Value {
        json!({
            "token": self.token,
            "admin": { "user": self.admin_user, "password": self.admin_password },
            "ca": self.ca_file,
            "nodes": self.nodes.iter().map(|n| json!({
                "name": n.name,
                "api": n.api,
                "dir": n.dir,
                "pid": n.child.id(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Sends SIGTERM to every node and waits for each (bounded), killing
    /// any that does not stop.
    pub async fn stop(&mut self) {
        for n in &self.nodes {
            if let Some(pid) = n.child.id() {
                // Only our own children, by PID.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for n in &mut self.nodes {
            if tokio::time::timeout(NODE_STOP_WAIT, n.child.wait())
                .await
                .is_err()
            {
                let _ = n.child.kill().await;
            }
        }
    }
}

async fn wait_healthy(client: &ApiClient) -> anyhow::Result<()> {
    let ok = poll(200, Duration::from_millis(50), || async {
        client.get::<Value>("/health").await.ok().map(|_| ())
    })
    .await;
    ok.context("the first node did not answer /health within 10 s")
}

/// Runs the demo until `shutdown`.
///
/// # Errors
/// If the cluster cannot be started.
pub async fn run_demo(dir: Option<PathBuf>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let root = match dir {
        Some(d) => {
            if d.join("a").exists() {
                bail!("{} already holds a demo; choose another --dir", d.display());
            }
            d
        }
        None => tempfile::Builder::new()
            .prefix("tandem-demo-")
            .tempdir()
            .context("creating a temporary directory")?
            .keep(),
    };
    println!("starting a, b and witness w in {} ...", root.display());
    let exe = tandem_exe()?;
    let mut cluster = LocalCluster::start(&exe, &root, &[]).await?;
    let doc = cluster.describe();
    let json_path = root.join("demo.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&doc)?).context("writing demo.json")?;
    println!();
    for n in &cluster.nodes {
        println!(
            "  {:<2} {}   (pid {}, data: {})",
            n.name,
            n.api,
            n.child.id().unwrap_or(0),
            n.dir.display()
        );
    }
    println!();
    println!("admin token: {}", cluster.token);
    println!(
        "web UI:      {}/  (user {}, password {})",
        cluster.nodes[0].api, cluster.admin_user, cluster.admin_password
    );
    println!("CA file:     {}", cluster.ca_file.display());
    println!("written to:  {}", json_path.display());
    println!();
    println!("try:");
    println!(
        "  curl --cacert {} -H 'Authorization: Bearer {}' -X PUT -H 'content-type: application/json' \\\n       -d '{{\"value\":{{\"hello\":\"world\"}}}}' {}/api/v1/config/greeting",
        cluster.ca_file.display(),
        cluster.token,
        cluster.nodes[0].api
    );
    println!(
        "  tandem status --dir {} --token {}",
        cluster.nodes[0].dir.display(),
        cluster.token
    );
    println!();
    println!("Ctrl-C stops all three. Kill one (kill -9 of its PID, in demo.json) to watch the");
    println!("others carry on; the demo then says how to start it again.");
    watch_nodes(&mut cluster, &json_path, shutdown).await;
    println!("stopping ...");
    cluster.stop().await;
    println!("stopped; data kept in {}", root.display());
    Ok(())
}

/// Until `shutdown`: reports every node that exits, keeps the others
/// running, and prints the command that starts it again; a line on standard
/// input starts every exited node again as the demo's own child.
async fn watch_nodes(cluster: &mut LocalCluster, json_path: &Path, shutdown: CancellationToken) {
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    let mut down = vec![false; cluster.nodes.len()];
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            line = lines.recv(), if stdin_open => {
                if line.is_none() {
                    // Standard input closed (no terminal): Ctrl-C and the
                    // printed commands still work.
                    stdin_open = false;
                    continue;
                }
                for (i, is_down) in down.iter_mut().enumerate() {
                    if !*is_down {
                        continue;
                    }
                    let name = cluster.nodes[i].name.clone();
                    match cluster.restart(i) {
                        Ok(()) => {
                            *is_down = false;
                            println!("started {name} again (pid {})", cluster.nodes[i].child.id().unwrap_or(0));
                        }
                        Err(e) => eprintln!("could not start {name} again: {e:#}"),
                    }
                }
                write_json(cluster, json_path);
            }
            _ = tick.tick() => {
                for (i, n) in cluster.nodes.iter_mut().enumerate() {
                    if down[i] {
                        continue;
                    }
                    if let Ok(Some(status)) = n.child.try_wait() {
                        down[i] = true;
                        let log = cluster.root.join(format!("{}.log", n.name));
                        println!();
                        println!("node {} exited ({status}); its log: {}", n.name, log.display());
                        println!("the other nodes keep running. Start {} again with:", n.name);
                        println!("  {} run --dir {}", cluster.exe.display(), n.dir.display());
                        println!("or press Enter here and the demo starts it again.");
                    }
                }
            }
        }
    }
}

/// Lines typed on standard input. A plain thread reads them: a read
/// blocked on a terminal must not hold up the runtime's shutdown.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn write_json(cluster: &LocalCluster, path: &Path) {
    let doc = cluster.describe();
    match serde_json::to_vec_pretty(&doc) {
        Ok(bytes) => {
            if let Err(e) = std::fs::write(path, bytes) {
                eprintln!("could not update {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("could not update {}: {e}", path.display()),
    }
}
