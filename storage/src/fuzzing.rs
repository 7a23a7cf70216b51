//! Entry points for the fuzz targets in `fuzz/` and for the corpus
//! regression test (`storage/tests/fuzz_corpus.rs`). Not an API of the
//! crate: hidden from its docs, used by nothing in the daemon.
//!
//! Each entry point hands arbitrary bytes to one decoder the daemon points
//! at data it did not write itself, exactly as the daemon calls it, and
//! panics only when the decoder breaks a promise it makes (a value that
//! does not survive re-encoding, a record end outside the input). An `Err`
//! is a clean refusal, never a failure. [`LimitAlloc`] is the global
//! allocator of the fuzz targets and the regression tests: it aborts on any
//! single allocation above a limit, so "no allocation above the decoder
//! limit" is checked on every input, not only the ones that crash.
//!
//! - [`codec`]: [`crate::codec::decode`] as each type the crate decodes
//!   from sled, a snapshot header or a frame.
//! - [`snapshot_reader`]: the snapshot file reader, from memory.
//! - [`segment_records`]: the Raft log segment record reader.
//! - [`seeds`]: valid encodings to start each corpus from;
//!   [`corpus_files`] and [`write_seeds`]: the corpus directories.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, BINCODE_LIMIT};
use crate::keys::{
    ApiTokenRecord, ConfigRecord, HistoryRecord, SessionRecord, TokenRecord, UserRecord,
};
use crate::segment_log::{self, Records};
use crate::snapshot;
use crate::types::{
    Entry, EpochRecord, LogId, NodeInfo, NodeKind, Request, Response, SettingsRecord, SnapshotMeta,
    StoredMembership, Vote,
};
use crate::StorageError;

/// Slack over a decoder's own limit that [`DECODE_ALLOC_LIMIT`] allows:
/// room for a container's bookkeeping next to a buffer of exactly the
/// limit. An allocation past it is a length taken from the input without
/// a check.
pub const ALLOC_SLACK: usize = 1024 * 1024;

/// The largest single allocation any bincode-based decoder may make:
/// [`BINCODE_LIMIT`] (what bincode may claim for one value, and the
/// largest snapshot value) plus [`ALLOC_SLACK`]. The peer frame limit
/// (32 MiB) is below it: a frame's payload goes through the same
/// `codec::decode`, whose limit is the binding one.
pub const DECODE_ALLOC_LIMIT: usize = BINCODE_LIMIT + ALLOC_SLACK;

/// A global allocator over [`System`] that aborts the process on any single
/// allocation (or reallocation) above its limit, after saying so on
/// stderr; libFuzzer reports the abort as a crash and saves the input.
/// It also remembers the largest allocation it served.
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: LimitAlloc = LimitAlloc::new(DECODE_ALLOC_LIMIT);
/// ```
pub struct LimitAlloc {
    limit: usize,
    largest: AtomicUsize,
}

impl LimitAlloc {
    /// An allocator that refuses single allocations above `limit` bytes.
    pub const fn new(limit: usize) -> Self {
        Self {
            limit,
            largest: AtomicUsize::new(0),
        }
    }

    /// The largest single allocation served so far, in bytes.
    pub fn largest(&self) -> usize {
        self.largest.load(Ordering::Relaxed)
    }

    fn check(&self, size: usize) {
        self.largest.fetch_max(size, Ordering::Relaxed);
        if size > self.limit {
            // No allocation here: formatting into unbuffered stderr.
            let _ = writeln!(
                std::io::stderr(),
                "LimitAlloc: allocation of {size} bytes exceeds the decoder limit of {} bytes",
                self.limit
            );
            // Unwinding out of an allocator is undefined behaviour.
            std::process::abort();
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`; `check` only
// reads the size and may abort.
unsafe impl GlobalAlloc for LimitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Decodes `bytes` as `T`; a value must re-encode, within the limit, to
/// bytes that decode to the same value.
///
/// # Panics
/// When a decoded value does not survive that round trip.
pub fn round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value = codec::decode::<T>(bytes).ok()?;
    let again = codec::encode(&value).expect("a decoded value encodes again");
    let back = codec::decode::<T>(&again).expect("a re-encoded value decodes");
    assert_eq!(back, value, "decode(encode(decode(x))) != decode(x)");
    assert!(
        again.len() <= bytes.len(),
        "re-encoding {} input bytes gave {} bytes",
        bytes.len(),
        again.len()
    );
    Some(value)
}

/// The types [`codec`] decodes, by the selector byte's value modulo their
/// number: every type the crate reads back with `codec::decode`.
const CODEC_TYPES: u8 = 16;

/// Fuzz entry of the bincode codec: `data[0]` picks the type (see
/// [`CODEC_TYPES`]), the rest is `codec::decode`d as it, and a value must
/// survive [`round_trip`]. Returns whether it decoded.
///
/// # Panics
/// As [`round_trip`].
pub fn codec(data: &[u8]) -> bool {
    let Some((&selector, bytes)) = data.split_first() else {
        return false;
    };
    match selector % CODEC_TYPES {
        0 => round_trip::<Entry>(bytes).is_some(),
        1 => round_trip::<Request>(bytes).is_some(),
        2 => round_trip::<Response>(bytes).is_some(),
        3 => round_trip::<SnapshotMeta>(bytes).is_some(),
        4 => round_trip::<StoredMembership>(bytes).is_some(),
        5 => round_trip::<Option<LogId>>(bytes).is_some(),
        6 => round_trip::<Vote>(bytes).is_some(),
        7 => round_trip::<u64>(bytes).is_some(),
        8 => round_trip::<ConfigRecord>(bytes).is_some(),
        9 => round_trip::<SessionRecord>(bytes).is_some(),
        10 => round_trip::<TokenRecord>(bytes).is_some(),
        11 => round_trip::<HistoryRecord>(bytes).is_some(),
        12 => round_trip::<UserRecord>(bytes).is_some(),
        13 => round_trip::<ApiTokenRecord>(bytes).is_some(),
        14 => round_trip::<EpochRecord>(bytes).is_some(),
        _ => round_trip::<SettingsRecord>(bytes).is_some(),
    }
}

/// Fuzz entry of the snapshot reader: `data[0]` bit 0 set means "append the
/// SHA-256 of the rest", so that inputs can reach past the checksum; the
/// rest is read as a snapshot file is when it is installed.
///
/// # Errors
/// The reader's refusal ([`StorageError::BadSnapshot`],
/// [`StorageError::Codec`]).
///
/// # Panics
/// When the reader hands over a key or value longer than the format allows
/// or counts records wrongly.
pub fn snapshot_reader(data: &[u8]) -> Result<u64, StorageError> {
    let Some((&flags, body)) = data.split_first() else {
        return Ok(0);
    };
    let sealed;
    let file = if flags & 1 == 1 {
        let mut v = body.to_vec();
        v.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
        sealed = v;
        &sealed[..]
    } else {
        body
    };
    let mut seen = 0u64;
    let (meta, count) = snapshot::read_snapshot_bytes(file, |key, value| {
        assert!(
            key.len() <= snapshot::MAX_KEY_LEN,
            "key of {} bytes",
            key.len()
        );
        assert!(value.len() <= BINCODE_LIMIT + 1, "value of {}", value.len());
        seen += 1;
        Ok(())
    })?;
    assert_eq!(seen, count, "records handed over != records counted");
    // The header a reader accepted is one the writer can write again.
    let mut again = Vec::new();
    snapshot::write_stream(
        &mut again,
        std::iter::empty::<Result<(&[u8], &[u8]), _>>(),
        &meta,
    )
    .expect("an accepted header encodes again");
    Ok(count)
}

/// Fuzz entry of the segment-log record reader: `data[0]` bit 0 set means
/// "write each record's CRC before reading" (so inputs reach the payload
/// decoder), the next 8 bytes (little-endian) are the segment's first
/// index, the rest is the segment file's contents. Returns the entries read
/// and whether the reader stopped at a damaged record.
///
/// # Panics
/// When the reader breaks its contract: record ends not increasing or
/// outside the input, indexes not consecutive from the first, a damaged
/// record not at the end of the last good one, or items after it.
pub fn segment_records(data: &[u8]) -> (usize, bool) {
    let Some((&flags, rest)) = data.split_first() else {
        return (0, false);
    };
    let Some((first, bytes)) = rest.split_first_chunk::<8>() else {
        return (0, false);
    };
    let first = u64::from_le_bytes(*first);
    let mut bytes = bytes.to_vec();
    if flags & 1 == 1 {
        seal_records(&mut bytes);
    }
    let (mut read, mut end, mut damaged) = (0usize, 0usize, false);
    for item in Records::new(&bytes, first) {
        assert!(!damaged, "an item after the damaged record");
        match item {
            Ok((entry, at)) => {
                assert!(at > end && at <= bytes.len(), "record end {at} after {end}");
                assert_eq!(entry.log_id.index, first + read as u64, "index");
                end = at;
                read += 1;
            }
            Err(at) => {
                assert_eq!(at, end, "damage reported away from the last good end");
                damaged = true;
            }
        }
    }
    assert!(
        damaged || end == bytes.len(),
        "stopped early without damage"
    );
    (read, damaged)
}

/// Writes the right CRC into each record header of `bytes` as far as the
/// records' lengths go.
fn seal_records(bytes: &mut [u8]) {
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + segment_log::HEADER) {
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[..4]);
        let len = u32::from_le_bytes(len) as usize;
        let start = at + segment_log::HEADER;
        let Some(payload) = start.checked_add(len).and_then(|end| bytes.get(start..end)) else {
            return;
        };
        let crc = crc32fast::hash(payload).to_le_bytes();
        bytes[at + 4..start].copy_from_slice(&crc);
        at = start + len;
    }
}

/// Valid inputs for the storage targets (`"codec"`, `"snapshot_reader"`,
/// `"segment_record"`), each with a name for its corpus file.
///
/// # Panics
/// On an unknown target (the caller's mistake).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "codec" => codec_seeds(),
        "snapshot_reader" => snapshot_seeds(),
        "segment_record" => segment_seeds(),
        other => panic!("no storage fuzz target {other:?}"),
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    )
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        kind: NodeKind::Appliance,
        peer_addr: "127.0.0.1:7001".into(),
        api_addr: "https://127.0.0.1:8001".into(),
    }
}

fn membership() -> StoredMembership {
    use std::collections::{BTreeMap, BTreeSet};
    let m = openraft::Membership::new(
        vec![BTreeSet::from([1, 2])],
        BTreeMap::from([(1, node("a")), (2, node("b"))]),
    )
    .expect("one config naming its two nodes is a valid membership");
    StoredMembership::new(Some(log_id(1, 3)), m)
}

fn entry(index: u64, request: Request) -> Entry {
    Entry {
        log_id: log_id(2, index),
        payload: openraft::EntryPayload::Normal(request),
    }
}

fn config_put(n: u64) -> Request {
    Request::ConfigPut {
        key: format!("key-{n}"),
        value_json: format!("{{\"n\":{n}}}"),
        actor: "admin".into(),
        at_ms: 1_700_000_000_000 + n,
        if_version: Some(n),
    }
}

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: membership(),
    }
}

fn enc<T: Serialize>(selector: u8, value: &T) -> Vec<u8> {
    let mut out = vec![selector];
    codec::encode_into(&mut out, value).expect("seed values are small");
    out
}

fn codec_seeds() -> Vec<(String, Vec<u8>)> {
    let membership_entry = Entry {
        log_id: log_id(1, 3),
        payload: openraft::EntryPayload::Membership(membership().membership().clone()),
    };
    let seeds = [
        enc(0, &entry(7, config_put(7))),
        enc(0, &membership_entry),
        enc(1, &config_put(1)),
        enc(
            1,
            &Request::Bootstrap {
                cluster_id: "c-1".into(),
                admin_token_hash: "00".repeat(32),
            },
        ),
        enc(3, &meta()),
        enc(4, &membership()),
        enc(5, &Some(log_id(3, 42))),
        enc(6, &Vote::new_committed(4, 2)),
        enc(7, &u64::MAX),
        enc(
            14,
            &EpochRecord {
                epoch: 3,
                primary: Some(1),
                forced: false,
                forked_at: None,
                since_ms: 5,
            },
        ),
        enc(
            15,
            &SettingsRecord {
                settings_json: "{\"primary_timeout_ms\":3000}".into(),
                version: 2,
                updated_by: "admin".into(),
                updated_ms: 9,
            },
        ),
    ];
    named("codec", seeds)
}

fn snapshot_file(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8]; // flags: not sealed, the file carries its sum
    snapshot::write_stream(&mut out, records.iter().map(|&kv| Ok(kv)), &meta())
        .expect("writing to memory cannot fail");
    out
}

fn snapshot_seeds() -> Vec<(String, Vec<u8>)> {
    let value = codec::encode(&config_put(1)).expect("small value");
    let seeds = [
        snapshot_file(&[]),
        snapshot_file(&[(b"ckey-1", &value), (b"mlast_applied", b"\x01\x00")]),
    ];
    named("snapshot", seeds)
}

fn segment_seeds() -> Vec<(String, Vec<u8>)> {
    let file = |first: u64, n: u64| {
        let mut out = vec![0u8]; // flags: CRCs as written
        out.extend_from_slice(&first.to_le_bytes());
        for i in first..first + n {
            segment_log::encode_record(&mut out, &entry(i, config_put(i)))
                .expect("seed entries are small");
        }
        out
    };
    let mut torn = file(5, 3);
    torn.truncate(torn.len() - 3);
    named("segment", [file(1, 1), file(5, 3), torn])
}

fn named(prefix: &str, seeds: impl IntoIterator<Item = Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    seeds
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("seed-{prefix}-{i}"), s))
        .collect()
}

/// `fuzz/` at the repository root.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
/// (crash inputs kept as regression cases), sorted; a missing directory
/// holds none.
///
/// # Errors
/// Reading a directory that exists fails.
pub fn corpus_files(target: &str) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(dir).join(target);
        if !dir.is_dir() {
            continue;
        }
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Writes `seeds` into `fuzz/seeds/<target>/` (not committed: `fuzz/run`
/// hands it to the fuzzer beside the corpus), one file each under its
/// name; returns how many.
///
/// # Errors
/// Creating the directory or writing a file fails.
pub fn write_seeds(target: &str, seeds: &[(String, Vec<u8>)]) -> io::Result<usize> {
    let dir = fuzz_dir().join("seeds").join(target);
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}
