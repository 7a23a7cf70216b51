//! The node fuzz targets' corpora as regression tests on stable: every file
//! of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through
//! the entry point its target calls (`tandem_node::fuzzing`), under the
//! decoders' allocation limit, and must come back (a value or a clean
//! error) without a panic. The seeds run too, and must decode.
//!
//! `cargo test -p tandem-node --test fuzz_corpus -- --ignored` writes the
//! seeds into `fuzz/seeds/` (`fuzz/run` does it first).

use std::panic::AssertUnwindSafe;

use tandem_node::fuzzing;
use tandem_storage::fuzzing::{corpus_files, write_seeds, LimitAlloc, DECODE_ALLOC_LIMIT};

// An allocation above the decoder limit aborts the test binary, as it makes
// the fuzz target crash. (The join token target's own limit is lower; its
// inputs here are corpus files of a few bytes.)
#[global_allocator]
static ALLOC: LimitAlloc = LimitAlloc::new(DECODE_ALLOC_LIMIT);

const TARGETS: [&str; 3] = ["frame", "peer_protocol", "join_token"];

/// Feeds every corpus file of `target` to `run`, naming the file whose
/// input panics.
fn replay(target: &str, run: impl Fn(&[u8])) {
    let files = corpus_files(target).expect("the corpus directories read");
    for path in &files {
        let bytes = std::fs::read(path).expect("a corpus file reads");
        // Nothing is used after a panic: the test fails with the file name.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&bytes)));
        assert!(outcome.is_ok(), "{} panicked the decoder", path.display());
    }
    assert!(!files.is_empty(), "no corpus for {target} in fuzz/corpus");
}

#[test]
fn frame_corpus() {
    replay("frame", |b| {
        let _ = fuzzing::frames(b);
    });
    for (name, seed) in fuzzing::seeds("frame") {
        assert!(fuzzing::frames(&seed) > 0, "seed {name} holds no frame");
    }
}

#[test]
fn peer_protocol_corpus() {
    replay("peer_protocol", |b| {
        let _ = fuzzing::peer_protocol(b);
    });
    for (name, seed) in fuzzing::seeds("peer_protocol") {
        assert!(
            fuzzing::peer_protocol(&seed) > 0,
            "seed {name} decodes as nothing"
        );
    }
}

#[test]
fn join_token_corpus() {
    replay("join_token", |b| {
        let _ = fuzzing::join_token(b);
    });
    let seeds = fuzzing::seeds("join_token");
    assert!(seeds[..2].iter().all(|(_, s)| fuzzing::join_token(s)));
}

#[test]
#[ignore = "writes the seeds into fuzz/seeds (run by fuzz/run)"]
fn write_seed_files() {
    for target in TARGETS {
        write_seeds(target, &fuzzing::seeds(target)).expect("seeds written");
    }
}
