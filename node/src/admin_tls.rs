//! The admin listener's certificate: the node certificate by default, or an
//! administrator-provided one (`[admin_tls]` in `node.toml`, or `tandem run
//! --admin-cert --admin-key`), read at start and again on SIGHUP.
//!
//! The resolver that picks the certificate per connection is
//! [`tandem_certs::AdminCerts`]; this module reads the files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tandem_certs::AdminCerts;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminTlsConfig, DataDir};

/// `cfg` with relative paths taken relative to the data directory.
pub fn resolve(dir: &DataDir, cfg: &AdminTlsConfig) -> AdminTlsConfig {
    let abs = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.root().join(p)
        }
    };
    AdminTlsConfig {
        cert: abs(&cfg.cert),
        key: abs(&cfg.key),
    }
}

/// Reads the administrator's certificate chain and key and installs them in
/// `certs`. On error nothing changes.
///
/// # Errors
/// One line naming the file and what is wrong with it: missing or
/// unreadable, not PEM, no certificate, or a key that is not the
/// certificate's.
pub fn install(certs: &AdminCerts, paths: &AdminTlsConfig) -> anyhow::Result<()> {
    let read = |what: &str, p: &Path| {
        std::fs::read_to_string(p)
            .with_context(|| format!("admin TLS {what} {}: cannot read", p.display()))
    };
    let chain = read("certificate", &paths.cert)?;
    let key = read("key", &paths.key)?;
    certs.set_custom(&chain, &key).with_context(|| {
        format!(
            "admin TLS certificate {} with key {}",
            paths.cert.display(),
            paths.key.display()
        )
    })
}

/// Re-reads the administrator's certificate on every SIGHUP until `stop`;
/// a bad pair is logged and the running certificate kept.
pub async fn reload_on_sighup(
    certs: Arc<AdminCerts>,
    paths: AdminTlsConfig,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: the admin certificate is not reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                let (c, p) = (certs.clone(), paths.clone());
                match tokio::task::spawn_blocking(move || install(&c, &p)).await {
                    Ok(Ok(())) => tracing::info!(cert = %paths.cert.display(), "admin TLS certificate reloaded"),
                    Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "admin TLS certificate not reloaded; keeping the running one"),
                    Err(e) => tracing::error!(error = %e, "admin TLS reload task failed"),
                }
            }
        }
    }
}
