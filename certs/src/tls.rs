//! rustls configurations for the peer listener (mutual TLS 1.3) and the admin
//! listener (HTTPS).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertError;

/// Peer traffic: TLS 1.3 only.
pub(crate) const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// Admin listener: browsers and tools may still speak TLS 1.2.
pub(crate) const TLS12_AND_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider of every config this crate builds, passed explicitly so
/// the process-wide default never matters.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server config of the peer listener: TLS 1.3 only, presents `cert_pem` (the
/// node certificate, optionally followed by more chain certificates), and
/// requires a client certificate that chains to the cluster CA `ca_pem`. Any
/// other client (no certificate, another CA, TLS 1.2) fails the handshake.
///
/// The client's node id is then available via
/// [`crate::node_id_from_cert`] on `peer_certificates()[0]`.
///
/// # Errors
///
/// [`CertError::Pem`]/[`CertError::NoCertificate`] for unreadable PEM,
/// [`CertError::Verifier`] if the CA is not a usable trust anchor,
/// [`CertError::Tls`] if rustls rejects the key.
pub fn peer_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, CertError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(ca_pem)?, provider.clone())
            .build()?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    Ok(Arc::new(config))
}

/// Client config for connections to peers: TLS 1.3 only, presents the node
/// certificate, trusts only the cluster CA `ca_pem`. Connect with
/// [`crate::server_name_for`]`(peer_id)` as the server name so the handshake
/// fails unless the peer holds that node's certificate.
///
/// # Errors
///
/// As [`peer_server_config`].
pub fn peer_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, CertError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13_ONLY)?
        .with_root_certificates(root_store(ca_pem)?)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    Ok(Arc::new(config))
}

/// Server config of the HTTPS admin listener: TLS 1.2 and 1.3, no client
/// authentication, ALPN `h2` then `http/1.1`.
///
/// `cert_chain_pem` should be [`chain_pem`]`(node cert, CA cert)`: the CA
/// certificate in the chain is what a joining node pins (see
/// [`crate::pinned_ca_client_config`]).
///
/// # Errors
///
/// As [`peer_server_config`].
pub fn admin_server_config(
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, CertError> {
    crate::AdminCerts::new(cert_chain_pem, key_pem)?.server_config()
}

/// Client config for the admin API (the CLI): TLS 1.3, trusts only the cluster
/// CA `ca_pem`, no client certificate, ALPN [`crate::CLUSTER_ALPN`] then
/// `http/1.1`, so that a listener with an administrator-provided certificate
/// still presents the cluster chain (see [`crate::AdminCerts`]).
///
/// Any member's certificate valid for the address passes; a client that
/// knows which node it calls uses [`crate::node_admin_client_config`].
///
/// # Errors
///
/// [`CertError::Pem`]/[`CertError::NoCertificate`] for unreadable PEM,
/// [`CertError::Tls`] if rustls rejects the configuration.
pub fn admin_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, CertError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13_ONLY)?
        .with_root_certificates(root_store(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(with_cluster_alpn(config)))
}

/// Makes a client offer [`crate::CLUSTER_ALPN`] (then `http/1.1`): it asks
/// the admin listener for the cluster chain.
pub(crate) fn with_cluster_alpn(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![crate::CLUSTER_ALPN.to_vec(), b"http/1.1".to_vec()];
    config
}

/// Concatenates a node certificate and the CA certificate into the chain the
/// admin listener presents.
pub fn chain_pem(cert_pem: &str, ca_pem: &str) -> String {
    let mut chain = String::with_capacity(cert_pem.len() + ca_pem.len() + 1);
    chain.push_str(cert_pem);
    if !chain.ends_with('\n') {
        chain.push('\n');
    }
    chain.push_str(ca_pem);
    chain
}

/// All certificates in `pem`, in order; at least one.
pub(crate) fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem {
            what: "certificate",
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(certs)
}

pub(crate) fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| CertError::Pem {
        what: "private key",
        source,
    })
}

/// A root store holding the certificate(s) of `ca_pem` and nothing else.
pub(crate) fn root_store(ca_pem: &str) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{handshake, Cluster};
    use crate::{node_id_from_cert, server_name_for, ClusterCa, NodeKey};

    #[test]
    fn same_ca_peers_connect_and_learn_each_others_ids() {
        let c = Cluster::new();
        let (client, server) =
            handshake(c.peer_client(1), c.peer_server(2), &server_name_for(2)).unwrap();
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let client_cert = &server.peer_certificates().unwrap()[0];
        assert_eq!(node_id_from_cert(client_cert).unwrap(), 1);
        let server_cert = &client.peer_certificates().unwrap()[0];
        assert_eq!(node_id_from_cert(server_cert).unwrap(), 2);
    }

    #[test]
    fn client_cert_from_another_ca_is_refused_by_server() {
        let c = Cluster::new();
        let other = Cluster::new();
        // The rogue client trusts our CA (so it would accept our server) but
        // holds a certificate from its own CA.
        let node = &other.nodes[0];
        let client = peer_client_config(c.ca.cert_pem(), &node.cert_pem, &node.key_pem).unwrap();
        let err = handshake(client, c.peer_server(2), &server_name_for(2)).unwrap_err();
        assert!(err.server_side, "{err:?}");
        assert!(
            matches!(err.error, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn client_without_certificate_is_refused() {
        let c = Cluster::new();
        let client = admin_client_config(c.ca.cert_pem()).unwrap();
        let err = handshake(client, c.peer_server(2), &server_name_for(2)).unwrap_err();
        assert!(err.server_side, "{err:?}");
        assert!(
            matches!(
                err.error,
                rustls::Error::NoCertificatesPresented
                    | rustls::Error::InvalidCertificate(_)
                    | rustls::Error::PeerMisbehaved(_)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn server_from_another_ca_is_refused_by_client() {
        let c = Cluster::new();
        let other = Cluster::new();
        let node = &other.nodes[1];
        // The rogue server would even accept our client.
        let server = peer_server_config(c.ca.cert_pem(), &node.cert_pem, &node.key_pem).unwrap();
        let err = handshake(c.peer_client(1), server, &server_name_for(2)).unwrap_err();
        assert!(!err.server_side, "{err:?}");
        // Both test CAs share a subject name, so webpki finds a candidate
        // issuer and rejects its signature; with distinct names the issuer is
        // unknown. Either way the certificate is refused.
        assert!(
            matches!(
                err.error,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn server_name_selects_exactly_one_node() {
        let c = Cluster::new();
        handshake(c.peer_client(1), c.peer_server(2), &server_name_for(2)).unwrap();
        // Node 3 answers where node 2 was expected.
        let err = handshake(c.peer_client(1), c.peer_server(3), &server_name_for(2)).unwrap_err();
        assert!(!err.server_side, "{err:?}");
        assert!(
            matches!(
                err.error,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn tls12_only_client_is_refused_by_peer_server() {
        let c = Cluster::new();
        let node = &c.nodes[0];
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(root_store(c.ca.cert_pem()).unwrap())
            .with_client_auth_cert(
                certs_from_pem(&node.cert_pem).unwrap(),
                key_from_pem(&node.key_pem).unwrap(),
            )
            .unwrap();
        let err = handshake(Arc::new(client), c.peer_server(2), &server_name_for(2)).unwrap_err();
        assert!(err.server_side, "{err:?}");
        assert!(
            matches!(err.error, rustls::Error::PeerIncompatible(_)),
            "{err:?}"
        );
    }

    #[test]
    fn csr_signed_cert_works_in_a_handshake() {
        let c = Cluster::new();
        let key = NodeKey::generate().unwrap();
        let cert_pem =
            c.ca.sign_csr(&key.csr_pem().unwrap(), 4, &["10.1.2.3".to_string()])
                .unwrap();
        // The joiner as server...
        let server = peer_server_config(c.ca.cert_pem(), &cert_pem, key.key_pem()).unwrap();
        let (_, server_conn) = handshake(c.peer_client(1), server, &server_name_for(4)).unwrap();
        assert_eq!(
            node_id_from_cert(&server_conn.peer_certificates().unwrap()[0]).unwrap(),
            1
        );
        // ...and as client.
        let client = peer_client_config(c.ca.cert_pem(), &cert_pem, key.key_pem()).unwrap();
        let (_, server_conn) = handshake(client, c.peer_server(2), &server_name_for(2)).unwrap();
        assert_eq!(
            node_id_from_cert(&server_conn.peer_certificates().unwrap()[0]).unwrap(),
            4
        );
    }

    #[test]
    fn admin_listener_negotiates_alpn_and_is_trusted_by_admin_client() {
        let c = Cluster::new();
        let node = &c.nodes[0];
        let server =
            admin_server_config(&chain_pem(&node.cert_pem, c.ca.cert_pem()), &node.key_pem)
                .unwrap();
        let mut client = (*admin_client_config(c.ca.cert_pem()).unwrap()).clone();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let (client_conn, server_conn) =
            handshake(Arc::new(client), server.clone(), "127.0.0.1").unwrap();
        assert_eq!(client_conn.alpn_protocol(), Some(&b"h2"[..]));
        assert!(server_conn.peer_certificates().is_none());
        assert_eq!(client_conn.peer_certificates().unwrap().len(), 2);

        // Browsers on TLS 1.2 are still served.
        let tls12 = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(root_store(c.ca.cert_pem()).unwrap())
            .with_no_client_auth();
        let (client_conn, _) = handshake(Arc::new(tls12), server, "tandem-node-1").unwrap();
        assert_eq!(
            client_conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
    }

    #[test]
    fn bad_pem_inputs_are_errors() {
        let ca = ClusterCa::generate("c").unwrap();
        let node = ca.issue_node_cert(1, &[]).unwrap();
        assert!(matches!(
            peer_server_config("", &node.cert_pem, &node.key_pem),
            Err(CertError::NoCertificate)
        ));
        assert!(matches!(
            peer_client_config(ca.cert_pem(), &node.cert_pem, "nope"),
            Err(CertError::Pem { .. })
        ));
        // A key that does not match the certificate.
        let other = ca.issue_node_cert(2, &[]).unwrap();
        assert!(peer_server_config(ca.cert_pem(), &node.cert_pem, &other.key_pem).is_err());
    }
}
