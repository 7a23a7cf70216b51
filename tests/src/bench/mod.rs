//! The benchmarks behind `tandem-bench` (`src/bin/tandem-bench.rs`): they
//! start real `tandem` processes on loopback (`tandem_node::demo::LocalCluster`)
//! and print figures; nothing here is part of the daemon.
//!
//! - [`writes`]: write throughput, latency, CPU per write and memory.
//! - [`failover`]: planned-swap write gap, kill -9 to the first write.
//! - [`checks`]: a failing service to the backup serving.

pub mod checks;
pub mod failover;
pub mod writes;

use std::path::PathBuf;

use anyhow::Context;

/// The `tandem` binary the benchmarks start: `TANDEM_BIN`, or the one built
/// beside `tandem-bench` (`target/release/tandem` for
/// `target/release/tandem-bench`).
///
/// # Errors
/// When neither exists.
pub fn tandem_beside_me() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TANDEM_BIN") {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.is_file(), "TANDEM_BIN={} is not a file", p.display());
        return Ok(p);
    }
    let me = std::env::current_exe().context("locating tandem-bench")?;
    let p = me
        .parent()
        .map(|d| d.join("tandem"))
        .context("tandem-bench has no directory")?;
    anyhow::ensure!(
        p.is_file(),
        "no tandem binary at {}: build it with `cargo build --release -p tandem-node` \
         (or set TANDEM_BIN)",
        p.display()
    );
    Ok(p)
}
