//! Node certificates renew without a restart: automatically at two thirds
//! of their life ([`renew_when_due`]), or when the administrator asks
//! (`tandem certs renew`). An appliance holds the cluster CA and signs its
//! own new certificate; a witness sends a request to the primary, which
//! signs it for the witness's node id and membership addresses. The new
//! pair is written to disk as one ([`crate::cert_files`]), then every new
//! peer and admin connection presents it; open connections keep theirs.

use std::time::Duration;

use serde_json::json;
use tandem_certs::{extra_names_of_pem, NodeKey, Validity};
use tandem_web::CertificateView;
use tokio_util::sync::CancellationToken;

use crate::errors::Refusal;
use crate::node::{Node, NodeError};
use crate::peer::protocol::ActionRequest;
use crate::util::now_ms;

/// Longest sleep of the renewal task between looks at the certificate (a
/// changed clock is noticed within it).
const RENEW_LOOK: Duration = Duration::from_secs(3600);
/// Wait before the next try after a failed automatic renewal.
const RENEW_RETRY: Duration = Duration::from_secs(600);

impl Node {
    /// This node's certificate as the readiness page lists it.
    pub fn own_certificate(&self) -> CertificateView {
        certificate_view(
            self.cfg.node_id,
            &self.cfg.name,
            Some(self.certs.validity()),
        )
    }

    /// Renews this node's certificate now: a new key and a certificate for
    /// the same names, on disk and presented from the next connection on.
    ///
    /// # Errors
    /// [`NodeError::Refused`] when a witness's primary cannot sign it now;
    /// [`NodeError::Internal`] for signing or file errors (the old
    /// certificate stays in force).
    pub async fn renew_certificate(&self, actor: &str) -> Result<CertificateView, NodeError> {
        let _one = self.renewing.lock().await;
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            NodeError::Internal(format!("renewing the certificate: {what}: {e}"))
        };
        let before = self.certs.validity();
        let key = NodeKey::generate().map_err(|e| internal("new key", &e))?;
        let csr_pem = key.csr_pem().map_err(|e| internal("request", &e))?;
        // A member asks the primary, which records it in the history; the
        // primary, or an appliance whose primary is away, signs itself.
        let primary = self.epoch().primary.filter(|p| *p != self.cfg.node_id);
        let asked = match primary {
            Some(p) => Some(
                self.ask_primary(
                    p,
                    ActionRequest::RenewCertificate {
                        csr_pem: csr_pem.clone(),
                    },
                )
                .await,
            ),
            None => None,
        };
        let cert_pem = match (asked, &self.ca) {
            (Some(Ok(cert)), _) => cert,
            (Some(Err(e)), None) => return Err(e),
            (None, None) => return Err(NodeError::Refused(Refusal::NoPrimary)),
            (asked, Some(ca)) => {
                if let Some(Err(e)) = asked {
                    tracing::warn!(error = %e.message(), "the primary did not sign the renewal; signing with this node's CA key");
                }
                let names = extra_names_of_pem(&self.certs.cert_pem())
                    .map_err(|e| internal("reading its names", &e))?;
                ca.sign_csr(&csr_pem, self.cfg.node_id, &names)
                    .map_err(|e| internal("signing", &e))?
            }
        };
        let key_pem = key.key_pem().to_owned();
        // Checked (this node's id, this CA, the key) before it is written.
        self.certs
            .check(&cert_pem, &key_pem)
            .map_err(|e| internal("the new certificate", &e))?;
        let (dir, c, k) = (self.dir.clone(), cert_pem.clone(), key_pem.clone());
        tokio::task::spawn_blocking(move || crate::cert_files::replace_pair(&dir, &c, &k))
            .await
            .map_err(|e| internal("writing", &e))?
            .map_err(|e| internal("writing", &e))?;
        self.certs
            .replace(&cert_pem, &key_pem)
            .map_err(|e| internal("loading", &e))?;
        if let Some(admin) = self.admin_certs.get() {
            let chain = tandem_certs::chain_pem(&cert_pem, &self.ca_pem);
            if let Err(e) = admin.set_cluster(&chain, &key_pem) {
                tracing::error!(error = %e, "the admin listener keeps the old certificate until restart");
            }
        }
        let after = self.certs.validity();
        tracing::info!(
            not_after = after.not_after,
            previous_not_after = before.not_after,
            "node certificate renewed"
        );
        if primary.is_none() {
            let details = json!({
                "node": self.cfg.node_id,
                "not_after_ms": after.not_after.max(0) as u64 * 1000,
                "previous_not_after_ms": before.not_after.max(0) as u64 * 1000,
            });
            self.record("certificate_renewed", actor, details).await;
        }
        Ok(self.own_certificate())
    }

    /// On the primary: signs a member's renewal request, for the node id
    /// its certificate carries and the addresses the membership holds, and
    /// records it in the history.
    pub(crate) async fn sign_peer_renewal(
        &self,
        from: u64,
        csr_pem: &str,
    ) -> Result<String, String> {
        let ca = self
            .ca
            .as_ref()
            .ok_or("this node holds no CA key; ask the primary")?;
        let m = self.metrics();
        let info = m
            .membership_config
            .membership()
            .get_node(&from)
            .cloned()
            .ok_or_else(|| format!("node {from} is not a member"))?;
        let sans = crate::join::sans_for(&info.peer_addr, &info.api_addr)?;
        let cert = ca
            .sign_csr(csr_pem, from, &sans)
            .map_err(|e| format!("bad renewal request: {e}"))?;
        tracing::info!(node = from, "signed a member's renewed certificate");
        let not_after = tandem_certs::Validity::of_pem(&cert).map_or(0, |v| v.not_after);
        let details = json!({ "node": from, "not_after_ms": not_after.max(0) as u64 * 1000 });
        self.record("certificate_renewed", &format!("node {from}"), details)
            .await;
        Ok(cert)
    }
}

/// A certificate as the readiness page lists it.
pub(crate) fn certificate_view(node: u64, name: &str, v: Option<Validity>) -> CertificateView {
    let ms = |s: i64| s.max(0) as u64 * 1000;
    CertificateView {
        node,
        name: name.to_string(),
        not_after_ms: v.map(|v| ms(v.not_after)),
        renew_at_ms: v.map(|v| ms(v.renew_at())),
    }
}

/// Renews this node's certificate when two thirds of its life have passed;
/// runs on every node until `stop`. A failed try (a witness whose primary
/// is away) is tried again later; the certificate is still valid then.
pub(crate) async fn renew_when_due(node: std::sync::Arc<Node>, stop: CancellationToken) {
    loop {
        let now = (now_ms() / 1000) as i64;
        let due = node.certs.validity().renew_at();
        let wait = if now < due {
            Duration::from_secs((due - now) as u64).min(RENEW_LOOK)
        } else {
            match node.renew_certificate("tandem").await {
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e.message(), "automatic certificate renewal failed; trying again later");
                    RENEW_RETRY
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
