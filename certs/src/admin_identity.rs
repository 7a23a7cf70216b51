//! The admin clients' check of a node's identity.
//!
//! A client of the admin API connects to an address (`https://IP:port`) and
//! trusts the cluster CA. The address alone does not say *which* member
//! answers: every node certificate names `localhost`, and on one machine
//! every member's certificate names `127.0.0.1`. So when a client knows the
//! node it calls (the CLI with `--dir` reads the id from `node.toml`; a node
//! probing a member knows the member's id), the server's certificate must be
//! valid for the address *and* for that node's name `tandem-node-<id>`
//! ([`NodeIdentityVerifier`]). The admin listener serves the cluster chain to
//! Tandem's clients even when an administrator installed a certificate of
//! its own (they offer [`crate::CLUSTER_ALPN`]), so the check always sees a
//! node certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::{provider, root_store, with_cluster_alpn, TLS13_ONLY};
use crate::{server_name_for, CertError};

/// Client config for the admin API of node `node_id`: as
/// [`crate::admin_client_config`] (TLS 1.3, only the cluster CA `ca_pem`,
/// ALPN [`crate::CLUSTER_ALPN`]), and the server's certificate must also be
/// valid for `tandem-node-<node_id>`: another member's certificate for the
/// same address is refused.
///
/// # Errors
///
/// [`CertError::Pem`]/[`CertError::NoCertificate`] for unreadable PEM,
/// [`CertError::Verifier`] if the CA is not a usable trust anchor,
/// [`CertError::Tls`] if rustls rejects the configuration.
pub fn node_admin_client_config(
    ca_pem: &str,
    node_id: u64,
) -> Result<Arc<ClientConfig>, CertError> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(root_store(ca_pem)?, provider.clone())
        .build()?;
    let verifier = NodeIdentityVerifier::new(inner, node_id);
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(with_cluster_alpn(config)))
}

/// Verifies a server certificate with `inner` for the name the client
/// connects with, then again for `tandem-node-<id>` (see the module
/// documentation).
#[derive(Debug)]
pub(crate) struct NodeIdentityVerifier {
    inner: Arc<WebPkiServerVerifier>,
    node: ServerName<'static>,
}

impl NodeIdentityVerifier {
    pub(crate) fn new(inner: Arc<WebPkiServerVerifier>, node_id: u64) -> Self {
        // `tandem-node-<decimal>` is always a valid DNS name.
        let node = ServerName::try_from(server_name_for(node_id))
            .expect("tandem-node-<id> is a valid DNS name");
        Self { inner, node }
    }
}

impl ServerCertVerifier for NodeIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.node, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{handshake, Cluster};
    use crate::{admin_client_config, admin_server_config, chain_pem, AdminCerts, ClusterCa};
    use rustls::CertificateError;

    /// The admin listener of a node holding `cert` (chain with the CA).
    fn admin_server(c: &Cluster, cert: &crate::NodeCert) -> Arc<rustls::ServerConfig> {
        admin_server_config(&chain_pem(&cert.cert_pem, c.ca.cert_pem()), &cert.key_pem).unwrap()
    }

    fn not_valid_for_name(err: &rustls::Error) -> bool {
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        )
    }

    #[test]
    fn another_members_certificate_for_the_same_address_is_refused() {
        let c = Cluster::new();
        // Nodes 2 and 3 both hold a certificate naming 10.0.0.2: node 3's
        // was signed for node 2's address.
        let sans = ["10.0.0.2".to_string()];
        let node2 = c.ca.issue_node_cert(2, &sans).unwrap();
        let node3 = c.ca.issue_node_cert(3, &sans).unwrap();

        // The address alone lets node 3 pass for node 2...
        let plain = admin_client_config(c.ca.cert_pem()).unwrap();
        handshake(plain, admin_server(&c, &node3), "10.0.0.2").unwrap();
        // ...a client expecting node 2 refuses it...
        let expect2 = node_admin_client_config(c.ca.cert_pem(), 2).unwrap();
        let err = handshake(expect2.clone(), admin_server(&c, &node3), "10.0.0.2").unwrap_err();
        assert!(!err.server_side, "{err:?}");
        assert!(not_valid_for_name(&err.error), "{err:?}");
        // ...and accepts node 2, as a client expecting node 3 accepts node 3.
        handshake(expect2, admin_server(&c, &node2), "10.0.0.2").unwrap();
        let expect3 = node_admin_client_config(c.ca.cert_pem(), 3).unwrap();
        handshake(expect3, admin_server(&c, &node3), "10.0.0.2").unwrap();
    }

    #[test]
    fn the_address_is_still_checked() {
        let c = Cluster::new();
        let node2 = c.ca.issue_node_cert(2, &["10.0.0.2".to_string()]).unwrap();
        let expect2 = node_admin_client_config(c.ca.cert_pem(), 2).unwrap();
        let err = handshake(expect2, admin_server(&c, &node2), "10.0.0.9").unwrap_err();
        assert!(not_valid_for_name(&err.error), "{err:?}");
    }

    #[test]
    fn another_ca_is_refused() {
        let c = Cluster::new();
        let other = ClusterCa::generate("other").unwrap();
        let expect1 = node_admin_client_config(other.cert_pem(), 1).unwrap();
        let err = handshake(expect1, admin_server(&c, &c.nodes[0]), "127.0.0.1").unwrap_err();
        assert!(
            matches!(err.error, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn the_check_holds_with_an_administrators_certificate() {
        let c = Cluster::new();
        let node = &c.nodes[0];
        let certs =
            AdminCerts::new(&chain_pem(&node.cert_pem, c.ca.cert_pem()), &node.key_pem).unwrap();
        // The administrator's certificate names no node at all.
        let admin = ClusterCa::generate("admin").unwrap();
        let custom = admin
            .issue_node_cert(9, &["127.0.0.1".to_string()])
            .unwrap();
        certs.set_custom(&custom.cert_pem, &custom.key_pem).unwrap();
        let server = certs.server_config().unwrap();
        // Tandem's client still gets node 1's chain, and checks it.
        let expect1 = node_admin_client_config(c.ca.cert_pem(), 1).unwrap();
        handshake(expect1, server.clone(), "127.0.0.1").unwrap();
        let expect2 = node_admin_client_config(c.ca.cert_pem(), 2).unwrap();
        let err = handshake(expect2, server, "127.0.0.1").unwrap_err();
        assert!(not_valid_for_name(&err.error), "{err:?}");
    }
}
