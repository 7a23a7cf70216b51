//! The `tandem` binary: parse the command line, install logging, run.

use std::process::ExitCode;

use clap::Parser;
use tandem_node::cli::{execute, Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// The `mimalloc` feature: mimalloc instead of glibc malloc, ~15–20 % less
/// CPU per write but ~35 MiB more resident per node with 100,000 sessions
/// (README, "Writes").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// glibc malloc with one arena: with its default of 8 arenas per core the
/// threads' arenas fragment and together held ~25 MiB more per node with
/// 100,000 sessions stored (README, "Memory"). glibc's own
/// `MALLOC_ARENA_MAX`, when set, is left to decide. Called first thing in
/// `main`, before any other thread exists.
#[cfg(not(feature = "mimalloc"))]
fn configure_allocator() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a malloc parameter; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(feature = "mimalloc")]
fn configure_allocator() {}

/// How long an idle blocking-pool thread lives (see `main`).
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn main() -> ExitCode {
    configure_allocator();
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
    // default: thread churn fragments the heap. With mimalloc an exited
    // thread's pages stay "abandoned" (~350 of its 64 KiB pages on a
    // follower after storing 100,000 sessions), pinned by the sled nodes
    // still alive in them: about 10 MiB more per node (README, "Memory").
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
