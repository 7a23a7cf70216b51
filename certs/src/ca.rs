//! The cluster CA and the node keys and certificates it issues.

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{fingerprint_sha256, parse_node_name, server_name_for, NODE_NAME_PREFIX};
use crate::CertError;

/// How long the cluster CA is valid (about ten years).
const CA_VALIDITY: Duration = Duration::days(3653);
/// How long a node certificate is valid (about two years).
const NODE_VALIDITY: Duration = Duration::days(731);
/// Certificates start being valid this long before they were made, so a peer
/// whose clock lags a little does not reject a fresh certificate.
const BACKDATE: Duration = Duration::hours(1);

/// The cluster's certificate authority: a self-signed ECDSA P-256 certificate
/// and its private key. It signs every node certificate of one cluster.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new CA for the cluster `cluster_id`: fresh ECDSA P-256 key,
    /// subject `CN=Tandem cluster CA <cluster_id>`, valid about ten years, allowed
    /// to sign end-entity certificates only (path length 0).
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if key generation or signing fails.
    pub fn generate(cluster_id: &str) -> Result<Self, CertError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CertError::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("Tandem cluster CA {cluster_id}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(CertError::Generate)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads a CA saved with [`cert_pem`](Self::cert_pem) and
    /// [`key_pem`](Self::key_pem).
    ///
    /// # Errors
    ///
    /// [`CertError::Pem`]/[`CertError::InvalidKey`]/[`CertError::InvalidCertificate`]
    /// if either document does not parse, [`CertError::NotCa`] if the certificate
    /// is not a CA, [`CertError::KeyMismatch`] if the key is not the
    /// certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|source| {
            CertError::Pem {
                what: "CA certificate",
                source,
            }
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(CertError::InvalidKey)?;
        let (_, cert) =
            X509Certificate::from_der(&cert_der).map_err(|e| CertError::InvalidCertificate {
                reason: e.to_string(),
            })?;
        if !cert.is_ca() {
            return Err(CertError::NotCa);
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::KeyMismatch);
        }
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            key,
        })
    }

    /// The CA certificate, PEM. Public: every node and CLI trusts it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Secret: store it with
    /// [`crate::write_key_file`].
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex: the value a join
    /// token carries.
    pub fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.cert_der)
    }

    /// Issues a certificate for node `node_id` with a freshly generated key
    /// (used for the first node, whose CA is local).
    ///
    /// See [`sign_csr`](Self::sign_csr) for the certificate's contents.
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidSan`]/[`CertError::ReservedSan`] for a bad entry in
    /// `sans`; [`CertError::Generate`] if generation or signing fails.
    pub fn issue_node_cert(&self, node_id: u64, sans: &[String]) -> Result<NodeCert, CertError> {
        let key = NodeKey::generate()?;
        let cert_pem = self.sign_public_key(&key.key, node_id, sans)?;
        Ok(NodeCert {
            cert_pem,
            key_pem: key.key_pem().to_owned(),
        })
    }

    /// Signs a joining node's CSR (see [`NodeKey::csr_pem`]) and returns the
    /// certificate, PEM.
    ///
    /// Only the CSR's public key (and its proof of possession) is used; the CA
    /// decides everything else: subject `CN=tandem-node-<id>`; SANs: the DNS name
    /// `tandem-node-<id>` (the server name peers connect with), then each entry
    /// of `sans`, as an IP SAN if it parses as an IP address and otherwise as a
    /// DNS name; key usage digitalSignature; extended key usages serverAuth and
    /// clientAuth; not a CA; valid about two years; random serial.
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidCsr`] if the CSR does not parse or its signature does
    /// not verify; [`CertError::InvalidSan`] if an entry of `sans` is neither an
    /// IP address nor a valid DNS name; [`CertError::ReservedSan`] if it is
    /// another node's `tandem-node-<id>` name; [`CertError::Generate`] if
    /// signing fails.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: u64,
        sans: &[String],
    ) -> Result<String, CertError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(CertError::InvalidCsr)?;
        self.sign_public_key(&csr.public_key, node_id, sans)
    }

    fn sign_public_key(
        &self,
        public_key: &impl PublicKeyData,
        node_id: u64,
        sans: &[String],
    ) -> Result<String, CertError> {
        let params = node_params(node_id, sans)?;
        let issuer =
            Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(CertError::Generate)?;
        let cert = params
            .signed_by(public_key, &issuer)
            .map_err(CertError::Generate)?;
        Ok(cert.pem())
    }
}

/// Checks that `csr_pem` is a well-formed certificate signing request with a
/// valid self-signature, without signing anything: lets a caller refuse a bad
/// request before it spends anything (a one-time join token) on it.
///
/// # Errors
///
/// [`CertError::InvalidCsr`] if the CSR does not parse or verify.
pub fn check_csr(csr_pem: &str) -> Result<(), CertError> {
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(CertError::InvalidCsr)?;
    Ok(())
}

/// Certificate parameters of node `node_id`'s certificate.
fn node_params(node_id: u64, sans: &[String]) -> Result<CertificateParams, CertError> {
    let own_name = server_name_for(node_id);
    let mut subject_alt_names = vec![dns_san(&own_name)?];
    for san in sans {
        let entry = match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // A name of the reserved form would let this node answer as
                // another node; the node's own name is already present.
                let lower = san.to_ascii_lowercase();
                if lower.starts_with(NODE_NAME_PREFIX) && parse_node_name(&lower) != Some(node_id) {
                    return Err(CertError::ReservedSan { san: san.clone() });
                }
                dns_san(san)?
            }
        };
        if !subject_alt_names.contains(&entry) {
            subject_alt_names.push(entry);
        }
    }

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, own_name);
    params.distinguished_name = dn;
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + NODE_VALIDITY;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A DNS SAN, validated with the same rules rustls applies to server names.
fn dns_san(name: &str) -> Result<SanType, CertError> {
    let invalid = || CertError::InvalidSan {
        san: name.to_owned(),
    };
    rustls_pki_types::DnsName::try_from(name).map_err(|_| invalid())?;
    Ok(SanType::DnsName(name.try_into().map_err(|_| invalid())?))
}

/// A random positive 128-bit serial number, so that re-issuing for the same key
/// never repeats a serial (rcgen's default derives it from the public key).
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CertError::Generate(rcgen::Error::RingUnspecified))?;
    // Positive (high bit clear) and of fixed length (next bit set).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A node's private key (ECDSA P-256). A joining node generates one, sends
/// [`csr_pem`](Self::csr_pem) to the cluster and keeps the key.
pub struct NodeKey {
    key: KeyPair,
    key_pem: String,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Generates a fresh ECDSA P-256 key.
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if the system random source fails.
    pub fn generate() -> Result<Self, CertError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CertError::Generate)?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            key,
        })
    }

    /// Loads a key saved with [`key_pem`](Self::key_pem).
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidKey`] if `key_pem` is not a supported private key.
    pub fn from_pem(key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(CertError::InvalidKey)?;
        Ok(Self {
            key,
            key_pem: key_pem.to_owned(),
        })
    }

    /// The private key, PKCS#8 PEM. Secret: store it with
    /// [`crate::write_key_file`].
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate signing request for this key. Its subject is a placeholder:
    /// the CA sets the subject and SANs itself in [`ClusterCa::sign_csr`].
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if signing the request fails.
    pub fn csr_pem(&self) -> Result<String, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "tandem node certificate request");
        params.distinguished_name = dn;
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(CertError::Generate)
    }
}

/// A node certificate with its private key, both PEM.
#[derive(Clone)]
pub struct NodeCert {
    /// The node certificate, signed by the cluster CA.
    pub cert_pem: String,
    /// The node's private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::node_id_from_cert;

    fn der_of(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn sans(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ca_is_a_self_signed_p256_ca_for_ten_years() {
        let ca = ClusterCa::generate("c-42").unwrap();
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        assert!(cert.is_ca());
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "Tandem cluster CA c-42"
        );
        assert_eq!(cert.subject(), cert.issuer());
        cert.verify_signature(None).unwrap();
        let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            as f64
            / (365.25 * 86400.0);
        assert!((9.9..10.1).contains(&years), "{years}");
        assert!(cert.validity().is_valid());
        assert_eq!(
            cert.public_key()
                .algorithm
                .parameters
                .as_ref()
                .unwrap()
                .as_oid()
                .unwrap(),
            x509_parser::oid_registry::OID_EC_P256
        );
    }

    #[test]
    fn ca_pem_round_trip_keeps_fingerprint_and_signs() {
        let ca = ClusterCa::generate("c").unwrap();
        let fp = ca.fingerprint();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, fp.to_lowercase());
        assert_eq!(fp, ca.fingerprint(), "stable");
        assert_eq!(fp, fingerprint_sha256(&der_of(ca.cert_pem())));

        let loaded = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.fingerprint(), fp);
        let node = loaded.issue_node_cert(3, &[]).unwrap();
        let node_der = der_of(&node.cert_pem);
        let (_, cert) = X509Certificate::from_der(&node_der).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
    }

    #[test]
    fn from_pem_rejects_mismatched_key_and_non_ca() {
        let ca = ClusterCa::generate("a").unwrap();
        let other = ClusterCa::generate("b").unwrap();
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), other.key_pem()),
            Err(CertError::KeyMismatch)
        ));
        let node = ca.issue_node_cert(1, &[]).unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&node.cert_pem, &node.key_pem),
            Err(CertError::NotCa)
        ));
        assert!(matches!(
            ClusterCa::from_pem("garbage", ca.key_pem()),
            Err(CertError::Pem { .. })
        ));
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), "garbage"),
            Err(CertError::InvalidKey(_))
        ));
    }

    #[test]
    fn node_cert_has_identity_sans_and_usages() {
        let ca = ClusterCa::generate("c").unwrap();
        let node = ca
            .issue_node_cert(
                7,
                &sans(&[
                    "10.0.0.5",
                    "node7.example.com",
                    "::1",
                    "tandem-node-7",
                    "10.0.0.5",
                ]),
            )
            .unwrap();
        let der = der_of(&node.cert_pem);
        assert_eq!(node_id_from_cert(&der).unwrap(), 7);

        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    let o: [u8; 4] = (*b).try_into().unwrap();
                    format!("ip:{}", Ipv4Addr::from(o))
                }
                GeneralName::IPAddress(b) => {
                    let o: [u8; 16] = (*b).try_into().unwrap();
                    format!("ip:{}", Ipv6Addr::from(o))
                }
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "dns:tandem-node-7",
                "ip:10.0.0.5",
                "dns:node7.example.com",
                "ip:::1"
            ]
        );

        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            as f64
            / (365.25 * 86400.0);
        assert!((1.9..2.1).contains(&years), "{years}");

        // Fresh key and random serial on every issue.
        let again = ca.issue_node_cert(7, &[]).unwrap();
        assert_ne!(again.key_pem, node.key_pem);
        let again_der = der_of(&again.cert_pem);
        let (_, again_cert) = X509Certificate::from_der(&again_der).unwrap();
        assert_ne!(again_cert.serial, cert.serial);
    }

    #[test]
    fn invalid_and_reserved_sans_are_rejected() {
        let ca = ClusterCa::generate("c").unwrap();
        for bad in [
            "",
            "bad name",
            "*.example.com",
            "exa mple",
            "-x.example",
            "héllo",
        ] {
            assert!(
                matches!(
                    ca.issue_node_cert(1, &sans(&[bad])),
                    Err(CertError::InvalidSan { .. })
                ),
                "{bad:?}"
            );
        }
        for reserved in [
            "tandem-node-2",
            "TANDEM-NODE-2",
            "tandem-node-01",
            "tandem-node-x",
        ] {
            assert!(
                matches!(
                    ca.issue_node_cert(1, &sans(&[reserved])),
                    Err(CertError::ReservedSan { .. })
                ),
                "{reserved:?}"
            );
        }
    }

    #[test]
    fn sign_csr_ignores_requested_subject_and_sans() {
        let ca = ClusterCa::generate("c").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["tandem-node-1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "tandem-node-1");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();

        let cert_pem = ca.sign_csr(&csr, 5, &sans(&["192.168.1.5"])).unwrap();
        let der = der_of(&cert_pem);
        assert_eq!(node_id_from_cert(&der).unwrap(), 5);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(sans.len(), 2);
        assert!(sans.contains(&GeneralName::DNSName("tandem-node-5")));
        assert!(!sans.contains(&GeneralName::DNSName("tandem-node-1")));
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn sign_csr_rejects_garbage_and_forged_csrs() {
        let ca = ClusterCa::generate("c").unwrap();
        assert!(matches!(
            ca.sign_csr("not a csr", 1, &[]),
            Err(CertError::InvalidCsr(_))
        ));
        // Flip a byte in the CSR's signature: proof of possession fails.
        let csr_pem = NodeKey::generate().unwrap().csr_pem().unwrap();
        let mut der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let forged = crate::identity::der_to_pem("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            ca.sign_csr(&forged, 1, &[]),
            Err(CertError::InvalidCsr(_))
        ));
        // The untouched CSR is accepted.
        ca.sign_csr(&csr_pem, 1, &[]).unwrap();
    }

    #[test]
    fn node_key_pem_round_trip() {
        let key = NodeKey::generate().unwrap();
        let loaded = NodeKey::from_pem(key.key_pem()).unwrap();
        assert_eq!(loaded.key.public_key_raw(), key.key.public_key_raw());
        assert!(key.csr_pem().unwrap().contains("BEGIN CERTIFICATE REQUEST"));
        assert!(!format!("{key:?}{:?}", ClusterCa::generate("c").unwrap()).contains("PRIVATE"));
    }
}
