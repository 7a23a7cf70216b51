//! Crash-atomic writing of one applied batch without a `sled::Batch`.
//!
//! sled makes a `Batch` crash-atomic by pinning its log: it seals and writes
//! its IO buffer before and after the batch (`pin_log`), each time handing a
//! `pwrite` and a `sync_file_range` to its IO threads. With the Raft log out
//! of sled, that was most of what sled cost a follower (storage/DESIGN.md
//! "Applying is atomic"). Instead, a batch is written as:
//!
//! 1. one insert of a *redo record* (the batch's final writes, and the state
//!    machine generation they belong to) under [`REDO_KEY`] in the
//!    [`keys::SM_REDO_TREE`] tree, replacing the previous batch's record;
//! 2. the writes themselves, one insert or remove each, the last applied log
//!    id last.
//!
//! sled recovers a prefix of its log (all trees share one log, and one
//! thread's writes are logged in call order), so after a crash either the
//! record of the last batch is gone (and so is every write of that batch:
//! the state is the previous batch's, complete), or it is there with any
//! prefix of its writes; [`replay_at_open`] then writes all of them again.
//! The writes are final values, not increments, so writing them twice gives
//! the same state. A batch whose record would exceed [`REDO_MAX_BYTES`]
//! removes the record and uses a `sled::Batch` (values over ~128 KiB would
//! become sled blob files, which sled never fsyncs).

use std::collections::BTreeMap;

use sled::IVec;

use crate::error::StorageError;
use crate::keys::{self, SmMetaKey};

/// Key of the redo record in [`keys::SM_REDO_TREE`].
pub(crate) const REDO_KEY: &[u8] = b"last_batch";

/// Largest redo record written; larger batches take the `sled::Batch` path.
pub(crate) const REDO_MAX_BYTES: usize = 64 * 1024;

/// Tag of a write that stores a value.
const PUT: u8 = 1;
/// Tag of a write that removes the key.
const REMOVE: u8 = 0;

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("redo record: {what}"))
}

/// Where a state machine's batches are logged for redo.
pub(crate) struct Redo<'a> {
    pub(crate) tree: &'a sled::Tree,
    /// The state machine generation the writes go to.
    pub(crate) generation: u64,
}

/// Encodes `generation` and `writes`: `u64 LE generation`, then per write
/// `u32 LE key length ++ key ++ tag` and, for a put, `u32 LE value length ++
/// value`. `None` if it would exceed [`REDO_MAX_BYTES`].
fn encode(generation: u64, writes: &BTreeMap<Vec<u8>, Option<IVec>>) -> Option<Vec<u8>> {
    let size: usize = 8 + writes
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum::<usize>();
    if size > REDO_MAX_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&generation.to_le_bytes());
    for (k, v) in writes {
        // Both lengths are below REDO_MAX_BYTES, checked above.
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        match v {
            Some(v) => {
                out.push(PUT);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(REMOVE),
        }
    }
    Some(out)
}

type Write<'b> = (&'b [u8], Option<&'b [u8]>);

fn decode(bytes: &[u8]) -> Result<(u64, Vec<Write<'_>>), StorageError> {
    fn take<'b>(rest: &mut &'b [u8], n: usize) -> Result<&'b [u8], StorageError> {
        let (head, tail) = rest
            .split_at_checked(n)
            .ok_or_else(|| corrupt("truncated"))?;
        *rest = tail;
        Ok(head)
    }
    fn len(rest: &mut &[u8]) -> Result<usize, StorageError> {
        let b = take(rest, 4)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| corrupt("length"))?) as usize)
    }
    let mut rest = bytes;
    let generation = u64::from_le_bytes(
        take(&mut rest, 8)?
            .try_into()
            .map_err(|_| corrupt("generation"))?,
    );
    let mut writes = Vec::new();
    while !rest.is_empty() {
        let n = len(&mut rest)?;
        let k = take(&mut rest, n)?;
        let v = match take(&mut rest, 1)?[0] {
            PUT => {
                let n = len(&mut rest)?;
                Some(take(&mut rest, n)?)
            }
            REMOVE => None,
            _ => return Err(corrupt("unknown tag")),
        };
        writes.push((k, v));
    }
    Ok((generation, writes))
}

/// Writes `writes` (a batch's final values) to `tree` crash-atomically, as
/// the module says. The last applied log id is written last, so a reader
/// that sees it also sees the batch's other writes.
pub(crate) fn write_batch(
    tree: &sled::Tree,
    redo: &Redo<'_>,
    writes: BTreeMap<Vec<u8>, Option<IVec>>,
) -> Result<(), StorageError> {
    let Some(record) = encode(redo.generation, &writes) else {
        // Removed first: a stale record must never be replayed over a batch
        // that does not have one.
        redo.tree.remove(REDO_KEY)?;
        tree.apply_batch(batch_of(writes))?;
        return Ok(());
    };
    redo.tree.insert(REDO_KEY, record)?;
    let mut writes = writes;
    let applied_key = SmMetaKey::LastApplied.as_bytes();
    let applied = writes
        .remove(applied_key)
        .map(|v| (applied_key.to_vec(), v));
    for (k, v) in writes.into_iter().chain(applied) {
        match v {
            Some(v) => tree.insert(k, v)?,
            None => tree.remove(k)?,
        };
    }
    Ok(())
}

/// One `sled::Batch` of `writes` (a value, or `None`: remove).
pub(crate) fn batch_of<K: Into<IVec>, V: Into<IVec>>(
    writes: impl IntoIterator<Item = (K, Option<V>)>,
) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (k, v) in writes {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    batch
}

/// At open: writes the last batch's record again if it belongs to the
/// current `generation` (a crash may have cut its writes short); a record
/// of another generation (an install or a reset happened since) is removed.
/// Returns how many writes were replayed.
pub(crate) fn replay_at_open(
    redo_tree: &sled::Tree,
    generation: u64,
    tree: &sled::Tree,
) -> Result<usize, StorageError> {
    let Some(record) = redo_tree.get(REDO_KEY)? else {
        return Ok(0);
    };
    let (g, writes) = decode(&record)?;
    if g != generation {
        redo_tree.remove(REDO_KEY)?;
        return Ok(0);
    }
    let n = writes.len();
    tree.apply_batch(batch_of(writes))?;
    Ok(n)
}

/// Removes the redo record (an install switched generations, or a reset
/// cleared the state machine).
pub(crate) fn forget(db: &sled::Db) -> Result<(), StorageError> {
    db.open_tree(keys::SM_REDO_TREE)?.remove(REDO_KEY)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<Vec<u8>, Option<IVec>> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| IVec::from(v.as_bytes()))))
            .collect()
    }

    #[test]
    fn record_round_trips_and_damage_is_refused() {
        let w = writes(&[("a", Some("1")), ("b", None), ("", Some(""))]);
        let bytes = encode(7, &w).expect("small");
        let (g, back) = decode(&bytes).expect("decodes");
        assert_eq!(g, 7);
        let back: Vec<(Vec<u8>, Option<Vec<u8>>)> = back
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = w
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
            .collect();
        assert_eq!(back, want);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&bytes[..5]).is_err());
        let mut bad = bytes.clone();
        bad[8 + 4 + 1] = 9; // the first write's tag
        assert!(decode(&bad).is_err());
        let big = writes(&[("k", Some(&"x".repeat(REDO_MAX_BYTES)))]);
        assert!(encode(1, &big).is_none());
    }

    /// A crash after the record and part of the writes: replay completes the
    /// batch; twice gives the same state; another generation's record is
    /// dropped unreplayed.
    #[test]
    fn replay_completes_a_cut_batch_and_ignores_other_generations() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let tree = db.open_tree("sm.3").expect("tree");
        let redo_tree = db.open_tree(keys::SM_REDO_TREE).expect("tree");
        tree.insert("gone", "x").expect("insert");
        tree.insert("a", "old").expect("insert");
        let w = writes(&[("a", Some("new")), ("b", Some("2")), ("gone", None)]);
        redo_tree
            .insert(REDO_KEY, encode(3, &w).expect("small"))
            .expect("insert");
        tree.insert("a", "new").expect("insert"); // only the first write made it
        for _ in 0..2 {
            assert_eq!(replay_at_open(&redo_tree, 3, &tree).expect("replay"), 3);
            assert_eq!(tree.get("a").expect("get").as_deref(), Some(&b"new"[..]));
            assert_eq!(tree.get("b").expect("get").as_deref(), Some(&b"2"[..]));
            assert_eq!(tree.get("gone").expect("get"), None);
        }
        tree.insert("b", "later").expect("insert");
        assert_eq!(replay_at_open(&redo_tree, 4, &tree).expect("replay"), 0);
        assert_eq!(tree.get("b").expect("get").as_deref(), Some(&b"later"[..]));
        assert!(redo_tree.get(REDO_KEY).expect("get").is_none());
    }

    /// A batch too large for a record removes the previous record first, so
    /// a later replay cannot undo the large batch.
    #[test]
    fn a_large_batch_drops_the_previous_record() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let tree = db.open_tree("sm.0").expect("tree");
        let redo_tree = db.open_tree(keys::SM_REDO_TREE).expect("tree");
        let redo = Redo {
            tree: &redo_tree,
            generation: 0,
        };
        write_batch(&tree, &redo, writes(&[("a", Some("1"))])).expect("write");
        assert!(redo_tree.get(REDO_KEY).expect("get").is_some());
        let big = "y".repeat(REDO_MAX_BYTES);
        write_batch(&tree, &redo, writes(&[("a", Some(&big))])).expect("write");
        assert!(redo_tree.get(REDO_KEY).expect("get").is_none());
        assert_eq!(replay_at_open(&redo_tree, 0, &tree).expect("replay"), 0);
        assert_eq!(
            tree.get("a").expect("get").map(|v| v.len()),
            Some(big.len())
        );
    }
}
