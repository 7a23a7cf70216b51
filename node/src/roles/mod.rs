//! Roles (primary, backup, witness, standalone) and epochs.
//!
//! See `node/DESIGN.md` for why the rules are what they are. In short: the
//! primary is the Raft leader among appliances whose lease is valid and whose
//! epoch entry is committed; everything else follows from that, re-evaluated
//! on every tick of [`manage_roles`].
//!
//! - `rules`: `role_of`, the rules as a pure function of `RoleFacts`;
//! - `state`: `Role` and `RoleState`, the bookkeeping `Node` holds;
//! - `gate`: the facts gathered from live metrics, the write gate, the
//!   history (`impl Node`);
//! - `manager`: the role manager's tick: epoch raises, fences, shared IPs,
//!   snapshots, settings duties.
//!
//! The room does not run relationship actions (`actions`) or touch the
//! network beyond fence notices.

mod gate;
mod manager;
mod rules;
mod state;

pub use manager::manage_roles;

pub use state::{Role, RoleState};
