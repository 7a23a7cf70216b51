//! Read access to the replicated state for the node and the web layer.

use std::sync::Arc;

use ring::digest;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::StorageError;
use crate::keys::{
    self, ApiTokenRecord, ConfigRecord, HistoryRecord, SessionRecord, SmMetaKey, TokenRecord,
    UserRecord,
};
use crate::state_machine::{read_applied_state, SmShared};
use crate::types::{
    AdminUser, ApiToken, ConfigEntry, EpochRecord, HistoryEvent, JoinToken, Session, SettingsRecord,
};
use crate::{NodeKind, Refusal};

/// Read-only view of the state machine. Cheap to clone; reads run
/// concurrently with apply (sled is concurrent) and always see the current
/// generation, also after a snapshot install.
///
/// The plain accessors never fail: a storage error is logged at `error` and
/// reads as absent/empty. [`StateReader::try_digest`] reports errors.
#[derive(Clone)]
pub struct StateReader {
    pub(crate) shared: Arc<SmShared>,
}

fn logged<T>(what: &str, r: Result<T, StorageError>, default: T) -> T {
    r.unwrap_or_else(|e| {
        tracing::error!(error = %e, what, "state read failed");
        default
    })
}

fn utf8(bytes: &[u8]) -> Result<String, StorageError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StorageError::Corrupt("key is not UTF-8".into()))
}

impl StateReader {
    /// Records in the newest snapshot of this state machine (0: none yet);
    /// the snapshot policy compares it with the log grown since.
    pub fn snapshot_records(&self) -> u64 {
        self.shared.snapshot_records()
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let cur = self.shared.current();
        match cur.tree.get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// The cluster id set by `Bootstrap`, if bootstrapped.
    pub fn cluster_id(&self) -> Option<String> {
        logged(
            "cluster_id",
            self.get(SmMetaKey::ClusterId.as_bytes()),
            None,
        )
    }

    /// The current admin token hash.
    pub fn admin_token_hash(&self) -> Option<String> {
        logged(
            "admin_token_hash",
            self.get(SmMetaKey::AdminTokenHash.as_bytes()),
            None,
        )
    }

    /// Index of the last applied log entry.
    pub fn applied_index(&self) -> Option<u64> {
        logged(
            "applied_index",
            self.shared.applied_state().map(|(l, _)| l.map(|l| l.index)),
            None,
        )
    }

    /// One configuration value.
    pub fn config_get(&self, key: &str) -> Option<ConfigEntry> {
        let r = self
            .get::<ConfigRecord>(&keys::config_key(key))
            .map(|o| o.map(|r| config_entry(key.to_owned(), r)));
        logged("config_get", r, None)
    }

    /// Up to `limit` configuration values whose key starts with `prefix`, in
    /// key order.
    pub fn config_list(&self, prefix: &str, limit: usize) -> Vec<ConfigEntry> {
        let r = (|| {
            let cur = self.shared.current();
            let mut out = Vec::new();
            for kv in cur.tree.scan_prefix(keys::config_key(prefix)).take(limit) {
                let (k, v) = kv?;
                out.push(config_entry(utf8(&k[1..])?, codec::decode(&v)?));
            }
            Ok(out)
        })();
        logged("config_list", r, Vec::new())
    }

    /// A session, unless absent or expired at `now_ms`.
    pub fn session_get(&self, id: &str, now_ms: u64) -> Option<Session> {
        let r = self.get::<SessionRecord>(&keys::session_key(id)).map(|o| {
            o.filter(|s| s.expires_ms > now_ms)
                .map(|s| session(id.to_owned(), s))
        });
        logged("session_get", r, None)
    }

    /// Up to `limit` sessions not expired at `now_ms`, in id order.
    pub fn session_list(&self, now_ms: u64, limit: usize) -> Vec<Session> {
        let r = (|| {
            let cur = self.shared.current();
            let mut out = Vec::new();
            for kv in cur.tree.scan_prefix([keys::prefix::SESSION]) {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = kv?;
                let rec: SessionRecord = codec::decode(&v)?;
                if rec.expires_ms > now_ms {
                    out.push(session(utf8(&k[1..])?, rec));
                }
            }
            Ok(out)
        })();
        logged("session_list", r, Vec::new())
    }

    /// A join token's public fields (never its secret hash).
    pub fn join_token(&self, id: &str) -> Option<JoinToken> {
        let r = self.get::<TokenRecord>(&keys::token_key(id)).map(|o| {
            o.map(|t| JoinToken {
                id: id.to_owned(),
                kind: t.kind,
                expires_ms: t.expires_ms,
                created_by: t.created_by,
                used_by: t.used_by,
            })
        });
        logged("join_token", r, None)
    }

    /// Whether the join token `id` would admit a joiner presenting
    /// `secret_hash` at `now_ms` as a node of `kind`, read locally: the
    /// leader asks this before it proposes anything, so a forged or spent
    /// token costs no replicated entry. The state machine checks again
    /// when the token is used.
    ///
    /// # Errors
    /// The refusal the state machine would give.
    pub fn check_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        now_ms: u64,
        kind: NodeKind,
    ) -> Result<(), Refusal> {
        let token = logged(
            "join_token",
            self.get::<TokenRecord>(&keys::token_key(id)),
            None,
        );
        crate::apply::token_admits(token.as_ref(), secret_hash, now_ms, Some(kind))
    }

    /// Whether the rejoin token `id` would admit node `node` presenting
    /// `secret_hash` at `now_ms`, read locally before anything is
    /// proposed (the state machine checks again when it is used).
    ///
    /// # Errors
    /// The refusal the state machine would give.
    pub fn check_rejoin_token(
        &self,
        id: &str,
        secret_hash: &str,
        now_ms: u64,
        node: u64,
    ) -> Result<(), Refusal> {
        let token = logged(
            "rejoin_token",
            self.get::<crate::keys::RejoinTokenRecord>(&keys::rejoin_token_key(id)),
            None,
        );
        crate::rejoin::admits(token.as_ref(), secret_hash, now_ms, node)
    }

    /// One admin user.
    pub fn user(&self, name: &str) -> Option<AdminUser> {
        let r = self
            .get::<UserRecord>(&keys::user_key(name))
            .map(|o| o.map(|u| admin_user(name.to_owned(), u)));
        logged("user", r, None)
    }

    /// Every admin user, in name order.
    pub fn users(&self) -> Vec<AdminUser> {
        let r = (|| {
            let cur = self.shared.current();
            let mut out = Vec::new();
            for kv in cur.tree.scan_prefix([keys::prefix::USER]) {
                let (k, v) = kv?;
                out.push(admin_user(utf8(&k[1..])?, codec::decode(&v)?));
            }
            Ok(out)
        })();
        logged("users", r, Vec::new())
    }

    /// One per-user API token.
    pub fn api_token(&self, id: &str) -> Option<ApiToken> {
        let r = self
            .get::<ApiTokenRecord>(&keys::api_token_key(id))
            .map(|o| o.map(|t| api_token(id.to_owned(), t)));
        logged("api_token", r, None)
    }

    /// Every per-user API token, in id order.
    pub fn api_tokens(&self) -> Vec<ApiToken> {
        let r = (|| {
            let cur = self.shared.current();
            let mut out = Vec::new();
            for kv in cur.tree.scan_prefix([keys::prefix::API_TOKEN]) {
                let (k, v) = kv?;
                out.push(api_token(utf8(&k[1..])?, codec::decode(&v)?));
            }
            Ok(out)
        })();
        logged("api_tokens", r, Vec::new())
    }

    /// Number of stored sessions, expired-but-not-yet-swept ones included.
    /// Counts keys, so it costs O(sessions).
    pub fn session_count(&self) -> u64 {
        let cur = self.shared.current();
        cur.tree.scan_prefix([keys::prefix::SESSION]).keys().count() as u64
    }

    /// Whether any stored session has expired by `now_ms` (and so a sweep has
    /// work to do). Reads one key of the expiry index.
    pub fn has_expired_sessions(&self, now_ms: u64) -> bool {
        let cur = self.shared.current();
        let start = [keys::prefix::SESSION_EXPIRY];
        cur.tree
            .range(start.as_slice()..keys::expiry_upper_bound(now_ms).as_slice())
            .next()
            .is_some()
    }

    /// The current epoch and primary (epoch 0, no primary, when none was ever
    /// raised). One key read: cheap enough for every peer RPC.
    pub fn epoch(&self) -> EpochRecord {
        logged(
            "epoch",
            self.get(SmMetaKey::Epoch.as_bytes())
                .map(Option::unwrap_or_default),
            EpochRecord::default(),
        )
    }

    /// The replicated settings, if ever written.
    pub fn settings(&self) -> Option<SettingsRecord> {
        logged("settings", self.get(SmMetaKey::Settings.as_bytes()), None)
    }

    /// The maintenance plan (in a [`SettingsRecord`]), if ever written.
    pub fn maintenance(&self) -> Option<SettingsRecord> {
        logged(
            "maintenance",
            self.get(SmMetaKey::Maintenance.as_bytes()),
            None,
        )
    }

    /// The placement record (in a [`SettingsRecord`]), if ever written.
    pub fn places(&self) -> Option<SettingsRecord> {
        logged("places", self.get(SmMetaKey::Places.as_bytes()), None)
    }

    /// Status history events, newest first: at most `limit` events with
    /// `seq < before_seq` (when given, for paging: pass the last seq of the
    /// previous page) and `kind` equal to the given one (when given). With a
    /// kind filter the scan may visit every stored event (at most
    /// [`crate::HISTORY_CAPACITY`]); without one it reads `limit` events.
    pub fn history(
        &self,
        before_seq: Option<u64>,
        limit: usize,
        kind: Option<&str>,
    ) -> Vec<HistoryEvent> {
        let r = (|| {
            let cur = self.shared.current();
            let start = [keys::prefix::HISTORY];
            let end = match before_seq {
                Some(seq) => keys::history_key(seq),
                None => vec![keys::prefix::HISTORY + 1],
            };
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            for kv in cur.tree.range(start.as_slice()..end.as_slice()).rev() {
                let (k, v) = kv?;
                let seq = keys::history_seq(&k)
                    .ok_or_else(|| StorageError::Corrupt("malformed history key".into()))?;
                let rec: HistoryRecord = codec::decode(&v)?;
                if kind.is_some_and(|kind| kind != rec.kind) {
                    continue;
                }
                out.push(HistoryEvent {
                    seq,
                    at_ms: rec.at_ms,
                    node: rec.node,
                    kind: rec.kind,
                    actor: rec.actor,
                    details_json: rec.details_json,
                });
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })();
        logged("history", r, Vec::new())
    }

    /// Number of status history events ever appended (= the seq the next
    /// event gets); the oldest beyond [`crate::HISTORY_CAPACITY`] are gone.
    pub fn history_total(&self) -> u64 {
        logged(
            "history_total",
            self.get::<u64>(SmMetaKey::HistoryNextSeq.as_bytes())
                .map(|o| o.unwrap_or(0)),
            0,
        )
    }

    /// Applied index and SHA-256 (hex) of the whole replicated state, taken at
    /// one point between two applied batches. Errors read as `(None, "")`.
    /// Blocking: scans all state; call it from `spawn_blocking`.
    pub fn digest(&self) -> (Option<u64>, String) {
        logged("digest", self.try_digest(), (None, String::new()))
    }

    /// As [`StateReader::digest`], reporting storage errors.
    ///
    /// The hash covers every key/value of the state machine tree in key order,
    /// each as `len(key) u32 BE ++ key ++ len(value) u32 BE ++ value`.
    ///
    /// # Errors
    /// sled or decoding errors.
    pub fn try_digest(&self) -> Result<(Option<u64>, String), StorageError> {
        let _gate = self.shared.gate_shared();
        let cur = self.shared.current();
        let (applied, _) = read_applied_state(&cur.tree)?;
        let mut ctx = digest::Context::new(&digest::SHA256);
        for kv in cur.tree.iter() {
            let (k, v) = kv?;
            ctx.update(&(k.len() as u32).to_be_bytes());
            ctx.update(&k);
            ctx.update(&(v.len() as u32).to_be_bytes());
            ctx.update(&v);
        }
        Ok((applied.map(|l| l.index), hex::encode(ctx.finish())))
    }
}

fn config_entry(key: String, r: ConfigRecord) -> ConfigEntry {
    ConfigEntry {
        key,
        value_json: r.value_json,
        version: r.version,
        updated_by: r.updated_by,
        updated_ms: r.updated_ms,
    }
}

fn session(id: String, s: SessionRecord) -> Session {
    Session {
        id,
        owner: s.owner,
        data_json: s.data_json,
        created_ms: s.created_ms,
        expires_ms: s.expires_ms,
    }
}

fn admin_user(name: String, u: UserRecord) -> AdminUser {
    AdminUser {
        name,
        password_hash: u.password_hash,
        created_ms: u.created_ms,
        updated_ms: u.updated_ms,
        updated_by: u.updated_by,
    }
}

fn api_token(id: String, t: ApiTokenRecord) -> ApiToken {
    ApiToken {
        id,
        user: t.user,
        secret_hash: t.secret_hash,
        created_ms: t.created_ms,
    }
}
