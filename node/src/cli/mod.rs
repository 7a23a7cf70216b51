//! The `tandem` command line (clap). `main` parses, installs tracing and
//! calls [`execute`].
//!
//! Exit codes scripts can rely on: 0 success; 1 failure (one line on
//! stderr says why; also a `sync --verify` whose digests differ); 2 usage
//! error (from clap, a malformed `KEY=VALUE`, or a `swap`/`break`/`rejoin`
//! without `--yes` when stdin is not a terminal); 3 the cluster refused the
//! request (any 4xx answer: bad token, not allowed, invalid settings, an
//! action refused in the current situation with 409…); 4 the node could
//! not be reached.
//!
//! Rooms: [`args`] (the shape), [`dispatch`] (running a command),
//! [`actions`] (relationship commands), [`render`] (printing views),
//! [`failure`] (exit codes), [`demo`] (`tandem demo`).
//!
//! Must not touch: a running node's internals. Commands speak to a node
//! through its admin API (`client::ApiClient`), except `init`, `join` and
//! `run`, which go through `bootstrap` and the crate root.

pub mod actions;
pub mod args;
pub mod demo;
pub mod dispatch;
pub mod failure;
pub mod render;

pub use args::{Cli, Command, LogFormat};
pub use dispatch::{execute, poll, shutdown_on_signals};
pub use failure::{Failure, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE};
pub use render::{
    age, iso8601, render_history, render_readiness, render_relationship, render_settings,
    render_status,
};
