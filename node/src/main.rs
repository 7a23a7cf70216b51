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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
