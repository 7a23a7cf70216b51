//! The shared-IP guard: a child process that gives this host's shared
//! addresses up when the daemon cannot.
//!
//! The role manager releases the shared IPs on demotion, lease loss, break
//! and shutdown. A daemon killed with SIGKILL, or paused (SIGSTOP, a stalled
//! VM), releases nothing while the backup takes the address over: two
//! holders. The guard closes that gap. `tandem run` starts it (`tandem
//! shared-ip-guard`, a hidden verb) in its own process group, with a pipe on
//! its standard input, and tells it — *before* every acquisition — which
//! addresses may be on this host and until when the primary's lease runs
//! (on `CLOCK_MONOTONIC`, which every process of the host shares). The guard
//! releases everything it was told about when
//! - its standard input closes: the daemon is gone, however it ended;
//! - the deadline passes without a renewal: the daemon is paused or stuck.
//!   It says so on its standard output; a daemon that is still primary
//!   (it was only slow) takes the addresses again.
//!
//! Messages are JSON lines ([`ToGuard`], [`FromGuard`]). The guard is a
//! second line of defence: when it cannot be started the daemon still takes
//! the addresses (service first) and shows the error in status and readiness.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, Notify};

use super::driver::select::driver_from_config;
use super::driver::SharedIpDriver;
use super::spec::SharedIpSpec;
use crate::config::SharedIpConfig;
use crate::util::lock;

/// The hidden CLI verb that runs the guard.
pub const GUARD_VERB: &str = "shared-ip-guard";
/// Bound on one write to the guard's pipe (a stuck guard is replaced).
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// Tries per address when the guard releases.
const RELEASE_TRIES: u32 = 5;
/// Pause between those tries.
const RELEASE_PAUSE: Duration = Duration::from_millis(100);

/// From the daemon to the guard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToGuard {
    /// First line: how to release (the node's `[shared_ip]` section).
    Config {
        /// The driver configuration.
        shared_ip: SharedIpConfig,
    },
    /// Everything that may be on this host now (each with the epoch it was
    /// taken for) and the deadline (`CLOCK_MONOTONIC` ms) after which the
    /// guard releases them unless renewed. Replaces the previous one.
    Hold {
        /// Addresses that may be held.
        held: Vec<(SharedIpSpec, u64)>,
        /// Lease deadline; `None`: no deadline (only the daemon's exit).
        deadline_ms: Option<u64>,
    },
}

/// From the guard to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromGuard {
    /// The guard released addresses because the deadline passed.
    Released {
        /// Why (for the history).
        reason: String,
        /// `address/prefix` of each address released.
        addresses: Vec<String>,
        /// Releases that failed after every try.
        errors: Vec<String>,
    },
}

/// Milliseconds on `CLOCK_MONOTONIC` (the same clock in every process of
/// this host; `std::time::Instant` reads it too on Linux).
pub fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let ms = i128::from(t.tv_sec()) * 1000 + i128::from(t.tv_nsec()) / 1_000_000;
        u64::try_from(ms).unwrap_or(0)
    })
}

fn line_of<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    line
}

// ---------------------------------------------------------------- daemon side

#[derive(Default)]
struct Told {
    held: Vec<(SharedIpSpec, u64)>,
    deadline_ms: Option<u64>,
    /// Why the guard is not running (for status), if it is not.
    error: Option<String>,
}

#[derive(Default)]
struct Pipe {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

/// The daemon's side of the guard: spawns it (again, if it died) and keeps
/// it told.
pub struct GuardLink {
    cfg: SharedIpConfig,
    exe: PathBuf,
    told: Mutex<Told>,
    pipe: tokio::sync::Mutex<Pipe>,
    renewed: Notify,
    reports: mpsc::UnboundedSender<FromGuard>,
}

impl GuardLink {
    /// A link that will run `exe shared-ip-guard` (the daemon passes
    /// `/proc/self/exe`) for `cfg`. The receiver gets what the guard reports;
    /// the guard starts on [`GuardLink::start`] or at the first message.
    pub fn new(
        cfg: SharedIpConfig,
        exe: impl Into<PathBuf>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<FromGuard>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Self {
            cfg,
            exe: exe.into(),
            told: Mutex::new(Told::default()),
            pipe: tokio::sync::Mutex::new(Pipe::default()),
            renewed: Notify::new(),
            reports: tx,
        });
        (link, rx)
    }

    /// Starts the guard now and the task that passes renewals on (until
    /// `stop`). Errors are kept for [`GuardLink::error`].
    pub async fn start(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let _ = self.send().await;
        let link = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = link.renewed.notified() => {
                        let _ = link.send().await;
                    }
                }
            }
        });
    }

    /// Whether the last renewal still runs (`false` before any). The manager
    /// takes no address on a lapsed lease: after a pause, the role manager
    /// must renew (it is still primary) before anything is taken again.
    pub fn lease_valid(&self) -> bool {
        lock(&self.told)
            .deadline_ms
            .is_some_and(|d| monotonic_ms() < d)
    }

    /// Why the guard is not running, if it is not.
    pub fn error(&self) -> Option<String> {
        lock(&self.told).error.clone()
    }

    /// Tells the guard what may be on this host now and waits until it is
    /// written to the pipe (so a kill right after still finds it released).
    ///
    /// # Errors
    /// The guard cannot be started or written to.
    pub async fn tell(&self, held: Vec<(SharedIpSpec, u64)>) -> Result<(), String> {
        {
            let mut t = lock(&self.told);
            if t.held == held && t.error.is_none() {
                return Ok(());
            }
            t.held = held;
        }
        self.send().await
    }

    /// The lease runs `valid_for` from now: passed on by the background task
    /// (never waits; call it on every role tick while primary).
    pub fn renew(&self, valid_for: Duration) {
        let deadline =
            monotonic_ms().saturating_add(u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX));
        let mut t = lock(&self.told);
        t.deadline_ms = Some(deadline);
        if !t.held.is_empty() {
            self.renewed.notify_one();
        }
    }

    async fn send(&self) -> Result<(), String> {
        let mut pipe = self.pipe.lock().await;
        // Read what to say under the pipe lock: the newest state goes last.
        let msg = {
            let t = lock(&self.told);
            ToGuard::Hold {
                held: t.held.clone(),
                deadline_ms: t.deadline_ms,
            }
        };
        let line = line_of(&msg);
        let mut last = String::new();
        for _ in 0..2 {
            if pipe.stdin.is_none() {
                if let Err(e) = self.spawn(&mut pipe).await {
                    last = e;
                    continue;
                }
            }
            let Some(stdin) = pipe.stdin.as_mut() else {
                continue;
            };
            let w = tokio::time::timeout(WRITE_TIMEOUT, async {
                stdin.write_all(&line).await?;
                stdin.flush().await
            })
            .await;
            match w {
                Ok(Ok(())) => {
                    lock(&self.told).error = None;
                    return Ok(());
                }
                Ok(Err(e)) => last = format!("writing to the shared-IP guard: {e}"),
                Err(_) => last = "the shared-IP guard does not read its input".to_owned(),
            }
            tracing::warn!(error = %last, "shared-IP guard lost; starting a new one");
            if let Some(mut c) = pipe.child.take() {
                let _ = c.start_kill();
            }
            pipe.stdin = None;
        }
        tracing::error!(error = %last, "shared-IP guard not running: a killed daemon would leave the shared IPs on this host");
        lock(&self.told).error = Some(format!("shared-IP guard not running: {last}"));
        Err(last)
    }

    async fn spawn(&self, pipe: &mut Pipe) -> Result<(), String> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg(GUARD_VERB)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Not in the daemon's process group: a Ctrl-C in the terminal
            // stops the daemon (which releases), not the guard.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {} {GUARD_VERB}: {e}", self.exe.display()))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err("the shared-IP guard has no pipes".to_owned());
        };
        let cfg = line_of(&ToGuard::Config {
            shared_ip: self.cfg.clone(),
        });
        let w = tokio::time::timeout(WRITE_TIMEOUT, stdin.write_all(&cfg)).await;
        if !matches!(w, Ok(Ok(()))) {
            let _ = child.start_kill();
            return Err("the shared-IP guard does not read its configuration".to_owned());
        }
        tracing::info!(pid = child.id(), "shared-IP guard started");
        tokio::spawn(read_reports(stdout, self.reports.clone()));
        pipe.child = Some(child);
        pipe.stdin = Some(stdin);
        Ok(())
    }
}

async fn read_reports(stdout: ChildStdout, tx: mpsc::UnboundedSender<FromGuard>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        match serde_json::from_str::<FromGuard>(&l) {
            Ok(r) => {
                if tx.send(r).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "unreadable line from the shared-IP guard"),
        }
    }
    tracing::debug!("shared-IP guard output closed");
}

// ---------------------------------------------------------------- guard side

/// The guard process (`tandem shared-ip-guard`): reads [`ToGuard`] lines
/// until its input closes, releasing on a missed deadline and at the end.
///
/// # Errors
/// The first line is not a configuration, or the driver cannot be built.
pub async fn run_guard() -> anyhow::Result<()> {
    let stdin = tokio::io::stdin();
    let mut lines = BufReader::new(stdin).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    let Ok(ToGuard::Config { shared_ip }) = serde_json::from_str(&first) else {
        anyhow::bail!(
            "{GUARD_VERB} is started by `tandem run`, not by hand (first line: {first:?})"
        );
    };
    let driver = driver_from_config(&shared_ip).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let mut held: Vec<(SharedIpSpec, u64)> = Vec::new();
    let mut deadline: Option<u64> = None;
    let mut out = tokio::io::stdout();
    loop {
        let wait = match deadline {
            Some(d) if !held.is_empty() => Duration::from_millis(d.saturating_sub(monotonic_ms())),
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => match serde_json::from_str::<ToGuard>(&l) {
                    Ok(ToGuard::Hold { held: h, deadline_ms }) => {
                        held = h;
                        deadline = deadline_ms;
                    }
                    Ok(ToGuard::Config { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "shared-IP guard: unreadable line"),
                },
                Ok(None) | Err(_) => {
                    if !held.is_empty() {
                        tracing::warn!(count = held.len(), "shared-IP guard: the daemon is gone; releasing the shared IPs it held");
                        release_everything(driver.as_ref(), &held).await;
                    }
                    return Ok(());
                }
            },
            () = tokio::time::sleep(wait) => {
                if held.is_empty() || deadline.is_none_or(|d| monotonic_ms() < d) {
                    continue;
                }
                tracing::warn!(count = held.len(), "shared-IP guard: the primary's lease ran out without renewal (daemon paused or stuck); releasing the shared IPs");
                let (addresses, errors) = release_everything(driver.as_ref(), &held).await;
                held.clear();
                let report = line_of(&FromGuard::Released {
                    reason: "lease ran out without renewal".to_owned(),
                    addresses,
                    errors,
                });
                // The daemon may be paused: the pipe buffers this line.
                let _ = out.write_all(&report).await;
                let _ = out.flush().await;
            }
        }
    }
}

/// Releases each of `held`, trying each a few times; returns the addresses
/// released and the errors of those that could not be.
async fn release_everything(
    driver: &dyn SharedIpDriver,
    held: &[(SharedIpSpec, u64)],
) -> (Vec<String>, Vec<String>) {
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    for (spec, epoch) in held {
        let mut last = None;
        for attempt in 0..RELEASE_TRIES {
            if attempt > 0 {
                tokio::time::sleep(RELEASE_PAUSE).await;
            }
            match driver.release(spec, *epoch).await {
                Ok(note) => {
                    tracing::info!(%spec, epoch, note = %note, "shared-IP guard: released");
                    last = None;
                    break;
                }
                Err(e) => last = Some(e.0),
            }
        }
        match last {
            None => done.push(spec.cidr()),
            Some(e) => {
                tracing::error!(%spec, error = %e, "shared-IP guard: release failed");
                errors.push(format!("{spec}: {e}"));
            }
        }
    }
    (done, errors)
}
