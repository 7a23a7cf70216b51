//! Node identities and fingerprints: how a certificate names a node and how a
//! certificate is pinned.

use base64::Engine as _;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertError;

/// Prefix of a node's common name and DNS SAN; the node id follows in decimal.
pub(crate) const NODE_NAME_PREFIX: &str = "tandem-node-";

/// The TLS server name (and certificate CN and DNS SAN) of node `node_id`:
/// `tandem-node-<id>`.
///
/// Peers connect with this server name, so a completed handshake proves that
/// the answering node holds the certificate the cluster CA issued to that id.
pub fn server_name_for(node_id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{node_id}")
}

/// SHA-256 of `der`, as 64 lowercase hexadecimal digits.
///
/// Applied to a CA certificate's DER this is the fingerprint carried by join
/// tokens and checked by [`crate::pinned_ca_client_config`].
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// The fingerprint ([`fingerprint_sha256`]) of the first certificate in `pem`.
///
/// # Errors
///
/// [`CertError::Pem`] or [`CertError::NoCertificate`] if `pem` holds no
/// readable certificate.
pub fn fingerprint_of_pem(pem: &str) -> Result<String, CertError> {
    let certs = crate::tls::certs_from_pem(pem)?;
    Ok(fingerprint_sha256(certs[0].as_ref()))
}

/// When the first certificate in `pem` expires, in seconds since the Unix epoch.
///
/// # Errors
///
/// [`CertError::Pem`]/[`CertError::NoCertificate`] for unreadable PEM,
/// [`CertError::InvalidCertificate`] if it is not X.509.
pub fn expires_at(pem: &str) -> Result<i64, CertError> {
    let certs = crate::tls::certs_from_pem(pem)?;
    let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).map_err(|e| {
        CertError::InvalidCertificate {
            reason: e.to_string(),
        }
    })?;
    Ok(cert.validity().not_after.timestamp())
}

/// When a certificate starts and stops being valid, in seconds since the
/// Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before.
    pub not_before: i64,
    /// Not valid after.
    pub not_after: i64,
}

impl Validity {
    /// The validity of the certificate `der`.
    ///
    /// # Errors
    /// [`CertError::InvalidCertificate`] if it is not X.509.
    pub fn of_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::InvalidCertificate {
                reason: e.to_string(),
            })?;
        Ok(Self {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The validity of the first certificate in `pem`.
    ///
    /// # Errors
    /// As [`expires_at`].
    pub fn of_pem(pem: &str) -> Result<Self, CertError> {
        Self::of_der(crate::tls::certs_from_pem(pem)?[0].as_ref())
    }

    /// When a certificate is renewed: at two thirds of its life.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) / 3 * 2
    }
}

/// The names (DNS and IP SANs) of the first certificate in `pem`, other
/// than its `tandem-node-<id>` name: what a renewal must name again.
///
/// # Errors
/// As [`expires_at`].
pub fn extra_names_of_pem(pem: &str) -> Result<Vec<String>, CertError> {
    use x509_parser::extensions::GeneralName;
    let certs = crate::tls::certs_from_pem(pem)?;
    let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).map_err(|e| {
        CertError::InvalidCertificate {
            reason: e.to_string(),
        }
    })?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) if !d.starts_with(NODE_NAME_PREFIX) => {
                    out.push((*d).to_string());
                }
                GeneralName::IPAddress(b) => match b.len() {
                    4 => out.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => out.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Reads the node id from a certificate whose subject is `CN=tandem-node-<id>`.
///
/// This only parses: it does not verify the certificate. Call it on a peer
/// certificate that rustls has already verified against the cluster CA.
///
/// # Errors
///
/// [`CertError::InvalidCertificate`] if `der` is not an X.509 certificate;
/// [`CertError::NotNodeCertificate`] if the subject does not hold exactly one
/// common name of the canonical form `tandem-node-<decimal id>`.
pub fn node_id_from_cert(der: &[u8]) -> Result<u64, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::InvalidCertificate {
        reason: e.to_string(),
    })?;
    let mut names = cert.subject().iter_common_name();
    let common_name = match (names.next(), names.next()) {
        (Some(cn), None) => cn.as_str().ok().map(str::to_owned),
        _ => None,
    };
    let not_node = || CertError::NotNodeCertificate {
        common_name: common_name.clone(),
    };
    let cn = common_name.as_deref().ok_or_else(not_node)?;
    let id = parse_node_name(cn).ok_or_else(not_node)?;
    Ok(id)
}

/// Parses `tandem-node-<id>`, accepting only the canonical spelling that
/// [`server_name_for`] produces (no sign, no leading zeros).
pub(crate) fn parse_node_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NODE_NAME_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = digits.parse().ok()?;
    (server_name_for(id) == name).then_some(id)
}

/// Encodes a DER certificate as a PEM `CERTIFICATE` block.
pub(crate) fn cert_der_to_pem(der: &[u8]) -> String {
    der_to_pem("CERTIFICATE", der)
}

/// Encodes DER as a PEM block with the given label.
pub(crate) fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    pem.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Decodes a fingerprint given as hex (any case, optional `:` separators).
pub(crate) fn parse_fingerprint(fingerprint: &str) -> Result<[u8; 32], CertError> {
    let cleaned: String = fingerprint.trim().chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&cleaned, &mut out).map_err(|_| CertError::InvalidFingerprint {
        fingerprint: fingerprint.to_owned(),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_pem() {
        let ca = crate::ClusterCa::generate("c1").expect("CA");
        let node = ca.issue_node_cert(3, &[]).expect("cert");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as i64;
        let exp = expires_at(&node.cert_pem).expect("expiry");
        // Node certificates last about two years.
        assert!(
            exp > now + 600 * 86_400 && exp < now + 800 * 86_400,
            "{exp}"
        );
        assert!(expires_at("garbage").is_err());
    }

    #[test]
    fn node_names_round_trip_and_reject_non_canonical() {
        assert_eq!(server_name_for(7), "tandem-node-7");
        assert_eq!(parse_node_name("tandem-node-7"), Some(7));
        assert_eq!(parse_node_name(&server_name_for(u64::MAX)), Some(u64::MAX));
        for bad in [
            "tandem-node-",
            "tandem-node-+7",
            "tandem-node-07",
            "tandem-node-7x",
            "tandem-node--7",
            "Tandem-node-7",
            "tandem-node-18446744073709551616",
            "node-7",
        ] {
            assert_eq!(parse_node_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn fingerprint_is_lowercase_sha256_hex() {
        // SHA-256 of the empty string.
        assert_eq!(
            fingerprint_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let fp = fingerprint_sha256(b"abc");
        assert_eq!(
            parse_fingerprint(&fp).unwrap().to_vec(),
            hex::decode(&fp).unwrap()
        );
        let upper_colons = hex::encode_upper(hex::decode(&fp).unwrap())
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            parse_fingerprint(&upper_colons).unwrap(),
            parse_fingerprint(&fp).unwrap()
        );
        assert!(matches!(
            parse_fingerprint("abcd"),
            Err(CertError::InvalidFingerprint { .. })
        ));
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn node_id_from_garbage_is_an_error() {
        assert!(matches!(
            node_id_from_cert(b"not a certificate"),
            Err(CertError::InvalidCertificate { .. })
        ));
    }
}
