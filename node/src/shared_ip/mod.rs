//! Shared IPs: the addresses that follow the primary (`../shared/DESIGN.md` §7).
//!
//! - [`SharedIpSpec`]: one address with its prefix and this node's interface,
//!   parsed from the replicated settings ([`specs_for_node`]).
//! - [`SharedIpDriver`]: how an address is taken and given up. Three drivers:
//!   [`NetlinkDriver`] (Linux: netlink add/remove, then gratuitous ARP or
//!   unsolicited neighbour advertisement, repeated), [`ScriptDriver`] (the
//!   administrator's command, for cloud floating-IP APIs) and [`NoneDriver`]
//!   (log only; the demo default).
//! - [`SharedIpManager`]: reconciles "should this node hold them, at which
//!   epoch" with what the driver holds, retries failures with backoff, keeps
//!   the events for the history, and after a takeover checks that a gateway
//!   or test IP answers *from* the shared address.
//!
//! The manager never decides who is primary: the role manager tells it
//! ([`SharedIpHandle::set_desired`]) on every tick, and calls
//! [`SharedIpHandle::release_all`] on demotion, lease loss and break.
//!
//! A release for a hand-over ([`SharedIpHandle::release_for_hand_over`]) or
//! a shutdown ([`SharedIpHandle::release_for_shutdown`]) is final (DESIGN
//! rule 6): the manager itself refuses every later acquisition at that epoch
//! or below (after a shutdown release, at any epoch), whatever the role
//! manager still asks for on a tick that raced with the release.
//!
//! Rooms: [`spec`], [`driver`] (`netlink`, `script`, `none`, `select`),
//! [`announce`](mod@announce), [`probe`], [`manager`], and [`guard`] (the child process
//! that releases the addresses when the daemon dies or freezes; it depends
//! on the drivers only). Must not touch: roles, Raft, the node.

pub mod announce;
pub mod driver;
pub mod guard;
pub mod manager;
pub mod probe;
pub mod spec;

pub use announce::{announce, gratuitous_arp_frame, unsolicited_na};
pub use driver::netlink::{AnnounceSchedule, NetlinkDriver};
pub use driver::none::NoneDriver;
pub use driver::script::{ScriptDriver, ScriptOutcome};
pub use driver::select::driver_from_config;
pub use driver::{BoxFuture, DriverError, SharedIpDriver};
pub use manager::{Release, SharedIpEvent, SharedIpHandle, SharedIpManager, SharedIpReport};
pub use probe::{check_reachability, Reachability};
pub use spec::{specs_for_node, SharedIpSpec, SpecError};
