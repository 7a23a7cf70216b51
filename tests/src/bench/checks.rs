//! `tandem-bench checks`: how long from a service failing to the backup
//! serving, on a local pair + witness whose appliances each check their own
//! HTTP service (`service::TestService`) with an `http` check.
//!
//! Per trial the primary's service starts answering 503. *fall reached*: the
//! moment the service answered the `fall`-th failure in a row (the check
//! can fail no earlier). *Backup serves*: the first write the other
//! appliance acknowledges (on loopback there are no shared IPs to probe; the
//! addresses follow the role, see the shared-IP benchmarks). Printed: fall
//! reached → backup serves (the part Tandem adds), and service down →
//! backup serves (with the check's own interval × fall).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use tandem_node::demo::LocalCluster;

use crate::service::{Mode, TestService};

/// Options of `tandem-bench checks`.
#[derive(Debug, Args)]
pub struct ChecksBenchArgs {
    /// Trials.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// The check's interval (ms); the default is a check's default.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// The check's timeout (ms).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Failures in a row before the check fails.
    #[arg(long, default_value_t = 3)]
    pub fall: u32,
    /// Successes in a row before it is healthy again.
    #[arg(long, default_value_t = 2)]
    pub rise: u32,
    /// Directory for the cluster (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// If the cluster cannot be started or a trial cannot complete.
pub async fn run(args: ChecksBenchArgs) -> anyhow::Result<()> {
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("tandem-bench-checks-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut cluster = LocalCluster::start(&super::tandem_beside_me()?, &root, &[]).await?;
    let result = measure(&cluster, &args).await;
    cluster.stop().await;
    let (tandem, total) = result?;
    println!(
        "check interval {} ms, fall {}, rise {}: {} trials",
        args.interval_ms,
        args.fall,
        args.rise,
        tandem.len()
    );
    println!(
        "{:>34} {:>9} {:>9} {:>9}",
        "measurement", "min ms", "p50 ms", "max ms"
    );
    for (name, v) in [
        ("fall reached -> backup serves", tandem),
        ("service down -> backup serves", total),
    ] {
        let (min, p50, max) = super::failover::summary(v);
        println!("{name:>34} {min:>9.0} {p50:>9.0} {max:>9.0}");
    }
    Ok(())
}

async fn measure(
    cluster: &LocalCluster,
    args: &ChecksBenchArgs,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    // Appliances are nodes 0 and 1; 2 is the witness.
    let services = [TestService::start().await, TestService::start().await];
    let clients = [cluster.client(0)?, cluster.client(1)?];
    let first = super::failover::wait_primary(cluster, Duration::from_secs(30)).await?;
    let settings: Value = clients[first].get("/api/v1/settings").await?;
    let mut body = settings.clone();
    let obj = body.as_object_mut().context("settings are an object")?;
    for k in ["version", "updated_by", "updated_at_ms"] {
        obj.remove(k);
    }
    obj.insert(
        "checks".into(),
        json!([{
            "name": "service", "kind": "http",
            "targets": { cluster.nodes[0].name.clone(): services[0].url,
                         cluster.nodes[1].name.clone(): services[1].url },
            "interval_ms": args.interval_ms, "timeout_ms": args.timeout_ms,
            "rise": args.rise, "fall": args.fall
        }]),
    );
    // Every trial moves the role once: no hold-down between trials.
    obj.insert("check_hold_down_secs".into(), json!(0));
    clients[first]
        .call::<_, Value>(Method::PUT, "/api/v1/settings", Some(&body))
        .await
        .context("configuring the check")?;
    let settle = Duration::from_millis(args.interval_ms * u64::from(args.rise + 2) + 5_000);
    let (mut tandem, mut total) = (Vec::new(), Vec::new());
    for trial in 0..args.trials {
        let p = super::failover::wait_primary(cluster, Duration::from_secs(30)).await?;
        let other = 1 - p;
        for i in [p, other] {
            wait_healthy(&clients[i], settle).await?;
        }
        let down = Instant::now();
        services[p].set(Mode::Down);
        let deadline = down + settle * 3;
        let mut k = 0u64;
        let served = loop {
            k += 1;
            let r = clients[other]
                .call::<_, Value>(
                    Method::PUT,
                    &format!("/api/v1/config/bench-check-{trial}-{k}"),
                    Some(&json!({ "value": k })),
                )
                .await;
            if r.is_ok() {
                break Instant::now();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the backup served nothing within {:?}",
                settle * 3
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        services[p].set(Mode::Up);
        let failures = services[p].failures_since(down);
        let fall_at = failures
            .get(args.fall as usize - 1)
            .copied()
            .context("fewer failures answered than fall")?;
        tandem.push(served.saturating_duration_since(fall_at).as_secs_f64() * 1000.0);
        total.push(served.duration_since(down).as_secs_f64() * 1000.0);
    }
    Ok((tandem, total))
}

/// Waits until the node `c` talks to says its checks are healthy.
async fn wait_healthy(c: &tandem_node::client::ApiClient, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(h) = c.get::<Value>("/health").await {
            let healthy = h["checks"]
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(|c| c["state"] == "healthy"));
            if healthy {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "checks not healthy within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
