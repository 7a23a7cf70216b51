//! Peer transport: the mutual-TLS listener and the Raft network client.
//!
//! One listener per node carries peer traffic only (never the admin API).
//! Connections are persistent: the client keeps a small pool per target and
//! opens a new connection when the pool is empty; a connection that fails is
//! dropped, never reused. Connect failures are reported to openraft as
//! `Unreachable`, everything else as `Network`. The client does not retry on
//! its own: openraft backs off between replication attempts with the delays
//! [`PeerClient`] hands it (capped at the heartbeat interval), and every
//! dial's outcome goes to [`crate::peer_reach`], which logs a peer's loss and
//! return once, not each attempt (DESIGN rule 8).

use std::collections::HashMap;
use std::future::Future;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
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
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream as ClientTls;
use tokio_rustls::server::TlsStream as ServerTls;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame::{encode_frame, read_frame, write_frame, FrameError};
use crate::node::Node;
use crate::peer_reach::{backoff_delays, PeerReach};
use crate::protocol::{Envelope, Hello, PeerRequest, PeerResponse, PROTOCOL_VERSION};
use crate::util::{lock, AbortOnDrop};

/// Bound on a TCP connect plus TLS handshake plus hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the TCP connect alone. A peer whose host is cut off answers no
/// SYN; a dial that waited for the kernel's SYN retries (1 s, then 3 s)
/// would delay the first replication after the link returns by seconds.
/// A fresh dial is cheaper.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on an idle server-side wait for the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of one snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Idle connections kept per target.
const POOL_SIZE: usize = 4;
/// AppendEntries requests a stream may have sent and not yet seen answered.
const PIPELINE_DEPTH: usize = 16;
/// Burst a bandwidth limit allows, as time at the limit rate.
const LIMIT_BURST: Duration = Duration::from_millis(50);

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
    /// Current limit, in bytes per second (0 = unlimited), on what this node
    /// sends in snapshot chunks and in AppendEntries carrying entries
    /// (heartbeats are never held back). Read before each chunk or frame.
    pub bandwidth_limit: Box<dyn Fn() -> u64 + Send + Sync>,
    /// The Raft heartbeat interval: the longest pause openraft makes
    /// between replication attempts to a peer that does not answer.
    pub heartbeat: Duration,
}

// ---------------------------------------------------------------- bandwidth

/// A token bucket shared by every stream this node sends: the limit applies
/// to their sum. The bucket holds at most [`LIMIT_BURST`] worth of bytes; a
/// send larger than what it holds goes into debt and waits until the debt is
/// repaid, so a 1 MiB chunk under a 64 KiB/s limit waits about 16 s.
#[derive(Default)]
pub struct RateLimiter {
    bucket: tokio::sync::Mutex<Bucket>,
}

#[derive(Default)]
struct Bucket {
    tokens: f64,
    last: Option<tokio::time::Instant>,
}

impl RateLimiter {
    /// Waits until `bytes` may be sent under `rate` bytes per second
    /// (0 = unlimited: returns at once). Concurrent callers queue in turn.
    pub async fn acquire(&self, bytes: usize, rate: u64) {
        if rate == 0 {
            return;
        }
        let rate = rate as f64;
        let mut b = self.bucket.lock().await;
        let now = tokio::time::Instant::now();
        let cap = rate * LIMIT_BURST.as_secs_f64();
        let refill = b
            .last
            .map_or(cap, |t| now.duration_since(t).as_secs_f64() * rate);
        b.tokens = (b.tokens + refill).min(cap) - bytes as f64;
        b.last = Some(now);
        if b.tokens < 0.0 {
            // Holding the lock while waiting makes the next sender wait its turn.
            tokio::time::sleep(Duration::from_secs_f64(-b.tokens / rate)).await;
            b.tokens = 0.0;
            b.last = Some(tokio::time::Instant::now());
        }
    }
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
    /// A request went out; its answer is due. `(prev, last)` log ids.
    Request(Option<LogId>, Option<LogId>),
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
        let (prev, last) = match rx.recv().await? {
            Sent::Request(prev, last) => (prev, last),
            Sent::Failed(e) => return Some((Err(ctx.network(e)), None)),
        };
        let answer =
            match tokio::time::timeout(ctx.ttl, read_frame::<PeerResponse, _>(&mut rd)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => return Some((Err(ctx.network(e)), None)),
                Err(_) => {
                    let e = ctx.network(format!("no answer within {:?}", ctx.ttl));
                    return Some((Err(e), None));
                }
            };
        match answer {
            PeerResponse::AppendStream(Ok(r)) => {
                // Go on only after a full success; a conflict, a higher vote
                // or a partial success ends the stream (openraft restarts it).
                let go_on = matches!(&r, Ok(matched) if *matched == last);
                let _ = prev;
                let next = go_on.then_some((rd, rx, ctx, guard));
                Some((Ok(r), next))
            }
            PeerResponse::AppendStream(Err(e)) => Some((Err(ctx.network(e)), None)),
            PeerResponse::Fenced {
                epoch,
                forked_at,
                kind,
            } => {
                ctx.me.fence.fenced(crate::roles::FenceNotice {
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
        let prev = req.prev_log_id;
        let last = req.entries.last().map(|e| e.log_id).or(prev);
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
            Ok::<(), FrameError>(())
        };
        match sent.await {
            Ok(()) => slot.send(Sent::Request(prev, last)),
            Err(e) => {
                slot.send(Sent::Failed(e.to_string()));
                return;
            }
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
        if let PeerRequest::AppendStream(first) = env.body {
            serve_append_stream(&server, tls, first, cert_id, env.epoch).await;
            return;
        }
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

/// Serves an append stream (the rest of this connection): requests are
/// handed to Raft's own pipelined `stream_append` as they arrive and the
/// answers written back in order. A request from a node that is not a member
/// ends the stream with [`PeerResponse::Fenced`] after the answers due.
async fn serve_append_stream(
    server: &Arc<PeerServer>,
    tls: ServerTls<TcpStream>,
    first: AppendEntriesRequest<TypeConfig>,
    peer: u64,
    first_epoch: u64,
) {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (tx, mut rx) = tokio::sync::mpsc::channel(PIPELINE_DEPTH * 2);
    let (fenced_tx, mut fenced_rx) = tokio::sync::oneshot::channel::<PeerResponse>();
    let raft = server.node.raft();
    let input = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut answers = std::pin::pin!(raft.stream_append(input));
    let node = server.node.clone();
    let reader = async move {
        let mut next = Some((first, first_epoch));
        loop {
            let (req, epoch) = match next.take() {
                Some(x) => x,
                None => match read_frame::<Envelope, _>(&mut rd).await {
                    Ok(Envelope {
                        epoch,
                        body: PeerRequest::AppendStream(req),
                    }) => {
                        node.saw_epoch(epoch);
                        (req, epoch)
                    }
                    Ok(_) => {
                        tracing::warn!(peer, "closing append stream: not an append");
                        return;
                    }
                    Err(_) => return,
                },
            };
            if let Some(f) = fence_check(&node, peer, epoch) {
                let _ = fenced_tx.send(f);
                return;
            }
            node.roles.leader_contact();
            if tx.send(req).await.is_err() {
                return;
            }
        }
        // Dropping `tx` ends Raft's input: the answers due still come.
    };
    let writer = async move {
        while let Some(r) = answers.next().await {
            let stop = !matches!(r, Ok(Ok(_)));
            let resp = PeerResponse::AppendStream(r.map_err(|e| e.to_string()));
            if write_frame(&mut wr, &resp).await.is_err() || stop {
                return;
            }
        }
        if let Ok(f) = fenced_rx.try_recv() {
            let _ = write_frame(&mut wr, &f).await;
        }
    };
    let mut reader = std::pin::pin!(reader);
    let mut writer = std::pin::pin!(writer);
    let mut reading = true;
    loop {
        tokio::select! {
            () = &mut reader, if reading => reading = false,
            () = &mut writer => return,
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
    // A pristine node (no membership yet) fences nobody.
    membership.nodes().next()?;
    let ep = node.epoch();
    if membership.get_node(&peer).is_some() {
        // A member still speaking for the lineage a forced promotion
        // replaced (it was re-added by a rejoin while its old Raft ran): a
        // member of this lineage has applied the forced epoch, a pristine
        // rejoining node sends epoch 0 and no Raft requests.
        let stale = ep.forced && peer_epoch != 0 && peer_epoch < ep.epoch;
        if !stale {
            return None;
        }
    }
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
        PeerRequest::AppendStream(_) => {
            return Err("append stream request on a request/response connection".into())
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
            fence: Arc::new(crate::roles::Fence::default()),
            bandwidth_limit: Box::new(move || limit),
            heartbeat: Duration::from_millis(100),
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

    /// Bytes sent in `window` by `senders` concurrent senders of `chunk`-byte
    /// pieces through one limiter at `rate` bytes/s.
    async fn measure(rate: u64, chunk: usize, senders: usize, window: Duration) -> f64 {
        let limiter = Arc::new(RateLimiter::default());
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..senders {
            let (limiter, sent) = (limiter.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < window {
                    limiter.acquire(chunk, rate).await;
                    sent.fetch_add(chunk as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender ran");
        }
        let secs = start.elapsed().as_secs_f64();
        sent.load(std::sync::atomic::Ordering::Relaxed) as f64 / secs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limiter_holds_the_rate() {
        // Real time, 1.5 s, the cases side by side.
        let cases = [
            (1_000_000, 16 * 1024, 1),
            (1_000_000, 16 * 1024, 4),
            (65_536, 16 * 1024, 1),
            (200_000, 512 * 1024, 1), // chunks larger than the burst
            (4_000_000, 64 * 1024, 2),
        ];
        let runs = cases.map(|(rate, chunk, senders)| {
            tokio::spawn(measure(rate, chunk, senders, Duration::from_millis(1500)))
        });
        for ((rate, chunk, senders), run) in cases.into_iter().zip(runs) {
            let got = run.await.expect("measured");
            let ratio = got / rate as f64;
            assert!(
                (0.8..=1.2).contains(&ratio),
                "rate {rate}, chunk {chunk}, {senders} senders: {got:.0} B/s"
            );
        }
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = RateLimiter::default();
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            limiter.acquire(1 << 20, 0).await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
