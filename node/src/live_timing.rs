//! A primary-timeout change while the nodes run (node/DESIGN.md "A live
//! primary-timeout change"). Each node runs its Raft engine with one timing
//! (`running`: heartbeats, election timeouts, the witness's vote lease) and
//! reads the replicated one (`target`). What keeps two nodes from holding
//! inconsistent leases while they differ:
//!
//! - the **lease side** (how long this node may act as primary after a
//!   quorum's acknowledgement, and how often a leader sends heartbeats) uses
//!   the shorter of the two, and while the change **settles** also the
//!   shortest timeout the relationship ran with lately (`floor`): a voter
//!   that has not applied the change yet may still run it;
//! - the **takeover side** (election timeouts, the pair-only backup's wait)
//!   changes only when the engine is rebuilt, on a node that does not lead:
//!   at once for a longer timeout, one whole running timeout after the change
//!   was seen for a shorter one (by then every lease given under the old
//!   one has run out, on a primary that shortened its own when it applied
//!   the change);
//! - the change has settled on a leader once every member holds the entry
//!   (its matched index reached the applied index at which this node saw
//!   the change, or at which it started) and one more target timeout has
//!   passed for them to apply it and rebuild.
//!
//! A leader never rebuilds its own engine (it would lose the leadership): it
//! sends heartbeats at the lease side's rate instead, and rebuilds when it no
//! longer leads. A leaf: times and numbers only.

use std::time::Instant;

use crate::settings::Timing;

/// The timings of one node and the state of a change.
#[derive(Debug)]
pub struct LiveTiming {
    inner: std::sync::Mutex<Inner>,
}

#[derive(Debug, Clone, Copy)]
struct Inner {
    running: Timing,
    target: Timing,
    /// The shortest timeout voters may still run while the change settles.
    floor: Timing,
    /// When this node saw the target it has now.
    seen_at: Instant,
    /// The applied index at which it saw it (or started): voters holding
    /// it hold the change.
    mark: u64,
    /// `None` once settled; else since when every voter held `mark`.
    settling: Option<Option<Instant>>,
    /// When a leader last sent heartbeats at the lease side's rate.
    paced_at: Option<Instant>,
    /// Until when votes are refused after a rebuild.
    votes_held_until: Option<Instant>,
}

impl Inner {
    fn lease(&self) -> Timing {
        let t = shorter(self.running, self.target);
        if self.settling.is_some() {
            shorter(t, self.floor)
        } else {
            t
        }
    }
}

fn shorter(a: Timing, b: Timing) -> Timing {
    if b.primary_timeout < a.primary_timeout {
        b
    } else {
        a
    }
}

impl LiveTiming {
    /// At start: the engine runs `running` (the replicated timing on disk);
    /// the change settles from `applied` with the relationship's `floor`.
    pub fn new(running: Timing, floor: Timing, applied: u64, now: Instant) -> Self {
        Self {
            inner: std::sync::Mutex::new(Inner {
                running,
                target: running,
                floor: shorter(floor, running),
                seen_at: now,
                mark: applied,
                settling: Some(None),
                paced_at: None,
                votes_held_until: None,
            }),
        }
    }

    fn get(&self) -> Inner {
        *crate::util::lock(&self.inner)
    }

    /// What the engine runs with: the takeover side.
    pub fn running(&self) -> Timing {
        self.get().running
    }

    /// The replicated timing.
    pub fn target(&self) -> Timing {
        self.get().target
    }

    /// The lease side: the shortest of running, target and, while the
    /// change settles, the floor.
    pub fn lease(&self) -> Timing {
        self.get().lease()
    }

    /// Whether a change has not settled yet (this node's view).
    #[cfg(test)]
    pub fn settling(&self) -> bool {
        let i = self.get();
        i.settling.is_some() || i.running != i.target
    }

    /// The replicated timing as of `applied`, with the relationship's
    /// floor; a new target starts a change. Returns whether it did.
    pub fn observe(&self, target: Timing, floor: Timing, applied: u64, now: Instant) -> bool {
        let mut i = crate::util::lock(&self.inner);
        if i.target == target {
            return false;
        }
        i.floor = shorter(shorter(floor, i.target), target);
        i.target = target;
        i.seen_at = now;
        i.mark = applied;
        i.settling = Some(None);
        true
    }

    /// On a leader: `holds(mark)` says whether every other voter's matched
    /// index reached `mark`. Settles the change one target timeout after
    /// they all do.
    pub fn track(&self, holds: impl FnOnce(u64) -> bool, now: Instant) {
        let mut i = crate::util::lock(&self.inner);
        let Some(since) = i.settling else { return };
        if !holds(i.mark) {
            i.settling = Some(None);
            return;
        }
        let since = since.unwrap_or(now);
        i.settling = if now.duration_since(since) >= i.target.primary_timeout {
            None
        } else {
            Some(Some(since))
        };
    }

    /// On a node that does not lead: the timing to rebuild the engine with
    /// now, if any.
    pub fn rebuild_due(&self, now: Instant) -> Option<Timing> {
        let i = self.get();
        if i.running == i.target {
            return None;
        }
        let longer = i.target.primary_timeout > i.running.primary_timeout;
        (longer || now.duration_since(i.seen_at) >= i.running.primary_timeout).then_some(i.target)
    }

    /// The engine now runs `t`, since `at` (when the old one stopped). The
    /// new engine has forgotten when it last heard the leader, so votes are
    /// refused for one of its vote leases (the longest election timeout):
    /// otherwise a backup whose timer ran out could be elected at once,
    /// while the primary still holds a lease this node's acknowledgements
    /// gave.
    pub fn rebuilt(&self, t: Timing, at: Instant) {
        let mut i = crate::util::lock(&self.inner);
        i.running = t;
        i.votes_held_until = Some(at + t.election_max.max(t.witness_vote_lease));
    }

    /// Whether votes are refused now (just after a rebuild).
    pub fn votes_held(&self, now: Instant) -> bool {
        self.get().votes_held_until.is_some_and(|u| now < u)
    }

    /// On a leader whose engine sends heartbeats less often than the lease
    /// side needs: whether to send one now (and notes that it is sent).
    pub fn heartbeat_due(&self, now: Instant) -> bool {
        let mut i = crate::util::lock(&self.inner);
        let want = i.lease().heartbeat;
        if want >= i.running.heartbeat {
            return false;
        }
        if i.paced_at.is_some_and(|p| now.duration_since(p) < want) {
            return false;
        }
        i.paced_at = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(ms: u64) -> Timing {
        Timing::from_primary_timeout_ms(ms)
    }

    #[test]
    fn a_shorter_timeout_shortens_the_lease_at_once_and_the_timers_after_the_old_timeout() {
        let start = Instant::now();
        let live = LiveTiming::new(t(3000), t(3000), 10, start);
        live.track(|_| true, start);
        live.track(|_| true, start + Duration::from_secs(3));
        assert!(!live.settling());
        assert!(live.observe(t(1000), t(3000), 20, start + Duration::from_secs(4)));
        // The lease side is the new one at once; the engine keeps the old.
        assert_eq!(live.lease(), t(1000));
        assert_eq!(live.running(), t(3000));
        assert_eq!(live.rebuild_due(start + Duration::from_millis(6999)), None);
        assert_eq!(
            live.rebuild_due(start + Duration::from_secs(7)),
            Some(t(1000))
        );
        assert!(live.heartbeat_due(start + Duration::from_secs(5)));
        assert!(!live.heartbeat_due(start + Duration::from_millis(5050)));
        assert!(live.heartbeat_due(start + Duration::from_millis(5100)));
        let rebuilt = start + Duration::from_secs(7);
        live.rebuilt(t(1000), rebuilt);
        assert!(live.votes_held(rebuilt + Duration::from_millis(399)));
        assert!(!live.votes_held(rebuilt + Duration::from_millis(400)));
        assert!(!live.heartbeat_due(start + Duration::from_secs(9)));
        assert_eq!(live.rebuild_due(start + Duration::from_secs(8)), None);
        assert_eq!(live.lease(), t(1000));
    }

    #[test]
    fn a_longer_timeout_rebuilds_at_once_and_keeps_the_short_lease_until_settled() {
        let start = Instant::now();
        let live = LiveTiming::new(t(1000), t(1000), 5, start);
        assert!(live.observe(t(3000), t(1000), 50, start));
        assert_eq!(live.rebuild_due(start), Some(t(3000)));
        live.rebuilt(t(3000), start);
        // Rebuilt (a follower that then leads): still the old lease, since
        // a voter may not have applied the change.
        assert_eq!(live.lease(), t(1000));
        live.track(|mark| mark <= 49, start + Duration::from_secs(1));
        assert_eq!(live.lease(), t(1000), "a voter lacks the entry");
        live.track(|mark| mark <= 50, start + Duration::from_secs(2));
        live.track(|_| true, start + Duration::from_millis(4999));
        assert_eq!(live.lease(), t(1000), "one target timeout to apply it");
        live.track(|_| true, start + Duration::from_secs(5));
        assert_eq!(live.lease(), t(3000));
        assert!(!live.settling());
    }

    #[test]
    fn the_floor_covers_a_voter_that_may_still_run_an_older_timeout() {
        let start = Instant::now();
        // Started after 500 → 3000: voters may still run 500.
        let live = LiveTiming::new(t(3000), t(500), 7, start);
        assert_eq!(live.lease(), t(500));
        live.track(|_| true, start);
        live.track(|_| true, start + Duration::from_secs(3));
        assert_eq!(live.lease(), t(3000));
        // The same target again is no change.
        assert!(!live.observe(t(3000), t(500), 9, start));
        assert!(!live.settling());
    }

    #[test]
    fn a_voter_falling_behind_restarts_the_wait() {
        let start = Instant::now();
        let live = LiveTiming::new(t(1000), t(1000), 5, start);
        live.track(|_| true, start);
        live.track(|_| false, start + Duration::from_millis(900));
        live.track(|_| true, start + Duration::from_millis(1000));
        assert!(live.settling());
        live.track(|_| true, start + Duration::from_millis(2000));
        assert!(!live.settling());
    }
}
