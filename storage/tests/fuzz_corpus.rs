//! The storage fuzz targets' corpora as regression tests on stable: every
//! file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes
//! through the entry point its target calls (`tandem_storage::fuzzing`),
//! under the same allocation limit, and must come back (a value or a clean
//! error) without a panic. The seeds run too, and must decode.
//!
//! `cargo test -p tandem-storage --test fuzz_corpus -- --ignored` writes the
//! seeds into `fuzz/seeds/` (`fuzz/run` does it first).

use std::panic::AssertUnwindSafe;

use tandem_storage::fuzzing::{self, LimitAlloc, DECODE_ALLOC_LIMIT};

// An allocation above the decoder limit aborts the test binary, as it makes
// the fuzz target crash.
#[global_allocator]
static ALLOC: LimitAlloc = LimitAlloc::new(DECODE_ALLOC_LIMIT);

const TARGETS: [&str; 3] = ["codec", "snapshot_reader", "segment_record"];

/// Feeds every corpus file of `target` to `run`, naming the file whose
/// input panics.
fn replay(target: &str, run: impl Fn(&[u8])) {
    let files = fuzzing::corpus_files(target).expect("the corpus directories read");
    for path in &files {
        let bytes = std::fs::read(path).expect("a corpus file reads");
        // Nothing is used after a panic: the test fails with the file name.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&bytes)));
        assert!(outcome.is_ok(), "{} panicked the decoder", path.display());
    }
    assert!(!files.is_empty(), "no corpus for {target} in fuzz/corpus");
}

#[test]
fn codec_corpus() {
    replay("codec", |b| {
        let _ = fuzzing::codec(b);
    });
    for (name, seed) in fuzzing::seeds("codec") {
        assert!(fuzzing::codec(&seed), "seed {name} does not decode");
    }
}

#[test]
fn snapshot_reader_corpus() {
    replay("snapshot_reader", |b| {
        let _ = fuzzing::snapshot_reader(b);
    });
    for (name, seed) in fuzzing::seeds("snapshot_reader") {
        fuzzing::snapshot_reader(&seed).unwrap_or_else(|e| panic!("seed {name}: {e}"));
    }
}

#[test]
fn segment_record_corpus() {
    replay("segment_record", |b| {
        let _ = fuzzing::segment_records(b);
    });
    for (name, seed) in fuzzing::seeds("segment_record") {
        let (read, _) = fuzzing::segment_records(&seed);
        assert!(read > 0, "seed {name} holds no readable record");
    }
}

#[test]
#[ignore = "writes the seeds into fuzz/seeds (run by fuzz/run)"]
fn write_seed_files() {
    for target in TARGETS {
        fuzzing::write_seeds(target, &fuzzing::seeds(target)).expect("seeds written");
    }
}
