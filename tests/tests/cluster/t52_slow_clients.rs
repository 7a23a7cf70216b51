//! Idle and slow clients against the primary: 2,000 idle TLS connections
//! on its admin listener, hundreds on its peer listener and a slowloris
//! client, while a writer keeps writing. Every write is acknowledged and
//! kept, nobody is elected, the node cuts every idle and slow connection
//! within its bounds (those beyond the peer listener's per-address cap at
//! once), and it keeps answering `/health`.

use super::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// Idle TLS connections opened to the admin listener, from two addresses
/// (each under its per-address cap of 1,024).
const ADMIN_IDLE: usize = 2000;
/// Plain TCP connections opened to the peer listener from one address
/// (beyond its per-address cap).
const PEER_IDLE: usize = 300;
/// The peer listener's per-address cap (`peer::admit::PEER_CONNS_PER_ADDRESS`).
const PEER_CAP_PER_ADDRESS: usize = 64;
/// TLS connections with a valid cluster certificate that send no hello.
const PEER_NO_HELLO: usize = 8;
/// The peer listener's bound from accept to a good hello
/// (`peer::server::HELLO_TIMEOUT`).
const HELLO_BOUND: Duration = Duration::from_secs(10);
/// How late a close may come after its bound on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);
/// A connection closed within this of its accept was refused at once.
const AT_ONCE: Duration = Duration::from_secs(2);
/// Dials and handshakes under way at once while a flood opens.
const OPENING: usize = 64;
/// The writer stops after this many writes (one listing reads them back).
const MAX_WRITES: usize = 1000;
/// Pause between two writes.
const WRITE_PAUSE: Duration = Duration::from_millis(15);

/// Raises this process's open-files limit to its hard limit (the test
/// holds thousands of sockets); returns the limit.
fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
    }
    lim.rlim_cur
}

/// What an attacker's task returned; its panic, if it panicked.
fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A runtime of one thread at nice 10 for the attacking clients.
fn attacker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(|| {
            // SAFETY: setpriority reads no memory; `who = 0` is the calling
            // thread (Linux keeps a nice value per thread).
            unsafe {
                let _ = libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
        })
        .build()
        .expect("the attackers' runtime")
}

/// A TCP connection to `to` from the loopback address `src` (all of
/// 127.0.0.0/8 is local on Linux): each flood comes from an address of
/// its own, apart from the nodes' 127.0.0.1.
async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("a socket");
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect(to)
        .await
        .unwrap_or_else(|e| panic!("connect {src} -> {to}: {e}"))
}

/// Reads until the server closes `conn` (end of stream or an error), for
/// at most `within`: the time from `since` to the close, `None` if it
/// stayed open.
async fn wait_closed<R: AsyncRead + Unpin>(
    conn: &mut R,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut sink = Vec::new();
    tokio::time::timeout(within, conn.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| since.elapsed())
}

/// Connections open now and the most at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn up(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn down(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let Some(last) = sorted.len().checked_sub(1) else {
        return Duration::ZERO;
    };
    sorted[((last as f64 * p).round() as usize).min(last)]
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// What a flood of idle connections measured: per connection, the time
/// its dial and handshake took and the time from then to the server's
/// close (`None`: still open at the bound); the dials or handshakes that
/// failed; the most open at once.
struct Flood {
    conns: Vec<(Duration, Option<Duration>)>,
    failed: usize,
    peak: usize,
    took: Duration,
}

impl Flood {
    fn closes(&self) -> Vec<Duration> {
        let mut c: Vec<Duration> = self.conns.iter().filter_map(|(_, c)| *c).collect();
        c.sort();
        c
    }
    fn still_open(&self) -> usize {
        self.conns.iter().filter(|(_, c)| c.is_none()).count()
    }
}

/// Opens `count` connections with `open` ([`OPENING`] dials at once; a
/// `None` is a dial or handshake that failed), keeps each idle until the
/// server closes it, for at most `bound`.
async fn flood<F, Fut, S>(count: usize, bound: Duration, open: F) -> Flood
where
    F: Fn(usize) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Option<S>> + Send,
    S: AsyncRead + Unpin + Send,
{
    let gauge = Gauge::default();
    let dials = Semaphore::new(OPENING);
    let started = Instant::now();
    let conns = futures::future::join_all((0..count).map(|n| {
        let (gauge, dials, open) = (&gauge, &dials, &open);
        async move {
            let (opened, conn) = {
                let _dial = dials.acquire().await.expect("never closed");
                let t = Instant::now();
                let conn = open(n).await;
                (t.elapsed(), conn)
            };
            let mut conn = conn?;
            gauge.up();
            let closed = wait_closed(&mut conn, Instant::now(), bound).await;
            gauge.down();
            Some((opened, closed))
        }
    }))
    .await;
    let failed = conns.iter().filter(|c| c.is_none()).count();
    Flood {
        conns: conns.into_iter().flatten().collect(),
        failed,
        peak: gauge.peak.load(Ordering::SeqCst),
        took: started.elapsed(),
    }
}

/// A client that sends a request header one byte a second: the time from
/// its handshake to the server's close (`None`: not within `bound`), and
/// the bytes it got to send.
async fn slowloris(
    tls: TlsConnector,
    name: ServerName<'static>,
    admin: SocketAddr,
    bound: Duration,
) -> (Option<Duration>, usize) {
    let tcp = connect_from(Ipv4Addr::new(127, 0, 0, 4), admin).await;
    let conn = tls.connect(name, tcp).await.expect("slowloris handshake");
    let since = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(conn);
    let header = format!(
        "GET /health HTTP/1.1\r\nHost: {admin}\r\nX-Slow: {}\r\n\r\n",
        "x".repeat(20)
    );
    let sent = AtomicUsize::new(0);
    let drip = async {
        for b in header.bytes() {
            if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            sent.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Refused or written in full: the close decides.
        std::future::pending::<()>().await;
    };
    let closed = tokio::select! {
        closed = wait_closed(&mut rd, since, bound) => closed,
        () = drip => unreachable!("the drip never ends"),
    };
    (closed, sent.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_do_not_starve_the_primary() {
    let nofile = raise_open_files_limit();
    assert!(
        nofile > (ADMIN_IDLE + PEER_IDLE + 1024) as u64,
        "this test needs more open files than {nofile}"
    );
    let header_bound = tandem_web::ConnLimits::default().request_header;
    let c = Cluster::three(&[]).await;
    let before = c.wait_roles(WAIT).await;
    let p = before.primary;
    let mut terms = Vec::new();
    for i in 0..3 {
        terms.push(c.health(i).await.expect("health before").term);
    }
    let admin = c.nodes[p].cfg.api_listen;
    let peer = c.nodes[p].cfg.peer_listen;
    let pid = c.nodes[p].pid().expect("the primary runs");
    let fds_before = open_fds(pid);

    let admin_tls = TlsConnector::from(
        tandem_certs::admin_client_config(&c.ca_pem).expect("the admin client config"),
    );
    let admin_name = ServerName::from(admin.ip());
    let ca_key = std::fs::read_to_string(c.nodes[0].dir.join("ca.key")).expect("ca.key");
    let ca = tandem_certs::ClusterCa::from_pem(&c.ca_pem, &ca_key).expect("the CA");
    let cert = ca
        .issue_node_cert(99, &["127.0.0.1".to_string()])
        .expect("a cluster certificate");
    let peer_tls = TlsConnector::from(
        tandem_certs::peer_client_config(&c.ca_pem, &cert.cert_pem, &cert.key_pem)
            .expect("peer client config"),
    );
    let peer_name = ServerName::try_from(tandem_certs::server_name_for(c.nodes[p].id()))
        .expect("a server name");

    // The writer, a /health prober and a descriptor count of the primary,
    // until the floods are over.
    let done = AtomicBool::new(false);
    let writer = async {
        let mut lat = Vec::new();
        while !done.load(Ordering::SeqCst) && lat.len() < MAX_WRITES {
            let t = Instant::now();
            c.put_ok(p, &format!("flood/{:05}", lat.len()), &json!(lat.len()))
                .await;
            lat.push(t.elapsed());
            tokio::time::sleep(WRITE_PAUSE).await;
        }
        lat
    };
    let prober = async {
        let (mut worst, mut probes, mut fd_peak) = (Duration::ZERO, 0, 0);
        while !done.load(Ordering::SeqCst) {
            let t = Instant::now();
            let h = c.health(p).await;
            assert!(
                h.as_ref().is_some_and(|h| h.status == "ok"),
                "the primary's /health during the floods: {h:?}"
            );
            worst = worst.max(t.elapsed());
            probes += 1;
            fd_peak = fd_peak.max(open_fds(pid));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (probes, worst, fd_peak)
    };
    // The attackers run on a runtime of their own at a lower CPU priority:
    // on one machine their handshakes would otherwise take the CPU the
    // nodes need, which no listener can prevent.
    let attackers = attacker_runtime();
    let slow = attackers.spawn(slowloris(
        admin_tls.clone(),
        admin_name.clone(),
        admin,
        header_bound + SLACK,
    ));
    let peer_plain = attackers.spawn(flood(PEER_IDLE, HELLO_BOUND + SLACK, move |_| async move {
        Some(connect_from(Ipv4Addr::new(127, 0, 0, 5), peer).await)
    }));
    let no_hello = attackers.spawn(flood(PEER_NO_HELLO, HELLO_BOUND + SLACK, move |_| {
        let (tls, name) = (peer_tls.clone(), peer_name.clone());
        async move {
            let tcp = connect_from(Ipv4Addr::new(127, 0, 0, 6), peer).await;
            tls.connect(name, tcp).await.ok()
        }
    }));
    let admin_idle = attackers.spawn(flood(ADMIN_IDLE, header_bound + SLACK, move |n| {
        let (tls, name) = (admin_tls.clone(), admin_name.clone());
        async move {
            let src = Ipv4Addr::new(127, 0, 0, 2 + (n % 2) as u8);
            let tcp = connect_from(src, admin).await;
            tls.connect(name, tcp).await.ok()
        }
    }));
    let floods = async {
        let r = (
            joined(slow.await),
            joined(peer_plain.await),
            joined(no_hello.await),
            joined(admin_idle.await),
        );
        done.store(true, Ordering::SeqCst);
        r
    };
    let (mut lat, (probes, health_worst, fd_peak), (slow, peer_plain, no_hello, admin_idle)) =
        tokio::join!(writer, prober, floods);

    lat.sort();
    let handshakes = {
        let mut h: Vec<Duration> = admin_idle.conns.iter().map(|(h, _)| *h).collect();
        h.sort();
        h
    };
    let admin_closes = admin_idle.closes();
    let peer_closes = peer_plain.closes();
    let at_once = peer_closes.iter().filter(|t| **t < AT_ONCE).count();
    eprintln!(
        "t52: {} writes during the floods: p50 {:?}, p99 {:?}, max {:?}; \
         /health {probes} probes, slowest {health_worst:?}; \
         primary's descriptors {fds_before} before, at most {fd_peak} during",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
    eprintln!(
        "t52: admin flood: {} TLS connections ({} failed) in {:?} (dial and handshake \
         p50 {:?}, p99 {:?}), {} open at once at most, closed by the node {:?}..{:?} \
         after their handshake; slowloris cut after {:?} having sent {} bytes",
        admin_idle.conns.len(),
        admin_idle.failed,
        admin_idle.took,
        percentile(&handshakes, 0.5),
        percentile(&handshakes, 0.99),
        admin_idle.peak,
        admin_closes.first(),
        admin_closes.last(),
        slow.0,
        slow.1,
    );
    eprintln!(
        "t52: peer flood: {PEER_IDLE} plain connections, {} open at once at most, \
         {at_once} closed at once, the rest after {:?}..{:?}; {PEER_NO_HELLO} TLS \
         connections without a hello closed after {:?}..{:?}",
        peer_plain.peak,
        peer_closes.get(at_once),
        peer_closes.last(),
        no_hello.closes().first(),
        no_hello.closes().last(),
    );

    // Every idle and slow connection was cut within its bound, by the
    // node's timer, not at once (but those beyond the peer cap).
    let timer = |t: &Duration, bound: Duration| *t >= bound / 2;
    let (closed, sent) = slow;
    let closed = closed.expect("the slowloris was cut within its bound");
    assert!(
        timer(&closed, header_bound),
        "slowloris cut after {closed:?}"
    );
    assert!(sent < 50, "the slowloris sent its whole header");
    // The handshakes run below the node's priority: on a loaded machine a
    // few may miss their bound, which is the node's bound working.
    assert!(
        admin_idle.failed <= ADMIN_IDLE / 20,
        "{} of {ADMIN_IDLE} admin handshakes failed",
        admin_idle.failed
    );
    assert_eq!(
        no_hello.failed, 0,
        "peer handshakes with a good certificate failed"
    );
    assert_eq!(
        admin_idle.still_open(),
        0,
        "idle admin connections kept open"
    );
    assert!(admin_closes.iter().all(|t| timer(t, header_bound)));
    assert_eq!(
        peer_plain.still_open(),
        0,
        "idle peer connections kept open"
    );
    assert!(
        at_once >= PEER_IDLE - PEER_CAP_PER_ADDRESS,
        "only {at_once} peer connections beyond the cap were closed at once"
    );
    assert!(peer_closes[at_once..].iter().all(|t| timer(t, HELLO_BOUND)));
    assert_eq!(no_hello.still_open(), 0, "peers without a hello kept open");
    assert!(no_hello.closes().iter().all(|t| timer(t, HELLO_BOUND)));

    // Nothing acknowledged is lost, nobody was elected, the node serves.
    let after = c.wait_roles(WAIT).await;
    assert_eq!(
        (after.primary, after.epoch),
        (before.primary, before.epoch),
        "the primary changed during the floods"
    );
    for (i, term) in terms.iter().enumerate() {
        let h = c.health(i).await.expect("health after");
        assert_eq!(h.status, "ok", "node {i} after the floods: {h:?}");
        assert_eq!(h.term, *term, "node {i} saw an election");
    }
    c.wait_caught_up(before.backup).await;
    let kept = c.list(before.backup, "flood/", true).await;
    assert_eq!(kept.len(), lat.len(), "acknowledged writes on the backup");
    c.put_ok(p, "flood-after", &json!("served")).await;
    attackers.shutdown_background();
}
