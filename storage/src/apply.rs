//! Deterministic application of committed entries to the state machine tree.
//!
//! A whole batch of entries is computed against an in-memory overlay of
//! pending writes on top of the tree (so later entries of the batch see the
//! effects of earlier ones), then written with ONE `sled::Batch` that also
//! records the last applied log id and, if it changed, the membership. sled
//! applies a batch atomically, also across a crash: either all of the batch's
//! writes are recovered or none.

use std::collections::BTreeMap;
use std::ops::Bound;

use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::IVec;

use crate::codec;
use crate::error::StorageError;
use crate::keys::{self, ConfigRecord, SessionRecord, SmMetaKey, TokenRecord};
use crate::types::{Entry, Request, Response, StoredMembership};

/// Largest value (JSON text) a command may store. sled writes values larger
/// than about 128 KiB as separate blob files that it never fsyncs, so the
/// state machine refuses them; the node should refuse them before proposing.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Longest configuration key, session id or token id a command may use.
pub const MAX_KEY_BYTES: usize = 1024;

/// The first node id handed to a joiner (the initializing node is 1).
pub(crate) const FIRST_JOINER_NODE_ID: u64 = 2;

/// Pending writes over a tree: reads see the pending value first.
pub(crate) struct Overlay<'t> {
    tree: &'t sled::Tree,
    pending: BTreeMap<Vec<u8>, Option<IVec>>,
}

impl<'t> Overlay<'t> {
    pub(crate) fn new(tree: &'t sled::Tree) -> Self {
        Self {
            tree,
            pending: BTreeMap::new(),
        }
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
        self.pending.insert(key, Some(IVec::from(v)));
        Ok(())
    }

    pub(crate) fn remove(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
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

    pub(crate) fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in self.pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch
    }
}

/// Applies `entries` (consecutive, in log order) to `tree` in one atomic
/// batch and returns one response per entry.
pub(crate) fn apply_entries(
    tree: &sled::Tree,
    entries: &[Entry],
) -> Result<Vec<Response>, StorageError> {
    let Some(last) = entries.last() else {
        return Ok(Vec::new());
    };
    let mut ov = Overlay::new(tree);
    let mut out = Vec::with_capacity(entries.len());
    let mut membership = None;
    for entry in entries {
        let resp = match &entry.payload {
            EntryPayload::Blank => Response::Ok,
            EntryPayload::Normal(req) => apply_request(&mut ov, req)?,
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
    tree.apply_batch(ov.into_batch())?;
    Ok(out)
}

/// Constant-time equality of two byte strings of public length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn too_large(what: &str, len: usize) -> Option<Response> {
    (len > MAX_VALUE_BYTES)
        .then(|| Response::refused(format!("{what} larger than {MAX_VALUE_BYTES} bytes")))
}

fn key_too_long(key: &str) -> Option<Response> {
    (key.len() > MAX_KEY_BYTES)
        .then(|| Response::refused(format!("key or id longer than {MAX_KEY_BYTES} bytes")))
}

/// The key or id a command addresses, if any.
fn addressed_key(req: &Request) -> Option<&str> {
    match req {
        Request::ConfigPut { key, .. } | Request::ConfigDelete { key, .. } => Some(key),
        Request::SessionPut { id, .. }
        | Request::SessionDelete { id }
        | Request::JoinTokenCreate { id, .. }
        | Request::JoinTokenConsume { id, .. } => Some(id),
        Request::Bootstrap { .. }
        | Request::SessionSweep { .. }
        | Request::SetAdminTokenHash { .. } => None,
    }
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
        } => {
            let key = SmMetaKey::ClusterId.as_bytes();
            if ov.get::<String>(key)?.is_some() {
                return Ok(Response::refused("already bootstrapped"));
            }
            ov.put(key.to_vec(), cluster_id)?;
            ov.put(
                SmMetaKey::AdminTokenHash.as_bytes().to_vec(),
                admin_token_hash,
            )?;
            Response::Ok
        }
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
        } => {
            if let Some(r) = too_large("value", value_json.len()) {
                return Ok(r);
            }
            if serde_json::from_str::<serde::de::IgnoredAny>(value_json).is_err() {
                return Ok(Response::refused("value is not valid JSON"));
            }
            let k = keys::config_key(key);
            let current = ov.get::<ConfigRecord>(&k)?.map_or(0, |r| r.version);
            if let Some(expected) = if_version {
                if *expected != current {
                    return Ok(Response::refused(format!(
                        "version conflict: expected {expected}, current {current}"
                    )));
                }
            }
            let version = current + 1;
            ov.put(
                k,
                &ConfigRecord {
                    value_json: value_json.clone(),
                    version,
                    updated_by: actor.clone(),
                    updated_ms: *at_ms,
                },
            )?;
            Response::ConfigWritten { version }
        }
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
        } => {
            if let Some(r) = too_large("session data", data_json.len()) {
                return Ok(r);
            }
            let k = keys::session_key(id);
            if let Some(old) = ov.get::<SessionRecord>(&k)? {
                ov.remove(keys::expiry_key(old.expires_ms, id));
            }
            ov.put(
                k,
                &SessionRecord {
                    owner: owner.clone(),
                    data_json: data_json.clone(),
                    created_ms: *created_ms,
                    expires_ms: *expires_ms,
                },
            )?;
            ov.put(keys::expiry_key(*expires_ms, id), &())?;
            Response::Ok
        }
        Request::SessionDelete { id } => {
            let k = keys::session_key(id);
            let old = ov.get::<SessionRecord>(&k)?;
            if let Some(old) = &old {
                ov.remove(keys::expiry_key(old.expires_ms, id));
                ov.remove(k);
            }
            Response::Deleted {
                existed: old.is_some(),
            }
        }
        Request::SessionSweep { now_ms } => {
            let start = [keys::prefix::SESSION_EXPIRY];
            let end = keys::expiry_upper_bound(*now_ms);
            let expired = ov.existing_keys_in(&start, &end)?;
            for idx_key in &expired {
                let id = std::str::from_utf8(&idx_key[9..])
                    .map_err(|_| StorageError::Corrupt("session id is not UTF-8".into()))?;
                ov.remove(keys::session_key(id));
                ov.remove(idx_key.clone());
            }
            Response::Swept {
                removed: expired.len() as u64,
            }
        }
        Request::JoinTokenCreate {
            id,
            secret_hash,
            expires_ms,
            kind,
            created_by,
        } => {
            let k = keys::token_key(id);
            if ov.get::<TokenRecord>(&k)?.is_some() {
                return Ok(Response::refused("token id already exists"));
            }
            ov.put(
                k,
                &TokenRecord {
                    secret_hash: secret_hash.clone(),
                    expires_ms: *expires_ms,
                    kind: *kind,
                    created_by: created_by.clone(),
                    used_by: None,
                },
            )?;
            Response::Ok
        }
        Request::JoinTokenConsume {
            id,
            secret_hash,
            now_ms,
        } => {
            let k = keys::token_key(id);
            let Some(mut token) = ov.get::<TokenRecord>(&k)? else {
                return Ok(Response::refused("unknown token"));
            };
            // The hash is checked first so that a caller without the secret
            // learns nothing about the token's state.
            if !ct_eq(token.secret_hash.as_bytes(), secret_hash.as_bytes()) {
                return Ok(Response::refused("token does not match"));
            }
            if token.used_by.is_some() {
                return Ok(Response::refused("token already used"));
            }
            if *now_ms >= token.expires_ms {
                return Ok(Response::refused("token expired"));
            }
            let counter_key = SmMetaKey::NextNodeId.as_bytes();
            let node_id = ov.get::<u64>(counter_key)?.unwrap_or(FIRST_JOINER_NODE_ID);
            let next = node_id
                .checked_add(1)
                .ok_or_else(|| StorageError::Corrupt("node id counter overflow".into()))?;
            ov.put(counter_key.to_vec(), &next)?;
            token.used_by = Some(node_id);
            ov.put(k, &token)?;
            Response::NodeIdAssigned { node_id }
        }
    })
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;

    use super::*;
    use crate::types::{LogId, NodeKind};

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
            let cur = self.store.sm.shared.current();
            apply_entries(&cur.tree, &entries).expect("apply succeeds")
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

    fn refused(r: &Response) -> &str {
        match r {
            Response::Refused { reason } => reason,
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
}
