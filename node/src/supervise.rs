//! The node's essential background tasks, watched.
//!
//! The role manager, the shared-IP manager's loop and the leader duties run
//! for the life of the node. If one of them ends or panics while the node is
//! not stopping, the node must not go on as if nothing happened (a primary
//! without its role manager would keep its shared IPs with nobody renewing
//! the lease or watching the epoch). [`essential`] runs such a task and
//! reports its death; `Node::essential_task_died` then makes the node stop
//! leading for good and say why in `/health` and the status page.
//!
//! This module knows nothing of Raft or roles: it runs, catches and records.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::util::{lock, now_ms};

/// One essential task that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDeath {
    /// The task's name (`role manager`, `shared-IP manager`, …).
    pub task: &'static str,
    /// How it ended: the panic message, or that it returned.
    pub why: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// The deaths recorded so far (normally none).
#[derive(Default)]
pub struct Supervision {
    deaths: std::sync::Mutex<Vec<TaskDeath>>,
}

impl Supervision {
    /// Records that `task` died; returns `false` if it was already recorded.
    pub fn record(&self, task: &'static str, why: String) -> bool {
        let mut d = lock(&self.deaths);
        if d.iter().any(|x| x.task == task) {
            return false;
        }
        d.push(TaskDeath {
            task,
            why,
            at_ms: now_ms(),
        });
        true
    }

    /// Every death recorded, oldest first.
    pub fn deaths(&self) -> Vec<TaskDeath> {
        lock(&self.deaths).clone()
    }

    /// Whether any essential task died.
    pub fn any(&self) -> bool {
        !lock(&self.deaths).is_empty()
    }
}

/// Runs `task` until it ends; if it ends (returns or panics) before `stop`
/// is cancelled, calls `died` with its name and how it ended.
pub async fn essential<F>(
    name: &'static str,
    stop: CancellationToken,
    task: F,
    died: impl FnOnce(&'static str, String),
) where
    F: Future<Output = ()>,
{
    let why = match AssertUnwindSafe(task).catch_unwind().await {
        Ok(()) => "it returned".to_string(),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".into());
            format!("it panicked: {msg}")
        }
    };
    if !stop.is_cancelled() {
        died(name, why);
    }
}

/// A test hook: when `TANDEM_TEST_FAULT` names this task
/// (`panic:<task>:<ms>`, e.g. `panic:role-manager:3000`), the task panics
/// that many milliseconds after it starts. It lets the cluster tests prove
/// what a node does when an essential task dies; unset, it does nothing.
pub async fn injected_fault(task: &str) {
    let spec = std::env::var("TANDEM_TEST_FAULT").unwrap_or_default();
    let mut parts = spec.splitn(3, ':');
    let (Some("panic"), Some(t), Some(ms)) = (parts.next(), parts.next(), parts.next()) else {
        return std::future::pending().await;
    };
    let Ok(ms) = ms.parse::<u64>() else {
        return std::future::pending().await;
    };
    if t != task {
        return std::future::pending().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    panic!("TANDEM_TEST_FAULT: injected panic in the {task}");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_is_reported_unless_stopping() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let report = |seen: &Arc<Mutex<Vec<String>>>| {
            let seen = seen.clone();
            move |name: &'static str, why: String| lock(&seen).push(format!("{name}: {why}"))
        };
        let stop = CancellationToken::new();
        essential(
            "panicky",
            stop.clone(),
            async { panic!("boom") },
            report(&seen),
        )
        .await;
        essential("quitter", stop.clone(), async {}, report(&seen)).await;
        stop.cancel();
        essential("stopped", stop.clone(), async {}, report(&seen)).await;
        assert_eq!(
            *lock(&seen),
            ["panicky: it panicked: boom", "quitter: it returned"]
        );

        let s = Supervision::default();
        assert!(!s.any());
        assert!(s.record("role manager", "it returned".into()));
        assert!(!s.record("role manager", "again".into()), "recorded once");
        assert!(s.any());
        assert_eq!(s.deaths()[0].task, "role manager");
    }
}
