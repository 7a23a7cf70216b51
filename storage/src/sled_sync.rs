//! The durable sled flush, the one every path that must survive a power
//! loss takes after writing to sled: the vote and the purge marker (log
//! store), a snapshot install (state machine), a reset, `Store::flush`.
//! sled's own flush is not enough (storage/DESIGN.md "What sled's flush
//! guarantees"): it ends with `sync_file_range`, and it never syncs its blob
//! files at all.
//!
//! Blob files: sled 0.34.7 writes a log message longer than a quarter of its
//! 512 KiB segment, less the segment header (~128 KiB), to a file of its own,
//! `sled/blobs/<lsn>`, and logs only a pointer to it (`pagecache/logger.rs`
//! `reserve_inner`, `pagecache/blob_io.rs` `write_blob`); neither the file
//! nor the directory is ever fsynced. The threshold is on what sled logs,
//! which is a whole tree node when sled consolidates or splits one (a leaf
//! holds up to 17 items, an index node up to 257 keys), not on one value:
//! a leaf of 60 KiB values already goes to a blob file, as would an
//! index node of long keys. Keeping blobs away would take values under
//! ~7 KiB and keys under ~500 bytes, so the durable flush fsyncs them
//! instead.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::error::StorageError;

/// Name of sled's data file in its directory.
const DATA_FILE: &str = "db";
/// Name of sled's blob directory in its directory.
const BLOB_DIR: &str = "blobs";

/// Makes sled's writes durable; see the module. One per open store (or
/// reset), shared by whoever flushes it.
pub(crate) struct SledSync {
    /// sled's data file, opened a second time (read-only is enough for
    /// `fdatasync` on Linux): the `fdatasync` on this handle persists what
    /// sled's `sync_file_range` leaves out (a grown size, the drive's
    /// write cache).
    data_file: File,
    blob_dir: PathBuf,
    /// Names of the blob files already fsynced. sled creates each blob once
    /// (`create_new`, named by its log sequence number) and never writes it
    /// again, so a synced blob stays synced. Held from listing the blobs to
    /// their last fsync, so a concurrent flush waits instead of passing over
    /// a blob another flush has listed but not yet synced.
    synced_blobs: Mutex<HashSet<OsString>>,
    /// `fdatasync`s of the data file so far.
    #[cfg(test)]
    pub(crate) data_syncs: std::sync::atomic::AtomicU64,
}

impl SledSync {
    /// For the sled database in `sled_dir` (which sled has opened, so its
    /// data file exists).
    ///
    /// # Errors
    /// The data file cannot be opened.
    pub(crate) fn open(sled_dir: &Path) -> Result<Self, StorageError> {
        Ok(Self {
            data_file: File::open(sled_dir.join(DATA_FILE))?,
            blob_dir: sled_dir.join(BLOB_DIR),
            synced_blobs: Mutex::default(),
            #[cfg(test)]
            data_syncs: Default::default(),
        })
    }

    /// Makes every write to `db` made before the call durable: the blob
    /// files and their directory, then sled's flush, then `fdatasync` of
    /// the data file. Blocking.
    ///
    /// The blobs come first: sled writes a blob in the inserting thread
    /// before the insert returns (`reserve_inner`), so the blobs of every
    /// write made before this call exist now, and syncing them before
    /// sled's flush means this flush never makes a pointer durable ahead of
    /// its blob (sled skips a pointer whose blob is missing at recovery,
    /// `LogRead::DanglingBlob`).
    ///
    /// # Errors
    /// I/O errors from sled or an fsync.
    pub(crate) fn flush(&self, db: &sled::Db) -> Result<(), StorageError> {
        self.sync_blobs()?;
        db.flush()?;
        self.data_file.sync_data()?;
        #[cfg(test)]
        self.data_syncs
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Fsyncs the blob files not synced yet, and then their directory.
    fn sync_blobs(&self) -> io::Result<()> {
        // The set is replaced in one assignment, after every fsync: a panic
        // before leaves the old set, which only means syncing again.
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let listing = match fs::read_dir(&self.blob_dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut created = false;
        for item in listing {
            let item = item?;
            let name = item.file_name();
            if !synced.contains(&name) {
                match File::open(item.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled removed it meanwhile (its page moved on).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                created = true;
            }
            present.insert(name);
        }
        if created {
            File::open(&self.blob_dir)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }

    /// The blob files there are, and those of them not synced yet.
    #[cfg(test)]
    pub(crate) fn blobs(&self) -> (HashSet<OsString>, HashSet<OsString>) {
        let all: HashSet<OsString> = fs::read_dir(&self.blob_dir)
            .expect("blob directory")
            .map(|e| e.expect("blob directory entry").file_name())
            .collect();
        let synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let unsynced = all.difference(&synced).cloned().collect();
        (all, unsynced)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::log_runs::tests::entry_of;

    /// Opens the store in `dir`, waiting for sled's lock on it to go (sled
    /// releases it a moment after the last `Db` handle is dropped).
    pub(crate) fn open(dir: &Path) -> crate::Store {
        for _ in 0..250 {
            match crate::open(dir, 4 << 20) {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r.expect("store opens"),
            }
        }
        panic!("sled's lock on {} was never released", dir.display());
    }

    /// Twenty 60 KiB values, each below the 64 KiB a command may store,
    /// applied one entry per batch as openraft does: sled keeps the tree
    /// nodes holding them in blob files (so a bound on values does not keep
    /// blobs away), the durable flush fsyncs every one of them and the
    /// directory, and the values read back after a reopen.
    #[test]
    fn blob_files_of_large_values_are_synced_by_the_durable_flush() {
        const VALUE_JSON_BYTES: usize = 60 * 1024;
        let tmp = tempfile::tempdir().expect("temp dir");
        let entries: Vec<_> = (1..=20)
            .map(|i| entry_of(1, i, VALUE_JSON_BYTES - 2))
            .collect();
        {
            let store = open(tmp.path());
            for e in &entries {
                store
                    .sm
                    .shared
                    .apply_blocking(std::slice::from_ref(e))
                    .expect("apply");
            }
            store.flush().expect("durable flush");
            let (blobs, unsynced) = store.sled_sync.blobs();
            assert!(!blobs.is_empty(), "sled wrote no blob file");
            assert!(unsynced.is_empty(), "unsynced: {unsynced:?}");
            assert_eq!(store.sled_sync.data_syncs.load(Ordering::SeqCst), 1);
        }
        let store = open(tmp.path());
        assert_eq!(store.reader.applied_index(), Some(20));
        for i in 1..=20 {
            let entry = store.reader.config_get(&format!("k{i}")).expect("value");
            assert_eq!(entry.value_json.len(), VALUE_JSON_BYTES, "k{i}");
        }
    }
}
