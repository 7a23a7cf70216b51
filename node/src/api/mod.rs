//! The admin API's backend: the node's implementation of the web crate's
//! `AdminBackend`, which translates API calls into replicated commands and
//! local reads, and node errors into `ApiError`s.
//!
//! - [`backend`]: `Backend` and the trait implementation (thin: each call
//!   is a command, a read or a delegation).
//! - [`views`]: `/health`, the status page and readiness.
//! - [`errors`]: the one place node errors become API errors.
//! - [`convert`]: records as views, input as stored values.
//!
//! Must not touch: HTTP (routing, extraction, status codes are `web`'s),
//! Raft internals (it goes through `Node`).

pub mod backend;
mod convert;
mod errors;
mod views;

pub use backend::Backend;
