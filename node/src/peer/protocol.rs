//! The messages peers exchange over the mutual-TLS peer listener.
//!
//! Every connection starts with [`Hello`] from the dialing side; the
//! listener answers [`PeerResponse::Welcome`] or [`PeerResponse::Refused`] and
//! closes. After the welcome, the dialer sends [`Envelope`]s one at a time and
//! reads one response for each (snapshot transfer: `SnapshotBegin`, chunks,
//! `SnapshotEnd`, each acknowledged). The exception is an append stream
//! ([`PeerRequest::AppendStream`]): several requests in flight, answered in
//! order. Each envelope carries the sender's
//! epoch so that a node that learns of a higher epoch can step down at once.

use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tandem_storage::TypeConfig;

/// Version of this protocol; a peer speaking another one is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// First message on every peer connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The cluster the dialer belongs to; must equal the listener's.
    pub cluster_id: String,
    /// The dialer's node id; must equal the id in its client certificate.
    pub node_id: u64,
    /// The dialer's epoch.
    pub epoch: u64,
}

/// One request after the handshake.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's epoch when it sent this request.
    pub epoch: u64,
    /// The request itself.
    pub body: PeerRequest,
}

/// Requests a peer can make.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum PeerRequest {
    /// Raft AppendEntries (also heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<TypeConfig>),
    /// Raft pre-vote.
    PreVote(VoteRequest<TypeConfig>),
    /// Start of a snapshot transfer; chunks follow.
    SnapshotBegin {
        /// The leader's vote.
        vote: VoteOf<TypeConfig>,
        /// What the snapshot covers.
        meta: SnapshotMetaOf<TypeConfig>,
        /// Total number of bytes that will follow in chunks.
        len: u64,
    },
    /// A piece of the snapshot file, in order.
    SnapshotChunk(Vec<u8>),
    /// End of the snapshot: install it.
    SnapshotEnd,
    /// Leadership transfer notification.
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Digest of the replicated state once this node has applied exactly `at_index`.
    Digest {
        /// The applied index both sides compare at.
        at_index: u64,
    },
    /// A relationship action asked of the primary by the other side.
    Action(ActionRequest),
    /// Raft AppendEntries on a pipelined stream: the first one turns the
    /// connection into an append stream; from then on the dialer sends only
    /// these, without waiting, and the listener answers each with
    /// [`PeerResponse::AppendStream`], in order.
    AppendStream(AppendEntriesRequest<TypeConfig>),
}

/// Relationship actions the backup asks the primary to carry out (so that
/// *Become primary* and *Sync now* work from either side).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ActionRequest {
    /// Planned swap that makes `to` the primary.
    SwapTo {
        /// The node that becomes primary.
        to: u64,
        /// Bring it fully up to date first, even by snapshot.
        pull_sync: bool,
        /// Who asked.
        actor: String,
    },
    /// Sync now (optionally verify).
    Sync {
        /// Compare state digests.
        verify: bool,
        /// Who asked.
        actor: String,
    },
    /// Break the relationship (asked of the primary by the other side).
    Break {
        /// Who asked.
        actor: String,
    },
    /// A fenced or removed node asks to come back as a backup (learner);
    /// the administrator asked for it on that node.
    Rejoin {
        /// The node's membership entry.
        info: tandem_storage::NodeInfo,
        /// Where it exported the writes it never replicated, if any.
        diverged_export: Option<String>,
        /// Who asked.
        actor: String,
        /// The one-time rejoin token an administrator made for this node
        /// on the primary.
        token: String,
    },
    /// A member (a witness, which holds no CA key) asks the primary to sign
    /// its renewed certificate; the answer is the certificate, PEM.
    RenewCertificate {
        /// Its certificate signing request for a new key.
        csr_pem: String,
    },
}

/// Responses to [`Hello`] and [`Envelope`]s.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Handshake accepted.
    Welcome {
        /// The listener's node id.
        node_id: u64,
        /// The listener's epoch.
        epoch: u64,
    },
    /// Handshake or request refused; the connection is closed after this.
    Refused {
        /// Why, for the log of the other side.
        reason: String,
    },
    /// AppendEntries result.
    Append(Result<AppendEntriesResponse<TypeConfig>, String>),
    /// Vote or pre-vote result.
    Vote(Result<VoteResponse<TypeConfig>, String>),
    /// A snapshot chunk (or begin) was stored.
    ChunkStored,
    /// Snapshot installed.
    Snapshot(Result<SnapshotResponse<TypeConfig>, String>),
    /// Leadership transfer handled.
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, String>),
    /// `(applied index, SHA-256 hex)` of the state, or why not.
    Digest(Result<(u64, String), String>),
    /// Outcome of an [`ActionRequest`] as JSON text (the web crate's view
    /// types), or the refusal reason.
    Action(Result<String, String>),
    /// The sender is not a member of this node's cluster any more.
    Fenced {
        /// This node's epoch.
        epoch: u64,
        /// Last index of this node's lineage when a forced promotion began it.
        forked_at: Option<u64>,
        /// Why.
        kind: crate::peer::fence::FenceKind,
    },
    /// Result of one [`PeerRequest::AppendStream`] request, in request order.
    AppendStream(Result<openraft::raft::StreamAppendResult<TypeConfig>, String>),
}
