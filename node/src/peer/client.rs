//! The Raft network client: openraft's `RaftNetworkV2` over mutual TLS,
//! and relationship calls to peers.
//!
//! Connections are persistent: the client keeps a small pool per target and
//! opens a new connection when the pool is empty; a connection that fails is
//! dropped, never reused. Connect failures are reported to openraft as
//! `Unreachable`, everything else as `Network`. The client does not retry on
//! its own: openraft backs off between replication attempts with the delays
//! [`PeerClient`] hands it (capped at the heartbeat interval), and every
//! dial's outcome goes to [`super::reach`], which logs a peer's loss and
//! return once, not each attempt (DESIGN rule 8).

use std::collections::HashMap;
use std::future::Future;
use std::io::SeekFrom;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2, Snapshot};
use rustls_pki_types::ServerName;
use tandem_storage::{LogId, NodeInfo, TypeConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream as ClientTls;
use tokio_rustls::TlsConnector;

use super::rate::RateLimiter;
use super::reach::{backoff_delays, PeerReach};
use crate::peer::frame::{encode_frame, read_frame, write_frame, FrameError};
use crate::peer::protocol::{Envelope, Hello, PeerRequest, PeerResponse, PROTOCOL_VERSION};
use crate::util::{lock, AbortOnDrop};

/// Bound on a TCP connect plus TLS handshake plus hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the TCP connect alone. A peer whose host is cut off answers no
/// SYN; a dial that waited for the kernel's SYN retries (1 s, then 3 s)
/// would delay the first replication after the link returns by seconds.
/// A fresh dial is cheaper.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Size of one snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Idle connections kept per target.
const POOL_SIZE: usize = 4;
/// AppendEntries requests a stream may have sent and not yet seen answered.
const PIPELINE_DEPTH: usize = 16;
/// The slowest rate at which a live peer is assumed to decode and store an
/// append frame. Each answer may take the RPC's soft TTL plus the frame's
/// size at this rate: a 4 MiB frame of catch-up entries gets 2 s more than a
/// heartbeat. The soft TTL alone (75 ms at the default timing) would time
/// out a healthy peer writing a large frame, and each timeout sends the
/// whole frame again.
const SLOW_PEER_BYTES_PER_SEC: f64 = 2.0 * 1024.0 * 1024.0;

/// How long the answer to an append frame of `bytes` may take once sent.
fn answer_bound(ttl: Duration, bytes: usize) -> Duration {
    ttl + Duration::from_secs_f64(bytes as f64 / SLOW_PEER_BYTES_PER_SEC)
}

/// What the transport needs to know about this node, shared by client and server.
pub struct PeerIdentity {
    /// This node's id.
    pub node_id: u64,
    /// The cluster id every peer must present.
    pub cluster_id: String,
    /// Current epoch, read from the replicated state.
    pub epoch: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Where refusals by peers are recorded.
    pub fence: Arc<crate::peer::fence::Fence>,
    /// Current limit, in bytes per second (0 = unlimited), on what this node
    /// sends in snapshot chunks and in AppendEntries carrying entries
    /// (heartbeats are never held back). Read before each chunk or frame.
    pub bandwidth_limit: Box<dyn Fn() -> u64 + Send + Sync>,
    /// The Raft heartbeat interval: the longest pause openraft makes
    /// between replication attempts to a peer that does not answer.
    pub heartbeat: Duration,
    /// The certificates peers presented.
    pub seen_certs: crate::peer::seen_certs::SeenCerts,
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
    limiter: Arc<RateLimiter>,
    reach: PeerReach,
}

impl PeerNetwork {
    /// A network that dials peers with `tls` (the node's mutual-TLS client config).
    pub fn new(me: Arc<PeerIdentity>, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            shared: Arc::new(ClientShared {
                me,
                connector: TlsConnector::from(tls),
                pools: Mutex::new(HashMap::new()),
                limiter: Arc::new(RateLimiter::default()),
                reach: PeerReach::default(),
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

    /// Dials the peer and says hello; the outcome goes to [`PeerReach`].
    /// A dial dropped before it ends (a caller's timeout) counts as neither.
    async fn connect(&self) -> Result<ClientTls<TcpStream>, CallError> {
        let r = self.dial().await;
        match &r {
            Ok(_) => self.shared.reach.reached(self.target, &self.addr),
            Err(e) => self
                .shared
                .reach
                .missed(self.target, &self.addr, &e.to_string()),
        };
        r
    }

    async fn dial(&self) -> Result<ClientTls<TcpStream>, CallError> {
        let me = &self.shared.me;
        let dial = async {
            let tcp = loop {
                // A dial to a peer that was away starts afresh when a dial
                // reaches a peer that was away (typically this one, by the
                // next heartbeat): its own SYN may have been lost while the
                // peer's host was cut off. A return of another peer costs
                // one extra SYN.
                let back = self.shared.reach.returned();
                let away = self.shared.reach.is_away(self.target);
                let connect = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&self.addr));
                tokio::select! {
                    r = connect => match r {
                        Ok(r) => break r.map_err(|e| self.unreachable(e))?,
                        Err(_) => return Err(self.unreachable("TCP connect timed out")),
                    },
                    () = back, if away => {}
                }
            };
            tcp.set_nodelay(true).map_err(|e| self.unreachable(e))?;
            let name = ServerName::try_from(tandem_certs::server_name_for(self.target))
                .map_err(|e| self.unreachable(format!("bad server name: {e}")))?;
            let mut tls = self
                .shared
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| self.unreachable(format!("TLS handshake: {e}")))?;
            if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                me.seen_certs.saw(self.target, leaf.as_ref());
            }
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
        loop {
            let pooled = {
                // A poisoned lock only means another task panicked while holding it;
                // the pool itself (a Vec of connections) is still consistent.
                let mut pools = lock(&self.shared.pools);
                pools.get_mut(&self.pool_key()).and_then(Vec::pop)
            };
            match pooled {
                Some(c) if idle_and_open(&c) => return Ok(c),
                Some(_) => continue, // closed by the peer (e.g. it restarted)
                None => return self.connect().await,
            }
        }
    }

    fn checkin(&self, conn: ClientTls<TcpStream>) {
        let mut pools = lock(&self.shared.pools);
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
                self.shared
                    .me
                    .fence
                    .fenced(crate::peer::fence::FenceNotice {
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
            self.shared
                .limiter
                .acquire(n, (self.shared.me.bandwidth_limit)())
                .await;
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
        if !rpc.entries.is_empty() {
            // Approximate size: the entries dominate the frame.
            let bytes = tandem_storage::encode(&rpc.entries).map_or(0, |b| b.len());
            self.shared
                .limiter
                .acquire(bytes, (self.shared.me.bandwidth_limit)())
                .await;
        }
        match self.call(PeerRequest::Append(rpc), option.hard_ttl()).await {
            Ok(PeerResponse::Append(Ok(r))) => Ok(r),
            Ok(PeerResponse::Append(Err(e))) => Err(self.network(e).into_rpc()),
            Ok(other) => Err(self
                .network(format!("unexpected answer {other:?}"))
                .into_rpc()),
            Err(e) => Err(e.into_rpc()),
        }
    }

    /// Pipelined AppendEntries on a dedicated connection: up to
    /// [`PIPELINE_DEPTH`] requests in flight, answers in order.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendStreamItem>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            // The first request before the dial: openraft sleeps its backoff
            // inside the request stream, so a peer that refuses connections
            // is retried at the pace of `backoff()`, not in a busy loop.
            let mut input = input;
            let Some(first) = input.next().await else {
                let none: BoxStream<'s, AppendStreamItem> = Box::pin(futures::stream::empty());
                return Ok(none);
            };
            let input = futures::stream::once(std::future::ready(first)).chain(input);
            let conn = self.connect().await.map_err(CallError::into_rpc)?;
            let ctx = StreamCtx {
                target: self.target,
                addr: self.addr.clone(),
                me: self.shared.me.clone(),
                limiter: self.shared.limiter.clone(),
                ttl: option.soft_ttl(),
            };
            let s: BoxStream<'s, AppendStreamItem> =
                Box::pin(append_pipeline(conn, input, ctx).map(|r| r.map_err(CallError::into_rpc)));
            Ok(s)
        })
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

    /// Delays between replication attempts to a peer that did not answer:
    /// 10 ms doubling up to the heartbeat interval. openraft uses them once
    /// an attempt failed as `Unreachable`, and drops them at the first
    /// success.
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(backoff_delays(self.shared.me.heartbeat)))
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

/// Whether a pooled connection is still usable: nothing is waiting to be
/// read on it. A peer that closed it (or restarted) left an end of stream or
/// an alert there; an idle healthy connection has nothing. Raft traffic runs
/// on append streams, so pooled connections can sit idle for long.
fn idle_and_open(conn: &ClientTls<TcpStream>) -> bool {
    let (tcp, _) = conn.get_ref();
    let mut buf = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut buf);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    tcp.poll_peek(&mut cx, &mut buf).is_pending()
}

// ---------------------------------------------------------------- append stream

type AppendStreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// What an append stream needs besides its connection.
struct StreamCtx {
    target: u64,
    addr: String,
    me: Arc<PeerIdentity>,
    limiter: Arc<RateLimiter>,
    /// Bound on the wait for each answer once its request was sent.
    ttl: Duration,
}

impl StreamCtx {
    fn network(&self, reason: impl ToString) -> CallError {
        CallError::Network {
            target: self.target,
            reason: reason.to_string(),
        }
    }
}

/// What the sending half tells the receiving half, in send order.
enum Sent {
    /// A request went out; its answer is due: the last log id it carries
    /// (its `prev` when it carries none) and the frame's size in bytes.
    Request(Option<LogId>, usize),
    /// Sending failed; the stream ends with this error.
    Failed(String),
}

/// Runs an append stream over `io` (an authenticated peer connection): a
/// task sends the requests of `input` as they come, holding at most
/// [`PIPELINE_DEPTH`] unanswered, and the returned stream yields the answers
/// in order. It ends when `input` ends and every answer is in, or after the
/// first error, conflict, higher vote or partial success (as openraft's
/// sequential stream does); the connection is then dropped, never pooled.
fn append_pipeline<T, S>(
    io: T,
    input: S,
    ctx: StreamCtx,
) -> impl Stream<Item = Result<StreamAppendResult<TypeConfig>, CallError>> + Send + 'static
where
    T: AsyncRead + AsyncWrite + Send + 'static,
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = tokio::sync::mpsc::channel::<Sent>(PIPELINE_DEPTH);
    let sender = tokio::spawn(send_appends(
        wr,
        input,
        ctx.me.clone(),
        ctx.limiter.clone(),
        tx,
    ));
    let state = Some((rd, rx, ctx, AbortOnDrop(sender)));
    futures::stream::unfold(state, |state| async move {
        let (mut rd, mut rx, ctx, guard) = state?;
        let (last, bytes) = match rx.recv().await? {
            Sent::Request(last, bytes) => (last, bytes),
            Sent::Failed(e) => return Some((Err(ctx.network(e)), None)),
        };
        let bound = answer_bound(ctx.ttl, bytes);
        let answer = match tokio::time::timeout(bound, read_frame::<PeerResponse, _>(&mut rd)).await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Some((Err(ctx.network(e)), None)),
            Err(_) => {
                let e = ctx.network(format!(
                    "no answer within {bound:?} to a frame of {bytes} bytes"
                ));
                return Some((Err(e), None));
            }
        };
        match answer {
            PeerResponse::AppendStream(Ok(r)) => {
                // Go on only after a full success; a conflict, a higher vote
                // or a partial success ends the stream (openraft restarts it).
                let go_on = matches!(&r, Ok(matched) if *matched == last);
                let next = go_on.then_some((rd, rx, ctx, guard));
                Some((Ok(r), next))
            }
            PeerResponse::AppendStream(Err(e)) => Some((Err(ctx.network(e)), None)),
            PeerResponse::Fenced {
                epoch,
                forked_at,
                kind,
            } => {
                ctx.me.fence.fenced(crate::peer::fence::FenceNotice {
                    by: ctx.target,
                    by_addr: ctx.addr.clone(),
                    epoch,
                    forked_at,
                    kind,
                });
                let e = ctx.network(format!(
                    "node {} no longer counts this node as a member",
                    ctx.target
                ));
                Some((Err(e), None))
            }
            PeerResponse::Refused { reason } => {
                Some((Err(ctx.network(format!("refused: {reason}"))), None))
            }
            other => Some((
                Err(ctx.network(format!("unexpected answer {other:?}"))),
                None,
            )),
        }
    })
}

/// The sending half of an append stream.
async fn send_appends<W, S>(
    mut wr: W,
    mut input: S,
    me: Arc<PeerIdentity>,
    limiter: Arc<RateLimiter>,
    tx: tokio::sync::mpsc::Sender<Sent>,
) where
    W: AsyncWrite + Unpin,
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    while let Some(req) = input.next().await {
        let last = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
        let heartbeat = req.entries.is_empty();
        // A pipeline slot first: at most PIPELINE_DEPTH answers outstanding.
        let Ok(slot) = tx.reserve().await else {
            return; // the answer stream is gone
        };
        let env = Envelope {
            epoch: (me.epoch)(),
            body: PeerRequest::AppendStream(req),
        };
        let sent = async {
            let bytes = encode_frame(&env)?;
            if !heartbeat {
                limiter.acquire(bytes.len(), (me.bandwidth_limit)()).await;
            }
            wr.write_all(&bytes).await?;
            wr.flush().await?;
            Ok::<usize, FrameError>(bytes.len())
        };
        match sent.await {
            Ok(len) => slot.send(Sent::Request(last, len)),
            Err(e) => {
                slot.send(Sent::Failed(e.to_string()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::raft::StreamAppendError;
    use tandem_storage::{Entry, Vote};

    fn identity(limit: u64) -> Arc<PeerIdentity> {
        Arc::new(PeerIdentity {
            node_id: 1,
            cluster_id: "c".into(),
            epoch: Box::new(|| 0),
            fence: Arc::new(crate::peer::fence::Fence::default()),
            bandwidth_limit: Box::new(move || limit),
            heartbeat: Duration::from_millis(100),
            seen_certs: Default::default(),
        })
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    /// Entries `from..to` (a heartbeat when empty) after entry `from - 1`.
    fn request(from: u64, to: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: (from > 1).then(|| log_id(from - 1)),
            entries: (from..to)
                .map(|i| Entry {
                    log_id: log_id(i),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        }
    }

    fn ctx(limit: u64) -> StreamCtx {
        StreamCtx {
            target: 2,
            addr: "test".into(),
            me: identity(limit),
            limiter: Arc::new(RateLimiter::default()),
            ttl: Duration::from_secs(5),
        }
    }

    /// A follower that reads `batch` requests before answering any of them,
    /// answering request number `conflict_at` (0-based) with a conflict.
    async fn fake_follower(
        mut io: tokio::io::DuplexStream,
        batch: usize,
        conflict_at: Option<usize>,
    ) -> usize {
        let mut seen = 0;
        loop {
            let mut reqs = Vec::new();
            for _ in 0..batch {
                match read_frame::<Envelope, _>(&mut io).await {
                    Ok(Envelope {
                        body: PeerRequest::AppendStream(r),
                        ..
                    }) => reqs.push(r),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(_) => return seen,
                }
            }
            for r in reqs {
                let last = r.entries.last().map(|e| e.log_id).or(r.prev_log_id);
                let answer = if Some(seen) == conflict_at {
                    Err(StreamAppendError::Conflict(
                        r.prev_log_id.expect("has prev"),
                    ))
                } else {
                    Ok(last)
                };
                seen += 1;
                write_frame(&mut io, &PeerResponse::AppendStream(Ok(answer)))
                    .await
                    .expect("answer written");
            }
        }
    }

    #[tokio::test]
    async fn pipeline_sends_ahead_and_answers_in_order() {
        let (client, server) = tokio::io::duplex(1 << 20);
        // The follower answers only after three requests arrived: a client
        // waiting for each answer before the next request would hang.
        let follower = tokio::spawn(fake_follower(server, 3, None));
        let input = futures::stream::iter(vec![request(1, 3), request(3, 5), request(5, 5)]);
        let answers: Vec<_> = append_pipeline(client, input, ctx(0)).collect().await;
        let answers: Vec<_> = answers
            .into_iter()
            .map(|a| a.expect("no transport error"))
            .collect();
        assert_eq!(
            answers,
            vec![
                Ok(Some(log_id(2))),
                Ok(Some(log_id(4))),
                Ok(Some(log_id(4)))
            ]
        );
        assert_eq!(follower.await.expect("follower ran"), 3);
    }

    #[tokio::test]
    async fn pipeline_stops_at_a_conflict() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let _follower = tokio::spawn(fake_follower(server, 1, Some(1)));
        let input = futures::stream::iter(vec![request(1, 3), request(3, 5), request(5, 7)]);
        let answers: Vec<_> = append_pipeline(client, input, ctx(0)).collect().await;
        assert_eq!(answers.len(), 2, "nothing after the conflict");
        assert!(matches!(answers[0], Ok(Ok(Some(_)))));
        assert!(matches!(
            answers[1],
            Ok(Err(StreamAppendError::Conflict(_)))
        ));
    }

    #[tokio::test]
    async fn pipeline_reports_a_broken_connection() {
        let (client, server) = tokio::io::duplex(1 << 20);
        drop(server);
        let input = futures::stream::iter(vec![request(1, 3)]);
        let answers: Vec<_> = append_pipeline(client, input, ctx(0)).collect().await;
        assert_eq!(answers.len(), 1);
        assert!(matches!(answers[0], Err(CallError::Network { .. })));
    }

    /// A follower that answers each request `delay` after reading it.
    async fn slow_follower(mut io: tokio::io::DuplexStream, delay: Duration) {
        while let Ok(Envelope {
            body: PeerRequest::AppendStream(r),
            ..
        }) = read_frame::<Envelope, _>(&mut io).await
        {
            tokio::time::sleep(delay).await;
            let last = r.entries.last().map(|e| e.log_id).or(r.prev_log_id);
            if write_frame(&mut io, &PeerResponse::AppendStream(Ok(Ok(last))))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// One entry `index` carrying a configuration value of `len` bytes.
    fn big_request(index: u64, len: usize) -> AppendEntriesRequest<TypeConfig> {
        let mut r = request(index, index);
        r.entries.push(Entry {
            log_id: log_id(index),
            payload: openraft::EntryPayload::Normal(tandem_storage::Request::ConfigPut {
                key: "k".into(),
                value_json: format!("\"{}\"", "x".repeat(len)),
                actor: "test".into(),
                at_ms: 0,
                if_version: None,
            }),
        });
        r
    }

    #[tokio::test]
    async fn a_large_frame_gets_time_to_be_stored() {
        // 1 MiB at the assumed slowest rate earns 0.5 s on top of the TTL;
        // the follower takes 0.3 s, six times the 50 ms TTL.
        let (client, server) = tokio::io::duplex(1 << 22);
        let _follower = tokio::spawn(slow_follower(server, Duration::from_millis(300)));
        let mut c = ctx(0);
        c.ttl = Duration::from_millis(50);
        let input = futures::stream::iter(vec![big_request(1, 1 << 20)]);
        let answers: Vec<_> = append_pipeline(client, input, c).collect().await;
        assert_eq!(answers.len(), 1);
        assert!(
            matches!(answers[0], Ok(Ok(Some(_)))),
            "the large frame's answer was not awaited: {:?}",
            answers[0]
        );
    }

    #[tokio::test]
    async fn a_small_frame_answered_late_ends_the_stream() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let _follower = tokio::spawn(slow_follower(server, Duration::from_millis(300)));
        let mut c = ctx(0);
        c.ttl = Duration::from_millis(50);
        let input = futures::stream::iter(vec![request(1, 3)]);
        let answers: Vec<_> = append_pipeline(client, input, c).collect().await;
        assert_eq!(answers.len(), 1);
        assert!(
            matches!(&answers[0], Err(CallError::Network { reason, .. }) if reason.contains("no answer")),
            "{:?}",
            answers[0]
        );
    }

    #[tokio::test]
    async fn heartbeats_are_not_throttled() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let _follower = tokio::spawn(fake_follower(server, 1, None));
        // 1 byte/s: any frame with entries would wait for minutes.
        let input = futures::stream::iter((0..20).map(|_| request(1, 1)));
        let start = tokio::time::Instant::now();
        let answers: Vec<_> = append_pipeline(client, input, ctx(1)).collect().await;
        assert_eq!(answers.len(), 20);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn appends_are_throttled() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let _follower = tokio::spawn(fake_follower(server, 1, None));
        let input = futures::stream::iter((0..4).map(|i| request(1 + i * 100, 101 + i * 100)));
        let start = tokio::time::Instant::now();
        let answers: Vec<_> = append_pipeline(client, input, ctx(2_000)).collect().await;
        assert_eq!(answers.len(), 4);
        // 4 frames of 100 entries (about 2 KB in all) at 2 KB/s.
        assert!(
            start.elapsed() >= Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }
}
