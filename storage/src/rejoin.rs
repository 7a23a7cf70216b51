//! Rejoin tokens: an administrator on the primary makes one for a node that
//! a break removed or a forced promotion replaced; that node presents it to
//! come back as the backup. A token admits one node id (the one its
//! certificate carries), once, before it expires.

use crate::apply::{ct_eq, Overlay};
use crate::error::StorageError;
use crate::keys::{self, RejoinTokenRecord};
use crate::types::{Refusal, Response};

/// Applies [`crate::types::Request::RejoinTokenCreate`].
pub(crate) fn create(
    ov: &mut Overlay<'_>,
    id: &str,
    node: u64,
    secret_hash: &str,
    expires_ms: u64,
    created_by: &str,
) -> Result<Response, StorageError> {
    let k = keys::rejoin_token_key(id);
    if ov.get::<RejoinTokenRecord>(&k)?.is_some() {
        return Ok(Response::refused(Refusal::TokenIdExists));
    }
    ov.put(
        k,
        &RejoinTokenRecord {
            node,
            secret_hash: secret_hash.to_string(),
            expires_ms,
            created_by: created_by.to_string(),
            used: false,
        },
    )?;
    Ok(Response::Ok)
}

/// Whether `token` admits node `node` presenting `secret_hash` at `now_ms`.
pub(crate) fn admits(
    token: Option<&RejoinTokenRecord>,
    secret_hash: &str,
    now_ms: u64,
    node: u64,
) -> Result<(), Refusal> {
    let Some(token) = token else {
        return Err(Refusal::UnknownToken);
    };
    // The hash first: a caller without the secret learns nothing more.
    if !ct_eq(token.secret_hash.as_bytes(), secret_hash.as_bytes()) {
        return Err(Refusal::TokenMismatch);
    }
    if token.used {
        return Err(Refusal::TokenUsed);
    }
    if now_ms >= token.expires_ms {
        return Err(Refusal::TokenExpired);
    }
    if token.node != node {
        return Err(Refusal::TokenForOtherNode {
            token: token.node,
            asked: node,
        });
    }
    Ok(())
}

/// Applies [`crate::types::Request::RejoinTokenUse`]: marks the token used.
pub(crate) fn use_token(
    ov: &mut Overlay<'_>,
    id: &str,
    secret_hash: &str,
    now_ms: u64,
    node: u64,
) -> Result<Response, StorageError> {
    let k = keys::rejoin_token_key(id);
    let Some(mut token) = ov.get::<RejoinTokenRecord>(&k)? else {
        return Ok(Response::refused(Refusal::UnknownToken));
    };
    if let Err(r) = admits(Some(&token), secret_hash, now_ms, node) {
        return Ok(Response::refused(r));
    }
    token.used = true;
    ov.put(k, &token)?;
    Ok(Response::Ok)
}
