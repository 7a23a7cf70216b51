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
    /// Applies the sub-commands in order, all or nothing: if one is refused,
    /// none is applied and the response is that sub-command's refusal.
    /// A nested `Multi` is refused.
    Multi(Vec<Request>),
    /// Raises the epoch (compare-and-set) and names the new primary.
    RaiseEpoch {
        /// The epoch the proposer saw; refused unless it is the stored one.
        expected_epoch: u64,
        /// The new primary's node id.
        primary: u64,
        /// Whether this is a forced promotion (peer unreachable).
        forced: bool,
        /// For a forced promotion: the last log index the new lineage
        /// contains (entries after it on the old primary diverged).
        forked_at: Option<u64>,
        /// When (ms since the Unix epoch, chosen by the proposer).
        at_ms: u64,
    },
    /// Raises the epoch (compare-and-set) with no primary: the relationship
    /// was broken or the primary stepped down without a successor.
    ClearPrimary {
        /// The epoch the proposer saw; refused unless it is the stored one.
        expected_epoch: u64,
        /// When (ms).
        at_ms: u64,
    },
    /// Replaces the replicated settings (a JSON object as text).
    SettingsPut {
        /// The settings as JSON text; must be a JSON object, at most
        /// [`crate::MAX_VALUE_BYTES`].
        settings_json: String,
        /// Optimistic concurrency: the version the writer saw (`Some(0)` =
        /// no settings stored yet).
        if_version: Option<u64>,
        /// Who wrote them.
        actor: String,
        /// When (ms).
        at_ms: u64,
    },
    /// Appends an event to the status history (oldest dropped beyond
    /// [`crate::HISTORY_CAPACITY`]).
    HistoryAppend {
        /// When it happened (ms).
        at_ms: u64,
        /// The node it happened on / was recorded by.
        node: u64,
        /// Event kind, at most [`crate::MAX_HISTORY_KIND_BYTES`].
        kind: String,
        /// Who caused it, at most [`crate::MAX_HISTORY_ACTOR_BYTES`].
        actor: String,
        /// Details: a JSON object, at most [`crate::MAX_HISTORY_DETAILS_BYTES`].
        details_json: String,
    },
    /// Creates an admin user or replaces its password hash.
    UserPut {
        /// User name (1..=[`crate::MAX_USER_NAME_BYTES`] bytes).
        name: String,
        /// The password's argon2id hash (PHC string), computed by the node.
        password_hash: String,
        /// Who created or changed it.
        actor: String,
        /// When (ms).
        at_ms: u64,
    },
    /// Removes an admin user and its API tokens; refused for the last user.
    UserDelete {
        /// User name.
        name: String,
        /// Who removed it.
        actor: String,
        /// When (ms).
        at_ms: u64,
    },
    /// Registers a per-user API token (bearer credential of the JSON API).
    ApiTokenCreate {
        /// Token id (public part).
        id: String,
        /// The user it acts for; must exist.
        user: String,
        /// SHA-256 (hex) of the whole token.
        secret_hash: String,
        /// When (ms).
        at_ms: u64,
    },
    /// Revokes (removes) a per-user API token.
    ApiTokenRevoke {
        /// Token id.
        id: String,
    },
    /// Replaces the maintenance plan (which nodes are in maintenance, the
    /// scheduled windows): a JSON object as text, stored like the settings.
    MaintenancePut {
        /// The plan as JSON text; must be a JSON object, at most
        /// [`crate::MAX_VALUE_BYTES`].
        doc_json: String,
        /// Optimistic concurrency: the version the writer saw (`Some(0)` =
        /// no plan stored yet).
        if_version: Option<u64>,
        /// Who wrote it.
        actor: String,
        /// When (ms).
        at_ms: u64,
    },
    /// Uses a join token for a node of `kind` and assigns the joiner a node
    /// id: refused when the token admits another kind (a witness token
    /// never admits an appliance, which would receive the CA key).
    JoinTokenUse {
        /// Token id.
        id: String,
        /// Hash of the secret presented by the joiner.
        secret_hash: String,
        /// The proposer's notion of now (ms).
        now_ms: u64,
        /// The kind of node joining.
        kind: NodeKind,
    },
    /// Replaces the placement record (each node's site and host identity,
    /// which the anti-affinity rules compare): a JSON object as text,
    /// stored like the settings.
    PlacesPut {
        /// The record as JSON text; must be a JSON object, at most
        /// [`crate::MAX_VALUE_BYTES`].
        doc_json: String,
        /// Optimistic concurrency: the version the writer saw (`Some(0)` =
        /// none stored yet).
        if_version: Option<u64>,
        /// Who wrote it.
        actor: String,
        /// When (ms).
        at_ms: u64,
    },
    /// Creates a one-time rejoin token for node `node` (a node removed by a
    /// break or replaced by a forced promotion comes back with it).
    RejoinTokenCreate {
        /// Token id.
        id: String,
        /// The node it admits.
        node: u64,
        /// SHA-256 (hex) of the secret.
        secret_hash: String,
        /// Expiry (ms).
        expires_ms: u64,
        /// Who created it.
        created_by: String,
    },
    /// Uses a rejoin token for node `node`: refused for any other node.
    RejoinTokenUse {
        /// Token id.
        id: String,
        /// Hash of the secret presented by the rejoining node.
        secret_hash: String,
        /// The proposer's notion of now (ms).
        now_ms: u64,
        /// The node rejoining (as its certificate names it).
        node: u64,
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
            Request::JoinTokenUse { id, kind, .. } => {
                write!(f, "join_token_use(id={id}, kind={kind})")
            }
            Request::RejoinTokenCreate { id, node, .. } => {
                write!(f, "rejoin_token_create(id={id}, node={node})")
            }
            Request::RejoinTokenUse { id, node, .. } => {
                write!(f, "rejoin_token_use(id={id}, node={node})")
            }
            Request::SetAdminTokenHash { .. } => f.write_str("set_admin_token_hash"),
            Request::Multi(reqs) => {
                f.write_str("multi[")?;
                for (i, r) in reqs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{r}")?;
                }
                f.write_str("]")
            }
            Request::RaiseEpoch {
                expected_epoch,
                primary,
                forced,
                ..
            } => write!(
                f,
                "raise_epoch(expected={expected_epoch}, primary={primary}, forced={forced})"
            ),
            Request::ClearPrimary { expected_epoch, .. } => {
                write!(f, "clear_primary(expected={expected_epoch})")
            }
            Request::SettingsPut { actor, .. } => write!(f, "settings_put(actor={actor})"),
            Request::MaintenancePut { actor, .. } => write!(f, "maintenance_put(actor={actor})"),
            Request::PlacesPut { actor, .. } => write!(f, "places_put(actor={actor})"),
            Request::HistoryAppend { kind, node, .. } => {
                write!(f, "history_append(kind={kind}, node={node})")
            }
            Request::UserPut { name, actor, .. } => {
                write!(f, "user_put(name={name}, actor={actor})")
            }
            Request::UserDelete { name, actor, .. } => {
                write!(f, "user_delete(name={name}, actor={actor})")
            }
            Request::ApiTokenCreate { id, user, .. } => {
                write!(f, "api_token_create(id={id}, user={user})")
            }
            Request::ApiTokenRevoke { id } => write!(f, "api_token_revoke(id={id})"),
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
        /// Why.
        reason: Refusal,
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
    /// Every sub-command of a `Multi` was applied; their responses in order.
    Multi(Vec<Response>),
    /// The epoch was raised to this value.
    Epoch {
        /// The new epoch.
        epoch: u64,
    },
    /// The settings were written with this version.
    SettingsWritten {
        /// The new version (1 for the first write).
        version: u64,
    },
    /// A history event was appended with this sequence number.
    HistoryAppended {
        /// The event's sequence number (0 for the first event ever).
        seq: u64,
    },
    /// The maintenance plan was written with this version.
    MaintenanceWritten {
        /// The new version (1 for the first write).
        version: u64,
    },
    /// The placement record was written with this version.
    PlacesWritten {
        /// The new version (1 for the first write).
        version: u64,
    },
}

impl Response {
    pub(crate) fn refused(reason: Refusal) -> Self {
        Response::Refused { reason }
    }
}

/// A part of a command that a limit or a format applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    /// A configuration value.
    Value,
    /// A session's data.
    SessionData,
    /// The settings document.
    Settings,
    /// A configuration key, session id or token id.
    KeyOrId,
    /// A history event's kind.
    HistoryKind,
    /// A history event's actor.
    HistoryActor,
    /// A history event's details.
    HistoryDetails,
    /// The maintenance plan.
    Maintenance,
    /// The placement record (sites and hosts).
    Places,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::Value => "value",
            Field::SessionData => "session data",
            Field::Settings => "settings",
            Field::KeyOrId => "key or id",
            Field::HistoryKind => "history kind",
            Field::HistoryActor => "history actor",
            Field::HistoryDetails => "history details",
            Field::Maintenance => "maintenance records",
            Field::Places => "placement record",
        })
    }
}

/// Why the state machine refused a command. The text is for people; code
/// matches on the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// A part of the command is over its size limit.
    #[error("{field} larger than {limit} bytes")]
    TooLarge {
        /// Which part.
        field: Field,
        /// The limit in bytes.
        limit: usize,
    },
    /// A name or id is over its length limit.
    #[error("{field} longer than {limit} bytes")]
    TooLong {
        /// Which part.
        field: Field,
        /// The limit in bytes.
        limit: usize,
    },
    /// A configuration value is not JSON.
    #[error("value is not valid JSON")]
    NotJson,
    /// A part that must be a JSON object is not one.
    #[error("{field} are not a JSON object")]
    NotJsonObject {
        /// Which part.
        field: Field,
    },
    /// A user name is empty or too long.
    #[error("user name must be 1..={max} bytes")]
    UserName {
        /// The longest name allowed, in bytes.
        max: usize,
    },
    /// A password hash is empty or too long.
    #[error("password hash is empty or too long")]
    PasswordHash,
    /// An epoch raise was based on another epoch.
    #[error("epoch is {current}, expected {expected}")]
    EpochMismatch {
        /// The stored epoch.
        current: u64,
        /// The epoch the raise was based on.
        expected: u64,
    },
    /// The epoch cannot grow any more.
    #[error("epoch overflow")]
    EpochOverflow,
    /// The cluster already has its id and first token.
    #[error("already bootstrapped")]
    AlreadyBootstrapped,
    /// An optimistic write saw another version.
    #[error("version conflict: expected {expected}, current {current}")]
    VersionConflict {
        /// The version the writer saw.
        expected: u64,
        /// The stored version.
        current: u64,
    },
    /// A token with this id exists already.
    #[error("token id already exists")]
    TokenIdExists,
    /// No join token has this id.
    #[error("unknown token")]
    UnknownToken,
    /// The join token's secret is wrong.
    #[error("token does not match")]
    TokenMismatch,
    /// The join token was used already.
    #[error("token already used")]
    TokenUsed,
    /// The join token expired.
    #[error("token expired")]
    TokenExpired,
    /// A `Multi` inside a `Multi`.
    #[error("nested multi is not allowed")]
    NestedMulti,
    /// The last administrator cannot be deleted.
    #[error("cannot delete the last admin user")]
    LastAdmin,
    /// The named user does not exist.
    #[error("no user {user:?}")]
    NoUser {
        /// The name asked for.
        user: String,
    },
    /// The join token admits another kind of node.
    #[error("this token is for kind {token} and the joining node is of kind {asked}: make a token of kind {asked}")]
    TokenKind {
        /// What the token admits.
        token: NodeKind,
        /// What tried to join with it.
        asked: NodeKind,
    },
    /// The rejoin token admits another node.
    #[error("this rejoin token is for node {token} and node {asked} presented it: make a rejoin token for node {asked}")]
    TokenForOtherNode {
        /// The node the token admits.
        token: u64,
        /// The node that presented it.
        asked: u64,
    },
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

/// The fencing epoch and the primary it names, as stored (meta keyspace) and
/// as readers see it. The default (nothing stored yet) is epoch 0 with no
/// primary.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch; raised by one on every change of primary.
    pub epoch: u64,
    /// The primary's node id; `None` after `ClearPrimary` or before the first.
    pub primary: Option<u64>,
    /// Whether the epoch was raised by a forced promotion.
    pub forced: bool,
    /// For a forced promotion: the last log index of the new lineage.
    pub forked_at: Option<u64>,
    /// When this epoch began (ms, from the command).
    pub since_ms: u64,
}

/// The replicated settings, as stored (meta keyspace) and as readers see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRecord {
    /// The settings (or, under its own key, the maintenance plan) as a JSON
    /// object (text).
    pub settings_json: String,
    /// Version, 1 for the first write.
    pub version: u64,
    /// Who wrote them last.
    pub updated_by: String,
    /// When they were written last (ms).
    pub updated_ms: u64,
}

/// A status history event as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Sequence number: 0 for the first event ever, +1 per event.
    pub seq: u64,
    /// When it happened (ms).
    pub at_ms: u64,
    /// The node it happened on.
    pub node: u64,
    /// Event kind.
    pub kind: String,
    /// Who caused it.
    pub actor: String,
    /// Details as a JSON object (text).
    pub details_json: String,
}

/// One Raft log entry as the diverged export sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEntry {
    /// Log index.
    pub index: u64,
    /// Term of the leader that proposed it.
    pub term: u64,
    /// Node id of the leader that proposed it (with `term`, the identity of
    /// the entry's leader: two entries at one index are the same entry iff
    /// `(term, leader_node)` are equal).
    pub leader_node: u64,
    /// The command; `None` for blank and membership entries.
    pub request: Option<Request>,
}

/// An admin user as readers see it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminUser {
    /// User name.
    pub name: String,
    /// argon2id hash of the password (PHC string).
    pub password_hash: String,
    /// When it was created (ms).
    pub created_ms: u64,
    /// When it was last changed (ms).
    pub updated_ms: u64,
    /// Who changed it last.
    pub updated_by: String,
}

impl fmt::Debug for AdminUser {
    /// Never prints the hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminUser")
            .field("name", &self.name)
            .field("created_ms", &self.created_ms)
            .field("updated_ms", &self.updated_ms)
            .field("updated_by", &self.updated_by)
            .finish_non_exhaustive()
    }
}

/// A per-user API token as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Token id (public part).
    pub id: String,
    /// The user it acts for.
    pub user: String,
    /// SHA-256 (hex) of the whole token.
    pub secret_hash: String,
    /// When it was created (ms).
    pub created_ms: u64,
}
