//! Admin users' passwords (argon2id, PHC strings) and per-user API tokens.
//!
//! Hashing and verification run on one thread of their own at the lowest
//! priority (`admin_runtime`): argon2id is made to be slow. One runs at a
//! time, and at most [`ARGON2_QUEUE`] wait for their turn; more are refused
//! at once ("busy"): a flood of logins takes at most one core, only when
//! nothing else wants it, never the pool the storage's fsyncs run on, and
//! never queues without bound. Neither passwords nor
//! hashes are ever logged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

use crate::join::{hash_secret, random_hex, random_secret};

/// Prefix of per-user API tokens: `tdu_<id>.<secret>`.
pub const API_TOKEN_PREFIX: &str = "tdu_";

/// The argon2id PHC string of `password` with a fresh random salt.
///
/// # Errors
/// Only if argon2 rejects its own parameters (a bug).
pub fn hash_password_blocking(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash` (false for a malformed
/// hash).
pub fn verify_password_blocking(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so that an
/// unknown user takes about as long as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password_blocking("not a password").unwrap_or_default())
}

/// How many argon2 runs may wait for their turn.
pub const ARGON2_QUEUE: usize = 8;

/// The one argon2 run at a time.
static ARGON2: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
/// Runs waiting or running.
static ARGON2_IN_LINE: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` (an argon2 hash or verification) on the argon2 thread when its
/// turn comes; refused at once when [`ARGON2_QUEUE`] already wait.
async fn argon2_turn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    struct InLine;
    impl Drop for InLine {
        fn drop(&mut self) {
            ARGON2_IN_LINE.fetch_sub(1, Ordering::SeqCst);
        }
    }
    if ARGON2_IN_LINE.fetch_add(1, Ordering::SeqCst) > ARGON2_QUEUE {
        ARGON2_IN_LINE.fetch_sub(1, Ordering::SeqCst);
        return Err("busy checking other logins; try again in a moment".into());
    }
    let _in_line = InLine;
    let _turn = ARGON2.acquire().await.map_err(|e| e.to_string())?;
    crate::admin_runtime::on_argon2_thread(f).await
}

/// [`hash_password_blocking`] on the argon2 thread, in turn.
///
/// # Errors
/// A failed hash, a cancelled task, or too many waiting.
pub async fn hash_password(password: String) -> Result<String, String> {
    argon2_turn(move || hash_password_blocking(&password)).await?
}

/// [`verify_password_blocking`] on the argon2 thread, in turn (against the
/// dummy hash when `hash` is `None`, answering false).
///
/// # Errors
/// A cancelled task, or too many waiting.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, String> {
    argon2_turn(move || match hash {
        Some(h) => verify_password_blocking(&password, &h),
        None => {
            let _ = verify_password_blocking(&password, dummy_hash());
            false
        }
    })
    .await
}

/// A new API token: `(id, token, hash of the token)`.
pub fn new_api_token() -> (String, String, String) {
    let id = random_hex(8);
    let token = format!("{API_TOKEN_PREFIX}{id}.{}", random_secret(24));
    let hash = hash_secret(&token);
    (id, token, hash)
}

/// The id of a token shaped like an API token.
pub fn api_token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(API_TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some(id)
}

/// A random one-time password for the first admin (shown once).
pub fn initial_password() -> String {
    random_secret(15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify() {
        let h = hash_password_blocking("correct horse").expect("hashes");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password_blocking("correct horse", &h));
        assert!(!verify_password_blocking("wrong", &h));
        assert!(!verify_password_blocking("x", "not a hash"));
        let (id, token, hash) = new_api_token();
        assert_eq!(api_token_id(&token), Some(id.as_str()));
        assert_eq!(hash, hash_secret(&token));
        assert_eq!(api_token_id("tdm_abc"), None);
        assert_eq!(api_token_id("tdu_.x"), None);
    }

    /// 100 logins at once: one argon2 run at a time, a bounded line, the
    /// rest refused at once as busy (never queued without bound).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_login_flood_waits_in_a_bounded_line() {
        let hash = hash_password_blocking("correct horse").expect("hashes");
        let tries = (0..100).map(|_| verify_password("wrong".into(), Some(hash.clone())));
        let answers = futures::future::join_all(tries).await;
        let checked = answers.iter().filter(|a| a.is_ok()).count();
        let busy = answers
            .iter()
            .filter(|a| a.as_ref().is_err_and(|e| e.starts_with("busy")))
            .count();
        assert_eq!(checked + busy, 100, "{answers:?}");
        assert!(checked <= ARGON2_QUEUE + 1, "{checked} checked");
        assert!(busy >= 100 - ARGON2_QUEUE - 1, "{busy} busy");
        assert!(answers.iter().flatten().all(|ok| !ok));
        // Once the line is empty, a login is checked again.
        assert_eq!(
            verify_password("correct horse".into(), Some(hash)).await,
            Ok(true)
        );
    }
}
