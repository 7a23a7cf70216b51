//! The `tandem` binary: parse the command line, install logging, run.

use std::process::ExitCode;

use clap::Parser;
use tandem_node::cli::{execute, Cli, LogFormat};
use tandem_node::log_limit::OpenraftWarnLimit;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The default allocator: jemalloc, configured by [`MALLOC_CONF`]. Against
/// glibc malloc with one arena it cut a node's CPU per write by about a
/// fifth at 64 writers and held less memory once 100,000 sessions were
/// stored (`docs/performance.md`, "Writes and CPU per write" and "Memory").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads at its first allocation; the
/// `_RJEM_MALLOC_CONF` environment variable, when set, overrides them.
/// - `narenas:1`: one arena. The default (four per core) spreads a node's
///   ~14 threads over arenas that each keep freed memory.
/// - `tcache_max:1024`, `lg_tcache_nslots_mul:-2`: small per-thread caches
///   (sizes up to 1 KiB, a quarter of the default slots), which each of
///   those threads would otherwise fill.
/// - `background_thread:true`, `dirty_decay_ms:100`, `muzzy_decay_ms:0`:
///   a jemalloc thread gives freed pages back to the kernel about 100 ms
///   after they are freed, off the request path (with a decay of 0 every
///   free returns pages itself, which cost a quarter of the write rate).
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 109] = b"narenas:1,tcache_max:1024,lg_tcache_nslots_mul:-2,\
background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0\0";

/// Without the `jemalloc` feature: glibc malloc with one arena. With its
/// default of 8 arenas per core the threads' arenas fragment and together
/// held ~25 MiB more per node with 100,000 sessions stored
/// (`docs/performance.md`, "Memory"). glibc's own `MALLOC_ARENA_MAX`, when set, is left to decide.
/// Called first thing in `main`, before any other thread exists. This
/// build suits heap profilers that hook malloc (heaptrack).
#[cfg(not(feature = "jemalloc"))]
fn configure_allocator() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a malloc parameter; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(feature = "jemalloc")]
fn configure_allocator() {}

/// How long an idle blocking-pool thread lives (see `main`).
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Raises the soft limit of open files to the hard one (at most 65,536):
/// the admin listener keeps up to 4,096 connections, and Raft's log,
/// sled and the peer links must never run out of descriptors because of
/// them.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = lim.rlim_max.min(65_536);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    configure_allocator();
    // Everything Tandem writes (log segments, snapshots, sled's files, the
    // diverged export, keys) is for its own user only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    raise_open_files_limit();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sled=warn,openraft=warn"))
        // openraft warns per failed RPC: against a dead peer, a line per
        // attempt. Its call sites get one line per 30 s (`log_limit`).
        .and(OpenraftWarnLimit::default());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter))
            .init(),
        LogFormat::Human => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .init(),
    }
    // Blocking-pool threads (sled flushes, applies of large batches,
    // snapshot files) are kept instead of exiting after tokio's 10 s idle
    // default: thread churn fragments the heap. Measured with mimalloc, an
    // earlier allocator: an exited thread's pages stayed "abandoned", pinned
    // by the sled nodes still alive in them, about 10 MiB more per node.
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
