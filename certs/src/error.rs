//! The crate's error type.

/// Everything that can go wrong while generating, parsing or using certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused to build a key, certificate or CSR.
    #[error("certificate generation failed")]
    Generate(#[source] rcgen::Error),

    /// The CSR could not be parsed, or its self-signature does not verify.
    #[error("invalid certificate signing request")]
    InvalidCsr(#[source] rcgen::Error),

    /// A PEM document could not be decoded.
    #[error("invalid PEM for {what}")]
    Pem {
        /// What the PEM was supposed to contain ("certificate", "private key").
        what: &'static str,
        /// The decoding error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// A PEM document that should hold certificates holds none.
    #[error("no certificate found in PEM")]
    NoCertificate,

    /// The private key could not be loaded.
    #[error("invalid private key")]
    InvalidKey(#[source] rcgen::Error),

    /// The CA certificate and the CA key do not belong together.
    #[error("the certificate's public key does not match the private key")]
    KeyMismatch,

    /// The certificate given as the cluster CA is not a CA certificate.
    #[error("certificate is not a CA certificate (basicConstraints cA is not set)")]
    NotCa,

    /// A DER certificate could not be parsed.
    #[error("invalid certificate: {reason}")]
    InvalidCertificate {
        /// The parser's explanation.
        reason: String,
    },

    /// A subject alternative name is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}: not an IP address or a DNS name")]
    InvalidSan {
        /// The rejected name, as given.
        san: String,
    },

    /// A subject alternative name would let the certificate pass as another node.
    #[error("subject alternative name {san:?} is reserved for node identities")]
    ReservedSan {
        /// The rejected name, as given.
        san: String,
    },

    /// The certificate's subject is not `CN=tandem-node-<id>`.
    #[error("not a Tandem node certificate (common name {common_name:?})")]
    NotNodeCertificate {
        /// The common name found, if there was exactly one.
        common_name: Option<String>,
    },

    /// A CA fingerprint is not 64 hexadecimal digits.
    #[error("invalid SHA-256 fingerprint {fingerprint:?}: expected 64 hex digits")]
    InvalidFingerprint {
        /// The rejected fingerprint, as given.
        fingerprint: String,
    },

    /// rustls rejected the configuration (bad key, unsupported versions...).
    #[error("TLS configuration rejected")]
    Tls(#[from] rustls::Error),

    /// rustls could not build a certificate verifier (e.g. an unusable trust anchor).
    #[error("TLS certificate verifier could not be built")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}
