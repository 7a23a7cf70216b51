//! The `tandem` binary: parse the command line, install logging, run.

use std::process::ExitCode;

use clap::Parser;
use tandem_node::cli::{execute, Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc malloc: less CPU per write and less memory
/// held in per-thread arenas (see README, "Writes"). The `system-allocator`
/// feature keeps glibc's, for heap profilers that hook malloc (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long an idle blocking-pool thread lives (see `main`).
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sled=warn,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    // Blocking-pool threads (sled flushes, applies of large batches,
    // snapshot files) are kept instead of exiting after tokio's 10 s idle
    // default: mimalloc keeps the pages an exited thread allocated from as
    // "abandoned" (~350 of its 64 KiB pages on a follower after storing
    // 100,000 sessions), pinned by the sled nodes still alive in them; about
    // 10 MiB less resident per node in that benchmark (see README, "Memory").
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tandem: {:#}", f.error);
            // Exit codes are small constants (1..=4); the cast cannot truncate.
            ExitCode::from(f.code as u8)
        }
    }
}
