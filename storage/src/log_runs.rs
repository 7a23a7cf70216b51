//! Reading a Raft log kept in sled's `log` tree, the format before segment
//! files (`segment_log`): the log store moves such a log into segments at
//! open. Writing runs is kept for the tests of that move.
//!
//! How Raft log entries are laid out in the `log` tree: in *runs*.
//!
//! A run is a sled record holding consecutive entries, keyed by the index of
//! its first entry (`u64` big-endian, so key order is index order). One
//! `append` writes as many runs as it needs (a new run starts once the
//! current one holds [`RUN_TARGET_BYTES`]), so a leader or follower appending
//! a batch of entries makes one sled insert per run instead of one per entry
//! (fewer inserts, fewer leaf splits, smaller sled log).
//!
//! Value formats, told apart by the first byte:
//! - [`codec::FORMAT_VERSION`] (1): one `Entry`, `codec::encode`d: the format
//!   before runs, still read, so an existing log needs no migration;
//! - [`RUN_TAG`]: a run: repeated `u32` little-endian length ++ the
//!   `codec::encode`d entry, at least one, indexes consecutive from the key.
//!
//! Runs cover the log without gaps: run *i* holds indexes
//! `[key_i, key_{i+1})`. Truncating inside a run rewrites it shortened; a
//! purge removes only runs that lie wholly at or below the purged index
//! (readers skip the purged entries of a run that straddles it).

use std::ops::Bound;

use crate::codec;
use crate::error::StorageError;
use crate::types::Entry;

/// First byte of a run value (never a codec format version).
pub(crate) const RUN_TAG: u8 = b'R';

/// A run is closed once its encoded entries reach this size. A single entry
/// may be larger (values are at most 64 KiB, keys 1 KiB: always far below
/// sled's ~128 KiB blob threshold, whose files sled never fsyncs). sled
/// splits a leaf past 16 records, so a log leaf holds up to 16 runs: 16 KiB
/// runs made 256 KiB leaves that a small page cache kept evicting and
/// reading back (4 KiB: ~4 % less CPU per write at a 4 MiB cache).
#[cfg(test)]
pub(crate) const RUN_TARGET_BYTES: usize = 4 * 1024;

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("log run: {what}"))
}

/// Runs to insert: `(first index, value)`, in index order.
#[cfg(test)]
pub(crate) type Runs = Vec<(u64, Vec<u8>)>;

/// Encodes `entries` (consecutive indexes) into runs; also returns the last
/// entry's index.
#[cfg(test)]
pub(crate) fn encode_runs(
    entries: impl IntoIterator<Item = Entry>,
    scratch: &mut Vec<u8>,
) -> Result<(Runs, Option<u64>), StorageError> {
    let mut runs = Vec::new();
    let mut first: Option<u64> = None;
    let mut last = None;
    scratch.clear();
    for entry in entries {
        last = Some(entry.log_id.index);
        if first.is_none() {
            first = Some(entry.log_id.index);
            scratch.push(RUN_TAG);
        }
        let len_at = scratch.len();
        scratch.extend_from_slice(&[0; 4]);
        codec::encode_into(scratch, &entry)?;
        let len =
            u32::try_from(scratch.len() - len_at - 4).map_err(|_| corrupt("entry too large"))?;
        scratch[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        if scratch.len() >= RUN_TARGET_BYTES {
            if let Some(f) = first.take() {
                runs.push((f, scratch.clone()));
            }
            scratch.clear();
        }
    }
    if let Some(f) = first {
        runs.push((f, scratch.clone()));
    }
    scratch.clear();
    Ok((runs, last))
}

/// The entries of one stored value (a run, or one entry of the old format),
/// checked to be consecutive from `key_index` when given.
pub(crate) fn decode_value(v: &[u8], key_index: Option<u64>) -> Result<Vec<Entry>, StorageError> {
    let entries = match v.split_first() {
        Some((&RUN_TAG, mut rest)) => {
            let mut out = Vec::new();
            while !rest.is_empty() {
                let (len, tail) = rest
                    .split_at_checked(4)
                    .ok_or_else(|| corrupt("truncated length"))?;
                let len =
                    u32::from_le_bytes(len.try_into().map_err(|_| corrupt("length"))?) as usize;
                let (bytes, tail) = tail
                    .split_at_checked(len)
                    .ok_or_else(|| corrupt("truncated entry"))?;
                out.push(codec::decode::<Entry>(bytes)?);
                rest = tail;
            }
            out
        }
        _ => vec![codec::decode::<Entry>(v)?],
    };
    match (key_index, entries.first()) {
        (_, None) => return Err(corrupt("empty run")),
        (Some(k), Some(e)) if e.log_id.index != k => {
            return Err(corrupt(&format!("key {k} holds entry {}", e.log_id.index)))
        }
        _ => {}
    }
    if entries
        .windows(2)
        .any(|w| w[1].log_id.index != w[0].log_id.index + 1)
    {
        return Err(corrupt("indexes not consecutive"));
    }
    Ok(entries)
}

fn key_index(k: &[u8]) -> Result<u64, StorageError> {
    let b: [u8; 8] = k.try_into().map_err(|_| corrupt("malformed key"))?;
    Ok(u64::from_be_bytes(b))
}

/// The key of the run holding `index`, if any run starts at or before it.
fn run_start_at_or_before(log: &sled::Tree, index: u64) -> Result<Option<u64>, StorageError> {
    match log.range(..=index.to_be_bytes()).next_back() {
        Some(kv) => Ok(Some(key_index(&kv?.0)?)),
        None => Ok(None),
    }
}

/// Up to `limit` entries with index in `[from, to]` (`to` inclusive,
/// `None`: no end) and at least `skip_below`, in index order.
pub(crate) fn read(
    log: &sled::Tree,
    from: u64,
    to: Option<u64>,
    skip_below: u64,
    limit: usize,
) -> Result<Vec<Entry>, StorageError> {
    let from = from.max(skip_below);
    let mut out = Vec::new();
    if to.is_some_and(|t| t < from) || limit == 0 {
        return Ok(out);
    }
    let start = run_start_at_or_before(log, from)?.unwrap_or(from);
    let upper = match to {
        Some(t) => Bound::Included(t.to_be_bytes()),
        None => Bound::Unbounded,
    };
    for kv in log.range((Bound::Included(start.to_be_bytes()), upper)) {
        let (k, v) = kv?;
        for e in decode_value(&v, Some(key_index(&k)?))? {
            let i = e.log_id.index;
            if i < from {
                continue;
            }
            if to.is_some_and(|t| i > t) {
                return Ok(out);
            }
            out.push(e);
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// The last entry of the log (whatever a purge marker says).
#[cfg(test)]
pub(crate) fn last_entry(log: &sled::Tree) -> Result<Option<Entry>, StorageError> {
    match log.last()? {
        Some((k, v)) => Ok(decode_value(&v, Some(key_index(&k)?))?.pop()),
        None => Ok(None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::{LogId, Request};

    fn entry(i: u64, value_len: usize) -> Entry {
        entry_of(1, i, value_len)
    }

    /// A config write at `i` in `term` whose value is `value_len` bytes (the
    /// log tests' entry; also used by `segment_log` and `log_store`).
    pub(crate) fn entry_of(term: u64, i: u64, value_len: usize) -> Entry {
        Entry {
            log_id: LogId::new(
                openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
                i,
            ),
            payload: openraft::EntryPayload::Normal(Request::ConfigPut {
                key: format!("k{i}"),
                value_json: format!("\"{}\"", "x".repeat(value_len)),
                actor: "t".into(),
                at_ms: 0,
                if_version: None,
            }),
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// A log of entries 1..=n in runs of varying sizes, plus one entry in
    /// the old one-entry format at n + 1.
    fn tree(n: u64) -> (sled::Db, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let log = db.open_tree("log").expect("tree");
        let mut scratch = Vec::new();
        let mut i = 1;
        let mut size = 0;
        while i <= n {
            let batch: Vec<Entry> = (i..=n.min(i + size)).map(|j| entry(j, 300)).collect();
            i += batch.len() as u64;
            size = (size + 7) % 80;
            for (first, v) in encode_runs(batch, &mut scratch).expect("encode").0 {
                log.insert(first.to_be_bytes(), v).expect("insert");
            }
        }
        let old = codec::encode(&entry(n + 1, 10)).expect("encode");
        log.insert((n + 1).to_be_bytes(), old).expect("insert");
        (db, log)
    }

    #[test]
    fn large_appends_split_into_bounded_runs_and_read_back_in_order() {
        let mut scratch = Vec::new();
        let (runs, last) =
            encode_runs((1..=200).map(|i| entry(i, 300)), &mut scratch).expect("encode");
        assert_eq!(last, Some(200));
        assert!(runs.len() > 2, "{} runs", runs.len());
        for (first, v) in &runs {
            assert!(v.len() < RUN_TARGET_BYTES + 1024, "{}", v.len());
            assert_eq!(
                decode_value(v, Some(*first)).expect("decode")[0]
                    .log_id
                    .index,
                *first
            );
        }
        let (_db, log) = tree(300);
        assert_eq!(
            indexes(&read(&log, 0, None, 0, usize::MAX).unwrap()),
            (1..=301).collect::<Vec<_>>()
        );
        assert_eq!(
            indexes(&read(&log, 37, Some(41), 0, 100).unwrap()),
            vec![37, 38, 39, 40, 41]
        );
        assert_eq!(
            indexes(&read(&log, 37, None, 100, 3).unwrap()),
            vec![100, 101, 102]
        );
        assert!(read(&log, 302, None, 0, 10).unwrap().is_empty());
        assert_eq!(last_entry(&log).unwrap().map(|e| e.log_id.index), Some(301));
    }

    #[test]
    fn damaged_runs_are_refused_not_misread() {
        let mut scratch = Vec::new();
        let (runs, _) = encode_runs((5..=7).map(|i| entry(i, 10)), &mut scratch).expect("encode");
        let (first, v) = &runs[0];
        assert!(decode_value(&v[..v.len() - 1], Some(*first)).is_err());
        assert!(decode_value(v, Some(first + 1)).is_err());
        assert!(decode_value(&[RUN_TAG], None).is_err());
        assert!(decode_value(&[RUN_TAG, 9, 9, 9, 9], None).is_err());
        assert!(decode_value(&[], None).is_err());
    }
}
