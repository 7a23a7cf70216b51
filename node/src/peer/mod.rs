//! The peer room: everything that crosses the peer listener and the Raft
//! network client, over mutual TLS 1.3.
//!
//! - [`frame`]: the length-prefixed, size-limited frame codec.
//! - [`protocol`]: the hello, the envelope, requests and responses
//!   (including [`fence::FenceKind`] in refusals).
//! - [`client`]: `PeerNetwork` / `PeerClient`, openraft's network: a
//!   connection pool, pipelined append streams, the replication backoff.
//! - [`server`]: the listener; requests go to a [`server::PeerHandler`]
//!   that this room declares and the node implements.
//! - [`admit`]: the listener's connection caps (in all, per address) and
//!   the keepalive that frees the places of vanished peers.
//! - [`rate`]: the bandwidth limit on what this node sends.
//! - [`reach`]: which peers answer, logged once per loss and return.
//! - [`fence`]: epochs and refusals peers showed this node.
//!
//! Must not touch: the node (`crate::node`), roles, actions or shared IPs.
//! What the server needs from the node goes through `PeerHandler`; what
//! the client needs (this node's id, epoch, limits) through `PeerIdentity`.

pub mod admit;
pub mod client;
pub mod fence;
pub mod frame;
pub mod protocol;
pub mod rate;
pub mod reach;
pub mod seen_certs;
pub mod server;
