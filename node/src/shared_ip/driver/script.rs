//! The `script` driver: runs the administrator's command with the action,
//! address, interface and epoch (bounded in time and output).

use std::path::PathBuf;
use std::time::Duration;

use super::super::spec::SharedIpSpec;
use super::{BoxFuture, DriverError, SharedIpDriver};

/// Runs `<script> <acquire|release|check> <address/prefix> <interface> <epoch>`.
/// Exit status 0 is success (for `check`: the address is held here).
#[derive(Debug, Clone)]
pub struct ScriptDriver {
    script: PathBuf,
    timeout: Duration,
}

/// What one run of the script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// Exit code (None: killed by a signal or by the timeout).
    pub code: Option<i32>,
    /// Whether it ran out of time.
    pub timed_out: bool,
    /// stdout and stderr, trimmed and bounded.
    pub output: String,
}

impl ScriptDriver {
    /// A driver running `script`, each run bounded by `timeout`.
    pub fn new(script: PathBuf, timeout: Duration) -> Self {
        Self { script, timeout }
    }

    /// Runs the script once.
    ///
    /// # Errors
    /// The script cannot be started.
    pub async fn run(
        &self,
        action: &str,
        spec: &SharedIpSpec,
        epoch: u64,
    ) -> Result<ScriptOutcome, DriverError> {
        let mut cmd = tokio::process::Command::new(&self.script);
        cmd.arg(action)
            .arg(spec.cidr())
            .arg(&spec.interface)
            .arg(epoch.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| DriverError(format!("cannot run {}: {e}", self.script.display())))?;
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => Ok(ScriptOutcome {
                code: None,
                timed_out: true,
                output: String::new(),
            }),
            Ok(Err(e)) => Err(DriverError(format!("{}: {e}", self.script.display()))),
            Ok(Ok(out)) => {
                let mut text = String::new();
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                if !stdout.trim().is_empty() {
                    text.push_str("stdout: ");
                    text.push_str(stdout.trim());
                }
                if !stderr.trim().is_empty() {
                    if !text.is_empty() {
                        text.push_str("; ");
                    }
                    text.push_str("stderr: ");
                    text.push_str(stderr.trim());
                }
                Ok(ScriptOutcome {
                    code: out.status.code(),
                    timed_out: false,
                    output: bounded(text, 2000),
                })
            }
        }
    }

    async fn run_checked(
        &self,
        action: &str,
        spec: &SharedIpSpec,
        epoch: u64,
    ) -> Result<String, DriverError> {
        let o = self.run(action, spec, epoch).await?;
        let what = format!(
            "{} {action} {} {} {epoch}",
            self.script.display(),
            spec.cidr(),
            spec.interface
        );
        if o.timed_out {
            return Err(DriverError(format!(
                "{what}: timed out after {:?} (killed)",
                self.timeout
            )));
        }
        match o.code {
            Some(0) => Ok(if o.output.is_empty() {
                format!("{what}: ok")
            } else {
                format!("{what}: ok; {}", o.output)
            }),
            code => Err(DriverError(format!(
                "{what}: exit {}{}",
                code.map_or_else(|| "by signal".to_owned(), |c| c.to_string()),
                if o.output.is_empty() {
                    String::new()
                } else {
                    format!("; {}", o.output)
                }
            ))),
        }
    }
}

fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl SharedIpDriver for ScriptDriver {
    fn name(&self) -> &'static str {
        "script"
    }
    fn acquire<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(self.run_checked("acquire", spec, epoch))
    }
    fn release<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(self.run_checked("release", spec, epoch))
    }
    fn held<'a>(
        &'a self,
        specs: &'a [SharedIpSpec],
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let mut held = Vec::new();
            for s in specs {
                let o = self.run("check", s, 0).await?;
                if o.code == Some(0) && !o.timed_out {
                    held.push(s.cidr());
                }
            }
            Ok(held)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(a: &str) -> SharedIpSpec {
        SharedIpSpec::parse(a, "eth0").expect("valid spec")
    }

    #[tokio::test]
    async fn script_driver_passes_arguments_and_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("fip");
        let state = dir.path().join("state");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\nS={s}\necho \"$@\" >> {s}.log\ncase $1 in\n acquire) echo \"$2\" > $S; echo took $2 epoch $4;;\n release) rm -f $S; echo gave $2 >&2;;\n check) test -f $S;;\n slow) sleep 5;;\nesac\n",
                s = state.display()
            ),
        )
        .expect("write script");
        let mut p = std::fs::metadata(&script).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
        std::fs::set_permissions(&script, p).expect("chmod");
        let d = ScriptDriver::new(script, Duration::from_millis(500));
        let s = spec("192.0.2.10/24");
        assert!(d
            .held(std::slice::from_ref(&s))
            .await
            .expect("check")
            .is_empty());
        let note = d.acquire(&s, 7).await.expect("acquire");
        assert!(note.contains("took 192.0.2.10/24 epoch 7"), "{note}");
        assert_eq!(
            d.held(std::slice::from_ref(&s)).await.expect("check"),
            vec![s.cidr()]
        );
        let note = d.release(&s, 7).await.expect("release");
        assert!(note.contains("stderr: gave 192.0.2.10/24"), "{note}");
        let o = d.run("slow", &s, 7).await.expect("run");
        assert!(o.timed_out);
        let log = std::fs::read_to_string(format!("{}.log", state.display())).expect("log");
        assert!(log.contains("acquire 192.0.2.10/24 eth0 7"), "{log}");
    }
}
