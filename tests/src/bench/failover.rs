//! `tandem-bench failover`: how long writes are unavailable during a planned
//! swap, and how long from kill -9 of the primary to the first write the new
//! primary accepts, on a local pair + witness.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use tandem_node::client::ApiClient;
use tandem_node::demo::LocalCluster;

/// Options of `tandem-bench failover`.
#[derive(Debug, Args)]
pub struct FailoverBenchArgs {
    /// Trials per measurement.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Primary timeouts to measure with, in ms, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,300")]
    pub timeouts: Vec<u64>,
    /// Directory for the clusters (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Percentile summary of durations in ms.
pub(crate) fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let p50 = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    (
        v.first().copied().unwrap_or(f64::NAN),
        p50,
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// If a cluster cannot be started or a trial cannot complete.
pub async fn run(args: FailoverBenchArgs) -> anyhow::Result<()> {
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("tandem-bench-failover-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!(
        "{:>10} {:>26} {:>7} {:>9} {:>9} {:>9}",
        "timeout", "measurement", "trials", "min ms", "p50 ms", "max ms"
    );
    for &t in &args.timeouts {
        let dir = root.join(format!("t{t}"));
        let ms = t.to_string();
        let mut cluster = LocalCluster::start(
            &super::tandem_beside_me()?,
            &dir,
            &["--primary-timeout-ms", &ms],
        )
        .await?;
        let result = measure(&mut cluster, t, args.trials).await;
        cluster.stop().await;
        let (swaps, kills) = result?;
        for (name, v) in [("swap write gap", swaps), ("kill -9 to first write", kills)] {
            let n = v.len();
            let (min, p50, max) = summary(v);
            println!("{t:>8}ms {name:>26} {n:>7} {min:>9.0} {p50:>9.0} {max:>9.0}");
        }
    }
    Ok(())
}

async fn primary_index(cluster: &LocalCluster) -> Option<usize> {
    for (i, _) in cluster.nodes.iter().enumerate() {
        let Ok(c) = cluster.client(i) else { continue };
        if let Ok(v) = c.get::<Value>("/health/primary").await {
            if v.get("ok").and_then(Value::as_bool) == Some(true) {
                return Some(i);
            }
        }
    }
    None
}

pub(crate) async fn wait_primary(cluster: &LocalCluster, limit: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(i) = primary_index(cluster).await {
            return Ok(i);
        }
        if Instant::now() > deadline {
            anyhow::bail!("no primary within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes continuously to whichever appliance accepts, recording the time of
/// every acknowledged write.
fn spawn_writer(
    clients: Vec<ApiClient>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Instant>> {
    tokio::spawn(async move {
        let mut acks = Vec::new();
        let mut k = 0u64;
        let mut target = 0usize;
        while !stop.load(Ordering::SeqCst) {
            k += 1;
            let body = json!({ "value": k });
            let r = clients[target]
                .call::<_, Value>(
                    Method::PUT,
                    &format!("/api/v1/config/bench-swap-{k}"),
                    Some(&body),
                )
                .await;
            match r {
                Ok(_) => acks.push(Instant::now()),
                Err(_) => {
                    target = (target + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        acks
    })
}

async fn measure(
    cluster: &mut LocalCluster,
    timeout_ms: u64,
    trials: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    // Appliances are nodes 0 (a) and 1 (b); 2 is the witness.
    let appliances = vec![cluster.client(0)?, cluster.client(1)?];
    let mut swaps = Vec::new();
    for _ in 0..trials {
        let p = wait_primary(cluster, Duration::from_secs(10)).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(appliances.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = Instant::now();
        cluster
            .client(p)?
            .call::<_, Value>(Method::POST, "/api/v1/relationship/swap", Some(&json!({})))
            .await
            .context("planned swap")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let acks = writer.await?;
        // The gap: the longest time without an acknowledged write around the swap.
        let gap = acks
            .windows(2)
            .filter(|w| w[1] >= asked)
            .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        swaps.push(gap);
    }
    let mut kills = Vec::new();
    for _ in 0..trials {
        let p = wait_primary(cluster, Duration::from_secs(10)).await?;
        let other = if p == 0 { 1 } else { 0 };
        let other_client = cluster.client(other)?;
        // A write acknowledged by the primary first, so the cluster is settled.
        let primary_client = cluster.client(p)?;
        let settle = Instant::now() + Duration::from_secs(10);
        while primary_client
            .call::<_, Value>(
                Method::PUT,
                "/api/v1/config/bench-kill-warm",
                Some(&json!({ "value": 0 })),
            )
            .await
            .is_err()
        {
            anyhow::ensure!(
                Instant::now() < settle,
                "the primary accepted no write within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.kill9(p).await;
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(30);
        let mut k = 0u64;
        let elapsed = loop {
            k += 1;
            let r = other_client
                .call::<_, Value>(
                    Method::PUT,
                    &format!("/api/v1/config/bench-kill-{k}"),
                    Some(&json!({ "value": k })),
                )
                .await;
            if r.is_ok() {
                break killed.elapsed();
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "no write accepted within 30 s of the kill (timeout {timeout_ms} ms)"
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        kills.push(elapsed.as_secs_f64() * 1000.0);
        cluster.restart(p)?;
        // Wait until the restarted node answers and is in contact again.
        let c = cluster.client(p)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = c.get::<Value>("/health/backup").await {
                if v.get("ok").and_then(Value::as_bool) == Some(true) {
                    break;
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("restarted node did not become a caught-up backup within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((swaps, kills))
}
