//! What a node operation that failed answers: [`NodeError`], with the
//! situations an action is refused in ([`Refusal`]) and the reasons a join
//! is denied ([`JoinDenial`]) as enums that carry data. Code matches on the
//! variants; the texts are for people. `api::errors` gives each variant its
//! HTTP status, in one table.
//!
//! A leaf: knows nothing of the node, Raft or the API.

use tandem_storage::NodeKind;
pub use tandem_storage::Refusal as StateRefusal;

/// Failures of node operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// Writes (and linearizable reads) go to the leader.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader's API base URL, when known.
        leader_api: Option<String>,
    },
    /// The action does not fit the situation (role, members); nothing
    /// changed.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// A peer the action needs did not answer; nothing changed.
    #[error("refused: {}", unreachable(.peer, .reason, .remedy))]
    PeerUnreachable {
        /// The peer.
        peer: Peer,
        /// What the transport said, if anything.
        reason: Option<String>,
        /// What the administrator can do instead.
        remedy: Remedy,
    },
    /// The replicated state machine refused the command; nothing changed.
    #[error("refused: {0}")]
    Rejected(StateRefusal),
    /// A join request is denied: the caller's token or name does not fit.
    #[error("join refused: {0}")]
    JoinDenied(JoinDenial),
    /// The caller's input is wrong.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// What the request names does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The cluster cannot answer now (no quorum, shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A local failure (disk, certificate signing).
    #[error("internal: {0}")]
    Internal(String),
    /// The data directory's filesystem is below its free-space reserve
    /// ([`crate::disk::DiskGuard`]); nothing was changed.
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
}

/// The text of [`NodeError::PeerUnreachable`].
fn unreachable(peer: &Peer, reason: &Option<String>, remedy: &Remedy) -> String {
    let detail = reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    format!("{peer} cannot be contacted{detail}{remedy}")
}

impl NodeError {
    /// The text without the kind's prefix, as the API's `message` shows it.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            NodeError::Refused(r) => r.to_string(),
            NodeError::Rejected(r) => r.to_string(),
            NodeError::JoinDenied(d) => d.to_string(),
            NodeError::PeerUnreachable {
                peer,
                reason,
                remedy,
            } => unreachable(peer, reason, remedy),
            NodeError::NotLeader { .. } => self.to_string(),
            NodeError::BadRequest(m)
            | NodeError::NotFound(m)
            | NodeError::Unavailable(m)
            | NodeError::Internal(m)
            | NodeError::InsufficientStorage(m) => m.clone(),
        }
    }
}

/// A peer an action needed, and what it is to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// The primary, by node id.
    Primary(u64),
    /// The backup appliance, by node id.
    Backup(u64),
    /// A member, by node id.
    Node(u64),
    /// The primary of another cluster, by the address given.
    PrimaryAt(String),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Primary(id) => write!(f, "primary {id}"),
            Peer::Backup(id) => write!(f, "backup {id}"),
            Peer::Node(id) => write!(f, "node {id}"),
            Peer::PrimaryAt(addr) => write!(f, "the primary at {addr}"),
        }
    }
}

/// What to do when a peer an action needs cannot be contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Nothing to suggest.
    None,
    /// A forced promotion (the primary is gone).
    ForcedPromotion,
    /// Retry the swap with force.
    UseForce,
}

impl std::fmt::Display for Remedy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Remedy::None => "",
            Remedy::ForcedPromotion => "; a forced promotion is needed",
            Remedy::UseForce => "; a planned swap needs it (use force)",
        })
    }
}

/// The relationship action a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Become primary / become backup.
    Swap,
    /// Sync now or verify.
    Sync,
    /// Break relationship.
    Break,
    /// Take over as the only node.
    TakeOver,
}

/// Why an action does not fit the situation. The status is 409 for all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The relationship has no backup appliance.
    #[error("there is no backup appliance")]
    NoBackup,
    /// No node is primary.
    #[error("there is no primary")]
    NoPrimary,
    /// The relationship has no witness.
    #[error("this relationship has no witness")]
    NoWitness,
    /// A witness only votes.
    #[error("a witness is never primary")]
    WitnessNeverPrimary,
    /// Sync and verify run between the two appliances.
    #[error("sync runs between the primary and its backup")]
    SyncNeedsAppliances,
    /// The node is standalone.
    #[error("this node has no relationship to {}", match .0 {
        Action::Swap => "swap roles in",
        Action::Sync => "sync",
        Action::Break => "break",
        Action::TakeOver => "take over",
    })]
    NoRelationship(Action),
    /// Promotion asked of the primary.
    #[error("this node is already the primary")]
    AlreadyPrimary,
    /// A node the action names is not in the membership.
    #[error("node {node} is not a member")]
    NotMember {
        /// The node id.
        node: u64,
    },
    /// The peer did not reach the primary's log in time.
    #[error("node {node} did not catch up within {within_s} s (it has {matched} of {last})")]
    NotCaughtUp {
        /// The peer.
        node: u64,
        /// How long it was given.
        within_s: u64,
        /// The last index it holds.
        matched: u64,
        /// The primary's last index.
        last: u64,
    },
    /// Removing the witness is asked of the primary.
    #[error("the witness is removed on the primary")]
    RemoveWitnessOnPrimary,
    /// Rejoin asked of a node that is still a member.
    #[error("this node was not replaced or removed: nothing to rejoin")]
    NothingToRejoin,
    /// A join is being applied already (the node restarts for it).
    #[error("this node is restarting to apply a join already")]
    JoinUnderway,
    /// Setting up a relationship needs a standalone node.
    #[error(
        "this node is not standalone (it is {role}, with {members} member(s)); \
         break its relationship first"
    )]
    NotStandalone {
        /// Its role, as the status page names it.
        role: &'static str,
        /// How many members its relationship has.
        members: usize,
    },
    /// A witness is set up from its own command line.
    #[error("a witness joins with `tandem join --witness`")]
    WitnessJoinsByCommand,
    /// The join token given cannot be read; what is wrong with it.
    #[error("{0}")]
    MalformedToken(String),
    /// The join token came from this node's own cluster.
    #[error("this token was created by this node's own cluster: create it on the primary")]
    OwnClusterToken,
    /// Joining would discard data the node holds; not confirmed.
    #[error(
        "this node holds {config_keys} configuration entr{} and {sessions} session(s) of its \
         own; joining discards them (confirm with discard_data)",
        if *.config_keys == 1 { "y" } else { "ies" }
    )]
    HoldsData {
        /// Configuration entries it holds.
        config_keys: u64,
        /// Sessions it holds.
        sessions: u64,
    },
    /// Only the primary may ask this of a backup or witness.
    #[error("only the primary may remove this node")]
    NotFromPrimary,
    /// The asked node is not the primary.
    #[error("this node is not the primary")]
    NotPrimary,
    /// The peer asked refused; its words.
    #[error("{reason}")]
    ByPeer {
        /// What it said.
        reason: String,
    },
    /// The node would become primary but is in maintenance.
    #[error("{node} is in maintenance: it is not made primary until its maintenance ends")]
    InMaintenance {
        /// Its name.
        node: String,
    },
    /// A hold or window that does not fit the plan; what is wrong.
    #[error("maintenance refused: {0}")]
    MaintenanceConflict(String),
    /// Maintenance of the primary, whose role could not move away.
    #[error(
        "the role cannot move away from {node} for its maintenance: {why} (start it with force \
         to keep {node} primary, in maintenance, until the role can move)"
    )]
    CannotMoveRole {
        /// The primary's name.
        node: String,
        /// Why the swap failed.
        why: String,
    },
}

/// Why a join request is denied. The status is 403 for all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinDenial {
    /// The token cannot be read; what is wrong with it.
    #[error("{0}")]
    MalformedToken(String),
    /// The token names another cluster's CA.
    #[error("token was issued by another cluster")]
    OtherCluster,
    /// The node asked holds no CA key.
    #[error("this node holds no CA key (a witness); join through an appliance")]
    NoCaKey,
    /// Another member has the name.
    #[error("a member is already named {name:?}: give the joining node another name")]
    NameTaken {
        /// The name asked for.
        name: String,
    },
    /// The joiner's certificate would name an address (or DNS name) that
    /// another member's certificate holds: it would pass for that member
    /// with clients that check only the address.
    #[error("{address} is an address of member {name}: a node's certificate may not name another member's address; advertise this node's own addresses (--peer-advertise, --api-advertise)")]
    AddressTaken {
        /// The address or name, as the joiner gave it.
        address: String,
        /// The member that holds it.
        name: String,
    },
    /// The replicated token store refused the token (unknown, used,
    /// expired, not matching).
    #[error("{0}")]
    Token(StateRefusal),
    /// The relationship has its two appliances (or its witness) already.
    #[error("{}", match kind {
        NodeKind::Appliance => "this relationship has two appliances already: remove one (break or rejoin) before another joins",
        NodeKind::Witness => "this relationship has a witness already: remove it (remove-witness) before another joins",
    })]
    TopologyFull {
        /// The kind that has no room.
        kind: NodeKind,
    },
    /// The joining appliance shares a site or host with an appliance of the
    /// relationship, and the administrator did not allow it.
    #[error("this node shares {shared} with appliance {name}: one failure there would take both; join from another site or host, or pass --allow-same-site (\"Allow the same site or host\" on the page) to accept it")]
    SameSite {
        /// The appliance it shares them with.
        name: String,
        /// What they share (`site "x" and host "y"`).
        shared: String,
    },
}
