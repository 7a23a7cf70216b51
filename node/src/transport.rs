//! Peer transport: the mutual-TLS listener and the Raft network client.
//!
//! One listener per node carries peer traffic only (never the admin API).
//! Connections are persistent: the client keeps a small pool per target and
//! opens a new connection when the pool is empty; a connection that fails is
//! dropped, never reused. Connect failures are reported to openraft as
//! `Unreachable` (it backs off), everything else as `Network`. The client does
//! not retry on its own.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2, Snapshot};
use rustls_pki_types::ServerName;
use tandem_storage::{NodeInfo, TypeConfig};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream as ClientTls;
use tokio_rustls::server::TlsStream as ServerTls;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame::{read_frame, write_frame, FrameError};
use crate::node::Node;
use crate::protocol::{Envelope, Hello, PeerRequest, PeerResponse, PROTOCOL_VERSION};

/// Bound on a TCP connect plus TLS handshake plus hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on an idle server-side wait for the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of one snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Idle connections kept per target.
const POOL_SIZE: usize = 4;

/// What the transport needs to know about this node, shared by client and server.
pub struct PeerIdentity {
    /// This node's id.
    pub node_id: u64,
    /// The cluster id every peer must present.
    pub cluster_id: String,
    /// Current epoch, read from the replicated state.
    pub epoch: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Where refusals by peers are recorded.
    pub fence: Arc<crate::roles::Fence>,
}

// ---------------------------------------------------------------- client

/// The openraft network factory: one [`PeerClient`] per target.
#[derive(Clone)]
pub struct PeerNetwork {
    shared: Arc<ClientShared>,
}

/// An established, authenticated connection to a peer.
type PeerConn = ClientTls<TcpStream>;

struct ClientShared {
    me: Arc<PeerIdentity>,
    connector: TlsConnector,
    pools: Mutex<HashMap<(u64, String), Vec<PeerConn>>>,
}

impl PeerNetwork {
    /// A network that dials peers with `tls` (the node's mutual-TLS client config).
    pub fn new(me: Arc<PeerIdentity>, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            shared: Arc::new(ClientShared {
                me,
                connector: TlsConnector::from(tls),
                pools: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerClient {
        PeerClient {
            target,
            addr: node.peer_addr.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl PeerNetwork {
    /// Sends one relationship request (not a Raft RPC) to node `target` at
    /// `addr` and returns its answer, bounded by `ttl`.
    ///
    /// # Errors
    /// [`CallError`] when the peer cannot be reached or answers nothing.
    pub async fn call(
        &self,
        target: u64,
        addr: &str,
        body: PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, CallError> {
        let client = PeerClient {
            target,
            addr: addr.to_string(),
            shared: self.shared.clone(),
        };
        client.call(body, ttl).await
    }
}

/// Raft RPCs to one peer.
pub struct PeerClient {
    target: u64,
    addr: String,
    shared: Arc<ClientShared>,
}

/// Why an RPC did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect or the handshake failed: the peer is unreachable.
    #[error("peer {target} at {addr} unreachable: {reason}")]
    Unreachable {
        /// Peer id.
        target: u64,
        /// Address dialed.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The connection broke or the answer was wrong.
    #[error("peer {target}: {reason}")]
    Network {
        /// Peer id.
        target: u64,
        /// What failed.
        reason: String,
    },
}

impl CallError {
    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&self)),
            CallError::Network { .. } => RPCError::Network(NetworkError::new(&self)),
        }
    }

    fn into_streaming(self) -> StreamingError<TypeConfig> {
        match self {
            CallError::Unreachable { .. } => StreamingError::Unreachable(Unreachable::new(&self)),
            CallError::Network { .. } => StreamingError::Network(NetworkError::new(&self)),
        }
    }
}

impl PeerClient {
    fn network(&self, reason: impl ToString) -> CallError {
        CallError::Network {
            target: self.target,
            reason: reason.to_string(),
        }
    }

    fn unreachable(&self, reason: impl ToString) -> CallError {
        CallError::Unreachable {
            target: self.target,
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    fn pool_key(&self) -> (u64, String) {
        (self.target, self.addr.clone())
    }

    async fn connect(&self) -> Result<ClientTls<TcpStream>, CallError> {
        let me = &self.shared.me;
        let dial = async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| self.unreachable(e))?;
            tcp.set_nodelay(true).map_err(|e| self.unreachable(e))?;
            let name = ServerName::try_from(tandem_certs::server_name_for(self.target))
                .map_err(|e| self.unreachable(format!("bad server name: {e}")))?;
            let mut tls = self
                .shared
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| self.unreachable(format!("TLS handshake: {e}")))?;
            let hello = Hello {
                protocol: PROTOCOL_VERSION,
                cluster_id: me.cluster_id.clone(),
                node_id: me.node_id,
                epoch: (me.epoch)(),
            };
            write_frame(&mut tls, &hello)
                .await
                .map_err(|e| self.unreachable(e))?;
            match read_frame::<PeerResponse, _>(&mut tls).await {
                Ok(PeerResponse::Welcome { node_id, .. }) if node_id == self.target => Ok(tls),
                Ok(PeerResponse::Welcome { node_id, .. }) => Err(self.unreachable(format!(
                    "expected node {}, found node {node_id}",
                    self.target
                ))),
                Ok(PeerResponse::Refused { reason }) => {
                    Err(self.unreachable(format!("refused: {reason}")))
                }
                Ok(other) => Err(self.unreachable(format!("unexpected hello answer {other:?}"))),
                Err(e) => Err(self.unreachable(e)),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(r) => r,
            Err(_) => Err(self.unreachable("connect timed out")),
        }
    }

    async fn checkout(&self) -> Result<ClientTls<TcpStream>, CallError> {
        let pooled = {
            // A poisoned lock only means another task panicked while holding it;
            // the pool itself (a Vec of connections) is still consistent.
            let mut pools = self.shared.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.get_mut(&self.pool_key()).and_then(Vec::pop)
        };
        match pooled {
            Some(c) => Ok(c),
            None => self.connect().await,
        }
    }

    fn checkin(&self, conn: ClientTls<TcpStream>) {
        let mut pools = self.shared.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(self.pool_key()).or_default();
        if pool.len() < POOL_SIZE {
            pool.push(conn);
        }
    }

    async fn exchange(
        &self,
        conn: &mut ClientTls<TcpStream>,
        body: PeerRequest,
    ) -> Result<PeerResponse, CallError> {
        let env = Envelope {
            epoch: (self.shared.me.epoch)(),
            body,
        };
        write_frame(conn, &env).await.map_err(|e| self.network(e))?;
        read_frame::<PeerResponse, _>(conn)
            .await
            .map_err(|e| self.network(e))
    }

    /// One request, one response, on a pooled connection, bounded by `ttl`.
    async fn call(&self, body: PeerRequest, ttl: Duration) -> Result<PeerResponse, CallError> {
        let fut = async {
            let mut conn = self.checkout().await?;
            let resp = self.exchange(&mut conn, body).await?;
            if let PeerResponse::Refused { reason } = &resp {
                return Err(self.network(format!("refused: {reason}")));
            }
            if let PeerResponse::Fenced {
                epoch,
                forked_at,
                kind,
            } = &resp
            {
                self.shared.me.fence.fenced(crate::roles::FenceNotice {
                    by: self.target,
                    by_addr: self.addr.clone(),
                    epoch: *epoch,
                    forked_at: *forked_at,
                    kind: *kind,
                });
                return Err(self.network(format!(
                    "node {} no longer counts this node as a member",
                    self.target
                )));
            }
            self.checkin(conn);
            Ok(resp)
        };
        match tokio::time::timeout(ttl, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.network(format!("no answer within {ttl:?}"))),
        }
    }

    async fn send_snapshot(
        &self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, tokio::fs::File>,
    ) -> Result<SnapshotResponse<TypeConfig>, CallError> {
        let Snapshot {
            meta,
            snapshot: mut file,
        } = snapshot;
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(|e| self.network(e))?;
        let len = file.metadata().await.map_err(|e| self.network(e))?.len();
        // A dedicated connection: a snapshot must not hold up heartbeats.
        let mut conn = self.connect().await?;
        let expect_stored = |r: PeerResponse| match r {
            PeerResponse::ChunkStored => Ok(()),
            other => Err(self.network(format!("unexpected answer to snapshot chunk: {other:?}"))),
        };
        let begin = PeerRequest::SnapshotBegin { vote, meta, len };
        expect_stored(self.exchange(&mut conn, begin).await?)?;
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        let mut sent = 0u64;
        while sent < len {
            let n = file.read(&mut buf).await.map_err(|e| self.network(e))?;
            if n == 0 {
                return Err(self.network("snapshot file shorter than its length"));
            }
            sent += n as u64;
            expect_stored(
                self.exchange(&mut conn, PeerRequest::SnapshotChunk(buf[..n].to_vec()))
                    .await?,
            )?;
        }
        match self.exchange(&mut conn, PeerRequest::SnapshotEnd).await? {
            PeerResponse::Snapshot(Ok(resp)) => {
                tracing::info!(peer = self.target, bytes = len, "snapshot sent");
                Ok(resp)
            }
            PeerResponse::Snapshot(Err(e)) => {
                Err(self.network(format!("peer failed to install snapshot: {e}")))
            }
            other => Err(self.network(format!("unexpected answer to snapshot end: {other:?}"))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = tokio::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::Append(rpc), option.hard_ttl()).await {
            Ok(PeerResponse::Append(Ok(r))) => Ok(r),
            Ok(PeerResponse::Append(Err(e))) => Err(self.network(e).into_rpc()),
            Ok(other) => Err(self
                .network(format!("unexpected answer {other:?}"))
                .into_rpc()),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_like(PeerRequest::Vote(rpc), option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_like(PeerRequest::PreVote(rpc), option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, tokio::fs::File>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.send_snapshot(vote, snapshot) => r.map_err(CallError::into_streaming),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(PeerRequest::TransferLeader(req), option.hard_ttl())
            .await
        {
            Ok(PeerResponse::TransferLeader(Ok(r))) => Ok(r),
            Ok(PeerResponse::TransferLeader(Err(e))) => Err(self.network(e).into_rpc()),
            Ok(other) => Err(self
                .network(format!("unexpected answer {other:?}"))
                .into_rpc()),
            Err(e) => Err(e.into_rpc()),
        }
    }
}

impl PeerClient {
    async fn vote_like(
        &self,
        req: PeerRequest,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(req, option.hard_ttl()).await {
            Ok(PeerResponse::Vote(Ok(r))) => Ok(r),
            Ok(PeerResponse::Vote(Err(e))) => Err(self.network(e).into_rpc()),
            Ok(other) => Err(self
                .network(format!("unexpected answer {other:?}"))
                .into_rpc()),
            Err(e) => Err(e.into_rpc()),
        }
    }
}

// ---------------------------------------------------------------- server

/// Everything a peer connection handler needs.
pub struct PeerServer {
    /// This node.
    pub me: Arc<PeerIdentity>,
    /// The node whose Raft instance requests are handed to.
    pub node: Arc<Node>,
    /// Where incoming snapshots are spooled before installing.
    pub snapshot_dir: PathBuf,
}

/// Runs the peer listener until `shutdown` is cancelled.
///
/// Each connection is handled in its own task, tracked by `tasks`. A failed
/// TLS handshake (unknown certificate, wrong CA, no certificate) or a bad
/// hello is logged and closes that connection only.
pub async fn serve_peers(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: Arc<PeerServer>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let acceptor = TlsAcceptor::from(tls);
    tandem_storage::tmp_stats_spawn();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = handle_connection(acceptor, tcp, remote, server) => {}
            }
        });
    }
    tracing::info!("peer listener closed");
}

async fn handle_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    server: Arc<PeerServer>,
) {
    let _ = tcp.set_nodelay(true);
    let mut tls = match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "peer TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "peer TLS handshake timed out");
            return;
        }
    };
    let cert_id = {
        let (_, conn) = tls.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| tandem_certs::node_id_from_cert(c.as_ref()))
    };
    let cert_id = match cert_id {
        Some(Ok(id)) => id,
        _ => {
            tracing::warn!(%remote, "peer certificate names no tandem node");
            let _ = refuse(&mut tls, "certificate names no tandem node").await;
            return;
        }
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame::<Hello, _>(&mut tls)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::warn!(%remote, peer = cert_id, error = %e, "closing peer connection: bad hello");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, peer = cert_id, "closing peer connection: no hello");
            return;
        }
    };
    if let Err(reason) = check_hello(&hello, cert_id, &server.me) {
        tracing::warn!(%remote, peer = cert_id, %reason, "peer refused");
        let _ = refuse(&mut tls, &reason).await;
        return;
    }
    server.node.saw_epoch(hello.epoch);
    let welcome = PeerResponse::Welcome {
        node_id: server.me.node_id,
        epoch: (server.me.epoch)(),
    };
    if write_frame(&mut tls, &welcome).await.is_err() {
        return;
    }
    tracing::debug!(%remote, peer = cert_id, "peer connected");
    let mut incoming: Option<IncomingSnapshot> = None;
    loop {
        let env = match read_frame::<Envelope, _>(&mut tls).await {
            Ok(env) => env,
            Err(FrameError::Closed) => return,
            Err(e @ (FrameError::TooLarge { .. } | FrameError::Malformed(_))) => {
                tracing::warn!(%remote, peer = cert_id, error = %e, "closing peer connection: bad frame");
                return;
            }
            Err(e) => {
                tracing::debug!(%remote, peer = cert_id, error = %e, "peer connection ended");
                return;
            }
        };
        server.node.saw_epoch(env.epoch);
        let resp = match dispatch(&server, env.body, &mut incoming, cert_id, env.epoch).await {
            Ok(r) => r,
            Err(reason) => {
                tracing::warn!(%remote, peer = cert_id, %reason, "closing peer connection");
                let _ = refuse(&mut tls, &reason).await;
                return;
            }
        };
        if write_frame(&mut tls, &resp).await.is_err() {
            return;
        }
    }
}

fn check_hello(hello: &Hello, cert_id: u64, me: &PeerIdentity) -> Result<(), String> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} not supported (this node speaks {PROTOCOL_VERSION})",
            hello.protocol
        ));
    }
    if hello.cluster_id != me.cluster_id {
        return Err(format!("wrong cluster id {:?}", hello.cluster_id));
    }
    if hello.node_id != cert_id {
        return Err(format!(
            "hello says node {} but the certificate is node {cert_id}",
            hello.node_id
        ));
    }
    Ok(())
}

async fn refuse(tls: &mut ServerTls<TcpStream>, reason: &str) -> Result<(), FrameError> {
    write_frame(
        tls,
        &PeerResponse::Refused {
            reason: reason.to_string(),
        },
    )
    .await
}

struct IncomingSnapshot {
    vote: VoteOf<TypeConfig>,
    meta: openraft::alias::SnapshotMetaOf<TypeConfig>,
    file: std::fs::File,
    expected: u64,
    received: u64,
}

/// A Raft message from a node that is not in our membership: tell it so
/// (it was replaced by a forced promotion, or the relationship was broken).
fn fence_check(node: &Node, peer: u64, peer_epoch: u64) -> Option<PeerResponse> {
    let m = node.metrics();
    let membership = m.membership_config.membership();
    if membership.nodes().next().is_none() || membership.get_node(&peer).is_some() {
        return None;
    }
    let ep = node.epoch();
    let kind = if ep.forced && peer_epoch < ep.epoch {
        crate::roles::FenceKind::Forced
    } else {
        crate::roles::FenceKind::Removed
    };
    Some(PeerResponse::Fenced {
        epoch: ep.epoch,
        forked_at: ep.forked_at,
        kind,
    })
}

async fn dispatch(
    server: &PeerServer,
    body: PeerRequest,
    incoming: &mut Option<IncomingSnapshot>,
    peer: u64,
    peer_epoch: u64,
) -> Result<PeerResponse, String> {
    if matches!(
        body,
        PeerRequest::Append(_)
            | PeerRequest::Vote(_)
            | PeerRequest::PreVote(_)
            | PeerRequest::SnapshotBegin { .. }
    ) {
        if let Some(fenced) = fence_check(&server.node, peer, peer_epoch) {
            return Ok(fenced);
        }
    }
    let raft = &server.node.raft();
    Ok(match body {
        PeerRequest::Digest { at_index } => {
            PeerResponse::Digest(server.node.digest_at(at_index).await)
        }
        PeerRequest::Action(action) => {
            PeerResponse::Action(server.node.peer_action(action, peer).await)
        }
        PeerRequest::Append(rpc) => {
            server.node.roles.leader_contact();
            PeerResponse::Append(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
        }
        PeerRequest::Vote(rpc) => {
            PeerResponse::Vote(raft.vote(rpc).await.map_err(|e| e.to_string()))
        }
        PeerRequest::PreVote(rpc) => {
            PeerResponse::Vote(raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
        }
        PeerRequest::TransferLeader(req) => PeerResponse::TransferLeader(
            raft.handle_transfer_leader(req)
                .await
                .map_err(|e| e.to_string()),
        ),
        PeerRequest::SnapshotBegin { vote, meta, len } => {
            let dir = server.snapshot_dir.clone();
            let file = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                tempfile::tempfile_in(&dir)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot spool snapshot: {e}"))?;
            *incoming = Some(IncomingSnapshot {
                vote,
                meta,
                file,
                expected: len,
                received: 0,
            });
            PeerResponse::ChunkStored
        }
        PeerRequest::SnapshotChunk(data) => {
            let snap = incoming.as_mut().ok_or("snapshot chunk without a begin")?;
            snap.received += data.len() as u64;
            if snap.received > snap.expected {
                return Err(format!(
                    "snapshot longer than announced ({} > {})",
                    snap.received, snap.expected
                ));
            }
            // The disk write goes through the blocking pool so the runtime never
            // waits on the disk; chunks are at most 1 MiB.
            let mut file = snap.file.try_clone().map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || file.write_all(&data))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot spool snapshot: {e}"))?;
            PeerResponse::ChunkStored
        }
        PeerRequest::SnapshotEnd => {
            let snap = incoming.take().ok_or("snapshot end without a begin")?;
            if snap.received != snap.expected {
                return Err(format!(
                    "snapshot incomplete ({} of {} bytes)",
                    snap.received, snap.expected
                ));
            }
            let mut file = snap.file;
            let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                file.sync_all()?;
                file.seek(SeekFrom::Start(0))?;
                Ok(file)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot spool snapshot: {e}"))?;
            let snapshot = Snapshot {
                meta: snap.meta,
                snapshot: tokio::fs::File::from_std(file),
            };
            PeerResponse::Snapshot(
                raft.install_full_snapshot(snap.vote, snapshot)
                    .await
                    .map_err(|e| e.to_string()),
            )
        }
    })
}
