//! A node's certificate and key, replaceable while connections run.
//!
//! The peer listener, the peer client and the admin listener's cluster chain
//! resolve this node's identity through one [`NodeCerts`]: a renewed
//! certificate ([`NodeCerts::replace`]) is presented by every connection
//! made after it, without a restart; connections already open keep the one
//! they started with.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::identity::{node_id_from_cert, Validity};
use crate::tls::{certs_from_pem, key_from_pem, provider, root_store, TLS13_ONLY};
use crate::CertError;

/// This node's certificate, its key and the cluster CA they chain to.
pub struct NodeCerts {
    ca_pem: String,
    node_id: u64,
    current: RwLock<Current>,
}

#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    cert_pem: String,
    validity: Validity,
}

impl fmt::Debug for NodeCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCerts")
            .field("node_id", &self.node_id)
            .field("validity", &self.validity())
            .finish()
    }
}

/// Checks `cert_pem` and `key_pem` belong together and the certificate is
/// one of the cluster CA for node `node_id` (when given).
fn load(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    node_id: Option<u64>,
) -> Result<(Current, u64), CertError> {
    let chain = certs_from_pem(cert_pem)?;
    let id = node_id_from_cert(chain[0].as_ref())?;
    if let Some(want) = node_id {
        if id != want {
            return Err(CertError::InvalidCertificate {
                reason: format!("the certificate is node {id}'s, not node {want}'s"),
            });
        }
    }
    // It must verify against the cluster CA, as a peer would check it.
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(ca_pem)?, provider()).build()?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
        .map_err(|e| CertError::InvalidCertificate {
            reason: format!("not a valid certificate of this cluster's CA: {e}"),
        })?;
    let validity = Validity::of_der(chain[0].as_ref())?;
    let key =
        CertifiedKey::from_der(chain, key_from_pem(key_pem)?, &provider()).map_err(
            |e| match e {
                rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch,
                other => CertError::Tls(other),
            },
        )?;
    Ok((
        Current {
            key: Arc::new(key),
            cert_pem: cert_pem.to_owned(),
            validity,
        },
        id,
    ))
}

impl NodeCerts {
    /// This node's identity from its PEM files.
    ///
    /// # Errors
    /// Unreadable PEM, a key that does not match, or a certificate that is
    /// not a node certificate of the CA `ca_pem`.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, CertError> {
        let (current, node_id) = load(ca_pem, cert_pem, key_pem, None)?;
        Ok(Arc::new(Self {
            ca_pem: ca_pem.to_owned(),
            node_id,
            current: RwLock::new(current),
        }))
    }

    /// Whether `cert_pem` / `key_pem` could replace the current pair (as
    /// [`NodeCerts::replace`] checks), without replacing it.
    ///
    /// # Errors
    /// As [`NodeCerts::replace`].
    pub fn check(&self, cert_pem: &str, key_pem: &str) -> Result<Validity, CertError> {
        Ok(load(&self.ca_pem, cert_pem, key_pem, Some(self.node_id))?
            .0
            .validity)
    }

    /// Presents `cert_pem` / `key_pem` from now on.
    ///
    /// # Errors
    /// As [`NodeCerts::new`], and a certificate of another node id; nothing
    /// changes then.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), CertError> {
        let (next, _) = load(&self.ca_pem, cert_pem, key_pem, Some(self.node_id))?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.current().cert_pem
    }

    /// When the current certificate starts and stops being valid.
    pub fn validity(&self) -> Validity {
        self.current().validity
    }

    /// The node id the certificates name.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Server config of the peer listener: TLS 1.3 only, requires a client
    /// certificate of the cluster CA, presents the current certificate.
    ///
    /// # Errors
    /// [`CertError::Verifier`] if the CA is not a usable trust anchor.
    pub fn peer_server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, CertError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            root_store(&self.ca_pem)?,
            provider.clone(),
        )
        .build()?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(TLS13_ONLY)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(ServerSide(self.clone())));
        Ok(Arc::new(config))
    }

    /// Client config for connections to peers: TLS 1.3 only, trusts only
    /// the cluster CA, presents the current certificate.
    ///
    /// # Errors
    /// As [`NodeCerts::peer_server_config`].
    pub fn peer_client_config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, CertError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS13_ONLY)?
            .with_root_certificates(root_store(&self.ca_pem)?)
            .with_client_cert_resolver(Arc::new(ClientSide(self.clone())));
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct ServerSide(Arc<NodeCerts>);

impl ResolvesServerCert for ServerSide {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key)
    }
}

#[derive(Debug)]
struct ClientSide(Arc<NodeCerts>);

impl ResolvesClientCert for ClientSide {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{handshake, Cluster};
    use crate::{fingerprint_sha256, server_name_for, ClusterCa};

    fn leaf_of(pem: &str) -> String {
        fingerprint_sha256(certs_from_pem(pem).unwrap()[0].as_ref())
    }

    #[test]
    fn a_replaced_certificate_is_presented_by_the_next_connections() {
        let c = Cluster::new();
        let one = &c.nodes[0];
        let certs = NodeCerts::new(c.ca.cert_pem(), &one.cert_pem, &one.key_pem).unwrap();
        assert_eq!(certs.node_id(), 1);
        let server = certs.peer_server_config().unwrap();
        let client = certs.peer_client_config().unwrap();
        let name = server_name_for(1);
        let (cc, _) = handshake(c.peer_client(2), server.clone(), &name).unwrap();
        assert_eq!(
            leaf_of(&one.cert_pem),
            fingerprint_sha256(&cc.peer_certificates().unwrap()[0])
        );

        let renewed = c.ca.issue_node_cert(1, &["127.0.0.1".into()]).unwrap();
        certs.replace(&renewed.cert_pem, &renewed.key_pem).unwrap();
        assert_eq!(certs.cert_pem(), renewed.cert_pem);
        // As a server and as a client, the new certificate from now on.
        let (cc, _) = handshake(c.peer_client(2), server, &name).unwrap();
        assert_eq!(
            leaf_of(&renewed.cert_pem),
            fingerprint_sha256(&cc.peer_certificates().unwrap()[0])
        );
        let (_, sc) = handshake(client, c.peer_server(2), &server_name_for(2)).unwrap();
        assert_eq!(
            leaf_of(&renewed.cert_pem),
            fingerprint_sha256(&sc.peer_certificates().unwrap()[0])
        );
    }

    #[test]
    fn a_wrong_replacement_is_refused_and_changes_nothing() {
        let c = Cluster::new();
        let one = &c.nodes[0];
        let certs = NodeCerts::new(c.ca.cert_pem(), &one.cert_pem, &one.key_pem).unwrap();
        // Another node's certificate, a key that does not match, another CA.
        let two = &c.nodes[1];
        assert!(certs.replace(&two.cert_pem, &two.key_pem).is_err());
        assert!(matches!(
            certs.replace(&one.cert_pem, &two.key_pem),
            Err(CertError::KeyMismatch)
        ));
        let other = ClusterCa::generate("other").unwrap();
        let foreign = other.issue_node_cert(1, &[]).unwrap();
        assert!(certs.replace(&foreign.cert_pem, &foreign.key_pem).is_err());
        assert_eq!(certs.cert_pem(), one.cert_pem);
        let (cc, _) = handshake(
            c.peer_client(2),
            certs.peer_server_config().unwrap(),
            &server_name_for(1),
        )
        .unwrap();
        assert_eq!(
            leaf_of(&one.cert_pem),
            fingerprint_sha256(&cc.peer_certificates().unwrap()[0])
        );
    }

    #[test]
    fn renewal_names_the_same_addresses_and_falls_due_at_two_thirds_of_life() {
        let c = Cluster::new();
        let ca = &c.ca;
        let n = ca
            .issue_node_cert(
                4,
                &[
                    "127.0.0.1".into(),
                    "10.1.2.3".into(),
                    "fw.example".into(),
                    "::1".into(),
                ],
            )
            .unwrap();
        let mut names = crate::extra_names_of_pem(&n.cert_pem).unwrap();
        names.sort();
        assert_eq!(names, ["10.1.2.3", "127.0.0.1", "::1", "fw.example"]);
        let v = crate::Validity::of_pem(&n.cert_pem).unwrap();
        let life = v.not_after - v.not_before;
        assert!(life > 700 * 86_400, "{v:?}");
        let due = v.renew_at();
        assert!(
            (due - v.not_before - life * 2 / 3).abs() <= 2,
            "{v:?} {due}"
        );
    }
}
