//! `tandem bench`: write throughput and latency of a local 3-node cluster
//! over HTTPS, and the nodes' peak memory.
//!
//! Every acknowledged write went through Raft: committed on a quorum whose
//! log stores flushed before acknowledging. Build with `--release` for
//! meaningful figures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::json;

use crate::demo::LocalCluster;

/// Options of `tandem bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent writer counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub writers: Vec<usize>,
    /// Seconds per writer count.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Sessions to store before reading memory (0: skip).
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Directory for the cluster (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// sled page cache of each node, in MiB.
    #[arg(long, default_value_t = crate::config::Tuning::default().cache_mb)]
    pub cache_mb: u64,
}

/// Peak resident set size of a process, from /proc (Linux).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// If the cluster cannot be started.
pub async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("tandem-bench-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("starting a local 3-node cluster in {} ...", root.display());
    let cache = args.cache_mb.to_string();
    let mut cluster = LocalCluster::start(&root, &["--cache-mb", &cache]).await?;
    let result = measure(&cluster, &args).await;
    cluster.stop().await;
    result
}

async fn leader_client(cluster: &LocalCluster) -> anyhow::Result<crate::client::ApiClient> {
    let c = cluster.client(0)?;
    let v: serde_json::Value = c.get("/api/v1/cluster").await?;
    let leader = v
        .get("leader")
        .and_then(|l| l.as_u64())
        .context("no leader")?;
    let members = v
        .get("members")
        .and_then(|m| m.as_array())
        .context("no members")?;
    let api = members
        .iter()
        .find(|m| m.get("id").and_then(|i| i.as_u64()) == Some(leader))
        .and_then(|m| m.get("api_addr").and_then(|a| a.as_str()))
        .context("leader not in members")?;
    Ok(c.with_base(api))
}

async fn measure(cluster: &LocalCluster, args: &BenchArgs) -> anyhow::Result<()> {
    let client = leader_client(cluster).await?;
    let value = "x".repeat(256);
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "writers", "writes/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for &n in &args.writers {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut handles = Vec::new();
        for w in 0..n {
            let client = client.clone();
            let value = value.clone();
            handles.push(tokio::spawn(async move {
                // 1 µs .. 60 s, 3 significant digits: constants that are valid.
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .expect("valid histogram bounds");
                let mut errors = 0u64;
                let mut k = 0u64;
                while Instant::now() < deadline {
                    let body = json!({ "value": value });
                    let t = Instant::now();
                    let r = client
                        .call::<_, serde_json::Value>(
                            Method::PUT,
                            &format!("/api/v1/config/bench-{n}-{w}-{k}"),
                            Some(&body),
                        )
                        .await;
                    match r {
                        Ok(_) => {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                    k += 1;
                }
                (h, errors)
            }));
        }
        let started = Instant::now();
        // Same bounds as above.
        let mut all =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        let mut errors = 0;
        for h in handles {
            let (hist, e) = h.await?;
            all.add(&hist)?;
            errors += e;
        }
        let secs = started.elapsed().as_secs_f64().max(args.seconds as f64);
        println!(
            "{:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            n,
            all.len() as f64 / secs,
            all.value_at_quantile(0.5) as f64 / 1000.0,
            all.value_at_quantile(0.99) as f64 / 1000.0,
            all.max() as f64 / 1000.0,
            errors
        );
    }
    if args.sessions > 0 {
        let started = Instant::now();
        let per = args.sessions.div_ceil(64);
        let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..64 {
            let client = client.clone();
            let total = total.clone();
            handles.push(tokio::spawn(async move {
                for _ in 0..per {
                    if total.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= per * 64 {
                        break;
                    }
                    let body = json!({ "owner": "bench", "data": { "ip": "192.0.2.1", "agent": "bench" }, "ttl_secs": 86400 });
                    let _ = client
                        .call::<_, serde_json::Value>(Method::POST, "/api/v1/sessions", Some(&body))
                        .await;
                }
            }));
        }
        for h in handles {
            h.await?;
        }
        println!(
            "stored {} sessions in {:.1} s",
            args.sessions,
            started.elapsed().as_secs_f64()
        );
    }
    for n in &cluster.nodes {
        let rss = n.child.id().and_then(peak_rss_kib);
        println!(
            "node {:<2} peak RSS {}",
            n.name,
            rss.map_or("unknown".to_string(), |k| format!(
                "{:.1} MiB",
                k as f64 / 1024.0
            ))
        );
    }
    Ok(())
}
