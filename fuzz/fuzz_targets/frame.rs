//! Peer frames: `tandem_node::fuzzing::frames` (decode_frame and read_frame).
//!
//! Every allocation is checked against `tandem_storage::fuzzing::DECODE_ALLOC_LIMIT` by the global allocator
//! (`LimitAlloc` aborts above it, and libFuzzer keeps the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_storage::fuzzing::LimitAlloc;

#[global_allocator]
static ALLOC: LimitAlloc = LimitAlloc::new(tandem_storage::fuzzing::DECODE_ALLOC_LIMIT);

fuzz_target!(|data: &[u8]| {
    let _ = tandem_node::fuzzing::frames(data);
});
