//! The maintenance plan: which appliances are held out of service now, and
//! the windows scheduled ahead (README "Maintenance").
//!
//! The plan is one replicated JSON document (`Request::MaintenancePut`,
//! compare-and-set on its version), so it survives restarts and failovers
//! and every node reads the same one. This module is the plan's shape and
//! its pure rules: who is held at a given time, which scheduled events are
//! due, and whether a new hold leaves an appliance that may be primary. The
//! node acts on it in `actions::maintenance`.
//!
//! A node in maintenance is never made primary (not by an election, a
//! witness's hand-over, the pair-only failover, a swap or failback). A hold
//! ends by itself at `until_ms`.

use serde::{Deserialize, Serialize};

/// Most windows scheduled at once.
pub const MAX_WINDOWS: usize = 32;

/// The whole plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plan {
    /// Nodes held out of service now.
    pub nodes: Vec<Hold>,
    /// Windows scheduled ahead (removed when they start: they become holds).
    pub windows: Vec<Window>,
    /// The id the next window gets.
    pub next_window: u64,
}

/// One node held out of service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The node's id.
    pub node: u64,
    /// Why (free text).
    pub reason: String,
    /// Who started it (or who scheduled its window).
    pub by: String,
    /// When it started (ms).
    pub since_ms: u64,
    /// When it ends by itself (ms).
    pub until_ms: u64,
    /// The window it came from, if scheduled.
    #[serde(default)]
    pub window: Option<u64>,
    /// The node was primary when the hold began and the role was moved away:
    /// a window's end gives it back.
    #[serde(default)]
    pub moved_role: bool,
}

/// A window scheduled ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Its id, unique within the plan.
    pub id: u64,
    /// The node it holds.
    pub node: u64,
    /// Why.
    pub reason: String,
    /// Who scheduled it.
    pub by: String,
    /// When it starts (ms).
    pub start_ms: u64,
    /// When it ends (ms).
    pub end_ms: u64,
    /// Whether the reminder was recorded.
    #[serde(default)]
    pub reminded: bool,
}

/// A scheduled change the primary has to make, in the order found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A hold reached its end.
    Ended {
        /// The node.
        node: u64,
    },
    /// A window starts within the reminder time.
    Remind {
        /// The window.
        window: u64,
    },
    /// A window's start arrived: it becomes a hold.
    Start {
        /// The window.
        window: u64,
    },
}

/// Why a hold cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// It would overlap another appliance's hold or window: no appliance
    /// would be left to be primary.
    #[error(
        "it overlaps the maintenance of {other} ({from_ms}..{to_ms} ms): no appliance would be \
         left to be primary"
    )]
    NoAppliance {
        /// The other node's id.
        other: u64,
        /// Where the overlap starts (ms).
        from_ms: u64,
        /// Where it ends (ms).
        to_ms: u64,
    },
    /// It overlaps a window of the same node.
    #[error("node {node} already has a window from {start_ms} to {end_ms} ms")]
    SameNode {
        /// The node.
        node: u64,
        /// That window's start.
        start_ms: u64,
        /// That window's end.
        end_ms: u64,
    },
    /// Too many windows.
    #[error("at most {MAX_WINDOWS} windows can be scheduled")]
    TooMany,
}

impl Plan {
    /// Reads a stored plan; a missing or unreadable one is empty (logged).
    pub fn parse(json: Option<&str>) -> Plan {
        match json.map(serde_json::from_str::<Plan>) {
            None => Plan::default(),
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::error!(error = %e, "the stored maintenance plan cannot be read; treating it as empty");
                Plan::default()
            }
        }
    }

    /// The plan as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// `node`'s hold in force at `now_ms`.
    pub fn hold(&self, node: u64, now_ms: u64) -> Option<&Hold> {
        self.nodes
            .iter()
            .find(|h| h.node == node && h.until_ms > now_ms)
    }

    /// Whether `node` is in maintenance at `now_ms`.
    pub fn holds(&self, node: u64, now_ms: u64) -> bool {
        self.hold(node, now_ms).is_some()
    }

    /// The scheduled changes due at `now_ms`, with reminders `reminder_ms`
    /// ahead of a window's start.
    pub fn due(&self, now_ms: u64, reminder_ms: u64) -> Vec<Due> {
        let mut due: Vec<Due> = self
            .nodes
            .iter()
            .filter(|h| h.until_ms <= now_ms)
            .map(|h| Due::Ended { node: h.node })
            .collect();
        for w in &self.windows {
            if w.start_ms <= now_ms {
                due.push(Due::Start { window: w.id });
            } else if !w.reminded && w.start_ms.saturating_sub(reminder_ms) <= now_ms {
                due.push(Due::Remind { window: w.id });
            }
        }
        due
    }

    /// Whether `node` may be held over `[from_ms, to_ms)`: no other
    /// appliance of `appliances` is held or scheduled over any part of it
    /// (with two appliances, one must always be left to be primary), and
    /// `node` has no other window there. `window` is the id of the window
    /// being checked, if it is one (it does not conflict with itself).
    ///
    /// # Errors
    /// The first conflict found.
    pub fn check(
        &self,
        node: u64,
        from_ms: u64,
        to_ms: u64,
        appliances: &[u64],
        now_ms: u64,
    ) -> Result<(), Conflict> {
        let overlap = |a: u64, b: u64| a < to_ms && from_ms < b;
        let others: Vec<u64> = appliances.iter().copied().filter(|a| *a != node).collect();
        for h in &self.nodes {
            if h.until_ms > now_ms
                && others.contains(&h.node)
                && overlap(h.since_ms.min(now_ms), h.until_ms)
            {
                return Err(Conflict::NoAppliance {
                    other: h.node,
                    from_ms: from_ms.max(h.since_ms),
                    to_ms: to_ms.min(h.until_ms),
                });
            }
        }
        for w in &self.windows {
            if !overlap(w.start_ms, w.end_ms) {
                continue;
            }
            if others.contains(&w.node) {
                return Err(Conflict::NoAppliance {
                    other: w.node,
                    from_ms: from_ms.max(w.start_ms),
                    to_ms: to_ms.min(w.end_ms),
                });
            }
            if w.node == node {
                return Err(Conflict::SameNode {
                    node,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                });
            }
        }
        Ok(())
    }

    /// Adds a window (after [`Plan::check`]); returns its id.
    ///
    /// # Errors
    /// [`Conflict::TooMany`] when [`MAX_WINDOWS`] are scheduled.
    pub fn schedule(
        &mut self,
        node: u64,
        reason: &str,
        by: &str,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<u64, Conflict> {
        if self.windows.len() >= MAX_WINDOWS {
            return Err(Conflict::TooMany);
        }
        let id = self.next_window.max(1);
        self.next_window = id + 1;
        self.windows.push(Window {
            id,
            node,
            reason: reason.to_string(),
            by: by.to_string(),
            start_ms,
            end_ms,
            reminded: false,
        });
        Ok(id)
    }

    /// Puts `hold` in force, replacing any hold of the same node.
    pub fn put_hold(&mut self, hold: Hold) {
        self.nodes.retain(|h| h.node != hold.node);
        self.nodes.push(hold);
    }

    /// Removes `node`'s hold; returns it.
    pub fn end_hold(&mut self, node: u64) -> Option<Hold> {
        let i = self.nodes.iter().position(|h| h.node == node)?;
        Some(self.nodes.remove(i))
    }

    /// Removes window `id`; returns it.
    pub fn take_window(&mut self, id: u64) -> Option<Window> {
        let i = self.windows.iter().position(|w| w.id == id)?;
        Some(self.windows.remove(i))
    }

    /// Window `id`, if scheduled.
    pub fn window_mut(&mut self, id: u64) -> Option<&mut Window> {
        self.windows.iter_mut().find(|w| w.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(node: u64, since_ms: u64, until_ms: u64) -> Hold {
        Hold {
            node,
            reason: "r".into(),
            by: "ops".into(),
            since_ms,
            until_ms,
            window: None,
            moved_role: false,
        }
    }

    #[test]
    fn a_hold_ends_at_its_time() {
        let mut p = Plan::default();
        p.put_hold(hold(1, 0, 100));
        assert!(p.holds(1, 99));
        assert!(!p.holds(1, 100));
        assert!(!p.holds(2, 50));
        assert_eq!(p.due(99, 0), vec![]);
        assert_eq!(p.due(100, 0), vec![Due::Ended { node: 1 }]);
        assert_eq!(p.end_hold(1).map(|h| h.node), Some(1));
        assert!(p.nodes.is_empty());
    }

    #[test]
    fn windows_remind_then_start() {
        let mut p = Plan::default();
        let id = p.schedule(2, "kernel", "ops", 1_000, 2_000).expect("room");
        assert_eq!(id, 1);
        assert_eq!(p.due(0, 500), vec![]);
        assert_eq!(p.due(500, 500), vec![Due::Remind { window: 1 }]);
        p.window_mut(1).expect("there").reminded = true;
        assert_eq!(p.due(999, 500), vec![]);
        assert_eq!(p.due(1_000, 500), vec![Due::Start { window: 1 }]);
        assert_eq!(p.schedule(2, "x", "ops", 5_000, 6_000), Ok(2));
        assert_eq!(p.take_window(1).map(|w| w.end_ms), Some(2_000));
        assert_eq!(p.windows.len(), 1);
    }

    #[test]
    fn one_appliance_is_always_left_to_be_primary() {
        let appliances = [1, 2];
        let mut p = Plan::default();
        p.put_hold(hold(1, 0, 1_000));
        // Node 2 over the hold of node 1: refused; after it: fine.
        assert!(matches!(
            p.check(2, 500, 1_500, &appliances, 100),
            Err(Conflict::NoAppliance {
                other: 1,
                from_ms: 500,
                to_ms: 1_000
            })
        ));
        assert_eq!(p.check(2, 1_000, 1_500, &appliances, 100), Ok(()));
        // A hold that ended does not count.
        assert_eq!(p.check(2, 500, 1_500, &appliances, 1_000), Ok(()));
        // Windows of the other appliance, and of the same node.
        p.schedule(1, "w", "ops", 2_000, 3_000).expect("room");
        assert!(matches!(
            p.check(2, 2_500, 2_600, &appliances, 100),
            Err(Conflict::NoAppliance { other: 1, .. })
        ));
        assert!(matches!(
            p.check(1, 2_900, 3_100, &appliances, 100),
            Err(Conflict::SameNode { node: 1, .. })
        ));
        assert_eq!(p.check(1, 3_000, 3_100, &appliances, 100), Ok(()));
        // Only the other appliances count.
        assert_eq!(p.check(2, 2_500, 2_600, &[2], 100), Ok(()));
    }

    #[test]
    fn the_plan_survives_its_json() {
        let mut p = Plan::default();
        p.put_hold(hold(1, 5, 10));
        p.schedule(2, "r", "ops", 20, 30).expect("room");
        let back = Plan::parse(Some(&p.to_json()));
        assert_eq!(back, p);
        assert_eq!(Plan::parse(None), Plan::default());
        assert_eq!(Plan::parse(Some("not json")), Plan::default());
        assert_eq!(Plan::parse(Some("{}")), Plan::default());
    }

    #[test]
    fn too_many_windows_are_refused() {
        let mut p = Plan::default();
        for i in 0..MAX_WINDOWS as u64 {
            p.schedule(1, "r", "ops", i * 10, i * 10 + 5).expect("room");
        }
        assert_eq!(
            p.schedule(1, "r", "ops", 1_000, 1_005),
            Err(Conflict::TooMany)
        );
    }
}
