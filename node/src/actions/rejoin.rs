//! *Rejoin*: a node that a break removed or a forced promotion replaced
//! comes back as the backup. Its certificate alone opens nothing: an
//! administrator on the primary makes a one-time rejoin token for that
//! node id ([`Node::create_rejoin_token`]); the node presents it
//! ([`Node::rejoin`]); the primary checks it locally, then uses it in a
//! replicated write, before it adds the node ([`Node::accept_rejoin`]).

use std::time::Duration;

use serde_json::json;
use tandem_storage::{NodeInfo, NodeKind, Request, Response};
use tandem_web::BreakOutcome;

use crate::errors::{JoinDenial, Peer, Refusal, Remedy};
use crate::join::{hash_secret, random_hex, random_secret, ParsedToken};
use crate::node::{Node, NodeError, ResetTo};
use crate::peer::protocol::{ActionRequest, PeerRequest, PeerResponse};
use crate::roles::Role;
use crate::util::now_ms;

/// Bound on the other side's answer to a rejoin.
const REJOIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts to add a rejoining node while a membership change finishes.
const REJOIN_RETRY: Duration = Duration::from_millis(100);

impl Node {
    /// Creates a one-time rejoin token for node `node`:
    /// `<id>.<secret>.<ca-fingerprint>`, like a join token.
    ///
    /// # Errors
    /// As [`Node::write`]; [`NodeError::BadRequest`] for a TTL over the
    /// maximum or this node's own id.
    pub async fn create_rejoin_token(
        &self,
        ttl: Option<Duration>,
        node: u64,
        actor: &str,
    ) -> Result<(String, u64), NodeError> {
        let ttl = crate::node::token_ttl(ttl)?;
        if node == self.cfg.node_id {
            return Err(NodeError::BadRequest(format!(
                "node {node} is this node: a rejoin token is for the node that was removed or replaced"
            )));
        }
        let id = random_hex(8);
        let secret = random_secret(24);
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let fp = tandem_certs::fingerprint_of_pem(&self.ca_pem)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let made = Request::Multi(vec![
            Request::RejoinTokenCreate {
                id: id.clone(),
                node,
                secret_hash: hash_secret(&secret),
                expires_ms,
                created_by: actor.to_string(),
            },
            Request::HistoryAppend {
                at_ms: now_ms(),
                node: self.cfg.node_id,
                kind: "rejoin_token".into(),
                actor: actor.to_string(),
                details_json: json!({ "for_node": node, "expires_ms": expires_ms }).to_string(),
            },
        ]);
        match self.write(made).await? {
            Response::Refused { reason } => Err(NodeError::Rejected(reason)),
            _ => Ok((format!("{id}.{secret}.{fp}"), expires_ms)),
        }
    }

    /// *Rejoin* on a node that was replaced by a forced promotion or
    /// removed: asks the other side to take it back as a backup with the
    /// rejoin token an administrator made there, then discards its own copy
    /// and resyncs.
    ///
    /// # Errors
    /// [`NodeError::BadRequest`] for a malformed token or one of another
    /// cluster; [`NodeError::Refused`] when there is nothing to rejoin or
    /// the other side refuses (the token is not for this node, spent or
    /// expired).
    pub async fn rejoin(&self, token: &str, actor: &str) -> Result<BreakOutcome, NodeError> {
        let parsed = parse_rejoin_token(token).map_err(|e| {
            NodeError::BadRequest(format!("{e}: make a rejoin token for this node on the primary with `tandem token --rejoin {}`", self.cfg.node_id))
        })?;
        let fp = tandem_certs::fingerprint_of_pem(&self.ca_pem)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        if !parsed.ca_fingerprint.eq_ignore_ascii_case(&fp) {
            return Err(NodeError::BadRequest(
                "this rejoin token was made by another cluster: make it on this relationship's primary".into(),
            ));
        }
        let notice = self
            .roles
            .fence
            .notice()
            .ok_or(NodeError::Refused(Refusal::NothingToRejoin))?;
        let action = ActionRequest::Rejoin {
            info: self.info(),
            diverged_export: self.roles.diverged_export(),
            actor: actor.to_string(),
            token: token.trim().to_string(),
        };
        match self
            .network
            .call(
                notice.by,
                &notice.by_addr,
                PeerRequest::Action(action),
                REJOIN_CALL_TIMEOUT,
            )
            .await
        {
            Ok(PeerResponse::Action(Ok(_))) => {}
            Ok(PeerResponse::Action(Err(reason))) => {
                return Err(NodeError::Refused(Refusal::ByPeer { reason }))
            }
            Ok(other) => return Err(NodeError::Internal(format!("unexpected answer {other:?}"))),
            Err(e) => {
                return Err(NodeError::PeerUnreachable {
                    peer: Peer::Node(notice.by),
                    reason: Some(e.to_string()),
                    remedy: Remedy::None,
                })
            }
        }
        let _pause = self.roles.pause();
        self.reset_engine(ResetTo::Pristine).await?;
        self.roles.clear_diverged_export();
        tracing::info!(primary = notice.by, "rejoined as backup; resyncing");
        Ok(BreakOutcome {
            former_peers: vec![notice.by],
            role: Role::Backup.into(),
        })
    }

    /// On the primary: takes node `id` (as its certificate names it) back
    /// as a learner when `token` is a rejoin token made for it. Everything
    /// is checked before anything is proposed; a refusal changes nothing.
    pub(crate) async fn accept_rejoin(
        &self,
        info: NodeInfo,
        id: u64,
        diverged_export: Option<String>,
        token: &str,
        actor: &str,
    ) -> Result<String, String> {
        let _one = self.join_lock.lock().await;
        let token = parse_rejoin_token(token)?;
        let fp = tandem_certs::fingerprint_of_pem(&self.ca_pem).map_err(|e| e.to_string())?;
        if !token.ca_fingerprint.eq_ignore_ascii_case(&fp) {
            return Err(JoinDenial::OtherCluster.to_string());
        }
        let secret_hash = hash_secret(&token.secret);
        self.reader()
            .check_rejoin_token(&token.id, &secret_hash, now_ms(), id)
            .map_err(|r| format!("rejoin refused: {r}"))?;
        crate::join::validate_name(&info.name)?;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership
            .nodes()
            .any(|(n, other)| *n != id && other.name == info.name)
        {
            return Err(JoinDenial::NameTaken { name: info.name }.to_string());
        }
        // The rejoiner keeps its certificate, but the addresses it comes
        // back with must not be another member's (one may have taken them
        // meanwhile): peers and probes would dial it for that member.
        let sans = crate::join::sans_for(&info.peer_addr, &info.api_addr)?;
        let others = membership
            .nodes()
            .filter(|(n, _)| **n != id)
            .map(|(_, o)| o);
        if let Some((address, name)) = crate::join::san_held_by_other(&sans, others) {
            return Err(JoinDenial::AddressTaken { address, name }.to_string());
        }
        let same_kind = membership
            .nodes()
            .filter(|(n, other)| **n != id && other.kind == info.kind)
            .count();
        let room = match info.kind {
            NodeKind::Appliance => 2,
            NodeKind::Witness => 1,
        };
        if same_kind >= room {
            return Err(JoinDenial::TopologyFull { kind: info.kind }.to_string());
        }
        self.disk.check().map_err(|e| e.message())?;
        match self
            .write(Request::RejoinTokenUse {
                id: token.id,
                secret_hash,
                now_ms: now_ms(),
                node: id,
            })
            .await
        {
            Ok(Response::Refused { reason }) => return Err(format!("rejoin refused: {reason}")),
            Ok(_) => {}
            Err(e) => return Err(e.message()),
        }
        self.record(
            "rejoin",
            actor,
            json!({ "node": id, "name": info.name, "diverged_export": diverged_export }),
        )
        .await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.raft().add_learner(id, info.clone(), false).await {
                Ok(_) => return Ok("{}".into()),
                Err(e) if attempt < 50 => {
                    tracing::debug!(error = %e, "add_learner for rejoin deferred");
                    tokio::time::sleep(REJOIN_RETRY).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// A rejoin token has a join token's shape (`id.secret.ca-fingerprint`);
/// a malformed one is named for what it is.
fn parse_rejoin_token(token: &str) -> Result<ParsedToken, String> {
    ParsedToken::parse(token).map_err(|e| e.replace("join token", "rejoin token"))
}
