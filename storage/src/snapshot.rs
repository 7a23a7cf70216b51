//! Snapshot files: layout, writing, reading and the snapshot directory.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic      8 bytes  "TNDMSNAP"
//! format     u8       SNAPSHOT_FORMAT (1)
//! meta_len   u32
//! meta       meta_len bytes: codec::encode(SnapshotMeta)
//! records    repeated: tag u8 = 1, key_len u32, key, value_len u32, value
//!            (raw key/value bytes of the state machine tree, in key order)
//! end        tag u8 = 0, record_count u64
//! checksum   32 bytes: SHA-256 of every byte from magic to record_count
//! ```
//!
//! Files in the directory: `snap-<seq>.snap` (complete, newest seq wins),
//! `snap-<seq>.tmp` (being written), `incoming-<n>.part` (being received by
//! the node). `.tmp` and `.part` files are deleted when the store opens.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest;

use crate::codec;
use crate::error::StorageError;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"TNDMSNAP";
/// Version of the snapshot file layout.
pub const SNAPSHOT_FORMAT: u8 = 1;
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 0;
pub(crate) const MAX_KEY_LEN: usize = 64 * 1024;
const MAX_META_LEN: usize = 16 * 1024 * 1024;
const LOAD_BATCH: usize = 4096;
const SNAP_EXT: &str = "snap";
const TMP_EXT: &str = "tmp";
const PART_EXT: &str = "part";

fn bad(msg: impl Into<String>) -> StorageError {
    StorageError::BadSnapshot(msg.into())
}

/// Writer that hashes what passes through it.
struct HashWriter<W> {
    inner: W,
    ctx: digest::Context,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reader that hashes what passes through it and optionally copies it to a
/// second writer (used to keep a copy of an installed snapshot).
struct HashReader<R, W> {
    inner: R,
    ctx: digest::Context,
    tee: Option<W>,
}

impl<R: Read, W: Write> Read for HashReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        if let Some(t) = &mut self.tee {
            t.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

fn read_u8(r: &mut impl Read) -> Result<u8, StorageError> {
    let mut b = [0u8; 1];
    read_exact(r, &mut b)?;
    Ok(b[0])
}

fn read_u32(r: &mut impl Read) -> Result<u32, StorageError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Result<u64, StorageError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), StorageError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad("truncated snapshot file"),
        _ => StorageError::Io(e),
    })
}

/// First step of [`read_len_prefixed`]'s buffer growth.
const FIRST_READ: usize = 64 * 1024;

fn read_len_prefixed(r: &mut impl Read, max: usize, buf: &mut Vec<u8>) -> Result<(), StorageError> {
    let len = read_u32(r)? as usize;
    if len > max {
        return Err(bad(format!("field of {len} bytes exceeds {max}")));
    }
    // The buffer grows (doubling from FIRST_READ, never past `len`) as the
    // bytes arrive, so a length that claims more than the file holds costs
    // the bytes that are there, not `max`.
    buf.clear();
    while buf.len() < len {
        let at = buf.len();
        let step = (len - at).min(at.max(FIRST_READ));
        buf.reserve_exact(step);
        buf.resize(at + step, 0);
        read_exact(r, &mut buf[at..])?;
    }
    Ok(())
}

fn write_len_prefixed(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(bytes.len()).map_err(|_| io::Error::other("snapshot field over 4 GiB"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)
}

fn read_header(r: &mut impl Read) -> Result<SnapshotMeta, StorageError> {
    let mut magic = [0u8; 8];
    read_exact(r, &mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a Tandem snapshot (bad magic)"));
    }
    let format = read_u8(r)?;
    if format != SNAPSHOT_FORMAT {
        return Err(bad(format!("unknown snapshot format {format}")));
    }
    let mut meta = Vec::new();
    read_len_prefixed(r, MAX_META_LEN, &mut meta)?;
    Ok(codec::decode(&meta)?)
}

/// Reads only the header (meta) of a snapshot file.
pub(crate) fn read_meta(path: &Path) -> Result<SnapshotMeta, StorageError> {
    read_header(&mut BufReader::new(File::open(path)?))
}

/// Streams `tree` to a new snapshot file in `dir`, fsyncs it, renames it into
/// place, and deletes older snapshot files. Returns the final path and the
/// number of records written.
///
/// The caller guarantees no writes to `tree` happen meanwhile.
pub(crate) fn write_snapshot(
    dir: &Path,
    tree: &sled::Tree,
    meta: &SnapshotMeta,
) -> Result<(PathBuf, u64), StorageError> {
    let seq = next_seq(dir)?;
    let tmp = dir.join(format!("snap-{seq:020}.{TMP_EXT}"));
    let count = write_snapshot_file(&tmp, tree.iter().map(|kv| kv.map_err(Into::into)), meta)?;
    let path = publish(dir, &tmp, seq)?;
    tracing::info!(path = %path.display(), last_log_id = ?meta.last_log_id, records = count, "snapshot written");
    Ok((path, count))
}

/// Writes `records` (key order) with `meta` as a complete snapshot file at
/// `path` (created, must not exist) and fsyncs it; returns how many records
/// it holds. On failure the file is removed.
pub(crate) fn write_snapshot_file(
    path: &Path,
    records: impl Iterator<Item = Result<(sled::IVec, sled::IVec), StorageError>>,
    meta: &SnapshotMeta,
) -> Result<u64, StorageError> {
    let file = OpenOptions::new().write(true).create_new(true).open(path)?;
    let res = (|| -> Result<u64, StorageError> {
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        let count = write_stream(&mut w, records, meta)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(count)
    })();
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

/// Writes a whole snapshot (header, `records` in key order, trailer with
/// the checksum) to `out`; returns how many records it holds.
pub(crate) fn write_stream<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    out: &mut impl Write,
    records: impl Iterator<Item = Result<(K, V), StorageError>>,
    meta: &SnapshotMeta,
) -> Result<u64, StorageError> {
    let mut w = HashWriter {
        inner: out,
        ctx: digest::Context::new(&digest::SHA256),
    };
    w.write_all(MAGIC)?;
    w.write_all(&[SNAPSHOT_FORMAT])?;
    write_len_prefixed(&mut w, &codec::encode(meta)?)?;
    let mut count = 0u64;
    for kv in records {
        let (k, v) = kv?;
        w.write_all(&[TAG_RECORD])?;
        write_len_prefixed(&mut w, k.as_ref())?;
        write_len_prefixed(&mut w, v.as_ref())?;
        count += 1;
    }
    w.write_all(&[TAG_END])?;
    w.write_all(&count.to_be_bytes())?;
    let sum = w.ctx.clone().finish();
    w.inner.write_all(sum.as_ref())?;
    Ok(count)
}

/// Renames a complete, fsynced `.tmp` file to its `.snap` name, fsyncs the
/// directory and deletes older snapshots.
fn publish(dir: &Path, tmp: &Path, seq: u64) -> Result<PathBuf, StorageError> {
    let path = dir.join(format!("snap-{seq:020}.{SNAP_EXT}"));
    fs::rename(tmp, &path)?;
    sync_dir(dir)?;
    remove_older_snapshots(dir, seq)?;
    Ok(path)
}

/// Reads a snapshot stream, checks it against `expected` and its checksum,
/// and writes its records into `target` (an empty, not yet visible tree).
/// When `copy_to` is given, every byte of the snapshot is copied there.
pub(crate) fn load_snapshot<R: Read, W: Write>(
    src: R,
    expected: &SnapshotMeta,
    target: &sled::Tree,
    copy_to: Option<W>,
) -> Result<Option<W>, StorageError> {
    let mut r = HashReader {
        inner: src,
        ctx: digest::Context::new(&digest::SHA256),
        tee: copy_to,
    };
    let mut batch = sled::Batch::default();
    let mut in_batch = 0usize;
    read_stream(
        &mut r,
        |meta| {
            if meta.last_log_id != expected.last_log_id
                || meta.last_membership != expected.last_membership
            {
                return Err(bad(format!(
                    "snapshot header {meta} does not match the expected {expected}"
                )));
            }
            Ok(())
        },
        |key, value| {
            batch.insert(key, value);
            in_batch += 1;
            if in_batch == LOAD_BATCH {
                target.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
            Ok(())
        },
    )?;
    // The last batch only once the checksum held (on an error the caller
    // drops `target` anyway).
    target.apply_batch(batch)?;
    Ok(r.tee)
}

/// Reads a whole snapshot stream from `r`: the header, which `check_meta`
/// accepts or refuses, then every record, each handed to `sink` in file
/// order, then the trailer, checking the record count and the checksum.
/// Returns the number of records.
fn read_stream<R: Read, W: Write>(
    r: &mut HashReader<R, W>,
    check_meta: impl FnOnce(&SnapshotMeta) -> Result<(), StorageError>,
    mut sink: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
) -> Result<u64, StorageError> {
    let meta = read_header(r)?;
    check_meta(&meta)?;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut count = 0u64;
    loop {
        match read_u8(r)? {
            TAG_RECORD => {
                read_len_prefixed(r, MAX_KEY_LEN, &mut key)?;
                read_len_prefixed(r, codec::BINCODE_LIMIT + 1, &mut value)?;
                sink(&key, &value)?;
                count += 1;
            }
            TAG_END => break,
            t => return Err(bad(format!("unknown record tag {t}"))),
        }
    }
    let declared = read_u64(r)?;
    if declared != count {
        return Err(bad(format!(
            "snapshot declares {declared} records, has {count}"
        )));
    }
    let computed = r.ctx.clone().finish();
    let mut sum = [0u8; 32];
    read_exact(r, &mut sum)?;
    if computed.as_ref() != sum {
        return Err(bad("snapshot checksum mismatch"));
    }
    Ok(count)
}

/// Reads a snapshot held in memory as [`load_snapshot`] reads a file,
/// without a target tree: every record goes to `sink`, and any header is
/// accepted. For the fuzz target (see [`crate::fuzzing`]).
pub(crate) fn read_snapshot_bytes(
    bytes: &[u8],
    sink: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
) -> Result<(SnapshotMeta, u64), StorageError> {
    let mut r = HashReader::<_, io::Sink> {
        inner: bytes,
        ctx: digest::Context::new(&digest::SHA256),
        tee: None,
    };
    let mut meta = None;
    let count = read_stream(
        &mut r,
        |m| {
            meta = Some(m.clone());
            Ok(())
        },
        sink,
    )?;
    // read_stream calls check_meta before it can return Ok.
    let meta = meta.ok_or_else(|| bad("no header"))?;
    Ok((meta, count))
}

/// Creates the `.tmp` file a received snapshot is copied into while it is
/// installed; [`publish_copy`] makes it the current snapshot.
pub(crate) fn create_copy(dir: &Path) -> Result<(u64, PathBuf, BufWriter<File>), StorageError> {
    let seq = next_seq(dir)?;
    let tmp = dir.join(format!("snap-{seq:020}.{TMP_EXT}"));
    let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    Ok((seq, tmp, BufWriter::with_capacity(256 * 1024, file)))
}

/// Fsyncs and publishes a copy made by [`create_copy`].
pub(crate) fn publish_copy(
    dir: &Path,
    seq: u64,
    tmp: &Path,
    w: BufWriter<File>,
) -> Result<PathBuf, StorageError> {
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    publish(dir, tmp, seq)
}

/// The number of records a complete snapshot file holds, read from its
/// trailer (`TAG_END`, count, SHA-256) without reading the records.
pub(crate) fn record_count(path: &Path) -> Result<u64, StorageError> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let trailer = 1 + 8 + 32;
    if len < trailer as u64 {
        return Err(StorageError::BadSnapshot(format!(
            "snapshot {} is too short for its trailer",
            path.display()
        )));
    }
    f.seek(SeekFrom::Start(len - trailer as u64))?;
    let mut buf = [0u8; 9];
    f.read_exact(&mut buf)?;
    if buf[0] != TAG_END {
        return Err(StorageError::BadSnapshot(format!(
            "snapshot {} has no end tag before its trailer",
            path.display()
        )));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&buf[1..]);
    Ok(u64::from_be_bytes(count))
}

/// The newest complete snapshot file, if any.
pub(crate) fn current_snapshot(dir: &Path) -> Result<Option<PathBuf>, StorageError> {
    Ok(list(dir)?
        .into_iter()
        .filter(|(_, ext, _)| ext == SNAP_EXT)
        .max_by_key(|(seq, _, _)| *seq)
        .map(|(_, _, p)| p))
}

/// Deletes `.tmp` and `.part` leftovers and all but the newest snapshot.
pub(crate) fn cleanup(dir: &Path) -> Result<(), StorageError> {
    let mut newest = 0;
    for (seq, ext, path) in list(dir)? {
        if ext == TMP_EXT || ext == PART_EXT {
            tracing::debug!(path = %path.display(), "removing leftover snapshot file");
            fs::remove_file(&path)?;
        } else if ext == SNAP_EXT {
            newest = newest.max(seq);
        }
    }
    remove_older_snapshots(dir, newest)
}

/// Deletes every file this module manages in `dir` (`.snap`, `.tmp`,
/// `.part`).
pub(crate) fn remove_all(dir: &Path) -> Result<(), StorageError> {
    for (_, _, path) in list(dir)? {
        fs::remove_file(&path)?;
    }
    Ok(())
}

fn remove_older_snapshots(dir: &Path, keep_seq: u64) -> Result<(), StorageError> {
    for (seq, ext, path) in list(dir)? {
        if ext == SNAP_EXT && seq < keep_seq {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `(seq, extension, path)` of the files this module manages.
fn list(dir: &Path) -> Result<Vec<(u64, String, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for de in fs::read_dir(dir)? {
        let path = de?.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let seq = if let Some(n) = stem.strip_prefix("snap-") {
            n.parse().ok()
        } else if ext == PART_EXT && stem.starts_with("incoming-") {
            Some(0)
        } else {
            None
        };
        if let Some(seq) = seq {
            out.push((seq, ext.to_owned(), path));
        }
    }
    Ok(out)
}

fn next_seq(dir: &Path) -> Result<u64, StorageError> {
    Ok(list(dir)?.iter().map(|(s, _, _)| *s).max().unwrap_or(0) + 1)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a new, empty file in `dir` (the store's snapshot directory, see
/// [`crate::Store::snapshot_dir`]) for receiving a snapshot from a peer.
///
/// The node writes the received chunks into it, seeks it to the start and
/// hands it (as a `tokio::fs::File`) to openraft's `install_full_snapshot`;
/// installing copies the data into a snapshot file of its own, so the node
/// deletes `path` afterwards. Leftovers are deleted when the store opens.
///
/// # Errors
/// Any I/O error creating the file.
pub fn incoming_snapshot_file(dir: &Path) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("incoming-{}-{n}.{PART_EXT}", std::process::id()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixed(len: u32, body: &[u8]) -> Vec<u8> {
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_length_over_the_file_costs_only_the_bytes_there() {
        // Claims 60 MiB, holds 10 bytes: truncated, and the buffer never
        // grew to the claim.
        let input = prefixed(60 << 20, &[7; 10]);
        let mut buf = Vec::new();
        let err = read_len_prefixed(&mut &input[..], 64 << 20, &mut buf).unwrap_err();
        assert!(matches!(err, StorageError::BadSnapshot(_)), "{err}");
        assert!(buf.capacity() <= FIRST_READ, "grew to {}", buf.capacity());
    }

    #[test]
    fn long_fields_read_whole_in_an_exact_buffer() {
        let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let input = prefixed(body.len() as u32, &body);
        let mut buf = vec![1, 2, 3];
        read_len_prefixed(&mut &input[..], body.len(), &mut buf).expect("reads");
        assert_eq!(buf, body);
        assert_eq!(buf.capacity(), body.len());
        let err = read_len_prefixed(&mut &input[..], body.len() - 1, &mut buf).unwrap_err();
        assert!(matches!(err, StorageError::BadSnapshot(_)), "{err}");
    }

    #[test]
    fn a_written_stream_reads_back() {
        let meta = SnapshotMeta::default();
        let records: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"b", &[9; 70_000])];
        let mut file = Vec::new();
        let n = write_stream(&mut file, records.iter().map(|&kv| Ok(kv)), &meta).expect("writes");
        assert_eq!(n, 2);
        let mut seen = Vec::new();
        let (back, count) = read_snapshot_bytes(&file, |k, v| {
            seen.push((k.to_vec(), v.len()));
            Ok(())
        })
        .expect("reads");
        assert_eq!((back, count), (meta, 2));
        assert_eq!(seen, vec![(b"a".to_vec(), 1), (b"b".to_vec(), 70_000)]);
        // One flipped byte anywhere is refused.
        file[20] ^= 1;
        assert!(read_snapshot_bytes(&file, |_, _| Ok(())).is_err());
    }
}
