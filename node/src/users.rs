//! Admin users' passwords (argon2id, PHC strings) and per-user API tokens.
//!
//! Hashing and verification run on the blocking pool: argon2id is made to
//! be slow. Neither passwords nor hashes are ever logged.

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

/// [`hash_password_blocking`] on the blocking pool.
///
/// # Errors
/// A failed hash or a cancelled task.
pub async fn hash_password(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(|e| e.to_string())?
}

/// [`verify_password_blocking`] on the blocking pool (against the dummy
/// hash when `hash` is `None`, answering false).
///
/// # Errors
/// A cancelled task.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, String> {
    tokio::task::spawn_blocking(move || match hash {
        Some(h) => verify_password_blocking(&password, &h),
        None => {
            let _ = verify_password_blocking(&password, dummy_hash());
            false
        }
    })
    .await
    .map_err(|e| e.to_string())
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
}
