//! The role rules of `node/DESIGN.md` ("Who is primary") as one pure
//! function over a plain facts value. Nothing here reads metrics, clocks or
//! the network: `Node::compute_role` gathers the facts.

use std::time::Duration;

use tandem_storage::NodeKind;

use super::state::Role;

/// Everything the role depends on, read at one moment (see
/// `Node::compute_role`); [`role_of`] decides from it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleFacts {
    /// This node's id.
    pub me: u64,
    /// Appliance or witness.
    pub kind: NodeKind,
    /// Members of the current membership (voters and learners).
    pub members: usize,
    /// This node is the Raft leader.
    pub leader: bool,
    /// What is left of the leader lease a quorum gave (zero: none or
    /// expired); `None` where this node is its only voter, its own quorum.
    pub lease_left: Option<Duration>,
    /// The applied epoch.
    pub epoch: u64,
    /// The primary the applied epoch record names.
    pub epoch_primary: Option<u64>,
    /// The applied epoch came from a forced promotion.
    pub forced: bool,
    /// The highest epoch a peer has shown this node.
    pub highest_seen_epoch: u64,
    /// A peer refused this node as a member.
    pub refused_as_member: bool,
    /// The process was paused longer than the primary timeout and no peer
    /// has acknowledged it since (only asked of a leader).
    pub paused: bool,
    /// An essential task of this node died (`supervise`): it must never
    /// be primary again in this process.
    pub essential_task_died: bool,
    /// This node stood down by a forced demotion, not undone yet.
    pub stood_down: bool,
}

/// The role rules of `node/DESIGN.md` ("Who is primary"), as a pure
/// function: the role, and whether this node leads with a valid lease
/// (standalone: whether it leads).
///
/// The rules: (1) a witness never serves; (2) the primary is the Raft
/// leader, (3) with a valid lease, (4) named by the applied epoch, (5) not
/// fenced (no peer showed a higher epoch or refused it). Alone in its
/// membership a node is standalone, except the primary of a forced
/// promotion, which stays *primary* of the relationship. A node whose
/// essential task died is never primary.
pub fn role_of(f: &RoleFacts) -> (Role, bool) {
    if f.members <= 1 {
        // Alone after a forced promotion: still the primary of the
        // relationship (the others are fenced until they rejoin).
        if f.leader && f.forced && f.epoch_primary == Some(f.me) {
            return (Role::Primary, true);
        }
        return (Role::Standalone, f.leader);
    }
    if f.kind == NodeKind::Witness {
        return (Role::Witness, false);
    }
    let lease_valid = f.leader && f.lease_left.is_none_or(|d| !d.is_zero());
    let fenced = f.highest_seen_epoch > f.epoch || f.refused_as_member;
    if lease_valid
        && f.epoch_primary == Some(f.me)
        && !fenced
        && !f.paused
        && !f.essential_task_died
        && !f.stood_down
    {
        (Role::Primary, true)
    } else {
        (Role::Backup, lease_valid)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tandem_storage::NodeKind;

    use super::{role_of, RoleFacts};
    use crate::roles::state::Role;

    /// An appliance (node 1) of a three-member relationship that leads with
    /// a fresh lease and is named by the applied epoch 5: the primary.
    fn primary() -> RoleFacts {
        RoleFacts {
            me: 1,
            kind: NodeKind::Appliance,
            members: 3,
            leader: true,
            lease_left: Some(Duration::from_millis(200)),
            epoch: 5,
            epoch_primary: Some(1),
            forced: false,
            highest_seen_epoch: 5,
            refused_as_member: false,
            paused: false,
            essential_task_died: false,
            stood_down: false,
        }
    }

    /// Each rule of node/DESIGN.md ("Who is primary") and its edges, as a
    /// change to [`primary`] and the role it must give.
    #[test]
    fn the_role_rules_table() {
        type Case = (&'static str, fn(&mut RoleFacts), (Role, bool));
        let cases: &[Case] = &[
            (
                "leader, lease, named by the epoch",
                |_| {},
                (Role::Primary, true),
            ),
            // Rule 1: a witness never serves, even as leader.
            (
                "witness leading",
                |f| f.kind = NodeKind::Witness,
                (Role::Witness, false),
            ),
            (
                "witness following",
                |f| {
                    f.kind = NodeKind::Witness;
                    f.leader = false;
                },
                (Role::Witness, false),
            ),
            // Rule 2: only the leader.
            (
                "follower named by the epoch",
                |f| f.leader = false,
                (Role::Backup, false),
            ),
            (
                "learner (pair only backup)",
                |f| {
                    f.leader = false;
                    f.epoch_primary = Some(2);
                    f.members = 2;
                },
                (Role::Backup, false),
            ),
            // Rule 3: the lease.
            (
                "lease just expired",
                |f| f.lease_left = Some(Duration::ZERO),
                (Role::Backup, false),
            ),
            (
                "lease with 1 ms left",
                |f| f.lease_left = Some(Duration::from_millis(1)),
                (Role::Primary, true),
            ),
            (
                "its own quorum (pair only)",
                |f| f.lease_left = None,
                (Role::Primary, true),
            ),
            // Rule 4: the committed epoch names it.
            (
                "epoch raise not yet committed",
                |f| f.epoch_primary = Some(2),
                (Role::Backup, true),
            ),
            (
                "no primary yet",
                |f| f.epoch_primary = None,
                (Role::Backup, true),
            ),
            // Rule 5: fencing.
            (
                "a peer showed a higher epoch",
                |f| f.highest_seen_epoch = 6,
                (Role::Backup, true),
            ),
            (
                "a lower epoch seen",
                |f| f.highest_seen_epoch = 4,
                (Role::Primary, true),
            ),
            (
                "refused as a member",
                |f| f.refused_as_member = true,
                (Role::Backup, true),
            ),
            // A pause longer than the primary timeout, not yet acknowledged.
            ("paused", |f| f.paused = true, (Role::Backup, true)),
            // An essential task died (the role manager, say).
            (
                "essential task died",
                |f| f.essential_task_died = true,
                (Role::Backup, true),
            ),
            // It stood down by a forced demotion.
            ("stood down", |f| f.stood_down = true, (Role::Backup, true)),
            // Alone in the membership.
            (
                "alone, leading",
                |f| f.members = 1,
                (Role::Standalone, true),
            ),
            (
                "alone, not leading",
                |f| {
                    f.members = 1;
                    f.leader = false;
                },
                (Role::Standalone, false),
            ),
            (
                "alone after a forced promotion",
                |f| {
                    f.members = 1;
                    f.forced = true;
                    f.lease_left = None;
                },
                (Role::Primary, true),
            ),
            (
                "alone, forced, another named",
                |f| {
                    f.members = 1;
                    f.forced = true;
                    f.epoch_primary = Some(2);
                },
                (Role::Standalone, true),
            ),
            (
                "forced primary back in a relationship",
                |f| f.forced = true,
                (Role::Primary, true),
            ),
        ];
        for (what, change, want) in cases {
            let mut f = primary();
            change(&mut f);
            assert_eq!(role_of(&f), *want, "{what}: {f:?}");
        }
    }
}
