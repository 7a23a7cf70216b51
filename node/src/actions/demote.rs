//! Forced demotion (*Become backup even if the peer cannot be contacted*)
//! and its undo (README "Forced demotion").
//!
//! The primary stands down by itself: a `stood-down` marker in its data
//! directory (so a restart does not make it primary again), then a
//! replicated `ClearPrimary` (the epoch rises with nobody primary) with the
//! history event, when a quorum can still be reached. A stood-down node is
//! never primary (`role_of`), raises no epoch and stands for no election;
//! its role manager releases the shared IPs and the write gate refuses
//! writes. The peer is made primary by hand: a forced promotion where it
//! cannot reach this node, a planned swap (served by this node while it
//! still leads) where it can. *Become primary* on the stood-down node
//! undoes it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_storage::{Request, Response};
use tandem_web::SwapOutcome;

use crate::node::{Node, NodeError};
use crate::roles::Role;
use crate::util::now_ms;

/// How long an undo waits for a primary.
const UNDO_LIMIT: Duration = Duration::from_secs(10);
/// How often it looks.
const UNDO_POLL: Duration = Duration::from_millis(10);

/// What the administrator must do after a forced demotion.
const DEMOTED_WARNING: &str =
    "nobody is primary now: make the peer primary by hand (Become primary \
     on it, forced if it cannot reach this node), or undo with Become primary on this node";

impl Node {
    /// Whether this node stood down by a forced demotion.
    pub(crate) fn stood_down(&self) -> bool {
        self.roles.stood_down.load(Ordering::SeqCst)
    }

    /// The primary stands down with its peer out of reach.
    ///
    /// # Errors
    /// [`NodeError::Internal`] when the marker cannot be written (nothing
    /// changed then).
    pub(crate) async fn forced_demotion(&self, actor: &str) -> Result<SwapOutcome, NodeError> {
        let started = Instant::now();
        let before = self.epoch();
        let marker = self.dir.stood_down();
        std::fs::write(
            &marker,
            format!("stood down by {actor} at {} ms\n", now_ms()),
        )
        .and_then(|()| std::fs::File::open(&marker)?.sync_all())
        .map_err(|e| NodeError::Internal(format!("writing {}: {e}", marker.display())))?;
        self.roles.stood_down.store(true, Ordering::SeqCst);
        self.raft().runtime_config().elect(false);
        self.roles.wake.notify_one();
        tracing::warn!(%actor, epoch = before.epoch, "forced demotion: this node stood down");
        let details = json!({ "node": self.cfg.node_id, "previous_epoch": before.epoch,
                              "warning": DEMOTED_WARNING });
        let at_ms = now_ms();
        let written = self
            .write(Request::Multi(vec![
                Request::ClearPrimary {
                    expected_epoch: before.epoch,
                    at_ms,
                },
                Request::HistoryAppend {
                    at_ms,
                    node: self.cfg.node_id,
                    kind: "forced_demotion".into(),
                    actor: actor.to_string(),
                    details_json: details.to_string(),
                },
            ]))
            .await;
        let warning = match written {
            Ok(Response::Multi(_)) => DEMOTED_WARNING.to_string(),
            other => {
                // The marker alone keeps this node from serving; the epoch
                // could not be raised (no quorum, or it moved meanwhile).
                tracing::warn!(answer = ?other, "forced demotion not recorded in the replicated state");
                format!("{DEMOTED_WARNING} (the demotion could not be recorded in the replicated state: no quorum)")
            }
        };
        Ok(SwapOutcome {
            previous_primary: Some(self.cfg.node_id),
            new_primary: 0,
            epoch: self.epoch().epoch,
            forced: true,
            pull_sync: false,
            duration_ms: started.elapsed().as_millis() as u64,
            sync: None,
            demoted: true,
            warning: Some(warning),
        })
    }

    /// Undoes a forced demotion (*Become primary* on the stood-down node):
    /// the node may lead again; where it leads it becomes primary.
    ///
    /// # Errors
    /// [`NodeError::Internal`] when the marker cannot be removed;
    /// [`NodeError::Unavailable`] when no primary follows in time.
    pub(crate) async fn undo_demotion(&self, actor: &str) -> Result<SwapOutcome, NodeError> {
        let started = Instant::now();
        let marker = self.dir.stood_down();
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NodeError::Internal(format!(
                    "removing {}: {e}",
                    marker.display()
                )))
            }
        }
        self.roles.stood_down.store(false, Ordering::SeqCst);
        self.apply_eligibility();
        self.roles.wake.notify_one();
        tracing::warn!(%actor, "forced demotion undone");
        self.record(
            "forced_demotion_undone",
            actor,
            json!({ "node": self.cfg.node_id }),
        )
        .await;
        let deadline = Instant::now() + UNDO_LIMIT;
        loop {
            let ep = self.epoch();
            if let Some(p) = ep.primary {
                if p != self.cfg.node_id || self.compute_role().0 == Role::Primary {
                    return Ok(super::swap::followed_outcome(None, p, ep.epoch, started));
                }
            }
            if Instant::now() > deadline {
                return Err(NodeError::Unavailable(format!(
                    "the demotion is undone, but no primary followed within {} s",
                    UNDO_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(UNDO_POLL).await;
        }
    }
}
