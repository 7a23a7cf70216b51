//! The admin listener's certificates: the node's own chain `[node cert, CA
//! cert]`, and optionally an administrator-provided certificate that
//! replaces it for browsers and other HTTPS clients.
//!
//! Tandem's own clients (the CLI, a joining node) trust only the cluster CA
//! or pin it by fingerprint, so they must keep receiving the cluster chain
//! even when an administrator's certificate is installed. They say so by
//! offering the ALPN protocol [`CLUSTER_ALPN`] first; [`AdminCerts`] (a
//! rustls certificate resolver) serves the cluster chain to them and the
//! administrator's certificate to everyone else. Both certificates are public,
//! so which one a client gets is not a security decision.
//!
//! The administrator's certificate can be replaced while the node runs
//! ([`AdminCerts::set_custom`]); connections opened afterwards get the new one.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::tls::{certs_from_pem, key_from_pem, provider, TLS12_AND_13};
use crate::CertError;

/// ALPN protocol id that Tandem's own HTTPS clients offer (before
/// `http/1.1`) to be served the cluster certificate chain.
pub const CLUSTER_ALPN: &[u8] = b"tandem-cluster";

/// Certificate resolver of the admin listener (see the module documentation).
pub struct AdminCerts {
    cluster: RwLock<Arc<CertifiedKey>>,
    custom: RwLock<Option<Arc<CertifiedKey>>>,
}

impl fmt::Debug for AdminCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminCerts")
            .field("custom", &self.custom_installed())
            .finish()
    }
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = certs_from_pem(chain_pem)?;
    let key = key_from_pem(key_pem)?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch,
        other => CertError::Tls(other),
    })?;
    Ok(Arc::new(ck))
}

impl AdminCerts {
    /// The resolver with the node's own chain (`[node cert, CA cert]`, see
    /// [`crate::chain_pem`]) and no administrator certificate.
    ///
    /// # Errors
    /// [`CertError::Pem`], [`CertError::NoCertificate`],
    /// [`CertError::KeyMismatch`] or [`CertError::Tls`] for an unusable key.
    pub fn new(cluster_chain_pem: &str, key_pem: &str) -> Result<Arc<Self>, CertError> {
        Ok(Arc::new(Self {
            cluster: RwLock::new(certified_key(cluster_chain_pem, key_pem)?),
            custom: RwLock::new(None),
        }))
    }

    /// Replaces the cluster chain (a renewed node certificate): presented
    /// to Tandem's clients, and to browsers when no custom certificate is
    /// installed, from the next handshake on.
    ///
    /// # Errors
    /// As [`AdminCerts::new`]; nothing changes then.
    pub fn set_cluster(&self, cluster_chain_pem: &str, key_pem: &str) -> Result<(), CertError> {
        let ck = certified_key(cluster_chain_pem, key_pem)?;
        *self.cluster.write().unwrap_or_else(PoisonError::into_inner) = ck;
        Ok(())
    }

    /// Checks an administrator-provided chain (leaf first) and key, then
    /// serves it to every client that does not offer [`CLUSTER_ALPN`]. On
    /// error nothing changes.
    ///
    /// # Errors
    /// As [`AdminCerts::new`]: unreadable PEM, no certificate, a key that is
    /// not the certificate's.
    pub fn set_custom(&self, chain_pem: &str, key_pem: &str) -> Result<(), CertError> {
        let ck = certified_key(chain_pem, key_pem)?;
        *self.custom.write().unwrap_or_else(PoisonError::into_inner) = Some(ck);
        Ok(())
    }

    /// Whether an administrator certificate is installed.
    pub fn custom_installed(&self) -> bool {
        self.custom
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The server config of the admin listener over this resolver: TLS 1.2
    /// and 1.3, no client authentication, ALPN `h2` then `http/1.1`.
    ///
    /// # Errors
    /// [`CertError::Tls`] if rustls rejects the protocol versions.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, CertError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS12_AND_13)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for AdminCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let tandem_client = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == CLUSTER_ALPN));
        if !tandem_client {
            // Clone the Arc out so the lock is not held during the handshake.
            let custom = self
                .custom
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(ck) = custom {
                return Some(ck);
            }
        }
        Some(
            self.cluster
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{handshake, Cluster};
    use crate::{admin_client_config, chain_pem, fingerprint_sha256, ClusterCa};

    /// A browser-like client trusting only `ca_pem`, offering h2 and http/1.1.
    fn browser(ca_pem: &str) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs_from_pem(ca_pem).unwrap() {
            roots.add(c).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    #[test]
    fn custom_certificate_for_browsers_cluster_chain_for_tandem_clients() {
        let c = Cluster::new();
        let node = &c.nodes[0];
        let certs =
            AdminCerts::new(&chain_pem(&node.cert_pem, c.ca.cert_pem()), &node.key_pem).unwrap();
        let server = certs.server_config().unwrap();
        // Without a custom certificate everyone gets the cluster chain.
        handshake(browser(c.ca.cert_pem()), server.clone(), "127.0.0.1").unwrap();

        let other = ClusterCa::generate("admin").unwrap();
        let admin = other.issue_node_cert(9, &["127.0.0.1".into()]).unwrap();
        certs.set_custom(&admin.cert_pem, &admin.key_pem).unwrap();
        assert!(certs.custom_installed());
        let (client, _) =
            handshake(browser(other.cert_pem()), server.clone(), "127.0.0.1").unwrap();
        let leaf = &client.peer_certificates().unwrap()[0];
        let want = certs_from_pem(&admin.cert_pem).unwrap();
        assert_eq!(fingerprint_sha256(leaf), fingerprint_sha256(&want[0]));
        // A browser trusting only the cluster CA now fails...
        assert!(handshake(browser(c.ca.cert_pem()), server.clone(), "127.0.0.1").is_err());
        // ...while the CLI's config still gets the cluster chain.
        let (client, _) = handshake(
            admin_client_config(c.ca.cert_pem()).unwrap(),
            server,
            "127.0.0.1",
        )
        .unwrap();
        assert_eq!(client.peer_certificates().unwrap().len(), 2);
    }

    #[test]
    fn mismatched_or_bad_custom_certificate_is_refused_and_changes_nothing() {
        let c = Cluster::new();
        let node = &c.nodes[0];
        let certs =
            AdminCerts::new(&chain_pem(&node.cert_pem, c.ca.cert_pem()), &node.key_pem).unwrap();
        let other = ClusterCa::generate("admin").unwrap();
        let a = other.issue_node_cert(8, &["127.0.0.1".into()]).unwrap();
        let b = other.issue_node_cert(9, &["127.0.0.1".into()]).unwrap();
        assert!(matches!(
            certs.set_custom(&a.cert_pem, &b.key_pem),
            Err(CertError::KeyMismatch)
        ));
        assert!(matches!(
            certs.set_custom("", &a.key_pem),
            Err(CertError::NoCertificate)
        ));
        assert!(certs.set_custom(&a.cert_pem, "not a key").is_err());
        assert!(!certs.custom_installed());
    }
}
