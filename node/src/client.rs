//! A small client of the admin API, used by the CLI, the demo, the status
//! page's probes of peers and the benchmark. It trusts only the cluster CA,
//! and checks the node's identity when it knows the node's id.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bootstrap::base_url;
use crate::config::DataDir;
use crate::util::lock;

/// Bound on one admin API request (an action such as a swap answers well within it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle connection stays pooled: below the admin listener's
/// keep-alive bound (10 s), so a pooled connection is never reused just as
/// the node closes it.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// An error answered by the API, with its status, or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
        /// `Location` of a 421 answer (the leader).
        location: Option<String>,
        /// The machine-readable `error` kind of the body (`refused`,
        /// `invalid`, `conflict`…), when the body had one.
        kind: Option<String>,
        /// For `invalid`: field path → what is wrong with it.
        fields: BTreeMap<String, String>,
    },
    /// No answer.
    #[error("cannot reach {url}: {source}")]
    Transport {
        /// The URL tried.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
}

/// Request header naming who acts (recorded in the status history).
pub const ACTOR_HEADER: &str = "x-tandem-actor";

/// Admin API client bound to one node.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    actor: Option<String>,
    timeout: Option<Duration>,
    /// The client for the node aimed at: checking its identity when known.
    http: reqwest::Client,
    https: Arc<Https>,
}

/// At most this many node ids keep an HTTPS client (a relationship has
/// three members; ids are never reused, so old ones only accumulate).
const MAX_NODE_CLIENTS: usize = 16;

/// The HTTPS clients of one cluster CA: one that checks the address only,
/// and one per node id whose identity is checked too. Each has its own
/// connection pool, so a connection verified for one node never serves a
/// request meant for another at the same address.
struct Https {
    ca_pem: String,
    any_node: reqwest::Client,
    by_node: Mutex<BTreeMap<u64, reqwest::Client>>,
}

/// An HTTPS client over `tls`.
fn https_client(tls: Arc<rustls::ClientConfig>) -> anyhow::Result<reqwest::Client> {
    // HTTPS only, also for a redirection's target; no redirection is
    // followed by itself (the token goes only where `call_leader`
    // decides, to a node that shows the cluster's certificate).
    reqwest::Client::builder()
        .tls_backend_preconfigured(Arc::unwrap_or_clone(tls))
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(512)
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .context("building the HTTPS client")
}

impl ApiClient {
    /// A client of the node at `api` (URL or `host:port`) trusting `ca_pem`.
    /// Any member's certificate valid for the address is accepted; use
    /// [`ApiClient::for_node`] when the node's id is known.
    ///
    /// # Errors
    /// If the CA does not parse.
    pub fn new(api: &str, ca_pem: &str, token: Option<String>) -> anyhow::Result<Self> {
        if base_url(api).starts_with("http://") {
            anyhow::bail!(
                "refusing {api}: the token would travel in clear; use the node's https:// address"
            );
        }
        let any_node = https_client(tandem_certs::admin_client_config(ca_pem)?)?;
        Ok(Self {
            base: base_url(api),
            token,
            actor: None,
            timeout: None,
            http: any_node.clone(),
            https: Arc::new(Https {
                ca_pem: ca_pem.to_owned(),
                any_node,
                by_node: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// A client of the node whose data directory is `dir` (API address, node
    /// id and CA from there): the node must show its own certificate
    /// (`tandem-node-<id>`), not another member's.
    ///
    /// # Errors
    /// If the directory is not initialised.
    pub fn for_dir(dir: &Path, token: Option<String>) -> anyhow::Result<Self> {
        let d = DataDir::new(dir);
        let cfg = d.load()?;
        let ca = std::fs::read_to_string(d.ca_cert()).context("reading ca.pem")?;
        Self::new(&cfg.api_advertise, &ca, token)?.for_node(&cfg.api_advertise, cfg.node_id)
    }

    /// The same client aimed at node `node_id` of the cluster at `api`: its
    /// certificate must be valid for the address and for `tandem-node-<id>`
    /// (`tandem_certs::node_admin_client_config`).
    ///
    /// # Errors
    /// If the HTTPS client cannot be built.
    pub fn for_node(&self, api: &str, node_id: u64) -> anyhow::Result<Self> {
        let mut clients = lock(&self.https.by_node);
        let http = match clients.get(&node_id) {
            Some(http) => http.clone(),
            None => {
                let tls = tandem_certs::node_admin_client_config(&self.https.ca_pem, node_id)?;
                let http = https_client(tls)?;
                if clients.len() >= MAX_NODE_CLIENTS {
                    clients.clear();
                }
                clients.insert(node_id, http.clone());
                http
            }
        };
        Ok(Self {
            base: base_url(api),
            http,
            ..self.clone()
        })
    }

    /// The same client aimed at another node of the cluster whose id it
    /// does not know (the leader a 421 names): any member's certificate
    /// valid for the address is accepted.
    pub fn with_base(&self, api: &str) -> Self {
        Self {
            base: base_url(api),
            http: self.https.any_node.clone(),
            ..self.clone()
        }
    }

    /// The same client sending `actor` as the `X-Tandem-Actor` header on
    /// every request (the server records it as who made a change).
    #[must_use]
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// The same client waiting up to `timeout` for each answer instead of
    /// the default 30 s (for actions that may take long, such as a sync).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and decodes a JSON answer.
    ///
    /// # Errors
    /// [`ClientError::Api`] for an error status, [`ClientError::Transport`] otherwise.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(a) = &self.actor {
            req = req.header(ACTOR_HEADER, a);
        }
        if let Some(t) = self.timeout {
            req = req.timeout(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_success() {
            if status == StatusCode::NO_CONTENT {
                return serde_json::from_value(serde_json::Value::Null).map_err(|e| {
                    ClientError::Api {
                        status,
                        message: e.to_string(),
                        location: None,
                        kind: None,
                        fields: BTreeMap::new(),
                    }
                });
            }
            return resp.json::<T>().await.map_err(transport);
        }
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<serde_json::Value>(&text).ok();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|v| v.get(name))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        };
        let kind = field("error");
        let message = field("message").unwrap_or(text);
        let fields = body
            .as_ref()
            .and_then(|v| v.get("fields"))
            .and_then(|f| f.as_object())
            .map(|f| {
                f.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Err(ClientError::Api {
            status,
            message,
            location,
            kind,
            fields,
        })
    }

    /// GET returning JSON.
    ///
    /// # Errors
    /// As [`ApiClient::call`].
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    /// Like [`ApiClient::call`], following a 421 to the leader a few times.
    ///
    /// # Errors
    /// As [`ApiClient::call`].
    pub async fn call_leader<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut client = self.clone();
        let mut last = None;
        for _ in 0..4 {
            match client.call(method.clone(), path, body).await {
                Err(ClientError::Api {
                    status: StatusCode::MISDIRECTED_REQUEST,
                    location: Some(loc),
                    ..
                }) => {
                    // Location is the leader's URL for the same path.
                    let base = loc.strip_suffix(path).unwrap_or(&loc).to_string();
                    client = client.with_base(&base);
                    last = Some(loc);
                }
                other => return other,
            }
        }
        Err(ClientError::Api {
            status: StatusCode::MISDIRECTED_REQUEST,
            message: "too many redirections to the leader".into(),
            location: last,
            kind: None,
            fields: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_travels_in_clear() {
        let ca = tandem_certs::ClusterCa::generate("c").expect("a CA");
        let refused = ApiClient::new("http://127.0.0.1:8443", ca.cert_pem(), Some("t".into()));
        let e = refused.err().expect("http:// refused").to_string();
        assert!(e.contains("in clear"), "{e}");
        assert!(ApiClient::new("127.0.0.1:8443", ca.cert_pem(), None).is_ok());
        assert!(ApiClient::new("https://127.0.0.1:8443", ca.cert_pem(), None).is_ok());
    }

    /// A 421 pointing at an `http://` address is not followed with the
    /// token: the client refuses to send it there.
    #[tokio::test]
    async fn a_redirection_to_http_is_not_followed() {
        let ca = tandem_certs::ClusterCa::generate("c").expect("a CA");
        let c = ApiClient::new("https://127.0.0.1:9", ca.cert_pem(), Some("t".into()))
            .expect("client")
            .with_base("http://127.0.0.1:9");
        let e = c
            .call::<(), serde_json::Value>(Method::GET, "/api/v1/status", None)
            .await
            .expect_err("refused");
        // Refused before any connection (a connection to the closed port
        // would say "connection refused").
        assert!(e.to_string().contains("builder error"), "{e}");
    }
}
