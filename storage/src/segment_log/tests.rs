//! Tests of the segment files: appends, reopen, torn tails, truncation,
//! purge, the tail cache, and concurrent syncs.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::log_runs::tests::entry_of as sized;

fn entry(term: u64, index: u64) -> Entry {
    sized(term, index, 8)
}

fn indexes(v: &[Entry]) -> Vec<u64> {
    v.iter().map(|e| e.log_id.index).collect()
}

fn terms(v: &[Entry]) -> Vec<u64> {
    v.iter().map(|e| e.log_id.leader_id.term).collect()
}

fn seg_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn appends_read_back_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    {
        let (log, rec) = SegmentLog::open(tmp.path(), None).unwrap();
        assert_eq!(rec, Recovery::default());
        assert_eq!(log.last_log_id(), None);
        log.append((1..=10).map(|i| entry(1, i)), &mut buf).unwrap();
        log.append((11..=12).map(|i| entry(2, i)), &mut buf)
            .unwrap();
        log.sync().unwrap();
        assert_eq!(
            indexes(&log.read_range(3, Some(5), usize::MAX).unwrap()),
            [3, 4, 5]
        );
        assert_eq!(indexes(&log.read_range(0, None, 2).unwrap()), [1, 2]);
        assert_eq!(log.last_log_id().unwrap().index, 12);
    }
    let (log, _) = SegmentLog::open(tmp.path(), None).unwrap();
    let all = log.read_range(0, None, usize::MAX).unwrap();
    assert_eq!(indexes(&all), (1..=12).collect::<Vec<_>>());
    assert_eq!(terms(&all)[10..], [2, 2]);
    assert_eq!(log.next_index(), 13);
}

/// Reads served from the in-memory tail agree with reads from disk
/// (a reopened log has no tail), across truncation and eviction.
#[test]
fn the_tail_cache_reads_what_the_disk_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    let (log, _) = SegmentLog::open(tmp.path(), None).unwrap();
    // ~3 MiB in all: the first entries are evicted from the tail.
    for i in 1..=300 {
        log.append([sized(1, i, 10_000)], &mut buf).unwrap();
    }
    log.truncate(290).unwrap();
    log.append((290..=295).map(|i| sized(2, i, 10)), &mut buf)
        .unwrap();
    log.sync().unwrap();
    assert!(log.read().tail_first().unwrap() > 1);
    assert!(log.read().tail_bytes <= TAIL_CACHE_BYTES);
    let ranges = [
        (1, Some(3)),
        (250, Some(260)),
        (280, None),
        (294, Some(400)),
        (296, None),
    ];
    let cached: Vec<Vec<Entry>> = ranges
        .iter()
        .map(|(f, t)| log.read_range(*f, *t, usize::MAX).unwrap())
        .collect();
    drop(log);
    let (log, _) = SegmentLog::open(tmp.path(), None).unwrap();
    assert!(log.read().tail.is_empty());
    for ((f, t), want) in ranges.iter().zip(cached) {
        assert_eq!(
            log.read_range(*f, *t, usize::MAX).unwrap(),
            want,
            "{f}..{t:?}"
        );
    }
    assert_eq!(
        terms(&log.read_range(289, Some(291), 9).unwrap()),
        [1, 2, 2]
    );
    assert_eq!(log.read_range(250, None, 2).unwrap().len(), 2);
}

#[test]
fn torn_tail_is_cut_at_open_and_appends_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    let path;
    {
        let (log, _) = SegmentLog::open(tmp.path(), None).unwrap();
        log.append((1..=5).map(|i| entry(1, i)), &mut buf).unwrap();
        log.sync().unwrap();
        path = log.read().segments[0].path.clone();
    }
    // A half-written sixth record, then garbage.
    let mut rec = Vec::new();
    encode_record(&mut rec, &entry(1, 6)).unwrap();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    io::Write::write_all(&mut f, &rec[..rec.len() - 3]).unwrap();
    drop(f);
    let (log, rec) = SegmentLog::open(tmp.path(), None).unwrap();
    assert!(rec.cut_bytes > 0);
    assert_eq!(log.next_index(), 6);
    log.append([entry(2, 6)], &mut buf).unwrap();
    let all = log.read_range(0, None, usize::MAX).unwrap();
    assert_eq!(indexes(&all), [1, 2, 3, 4, 5, 6]);
    assert_eq!(all[5].log_id.leader_id.term, 2);
}

#[test]
fn a_flipped_byte_is_cut_in_the_last_segment_and_refused_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    let (first_path, end_of_2) = {
        let (log, _) = SegmentLog::open(tmp.path(), None).unwrap();
        log.append((1..=3).map(|i| entry(1, i)), &mut buf).unwrap();
        log.sync().unwrap();
        let inner = log.read();
        (inner.segments[0].path.clone(), inner.segments[0].ends[1])
    };
    let mut bytes = fs::read(&first_path).unwrap();
    bytes[end_of_2 as usize + HEADER + 2] ^= 0x40;
    fs::write(&first_path, &bytes).unwrap();
    // Last segment: entry 3 is cut.
    let (log, rec) = SegmentLog::open(tmp.path(), None).unwrap();
    assert!(rec.cut_bytes > 0);
    assert_eq!(log.next_index(), 3);
    // Damage in a segment that has a successor is refused.
    fs::write(&first_path, &bytes).unwrap();
    fs::write(tmp.path().join(segment_name(4)), b"").unwrap();
    drop(log);
    let err = SegmentLog::open(tmp.path(), None).err().unwrap();
    assert!(err.to_string().contains("not a torn write"), "{err}");
}

#[test]
fn truncate_removes_later_segments_and_shortens_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    let (log, _) = SegmentLog::open(tmp.path(), None).unwrap();
    // Big entries so that several segments exist.
    let big = |term, index| sized(term, index, 60_000);
    for i in 1..=400 {
        log.append([big(1, i)], &mut buf).unwrap();
    }
    log.sync().unwrap();
    let n = seg_files(tmp.path()).len();
    assert!(n >= 3, "{n} segments");
    log.truncate(150).unwrap();
    assert_eq!(log.next_index(), 150);
    assert_eq!(log.last_log_id().unwrap().index, 149);
    assert!(seg_files(tmp.path()).len() < n);
    log.append([big(2, 150), big(2, 151)], &mut buf).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, rec) = SegmentLog::open(tmp.path(), None).unwrap();
    assert_eq!(rec, Recovery::default());
    let all = log.read_range(140, None, usize::MAX).unwrap();
    assert_eq!(indexes(&all), (140..=151).collect::<Vec<_>>());
    assert_eq!(terms(&all)[9..], [1, 2, 2]);
    // An append starting inside the log replaces from there.
    log.append([entry(3, 100)], &mut buf).unwrap();
    assert_eq!(log.next_index(), 101);
    assert_eq!(log.read_range(99, None, 9).unwrap().len(), 2);
}

#[test]
fn purge_removes_whole_segments_and_open_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    let big = |index| sized(1, index, 60_000);
    let (log, _) = SegmentLog::open(tmp.path(), None).unwrap();
    for i in 1..=400 {
        log.append([big(i)], &mut buf).unwrap();
    }
    log.sync().unwrap();
    let before = seg_files(tmp.path());
    assert!(before.len() >= 3, "{before:?}");
    let removed = log.purge(300).unwrap();
    assert!(removed >= 2, "{removed}");
    let after = seg_files(tmp.path());
    let first_left = parse_name(&after[0]).unwrap();
    assert!(first_left <= 301, "{after:?}");
    assert_eq!(
        log.read_range(301, Some(301), 1).unwrap()[0].log_id.index,
        301
    );
    drop(log);
    // An interrupted purge: files wholly below the marker are removed.
    for name in &before {
        if !after.contains(name) {
            fs::write(tmp.path().join(name), b"stale").unwrap();
        }
    }
    let (log, rec) = SegmentLog::open(tmp.path(), Some(300)).unwrap();
    assert_eq!(rec.purged_segments, removed);
    assert_eq!(log.next_index(), 401);
    // Purging everything, then an append past the end starts anew.
    log.purge(500).unwrap();
    assert_eq!(log.last_log_id(), None);
    log.append([entry(1, 501)], &mut buf).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, _) = SegmentLog::open(tmp.path(), Some(500)).unwrap();
    assert_eq!(indexes(&log.read_range(0, None, 10).unwrap()), [501]);
}

/// A sync that finds nothing left to take, because a concurrent sync took
/// the files, returns only after that sync's fsyncs returned: every write
/// made before a sync is durable when it returns.
#[test]
fn a_sync_returns_only_after_a_concurrent_sync_made_earlier_writes_durable() {
    const TOOK: &str = "first sync took the files";
    const CALLED: &str = "second sync called";
    const SYNCED: &str = "first sync's fsyncs returned";
    const RETURNED: &str = "second sync returned";
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    let (mut log, _) = SegmentLog::open(tmp.path(), None).unwrap();
    log.append((1..=3).map(|i| entry(1, i)), &mut buf).unwrap();
    let seen = Arc::new((Mutex::new(Vec::<&str>::new()), Condvar::new()));
    let hook_seen = seen.clone();
    log.sync_hook = Some(Box::new(move |step| {
        let (events, cv) = &*hook_seen;
        let mut ev = events.lock().unwrap();
        match step {
            SyncStep::Taken(0) | SyncStep::Synced(0) => {}
            SyncStep::Taken(_) => {
                ev.push(TOOK);
                cv.notify_all();
                // The fsyncs wait for the second sync to be called, then
                // for it to return, for at most 300 ms: a second sync that
                // waits for these fsyncs never returns meanwhile, so with
                // the fix only the bound ends this wait.
                ev = cv.wait_while(ev, |ev| !ev.contains(&CALLED)).unwrap();
                let _ = cv
                    .wait_timeout_while(ev, Duration::from_millis(300), |ev| {
                        !ev.contains(&RETURNED)
                    })
                    .unwrap();
            }
            SyncStep::Synced(_) => ev.push(SYNCED),
        }
    }));
    let log = Arc::new(log);
    let first = {
        let log = log.clone();
        std::thread::spawn(move || log.sync())
    };
    let (events, cv) = &*seen;
    drop(cv.wait_while(events.lock().unwrap(), |ev| ev.is_empty()));
    let second = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let (events, cv) = &*seen;
            events.lock().unwrap().push(CALLED);
            cv.notify_all();
            let r = log.sync();
            events.lock().unwrap().push(RETURNED);
            cv.notify_all();
            r
        })
    };
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    assert_eq!(*events.lock().unwrap(), [TOOK, CALLED, SYNCED, RETURNED]);
}
