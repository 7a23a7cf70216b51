//! Creating a cluster (`init`) and joining one (`join`).
//!
//! Both prepare a data directory and return; `run` then starts the node.
//! `node.toml` is written last, so a directory without it was never
//! completely set up.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tandem_certs::{ClusterCa, NodeKey};
use tandem_storage::{NodeKind, Request, Response};
use tandem_web::{JoinRequest, JoinResponse};

use crate::config::{DataDir, NodeConfig, Tuning, CONFIG_FORMAT};
use crate::join::{hash_secret, random_secret, sans_for, validate_name, ParsedToken};
use crate::node::Node;
use crate::placement::{Place, Places};
use crate::settings::Settings;

/// How long `init` waits for the new single-node cluster to elect itself.
const INIT_LEADER_WAIT: Duration = Duration::from_secs(10);
/// Bound on one join request to the primary's admin API.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a new node listens and how others reach it.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Peer listener bind address (port 0: pick a free port now and keep it).
    pub peer_listen: SocketAddr,
    /// Address peers dial; default: the bound peer address.
    pub peer_advertise: Option<String>,
    /// Admin listener bind address (port 0 as above).
    pub api_listen: SocketAddr,
    /// API base URL others use; default: `https://<bound api address>`.
    pub api_advertise: Option<String>,
}

impl Listen {
    /// Resolves port 0 to concrete free ports and fills in the advertised
    /// addresses. The ports are recorded in `node.toml`, so a node keeps its
    /// addresses across restarts.
    ///
    /// # Errors
    /// A bind that fails, or an unspecified listen address without an
    /// explicit advertised address.
    pub fn resolve(&self) -> anyhow::Result<(SocketAddr, String, SocketAddr, String)> {
        let peer = pick(self.peer_listen).context("peer listen address")?;
        let api = pick(self.api_listen).context("api listen address")?;
        let peer_adv = match &self.peer_advertise {
            Some(a) => a.clone(),
            None if peer.ip().is_unspecified() => {
                bail!("--peer-advertise is required when listening on {peer}")
            }
            None => peer.to_string(),
        };
        let api_adv = match &self.api_advertise {
            Some(a) => a.trim_end_matches('/').to_string(),
            None if api.ip().is_unspecified() => {
                bail!("--api-advertise is required when listening on {api}")
            }
            None => format!("https://{api}"),
        };
        Ok((peer, peer_adv, api, api_adv))
    }
}

fn pick(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let l = TcpListener::bind(addr)?;
    l.local_addr()
}

/// Options of `tandem init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Data directory to create.
    pub dir: PathBuf,
    /// Node name.
    pub name: String,
    /// Listen addresses.
    pub listen: Listen,
    /// Raft tuning.
    pub tuning: Tuning,
    /// Site label (failure domain), if any.
    pub site: Option<String>,
    /// Configured host identity (absent: derived from the machine id).
    pub host_id: Option<String>,
}

/// Checks the site and host identity options.
fn validate_place(site: Option<&str>, host_id: Option<&str>) -> anyhow::Result<()> {
    if let Some(s) = site {
        crate::placement::validate_label("site", s).map_err(anyhow::Error::msg)?;
    }
    if let Some(h) = host_id {
        crate::placement::validate_label("host identity", h).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Name of the web UI user `init` creates.
pub const INITIAL_ADMIN_USER: &str = "admin";

/// What `init` created; the admin token is shown once and stored only hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitOutcome {
    /// The new cluster's id.
    pub cluster_id: String,
    /// This node's id (always 1).
    pub node_id: u64,
    /// The admin bearer token (only its hash is stored).
    pub admin_token: String,
    /// The first web UI user (`admin`).
    #[serde(default)]
    pub admin_user: String,
    /// Its one-time password (only an argon2id hash is stored); change it
    /// on the Users page.
    #[serde(default)]
    pub admin_password: String,
    /// The CA certificate file, for clients.
    pub ca_file: PathBuf,
    /// The admin API base URL.
    pub api: String,
}

fn write_identity(
    dir: &DataDir,
    ca_pem: &str,
    ca_key: Option<&str>,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<()> {
    tandem_certs::write_public_file(dir.ca_cert(), ca_pem).context("writing ca.pem")?;
    if let Some(k) = ca_key {
        tandem_certs::write_key_file(dir.ca_key(), k).context("writing ca.key")?;
    }
    tandem_certs::write_public_file(dir.node_cert(), cert_pem).context("writing node.pem")?;
    tandem_certs::write_key_file(dir.node_key(), key_pem).context("writing node.key")?;
    Ok(())
}

fn ensure_fresh(dir: &DataDir) -> anyhow::Result<()> {
    dir.ensure_fresh()?;
    if dir.db().exists() {
        bail!(
            "{} holds a partly set up node (a db/ but no node.toml); remove the directory and start again",
            dir.root().display()
        );
    }
    Ok(())
}

/// Creates a new one-node cluster in `opts.dir`.
///
/// # Errors
/// The directory is in use or already initialised, ports cannot be bound,
/// files cannot be written, or Raft does not elect this node.
pub async fn init(opts: InitOptions) -> anyhow::Result<InitOutcome> {
    validate_name(&opts.name).map_err(anyhow::Error::msg)?;
    validate_place(opts.site.as_deref(), opts.host_id.as_deref())?;
    let dir = DataDir::new(&opts.dir);
    ensure_fresh(&dir)?;
    let _lock = dir.lock()?;
    let (peer_listen, peer_advertise, api_listen, api_advertise) = opts.listen.resolve()?;

    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    let cluster_id = hex::encode(id);
    let sans = sans_for(&peer_advertise, &api_advertise).map_err(anyhow::Error::msg)?;
    let (ca, node_cert) = tokio::task::spawn_blocking({
        let cluster_id = cluster_id.clone();
        move || -> anyhow::Result<_> {
            let ca = ClusterCa::generate(&cluster_id)?;
            let cert = ca.issue_node_cert(1, &sans)?;
            Ok((ca, cert))
        }
    })
    .await??;
    write_identity(
        &dir,
        ca.cert_pem(),
        Some(ca.key_pem()),
        &node_cert.cert_pem,
        &node_cert.key_pem,
    )?;

    let cfg = NodeConfig {
        format: CONFIG_FORMAT,
        name: opts.name.clone(),
        kind: NodeKind::Appliance,
        node_id: 1,
        cluster_id: cluster_id.clone(),
        peer_listen,
        peer_advertise,
        api_listen,
        api_advertise: api_advertise.clone(),
        tuning: opts.tuning.clone(),
        shared_ip: Default::default(),
        admin_tls: None,
        site: opts.site.clone(),
        host_id: opts.host_id.clone(),
    };
    let admin_token = format!("tdm_{}", random_secret(32));
    let admin_password = crate::users::initial_password();
    let admin_password_hash = crate::users::hash_password(admin_password.clone())
        .await
        .map_err(anyhow::Error::msg)
        .context("hashing the admin password")?;
    let node = Node::open(dir.clone(), cfg.clone()).await?;
    let members = BTreeMap::from([(1u64, node.info())]);
    node.raft()
        .initialize(members)
        .await
        .context("initialising raft")?;
    node.raft()
        .wait(Some(INIT_LEADER_WAIT))
        .current_leader(1, "this node elects itself")
        .await
        .context("waiting for this node to become leader")?;
    let answer = node
        .write(Request::Multi(vec![
            Request::Bootstrap {
                cluster_id: cluster_id.clone(),
                admin_token_hash: hash_secret(&admin_token),
            },
            Request::SettingsPut {
                settings_json: Settings {
                    primary_timeout_ms: opts.tuning.primary_timeout_ms,
                    ..Settings::default()
                }
                .to_json(),
                if_version: None,
                actor: "init".into(),
                at_ms: crate::util::now_ms(),
            },
            Request::UserPut {
                name: INITIAL_ADMIN_USER.into(),
                password_hash: admin_password_hash,
                actor: "init".into(),
                at_ms: crate::util::now_ms(),
            },
            Request::PlacesPut {
                doc_json: Places(BTreeMap::from([(1, node.place.clone())])).to_json(),
                if_version: Some(0),
                actor: "init".into(),
                at_ms: crate::util::now_ms(),
            },
        ]))
        .await?;
    if let Response::Refused { reason } = answer {
        bail!("bootstrap refused: {reason}");
    }
    node.raft().shutdown().await.context("stopping raft")?;
    node.flush().await?;
    dir.save(&cfg)?;
    tracing::info!(cluster = %cluster_id, dir = %dir.root().display(), "cluster created");
    Ok(InitOutcome {
        cluster_id,
        node_id: 1,
        admin_token,
        admin_user: INITIAL_ADMIN_USER.into(),
        admin_password,
        ca_file: std::fs::canonicalize(dir.ca_cert()).unwrap_or_else(|_| dir.ca_cert()),
        api: api_advertise,
    })
}

/// Options of `tandem join`.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Data directory to create.
    pub dir: PathBuf,
    /// Node name.
    pub name: String,
    /// Join as a witness (votes, never primary).
    pub witness: bool,
    /// The one-time join token.
    pub token: String,
    /// An existing node's API address (`https://host:port` or `host:port`).
    pub peer: String,
    /// Listen addresses.
    pub listen: Listen,
    /// Raft tuning.
    pub tuning: Tuning,
    /// Site label (failure domain), if any.
    pub site: Option<String>,
    /// Configured host identity (absent: derived from the machine id).
    pub host_id: Option<String>,
    /// Join even when this appliance shares its site or host with the other.
    pub allow_same_site: bool,
}

/// Base URL from `host:port` or a URL.
pub fn base_url(addr: &str) -> String {
    let a = addr.trim_end_matches('/');
    if a.starts_with("https://") || a.starts_with("http://") {
        a.to_string()
    } else {
        format!("https://{a}")
    }
}

/// Joins an existing cluster: gets this node's certificate signed over TLS
/// (the server is trusted only if its CA matches the token's fingerprint)
/// and prepares the data directory. The cluster adds the node as a learner
/// and promotes it to voter once it has caught up after `run`.
///
/// # Errors
/// A malformed, reused, expired or foreign token (nothing is written), an
/// unreachable peer, or a directory already in use.
pub async fn join(opts: JoinOptions) -> anyhow::Result<JoinResponse> {
    validate_name(&opts.name).map_err(anyhow::Error::msg)?;
    validate_place(opts.site.as_deref(), opts.host_id.as_deref())?;
    let token = ParsedToken::parse(&opts.token).map_err(anyhow::Error::msg)?;
    let dir = DataDir::new(&opts.dir);
    ensure_fresh(&dir)?;
    let _lock = dir.lock()?;
    let (peer_listen, peer_advertise, api_listen, api_advertise) = opts.listen.resolve()?;
    let key = tokio::task::spawn_blocking(NodeKey::generate).await??;
    let body = JoinRequest {
        token: opts.token.clone(),
        name: opts.name.clone(),
        kind: if opts.witness { "witness" } else { "appliance" }.into(),
        peer_addr: peer_advertise.clone(),
        api_addr: api_advertise.clone(),
        csr_pem: key.csr_pem()?,
        actor: None,
        site: opts.site.clone(),
        host: Place::local(opts.site.as_deref(), opts.host_id.as_deref()).host,
        allow_same_site: opts.allow_same_site,
    };
    // Kept as the error itself: the command line tells a refusal by it.
    let answer = request_join(&opts.peer, &body, &token.ca_fingerprint).await?;
    write_identity(
        &dir,
        &answer.ca_pem,
        answer.ca_key_pem.as_deref(),
        &answer.cert_pem,
        key.key_pem(),
    )?;
    let cfg = NodeConfig {
        format: CONFIG_FORMAT,
        name: opts.name.clone(),
        kind: if opts.witness {
            NodeKind::Witness
        } else {
            NodeKind::Appliance
        },
        node_id: answer.node_id,
        cluster_id: answer.cluster_id.clone(),
        peer_listen,
        peer_advertise,
        api_listen,
        api_advertise,
        tuning: opts.tuning.clone(),
        shared_ip: Default::default(),
        admin_tls: None,
        site: opts.site.clone(),
        host_id: opts.host_id.clone(),
    };
    dir.save(&cfg)?;
    tracing::info!(node = answer.node_id, cluster = %answer.cluster_id, "joined; start the node with `tandem run`");
    Ok(answer)
}

/// Why asking a cluster to admit a node failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinCallError {
    /// The node at the given address could not be contacted (or did not
    /// present the cluster's CA).
    #[error("{0}")]
    Unreachable(String),
    /// The cluster refused the request (bad, used or expired token…).
    #[error("{0}")]
    Refused(String),
    /// Anything else (a server error, a malformed answer).
    #[error("{0}")]
    Failed(String),
}

/// Sends `body` to `POST /api/v1/join` of the node at `peer` (its admin
/// address), trusting it only if it presents the CA with SHA-256
/// `ca_fingerprint`, following the leader's redirections; checks that the
/// answer carries that CA.
///
/// # Errors
/// [`JoinCallError`]: nothing was changed locally in any case.
pub async fn request_join(
    peer: &str,
    body: &JoinRequest,
    ca_fingerprint: &str,
) -> Result<JoinResponse, JoinCallError> {
    let failed = |e: &dyn std::fmt::Display| JoinCallError::Failed(e.to_string());
    let (tls, _pinned) =
        tandem_certs::pinned_ca_client_config(ca_fingerprint).map_err(|e| failed(&e))?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(JOIN_CALL_TIMEOUT)
        .build()
        .map_err(|e| failed(&format!("building the HTTPS client: {e}")))?;
    let mut url = format!("{}/api/v1/join", base_url(peer));
    for _ in 0..4 {
        let resp = client.post(&url).json(body).send().await.map_err(|e| {
            JoinCallError::Unreachable(format!("contacting {url}: {:#}", anyhow::Error::from(e)))
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
            if let Some(loc) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            {
                url = loc.to_string();
                continue;
            }
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or(text);
            if status.is_client_error() {
                return Err(JoinCallError::Refused(format!(
                    "join refused ({status}): {msg}"
                )));
            }
            return Err(JoinCallError::Failed(format!(
                "join failed ({status}): {msg}"
            )));
        }
        let answer = resp
            .json::<JoinResponse>()
            .await
            .map_err(|e| failed(&format!("reading the join answer: {e}")))?;
        let fp = tandem_certs::fingerprint_of_pem(&answer.ca_pem).map_err(|e| failed(&e))?;
        if !fp.eq_ignore_ascii_case(ca_fingerprint) {
            return Err(JoinCallError::Failed(
                "the cluster answered with a CA that does not match the token".into(),
            ));
        }
        return Ok(answer);
    }
    Err(JoinCallError::Failed(
        "join: too many redirections to the leader".into(),
    ))
}
