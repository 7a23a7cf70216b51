//! `tandem-bench writes`: write throughput and latency of a local 3-node cluster
//! over HTTPS, and the nodes' peak memory.
//!
//! Every acknowledged write went through Raft: committed on a quorum whose
//! log stores flushed before acknowledging. Besides throughput and latency it
//! prints, per writer count, the CPU time each node and the client itself
//! spent per acknowledged write (from `/proc`), which other load on the
//! machine disturbs far less. Build with `--release` for meaningful figures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use tandem_node::demo::LocalCluster;

use crate::proc_stats::{cpu_time, peak_rss_kib, rss_kib};

/// Options of `tandem-bench writes`.
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
    #[arg(long, default_value_t = tandem_node::config::Tuning::default().cache_mb,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_mb: u64,
    /// Log entries between snapshots on each node (`init --snapshot-every`).
    #[arg(long, default_value_t = tandem_node::config::Tuning::default().snapshot_every)]
    pub snapshot_every: u64,
}

/// Idle time before the resident set size is read after the load.
const SETTLE_BEFORE_RSS: Duration = Duration::from_secs(5);

/// CPU time used so far by each node and by this process: nodes in cluster
/// order, then the benchmark client.
fn cpu_times(cluster: &LocalCluster) -> Vec<Duration> {
    let mut out: Vec<Duration> = cluster
        .nodes
        .iter()
        .map(|n| n.child.id().and_then(cpu_time).unwrap_or_default())
        .collect();
    out.push(cpu_time(std::process::id()).unwrap_or_default());
    out
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
    let every = args.snapshot_every.to_string();
    let flags = ["--cache-mb", &cache, "--snapshot-every", &every];
    let mut cluster = LocalCluster::start(&super::tandem_beside_me()?, &root, &flags).await?;
    let result = measure(&cluster, &args).await;
    cluster.stop().await;
    result
}

/// Where the benchmark's connections go: the leader's API, trusted through
/// the cluster CA, with the admin token.
struct Target {
    addr: SocketAddr,
    tls: TlsConnector,
    host: HeaderValue,
    auth: HeaderValue,
}

async fn leader_target(cluster: &LocalCluster) -> anyhow::Result<Arc<Target>> {
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
    let host = api.trim_start_matches("https://").trim_end_matches('/');
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("leader API address {api:?} is not ip:port"))?;
    let ca = std::fs::read_to_string(&cluster.ca_file)?;
    Ok(Arc::new(Target {
        addr,
        tls: TlsConnector::from(tandem_certs::admin_client_config(&ca)?),
        host: HeaderValue::from_str(host)?,
        auth: HeaderValue::from_str(&format!("Bearer {}", cluster.token))?,
    }))
}

/// One benchmark task's own HTTPS connection to the leader: TLS over a
/// TCP connection and HTTP/1.1 straight on hyper. The load generator shares
/// this machine's two cores with the three nodes; going around the admin
/// client (reqwest: URL parsing, a connection pool, redirects) cut its CPU
/// per write (`docs/performance.md`, "Writes and CPU per write").
struct BenchConn {
    send: SendRequest<Full<Bytes>>,
    target: Arc<Target>,
}

impl BenchConn {
    async fn connect(target: &Arc<Target>) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(target.addr.ip().into());
        let tls = target.tls.connect(name, tcp).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        // Ends when `send` is dropped or the server closes the connection.
        tokio::spawn(conn);
        Ok(Self {
            send,
            target: Arc::clone(target),
        })
    }

    /// Sends one request with a JSON body; Ok when the answer is a 2xx.
    async fn send(&mut self, method: Method, path: &str, body: Bytes) -> anyhow::Result<()> {
        self.send.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.target.host.clone())
            .header(AUTHORIZATION, self.target.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        anyhow::ensure!(status.is_success(), "answered {status}");
        Ok(())
    }
}

/// Sends one request on `conn`, connecting first when there is no
/// connection or the last one was closed.
async fn send_on(
    conn: &mut Option<BenchConn>,
    target: &Arc<Target>,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<()> {
    if conn.as_ref().is_none_or(|c| c.send.is_closed()) {
        *conn = Some(BenchConn::connect(target).await?);
    }
    let c = conn.as_mut().context("connected above")?;
    c.send(method, path, body).await
}

async fn measure(cluster: &LocalCluster, args: &BenchArgs) -> anyhow::Result<()> {
    let target = leader_target(cluster).await?;
    let body = Bytes::from(serde_json::to_vec(&json!({ "value": "x".repeat(256) }))?);
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>7}  CPU µs per write ({}, client)",
        "writers",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        names.join(", ")
    );
    for &n in &args.writers {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut handles = Vec::new();
        for w in 0..n {
            let target = Arc::clone(&target);
            let body = body.clone();
            handles.push(tokio::spawn(async move {
                // 1 µs .. 60 s, 3 significant digits: constants that are valid.
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .expect("valid histogram bounds");
                let mut errors = 0u64;
                let mut k = 0u64;
                let mut conn = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let path = format!("/api/v1/config/bench-{n}-{w}-{k}");
                    let r = send_on(&mut conn, &target, Method::PUT, &path, body.clone()).await;
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
        let cpu_before = cpu_times(cluster);
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
        let writes = all.len().max(1) as f64;
        let per_write: Vec<f64> = cpu_times(cluster)
            .iter()
            .zip(&cpu_before)
            .map(|(after, before)| after.saturating_sub(*before).as_micros() as f64 / writes)
            .collect();
        let total: f64 = per_write.iter().sum();
        let parts: Vec<String> = per_write.iter().map(|us| format!("{us:.0}")).collect();
        println!(
            "{:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}  {:.0} ({})",
            n,
            all.len() as f64 / secs,
            all.value_at_quantile(0.5) as f64 / 1000.0,
            all.value_at_quantile(0.99) as f64 / 1000.0,
            all.max() as f64 / 1000.0,
            errors,
            total,
            parts.join(", ")
        );
    }
    if args.sessions > 0 {
        let started = Instant::now();
        let per = args.sessions.div_ceil(64);
        let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut handles = Vec::new();
        let body = Bytes::from(serde_json::to_vec(&json!({
            "owner": "bench",
            "data": { "ip": "192.0.2.1", "agent": "bench" },
            "ttl_secs": 86400,
        }))?);
        for _ in 0..64 {
            let target = Arc::clone(&target);
            let body = body.clone();
            let total = total.clone();
            let failed = failed.clone();
            handles.push(tokio::spawn(async move {
                let mut conn = None;
                for _ in 0..per {
                    if total.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= per * 64 {
                        break;
                    }
                    let r = send_on(
                        &mut conn,
                        &target,
                        Method::POST,
                        "/api/v1/sessions",
                        body.clone(),
                    )
                    .await;
                    if r.is_err() {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for h in handles {
            h.await?;
        }
        let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "stored {} sessions in {:.1} s ({failed} failed)",
            args.sessions.saturating_sub(failed),
            started.elapsed().as_secs_f64()
        );
    }
    // Peak RSS includes the transient buffers of the load; what a node
    // keeps resident while holding the data shows a few seconds later.
    tokio::time::sleep(SETTLE_BEFORE_RSS).await;
    let mib = |k: Option<u64>| {
        k.map_or("unknown".to_string(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    for n in &cluster.nodes {
        let pid = n.child.id();
        println!(
            "node {:<2} peak RSS {}, RSS {} s after the load {}",
            n.name,
            mib(pid.and_then(peak_rss_kib)),
            SETTLE_BEFORE_RSS.as_secs(),
            mib(pid.and_then(rss_kib)),
        );
    }
    Ok(())
}
