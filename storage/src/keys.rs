//! Tree names, key encodings and the stored record types.
//!
//! The state machine lives in ONE sled tree per generation (`sm.<gen>`),
//! split into keyspaces by the first key byte. A new kind of data (settings,
//! status history, epoch, admin users…) gets a new prefix byte; the keys and
//! values of existing keyspaces never change.

use serde::{Deserialize, Serialize};

use crate::types::NodeKind;

/// Tree holding the Raft log: key = big-endian `u64` index.
pub(crate) const LOG_TREE: &str = "log";
/// Tree holding vote / committed / last purged.
pub(crate) const RAFT_META_TREE: &str = "raft_meta";
/// Tree holding the pointer to the current state machine generation.
pub(crate) const SM_ROOT_TREE: &str = "sm_root";
/// Tree holding the redo record of the last applied batch (`redo.rs`). Its
/// name must not start with [`SM_TREE_PREFIX`].
pub(crate) const SM_REDO_TREE: &str = "sm_redo";
/// Prefix of state machine generation tree names.
pub(crate) const SM_TREE_PREFIX: &str = "sm.";
/// Key in [`SM_ROOT_TREE`] whose value is the current generation (`u64`).
pub(crate) const SM_ROOT_CURRENT: &[u8] = b"current";

pub(crate) fn sm_tree_name(generation: u64) -> String {
    format!("{SM_TREE_PREFIX}{generation}")
}

/// Typed keys of [`RAFT_META_TREE`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum RaftMetaKey {
    Vote,
    Committed,
    LastPurged,
}

impl RaftMetaKey {
    pub(crate) fn as_bytes(self) -> &'static [u8] {
        match self {
            RaftMetaKey::Vote => b"vote",
            RaftMetaKey::Committed => b"committed",
            RaftMetaKey::LastPurged => b"last_purged",
        }
    }
}

/// Keyspace prefixes of the state machine tree.
pub(crate) mod prefix {
    // Singletons ([`super::SmMetaKey`]) use `m`, spelled out in their keys.
    /// Configuration: `c` ++ key (UTF-8) → [`super::ConfigRecord`].
    pub(crate) const CONFIG: u8 = b'c';
    /// Sessions: `s` ++ id (UTF-8) → [`super::SessionRecord`].
    pub(crate) const SESSION: u8 = b's';
    /// Session expiry index: `e` ++ expires_ms (BE u64) ++ id → `[version]`.
    pub(crate) const SESSION_EXPIRY: u8 = b'e';
    /// Join tokens: `t` ++ id (UTF-8) → [`super::TokenRecord`].
    pub(crate) const TOKEN: u8 = b't';
    /// Status history: `h` ++ seq (BE u64) → [`super::HistoryRecord`].
    pub(crate) const HISTORY: u8 = b'h';
    /// Admin users: `u` ++ name (UTF-8) → [`super::UserRecord`].
    pub(crate) const USER: u8 = b'u';
    /// Per-user API tokens: `a` ++ id (UTF-8) → [`super::ApiTokenRecord`].
    pub(crate) const API_TOKEN: u8 = b'a';
    /// Rejoin tokens: `r` ++ id (UTF-8) → [`super::RejoinTokenRecord`].
    pub(crate) const REJOIN_TOKEN: u8 = b'r';
}

/// Typed singleton keys of the state machine's meta keyspace.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SmMetaKey {
    /// `String`.
    ClusterId,
    /// `String`.
    AdminTokenHash,
    /// `u64`, the next node id to assign (absent = 2).
    NextNodeId,
    /// `Option<LogId>`.
    LastApplied,
    /// `StoredMembership`.
    LastMembership,
    /// [`crate::types::EpochRecord`] (absent = epoch 0, no primary).
    Epoch,
    /// [`crate::types::SettingsRecord`] (absent = never written).
    Settings,
    /// `u64`, the next status history seq = events ever appended (absent = 0).
    HistoryNextSeq,
    /// [`crate::types::SettingsRecord`] holding the maintenance plan
    /// (absent = never written).
    Maintenance,
    /// [`crate::types::SettingsRecord`] holding the placement record
    /// (absent = never written).
    Places,
}

impl SmMetaKey {
    pub(crate) fn as_bytes(self) -> &'static [u8] {
        match self {
            SmMetaKey::ClusterId => b"mcluster_id",
            SmMetaKey::AdminTokenHash => b"madmin_token_hash",
            SmMetaKey::NextNodeId => b"mnext_node_id",
            SmMetaKey::LastApplied => b"mlast_applied",
            SmMetaKey::LastMembership => b"mlast_membership",
            SmMetaKey::Epoch => b"mepoch",
            SmMetaKey::Settings => b"msettings",
            SmMetaKey::HistoryNextSeq => b"mhistory_next_seq",
            SmMetaKey::Maintenance => b"mmaintenance",
            SmMetaKey::Places => b"mplaces",
        }
    }
}

fn prefixed(p: u8, s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + s.len());
    k.push(p);
    k.extend_from_slice(s.as_bytes());
    k
}

pub(crate) fn config_key(key: &str) -> Vec<u8> {
    prefixed(prefix::CONFIG, key)
}

pub(crate) fn session_key(id: &str) -> Vec<u8> {
    prefixed(prefix::SESSION, id)
}

pub(crate) fn token_key(id: &str) -> Vec<u8> {
    prefixed(prefix::TOKEN, id)
}

pub(crate) fn rejoin_token_key(id: &str) -> Vec<u8> {
    prefixed(prefix::REJOIN_TOKEN, id)
}

pub(crate) fn user_key(name: &str) -> Vec<u8> {
    prefixed(prefix::USER, name)
}

pub(crate) fn api_token_key(id: &str) -> Vec<u8> {
    prefixed(prefix::API_TOKEN, id)
}

pub(crate) fn expiry_key(expires_ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + id.len());
    k.push(prefix::SESSION_EXPIRY);
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// First key after every expiry-index key with `expires_ms <= now_ms`.
pub(crate) fn expiry_upper_bound(now_ms: u64) -> Vec<u8> {
    match now_ms.checked_add(1) {
        Some(n) => {
            let mut k = Vec::with_capacity(9);
            k.push(prefix::SESSION_EXPIRY);
            k.extend_from_slice(&n.to_be_bytes());
            k
        }
        None => vec![prefix::SESSION_EXPIRY + 1],
    }
}

pub(crate) fn history_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix::HISTORY);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The seq of a history key, or `None` if the key is not one.
pub(crate) fn history_seq(key: &[u8]) -> Option<u64> {
    match key {
        [prefix::HISTORY, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// Stored configuration value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfigRecord {
    pub(crate) value_json: String,
    pub(crate) version: u64,
    pub(crate) updated_by: String,
    pub(crate) updated_ms: u64,
}

/// Stored session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub(crate) owner: String,
    pub(crate) data_json: String,
    pub(crate) created_ms: u64,
    pub(crate) expires_ms: u64,
}

/// Stored join token. Never deleted by consumption: a used token stays, with
/// `used_by` set, so its id can never be used again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenRecord {
    pub(crate) secret_hash: String,
    pub(crate) expires_ms: u64,
    pub(crate) kind: NodeKind,
    pub(crate) created_by: String,
    /// Node id assigned when the token was consumed.
    pub(crate) used_by: Option<u64>,
}

/// Stored rejoin token: admits one removed or replaced node (by its id,
/// which its certificate carries) back as a backup. Kept when used, so its
/// id can never be used again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RejoinTokenRecord {
    pub(crate) node: u64,
    pub(crate) secret_hash: String,
    pub(crate) expires_ms: u64,
    pub(crate) created_by: String,
    pub(crate) used: bool,
}

/// Stored status history event (its seq is in the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HistoryRecord {
    pub(crate) at_ms: u64,
    pub(crate) node: u64,
    pub(crate) kind: String,
    pub(crate) actor: String,
    pub(crate) details_json: String,
}

/// Stored admin user (its name is in the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserRecord {
    pub(crate) password_hash: String,
    pub(crate) created_ms: u64,
    pub(crate) updated_ms: u64,
    pub(crate) updated_by: String,
}

/// Stored per-user API token (its id is in the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ApiTokenRecord {
    pub(crate) user: String,
    pub(crate) secret_hash: String,
    pub(crate) created_ms: u64,
}
