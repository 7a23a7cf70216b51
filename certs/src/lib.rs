//! Tandem's certificates and TLS configuration.
//!
//! Every Tandem cluster has its own certificate authority ([`ClusterCa`]). The
//! CA issues each node a certificate for `CN=tandem-node-<id>` with the DNS SAN
//! `tandem-node-<id>`; peers connect using that name as the TLS server name, so
//! a completed handshake proves which node answered. Peer traffic is mutual TLS
//! 1.3 trusting only the cluster CA; the admin listener is ordinary HTTPS
//! presenting `[node cert, CA cert]`, so that a joining node that only knows the
//! CA's SHA-256 fingerprint (from its join token) can pin it
//! ([`pinned_ca_client_config`]).
//!
//! Every rustls config is built with an explicit ring [`CryptoProvider`]; this
//! crate never relies on, nor installs, a process-wide default provider.
//!
//! This crate must not depend on tokio, openraft or sled, and does no I/O
//! besides [`write_key_file`]/[`write_public_file`]: callers in async code run
//! key generation and file writes on a blocking thread.
//!
//! Modules:
//! - `ca`: [`ClusterCa`], [`NodeKey`], [`NodeCert`]: generation, CSR signing.
//! - `identity`: [`server_name_for`], [`node_id_from_cert`], [`fingerprint_sha256`].
//! - `files`: [`write_key_file`] (0600) and [`write_public_file`] (0644), atomic.
//! - `tls`: [`peer_server_config`], [`peer_client_config`],
//!   [`admin_server_config`], [`admin_client_config`].
//! - `admin_identity`: [`node_admin_client_config`], the admin client that
//!   also checks the node's identity `tandem-node-<id>`.
//! - `pinning`: [`pinned_ca_client_config`], the pinning verifier, [`PinnedCa`].
//! - `admin`: [`AdminCerts`], the admin listener's certificate resolver: an
//!   administrator-provided certificate for browsers, the cluster chain for
//!   Tandem's own clients (they offer [`CLUSTER_ALPN`]).
//! - `error`: [`CertError`].
//!
//! [`CryptoProvider`]: rustls::crypto::CryptoProvider

mod admin;
mod admin_identity;
mod ca;
mod error;
mod files;
mod identity;
mod pinning;
mod reload;
mod service;
mod tls;

#[cfg(test)]
mod test_support;

pub use admin::{AdminCerts, CLUSTER_ALPN};
pub use admin_identity::node_admin_client_config;
pub use ca::{check_csr, ClusterCa, NodeCert, NodeKey};
pub use error::CertError;
pub use files::{write_key_file, write_public_file};
pub use identity::{
    expires_at, extra_names_of_pem, fingerprint_of_pem, fingerprint_sha256, node_id_from_cert,
    server_name_for, Validity,
};
pub use pinning::{pinned_ca_client_config, PinnedCa};
pub use reload::NodeCerts;
pub use service::service_check_client_config;
pub use tls::{
    admin_client_config, admin_server_config, chain_pem, peer_client_config, peer_server_config,
};
