//! *Set up relationship* from a running standalone node: join a primary's
//! cluster from the web UI, without the shell.
//!
//! Joining changes the node's identity (cluster CA, certificate, node id,
//! cluster id, possibly its kind), which every part of a running node holds:
//! the peer listener's and client's TLS configs, the handshake identity, the
//! admin certificate, the Raft id. Rather than making each of them swappable,
//! the node **restarts itself in place**: the join is asked for while the
//! node runs (so a refusal changes nothing), the grant is written to
//! `DIR/join-pending.json` (0600: it holds the new key), and `run` stops the
//! node in its usual order, applies the file (identity files, `node.toml`,
//! an empty store) and starts again in the same process. A crash in between
//! is harmless: `run` applies a pending file before anything else at start.

use serde::{Deserialize, Serialize};
use tandem_certs::NodeKey;
use tandem_storage::NodeKind;
use tandem_web::{JoinRequest, JoinResponse, SetupOutcome, SetupRequest};

use crate::bootstrap::{request_join, JoinCallError};
use crate::config::DataDir;
use crate::errors::{Peer, Refusal, Remedy};
use crate::join::{host_of, ParsedToken};
use crate::node::{Node, NodeError};
use crate::roles::Role;

/// File name, in the data directory, of a join granted but not yet applied.
pub const JOIN_PENDING_FILE: &str = "join-pending.json";
/// Format of [`JOIN_PENDING_FILE`].
const JOIN_PENDING_FORMAT: u32 = 1;

/// A granted join waiting to be applied to the data directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingJoin {
    format: u32,
    /// What the cluster sent (certificate, CA, node id, cluster id).
    grant: JoinResponse,
    /// The key the certificate was issued for.
    key_pem: String,
    /// Appliance or witness.
    kind: NodeKind,
    /// The reverse connection address the cluster dials.
    peer_advertise: String,
}

fn pending_path(dir: &DataDir) -> std::path::PathBuf {
    dir.root().join(JOIN_PENDING_FILE)
}

/// Applies a granted join left in `dir` (by [`Node::setup`] just before a
/// restart, or before a crash): writes the new identity, clears the store
/// and rewrites `node.toml`. Returns whether there was one. Idempotent: a
/// crash half-way is finished at the next start.
///
/// # Errors
/// Unreadable pending file or a failed write; the file stays for the next try.
pub fn apply_pending_join(dir: &DataDir) -> anyhow::Result<bool> {
    use anyhow::Context;
    let path = pending_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let p: PendingJoin =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(
        p.format == JOIN_PENDING_FORMAT,
        "{} has format {}, this release reads {JOIN_PENDING_FORMAT}",
        path.display(),
        p.format
    );
    let mut cfg = dir.load()?;
    tandem_certs::write_public_file(dir.ca_cert(), &p.grant.ca_pem).context("writing ca.pem")?;
    match &p.grant.ca_key_pem {
        Some(k) => tandem_certs::write_key_file(dir.ca_key(), k).context("writing ca.key")?,
        None => match std::fs::remove_file(dir.ca_key()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing ca.key (a witness holds none)"),
        },
    }
    tandem_certs::write_public_file(dir.node_cert(), &p.grant.cert_pem)
        .context("writing node.pem")?;
    tandem_certs::write_key_file(dir.node_key(), &p.key_pem).context("writing node.key")?;
    // The store of the standalone node is discarded: the cluster sends
    // everything (by snapshot) once the node runs.
    match std::fs::remove_dir_all(dir.db()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("removing the old store"),
    }
    cfg.node_id = p.grant.node_id;
    cfg.cluster_id = p.grant.cluster_id.clone();
    cfg.kind = p.kind;
    cfg.peer_advertise = p.peer_advertise.clone();
    dir.save(&cfg)?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    tracing::info!(
        node = cfg.node_id,
        cluster = %cfg.cluster_id,
        kind = ?cfg.kind,
        "joined: new identity applied, starting with an empty store"
    );
    Ok(true)
}

/// `host:port` with a non-empty host and a numeric port.
fn valid_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) && host_of(addr).is_some()
}

/// What the checks before a join found.
struct Admissible {
    token: ParsedToken,
    reverse: String,
    config_keys: u64,
    sessions: u64,
}

impl Node {
    /// *Set up relationship* on this standalone node: join the primary's
    /// cluster (see the module documentation). On success the caller's
    /// answer is sent, then the node restarts with its new identity.
    ///
    /// # Errors
    /// [`NodeError::Refused`] (nothing changed) when this node is not
    /// standalone, holds data without `discard_data`, the token is not
    /// usable, or the primary cannot be contacted or refuses;
    /// [`NodeError::BadRequest`] for a malformed reverse address.
    pub async fn setup(&self, req: SetupRequest, actor: &str) -> Result<SetupOutcome, NodeError> {
        let _lock = self.reset_lock.lock().await;
        let Admissible {
            token,
            reverse,
            config_keys,
            sessions,
        } = self.admissible(&req)?;

        let kind = if req.witness {
            NodeKind::Witness
        } else {
            NodeKind::Appliance
        };
        let key = tokio::task::spawn_blocking(NodeKey::generate)
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(|e| NodeError::Internal(format!("generating the node key: {e}")))?;
        let body = JoinRequest {
            token: req.token.trim().to_string(),
            name: self.cfg.name.clone(),
            kind: crate::node::kind_name(kind).into(),
            peer_addr: reverse.clone(),
            api_addr: self.cfg.api_advertise.clone(),
            csr_pem: key
                .csr_pem()
                .map_err(|e| NodeError::Internal(format!("making the CSR: {e}")))?,
            actor: Some(format!("{actor} (on {})", self.cfg.name)),
            site: self.place.site.clone(),
            host: self.place.host.clone(),
            allow_same_site: req.allow_same_site,
        };
        let primary = req.primary.trim().to_string();
        tracing::info!(%primary, %reverse, kind = ?kind, %actor, "set up relationship: asking the primary to admit this node");
        let grant = request_join(&primary, &body, &token.ca_fingerprint)
            .await
            .map_err(|e| match e {
                JoinCallError::Unreachable(m) => NodeError::PeerUnreachable {
                    peer: Peer::PrimaryAt(primary.clone()),
                    reason: Some(m),
                    remedy: Remedy::None,
                },
                JoinCallError::Refused(reason) => NodeError::Refused(Refusal::ByPeer { reason }),
                JoinCallError::Failed(m) => NodeError::Unavailable(m),
            })?;
        let pending = PendingJoin {
            format: JOIN_PENDING_FORMAT,
            grant: grant.clone(),
            key_pem: key.key_pem().to_string(),
            kind,
            peer_advertise: reverse.clone(),
        };
        // Serialising plain strings and numbers cannot fail.
        let text = serde_json::to_string(&pending).expect("PendingJoin serialises");
        let path = pending_path(&self.dir);
        let written =
            tokio::task::spawn_blocking(move || tandem_certs::write_key_file(path, &text))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?;
        if let Err(e) = written {
            tracing::error!(error = %e, node = grant.node_id, "join granted but not saved: remove node {} from the cluster and try again", grant.node_id);
            return Err(NodeError::Internal(format!(
                "the primary admitted this node as {} but the grant could not be saved: {e}",
                grant.node_id
            )));
        }
        tracing::warn!(
            node = grant.node_id,
            cluster = %grant.cluster_id,
            discarded_config_keys = config_keys,
            discarded_sessions = sessions,
            "joined the primary's cluster; restarting with the new identity"
        );
        // The primary recorded the join in the replicated history; this
        // node's own history goes with its store. In-flight answers (this
        // one) finish before the admin listener closes.
        self.restart.cancel();
        Ok(SetupOutcome {
            node_id: grant.node_id,
            cluster_id: grant.cluster_id,
            role: match kind {
                NodeKind::Appliance => tandem_web::RoleName::Backup,
                NodeKind::Witness => tandem_web::RoleName::Witness,
            },
            primary,
            reverse_address: reverse,
            discarded_config_keys: config_keys,
            discarded_sessions: sessions,
        })
    }

    /// The checks before a join is asked for: nothing is changed when one
    /// fails.
    fn admissible(&self, req: &SetupRequest) -> Result<Admissible, NodeError> {
        let refused = |r: Refusal| Err(NodeError::Refused(r));
        if self.restart.is_cancelled() {
            return refused(Refusal::JoinUnderway);
        }
        let m = self.metrics();
        let members: Vec<u64> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let (role, _) = self.compute_role();
        if role != Role::Standalone || members != [self.cfg.node_id] {
            return refused(Refusal::NotStandalone {
                role: role.as_str(),
                members: members.len(),
            });
        }
        if self.cfg.kind != NodeKind::Appliance {
            return refused(Refusal::WitnessJoinsByCommand);
        }
        let token = ParsedToken::parse(&req.token)
            .map_err(|e| NodeError::Refused(Refusal::MalformedToken(e)))?;
        let own = tandem_certs::fingerprint_of_pem(&self.ca_pem)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        if token.ca_fingerprint.eq_ignore_ascii_case(&own) {
            return refused(Refusal::OwnClusterToken);
        }
        let reverse = req
            .reverse_address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .unwrap_or(&self.cfg.peer_advertise)
            .to_string();
        if !valid_host_port(&reverse) {
            return Err(NodeError::BadRequest(format!(
                "reverse connection address {reverse:?} is not host:port"
            )));
        }
        let reader = self.reader();
        let config_keys = reader.config_list("", usize::MAX).len() as u64;
        let sessions = reader.session_count();
        if (config_keys > 0 || sessions > 0) && !req.discard_data {
            return refused(Refusal::HoldsData {
                config_keys,
                sessions,
            });
        }
        Ok(Admissible {
            token,
            reverse,
            config_keys,
            sessions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NodeConfig, CONFIG_FORMAT};

    fn old_node(dir: &DataDir) -> NodeConfig {
        let cfg = NodeConfig {
            format: CONFIG_FORMAT,
            name: "b".into(),
            kind: NodeKind::Appliance,
            node_id: 1,
            cluster_id: "old".into(),
            peer_listen: "127.0.0.1:7002".parse().expect("literal address"),
            peer_advertise: "127.0.0.1:7002".into(),
            api_listen: "127.0.0.1:8002".parse().expect("literal address"),
            api_advertise: "https://127.0.0.1:8002".into(),
            tuning: Default::default(),
            shared_ip: Default::default(),
            admin_tls: None,
            site: None,
            host_id: None,
        };
        dir.save(&cfg).expect("node.toml");
        tandem_certs::write_key_file(dir.ca_key(), "old CA key").expect("ca.key");
        std::fs::create_dir_all(dir.db().join("sled")).expect("db");
        std::fs::write(dir.db().join("sled").join("db"), "old data").expect("db file");
        cfg
    }

    fn pending(dir: &DataDir) {
        let p = PendingJoin {
            format: JOIN_PENDING_FORMAT,
            grant: JoinResponse {
                node_id: 5,
                cluster_id: "new".into(),
                cert_pem: "new cert".into(),
                ca_pem: "new CA".into(),
                ca_key_pem: None,
                members: Vec::new(),
            },
            key_pem: "new key".into(),
            kind: NodeKind::Witness,
            peer_advertise: "10.0.0.2:7400".into(),
        };
        let text = serde_json::to_string(&p).expect("serialise");
        tandem_certs::write_key_file(pending_path(dir), &text).expect("pending file");
    }

    #[test]
    fn a_pending_join_is_applied_once_and_survives_a_crash_half_way() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        let before = old_node(&dir);
        assert!(!apply_pending_join(&dir).expect("nothing pending"));
        assert_eq!(dir.load().expect("node.toml"), before);

        pending(&dir);
        // A crash after some files were written: the next start redoes it all.
        tandem_certs::write_public_file(dir.ca_cert(), "new CA").expect("partial write");
        assert!(apply_pending_join(&dir).expect("applied"));
        let cfg = dir.load().expect("node.toml");
        assert_eq!((cfg.node_id, cfg.cluster_id.as_str()), (5, "new"));
        assert_eq!(cfg.kind, NodeKind::Witness);
        assert_eq!(cfg.peer_advertise, "10.0.0.2:7400");
        assert_eq!(
            (cfg.name.as_str(), cfg.api_listen),
            ("b", before.api_listen)
        );
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).expect("file");
        assert_eq!(read(dir.node_cert()), "new cert");
        assert_eq!(read(dir.node_key()), "new key");
        assert_eq!(read(dir.ca_cert()), "new CA");
        assert!(!dir.ca_key().exists(), "a witness holds no CA key");
        assert!(!dir.db().exists(), "the old store is gone");
        assert!(!pending_path(&dir).exists());
        assert!(!apply_pending_join(&dir).expect("applied only once"));
    }

    #[test]
    fn host_port() {
        assert!(valid_host_port("10.0.0.2:7400"));
        assert!(valid_host_port("[::1]:7400"));
        assert!(valid_host_port("node-b.example:7400"));
        assert!(!valid_host_port("10.0.0.2"));
        assert!(!valid_host_port(":7400"));
        assert!(!valid_host_port("h:0"));
        assert!(!valid_host_port("h:http"));
    }
}
