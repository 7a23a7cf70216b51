//! Shared-IP tests in network namespaces (run as root; see
//! `tandem_tests::netns`). Each test builds its own topology and tears it
//! down on drop, also when it fails.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tandem_node::shared_ip::{
    check_reachability, AnnounceSchedule, NetlinkDriver, Release, SharedIpDriver, SharedIpManager,
    SharedIpSpec,
};
use tandem_tests::netns::{
    addr4, addr6, longest_gap, netns_or_skip, overlaps, NameServer, Prober, Sampler, Topology,
    IFACE,
};

const SHARED4: &str = "198.51.100.100";
const SHARED6: &str = "2001:db8:100::100";
const PORT: u16 = 8080;

fn driver() -> NetlinkDriver {
    NetlinkDriver::new(AnnounceSchedule {
        count: 3,
        repeat_after: Duration::ZERO,
        refresh: Duration::ZERO,
    })
}

/// Acquires `spec` in host `h` (twice: idempotent) and returns a listener on
/// the shared address there.
fn take(t: &Topology, h: &str, spec: &SharedIpSpec) -> TcpListener {
    t.run_in(h, || async {
        let d = driver();
        let first = d.acquire(spec, 1).await.expect("acquire");
        assert!(first.contains("added"), "{first}");
        let again = d.acquire(spec, 1).await.expect("acquire again");
        assert!(again.contains("already present"), "{again}");
        assert_eq!(
            d.held(std::slice::from_ref(spec)).await.expect("held"),
            vec![spec.cidr()]
        );
        let l = TcpListener::bind(SocketAddr::new(spec.address, PORT))
            .expect("bind to the shared address");
        l.set_nonblocking(false).expect("blocking");
        l
    })
}

fn give_up(t: &Topology, h: &str, spec: &SharedIpSpec) {
    t.run_in(h, || async {
        let d = driver();
        let note = d.release(spec, 1).await.expect("release");
        assert!(note.contains("removed"), "{note}");
        let note = d.release(spec, 1).await.expect("release again");
        assert!(note.contains("not present"), "{note}");
        assert!(d
            .held(std::slice::from_ref(spec))
            .await
            .expect("held")
            .is_empty());
    });
}

/// The client connects to the shared address; the holder's listener names itself.
fn client_reaches(t: &Topology, l: &TcpListener, holder: &str, addr: IpAddr) {
    let server = std::thread::scope(|s| {
        let srv = s.spawn(|| {
            let (mut c, _) = l.accept().expect("accept");
            c.write_all(holder.as_bytes()).expect("write");
        });
        let got = t.run_in("client", || async move {
            let mut c =
                TcpStream::connect_timeout(&SocketAddr::new(addr, PORT), Duration::from_secs(3))
                    .expect("client connects to the shared address");
            c.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut s = String::new();
            c.read_to_string(&mut s).expect("read");
            s
        });
        srv.join().expect("server thread");
        got
    });
    assert_eq!(server, holder);
}

#[test]
fn netlink_driver_moves_an_address_and_announces_it() {
    if !netns_or_skip("netlink_driver_moves_an_address_and_announces_it") {
        return;
    }
    let t = Topology::create().expect("topology");
    for (addr, prefix) in [(SHARED4, 24), (SHARED6, 64)] {
        let spec = SharedIpSpec::parse(&format!("{addr}/{prefix}"), IFACE).expect("spec");
        let ip = spec.address;

        // On a: present, reachable from the client.
        let l = take(&t, "a", &spec);
        let shown = t.ip("a", &["addr", "show", "dev", IFACE]).expect("ip addr");
        assert!(shown.contains(&spec.cidr()), "{shown}");
        assert_eq!(t.holders(ip), vec!["a"]);
        client_reaches(&t, &l, "a", ip);
        let mac_a = t.mac("a").expect("mac a");
        let mac_b = t.mac("b").expect("mac b");
        assert_eq!(
            t.neighbour_mac("client", ip).as_deref(),
            Some(mac_a.as_str())
        );

        // Released on a, taken by b: the announcement moves the client's
        // neighbour entry to b's MAC without the client asking.
        drop(l);
        give_up(&t, "a", &spec);
        assert!(t.holders(ip).is_empty());
        let l = take(&t, "b", &spec);
        let moved = Topology::wait_for(Duration::from_secs(3), || {
            (t.neighbour_mac("client", ip).as_deref() == Some(mac_b.as_str())).then_some(())
        });
        assert!(
            moved.is_some(),
            "client's neighbour entry for {ip} still {:?}, b is {mac_b}",
            t.neighbour_mac("client", ip)
        );
        client_reaches(&t, &l, "b", ip);
        assert_eq!(t.holders(ip), vec!["b"]);

        // The reachability check from the shared address: ICMP and TCP.
        let client = if ip.is_ipv4() {
            IpAddr::V4(addr4("client"))
        } else {
            IpAddr::V6(addr6("client"))
        };
        let client_listener = t.run_in("client", || async move {
            TcpListener::bind(SocketAddr::new(client, 9090)).expect("client listener")
        });
        t.run_in("b", || async move {
            check_reachability(ip, &client.to_string(), Duration::from_secs(2))
                .await
                .expect("ICMP echo from the shared address");
            check_reachability(
                ip,
                &SocketAddr::new(client, 9090).to_string(),
                Duration::from_secs(2),
            )
            .await
            .expect("TCP from the shared address");
            let off = if ip.is_ipv4() {
                "198.51.100.99"
            } else {
                "2001:db8:100::99"
            };
            assert!(check_reachability(ip, off, Duration::from_millis(300))
                .await
                .is_err());
        });
        drop(client_listener);
        drop(l);
        give_up(&t, "b", &spec);
    }
}

#[test]
fn manager_cleans_up_at_start_and_reports() {
    if !netns_or_skip("manager_cleans_up_at_start_and_reports") {
        return;
    }
    let t = Topology::create().expect("topology");
    let spec4 = SharedIpSpec::parse(&format!("{SHARED4}/24"), IFACE).expect("spec");
    let spec6 = SharedIpSpec::parse(&format!("{SHARED6}/64"), IFACE).expect("spec");
    let specs = vec![spec4.clone(), spec6.clone()];
    // Left over by a crashed primary.
    t.ip("a", &["addr", "add", &spec4.cidr(), "dev", IFACE])
        .expect("add");
    t.run_in("a", || async {
        let m = SharedIpManager::new(Arc::new(driver()), vec![]);
        let r = m.startup_cleanup(&specs).await;
        assert!(r.held.is_empty(), "{r:?}");
        assert!(r.errors.is_empty(), "{r:?}");
        let ev = m.drain_events();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!((ev[0].action.as_str(), ev[0].ok), ("cleanup", true));

        // Primary: both held, the gateway (the client) answers from the shared address.
        let gw = vec![addr4("client").to_string()];
        let r = m.reconcile(true, 5, &specs, &gw).await;
        assert_eq!(r.held, vec![spec4.cidr(), spec6.cidr()], "{r:?}");
        assert!(r.errors.is_empty(), "{r:?}");
        let mut reach = None;
        for _ in 0..100 {
            reach = m.reconcile(true, 5, &specs, &gw).await.reachability;
            if reach.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reach = reach.expect("reachability reported");
        assert!(reach.ok, "{reach:?}");
        assert_eq!((reach.epoch, reach.from.as_str()), (5, SHARED4));

        // Demoted: nothing held.
        let r = m.reconcile(false, 6, &specs, &gw).await;
        assert!(r.held.is_empty(), "{r:?}");
        m.reconcile(true, 7, &specs, &gw).await;
        let r = m.release_all(7, Release::RoleLost).await;
        assert!(r.held.is_empty(), "{r:?}");
    });
    assert!(t.holders(spec4.address).is_empty());
    assert!(t.holders(spec6.address).is_empty());
}

#[test]
fn interface_missing_is_an_error_and_retried() {
    if !netns_or_skip("interface_missing_is_an_error_and_retried") {
        return;
    }
    let t = Topology::create().expect("topology");
    let spec = SharedIpSpec::parse(&format!("{SHARED4}/24"), "nosuch0").expect("spec");
    t.run_in("a", || async {
        let m = SharedIpManager::new(Arc::new(driver()), vec![]);
        let r = m.reconcile(true, 1, std::slice::from_ref(&spec), &[]).await;
        assert!(r.held.is_empty());
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].contains("no interface \"nosuch0\""), "{r:?}");
        // Release of what was never there is fine.
        let r = m
            .reconcile(false, 2, std::slice::from_ref(&spec), &[])
            .await;
        assert!(r.errors.is_empty(), "{r:?}");
    });
}

/// The sampler and the prober of the end-to-end scenarios, on a move done
/// by the driver: the client follows the address, no sample shows two
/// holders, and the gap is measured.
#[test]
fn client_follows_a_moved_address_and_no_sample_shows_two_holders() {
    if !netns_or_skip("client_follows_a_moved_address_and_no_sample_shows_two_holders") {
        return;
    }
    let t = Topology::create().expect("topology");
    let spec = SharedIpSpec::parse(&format!("{SHARED4}/24"), IFACE).expect("spec");
    let _a = NameServer::start(&t, "a", PORT);
    let _b = NameServer::start(&t, "b", PORT);
    t.run_in("a", || async {
        driver().acquire(&spec, 1).await.expect("acquire on a")
    });
    let sampler = Sampler::start(&t, spec.address);
    let prober = Prober::start(&t, "client", SocketAddr::new(spec.address, PORT));
    std::thread::sleep(Duration::from_millis(200));
    let moved_at = std::time::Instant::now();
    t.run_in("a", || async {
        driver().release(&spec, 1).await.expect("release on a")
    });
    t.run_in("b", || async {
        driver().acquire(&spec, 2).await.expect("acquire on b")
    });
    let move_ms = moved_at.elapsed().as_millis();
    std::thread::sleep(Duration::from_millis(300));
    let probes = prober.finish();
    let samples = sampler.finish();

    assert!(samples.len() >= 20, "{} samples", samples.len());
    let bad = overlaps(&samples);
    assert!(bad.is_empty(), "address held twice: {bad:?}");
    assert_eq!(samples.last().map(|s| s.holders.clone()), Some(vec!["b"]));
    assert_eq!(samples.first().map(|s| s.holders.clone()), Some(vec!["a"]));
    let answers: Vec<&str> = probes.iter().filter_map(|p| p.answer.as_deref()).collect();
    assert_eq!(answers.first(), Some(&"a"), "{probes:?}");
    assert_eq!(answers.last(), Some(&"b"), "{probes:?}");
    let gap = longest_gap(&probes, Duration::ZERO);
    println!(
        "move took {move_ms} ms; {} samples, {} probes, client-visible gap {} ms",
        samples.len(),
        probes.len(),
        gap.as_millis()
    );
    assert!(gap < Duration::from_secs(2), "gap {gap:?}");
}

/// Starts `tandem shared-ip-guard` in host `h` with pipes.
fn start_guard(t: &Topology, h: &str) -> std::process::Child {
    t.command(h, tandem_tests::tandem_bin())
        .arg(tandem_node::ip_guard::GUARD_VERB)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the guard")
}

fn send(child: &mut std::process::Child, msg: &tandem_node::ip_guard::ToGuard) {
    let stdin = child.stdin.as_mut().expect("the guard's stdin");
    let mut line = serde_json::to_vec(msg).expect("json");
    line.push(b'\n');
    stdin.write_all(&line).expect("writing to the guard");
    stdin.flush().expect("flush");
}

/// Waits (bounded) for the guard to exit; its status and stderr.
fn guard_exit(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    drop(child.stdin.take());
    for _ in 0..100 {
        if let Some(st) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (st, err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the guard did not exit within 5 s of its input closing");
}

/// The shared-IP guard `tandem run` starts: it releases what it was told
/// about when its input closes (the daemon died) and when the lease deadline
/// passes without renewal (the daemon froze), saying so on its output; it
/// does nothing while renewed; started by hand it refuses with a reason.
#[test]
fn guard_releases_when_the_daemon_dies_or_its_lease_lapses() {
    use tandem_node::config::{SharedIpConfig, SharedIpDriverKind};
    use tandem_node::ip_guard::{monotonic_ms, FromGuard, ToGuard};
    if !netns_or_skip("guard_releases_when_the_daemon_dies_or_its_lease_lapses") {
        return;
    }
    let t = Topology::create().expect("topology");
    let spec = SharedIpSpec::parse(&format!("{SHARED4}/24"), IFACE).expect("spec");
    let addr = spec.address;
    let config = ToGuard::Config {
        shared_ip: SharedIpConfig {
            driver: SharedIpDriverKind::Netlink,
            ..SharedIpConfig::default()
        },
    };
    let hold = |deadline_ms| ToGuard::Hold {
        held: vec![(spec.clone(), 3)],
        deadline_ms,
    };

    // 1. The daemon dies: its pipe closes, the guard releases and exits.
    t.ip("a", &["addr", "add", &spec.cidr(), "dev", IFACE])
        .expect("add");
    let mut g = start_guard(&t, "a");
    send(&mut g, &config);
    send(&mut g, &hold(Some(monotonic_ms() + 60_000)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(t.has_addr("a", addr), "released while the lease ran");
    let (st, err) = guard_exit(g);
    assert!(st.success(), "{st:?}: {err}");
    assert!(
        !t.has_addr("a", addr),
        "still held after the daemon died: {err}"
    );
    assert!(err.contains("the daemon is gone"), "{err}");

    // 2. The daemon freezes: renewals stop, the deadline passes.
    t.ip("a", &["addr", "add", &spec.cidr(), "dev", IFACE])
        .expect("add");
    let mut g = start_guard(&t, "a");
    send(&mut g, &config);
    for _ in 0..5 {
        // Renewed: nothing happens.
        send(&mut g, &hold(Some(monotonic_ms() + 150)));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(t.has_addr("a", addr), "released although renewed");
    let frozen_at = std::time::Instant::now();
    let mut out = std::io::BufReader::new(g.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("the guard's report");
    let waited = frozen_at.elapsed();
    match serde_json::from_str::<FromGuard>(&line).expect("a report") {
        FromGuard::Released {
            addresses, errors, ..
        } => {
            assert_eq!(addresses, vec![spec.cidr()]);
            assert!(errors.is_empty(), "{errors:?}");
        }
    }
    assert!(!t.has_addr("a", addr), "still held after the deadline");
    assert!(waited < Duration::from_secs(2), "released after {waited:?}");
    let (st, err) = guard_exit(g);
    assert!(st.success(), "{st:?}: {err}");

    // 3. Started by hand: a clear refusal.
    let g = start_guard(&t, "a");
    let (st, err) = guard_exit(g);
    assert!(!st.success(), "{err}");
    assert!(err.contains("started by `tandem run`"), "{err}");
}
