//! Tandem's admin listener: the HTTPS JSON API (`/api/v1/...`), `/health`,
//! and the TLS accept loop that serves them.
//!
//! This crate must not depend on `node` or `storage`: it declares what it
//! needs as the [`AdminBackend`] trait with its own view types, and `node`
//! implements it. It holds no Raft, sled or certificate logic; the TLS
//! configuration arrives ready-made.
//!
//! Modules:
//! - `backend`: [`AdminBackend`] and the JSON views / request bodies.
//! - `error`: [`ApiError`], the one error type, and its single HTTP mapping.
//! - `routes`: [`router`], handlers, bearer authentication, validation.
//! - `extract`: extractors that turn axum rejections into [`ApiError`]s.
//! - `tls`: [`serve_tls`], the accept loop with graceful shutdown.

mod backend;
mod error;
mod extract;
mod routes;
mod tls;

pub use backend::{
    AdminBackend, ClusterView, ConfigEntryView, ConfigPut, HealthView, JoinRequest, JoinResponse,
    JoinTokenRequest, JoinTokenView, ListView, MemberView, ReadMeta, SessionCreate, SessionView,
};
pub use error::{ApiError, ErrorBody};
pub use routes::{
    router, validate_key, ACTOR_HEADER, APPLIED_INDEX_HEADER, DEFAULT_LIST_LIMIT, MAX_BODY_BYTES,
    MAX_KEY_LEN, MAX_LIST_LIMIT, MAX_TTL_SECS, STALE_HEADER,
};
pub use tls::{serve_tls, SHUTDOWN_GRACE};
