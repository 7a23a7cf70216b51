//! The peer listener: mutual TLS, the hello, then Raft and relationship
//! requests handed to a [`PeerHandler`], which this side declares and the
//! node implements (as `web` declares `AdminBackend`): the server knows
//! nothing of the node beyond it.
//!
//! A connection is refused when the TLS client certificate is not from the
//! cluster CA or the hello is wrong, and closed on an oversized or malformed
//! frame; the node keeps running. Snapshots are spooled into an unnamed
//! temporary file and installed from it.

use std::future::Future;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::alias::VoteOf;
use openraft::raft::AppendEntriesRequest;
use openraft::Snapshot;
use tandem_storage::{EpochRecord, StateMachineStore, TypeConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream as ServerTls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admit::{admit, tune, OpenPeers, Refusals};
use super::client::PeerIdentity;
use super::fence::FenceKind;
use super::frame::{read_frame, write_frame, FrameError};
use super::protocol::{
    ActionRequest, Envelope, Hello, PeerRequest, PeerResponse, PROTOCOL_VERSION,
};
use crate::util::AbortOnDrop;

/// Pause after a failed accept (out of file descriptors) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// From accept to a good hello, the TLS handshake included. A peer's own
/// dial takes 3 s at most (`client::CONNECT_TIMEOUT`).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Raft answers an append stream may have queued before it reads more.
const STREAM_QUEUE: usize = 32;

/// The Raft instance requests are handed to.
pub type PeerRaft = openraft::Raft<TypeConfig, StateMachineStore>;

/// What the peer server needs from the node it serves.
pub trait PeerHandler: Send + Sync + 'static {
    /// The current Raft instance (it changes after a reset).
    fn raft(&self) -> PeerRaft;
    /// Peer `peer` showed this epoch (in its hello or a request).
    fn saw_epoch(&self, peer: u64, epoch: u64);
    /// The leader reached this node (an append or heartbeat arrived).
    fn leader_contact(&self);
    /// Why this node refuses every vote now, if it does: its engine was
    /// just rebuilt and has forgotten when it last heard the leader.
    fn votes_held(&self) -> Option<String>;
    /// Whether `peer` is a member of this node's membership: `None` while
    /// this node has no membership yet (pristine: it fences nobody).
    fn is_member(&self, peer: u64) -> Option<bool>;
    /// The applied epoch record.
    fn epoch_record(&self) -> EpochRecord;
    /// The state digest at `at_index` (verify).
    fn digest_at(
        &self,
        at_index: u64,
    ) -> impl Future<Output = Result<(u64, String), String>> + Send;
    /// A relationship action a peer asks of this node.
    fn peer_action(
        &self,
        action: ActionRequest,
        from: u64,
    ) -> impl Future<Output = Result<String, String>> + Send;
}

/// Everything a peer connection handler needs.
pub struct PeerServer<H> {
    /// This node.
    pub me: Arc<PeerIdentity>,
    /// What requests are handed to.
    pub handler: Arc<H>,
    /// Where incoming snapshots are spooled before installing.
    pub snapshot_dir: PathBuf,
}

/// Runs the peer listener until `shutdown` is cancelled.
///
/// Each connection is handled in its own task, tracked by `tasks`. Beyond
/// the caps of [`super::admit`] a new connection is closed at once; an
/// admitted one must finish its TLS handshake and send a good hello within
/// [`HELLO_TIMEOUT`] of its accept, and is never cut for idleness after
/// that. A failed handshake (unknown certificate, wrong CA, no
/// certificate) or a bad hello is logged and closes that connection only.
pub async fn serve_peers<H: PeerHandler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: Arc<PeerServer<H>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let acceptor = TlsAcceptor::from(tls);
    let open = Arc::new(std::sync::Mutex::new(OpenPeers::default()));
    let mut refused = Refusals::default();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                    }
                }
            },
        };
        let Some(place) = admit(&open, remote.ip()) else {
            drop(tcp);
            refused.note(remote);
            continue;
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _place = place;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = handle_connection(acceptor, tcp, remote, server) => {}
            }
        });
    }
    tracing::info!("peer listener closed");
}

/// The handshake and the hello, within [`HELLO_TIMEOUT`] of the accept:
/// the authenticated stream and the node id its certificate names.
async fn greet<H: PeerHandler>(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    server: &PeerServer<H>,
) -> Option<(ServerTls<TcpStream>, u64)> {
    let mut tls = match acceptor.accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "peer TLS handshake refused");
            return None;
        }
    };
    let cert_id = {
        let (_, conn) = tls.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| tandem_certs::node_id_from_cert(c.as_ref()))
    };
    let cert_id = match cert_id {
        Some(Ok(id)) => {
            if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                server.me.seen_certs.saw(id, leaf.as_ref());
            }
            id
        }
        _ => {
            tracing::warn!(%remote, "peer certificate names no tandem node");
            let _ = refuse(&mut tls, "certificate names no tandem node").await;
            return None;
        }
    };
    let hello = match read_frame::<Hello, _>(&mut tls).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%remote, peer = cert_id, error = %e, "closing peer connection: bad hello");
            return None;
        }
    };
    if let Err(reason) = check_hello(&hello, cert_id, &server.me) {
        tracing::warn!(%remote, peer = cert_id, %reason, "peer refused");
        let _ = refuse(&mut tls, &reason).await;
        return None;
    }
    server.handler.saw_epoch(cert_id, hello.epoch);
    Some((tls, cert_id))
}

async fn handle_connection<H: PeerHandler>(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    server: Arc<PeerServer<H>>,
) {
    // From the accept. Peer handshakes run at the runtime's own priority:
    // on the low-priority thread the admin listener uses, a busy CPU
    // delayed the members' own connections past a heartbeat and cost
    // elections; the listener's caps bound what strangers can make it do.
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    tune(&tcp);
    let greeting = {
        let server = server.clone();
        tokio::spawn(async move {
            tokio::time::timeout_at(deadline, greet(acceptor, tcp, remote, &server)).await
        })
    };
    // Aborted if this connection's task ends first (shutdown).
    let mut greeting = AbortOnDrop(greeting);
    let (mut tls, cert_id) = match (&mut greeting.0).await {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err(_)) => {
            tracing::warn!(%remote, "closing peer connection: no handshake and hello in time");
            return;
        }
    };
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
        server.handler.saw_epoch(cert_id, env.epoch);
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
async fn serve_append_stream<H: PeerHandler>(
    server: &Arc<PeerServer<H>>,
    tls: ServerTls<TcpStream>,
    first: AppendEntriesRequest<TypeConfig>,
    peer: u64,
    first_epoch: u64,
) {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (tx, mut rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    let (fenced_tx, mut fenced_rx) = tokio::sync::oneshot::channel::<PeerResponse>();
    let raft = server.handler.raft();
    let input = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut answers = std::pin::pin!(raft.stream_append(input));
    let node = server.handler.clone();
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
                        node.saw_epoch(peer, epoch);
                        (req, epoch)
                    }
                    Ok(_) => {
                        tracing::warn!(peer, "closing append stream: not an append");
                        return;
                    }
                    Err(_) => return,
                },
            };
            if let Some(f) = fence_check(&*node, peer, epoch) {
                let _ = fenced_tx.send(f);
                return;
            }
            node.leader_contact();
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
fn fence_check(node: &impl PeerHandler, peer: u64, peer_epoch: u64) -> Option<PeerResponse> {
    // A pristine node (no membership yet) fences nobody.
    let member = node.is_member(peer)?;
    let ep = node.epoch_record();
    if member {
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
        FenceKind::Forced
    } else {
        FenceKind::Removed
    };
    Some(PeerResponse::Fenced {
        epoch: ep.epoch,
        forked_at: ep.forked_at,
        kind,
    })
}

async fn dispatch<H: PeerHandler>(
    server: &PeerServer<H>,
    body: PeerRequest,
    incoming: &mut Option<IncomingSnapshot>,
    peer: u64,
    peer_epoch: u64,
) -> Result<PeerResponse, String> {
    // Every request but a rejoin (which a removed node sends by design)
    // is for members only: a certificate alone opens nothing (a removed
    // node could otherwise break the relationship, read digests or move
    // the leadership).
    if !matches!(body, PeerRequest::Action(ActionRequest::Rejoin { .. })) {
        if let Some(fenced) = fence_check(&*server.handler, peer, peer_epoch) {
            return Ok(fenced);
        }
    }
    let raft = &server.handler.raft();
    Ok(match body {
        PeerRequest::Digest { at_index } => {
            PeerResponse::Digest(server.handler.digest_at(at_index).await)
        }
        PeerRequest::Action(action) => {
            PeerResponse::Action(server.handler.peer_action(action, peer).await)
        }
        PeerRequest::AppendStream(_) => {
            return Err("append stream request on a request/response connection".into())
        }
        PeerRequest::Append(rpc) => {
            server.handler.leader_contact();
            PeerResponse::Append(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
        }
        PeerRequest::Vote(_) | PeerRequest::PreVote(_) if server.handler.votes_held().is_some() => {
            PeerResponse::Vote(Err(server.handler.votes_held().unwrap_or_default()))
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
