//! The relationship actions an administrator (or a peer on the primary's
//! behalf) asks of a node, as `impl Node` blocks:
//! - [`swap`]: planned swap from either side, the actions peers ask over
//!   the peer link, and leadership hand-over;
//! - [`sync`]: *sync now* and *verify*;
//! - [`reset`]: forced promotion, *break relationship*: Raft rebuilt in
//!   place over the node's own data;
//! - [`rejoin`]: rejoin tokens and *rejoin*, which a removed or replaced
//!   node asks of the primary with one;
//! - [`failover`]: the periodic duties (pair-only automatic failover,
//!   scheduled verify) and removing the witness;
//! - [`setup`]: *set up relationship* from a running standalone node;
//! - [`maintenance`]: maintenance mode and windows, and the primary's duty
//!   that runs their times;
//! - [`checks`]: the task that runs this node's service checks and the
//!   primary's duty that moves the role when one fails;
//! - [`demote`]: forced demotion of a primary whose peer is out of reach,
//!   and its undo;
//! - [`failback`]: the role back to the preferred appliance after a delay;
//! - [`placement`]: the primary's own site and host in the replicated
//!   placement record;
//! - [`certs`]: node certificates renewed without a restart.
//!
//! Actions decide and order; they do not compute roles (that is
//! `roles`), touch shared IPs directly (that is `shared_ip` through the
//! role manager), or speak HTTP (that is `api`). A refusal changes nothing
//! and is a typed [`crate::errors::Refusal`].

pub(crate) mod certs;
pub(crate) mod checks;
pub(crate) mod demote;
pub(crate) mod duties;
pub(crate) mod failback;
pub(crate) mod failover;
pub(crate) mod maintenance;
pub(crate) mod placement;
pub(crate) mod rejoin;
pub(crate) mod reset;
pub(crate) mod setup;
mod swap;
mod sync;
