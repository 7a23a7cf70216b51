//! *Sync now* and *verify*: the primary makes its backup hold every
//! committed entry, and compares state digests at one applied index.

use std::time::{Duration, Instant};

use serde_json::json;
use tandem_web::{SyncReport, VerifyReport};

use crate::errors::{Action, Peer, Refusal, Remedy};
use crate::node::{Node, NodeError};
use crate::peer::protocol::{ActionRequest, PeerRequest, PeerResponse};
use crate::roles::Role;

/// How long *sync now* waits for the backup to hold every entry.
const SYNC_CATCH_UP_LIMIT: Duration = Duration::from_secs(120);
/// How long *verify* waits for proposals in flight to apply.
const VERIFY_SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// How often the waits on applied indexes look.
const APPLY_POLL: Duration = Duration::from_millis(2);
/// How long *verify* waits for the backup to reach the compared index.
const VERIFY_CATCH_UP_LIMIT: Duration = Duration::from_secs(30);
/// Bound on the backup's answer with its digest.
const DIGEST_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a digest waits for its index to be applied here.
const DIGEST_APPLY_LIMIT: Duration = Duration::from_secs(30);

impl Node {
    /// *Sync now*: make the backup hold every committed entry now (openraft
    /// sends a snapshot when the log it needs was compacted); with `verify`,
    /// compare state digests at one applied index.
    ///
    /// # Errors
    /// [`NodeError::Refused`] when there is no backup or it cannot be reached.
    pub async fn sync(&self, verify: bool, actor: &str) -> Result<SyncReport, NodeError> {
        self.settle_primary().await;
        match self.compute_role().0 {
            Role::Primary => self.sync_now(verify, actor).await,
            Role::Backup => {
                let primary = self
                    .epoch()
                    .primary
                    .ok_or(NodeError::Refused(Refusal::NoPrimary))?;
                let text = self
                    .ask_primary(
                        primary,
                        ActionRequest::Sync {
                            verify,
                            actor: actor.to_string(),
                        },
                    )
                    .await?;
                serde_json::from_str(&text)
                    .map_err(|e| NodeError::Internal(format!("bad sync answer: {e}")))
            }
            Role::Witness => Err(NodeError::Refused(Refusal::SyncNeedsAppliances)),
            Role::Standalone => Err(NodeError::Refused(Refusal::NoRelationship(Action::Sync))),
        }
    }

    pub(crate) async fn sync_now(
        &self,
        verify: bool,
        actor: &str,
    ) -> Result<SyncReport, NodeError> {
        let started = Instant::now();
        let (backup, _) = self
            .other_appliance()
            .ok_or(NodeError::Refused(Refusal::NoBackup))?;
        let facts = self.peer_facts();
        let fact = facts.iter().find(|p| p.id == backup);
        if fact.and_then(|f| f.reachable) != Some(true) {
            return Err(NodeError::PeerUnreachable {
                peer: Peer::Backup(backup),
                reason: None,
                remedy: Remedy::None,
            });
        }
        let from = fact.and_then(|f| f.matched);
        let m = self.metrics();
        let purged = m.purged.map(|l| l.index);
        let snapshot = match (from, purged) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(f), Some(p)) => f < p,
        };
        let bytes = if snapshot {
            self.snapshot_file_size().unwrap_or(0)
        } else {
            self.lag_bytes(from).unwrap_or(0)
        };
        let _ = self.raft().trigger().heartbeat().await;
        let to = self.wait_caught_up(backup, SYNC_CATCH_UP_LIMIT).await?;
        let mut report = SyncReport {
            backup,
            from_index: from,
            to_index: to,
            entries: to.saturating_sub(from.unwrap_or(0)),
            bytes,
            snapshot,
            duration_ms: started.elapsed().as_millis() as u64,
            verify: None,
        };
        if verify {
            report.verify = Some(self.verify_with(backup).await?);
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        self.record(
            "sync",
            actor,
            json!({
                "backup": backup, "from_index": report.from_index, "to_index": report.to_index,
                "entries": report.entries, "bytes": report.bytes, "snapshot": report.snapshot,
                "duration_ms": report.duration_ms,
            }),
        )
        .await;
        if let Some(v) = &report.verify {
            let kind = if v.matches {
                "verify"
            } else {
                "verify_mismatch"
            };
            self.record(
                kind,
                actor,
                json!({ "backup": backup, "index": v.index, "local": v.local_digest, "peer": v.peer_digest, "matches": v.matches }),
            )
            .await;
        }
        Ok(report)
    }

    fn snapshot_file_size(&self) -> Option<u64> {
        let dir = std::fs::read_dir(&self.snapshot_dir).ok()?;
        dir.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .max()
    }

    /// Pauses writes, lets everything apply here and on `backup`, and
    /// compares digests at that one applied index.
    async fn verify_with(&self, backup: u64) -> Result<VerifyReport, NodeError> {
        let _pause = self.roles.pause();
        // Let proposals already in flight commit and apply.
        let deadline = Instant::now() + VERIFY_SETTLE_LIMIT;
        let index = loop {
            let m = self.metrics();
            let last = m.last_log_index.unwrap_or(0);
            if m.last_applied.map(|l| l.index) == Some(last) {
                break last;
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Unavailable(
                    "writes did not settle for verify".into(),
                ));
            }
            tokio::time::sleep(APPLY_POLL).await;
        };
        self.wait_caught_up(backup, VERIFY_CATCH_UP_LIMIT).await?;
        let local = self
            .digest_at(index)
            .await
            .map_err(NodeError::Unavailable)?;
        let addr = self
            .metrics()
            .membership_config
            .get_node(&backup)
            .map(|n| n.peer_addr.clone())
            .ok_or(NodeError::Refused(Refusal::NotMember { node: backup }))?;
        let peer = match self
            .network
            .call(
                backup,
                &addr,
                PeerRequest::Digest { at_index: index },
                DIGEST_CALL_TIMEOUT,
            )
            .await
        {
            Ok(PeerResponse::Digest(Ok(d))) => d,
            Ok(PeerResponse::Digest(Err(e))) => {
                return Err(NodeError::Unavailable(format!("backup digest: {e}")))
            }
            Ok(other) => return Err(NodeError::Internal(format!("unexpected answer {other:?}"))),
            Err(e) => {
                return Err(NodeError::PeerUnreachable {
                    peer: Peer::Backup(backup),
                    reason: Some(e.to_string()),
                    remedy: Remedy::None,
                })
            }
        };
        Ok(VerifyReport {
            index,
            matches: local.1 == peer.1 && local.0 == peer.0,
            local_digest: local.1,
            peer_digest: peer.1,
        })
    }

    /// `(index, digest)` of the state once exactly `at_index` is applied here.
    pub async fn digest_at(&self, at_index: u64) -> Result<(u64, String), String> {
        let deadline = Instant::now() + DIGEST_APPLY_LIMIT;
        loop {
            let applied = self.reader().applied_index().unwrap_or(0);
            if applied == at_index {
                break;
            }
            if applied > at_index {
                return Err(format!(
                    "applied index {applied} is already past {at_index}"
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("applied index {applied} did not reach {at_index}"));
            }
            tokio::time::sleep(APPLY_POLL).await;
        }
        let reader = self.reader();
        let (index, digest) = tokio::task::spawn_blocking(move || reader.try_digest())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        match index {
            Some(i) if i == at_index => Ok((i, digest)),
            other => Err(format!(
                "state moved to {other:?} while digesting {at_index}"
            )),
        }
    }
}
