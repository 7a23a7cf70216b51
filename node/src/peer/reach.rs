//! Whether each peer answers, as the peer client sees it when it dials, and
//! the log lines that say so (DESIGN rule 8: a dead peer costs the survivor
//! nothing).
//!
//! Every dial of a peer (Raft heartbeats, replication streams, votes,
//! snapshot streams, relationship calls) reports its outcome here. The log
//! gets one warning when a peer stops answering, one line when it answers
//! again (with how long it was away and how many dials failed), and while it
//! stays away at most one "still unreachable" line per [`SUMMARY_EVERY`];
//! never a line per attempt. The pacing of the attempts themselves is
//! openraft's (its replication backoff, see `client::PeerClient`) and the
//! callers' timers.
//!
//! It also tells dials still waiting on a peer that was away that a peer
//! came back ([`PeerReach::returned`]), so they start afresh instead of
//! waiting out a SYN sent while the peer's host was cut off.
//!
//! This module must not dial, sleep or decide anything: it only counts,
//! logs and wakes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::lock;

/// The longest silence of the log about a peer that stays unreachable.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Dial outcomes per peer.
#[derive(Default)]
pub struct PeerReach {
    peers: Mutex<HashMap<u64, Away>>,
    back: tokio::sync::Notify,
}

/// A peer that does not answer: since when, how many dials failed, and when
/// the log last said so.
struct Away {
    since: Instant,
    attempts: u64,
    reported: Instant,
}

/// What one dial outcome changed, for the log (and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing worth a line.
    Quiet,
    /// The peer stopped answering.
    Lost,
    /// Still away; a periodic summary is due.
    StillAway {
        /// Time since it stopped answering.
        away: Duration,
        /// Failed dials so far.
        attempts: u64,
    },
    /// It answers again.
    Back {
        /// How long it was away.
        away: Duration,
        /// Failed dials while it was.
        attempts: u64,
    },
}

impl PeerReach {
    /// A dial of `peer` at `addr` failed with `error`; logs when that is news.
    pub fn missed(&self, peer: u64, addr: &str, error: &str) -> Change {
        let change = self.note(peer, false, Instant::now());
        match change {
            Change::Lost => tracing::warn!(
                peer,
                %addr,
                %error,
                "peer unreachable; retrying with backoff, further failures are summarised every {} s",
                SUMMARY_EVERY.as_secs()
            ),
            Change::StillAway { away, attempts } => tracing::warn!(
                peer,
                %addr,
                %error,
                away_s = away.as_secs(),
                attempts,
                "peer still unreachable"
            ),
            Change::Quiet | Change::Back { .. } => {}
        }
        change
    }

    /// A dial of `peer` at `addr` succeeded; logs when it had been away.
    pub fn reached(&self, peer: u64, addr: &str) -> Change {
        let change = self.note(peer, true, Instant::now());
        if let Change::Back { away, attempts } = change {
            self.back.notify_waiters();
            tracing::info!(
                peer,
                %addr,
                away_ms = u64::try_from(away.as_millis()).unwrap_or(u64::MAX),
                attempts,
                "peer reachable again"
            );
        }
        change
    }

    /// The bookkeeping behind [`Self::missed`] and [`Self::reached`], at `now`.
    fn note(&self, peer: u64, ok: bool, now: Instant) -> Change {
        let mut peers = lock(&self.peers);
        if ok {
            return peers.remove(&peer).map_or(Change::Quiet, |a| Change::Back {
                away: now.saturating_duration_since(a.since),
                attempts: a.attempts,
            });
        }
        match peers.get_mut(&peer) {
            None => {
                peers.insert(
                    peer,
                    Away {
                        since: now,
                        attempts: 1,
                        reported: now,
                    },
                );
                Change::Lost
            }
            Some(a) => {
                a.attempts += 1;
                if now.saturating_duration_since(a.reported) >= SUMMARY_EVERY {
                    a.reported = now;
                    Change::StillAway {
                        away: now.saturating_duration_since(a.since),
                        attempts: a.attempts,
                    }
                } else {
                    Change::Quiet
                }
            }
        }
    }

    /// Completes when a peer that was away answers a dial again (create it
    /// before checking [`Self::is_away`], so no return is missed).
    pub fn returned(&self) -> tokio::sync::futures::Notified<'_> {
        self.back.notified()
    }

    /// Whether `peer`'s last dial failed.
    pub fn is_away(&self, peer: u64) -> bool {
        let peers = lock(&self.peers);
        peers.contains_key(&peer)
    }
}

/// The replication backoff handed to openraft for a peer that does not
/// answer: 10 ms, doubling, capped at `cap` (the heartbeat interval, so a
/// peer that comes back is replicated to again within one heartbeat).
pub fn backoff_delays(cap: Duration) -> impl Iterator<Item = Duration> + Send + 'static {
    let first = Duration::from_millis(10).min(cap);
    std::iter::successors(Some(first), move |d| Some((*d * 2).min(cap)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_when_lost_one_per_period_while_away_one_when_back() {
        let r = PeerReach::default();
        let t0 = Instant::now();
        assert_eq!(
            r.note(2, true, t0),
            Change::Quiet,
            "a healthy peer is news to no one"
        );
        assert_eq!(r.note(2, false, t0), Change::Lost);
        assert!(r.is_away(2));
        // A thousand failures within the period: not one more line.
        for i in 1..=1000u64 {
            let at = t0 + Duration::from_millis(i * 29);
            assert_eq!(r.note(2, false, at), Change::Quiet, "attempt {i}");
        }
        let at = t0 + SUMMARY_EVERY;
        assert_eq!(
            r.note(2, false, at),
            Change::StillAway {
                away: SUMMARY_EVERY,
                attempts: 1002
            }
        );
        assert_eq!(r.note(2, false, at + Duration::from_secs(1)), Change::Quiet);
        // Another peer is counted on its own.
        assert_eq!(r.note(3, false, at), Change::Lost);
        let back = at + Duration::from_secs(2);
        assert_eq!(
            r.note(2, true, back),
            Change::Back {
                away: back - t0,
                attempts: 1003
            }
        );
        assert!(!r.is_away(2) && r.is_away(3));
        assert_eq!(r.note(2, true, back), Change::Quiet);
    }

    #[test]
    fn backoff_starts_small_and_is_capped() {
        let cap = Duration::from_millis(100);
        let d: Vec<u64> = backoff_delays(cap)
            .take(7)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(d, [10, 20, 40, 80, 100, 100, 100]);
        let tiny = Duration::from_millis(5);
        assert!(backoff_delays(tiny).take(3).all(|d| d == tiny));
    }
}
