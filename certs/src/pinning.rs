//! The pinning verifier: trust a CA known only by its SHA-256 fingerprint.
//!
//! A joining node holds a join token with the CA fingerprint but not the CA
//! certificate. It connects to an existing node's admin listener, which
//! presents `[node cert, CA cert]`. The verifier accepts the server only if a
//! certificate in the chain has exactly the pinned fingerprint *and* the
//! end-entity certificate verifies against it (signature, validity, server
//! name) — so presenting the (public) CA certificate alone proves nothing.
//! Once accepted, the CA certificate is handed to the caller through
//! [`PinnedCa`], which is how the joiner learns its cluster CA.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::{cert_der_to_pem, fingerprint_sha256, parse_fingerprint};
use crate::tls::provider;
use crate::CertError;

type Matched = Arc<Mutex<Option<CertificateDer<'static>>>>;

/// Builds a TLS 1.3 client config (no client certificate) that trusts a server
/// only through the CA with SHA-256 fingerprint `ca_fingerprint_hex` (64 hex
/// digits, any case, `:` separators allowed), and a [`PinnedCa`] handle that
/// yields that CA certificate once a handshake has accepted a server.
///
/// The server must send the CA certificate in its chain (the admin listener
/// does) and its end-entity certificate must be valid for the server name the
/// caller connects with (e.g. the address from the join token).
///
/// # Errors
///
/// [`CertError::InvalidFingerprint`] if the fingerprint is not 32 bytes of hex;
/// [`CertError::Tls`] if rustls rejects the configuration.
pub fn pinned_ca_client_config(
    ca_fingerprint_hex: &str,
) -> Result<(Arc<ClientConfig>, PinnedCa), CertError> {
    let fingerprint = parse_fingerprint(ca_fingerprint_hex)?;
    let provider = provider();
    let matched = Matched::default();
    let verifier = PinningVerifier {
        fingerprint,
        provider: provider.clone(),
        matched: matched.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok((
        Arc::new(crate::tls::with_cluster_alpn(config)),
        PinnedCa { matched },
    ))
}

/// Handle to the CA certificate accepted by a [`pinned_ca_client_config`]
/// verifier. Empty until a handshake has verified a server.
#[derive(Clone, Debug)]
pub struct PinnedCa {
    matched: Matched,
}

impl PinnedCa {
    /// The accepted CA certificate, DER.
    pub fn ca_der(&self) -> Option<Vec<u8>> {
        self.lock().as_ref().map(|der| der.to_vec())
    }

    /// The accepted CA certificate, PEM, ready for
    /// [`crate::write_public_file`] and [`crate::peer_client_config`].
    pub fn ca_pem(&self) -> Option<String> {
        self.lock().as_ref().map(|der| cert_der_to_pem(der))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CertificateDer<'static>>> {
        // The guarded value is a plain Option written in one assignment, so a
        // panic elsewhere cannot leave it half-updated.
        self.matched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pinning verifier (see the module documentation).
#[derive(Debug)]
struct PinningVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
    matched: Matched,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = hex::encode(self.fingerprint);
        let Some(ca) = intermediates
            .iter()
            .find(|cert| fingerprint_sha256(cert) == pinned)
        else {
            return Err(CertificateError::UnknownIssuer.into());
        };

        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|cert| *cert != ca)
            .cloned()
            .collect();
        let verified =
            webpki.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)?;

        *self.matched.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(ca.clone().into_owned());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{handshake, Cluster};
    use crate::{admin_server_config, chain_pem, server_name_for, ClusterCa};

    fn admin_server(c: &Cluster, id: usize) -> Arc<rustls::ServerConfig> {
        let n = &c.nodes[id - 1];
        admin_server_config(&chain_pem(&n.cert_pem, c.ca.cert_pem()), &n.key_pem).unwrap()
    }

    #[test]
    fn right_fingerprint_is_accepted_and_yields_the_ca() {
        let c = Cluster::new();
        let (client, pinned) = pinned_ca_client_config(&c.ca.fingerprint()).unwrap();
        assert_eq!(pinned.ca_pem(), None);
        handshake(client.clone(), admin_server(&c, 1), "127.0.0.1").unwrap();
        assert_eq!(pinned.ca_der().unwrap(), c.ca.cert_der());
        let pem = pinned.ca_pem().unwrap();
        assert_eq!(
            fingerprint_sha256(&crate::tls::certs_from_pem(&pem).unwrap()[0]),
            c.ca.fingerprint()
        );
        // The learned PEM is directly usable as the cluster CA.
        handshake(
            crate::peer_client_config(&pem, &c.nodes[0].cert_pem, &c.nodes[0].key_pem).unwrap(),
            c.peer_server(2),
            &server_name_for(2),
        )
        .unwrap();
        // And the same config verifies other nodes of the cluster by name.
        handshake(client, admin_server(&c, 2), &server_name_for(2)).unwrap();
    }

    #[test]
    fn wrong_fingerprint_is_refused() {
        let c = Cluster::new();
        let other = ClusterCa::generate("other").unwrap();
        let (client, pinned) = pinned_ca_client_config(&other.fingerprint()).unwrap();
        let err = handshake(client, admin_server(&c, 1), "127.0.0.1").unwrap_err();
        assert!(!err.server_side, "{err:?}");
        assert!(
            matches!(
                err.error,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{err:?}"
        );
        assert_eq!(pinned.ca_pem(), None);
    }

    #[test]
    fn pinned_ca_in_chain_does_not_vouch_for_a_foreign_leaf() {
        // An impostor sends the real (public) CA certificate after its own leaf.
        let c = Cluster::new();
        let rogue = Cluster::new();
        let leaf = &rogue.nodes[0];
        let server =
            admin_server_config(&chain_pem(&leaf.cert_pem, c.ca.cert_pem()), &leaf.key_pem)
                .unwrap();
        let (client, pinned) = pinned_ca_client_config(&c.ca.fingerprint()).unwrap();
        let err = handshake(client, server, "127.0.0.1").unwrap_err();
        assert!(!err.server_side, "{err:?}");
        assert!(
            matches!(err.error, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
        assert_eq!(pinned.ca_pem(), None);
    }

    #[test]
    fn chain_without_the_ca_and_wrong_name_are_refused() {
        let c = Cluster::new();
        let n = &c.nodes[0];
        let leaf_only = admin_server_config(&n.cert_pem, &n.key_pem).unwrap();
        let (client, _) = pinned_ca_client_config(&c.ca.fingerprint()).unwrap();
        assert!(handshake(client.clone(), leaf_only, "127.0.0.1").is_err());

        let err = handshake(client, admin_server(&c, 1), "10.9.9.9").unwrap_err();
        assert!(
            matches!(
                err.error,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_fingerprint_is_an_error() {
        assert!(matches!(
            pinned_ca_client_config("deadbeef"),
            Err(CertError::InvalidFingerprint { .. })
        ));
        let c = ClusterCa::generate("c").unwrap();
        assert!(pinned_ca_client_config(&c.fingerprint().to_uppercase()).is_ok());
    }
}
