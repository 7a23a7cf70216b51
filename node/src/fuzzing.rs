//! Entry points for the fuzz targets in `fuzz/` and for the corpus
//! regression test (`node/tests/fuzz_corpus.rs`). Not an API of the
//! crate: hidden from its docs, used by nothing in the daemon.
//!
//! Each entry point hands arbitrary bytes to one decoder that the daemon
//! points at bytes from another machine, exactly as the daemon calls it,
//! and panics only when the decoder breaks a promise it makes. An `Err` is
//! a clean refusal, never a failure. The allocation limit is checked by
//! `tandem_storage::fuzzing::LimitAlloc`, the targets' global allocator.
//!
//! - [`frames`]: the peer frame decoder, from a buffer and from a stream.
//! - [`peer_protocol`]: a frame's payload as each peer message.
//! - [`join_token`]: the join token's text form, and the joiner's name
//!   and addresses.
//! - [`seeds`]: valid inputs to start each corpus from.

use std::fmt::Debug;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::join::{host_of, sans_for, validate_name, ParsedToken};
use crate::peer::fence::FenceKind;
use crate::peer::frame::{decode_frame, encode_frame, read_frame, Decoded, FrameError, MAX_FRAME};
use crate::peer::protocol::{ActionRequest, Envelope, Hello, PeerRequest, PeerResponse};

/// The largest single allocation the join token target allows: a token,
/// name or address arrives in an admin API request body of at most
/// `tandem_web::MAX_BODY_BYTES`, and the parser may hold a few copies of
/// it, so four bodies.
pub const JOIN_ALLOC_LIMIT: usize = 4 * tandem_web::MAX_BODY_BYTES;

/// Decodes `bytes` as `T` with the frame payload decoder; a value must
/// re-encode to no more bytes than it came from, and those must decode to
/// a value that prints the same (the protocol types have no `PartialEq`).
///
/// # Panics
/// When a decoded value does not survive that round trip.
pub fn round_trip<T: Serialize + DeserializeOwned + Debug>(bytes: &[u8]) -> Option<T> {
    let value = tandem_storage::decode::<T>(bytes).ok()?;
    let again = tandem_storage::encode(&value).expect("a decoded value encodes again");
    let back = tandem_storage::decode::<T>(&again).expect("a re-encoded value decodes");
    assert_eq!(format!("{back:?}"), format!("{value:?}"), "round trip");
    assert!(again.len() <= bytes.len(), "re-encoding grew the value");
    Some(value)
}

/// Fuzz entry of the peer protocol: `bytes` as the payload of a frame,
/// decoded as each message a peer may send: [`Hello`], [`Envelope`] (the
/// listener's side) and [`PeerResponse`] (the dialer's side). Returns how
/// many of the three accepted it.
///
/// # Panics
/// As [`round_trip`].
pub fn peer_protocol(bytes: &[u8]) -> usize {
    usize::from(round_trip::<Hello>(bytes).is_some())
        + usize::from(round_trip::<Envelope>(bytes).is_some())
        + usize::from(round_trip::<PeerResponse>(bytes).is_some())
}

/// Polls a future that cannot wait (it reads from memory) to its end.
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a read from memory never waits"),
    }
}

/// Fuzz entry of the frame decoder: `bytes` as what a peer sends on one
/// connection, read frame by frame as [`Envelope`]s both with
/// [`decode_frame`] (from a buffer) and [`read_frame`] (from a stream),
/// which must agree frame by frame. Returns the number of whole frames.
///
/// # Panics
/// When the two disagree, a frame is said to use more bytes than there are
/// or than its length prefix says, or a strict prefix of a frame is not
/// `Incomplete`.
pub fn frames(bytes: &[u8]) -> usize {
    let mut stream = bytes;
    let mut rest = bytes;
    let mut count = 0;
    loop {
        let from_buf = decode_frame::<Envelope>(rest);
        let from_stream = now(read_frame::<Envelope, _>(&mut stream));
        match (from_buf, from_stream) {
            (Ok(Decoded::Frame { value, used }), Ok(read)) => {
                assert!(
                    used <= rest.len() && used >= 4,
                    "used {used} of {}",
                    rest.len()
                );
                assert!(used - 4 <= MAX_FRAME, "a frame over the limit");
                assert_eq!(
                    format!("{value:?}"),
                    format!("{read:?}"),
                    "buffer != stream"
                );
                // Any strict prefix of a whole frame is only incomplete.
                assert!(
                    matches!(
                        decode_frame::<Envelope>(&rest[..used - 1]),
                        Ok(Decoded::Incomplete)
                    ),
                    "a cut frame is not Incomplete"
                );
                // What was decoded is framed again within the limit.
                encode_frame(&value).expect("a decoded envelope frames again");
                rest = &rest[used..];
                assert_eq!(stream.len(), rest.len(), "buffer and stream consumed alike");
                count += 1;
            }
            (Ok(Decoded::Incomplete), Err(FrameError::Closed | FrameError::Io(_))) => return count,
            (Err(FrameError::TooLarge { len, .. }), Err(FrameError::TooLarge { .. })) => {
                assert!(len > MAX_FRAME, "refused a frame of {len} bytes");
                return count;
            }
            (Err(FrameError::Malformed(_)), Err(FrameError::Malformed(_))) => return count,
            (buf, stream) => panic!("buffer says {buf:?}, stream says {stream:?}"),
        }
    }
}

/// Fuzz entry of the join token parser: `bytes` (as UTF-8, lossily) as the
/// token a joiner presents, and as the name and addresses it gives.
/// Returns whether the token parsed.
///
/// # Panics
/// When a parsed token is not `id.secret.fingerprint` with a 64-digit
/// lower-case hex fingerprint, does not parse again from its parts, or a
/// name or host the helpers accept breaks their rules.
pub fn join_token(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    if validate_name(&text).is_ok() {
        assert!(
            (1..=63).contains(&text.len()),
            "name of {} bytes",
            text.len()
        );
    }
    if let Some(host) = host_of(&text) {
        assert!(!host.is_empty() && text.contains(&host), "host {host:?}");
    }
    if let Ok(sans) = sans_for(&text, &text) {
        assert!(sans.iter().any(|s| s == "localhost"), "no localhost SAN");
    }
    let Ok(token) = ParsedToken::parse(&text) else {
        return false;
    };
    assert!(!token.id.is_empty() && !token.id.contains('.'), "id");
    assert!(
        !token.secret.is_empty() && !token.secret.contains('.'),
        "secret"
    );
    assert_eq!(token.ca_fingerprint.len(), 64, "fingerprint length");
    assert!(
        token
            .ca_fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "fingerprint not lower-case hex"
    );
    let text_again = format!("{}.{}.{}", token.id, token.secret, token.ca_fingerprint);
    assert_eq!(
        ParsedToken::parse(&text_again).as_ref(),
        Ok(&token),
        "reparse"
    );
    true
}

/// Valid inputs for the node targets (`"frame"`, `"peer_protocol"`,
/// `"join_token"`), each with a name for its corpus file.
///
/// # Panics
/// On an unknown target (the caller's mistake).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let seeds = match target {
        "frame" => frame_seeds(),
        "peer_protocol" => messages().into_iter().map(|(_, payload)| payload).collect(),
        "join_token" => [
            format!("0a1b2c3d.s3cr3t-Secret_x.{}", "ab".repeat(32)),
            format!("  id.secret.{}\n", "0F".repeat(32)),
            "node-a.1".into(),
            "https://[::1]:8443/api".into(),
            "10.0.0.1:7001".into(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect(),
        other => panic!("no node fuzz target {other:?}"),
    };
    seeds
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("seed-{target}-{i}"), s))
        .collect()
}

type LogId = tandem_storage::LogId;

fn log_id(index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 2,
            node_id: 1,
        },
        index,
    )
}

fn envelope(body: PeerRequest) -> Vec<u8> {
    tandem_storage::encode(&Envelope { epoch: 3, body }).expect("seed messages are small")
}

/// Encoded messages (payloads without the length prefix); `true` for the
/// envelopes.
fn messages() -> Vec<(bool, Vec<u8>)> {
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
    let vote = tandem_storage::Vote::new_committed(2, 1);
    let append = AppendEntriesRequest {
        vote,
        prev_log_id: Some(log_id(4)),
        entries: vec![tandem_storage::Entry {
            log_id: log_id(5),
            payload: openraft::EntryPayload::Normal(tandem_storage::Request::ConfigDelete {
                key: "k".into(),
                actor: "admin".into(),
                at_ms: 1,
            }),
        }],
        leader_commit: Some(log_id(4)),
    };
    let encode = |r: &PeerResponse| tandem_storage::encode(r).expect("small");
    vec![
        (
            false,
            tandem_storage::encode(&Hello {
                protocol: crate::peer::protocol::PROTOCOL_VERSION,
                cluster_id: "cluster-1".into(),
                node_id: 2,
                epoch: 3,
            })
            .expect("small"),
        ),
        (true, envelope(PeerRequest::Append(append))),
        (
            true,
            envelope(PeerRequest::Vote(VoteRequest {
                vote,
                last_log_id: Some(log_id(5)),
                leadership_transfer: false,
            })),
        ),
        (true, envelope(PeerRequest::SnapshotChunk(vec![1, 2, 3, 4]))),
        (true, envelope(PeerRequest::Digest { at_index: 9 })),
        (
            true,
            envelope(PeerRequest::Action(ActionRequest::Rejoin {
                info: tandem_storage::NodeInfo {
                    name: "b".into(),
                    kind: tandem_storage::NodeKind::Witness,
                    peer_addr: "127.0.0.1:7002".into(),
                    api_addr: "https://127.0.0.1:8002".into(),
                },
                diverged_export: Some("/tmp/x".into()),
                actor: "admin".into(),
                token: "id.secret.fp".into(),
            })),
        ),
        (
            false,
            encode(&PeerResponse::Append(Ok(AppendEntriesResponse::Success))),
        ),
        (
            false,
            encode(&PeerResponse::Fenced {
                epoch: 4,
                forked_at: Some(7),
                kind: FenceKind::Forced,
            }),
        ),
        (
            false,
            encode(&PeerResponse::Digest(Ok((9, "ab".repeat(32))))),
        ),
    ]
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let framed = |payload: &[u8]| {
        let mut out = u32::try_from(payload.len())
            .expect("seed payloads are small")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(payload);
        out
    };
    let envelopes: Vec<Vec<u8>> = messages()
        .into_iter()
        .filter(|(is_envelope, _)| *is_envelope)
        .map(|(_, payload)| framed(&payload))
        .collect();
    let mut stream = envelopes.concat();
    let mut cut = stream.clone();
    cut.truncate(stream.len() - 2);
    stream.extend_from_slice(&[0, 0, 0]);
    let mut seeds = envelopes;
    seeds.push(stream);
    seeds.push(cut);
    seeds
}
