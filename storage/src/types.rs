//! The openraft type configuration, the replicated commands and their
//! responses, and the records readers get back.
//!
//! Evolution rule: [`Request`] and [`Response`] are bincode-encoded inside
//! Raft log entries, where enum variants are identified by position. New
//! variants are only ever appended at the end; existing variants and fields
//! are never reordered or changed (a changed command is a new variant).

use std::fmt;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Tandem's Raft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry of [`TypeConfig`].
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A log id of [`TypeConfig`].
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote of [`TypeConfig`].
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Membership plus the log id that introduced it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata of [`TypeConfig`].
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot whose data is an open file.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, tokio::fs::File>;

/// What a node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NodeKind {
    /// May be primary and hold shared IPs.
    #[default]
    Appliance,
    /// Votes and stores the log; never primary.
    Witness,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::Appliance => "appliance",
            NodeKind::Witness => "witness",
        })
    }
}

/// A cluster member as stored in Raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Human-readable node name.
    pub name: String,
    /// Appliance or witness.
    pub kind: NodeKind,
    /// `host:port` of the peer (mutual TLS) listener.
    pub peer_addr: String,
    /// `host:port` of the admin (UI/API) listener.
    pub api_addr: String,
}

/// A replicated command. Applying it is deterministic: every time comes from
/// inside the command, never from the local clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Sets the cluster id and the first admin token hash. Only once.
    Bootstrap {
        /// The cluster's id.
        cluster_id: String,
        /// Hash of the initial admin token.
        admin_token_hash: String,
    },
    /// Writes a configuration value (JSON text).
    ConfigPut {
        /// Configuration key.
        key: String,
        /// The value as JSON text; must parse as JSON.
        value_json: String,
        /// Who wrote it.
        actor: String,
        /// When (ms since the Unix epoch, chosen by the proposer).
        at_ms: u64,
        /// Optimistic concurrency: the version the writer saw (`Some(0)` =
        /// the key must not exist).
        if_version: Option<u64>,
    },
    /// Removes a configuration value.
    ConfigDelete {
        /// Configuration key.
        key: String,
        /// Who removed it.
        actor: String,
        /// When (ms since the Unix epoch).
        at_ms: u64,
    },
    /// Creates or replaces a session.
    SessionPut {
        /// Session id.
        id: String,
        /// Owner (user name).
        owner: String,
        /// Session data as JSON text.
        data_json: String,
        /// Creation time (ms).
        created_ms: u64,
        /// Expiry time (ms); the session is gone from `expires_ms` on.
        expires_ms: u64,
    },
    /// Removes a session.
    SessionDelete {
        /// Session id.
        id: String,
    },
    /// Removes every session with `expires_ms <= now_ms`.
    SessionSweep {
        /// The sweeping node's notion of now (ms).
        now_ms: u64,
    },
    /// Registers a one-time join token.
    JoinTokenCreate {
        /// Token id (public part).
        id: String,
        /// Hash of the secret part.
        secret_hash: String,
        /// Expiry time (ms); the token is unusable from `expires_ms` on.
        expires_ms: u64,
        /// Kind of node the token admits.
        kind: NodeKind,
        /// Who created it.
        created_by: String,
    },
    /// Uses a join token and assigns the joiner a node id.
    JoinTokenConsume {
        /// Token id.
        id: String,
        /// Hash of the secret presented by the joiner.
        secret_hash: String,
        /// The proposer's notion of now (ms).
        now_ms: u64,
    },
    /// Replaces the admin token hash.
    SetAdminTokenHash {
        /// The new hash.
        hash: String,
    },
}

impl fmt::Display for Request {
    /// A short description for logs; never prints hashes, values or data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Bootstrap { cluster_id, .. } => write!(f, "bootstrap(cluster={cluster_id})"),
            Request::ConfigPut { key, actor, .. } => {
                write!(f, "config_put(key={key}, actor={actor})")
            }
            Request::ConfigDelete { key, actor, .. } => {
                write!(f, "config_delete(key={key}, actor={actor})")
            }
            Request::SessionPut { owner, .. } => write!(f, "session_put(owner={owner})"),
            Request::SessionDelete { .. } => f.write_str("session_delete"),
            Request::SessionSweep { now_ms } => write!(f, "session_sweep(now_ms={now_ms})"),
            Request::JoinTokenCreate { id, kind, .. } => {
                write!(f, "join_token_create(id={id}, kind={kind})")
            }
            Request::JoinTokenConsume { id, .. } => write!(f, "join_token_consume(id={id})"),
            Request::SetAdminTokenHash { .. } => f.write_str("set_admin_token_hash"),
        }
    }
}

/// The result of applying one entry. Refusals are normal results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done (also the response to blank and membership entries).
    Ok,
    /// The command was valid Raft input but refused by the state machine;
    /// nothing changed.
    Refused {
        /// Why, for humans.
        reason: String,
    },
    /// A configuration value was written with this version.
    ConfigWritten {
        /// The key's new version (1 for a new key).
        version: u64,
    },
    /// A delete ran.
    Deleted {
        /// Whether there was something to delete.
        existed: bool,
    },
    /// A session sweep ran.
    Swept {
        /// Number of sessions removed.
        removed: u64,
    },
    /// A join token was consumed; the joiner gets this node id.
    NodeIdAssigned {
        /// The new node id.
        node_id: u64,
    },
}

impl Response {
    pub(crate) fn refused(reason: impl Into<String>) -> Self {
        Response::Refused {
            reason: reason.into(),
        }
    }
}

/// A configuration value as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// The key.
    pub key: String,
    /// The value as JSON text.
    pub value_json: String,
    /// Version, 1 for the first write of the key.
    pub version: u64,
    /// Who wrote it last.
    pub updated_by: String,
    /// When it was written last (ms).
    pub updated_ms: u64,
}

/// A session as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Data as JSON text.
    pub data_json: String,
    /// Creation time (ms).
    pub created_ms: u64,
    /// Expiry time (ms).
    pub expires_ms: u64,
}

/// A join token as readers see it (without its secret hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Token id.
    pub id: String,
    /// Kind of node the token admits.
    pub kind: NodeKind,
    /// Expiry time (ms).
    pub expires_ms: u64,
    /// Who created it.
    pub created_by: String,
    /// The node id assigned when it was consumed, if it was.
    pub used_by: Option<u64>,
}
