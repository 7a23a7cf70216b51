//! `tandem-bench`: the benchmarks, a binary of their own so the daemon
//! carries none of their code. It starts the real `tandem` built beside it
//! (or `TANDEM_BIN`).
//!
//! ```text
//! cargo build --release -p tandem-node -p tandem-tests
//! target/release/tandem-bench writes --writers 1,16,64,256 --seconds 5
//! target/release/tandem-bench failover --trials 20 --timeouts 1000,300
//! target/release/tandem-bench checks --trials 10
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_tests::bench::{checks, failover, writes};

/// Benchmarks of a local Tandem cluster (release builds give meaningful figures).
#[derive(Debug, Parser)]
#[command(name = "tandem-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write throughput and latency on a local 3-node cluster.
    Writes(writes::BenchArgs),
    /// The write gap of planned swaps and the time from kill -9 of the
    /// primary to the first accepted write, on a local pair + witness.
    Failover(failover::FailoverBenchArgs),
    /// The time from a failing service (an http check) to the backup
    /// serving, on a local pair + witness.
    Checks(checks::ChecksBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = runtime.block_on(async {
        match cli.command {
            Command::Writes(a) => writes::run_bench(a).await,
            Command::Failover(a) => failover::run(a).await,
            Command::Checks(a) => checks::run(a).await,
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
