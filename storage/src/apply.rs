//! Deterministic application of committed entries to the state machine tree.
//!
//! A whole batch of entries is computed against an in-memory overlay of
//! pending writes on top of the tree (so later entries of the batch see the
//! effects of earlier ones), then written with its redo record (`redo.rs`),
//! together with the last applied log id and, if it changed, the membership:
//! after a crash either all of the batch's writes are recovered or none.

use std::collections::BTreeMap;
use std::ops::Bound;

use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::IVec;

use crate::codec;
use crate::error::StorageError;
use crate::keys::{
    self, ApiTokenRecord, ConfigRecord, HistoryRecord, SessionRecord, SmMetaKey, TokenRecord,
    UserRecord,
};
use crate::redo::{self, Redo};
use crate::types::{
    Entry, EpochRecord, Field, NodeKind, Refusal, Request, Response, SettingsRecord,
    StoredMembership,
};

/// Largest value (JSON text) a command may store: larger ones are refused
/// (the node should refuse them before proposing). It does not keep sled's
/// blob files away, which hold whole tree nodes: the durable flush syncs
/// those (`sled_sync`).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Longest configuration key, session id or token id a command may use.
pub const MAX_KEY_BYTES: usize = 1024;

/// The first node id handed to a joiner (the initializing node is 1).
pub(crate) const FIRST_JOINER_NODE_ID: u64 = 2;

/// Status history events kept; appending beyond drops the oldest in the same
/// batch.
pub const HISTORY_CAPACITY: u64 = 10_000;

/// Longest status history event kind.
pub const MAX_HISTORY_KIND_BYTES: usize = 64;

/// Longest status history actor.
pub const MAX_HISTORY_ACTOR_BYTES: usize = 128;

/// Largest status history details (JSON object text).
pub const MAX_HISTORY_DETAILS_BYTES: usize = 16 * 1024;

/// Longest admin user name.
pub const MAX_USER_NAME_BYTES: usize = 64;

/// Longest password hash (PHC string) a `UserPut` may store.
const MAX_PASSWORD_HASH_BYTES: usize = 512;

/// A pending value of a key, as it was before a journaled write: `None` = the
/// key had no pending write (reads went to the tree).
type Undo = (Vec<u8>, Option<Option<IVec>>);

/// Pending writes over a tree: reads see the pending value first.
pub(crate) struct Overlay<'t> {
    tree: &'t sled::Tree,
    pending: BTreeMap<Vec<u8>, Option<IVec>>,
    /// While a `Multi` runs: how to undo its writes so far.
    journal: Option<Vec<Undo>>,
}

impl<'t> Overlay<'t> {
    pub(crate) fn new(tree: &'t sled::Tree) -> Self {
        Self {
            tree,
            pending: BTreeMap::new(),
            journal: None,
        }
    }

    /// Starts recording undo information (one level: `Multi` does not nest).
    fn begin(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Keeps the writes since [`Overlay::begin`].
    fn commit(&mut self) {
        self.journal = None;
    }

    /// Undoes every write since [`Overlay::begin`].
    fn rollback(&mut self) {
        if let Some(journal) = self.journal.take() {
            for (k, prev) in journal.into_iter().rev() {
                match prev {
                    Some(v) => self.pending.insert(k, v),
                    None => self.pending.remove(&k),
                };
            }
        }
    }

    fn set(&mut self, key: Vec<u8>, value: Option<IVec>) {
        if let Some(journal) = &mut self.journal {
            journal.push((key.clone(), self.pending.get(&key).cloned()));
        }
        self.pending.insert(key, value);
    }

    /// Every record of the tree with the pending writes applied, in key
    /// order, streamed (the tree is not copied).
    pub(crate) fn merged(&self) -> impl Iterator<Item = Result<(IVec, IVec), StorageError>> + '_ {
        let mut tree = self.tree.iter().peekable();
        let mut pending = self.pending.iter().peekable();
        std::iter::from_fn(move || loop {
            let from_tree = match tree.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => {
                    let e = tree.next().and_then(Result::err)?;
                    return Some(Err(e.into()));
                }
                None => None,
            };
            let take_pending = match (&from_tree, pending.peek()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(t), Some((p, _))) => p.as_slice() <= t.as_ref(),
            };
            if take_pending {
                let (k, v) = pending.next()?;
                if from_tree.as_deref() == Some(k.as_slice()) {
                    tree.next(); // shadowed by the pending write
                }
                match v {
                    Some(v) => return Some(Ok((IVec::from(k.as_slice()), v.clone()))),
                    None => continue, // removed
                }
            }
            return tree.next().map(|kv| kv.map_err(StorageError::from));
        })
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<IVec>, StorageError> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.tree.get(key)?),
        }
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.get_raw(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put<T: Serialize + ?Sized>(
        &mut self,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StorageError> {
        let v = codec::encode(value)?;
        self.set(key, Some(IVec::from(v)));
        Ok(())
    }

    pub(crate) fn remove(&mut self, key: Vec<u8>) {
        self.set(key, None);
    }

    /// Keys in `[start, end)` that currently exist (tree merged with pending).
    fn existing_keys_in(&self, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut out: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        for kv in self.tree.range(start..end) {
            let (k, _) = kv?;
            out.insert(k.to_vec(), ());
        }
        let range = (
            Bound::Included(start.to_vec()),
            Bound::Excluded(end.to_vec()),
        );
        for (k, v) in self.pending.range(range) {
            match v {
                Some(_) => {
                    out.insert(k.clone(), ());
                }
                None => {
                    out.remove(k);
                }
            }
        }
        Ok(out.into_keys().collect())
    }
}

/// Applies `entries` (consecutive, in log order) to `tree` as one
/// crash-atomic batch (`redo`) and returns one response per entry.
pub(crate) fn apply_entries(
    tree: &sled::Tree,
    redo: &Redo<'_>,
    entries: &[Entry],
) -> Result<Vec<Response>, StorageError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut ov = Overlay::new(tree);
    let out = stage_entries(&mut ov, entries)?;
    redo::write_batch(tree, redo, ov.pending)?;
    Ok(out)
}

/// Stages `entries` (consecutive, in log order) in `ov`, including the new
/// last applied log id and, if a membership entry is among them, the new
/// membership. Returns one response per entry.
pub(crate) fn stage_entries(
    ov: &mut Overlay<'_>,
    entries: &[Entry],
) -> Result<Vec<Response>, StorageError> {
    let Some(last) = entries.last() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(entries.len());
    let mut membership = None;
    for entry in entries {
        let resp = match &entry.payload {
            EntryPayload::Blank => Response::Ok,
            EntryPayload::Normal(req) => apply_request(ov, req)?,
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                Response::Ok
            }
        };
        out.push(resp);
    }
    ov.put(
        SmMetaKey::LastApplied.as_bytes().to_vec(),
        &Some(last.log_id),
    )?;
    if let Some(m) = membership {
        ov.put(SmMetaKey::LastMembership.as_bytes().to_vec(), &m)?;
    }
    Ok(out)
}

/// Constant-time equality of two byte strings of public length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn too_large(field: Field, len: usize) -> Option<Response> {
    (len > MAX_VALUE_BYTES).then_some(Response::refused(Refusal::TooLarge {
        field,
        limit: MAX_VALUE_BYTES,
    }))
}

fn key_too_long(key: &str) -> Option<Response> {
    (key.len() > MAX_KEY_BYTES).then_some(Response::refused(Refusal::TooLong {
        field: Field::KeyOrId,
        limit: MAX_KEY_BYTES,
    }))
}

/// The key or id a command addresses, if any.
fn addressed_key(req: &Request) -> Option<&str> {
    match req {
        Request::ConfigPut { key, .. } | Request::ConfigDelete { key, .. } => Some(key),
        Request::SessionPut { id, .. }
        | Request::SessionDelete { id }
        | Request::JoinTokenCreate { id, .. }
        | Request::JoinTokenConsume { id, .. }
        | Request::JoinTokenUse { id, .. }
        | Request::RejoinTokenCreate { id, .. }
        | Request::RejoinTokenUse { id, .. }
        | Request::ApiTokenCreate { id, .. }
        | Request::ApiTokenRevoke { id } => Some(id),
        Request::UserPut { name, .. } | Request::UserDelete { name, .. } => Some(name),
        Request::Bootstrap { .. }
        | Request::SessionSweep { .. }
        | Request::SetAdminTokenHash { .. }
        | Request::Multi(_)
        | Request::RaiseEpoch { .. }
        | Request::ClearPrimary { .. }
        | Request::SettingsPut { .. }
        | Request::MaintenancePut { .. }
        | Request::PlacesPut { .. }
        | Request::HistoryAppend { .. } => None,
    }
}

/// Whether `text` is one JSON object (keys are checked, values only parsed).
fn is_json_object(text: &str) -> bool {
    serde_json::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(text).is_ok()
}

/// Stores a new epoch record if the stored epoch is `expected_epoch`.
fn raise_epoch(
    ov: &mut Overlay<'_>,
    expected_epoch: u64,
    primary: Option<u64>,
    forced: bool,
    forked_at: Option<u64>,
    at_ms: u64,
) -> Result<Response, StorageError> {
    let key = SmMetaKey::Epoch.as_bytes();
    let current = ov.get::<EpochRecord>(key)?.unwrap_or_default();
    if current.epoch != expected_epoch {
        return Ok(Response::refused(Refusal::EpochMismatch {
            current: current.epoch,
            expected: expected_epoch,
        }));
    }
    let Some(epoch) = expected_epoch.checked_add(1) else {
        return Ok(Response::refused(Refusal::EpochOverflow));
    };
    ov.put(
        key.to_vec(),
        &EpochRecord {
            epoch,
            primary,
            forced,
            forked_at,
            since_ms: at_ms,
        },
    )?;
    Ok(Response::Epoch { epoch })
}

/// Applies one command. Refusals leave the overlay untouched.
pub(crate) fn apply_request(ov: &mut Overlay<'_>, req: &Request) -> Result<Response, StorageError> {
    if let Some(r) = addressed_key(req).and_then(key_too_long) {
        return Ok(r);
    }
    Ok(match req {
        Request::Bootstrap {
            cluster_id,
            admin_token_hash,
        } => bootstrap(ov, cluster_id, admin_token_hash)?,
        Request::SetAdminTokenHash { hash } => {
            ov.put(SmMetaKey::AdminTokenHash.as_bytes().to_vec(), hash)?;
            Response::Ok
        }
        Request::ConfigPut {
            key,
            value_json,
            actor,
            at_ms,
            if_version,
        } => config_put(ov, key, value_json, actor, *at_ms, *if_version)?,
        Request::ConfigDelete { key, .. } => {
            let k = keys::config_key(key);
            let existed = ov.get::<ConfigRecord>(&k)?.is_some();
            if existed {
                ov.remove(k);
            }
            Response::Deleted { existed }
        }
        Request::SessionPut {
            id,
            owner,
            data_json,
            created_ms,
            expires_ms,
        } => session_put(ov, id, owner, data_json, *created_ms, *expires_ms)?,
        Request::SessionDelete { id } => session_delete(ov, id)?,
        Request::SessionSweep { now_ms } => session_sweep(ov, *now_ms)?,
        Request::JoinTokenCreate {
            id,
            secret_hash,
            expires_ms,
            kind,
            created_by,
        } => join_token_create(ov, id, secret_hash, *expires_ms, *kind, created_by)?,
        Request::JoinTokenConsume {
            id,
            secret_hash,
            now_ms,
        } => join_token_consume(ov, id, secret_hash, *now_ms, None)?,
        Request::JoinTokenUse {
            id,
            secret_hash,
            now_ms,
            kind,
        } => join_token_consume(ov, id, secret_hash, *now_ms, Some(*kind))?,
        Request::RejoinTokenCreate {
            id,
            node,
            secret_hash,
            expires_ms,
            created_by,
        } => crate::rejoin::create(ov, id, *node, secret_hash, *expires_ms, created_by)?,
        Request::RejoinTokenUse {
            id,
            secret_hash,
            now_ms,
            node,
        } => crate::rejoin::use_token(ov, id, secret_hash, *now_ms, *node)?,
        Request::Multi(reqs) => multi(ov, reqs)?,
        Request::RaiseEpoch {
            expected_epoch,
            primary,
            forced,
            forked_at,
            at_ms,
        } => raise_epoch(
            ov,
            *expected_epoch,
            Some(*primary),
            *forced,
            *forked_at,
            *at_ms,
        )?,
        Request::ClearPrimary {
            expected_epoch,
            at_ms,
        } => raise_epoch(ov, *expected_epoch, None, false, None, *at_ms)?,
        Request::SettingsPut {
            settings_json,
            if_version,
            actor,
            at_ms,
        } => {
            let version = document_put(
                ov,
                Document::Settings,
                settings_json,
                *if_version,
                actor,
                *at_ms,
            )?;
            version.map_or_else(|r| r, |version| Response::SettingsWritten { version })
        }
        Request::MaintenancePut {
            doc_json,
            if_version,
            actor,
            at_ms,
        } => {
            let version = document_put(
                ov,
                Document::Maintenance,
                doc_json,
                *if_version,
                actor,
                *at_ms,
            )?;
            version.map_or_else(|r| r, |version| Response::MaintenanceWritten { version })
        }
        Request::PlacesPut {
            doc_json,
            if_version,
            actor,
            at_ms,
        } => {
            let version = document_put(ov, Document::Places, doc_json, *if_version, actor, *at_ms)?;
            version.map_or_else(|r| r, |version| Response::PlacesWritten { version })
        }
        Request::HistoryAppend {
            at_ms,
            node,
            kind,
            actor,
            details_json,
        } => history_append(ov, *at_ms, *node, kind, actor, details_json)?,
        Request::UserPut {
            name,
            password_hash,
            actor,
            at_ms,
        } => user_put(ov, name, password_hash, actor, *at_ms)?,
        Request::UserDelete { name, .. } => user_delete(ov, name)?,
        Request::ApiTokenCreate {
            id,
            user,
            secret_hash,
            at_ms,
        } => api_token_create(ov, id, user, secret_hash, *at_ms)?,
        Request::ApiTokenRevoke { id } => {
            let k = keys::api_token_key(id);
            let existed = ov.get::<ApiTokenRecord>(&k)?.is_some();
            if existed {
                ov.remove(k);
            }
            Response::Deleted { existed }
        }
    })
}

/// Applies [`Request::Multi`]: all of its commands, or none when one is refused or fails.
fn multi(ov: &mut Overlay<'_>, reqs: &[Request]) -> Result<Response, StorageError> {
    if reqs.iter().any(|r| matches!(r, Request::Multi(_))) {
        return Ok(Response::refused(Refusal::NestedMulti));
    }
    ov.begin();
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        let resp = match apply_request(ov, r) {
            Ok(resp) => resp,
            Err(e) => {
                ov.rollback();
                return Err(e);
            }
        };
        if let Response::Refused { .. } = resp {
            ov.rollback();
            return Ok(resp);
        }
        out.push(resp);
    }
    ov.commit();
    Ok(Response::Multi(out))
}

/// Applies [`Request::SessionSweep`].
fn session_sweep(ov: &mut Overlay<'_>, now_ms: u64) -> Result<Response, StorageError> {
    let start = [keys::prefix::SESSION_EXPIRY];
    let end = keys::expiry_upper_bound(now_ms);
    let expired = ov.existing_keys_in(&start, &end)?;
    for idx_key in &expired {
        let id = std::str::from_utf8(&idx_key[9..])
            .map_err(|_| StorageError::Corrupt("session id is not UTF-8".into()))?;
        ov.remove(keys::session_key(id));
        ov.remove(idx_key.clone());
    }
    Ok(Response::Swept {
        removed: expired.len() as u64,
    })
}

/// Applies [`Request::SessionDelete`].
fn session_delete(ov: &mut Overlay<'_>, id: &str) -> Result<Response, StorageError> {
    let k = keys::session_key(id);
    let old = ov.get::<SessionRecord>(&k)?;
    if let Some(old) = &old {
        ov.remove(keys::expiry_key(old.expires_ms, id));
        ov.remove(k);
    }
    Ok(Response::Deleted {
        existed: old.is_some(),
    })
}

/// The refusal of an optimistic write that saw `if_version` while the
/// stored version is `current`.
fn version_conflict(if_version: Option<u64>, current: u64) -> Option<Response> {
    if_version
        .filter(|&expected| expected != current)
        .map(|expected| Response::refused(Refusal::VersionConflict { expected, current }))
}

/// Applies [`Request::Bootstrap`].
fn bootstrap(
    ov: &mut Overlay<'_>,
    cluster_id: &str,
    admin_token_hash: &str,
) -> Result<Response, StorageError> {
    let key = SmMetaKey::ClusterId.as_bytes();
    if ov.get::<String>(key)?.is_some() {
        return Ok(Response::refused(Refusal::AlreadyBootstrapped));
    }
    ov.put(key.to_vec(), cluster_id)?;
    ov.put(
        SmMetaKey::AdminTokenHash.as_bytes().to_vec(),
        admin_token_hash,
    )?;
    Ok(Response::Ok)
}

/// Applies [`Request::ConfigPut`].
fn config_put(
    ov: &mut Overlay<'_>,
    key: &str,
    value_json: &str,
    actor: &str,
    at_ms: u64,
    if_version: Option<u64>,
) -> Result<Response, StorageError> {
    if let Some(r) = too_large(Field::Value, value_json.len()) {
        return Ok(r);
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(value_json).is_err() {
        return Ok(Response::refused(Refusal::NotJson));
    }
    let k = keys::config_key(key);
    let current = ov.get::<ConfigRecord>(&k)?.map_or(0, |r| r.version);
    if let Some(r) = version_conflict(if_version, current) {
        return Ok(r);
    }
    let version = current + 1;
    ov.put(
        k,
        &ConfigRecord {
            value_json: value_json.to_string(),
            version,
            updated_by: actor.to_string(),
            updated_ms: at_ms,
        },
    )?;
    Ok(Response::ConfigWritten { version })
}

/// Applies [`Request::SessionPut`].
fn session_put(
    ov: &mut Overlay<'_>,
    id: &str,
    owner: &str,
    data_json: &str,
    created_ms: u64,
    expires_ms: u64,
) -> Result<Response, StorageError> {
    if let Some(r) = too_large(Field::SessionData, data_json.len()) {
        return Ok(r);
    }
    let k = keys::session_key(id);
    if let Some(old) = ov.get::<SessionRecord>(&k)? {
        ov.remove(keys::expiry_key(old.expires_ms, id));
    }
    ov.put(
        k,
        &SessionRecord {
            owner: owner.to_string(),
            data_json: data_json.to_string(),
            created_ms,
            expires_ms,
        },
    )?;
    ov.put(keys::expiry_key(expires_ms, id), &())?;
    Ok(Response::Ok)
}

/// Applies [`Request::JoinTokenCreate`].
fn join_token_create(
    ov: &mut Overlay<'_>,
    id: &str,
    secret_hash: &str,
    expires_ms: u64,
    kind: NodeKind,
    created_by: &str,
) -> Result<Response, StorageError> {
    let k = keys::token_key(id);
    if ov.get::<TokenRecord>(&k)?.is_some() {
        return Ok(Response::refused(Refusal::TokenIdExists));
    }
    ov.put(
        k,
        &TokenRecord {
            secret_hash: secret_hash.to_string(),
            expires_ms,
            kind,
            created_by: created_by.to_string(),
            used_by: None,
        },
    )?;
    Ok(Response::Ok)
}

/// Applies [`Request::JoinTokenConsume`].
/// Whether `token` admits a joiner presenting `secret_hash` at `now_ms`
/// as a node of `kind` (any kind when `None`, as the older command did).
pub(crate) fn token_admits(
    token: Option<&TokenRecord>,
    secret_hash: &str,
    now_ms: u64,
    kind: Option<NodeKind>,
) -> Result<(), Refusal> {
    let Some(token) = token else {
        return Err(Refusal::UnknownToken);
    };
    // The hash is checked first so that a caller without the secret
    // learns nothing about the token's state.
    if !ct_eq(token.secret_hash.as_bytes(), secret_hash.as_bytes()) {
        return Err(Refusal::TokenMismatch);
    }
    if token.used_by.is_some() {
        return Err(Refusal::TokenUsed);
    }
    if now_ms >= token.expires_ms {
        return Err(Refusal::TokenExpired);
    }
    match kind {
        Some(asked) if asked != token.kind => Err(Refusal::TokenKind {
            token: token.kind,
            asked,
        }),
        _ => Ok(()),
    }
}

fn join_token_consume(
    ov: &mut Overlay<'_>,
    id: &str,
    secret_hash: &str,
    now_ms: u64,
    kind: Option<NodeKind>,
) -> Result<Response, StorageError> {
    let k = keys::token_key(id);
    let Some(mut token) = ov.get::<TokenRecord>(&k)? else {
        return Ok(Response::refused(Refusal::UnknownToken));
    };
    if let Err(r) = token_admits(Some(&token), secret_hash, now_ms, kind) {
        return Ok(Response::refused(r));
    }
    let counter_key = SmMetaKey::NextNodeId.as_bytes();
    let node_id = ov.get::<u64>(counter_key)?.unwrap_or(FIRST_JOINER_NODE_ID);
    let next = node_id
        .checked_add(1)
        .ok_or_else(|| StorageError::Corrupt("node id counter overflow".into()))?;
    ov.put(counter_key.to_vec(), &next)?;
    token.used_by = Some(node_id);
    ov.put(k, &token)?;
    Ok(Response::NodeIdAssigned { node_id })
}

/// A replicated JSON document stored whole under one meta key.
#[derive(Debug, Clone, Copy)]
enum Document {
    /// [`Request::SettingsPut`].
    Settings,
    /// [`Request::MaintenancePut`].
    Maintenance,
    /// [`Request::PlacesPut`].
    Places,
}

/// Applies [`Request::SettingsPut`], [`Request::MaintenancePut`] or
/// [`Request::PlacesPut`]: the new
/// version, or the refusal.
fn document_put(
    ov: &mut Overlay<'_>,
    doc: Document,
    json: &str,
    if_version: Option<u64>,
    actor: &str,
    at_ms: u64,
) -> Result<Result<u64, Response>, StorageError> {
    let (field, key) = match doc {
        Document::Settings => (Field::Settings, SmMetaKey::Settings),
        Document::Maintenance => (Field::Maintenance, SmMetaKey::Maintenance),
        Document::Places => (Field::Places, SmMetaKey::Places),
    };
    if let Some(r) = too_large(field, json.len()) {
        return Ok(Err(r));
    }
    if !is_json_object(json) {
        return Ok(Err(Response::refused(Refusal::NotJsonObject { field })));
    }
    let key = key.as_bytes();
    let current = ov.get::<SettingsRecord>(key)?.map_or(0, |r| r.version);
    if let Some(r) = version_conflict(if_version, current) {
        return Ok(Err(r));
    }
    let version = current + 1;
    ov.put(
        key.to_vec(),
        &SettingsRecord {
            settings_json: json.to_string(),
            version,
            updated_by: actor.to_string(),
            updated_ms: at_ms,
        },
    )?;
    Ok(Ok(version))
}

/// Applies [`Request::HistoryAppend`].
fn history_append(
    ov: &mut Overlay<'_>,
    at_ms: u64,
    node: u64,
    kind: &str,
    actor: &str,
    details_json: &str,
) -> Result<Response, StorageError> {
    if kind.len() > MAX_HISTORY_KIND_BYTES {
        return Ok(Response::refused(Refusal::TooLong {
            field: Field::HistoryKind,
            limit: MAX_HISTORY_KIND_BYTES,
        }));
    }
    if actor.len() > MAX_HISTORY_ACTOR_BYTES {
        return Ok(Response::refused(Refusal::TooLong {
            field: Field::HistoryActor,
            limit: MAX_HISTORY_ACTOR_BYTES,
        }));
    }
    if details_json.len() > MAX_HISTORY_DETAILS_BYTES {
        return Ok(Response::refused(Refusal::TooLarge {
            field: Field::HistoryDetails,
            limit: MAX_HISTORY_DETAILS_BYTES,
        }));
    }
    if !is_json_object(details_json) {
        return Ok(Response::refused(Refusal::NotJsonObject {
            field: Field::HistoryDetails,
        }));
    }
    let counter_key = SmMetaKey::HistoryNextSeq.as_bytes();
    let seq = ov.get::<u64>(counter_key)?.unwrap_or(0);
    let next = seq
        .checked_add(1)
        .ok_or_else(|| StorageError::Corrupt("history seq overflow".into()))?;
    ov.put(counter_key.to_vec(), &next)?;
    ov.put(
        keys::history_key(seq),
        &HistoryRecord {
            at_ms,
            node,
            kind: kind.to_string(),
            actor: actor.to_string(),
            details_json: details_json.to_string(),
        },
    )?;
    // Seqs [next - capacity, next) are kept: every append beyond the
    // capacity drops exactly the one oldest event.
    if let Some(oldest) = seq.checked_sub(HISTORY_CAPACITY) {
        ov.remove(keys::history_key(oldest));
    }
    Ok(Response::HistoryAppended { seq })
}

/// Applies [`Request::UserPut`].
fn user_put(
    ov: &mut Overlay<'_>,
    name: &str,
    password_hash: &str,
    actor: &str,
    at_ms: u64,
) -> Result<Response, StorageError> {
    if name.is_empty() || name.len() > MAX_USER_NAME_BYTES {
        return Ok(Response::refused(Refusal::UserName {
            max: MAX_USER_NAME_BYTES,
        }));
    }
    if password_hash.is_empty() || password_hash.len() > MAX_PASSWORD_HASH_BYTES {
        return Ok(Response::refused(Refusal::PasswordHash));
    }
    let k = keys::user_key(name);
    let before = ov.get::<UserRecord>(&k)?;
    let created_ms = before.as_ref().map_or(at_ms, |u| u.created_ms);
    // A new password ends what the old one gave: the user's API tokens.
    if before.is_some_and(|u| u.password_hash != password_hash) {
        remove_api_tokens_of(ov, name)?;
    }
    ov.put(
        k,
        &UserRecord {
            password_hash: password_hash.to_string(),
            created_ms,
            updated_ms: at_ms,
            updated_by: actor.to_string(),
        },
    )?;
    Ok(Response::Ok)
}

/// Applies [`Request::UserDelete`].
fn user_delete(ov: &mut Overlay<'_>, name: &str) -> Result<Response, StorageError> {
    let k = keys::user_key(name);
    if ov.get::<UserRecord>(&k)?.is_none() {
        return Ok(Response::Deleted { existed: false });
    }
    let users = ov.existing_keys_in(&[keys::prefix::USER], &[keys::prefix::USER + 1])?;
    if users.len() <= 1 {
        return Ok(Response::refused(Refusal::LastAdmin));
    }
    ov.remove(k);
    // Its API tokens go with it.
    remove_api_tokens_of(ov, name)?;
    Ok(Response::Deleted { existed: true })
}

/// Removes every API token of user `name`.
fn remove_api_tokens_of(ov: &mut Overlay<'_>, name: &str) -> Result<(), StorageError> {
    let tokens = ov.existing_keys_in(&[keys::prefix::API_TOKEN], &[keys::prefix::API_TOKEN + 1])?;
    for tk in tokens {
        if ov
            .get::<ApiTokenRecord>(&tk)?
            .is_some_and(|t| t.user == *name)
        {
            ov.remove(tk);
        }
    }
    Ok(())
}

/// Applies [`Request::ApiTokenCreate`].
fn api_token_create(
    ov: &mut Overlay<'_>,
    id: &str,
    user: &str,
    secret_hash: &str,
    at_ms: u64,
) -> Result<Response, StorageError> {
    if ov.get::<UserRecord>(&keys::user_key(user))?.is_none() {
        return Ok(Response::refused(Refusal::NoUser {
            user: user.to_string(),
        }));
    }
    let k = keys::api_token_key(id);
    if ov.get::<ApiTokenRecord>(&k)?.is_some() {
        return Ok(Response::refused(Refusal::TokenIdExists));
    }
    ov.put(
        k,
        &ApiTokenRecord {
            user: user.to_string(),
            secret_hash: secret_hash.to_string(),
            created_ms: at_ms,
        },
    )?;
    Ok(Response::Ok)
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;

    use super::*;
    use crate::types::{HistoryEvent, LogId, NodeKind};

    pub(crate) fn log_id(index: u64) -> LogId {
        LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: crate::Store,
        next: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("a temp dir can be created");
            let store = crate::open(dir.path(), 1 << 20).expect("a fresh store opens");
            Self {
                _dir: dir,
                store,
                next: 0,
            }
        }

        /// Applies `reqs` as one batch of entries.
        fn apply(&mut self, reqs: Vec<Request>) -> Vec<Response> {
            let entries: Vec<Entry> = reqs
                .into_iter()
                .map(|r| {
                    self.next += 1;
                    Entry::new_normal(log_id(self.next), r)
                })
                .collect();
            self.store
                .sm
                .shared
                .apply_blocking(&entries)
                .expect("apply succeeds")
        }

        fn one(&mut self, req: Request) -> Response {
            self.apply(vec![req]).remove(0)
        }
    }

    fn put(key: &str, value: &str, if_version: Option<u64>) -> Request {
        Request::ConfigPut {
            key: key.into(),
            value_json: value.into(),
            actor: "admin".into(),
            at_ms: 1000,
            if_version,
        }
    }

    fn token(id: &str, hash: &str, expires_ms: u64) -> Request {
        Request::JoinTokenCreate {
            id: id.into(),
            secret_hash: hash.into(),
            expires_ms,
            kind: NodeKind::Appliance,
            created_by: "admin".into(),
        }
    }

    fn consume(id: &str, hash: &str, now_ms: u64) -> Request {
        Request::JoinTokenConsume {
            id: id.into(),
            secret_hash: hash.into(),
            now_ms,
        }
    }

    fn refused(r: &Response) -> String {
        match r {
            Response::Refused { reason } => reason.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bootstrap_only_once() {
        let mut f = Fixture::new();
        let boot = |id: &str| Request::Bootstrap {
            cluster_id: id.into(),
            admin_token_hash: "h1".into(),
        };
        assert_eq!(f.one(boot("c1")), Response::Ok);
        assert_eq!(refused(&f.one(boot("c2"))), "already bootstrapped");
        assert_eq!(f.store.reader.cluster_id().as_deref(), Some("c1"));
        assert_eq!(
            f.one(Request::SetAdminTokenHash { hash: "h2".into() }),
            Response::Ok
        );
        assert_eq!(f.store.reader.admin_token_hash().as_deref(), Some("h2"));
        assert_eq!(f.store.reader.applied_index(), Some(3));
    }

    #[test]
    fn config_versions_and_conflicts() {
        let mut f = Fixture::new();
        // Two writes of one key in one batch see each other.
        assert_eq!(
            f.apply(vec![put("a", "1", None), put("a", "2", Some(1))]),
            vec![
                Response::ConfigWritten { version: 1 },
                Response::ConfigWritten { version: 2 }
            ]
        );
        assert_eq!(
            f.one(put("a", "3", None)),
            Response::ConfigWritten { version: 3 }
        );
        assert!(refused(&f.one(put("a", "4", Some(2)))).starts_with("version conflict"));
        assert!(refused(&f.one(put("b", "4", Some(1)))).starts_with("version conflict"));
        assert_eq!(
            f.one(put("b", "{\"x\":1}", Some(0))),
            Response::ConfigWritten { version: 1 }
        );
        assert_eq!(
            refused(&f.one(put("c", "{nope", None))),
            "value is not valid JSON"
        );
        let big = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES));
        assert!(refused(&f.one(put("c", &big, None))).contains("larger than"));
        assert!(
            refused(&f.one(put(&"k".repeat(MAX_KEY_BYTES + 1), "1", None))).contains("longer than")
        );

        let a = f.store.reader.config_get("a").expect("a exists");
        assert_eq!(
            (a.value_json.as_str(), a.version, a.updated_by.as_str()),
            ("3", 3, "admin")
        );
        let keys: Vec<_> = f
            .store
            .reader
            .config_list("", 10)
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(f.store.reader.config_list("b", 10).len(), 1);
        assert_eq!(f.store.reader.config_list("", 1).len(), 1);

        let del = |k: &str| Request::ConfigDelete {
            key: k.into(),
            actor: "admin".into(),
            at_ms: 5,
        };
        assert_eq!(f.one(del("a")), Response::Deleted { existed: true });
        assert_eq!(f.one(del("a")), Response::Deleted { existed: false });
        assert!(f.store.reader.config_get("a").is_none());
    }

    #[test]
    fn sessions_expire_and_sweep() {
        let mut f = Fixture::new();
        let sess = |id: &str, expires_ms: u64| Request::SessionPut {
            id: id.into(),
            owner: "alice".into(),
            data_json: "{}".into(),
            created_ms: 0,
            expires_ms,
        };
        f.apply(vec![sess("s1", 100), sess("s2", 200), sess("s3", 300)]);
        // Moving s3's expiry earlier re-indexes it.
        f.one(sess("s3", 150));
        assert!(f.store.reader.session_get("s1", 99).is_some());
        assert!(
            f.store.reader.session_get("s1", 100).is_none(),
            "expired reads as absent"
        );
        assert_eq!(f.store.reader.session_list(120, 10).len(), 2);
        assert_eq!(f.store.reader.session_count(), 3);
        assert!(!f.store.reader.has_expired_sessions(99));
        assert!(f.store.reader.has_expired_sessions(100));
        // Sweep in the same batch as a put that is already expired.
        assert_eq!(
            f.apply(vec![sess("s4", 10), Request::SessionSweep { now_ms: 150 }]),
            vec![Response::Ok, Response::Swept { removed: 3 }]
        );
        assert_eq!(f.store.reader.session_count(), 1);
        assert!(!f.store.reader.has_expired_sessions(150));
        assert!(f.store.reader.session_get("s2", 150).is_some());
        assert_eq!(
            f.one(Request::SessionDelete { id: "s2".into() }),
            Response::Deleted { existed: true }
        );
        assert_eq!(
            f.one(Request::SessionSweep { now_ms: u64::MAX }),
            Response::Swept { removed: 0 }
        );
        assert_eq!(f.store.reader.session_count(), 0);
    }

    #[test]
    fn join_tokens() {
        let mut f = Fixture::new();
        assert_eq!(
            f.apply(vec![token("t1", "h1", 1000), token("t2", "h2", 1000)]),
            vec![Response::Ok; 2]
        );
        assert_eq!(
            refused(&f.one(token("t1", "other", 5000))),
            "token id already exists"
        );

        let before = state_without_applied(&f);
        assert_eq!(refused(&f.one(consume("nope", "h1", 10))), "unknown token");
        assert_eq!(
            refused(&f.one(consume("t1", "h2", 10))),
            "token does not match"
        );
        assert_eq!(refused(&f.one(consume("t1", "h1", 1000))), "token expired");
        assert_eq!(before, state_without_applied(&f), "refusals change nothing");

        assert_eq!(
            f.one(consume("t1", "h1", 999)),
            Response::NodeIdAssigned { node_id: 2 }
        );
        assert_eq!(
            refused(&f.one(consume("t1", "h1", 999))),
            "token already used"
        );
        assert_eq!(
            f.one(consume("t2", "h2", 10)),
            Response::NodeIdAssigned { node_id: 3 }
        );
        f.one(token("t3", "h3", 1000));
        assert_eq!(
            f.one(consume("t3", "h3", 10)),
            Response::NodeIdAssigned { node_id: 4 }
        );
    }

    #[test]
    fn a_token_admits_only_its_kind() {
        let mut f = Fixture::new();
        f.one(Request::JoinTokenCreate {
            id: "w".into(),
            secret_hash: "hw".into(),
            expires_ms: 1000,
            kind: NodeKind::Witness,
            created_by: "admin".into(),
        });
        let use_as = |kind| Request::JoinTokenUse {
            id: "w".into(),
            secret_hash: "hw".into(),
            now_ms: 10,
            kind,
        };
        // Read locally first, as the leader does before proposing.
        let reader = f.store.reader.clone();
        assert_eq!(
            reader.check_join_token("w", "hw", 10, NodeKind::Appliance),
            Err(Refusal::TokenKind {
                token: NodeKind::Witness,
                asked: NodeKind::Appliance
            })
        );
        assert_eq!(
            reader.check_join_token("w", "bad", 10, NodeKind::Witness),
            Err(Refusal::TokenMismatch)
        );
        assert_eq!(
            reader.check_join_token("w", "hw", 10, NodeKind::Witness),
            Ok(())
        );
        let before = state_without_applied(&f);
        assert_eq!(
            refused(&f.one(use_as(NodeKind::Appliance))),
            "this token is for kind witness and the joining node is of kind appliance: make a token of kind appliance"
        );
        assert_eq!(
            before,
            state_without_applied(&f),
            "the refusal changes nothing"
        );
        assert_eq!(
            f.one(use_as(NodeKind::Witness)),
            Response::NodeIdAssigned { node_id: 2 }
        );
        assert_eq!(
            reader.check_join_token("w", "hw", 10, NodeKind::Witness),
            Err(Refusal::TokenUsed)
        );
    }

    /// All records except the applied log id, which every entry advances.
    fn state_without_applied(f: &Fixture) -> Vec<(Vec<u8>, Vec<u8>)> {
        let cur = f.store.sm.shared.current();
        cur.tree
            .iter()
            .map(|kv| kv.expect("sled reads succeed"))
            .filter(|(k, _)| &k[..] != SmMetaKey::LastApplied.as_bytes())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn batching_does_not_change_the_result() {
        let reqs = vec![
            put("a", "1", None),
            token("t", "h", 100),
            put("a", "2", None),
            consume("t", "h", 5),
            Request::SessionPut {
                id: "s".into(),
                owner: "o".into(),
                data_json: "[]".into(),
                created_ms: 1,
                expires_ms: 50,
            },
            put("a", "3", Some(1)),
            Request::SessionSweep { now_ms: 60 },
            consume("t", "h", 5),
        ];
        let mut one_batch = Fixture::new();
        let r1 = one_batch.apply(reqs.clone());
        let mut singles = Fixture::new();
        let r2: Vec<_> = reqs.into_iter().map(|r| singles.one(r)).collect();
        assert_eq!(r1, r2);
        assert_eq!(
            one_batch.store.reader.digest(),
            singles.store.reader.digest()
        );
        assert_eq!(one_batch.store.reader.digest().0, Some(8));
    }

    fn user(name: &str, hash: &str) -> Request {
        Request::UserPut {
            name: name.into(),
            password_hash: hash.into(),
            actor: "init".into(),
            at_ms: 10,
        }
    }

    fn user_delete(name: &str) -> Request {
        Request::UserDelete {
            name: name.into(),
            actor: "admin".into(),
            at_ms: 20,
        }
    }

    fn api_token(id: &str, user: &str) -> Request {
        Request::ApiTokenCreate {
            id: id.into(),
            user: user.into(),
            secret_hash: format!("hash-{id}"),
            at_ms: 30,
        }
    }

    #[test]
    fn admin_users_and_api_tokens() {
        let mut f = Fixture::new();
        assert_eq!(f.one(user("admin", "$argon2id$h1")), Response::Ok);
        // The last user cannot be deleted.
        let before = state_without_applied(&f);
        assert_eq!(
            refused(&f.one(user_delete("admin"))),
            "cannot delete the last admin user"
        );
        assert_eq!(before, state_without_applied(&f), "refusals change nothing");
        assert_eq!(
            f.one(user_delete("nobody")),
            Response::Deleted { existed: false }
        );
        assert!(refused(&f.one(user("", "h"))).contains("user name"));
        assert!(
            refused(&f.one(user(&"n".repeat(MAX_USER_NAME_BYTES + 1), "h"))).contains("user name")
        );
        assert!(refused(&f.one(user("x", ""))).contains("password hash"));

        // Replacing keeps the creation time.
        f.apply(vec![
            user("alice", "h2"),
            Request::UserPut {
                name: "alice".into(),
                password_hash: "h3".into(),
                actor: "alice".into(),
                at_ms: 99,
            },
        ]);
        let alice = f.store.reader.user("alice").expect("alice exists");
        assert_eq!(
            (
                alice.password_hash.as_str(),
                alice.created_ms,
                alice.updated_ms,
                alice.updated_by.as_str()
            ),
            ("h3", 10, 99, "alice")
        );
        assert!(!format!("{alice:?}").contains("h3"), "Debug hides the hash");
        let names: Vec<_> = f.store.reader.users().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["admin", "alice"]);

        // Tokens need an existing user and a fresh id.
        assert_eq!(
            refused(&f.one(api_token("t0", "nobody"))),
            "no user \"nobody\""
        );
        assert_eq!(
            f.apply(vec![api_token("t1", "alice"), api_token("t2", "admin")]),
            vec![Response::Ok; 2]
        );
        assert_eq!(
            refused(&f.one(api_token("t1", "admin"))),
            "token id already exists"
        );
        let t1 = f.store.reader.api_token("t1").expect("t1 exists");
        assert_eq!(
            (t1.user.as_str(), t1.secret_hash.as_str(), t1.created_ms),
            ("alice", "hash-t1", 30)
        );
        assert_eq!(f.store.reader.api_tokens().len(), 2);
        assert_eq!(
            f.one(Request::ApiTokenRevoke { id: "t2".into() }),
            Response::Deleted { existed: true }
        );
        assert_eq!(
            f.one(Request::ApiTokenRevoke { id: "t2".into() }),
            Response::Deleted { existed: false }
        );

        // A new password for alice ends her tokens; the same hash again
        // (a write that changes nothing) keeps them; admin's stay.
        f.apply(vec![api_token("t4", "alice"), api_token("t5", "admin")]);
        f.one(user("alice", "h3"));
        assert!(f.store.reader.api_token("t4").is_some());
        f.one(user("alice", "h4"));
        assert!(f.store.reader.api_token("t1").is_none());
        assert!(f.store.reader.api_token("t4").is_none());
        assert!(f.store.reader.api_token("t5").is_some());
        f.one(Request::ApiTokenRevoke { id: "t5".into() });

        // Deleting a user removes its tokens; then admin is the last one.
        f.one(api_token("t1", "alice"));
        f.one(api_token("t3", "alice"));
        assert_eq!(
            f.one(user_delete("alice")),
            Response::Deleted { existed: true }
        );
        assert!(f.store.reader.user("alice").is_none());
        assert!(f.store.reader.api_token("t1").is_none());
        assert!(f.store.reader.api_token("t3").is_none());
        assert!(f.store.reader.api_tokens().is_empty());
        assert_eq!(
            refused(&f.one(user_delete("admin"))),
            "cannot delete the last admin user"
        );
        // In one Multi: add bob, then deleting admin is allowed.
        assert!(matches!(
            f.one(Request::Multi(vec![user("bob", "h"), user_delete("admin")])),
            Response::Multi(_)
        ));
        assert_eq!(f.store.reader.users().len(), 1);
    }

    fn raise(expected_epoch: u64, primary: u64) -> Request {
        Request::RaiseEpoch {
            expected_epoch,
            primary,
            forced: false,
            forked_at: None,
            at_ms: 7,
        }
    }

    fn settings(json: &str, if_version: Option<u64>) -> Request {
        Request::SettingsPut {
            settings_json: json.into(),
            if_version,
            actor: "admin".into(),
            at_ms: 9,
        }
    }

    fn event(kind: &str, n: u64) -> Request {
        Request::HistoryAppend {
            at_ms: n,
            node: 1,
            kind: kind.into(),
            actor: "system".into(),
            details_json: format!("{{\"n\":{n}}}"),
        }
    }

    #[test]
    fn epoch_compare_and_set() {
        let mut f = Fixture::new();
        assert_eq!(f.store.reader.epoch(), EpochRecord::default());
        assert_eq!(f.one(raise(0, 1)), Response::Epoch { epoch: 1 });
        let before = state_without_applied(&f);
        assert_eq!(refused(&f.one(raise(0, 2))), "epoch is 1, expected 0");
        assert_eq!(refused(&f.one(raise(5, 2))), "epoch is 1, expected 5");
        assert_eq!(
            refused(&f.one(Request::ClearPrimary {
                expected_epoch: 2,
                at_ms: 1
            })),
            "epoch is 1, expected 2"
        );
        assert_eq!(before, state_without_applied(&f), "refusals change nothing");
        assert_eq!(
            f.store.reader.epoch(),
            EpochRecord {
                epoch: 1,
                primary: Some(1),
                forced: false,
                forked_at: None,
                since_ms: 7
            }
        );
        // Two raises in one batch: the second sees the first.
        assert_eq!(
            f.apply(vec![
                Request::RaiseEpoch {
                    expected_epoch: 1,
                    primary: 2,
                    forced: true,
                    forked_at: Some(41),
                    at_ms: 100,
                },
                raise(1, 3),
            ]),
            vec![
                Response::Epoch { epoch: 2 },
                Response::refused(Refusal::EpochMismatch {
                    current: 2,
                    expected: 1
                })
            ]
        );
        assert_eq!(
            f.store.reader.epoch(),
            EpochRecord {
                epoch: 2,
                primary: Some(2),
                forced: true,
                forked_at: Some(41),
                since_ms: 100
            }
        );
        assert_eq!(
            f.one(Request::ClearPrimary {
                expected_epoch: 2,
                at_ms: 200
            }),
            Response::Epoch { epoch: 3 }
        );
        assert_eq!(
            f.store.reader.epoch(),
            EpochRecord {
                epoch: 3,
                primary: None,
                forced: false,
                forked_at: None,
                since_ms: 200
            }
        );
    }

    #[test]
    fn multi_is_all_or_nothing() {
        let mut f = Fixture::new();
        // Later sub-commands see earlier ones.
        assert_eq!(
            f.one(Request::Multi(vec![
                raise(0, 1),
                put("a", "1", Some(0)),
                put("a", "2", Some(1)),
                event("role", 1),
            ])),
            Response::Multi(vec![
                Response::Epoch { epoch: 1 },
                Response::ConfigWritten { version: 1 },
                Response::ConfigWritten { version: 2 },
                Response::HistoryAppended { seq: 0 },
            ])
        );
        let before = state_without_applied(&f);
        // The last sub-command is refused: none of the others is applied,
        // the refusal is the sub-command's.
        assert_eq!(
            refused(&f.one(Request::Multi(vec![
                put("a", "3", None),
                put("b", "1", None),
                event("role", 2),
                settings("{}", None),
                Request::ConfigDelete {
                    key: "a".into(),
                    actor: "x".into(),
                    at_ms: 1
                },
                raise(0, 2),
            ]))),
            "epoch is 1, expected 0"
        );
        assert_eq!(
            before,
            state_without_applied(&f),
            "a refused multi changes nothing"
        );
        // The same in a batch, between commands that are applied.
        let r = f.apply(vec![
            put("c", "1", None),
            Request::Multi(vec![put("a", "9", None), put("z", "{", None)]),
            put("c", "2", None),
        ]);
        assert_eq!(r[0], Response::ConfigWritten { version: 1 });
        assert_eq!(refused(&r[1]), "value is not valid JSON");
        assert_eq!(r[2], Response::ConfigWritten { version: 2 });
        assert_eq!(f.store.reader.config_get("a").map(|e| e.version), Some(2));
        assert!(f.store.reader.config_get("z").is_none());
        // Nested multi is refused.
        let before = state_without_applied(&f);
        assert_eq!(
            refused(&f.one(Request::Multi(vec![
                put("n", "1", None),
                Request::Multi(vec![])
            ]))),
            "nested multi is not allowed"
        );
        assert_eq!(before, state_without_applied(&f));
        assert_eq!(f.one(Request::Multi(vec![])), Response::Multi(vec![]));
        assert_eq!(f.store.reader.history_total(), 1);
    }

    #[test]
    fn settings_versions_and_refusals() {
        let mut f = Fixture::new();
        assert!(f.store.reader.settings().is_none());
        assert!(refused(&f.one(settings("{}", Some(1)))).starts_with("version conflict"));
        for bad in ["[1]", "1", "\"x\"", "{", "null"] {
            assert_eq!(
                refused(&f.one(settings(bad, None))),
                "settings are not a JSON object",
                "{bad}"
            );
        }
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(MAX_VALUE_BYTES));
        assert!(refused(&f.one(settings(&big, None))).contains("larger than"));
        assert!(f.store.reader.settings().is_none());
        assert_eq!(
            f.one(settings("{\"failover\":true}", Some(0))),
            Response::SettingsWritten { version: 1 }
        );
        assert_eq!(
            f.one(settings("{\"failover\":false}", None)),
            Response::SettingsWritten { version: 2 }
        );
        assert!(refused(&f.one(settings("{}", Some(1)))).starts_with("version conflict"));
        assert_eq!(
            f.one(settings("{}", Some(2))),
            Response::SettingsWritten { version: 3 }
        );
        assert_eq!(
            f.store.reader.settings(),
            Some(SettingsRecord {
                settings_json: "{}".into(),
                version: 3,
                updated_by: "admin".into(),
                updated_ms: 9
            })
        );
    }

    #[test]
    fn the_maintenance_plan_is_its_own_document() {
        let mut f = Fixture::new();
        let plan = |json: &str, if_version: Option<u64>| Request::MaintenancePut {
            doc_json: json.into(),
            if_version,
            actor: "ops".into(),
            at_ms: 11,
        };
        assert!(f.store.reader.maintenance().is_none());
        assert_eq!(
            refused(&f.one(plan("[]", None))),
            "maintenance records are not a JSON object"
        );
        assert_eq!(
            f.one(plan("{\"nodes\":[]}", Some(0))),
            Response::MaintenanceWritten { version: 1 }
        );
        assert!(refused(&f.one(plan("{}", Some(0)))).starts_with("version conflict"));
        // The settings keep their own versions.
        assert_eq!(
            f.one(settings("{}", Some(0))),
            Response::SettingsWritten { version: 1 }
        );
        assert_eq!(
            f.one(plan("{}", Some(1))),
            Response::MaintenanceWritten { version: 2 }
        );
        let stored = f.store.reader.maintenance().expect("stored");
        assert_eq!((stored.settings_json.as_str(), stored.version), ("{}", 2));
        assert_eq!(stored.updated_by, "ops");
        assert_eq!(f.store.reader.settings().map(|s| s.version), Some(1));
        let places = Request::PlacesPut {
            doc_json: "{\"1\":{}}".into(),
            if_version: Some(0),
            actor: "init".into(),
            at_ms: 12,
        };
        assert_eq!(f.one(places), Response::PlacesWritten { version: 1 });
        let stored = f.store.reader.places().expect("stored");
        assert_eq!(stored.settings_json, "{\"1\":{}}");
        assert_eq!(f.store.reader.maintenance().map(|s| s.version), Some(2));
    }

    #[test]
    fn history_limits_paging_and_kind() {
        let mut f = Fixture::new();
        let with = |kind: &str, actor: &str, details: &str| Request::HistoryAppend {
            at_ms: 1,
            node: 2,
            kind: kind.into(),
            actor: actor.into(),
            details_json: details.into(),
        };
        let before = state_without_applied(&f);
        assert!(refused(&f.one(with(&"k".repeat(65), "a", "{}"))).contains("kind longer"));
        assert!(refused(&f.one(with("k", &"a".repeat(129), "{}"))).contains("actor longer"));
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(MAX_HISTORY_DETAILS_BYTES));
        assert!(refused(&f.one(with("k", "a", &big))).contains("larger than"));
        assert_eq!(
            refused(&f.one(with("k", "a", "[]"))),
            "history details are not a JSON object"
        );
        assert_eq!(before, state_without_applied(&f));
        assert_eq!(f.store.reader.history_total(), 0);
        assert!(f.store.reader.history(None, 10, None).is_empty());
        assert_eq!(
            f.one(with(&"k".repeat(64), &"a".repeat(128), "{}")),
            Response::HistoryAppended { seq: 0 }
        );

        let reqs: Vec<_> = (1..=20)
            .map(|n| event(if n % 3 == 0 { "swap" } else { "peer" }, n))
            .collect();
        let resp = f.apply(reqs);
        assert_eq!(resp[19], Response::HistoryAppended { seq: 20 });
        assert_eq!(f.store.reader.history_total(), 21);
        let page1 = f.store.reader.history(None, 5, None);
        let seqs: Vec<u64> = page1.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [20, 19, 18, 17, 16]);
        assert_eq!(
            page1[0],
            HistoryEvent {
                seq: 20,
                at_ms: 20,
                node: 1,
                kind: "peer".into(),
                actor: "system".into(),
                details_json: "{\"n\":20}".into()
            }
        );
        let page2: Vec<u64> = f
            .store
            .reader
            .history(Some(16), 5, None)
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(page2, [15, 14, 13, 12, 11]);
        let last: Vec<u64> = f
            .store
            .reader
            .history(Some(2), 5, None)
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(last, [1, 0]);
        assert!(f.store.reader.history(Some(0), 5, None).is_empty());
        assert!(f.store.reader.history(None, 0, None).is_empty());
        let swaps: Vec<u64> = f
            .store
            .reader
            .history(None, 100, Some("swap"))
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(swaps, [18, 15, 12, 9, 6, 3]);
        let swaps: Vec<u64> = f
            .store
            .reader
            .history(Some(15), 2, Some("swap"))
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(swaps, [12, 9]);
        assert!(f.store.reader.history(None, 10, Some("none")).is_empty());
    }

    fn history_seqs(f: &Fixture) -> (u64, u64, usize) {
        let cur = f.store.sm.shared.current();
        let keys: Vec<u64> = cur
            .tree
            .scan_prefix([keys::prefix::HISTORY])
            .keys()
            .map(|k| keys::history_seq(&k.expect("read")).expect("a history key"))
            .collect();
        (keys[0], keys[keys.len() - 1], keys.len())
    }

    #[test]
    fn history_keeps_the_newest_capacity_events() {
        let mut f = Fixture::new();
        let cap = HISTORY_CAPACITY;
        // Beyond the capacity within one batch...
        let reqs: Vec<_> = (0..cap + 3).map(|n| event("e", n)).collect();
        f.apply(reqs);
        assert_eq!(history_seqs(&f), (3, cap + 2, cap as usize));
        // ... and one by one, and inside a multi.
        assert_eq!(
            f.one(event("e", 0)),
            Response::HistoryAppended { seq: cap + 3 }
        );
        f.one(Request::Multi(vec![event("e", 0), event("e", 0)]));
        assert_eq!(history_seqs(&f), (6, cap + 5, cap as usize));
        assert_eq!(f.store.reader.history_total(), cap + 6);
        let all = f.store.reader.history(None, usize::MAX, None);
        assert_eq!(all.len() as u64, cap);
        assert_eq!((all[0].seq, all[all.len() - 1].seq), (cap + 5, 6));
        // A refused multi does not drop an old event.
        f.one(Request::Multi(vec![event("e", 0), raise(9, 1)]));
        assert_eq!(history_seqs(&f), (6, cap + 5, cap as usize));
    }

    #[test]
    fn overlay_merged_view() {
        let mut f = Fixture::new();
        f.apply(vec![
            put("a", "1", None),
            put("c", "1", None),
            put("e", "1", None),
        ]);
        let cur = f.store.sm.shared.current();
        let mut ov = Overlay::new(&cur.tree);
        ov.put(keys::config_key("b"), &1u64).expect("put");
        ov.remove(keys::config_key("c"));
        ov.put(keys::config_key("e"), &2u64).expect("put");
        ov.put(keys::config_key("f"), &3u64).expect("put");
        ov.put(b"zz".to_vec(), &4u64).expect("put");
        let merged: Vec<(Vec<u8>, Vec<u8>)> = ov
            .merged()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("read"))
            .collect();
        let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = cur
            .tree
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("read"))
            .collect();
        expected.remove(&keys::config_key("c"));
        for (k, v) in [("b", 1u64), ("e", 2), ("f", 3)] {
            expected.insert(keys::config_key(k), codec::encode(&v).expect("enc"));
        }
        expected.insert(b"zz".to_vec(), codec::encode(&4u64).expect("enc"));
        assert_eq!(merged, expected.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_rejoin_token_admits_its_node_once() {
        let mut f = Fixture::new();
        let create = Request::RejoinTokenCreate {
            id: "r1".into(),
            node: 3,
            secret_hash: "hr".into(),
            expires_ms: 1000,
            created_by: "admin".into(),
        };
        assert_eq!(f.one(create.clone()), Response::Ok);
        assert_eq!(refused(&f.one(create)), "token id already exists");
        let use_by = |node, hash: &str, now_ms| Request::RejoinTokenUse {
            id: "r1".into(),
            secret_hash: hash.into(),
            now_ms,
            node,
        };
        let reader = f.store.reader.clone();
        assert_eq!(
            reader.check_rejoin_token("r1", "hr", 10, 4),
            Err(Refusal::TokenForOtherNode { token: 3, asked: 4 })
        );
        assert_eq!(
            reader.check_rejoin_token("nope", "hr", 10, 3),
            Err(Refusal::UnknownToken)
        );
        assert_eq!(reader.check_rejoin_token("r1", "hr", 10, 3), Ok(()));
        // Refusals change nothing: the right node can still use it.
        assert!(refused(&f.one(use_by(4, "hr", 10))).contains("for node 3"));
        assert_eq!(
            refused(&f.one(use_by(3, "bad", 10))),
            "token does not match"
        );
        assert_eq!(refused(&f.one(use_by(3, "hr", 1000))), "token expired");
        assert_eq!(f.one(use_by(3, "hr", 10)), Response::Ok);
        assert_eq!(refused(&f.one(use_by(3, "hr", 10))), "token already used");
        assert_eq!(
            reader.check_rejoin_token("r1", "hr", 10, 3),
            Err(Refusal::TokenUsed)
        );
        // A join token with the same id is another record.
        assert!(matches!(f.one(token("r1", "hj", 1000)), Response::Ok));
    }
}
