//! The Raft log in append-only segment files, outside sled.
//!
//! Layout: `dir/<first index, 20 digits>.seg`, each file a sequence of
//! records `u32 LE payload length ++ u32 LE CRC-32 of the payload ++
//! payload`, the payload one `codec::encode`d [`Entry`]. A segment holds
//! consecutive indexes from the one in its name; a new segment starts once
//! the current one reaches [`SEGMENT_BYTES`] (or when an append does not
//! continue the log, after a purge). The in-memory index keeps, per segment,
//! the end offset of each record (4 bytes per entry).
//!
//! Writes are `pwrite`s into the page cache, readable at once; [`sync`]
//! makes every write so far durable (`fdatasync` of each file written since
//! the last sync, `fsync` of the directory after a file was created or
//! removed). The log store calls it once per group of appends.
//!
//! Crash safety (storage/DESIGN.md "Raft log segments"):
//! - a segment is synced before an append to a later segment is
//!   acknowledged, so after a crash only the last segment can end in a torn
//!   or partly written record; [`SegmentLog::open`] cuts it at the first
//!   record that is short, fails its CRC, or does not carry the expected
//!   index (un-acknowledged entries only);
//! - truncation removes the later segments and syncs the directory before it
//!   shortens the segment holding the cut, so a crash in between leaves a
//!   prefix of the old log, never a gap;
//! - purge removes whole segments from the front only; the caller makes its
//!   purge marker durable first, and `open` removes segments wholly at or
//!   below the marker.
//!
//! [`sync`]: SegmentLog::sync

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::codec;
use crate::error::StorageError;
use crate::types::{Entry, LogId};

/// A segment is closed once it holds this many bytes (one batch may go a
/// little past it). Purges free whole segments, so smaller segments give
/// disk space back sooner; 8 MiB is ~25,000 entries of 256-byte values.
pub(crate) const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// Encoded bytes of the newest entries kept decoded in memory: openraft
/// reads every entry back right after it was appended (the leader to
/// replicate it, every node to apply it), and a copy from memory costs less
/// than a `pread`, a CRC and a decode.
pub(crate) const TAIL_CACHE_BYTES: usize = 1024 * 1024;

/// Bytes before each payload: length and CRC.
pub(crate) const HEADER: usize = 8;

/// Suffix of segment file names.
const SUFFIX: &str = ".seg";

fn corrupt(msg: String) -> StorageError {
    StorageError::Corrupt(format!("raft log segment: {msg}"))
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// End offset of record `first + k` at `ends[k]`.
    ends: Vec<u32>,
}

impl Segment {
    fn len(&self) -> u64 {
        self.ends.last().map_or(0, |e| u64::from(*e))
    }

    /// One past the last index (== `first` when empty).
    fn next(&self) -> u64 {
        self.first + self.ends.len() as u64
    }

    fn start_of(&self, index: u64) -> u64 {
        match index - self.first {
            0 => 0,
            k => u64::from(self.ends[(k - 1) as usize]),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// In index order; contiguous except where a purge left a gap in front
    /// of the newest segments.
    segments: Vec<Segment>,
    /// Files written since the last sync.
    unsynced: Vec<Arc<File>>,
    /// A segment file was created or removed since the last sync.
    dir_dirty: bool,
    last_log_id: Option<LogId>,
    /// The newest entries, consecutive, ending at the last one (or empty),
    /// with their encoded sizes; at most [`TAIL_CACHE_BYTES`] in all.
    tail: std::collections::VecDeque<(Entry, usize)>,
    tail_bytes: usize,
}

impl Inner {
    /// Marks `file` as written since the last sync (once).
    fn mark_unsynced(&mut self, file: &Arc<File>) {
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, file)) {
            self.unsynced.push(file.clone());
        }
    }

    fn tail_clear(&mut self) {
        self.tail.clear();
        self.tail_bytes = 0;
    }

    fn tail_first(&self) -> Option<u64> {
        self.tail.front().map(|(e, _)| e.log_id.index)
    }

    /// Drops cached entries with index `>= from`.
    fn tail_truncate(&mut self, from: u64) {
        while self
            .tail
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= from)
        {
            if let Some((_, n)) = self.tail.pop_back() {
                self.tail_bytes -= n;
            }
        }
    }

    fn tail_push(&mut self, entry: Entry, size: usize) {
        if self
            .tail
            .back()
            .is_some_and(|(e, _)| e.log_id.index + 1 != entry.log_id.index)
        {
            self.tail_clear();
        }
        self.tail.push_back((entry, size));
        self.tail_bytes += size;
        while self.tail_bytes > TAIL_CACHE_BYTES {
            match self.tail.pop_front() {
                Some((_, n)) => self.tail_bytes -= n,
                None => break,
            }
        }
    }
}

/// The segment files of one log directory. Appends, truncation and purge
/// take the write lock; reads the read lock (they `pread` under it, so a
/// concurrent truncate never hands them half-removed bytes).
pub(crate) struct SegmentLog {
    dir: PathBuf,
    inner: RwLock<Inner>,
    /// Held by [`SegmentLog::sync`] from taking the unsynced files until
    /// their fsyncs returned, so a sync that finds nothing left to take
    /// knows that no other sync is still making earlier writes durable.
    /// Not `inner`'s lock: appends keep going while a sync waits on the
    /// disk (the log store's group commit queues them for the next sync).
    sync_lock: Mutex<()>,
    /// Test hook: what [`SegmentLog::sync`] is doing, as it does it.
    #[cfg(test)]
    sync_hook: Option<Box<dyn Fn(SyncStep) + Send + Sync>>,
}

/// The steps of a [`SegmentLog::sync`] a test can watch, with the number of
/// files it took.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncStep {
    /// The unsynced files were taken; their fsyncs come next.
    Taken(usize),
    /// Their fsyncs returned.
    Synced(usize),
}

/// What [`SegmentLog::open`] repaired, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Bytes cut from the end of the last segment (a torn write).
    pub(crate) cut_bytes: u64,
    /// Segments removed because they lay wholly at or below the purge marker.
    pub(crate) purged_segments: usize,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends one record holding `entry` to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, entry: &Entry) -> Result<(), StorageError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    if let Err(e) = codec::encode_into(buf, entry) {
        buf.truncate(at);
        return Err(e.into());
    }
    let payload = &buf[at + HEADER..];
    let len = u32::try_from(payload.len()).map_err(|_| corrupt("entry too large".into()))?;
    let crc = crc32fast::hash(payload);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    buf[at + 4..at + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Splits the next record off `bytes`: `Some((payload, rest))`, or `None`
/// if it is short or fails its CRC.
fn next_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (header, rest) = bytes.split_at_checked(HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len == 0 {
        return None;
    }
    let (payload, rest) = rest.split_at_checked(len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, rest))
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`: removes segments wholly
    /// at or below `purged` (an interrupted purge), reads the others, and
    /// cuts a torn end off the last one.
    ///
    /// # Errors
    /// I/O errors; a damaged record in a segment that is not the last, or
    /// segments that overlap (neither can come from a crash).
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> Result<(Self, Recovery), StorageError> {
        fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            match name.to_str().and_then(parse_name) {
                Some(first) => firsts.push(first),
                None => {
                    // Not ours: leave it, but say so.
                    tracing::warn!(file = %item.path().display(), "unexpected file in the raft log directory");
                }
            }
        }
        firsts.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::new();
        let count = firsts.len();
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment_name(first));
            let is_last = i + 1 == count;
            // Wholly purged if the next segment starts at or below purged+1.
            if let (Some(p), Some(&next_first)) = (purged, firsts.get(i + 1)) {
                if next_first <= p + 1 {
                    fs::remove_file(&path)?;
                    recovery.purged_segments += 1;
                    continue;
                }
            }
            let file = open_rw(&path, false)?;
            let bytes = fs::read(&path)?;
            let mut ends = Vec::new();
            let mut damaged_at = None;
            for record in Records::new(&bytes, first) {
                match record {
                    Ok((_, end)) => ends.push(
                        u32::try_from(end)
                            .map_err(|_| corrupt(format!("{} too large", path.display())))?,
                    ),
                    Err(at) => damaged_at = Some(at),
                }
            }
            if let Some(at) = damaged_at {
                if !is_last {
                    return Err(corrupt(format!(
                        "{}: damaged record at byte {at} of {} (not the last segment: not a torn write)",
                        path.display(),
                        bytes.len()
                    )));
                }
                recovery.cut_bytes = (bytes.len() - at) as u64;
                file.set_len(at as u64)?;
                file.sync_all()?;
            }
            if let Some(prev) = segments.last() {
                if first < prev.next() {
                    return Err(corrupt(format!(
                        "{} overlaps the segment before it (ends at index {})",
                        path.display(),
                        prev.next()
                    )));
                }
                if first > prev.next() {
                    tracing::warn!(segment = %path.display(), expected = prev.next(), "gap before raft log segment");
                }
            }
            segments.push(Segment {
                first,
                path,
                file: Arc::new(file),
                ends,
            });
        }
        let log = Self {
            dir: dir.to_path_buf(),
            inner: RwLock::new(Inner {
                segments,
                ..Inner::default()
            }),
            sync_lock: Mutex::new(()),
            #[cfg(test)]
            sync_hook: None,
        };
        // The last segments too, once the marker covers them (their removal
        // may have been cut short).
        if let Some(p) = purged {
            recovery.purged_segments += log.purge(p)?;
        }
        if recovery.purged_segments > 0 {
            sync_dir(dir)?;
        }
        {
            let mut inner = log.write();
            inner.last_log_id = Self::read_last(&inner)?;
        }
        Ok((log, recovery))
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Every update of `Inner` that can fail leaves it describing what is
        // on disk (see each method), so a poisoned lock is still consistent.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_last(inner: &Inner) -> Result<Option<LogId>, StorageError> {
        for seg in inner.segments.iter().rev() {
            if let Some(&end) = seg.ends.last() {
                let index = seg.next() - 1;
                let start = seg.start_of(index);
                let mut buf = vec![0; (u64::from(end) - start) as usize];
                seg.file.read_exact_at(&mut buf, start)?;
                let entries = decode_records(&buf, index, seg)?;
                return Ok(entries.last().map(|e| e.log_id));
            }
        }
        Ok(None)
    }

    /// The last entry's log id (`None`: empty).
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.read().last_log_id
    }

    /// One past the last index (0: empty).
    #[cfg(test)]
    pub(crate) fn next_index(&self) -> u64 {
        self.read().segments.last().map_or(0, Segment::next)
    }

    /// Logs what a full disk means for the node, when `e` says the disk
    /// is full: openraft stops Raft on a node whose log cannot be written.
    pub(crate) fn report_if_full(&self, e: &io::Error) {
        if e.kind() == io::ErrorKind::StorageFull {
            tracing::error!(
                dir = %self.dir.display(),
                "the disk holding the Raft log is full: Raft stops on this node \
                 (nothing acknowledged is lost); free space on that filesystem, then restart the node"
            );
        }
    }

    /// Appends `entries` (consecutive indexes). Entries at or after the
    /// first one's index are removed first (as [`SegmentLog::truncate`]); an
    /// append that starts past the end begins a new segment. Not durable
    /// until [`SegmentLog::sync`]. `buf` is scratch space.
    ///
    /// # Errors
    /// Encoding or I/O errors: the log then holds what it held before (a
    /// partly written record lies past the recorded end and is overwritten
    /// by the next append, or cut at the next open).
    pub(crate) fn append(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        buf: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        buf.clear();
        let mut ends_rel: Vec<u32> = Vec::new();
        let mut first = None;
        let mut last: Option<LogId> = None;
        let mut decoded = Vec::new();
        for e in entries {
            if let Some(l) = last {
                if e.log_id.index != l.index + 1 {
                    return Err(corrupt(format!(
                        "append of non-consecutive entries ({} after {})",
                        e.log_id.index, l.index
                    )));
                }
            }
            first.get_or_insert(e.log_id.index);
            let before = buf.len();
            encode_record(buf, &e)?;
            ends_rel
                .push(u32::try_from(buf.len()).map_err(|_| corrupt("append too large".into()))?);
            last = Some(e.log_id);
            decoded.push((e, buf.len() - before));
        }
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(());
        };
        let mut inner = self.write();
        let next = inner.segments.last().map_or(0, Segment::next);
        if first < next {
            self.truncate_locked(&mut inner, first)?;
        }
        let next = inner.segments.last().map_or(0, Segment::next);
        let start_new = match inner.segments.last() {
            None => true,
            Some(s) => first != next || s.len() >= SEGMENT_BYTES,
        };
        if start_new {
            let path = self.dir.join(segment_name(first));
            let file = open_rw(&path, true)?;
            // A leftover of an earlier life of this index (cannot be in
            // `segments`: every later segment was removed above).
            file.set_len(0)?;
            inner.dir_dirty = true;
            inner.segments.push(Segment {
                first,
                path,
                file: Arc::new(file),
                ends: Vec::new(),
            });
        }
        let seg = inner
            .segments
            .last_mut()
            .expect("a segment was ensured above");
        let base = seg.len();
        if base + buf.len() as u64 > u64::from(u32::MAX) {
            return Err(corrupt("segment would exceed 4 GiB".into()));
        }
        seg.file.write_all_at(buf, base)?;
        let base = base as u32;
        seg.ends.extend(ends_rel.iter().map(|e| base + e));
        let file = seg.file.clone();
        inner.mark_unsynced(&file);
        inner.last_log_id = Some(last);
        for (e, size) in decoded {
            inner.tail_push(e, size);
        }
        Ok(())
    }

    /// Makes every append, truncation and segment removal so far durable:
    /// returns once every write made before the call is synced, whichever
    /// call synced it. Blocking.
    ///
    /// # Errors
    /// I/O errors (the files stay marked unsynced, so the next sync retries).
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        // Held until the fsyncs below returned: a concurrent sync waits here
        // instead of finding the list empty and returning while these files
        // are still on their way to the disk.
        let _sync = self
            .sync_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (files, dir_dirty) = {
            let mut inner = self.write();
            (
                std::mem::take(&mut inner.unsynced),
                std::mem::take(&mut inner.dir_dirty),
            )
        };
        #[cfg(test)]
        self.hook(SyncStep::Taken(files.len()));
        let result = (|| -> Result<(), StorageError> {
            for f in &files {
                f.sync_data()?;
            }
            if dir_dirty {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Under the sync lock still: the next sync takes them again.
            let mut inner = self.write();
            for f in &files {
                inner.mark_unsynced(f);
            }
            inner.dir_dirty |= dir_dirty;
        }
        #[cfg(test)]
        self.hook(SyncStep::Synced(files.len()));
        result
    }

    #[cfg(test)]
    fn hook(&self, step: SyncStep) {
        if let Some(hook) = &self.sync_hook {
            hook(step);
        }
    }

    /// Removes every entry with index `>= from`, durably. Blocking.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn truncate(&self, from: u64) -> Result<(), StorageError> {
        self.truncate_locked(&mut self.write(), from)?;
        // The shortened segment's new length.
        self.sync()
    }

    fn truncate_locked(&self, inner: &mut Inner, from: u64) -> Result<(), StorageError> {
        inner.tail_truncate(from);
        // 1. Later segments go, durably, before anything is shortened.
        let mut removed = false;
        while inner.segments.last().is_some_and(|s| s.first >= from) {
            let seg = inner.segments.pop().expect("checked above");
            inner.unsynced.retain(|f| !Arc::ptr_eq(f, &seg.file));
            fs::remove_file(&seg.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        // 2. The segment holding `from` is cut there.
        if let Some(seg) = inner.segments.last_mut() {
            if from < seg.next() {
                let keep = seg.start_of(from);
                seg.file.set_len(keep)?;
                seg.ends.truncate((from - seg.first) as usize);
                let file = seg.file.clone();
                inner.mark_unsynced(&file);
            }
        }
        inner.last_log_id = Self::read_last(inner)?;
        Ok(())
    }

    /// Removes the segments whose entries all lie at or below `index`
    /// (entries of a segment straddling it stay; readers skip them).
    /// Blocking. The caller has made its purge marker durable first.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn purge(&self, index: u64) -> Result<usize, StorageError> {
        let mut inner = self.write();
        let mut n = 0;
        while inner
            .segments
            .first()
            .is_some_and(|s| s.next() <= index + 1)
        {
            let seg = inner.segments.remove(0);
            inner.unsynced.retain(|f| !Arc::ptr_eq(f, &seg.file));
            fs::remove_file(&seg.path)?;
            n += 1;
        }
        if n > 0 {
            inner.dir_dirty = true;
            if inner.segments.is_empty() {
                inner.last_log_id = None;
                inner.tail_clear();
            }
        }
        Ok(n)
    }

    /// Up to `limit` entries with index in `[from, to]` (`to` inclusive,
    /// `None`: to the end), in index order.
    ///
    /// # Errors
    /// I/O errors or a record that does not decode.
    pub(crate) fn read_range(
        &self,
        from: u64,
        to: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.read();
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // From memory when the range starts within the cached tail (the
        // tail always ends at the last entry).
        if let Some(t0) = inner.tail_first().filter(|t0| from >= *t0) {
            let skip = usize::try_from(from - t0).unwrap_or(usize::MAX);
            let end = to.map_or(u64::MAX, |t| t.saturating_add(1));
            out.extend(
                inner
                    .tail
                    .iter()
                    .skip(skip)
                    .take_while(|(e, _)| e.log_id.index < end)
                    .take(limit)
                    .map(|(e, _)| e.clone()),
            );
            return Ok(out);
        }
        let mut buf = Vec::new();
        for seg in &inner.segments {
            if out.len() >= limit {
                break;
            }
            let lo = from.max(seg.first);
            let mut hi = seg.next(); // exclusive
            if let Some(t) = to {
                hi = hi.min(t.saturating_add(1));
            }
            hi = hi.min(lo.saturating_add((limit - out.len()) as u64));
            if lo >= hi {
                continue;
            }
            let start = seg.start_of(lo);
            let end = u64::from(seg.ends[(hi - 1 - seg.first) as usize]);
            buf.resize((end - start) as usize, 0);
            seg.file.read_exact_at(&mut buf, start)?;
            out.extend(decode_records(&buf, lo, seg)?);
        }
        Ok(out)
    }

    /// Removes every segment file (a reset). Blocking, durable.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn clear_dir(dir: &Path) -> Result<(), StorageError> {
        if !dir.exists() {
            return Ok(());
        }
        for item in fs::read_dir(dir)? {
            let item = item?;
            if item.file_name().to_str().and_then(parse_name).is_some() {
                fs::remove_file(item.path())?;
            }
        }
        sync_dir(dir)?;
        Ok(())
    }
}

/// The records of `bytes`, which start with entry `first`: each entry with
/// the offset just past its record, until the first record that is short,
/// fails its CRC, does not decode or carries another index; that one is
/// `Err(offset where it starts)`, and the last item.
pub(crate) struct Records<'b> {
    bytes: &'b [u8],
    at: usize,
    expected: u64,
}

impl<'b> Records<'b> {
    pub(crate) fn new(bytes: &'b [u8], first: u64) -> Self {
        Self {
            bytes,
            at: 0,
            expected: first,
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<(Entry, usize), usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.at..).filter(|r| !r.is_empty())?;
        let good = next_record(rest).and_then(|(payload, tail)| {
            let e = codec::decode::<Entry>(payload).ok()?;
            (e.log_id.index == self.expected).then(|| (e, self.bytes.len() - tail.len()))
        });
        Some(match good {
            Some((e, end)) => {
                self.at = end;
                self.expected += 1;
                Ok((e, end))
            }
            None => {
                let bad = self.at;
                self.at = self.bytes.len();
                Err(bad)
            }
        })
    }
}

/// Decodes the records in `bytes`, which start with entry `first` of `seg`.
fn decode_records(bytes: &[u8], first: u64, seg: &Segment) -> Result<Vec<Entry>, StorageError> {
    Records::new(bytes, first)
        .map(|r| {
            r.map(|(e, _)| e).map_err(|at| {
                corrupt(format!(
                    "{}: damaged record at byte {} of the read from index {first}",
                    seg.path.display(),
                    at
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
