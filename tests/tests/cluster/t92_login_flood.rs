//! A login flood does not cost the primary its role: 500 concurrent wrong
//! logins from 100 addresses (loopback 127.0.1.x) while a writer runs and a
//! busy loop takes one of the machine's cores. Argon2 checks run one at a
//! time behind a short queue (the rest are answered 503 or 429 at once), so
//! the lease and the writes keep their time: no election, no failed write,
//! no stalled write, memory bounded.
use super::*;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const SOURCES: u8 = 100;
const PER_SOURCE: usize = 5;
const USER: &str = "ops";

/// A busy loop on its own thread until `stop` (one core taken).
fn cpu_hog(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        // Bounded by the flag and by count (about a minute at most).
        while !stop.load(Ordering::Relaxed) && n < 1 << 40 {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        n
    })
}

/// One wrong login at `url` from source address `from`; the answer's status.
async fn bad_login(url: String, ca_pem: String, from: IpAddr) -> Option<u16> {
    let tls = tandem_certs::admin_client_config(&ca_pem).expect("client config");
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .ok()?;
    let r = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("user={USER}&password=not+the+password+at+all"))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_with_a_busy_core_costs_no_election_and_no_write() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let p = r.primary;
    let resp = c
        .req(p, Method::POST, "/api/v1/users")
        .json(&json!({ "name": USER, "password": "the right password" }))
        .send()
        .await
        .expect("POST /api/v1/users");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let term = c.health(p).await.expect("health").term;
    let pid = c.nodes[p].pid().expect("the primary runs");
    let rss_before = tandem_tests::proc_stats::rss_kib(pid).unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let hog = cpu_hog(stop.clone());
    let flood_done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (http, url, token, done) = (
            c.http.clone(),
            c.url(p, "/api/v1/config/flood/"),
            c.admin_token.clone(),
            flood_done.clone(),
        );
        async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut failed = 0u64;
            let start = Instant::now();
            // Bounded: until the flood ends, 20,000 writes or 90 s.
            for n in 0..20_000u64 {
                if done.load(Ordering::SeqCst) || start.elapsed() > Duration::from_secs(90) {
                    break;
                }
                let t = Instant::now();
                let r = http
                    .put(format!("{url}{n}"))
                    .bearer_auth(&token)
                    .json(&json!({ "value": n }))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == StatusCode::OK => {
                        hist.record(t.elapsed().as_micros() as u64).expect("record");
                    }
                    other => {
                        if failed < 5 {
                            eprintln!("t92: write {n} failed: {other:?}");
                        }
                        failed += 1;
                    }
                }
            }
            (hist, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut logins = tokio::task::JoinSet::new();
    for s in 0..SOURCES {
        for _ in 0..PER_SOURCE {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, s + 1));
            let (url, ca) = (c.url(p, "/ui/login"), c.ca_pem.clone());
            logins.spawn(bad_login(url, ca, from));
        }
    }
    let mut answers = BTreeMap::<String, usize>::new();
    while let Some(a) = logins.join_next().await {
        let key = match a.expect("a login task") {
            Some(code) => code.to_string(),
            None => "no answer".into(),
        };
        *answers.entry(key).or_default() += 1;
    }
    let flood_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    flood_done.store(true, Ordering::SeqCst);
    let (hist, failed) = writer.await.expect("the writer");
    stop.store(true, Ordering::Relaxed);
    let _ = hog.join();
    let rss_after = tandem_tests::proc_stats::rss_kib(pid).unwrap_or(0);
    let p99_ms = hist.value_at_quantile(0.99) as f64 / 1000.0;
    eprintln!(
        "t92: {} logins in {flood_s:.1} s: {answers:?}; {} writes, {failed} failed, p50 {:.1} ms, p99 {p99_ms:.1} ms, max {:.1} ms; primary RSS {} -> {} KiB",
        usize::from(SOURCES) * PER_SOURCE,
        hist.len(),
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        rss_before,
        rss_after
    );
    assert!(
        !answers.contains_key("200"),
        "a wrong password logged in: {answers:?}"
    );
    assert!(
        answers
            .keys()
            .all(|k| ["401", "429", "503"].contains(&k.as_str())),
        "logins must be refused, throttled or turned away: {answers:?}"
    );
    assert_eq!(failed, 0, "writes failed during the flood");
    assert!(hist.len() >= 20, "too few writes to judge: {}", hist.len());
    // Latency is a figure, not an assertion (README, measured figures: run
    // this test with a release build on an otherwise idle machine); a
    // write that stalled for its 5 s timeout counts as failed above.
    let h = c.health(p).await.expect("health after");
    assert_eq!(h.term, term, "an election happened during the flood");
    assert_eq!(c.wait_roles(WAIT).await.primary, p, "the primary changed");
    assert!(
        rss_after < rss_before + 128 * 1024,
        "the primary's memory grew from {rss_before} to {rss_after} KiB"
    );
    // The real user still logs in from another address.
    let ok = reqwest::Client::builder()
        .tls_backend_preconfigured(
            (*tandem_certs::admin_client_config(&c.ca_pem).expect("tls")).clone(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(c.url(p, "/ui/login"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("user={USER}&password=the+right+password"))
        .send()
        .await
        .expect("login");
    assert!(
        ok.status().is_redirection() || ok.status().is_success(),
        "the real user cannot log in after the flood: {}",
        ok.status()
    );
}
