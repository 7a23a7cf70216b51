//! End to end: the shared address follows the primary of a pair + witness
//! relationship of real `tandem` processes, one per network namespace
//! (`tandem_tests::netcluster`). A client that only knows the shared address
//! probes it every 10 ms (HTTPS `/health`, which names the node), and a
//! sampler records every 10 ms which namespaces hold it.
//!
//! Run as root (CI does); elsewhere the tests say why they skip. They run
//! one at a time (three debug nodes each). The benchmark is a command:
//!
//! ```text
//! cargo build --release -p tandem-node
//! TANDEM_BIN=$PWD/target/release/tandem \
//!   cargo test --release -p tandem-tests --test shared_ip_e2e -- --ignored --nocapture bench
//! ```
//!
//! (the figures of the shipped build; without `TANDEM_BIN` the debug nodes
//! run, several times slower on each step of a swap).
//!
//! (`TANDEM_SHARED_IP_TIMEOUT_MS=300` for the fastest primary timeout,
//! `TANDEM_BENCH_RUNS` for the runs per scenario, default 10;
//! `TANDEM_BENCH_SCENARIOS=crash,cut-off,swap,check` for some of them.)

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tandem_tests::netcluster::{shared, wait_for, NetCluster, SHARED_CIDR};
use tandem_tests::netns::{
    longest_gap, netns_or_skip, overlaps, CheckedService, Probe, Sample, Sampler,
};
use tandem_tests::Roles;

/// Bound on the address moving and the client being answered again.
const MOVE: Duration = Duration::from_secs(30);
/// Bound on the nodes agreeing on the roles again.
const SETTLE: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

/// The namespace gate, then one test at a time.
fn gate(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !netns_or_skip(test) {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(PoisonError::into_inner))
}

/// The primary timeout of the clusters (`TANDEM_SHARED_IP_TIMEOUT_MS`,
/// default 1000 ms, the product default).
fn timeout_ms() -> u64 {
    std::env::var("TANDEM_SHARED_IP_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// What the client and the sampler saw while the address moved.
struct Moved {
    /// Longest time between two answered probes from the action on.
    gap: Duration,
    /// From the action until the new holder held the address alone and
    /// answered the client.
    settled: Duration,
    samples: Vec<Sample>,
    probes: Vec<Probe>,
    /// Sampler time of the action.
    acted_sample_at: Duration,
    /// The origin of the probes' times.
    prober_started: Instant,
}

impl Moved {
    /// Sampler time at which `h` last held the address (from the action on).
    fn last_held(&self, h: &str) -> Option<Duration> {
        self.samples
            .iter()
            .filter(|s| s.at >= self.acted_sample_at && s.holders.contains(&h))
            .map(|s| s.at - self.acted_sample_at)
            .next_back()
    }

    /// Sampler time at which `h` first held the address after the action.
    fn first_held(&self, h: &str) -> Option<Duration> {
        self.samples
            .iter()
            .find(|s| s.at >= self.acted_sample_at && s.holders.contains(&h))
            .map(|s| s.at - self.acted_sample_at)
    }

    fn report(&self, what: &str, from: &str, to: &str) {
        println!(
            "{what}: client-visible gap {} ms; {from} last held the address at +{:?} ms, \
             {to} first at +{:?} ms; settled in {} ms ({} samples, {} probes)",
            self.gap.as_millis(),
            self.last_held(from).map(|d| d.as_millis()),
            self.first_held(to).map(|d| d.as_millis()),
            self.settled.as_millis(),
            self.samples.len(),
            self.probes.len(),
        );
    }
}

/// No sample shows the address in two namespaces.
fn assert_single_holder(samples: &[Sample], what: &str) {
    let bad = overlaps(samples);
    assert!(
        bad.is_empty(),
        "{what}: the address was held by two namespaces in {} of {} samples; first {:?}, last {:?}",
        bad.len(),
        samples.len(),
        bad.first(),
        bad.last()
    );
}

/// Watches the client and the holders while `act` makes the address move
/// from `from` to `to`; returns once `to` alone holds it and answers the
/// client.
fn observe(
    c: &mut NetCluster,
    from: &str,
    to: &str,
    what: &str,
    act: impl FnOnce(&mut NetCluster),
) -> Moved {
    let sampler = Sampler::start(&c.topo, shared());
    let prober = c.prober();
    let prober_started = prober.started;
    wait_for(
        &format!("{what}: the client to be answered by {from}"),
        MOVE,
        || prober.answered_by(from).then_some(()),
    );
    let acted_probe_at = prober.started.elapsed();
    let acted_sample_at = sampler.started.elapsed();
    let t0 = Instant::now();
    act(c);
    wait_for(
        &format!("{what}: {to} alone to hold the address and answer the client"),
        MOVE,
        || (c.holders() == vec![to] && prober.answered_by(to)).then_some(()),
    );
    let settled = t0.elapsed();
    let probes = prober.finish();
    let samples = sampler.finish();
    Moved {
        gap: longest_gap(&probes, acted_probe_at),
        settled,
        samples,
        probes,
        acted_sample_at,
        prober_started,
    }
}

/// `from` let go of the address before `to` first held it.
fn assert_released_before_taken(m: &Moved, from: &str, to: &str, what: &str) {
    let (gone, taken) = (m.last_held(from), m.first_held(to));
    assert!(
        gone.zip(taken).is_none_or(|(g, t)| g < t),
        "{what}: {from} last held at {gone:?}, {to} first at {taken:?}"
    );
}

fn names(c: &NetCluster, r: Roles) -> (&'static str, &'static str) {
    (c.nodes[r.primary].name, c.nodes[r.backup].name)
}

/// The primary's host dies: kill -9 of its process and its network gone
/// (a machine that loses power holds no address; a process killed alone
/// leaves it behind, see `crash_process_only`). Returns the new roles.
fn crash(c: &mut NetCluster, r: Roles, what: &str) -> (Moved, Roles) {
    let (p, b) = names(c, r);
    let m = observe(c, p, b, what, |c| {
        c.kill9(r.primary);
        c.topo.unplug(p).expect("unplugging the primary");
    });
    assert_single_holder(&m.samples, what);
    let next = c.wait_roles(SETTLE);
    assert_eq!(next.primary, r.backup, "{what}: roles {next:?}");
    assert!(next.epoch > r.epoch, "{what}: {next:?} after {r:?}");
    assert!(c.held_by_status(r.backup), "{what}: {b}'s status");
    (m, next)
}

/// The old primary's node restarts (its host first plugged back in when
/// `unplugged`): it is backup and does not take the address. Returns the
/// roles.
fn restart_old(
    c: &mut NetCluster,
    old: usize,
    primary: usize,
    what: &str,
    unplugged: bool,
) -> Roles {
    let (o, p) = (c.nodes[old].name, c.nodes[primary].name);
    if unplugged {
        c.topo.plug(o).expect("plugging the old primary back");
    }
    let sampler = Sampler::start(&c.topo, shared());
    let prober = c.prober();
    let from_probe = prober.started.elapsed();
    c.restart(old);
    let roles = wait_for(&format!("{what}: {o} back as backup"), SETTLE, || {
        c.find_roles()
            .filter(|r| r.primary == primary && r.backup == old)
    });
    wait_for(
        &format!("{what}: {o}'s status to hold nothing"),
        SETTLE,
        || c.holds_nothing_by_status(old).then_some(()),
    );
    wait_for(
        &format!("{what}: {p} to hold the address (status and namespace)"),
        MOVE,
        || (c.held_by_status(primary) && c.holders() == vec![p]).then_some(()),
    );
    let probes = prober.finish();
    let samples = sampler.finish();
    assert_single_holder(&samples, what);
    assert!(
        samples.iter().all(|s| !s.holders.contains(&o)),
        "{what}: {o} held the address: {:?}",
        samples.iter().find(|s| s.holders.contains(&o))
    );
    assert!(
        probes.iter().all(|x| x.answer.as_deref() != Some(o)),
        "{what}: the client was answered by {o}"
    );
    // Not a safety matter: on a loaded machine the primary may lose its
    // lease for a moment (and so release the address) while the other
    // node starts; it is reported, not failed.
    let without = samples.iter().filter(|s| s.holders.is_empty()).count();
    if without > 0 {
        println!(
            "{what}: NOTE: {p} did not hold the address in {without} of {} samples \
             (its lease lapsed while {o} started; see its log)",
            samples.len()
        );
    }
    println!(
        "{what}: {o} restarted as backup; {p} held the address in {} of {} samples; \
         longest client gap {} ms",
        samples.len() - without,
        samples.len(),
        longest_gap(&probes, from_probe).as_millis()
    );
    roles
}

/// The primary cut off from both peers (its link down): it releases the
/// address when its lease expires, the others elect the backup, which
/// takes it; the link comes back and the old primary stays backup.
fn cut_off(c: &mut NetCluster, r: Roles, what: &str) -> (Moved, Roles) {
    let (p, b) = names(c, r);
    let m = observe(c, p, b, what, |c| {
        c.topo.set_link(p, false).expect("link down");
    });
    assert_single_holder(&m.samples, what);
    assert!(c.held_by_status(r.backup), "{what}: {b}'s status");

    // Back on the network: backup, and it does not take the address.
    let sampler = Sampler::start(&c.topo, shared());
    c.topo.set_link(p, true).expect("link up");
    let next = wait_for(&format!("{what}: {p} back as backup"), SETTLE, || {
        c.find_roles()
            .filter(|x| x.primary == r.backup && x.backup == r.primary)
    });
    wait_for(
        &format!("{what}: {p}'s status to hold nothing"),
        SETTLE,
        || c.holds_nothing_by_status(r.primary).then_some(()),
    );
    let samples = sampler.finish();
    assert_single_holder(&samples, what);
    assert!(
        samples.iter().all(|s| !s.holders.contains(&p)),
        "{what}: {p} held the address again after the link came back"
    );
    assert_eq!(c.holders(), vec![b], "{what}");
    assert!(next.epoch > r.epoch, "{what}: {next:?} after {r:?}");
    (m, next)
}

/// Planned swap asked of the primary.
fn swap(c: &mut NetCluster, r: Roles, what: &str) -> (Moved, Roles) {
    let (p, b) = names(c, r);
    // The primary must see the backup before a planned swap.
    let b_id = c.nodes[r.backup].id;
    wait_for(&format!("{what}: {p} to see {b}"), SETTLE, || {
        c.status(r.primary)
            .filter(|s| s.peers.iter().any(|x| x.id == b_id && x.reachable))
    });
    let m = observe(c, p, b, what, |c| {
        // A planned swap is refused (409, nothing paused) when the backup
        // does not answer its probe within the primary timeout, which a
        // loaded machine can cause with the shortest timeout: asked again
        // at most twice.
        for attempt in 0..3 {
            let (status, body) = c.swap(r.primary, false).expect("the swap answered");
            if status.as_u16() == 409 && attempt < 2 {
                println!("{what}: refused, asked again: {body}");
                continue;
            }
            assert_eq!(status.as_u16(), 200, "{what}: {body}");
            break;
        }
    });
    assert_single_holder(&m.samples, what);
    let next = c.wait_roles(SETTLE);
    assert_eq!(next.primary, r.backup, "{what}: roles {next:?}");
    assert!(c.held_by_status(r.backup), "{what}: {b}'s status");
    assert!(c.holds_nothing_by_status(r.primary), "{what}: {p}'s status");
    // Beyond the 10 ms samples: by the nodes' own clocks (one host), the old
    // primary removed the address before the new one added it.
    let removed = last_log_time(&c.nodes[r.primary].log, "shared IP removed");
    let added = last_log_time(&c.nodes[r.backup].log, "shared IP added");
    match (removed, added) {
        (Some(rm), Some(ad)) => assert!(
            rm.len() == ad.len() && rm < ad,
            "{what}: {p} removed the address at {rm}, {b} added it at {ad}"
        ),
        other => panic!("{what}: no removal/addition lines in the logs: {other:?}"),
    }
    (m, next)
}

/// The timestamp (RFC 3339, as the node logs it) of the last line of the
/// log at `path` that contains `needle`.
fn last_log_time(path: &std::path::Path, needle: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .rev()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next())
        .find(|t| t.len() > 20 && t.ends_with('Z'))
        .map(str::to_owned)
}

fn setup(test: &str) -> Option<(MutexGuard<'static, ()>, NetCluster, Roles)> {
    let g = gate(test)?;
    let c = NetCluster::start(timeout_ms());
    let r = c.wait_roles(SETTLE);
    let (p, _) = names(&c, r);
    assert_eq!(c.holders(), vec![p], "{test}: after setup");
    Some((g, c, r))
}

mod crash_of_the_primary {
    use super::*;

    #[test]
    fn kill9_of_the_primary_moves_the_address_to_the_backup() {
        let Some((_g, mut c, r)) = setup("kill9_of_the_primary_moves_the_address_to_the_backup")
        else {
            return;
        };
        let (p, b) = names(&c, r);
        let what = format!("crash of {p}");
        let (m, _) = crash(&mut c, r, &what);
        m.report(&what, p, b);
        assert!(m.gap < MOVE, "{what}: gap {:?}", m.gap);
    }
}

mod crash_process_only {
    use super::*;

    /// kill -9 of the primary's process alone (its host and network stay
    /// up): its shared-IP guard releases the address as soon as the process
    /// is gone, before the backup takes it; the killed node restarts as
    /// backup and does not take it.
    #[test]
    fn kill9_of_the_primary_process_alone_leaves_a_single_holder() {
        let Some((_g, mut c, r)) =
            setup("kill9_of_the_primary_process_alone_leaves_a_single_holder")
        else {
            return;
        };
        let (p, b) = names(&c, r);
        let what = format!("kill -9 of {p}'s process alone");
        let m = observe(&mut c, p, b, &what, |c| c.kill9(r.primary));
        m.report(&what, p, b);
        assert_single_holder(&m.samples, &what);
        assert_released_before_taken(&m, p, b, &what);
        let next = c.wait_roles(SETTLE);
        assert_eq!(next.primary, r.backup, "{what}: roles {next:?}");
        restart_old(&mut c, r.primary, r.backup, &what, false);
    }
}

mod paused_primary {
    use super::*;

    /// SIGSTOP of the primary's process: its shared-IP guard releases the
    /// address when the lease runs out, before the backup can be elected;
    /// after SIGCONT the old primary stays backup and never takes it back.
    #[test]
    fn paused_primary_lets_go_before_the_backup_takes_over() {
        let Some((_g, mut c, r)) = setup("paused_primary_lets_go_before_the_backup_takes_over")
        else {
            return;
        };
        let (p, b) = names(&c, r);
        let what = format!("SIGSTOP of {p}");
        let m = observe(&mut c, p, b, &what, |c| {
            c.signal(r.primary, Signal::SIGSTOP);
        });
        m.report(&what, p, b);
        assert_single_holder(&m.samples, &what);
        assert_released_before_taken(&m, p, b, &what);

        let sampler = Sampler::start(&c.topo, shared());
        let prober = c.prober();
        c.signal(r.primary, Signal::SIGCONT);
        let roles = wait_for(&format!("{what}: {p} back as backup"), SETTLE, || {
            c.find_roles()
                .filter(|x| x.primary == r.backup && x.backup == r.primary)
        });
        assert!(roles.epoch > r.epoch, "{what}: {roles:?} after {r:?}");
        wait_for(
            &format!("{what}: {p}'s status to hold nothing"),
            SETTLE,
            || c.holds_nothing_by_status(r.primary).then_some(()),
        );
        assert_eq!(c.holders(), vec![b], "{what}");
        let probes = prober.finish();
        let samples = sampler.finish();
        assert_single_holder(&samples, &what);
        assert!(
            samples.iter().all(|s| !s.holders.contains(&p)),
            "{what}: {p} held the address after SIGCONT: {:?}",
            samples.iter().find(|s| s.holders.contains(&p))
        );
        assert!(
            probes.iter().all(|x| x.answer.as_deref() != Some(p)),
            "{what}: the client was answered by {p} after SIGCONT"
        );
    }
}

mod cut_off_primary {
    use super::*;

    #[test]
    fn primary_cut_off_from_both_peers_releases_and_the_backup_takes_over() {
        let Some((_g, mut c, r)) =
            setup("primary_cut_off_from_both_peers_releases_and_the_backup_takes_over")
        else {
            return;
        };
        let (p, b) = names(&c, r);
        let what = format!("{p} cut off");
        let (m, _) = cut_off(&mut c, r, &what);
        m.report(&what, p, b);
        // The cut-off node let go before the backup took the address.
        assert_released_before_taken(&m, p, b, &what);
    }
}

/// DESIGN rule 6, at shutdown: SIGTERM of the primary's daemon (restarted
/// between stops, so the role alternates): no 10 ms sample shows the
/// address on two hosts, and the stopped node's own log shows no
/// acquisition after its shutdown began. `TANDEM_GRACEFUL_STOPS` stops
/// (default 10; the README's figure is from 100).
mod graceful_stop {
    use super::*;

    /// The lines of node `name`'s last run (after the harness's start line).
    fn last_run(log: &std::path::Path, name: &str) -> Vec<String> {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let start = format!("===== harness: starting {name} ");
        let lines: Vec<&str> = text.lines().collect();
        let from = lines
            .iter()
            .rposition(|l| l.starts_with(&start))
            .unwrap_or(0);
        lines[from..].iter().map(|l| (*l).to_owned()).collect()
    }

    #[test]
    fn graceful_stops_of_the_primary_never_leave_two_holders() {
        let Some((_g, mut c, mut r)) =
            setup("graceful_stops_of_the_primary_never_leave_two_holders")
        else {
            return;
        };
        let stops: usize = std::env::var("TANDEM_GRACEFUL_STOPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let (mut samples, mut dual) = (0, 0);
        for n in 1..=stops {
            let (p, b) = names(&c, r);
            let what = format!("graceful stop {n}/{stops} of {p}");
            let m = observe(&mut c, p, b, &what, |c| {
                let code = c.stop(r.primary);
                assert_eq!(code, Some(0), "{p} exit code");
            });
            samples += m.samples.len();
            dual += overlaps(&m.samples).len();
            assert_single_holder(&m.samples, &what);
            assert_released_before_taken(&m, p, b, &what);
            // The node's own record: nothing acquired once shutdown began.
            let run = last_run(&c.nodes[r.primary].log, p);
            let began = run
                .iter()
                .position(|l| l.contains("shutting down"))
                .unwrap_or_else(|| panic!("{what}: no shutdown line in {p}'s log"));
            let late: Vec<&String> = run[began..]
                .iter()
                .filter(|l| l.contains("shared IP added") || l.contains("action=\"acquire\""))
                .collect();
            assert!(
                late.is_empty(),
                "{what}: {p} acquired after its shutdown began: {late:?}"
            );
            r = restart_old(&mut c, r.primary, r.backup, &what, false);
        }
        println!(
            "{stops} graceful stops of the primary: {dual} of {samples} samples with two holders"
        );
    }
}

/// DESIGN rule 8 across a network: the backup's host unreachable (its link
/// down) for 30 s while a writer runs costs the primary a few log lines and
/// no CPU, writes go on, and the backup is caught up within 2 s of its link
/// coming back.
mod backup_cut_off {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tandem_tests::proc_stats::cpu_time;

    const DOWN: Duration = Duration::from_secs(30);

    fn size_of(log: &std::path::Path) -> (usize, u64) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        (text.lines().count(), text.len() as u64)
    }

    fn cpu_share(pid: u32, window: Duration) -> f64 {
        let (t0, c0) = (Instant::now(), cpu_time(pid).expect("cpu time"));
        std::thread::sleep(window);
        let (t1, c1) = (Instant::now(), cpu_time(pid).expect("cpu time"));
        (c1 - c0).as_secs_f64() / (t1 - t0).as_secs_f64()
    }

    #[test]
    fn a_cut_off_backup_costs_the_primary_nothing() {
        let Some((_g, c, r)) = setup("a_cut_off_backup_costs_the_primary_nothing") else {
            return;
        };
        let (p, b) = (r.primary, r.backup);
        let pid = c.pid(p).expect("the primary runs");
        let url = format!("{}/api/v1/config/x", c.nodes[p].api());
        let (stop, ok, failed) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            // The writer, from the client's namespace, every 20 ms.
            s.spawn(|| {
                c.topo.run_in("client", || async {
                    let http = tandem_tests::https_client(&c.ca_pem);
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        n += 1;
                        let r = http
                            .put(&url)
                            .bearer_auth(&c.admin_token)
                            .json(&serde_json::json!({ "value": n }))
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            });
            wait_for("the writer's first writes", MOVE, || {
                (ok.load(Ordering::Relaxed) > 10).then_some(())
            });
            let baseline = cpu_share(pid, Duration::from_secs(5));
            let log = &c.nodes[p].log;
            let (lines0, bytes0) = size_of(log);
            let (ok0, failed0) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
            c.topo.set_link(c.nodes[b].name, false).expect("link down");
            let down = cpu_share(pid, DOWN);
            let (lines1, bytes1) = size_of(log);
            let (ok1, failed1) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
            c.topo.set_link(c.nodes[b].name, true).expect("link up");
            let up = Instant::now();
            let caught_up = wait_for("the backup to catch up", SETTLE, || {
                let leader = c.health(p)?.applied_index?;
                let mine = c.health(b)?.applied_index?;
                (mine >= leader).then(|| up.elapsed())
            });
            stop.store(true, Ordering::Relaxed);
            println!(
                "backup cut off for {DOWN:?}: the primary's log grew by {} lines, {} bytes; \
                 CPU {:.1} % of a core (writer alone {:.1} %); {} writes ok, {} failed; \
                 caught up {caught_up:?} after the link came back",
                lines1 - lines0,
                bytes1 - bytes0,
                down * 100.0,
                baseline * 100.0,
                ok1 - ok0,
                failed1 - failed0
            );
            assert!(
                lines1 - lines0 <= 100 && bytes1 - bytes0 <= 64 * 1024,
                "the primary's log grew by {} lines, {} bytes:\n{}",
                lines1 - lines0,
                bytes1 - bytes0,
                tandem_tests::tail(log, 40)
            );
            assert!(
                down <= baseline + 0.10,
                "the primary used {:.1} % of a core with the backup cut off, {:.1} % before",
                down * 100.0,
                baseline * 100.0
            );
            assert_eq!(
                failed1, failed0,
                "writes failed while the backup was cut off"
            );
            assert!(ok1 - ok0 >= 300, "only {} writes in {DOWN:?}", ok1 - ok0);
            assert!(
                caught_up <= Duration::from_secs(2),
                "caught up only {caught_up:?} after the link came back"
            );
        });
    }
}

mod planned_swap {
    use super::*;

    #[test]
    fn planned_swap_moves_the_address() {
        let Some((_g, mut c, r)) = setup("planned_swap_moves_the_address") else {
            return;
        };
        let (p, b) = names(&c, r);
        let what = format!("planned swap {p} -> {b}");
        let (m, next) = swap(&mut c, r, &what);
        m.report(&what, p, b);
        // And back.
        let what = format!("planned swap {b} -> {p}");
        let (m, _) = swap(&mut c, next, &what);
        m.report(&what, b, p);
    }
}

mod forced_promotion {
    use super::*;

    /// The primary and the witness frozen (SIGSTOP), `swap --force` on the
    /// backup: it holds the address. The frozen primary's shared-IP guard
    /// released it when the lease ran out, so there is never a second
    /// holder; once running again the old primary is fenced and never takes
    /// the address back.
    #[test]
    fn forced_promotion_takes_the_address_and_the_old_primary_lets_go_when_it_resumes() {
        let Some((_g, c, r)) =
            setup("forced_promotion_takes_the_address_and_the_old_primary_lets_go_when_it_resumes")
        else {
            return;
        };
        let (p, b) = names(&c, r);
        let what = format!("forced promotion of {b}");
        let sampler = Sampler::start(&c.topo, shared());
        let prober = c.prober();
        wait_for(&format!("{what}: client answered by {p}"), MOVE, || {
            prober.answered_by(p).then_some(())
        });
        c.signal(r.primary, Signal::SIGSTOP);
        c.signal(r.witness, Signal::SIGSTOP);
        let stopped_at = sampler.started.elapsed();
        // The administrator forces once the primary is evidently gone: a
        // forced swap asked while the backup heard the primary less than a
        // primary timeout ago is done as a planned swap (and refused).
        let a_id = c.nodes[r.primary].id;
        wait_for(&format!("{what}: {b} to see {p} unreachable"), MOVE, || {
            c.status(r.backup)
                .filter(|s| s.peers.iter().any(|x| x.id == a_id && !x.reachable))
        });
        let since_leader = Duration::from_millis(timeout_ms());
        let frozen = sampler.started.elapsed() - stopped_at;
        if frozen < since_leader {
            std::thread::sleep(since_leader - frozen);
        }
        let (status, body) = c.swap(r.backup, true).expect("the forced swap answered");
        assert_eq!(status.as_u16(), 200, "{what}: {body}");
        assert!(body.contains("\"forced\":true"), "{what}: {body}");
        wait_for(
            &format!("{what}: {b} to hold the address and answer the client"),
            MOVE,
            || {
                (c.holders().contains(&b) && prober.answered_by(b) && c.held_by_status(r.backup))
                    .then_some(())
            },
        );
        let taken_at = sampler.started.elapsed();

        // The old primary runs again: it must stay fenced, holding nothing.
        let resumed_probe = prober.started.elapsed();
        c.signal(r.primary, Signal::SIGCONT);
        wait_for(
            &format!("{what}: {b} alone to hold the address after SIGCONT"),
            MOVE,
            || (c.holders() == vec![b]).then_some(()),
        );
        let ps = wait_for(&format!("{what}: {p}'s status"), MOVE, || {
            c.status(r.primary)
                .filter(|s| s.this_host.shared_ips_held.is_empty())
        });
        assert_ne!(
            ps.this_host.role, "primary",
            "{what}: {p} {:?}",
            ps.this_host
        );
        assert!(c.held_by_status(r.backup), "{what}: {b}'s status");
        // The witness runs again too: with it the old primary has a
        // majority of the old membership, yet it must learn the forced
        // epoch (fencing) and never serve or take the address again.
        let forced_epoch = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["epoch"].as_u64())
            .unwrap_or_else(|| panic!("{what}: no epoch in {body}"));
        c.signal(r.witness, Signal::SIGCONT);
        let mut last = None;
        let deadline = Instant::now() + MOVE;
        let pw = loop {
            let st = c.status(r.primary);
            // Fenced: its status names the forced epoch that replaced it.
            let fenced = |s: &tandem_web::StatusView| {
                s.this_host.epoch >= forced_epoch
                    || s.this_host
                        .notes
                        .iter()
                        .any(|n| n.contains(&format!("Forced, its epoch {forced_epoch}")))
            };
            if let Some(s) = st.as_ref().filter(|s| fenced(s)) {
                break s.clone();
            }
            last = st.or(last);
            assert!(
                Instant::now() < deadline,
                "{what}: {p} was not fenced by epoch {forced_epoch} within {MOVE:?} after the \
                 witness resumed; its status: {last:#?}\nwitness: {:#?}\nholders {:?}",
                c.status(r.witness),
                c.holders()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_ne!(
            pw.this_host.role, "primary",
            "{what}: {p} {:?}",
            pw.this_host
        );
        wait_for(
            &format!("{what}: {b}'s status after the witness resumed"),
            MOVE,
            || c.status(r.backup).filter(|s| s.this_host.role == "primary"),
        );
        assert_eq!(c.holders(), vec![b], "{what}");
        let probes = prober.finish();
        let samples = sampler.finish();

        assert_single_holder(&samples, &what);
        let last_p = samples
            .iter()
            .filter(|s| s.holders.contains(&p))
            .map(|s| s.at)
            .next_back();
        assert!(
            last_p.is_none_or(|t| t < taken_at),
            "{what}: {p} held the address at {last_p:?}, after {b} took it"
        );
        assert!(
            probes
                .iter()
                .filter(|x| x.at >= resumed_probe)
                .all(|x| x.answer.as_deref() != Some(p)),
            "{what}: the client was answered by {p} after it resumed"
        );
        println!(
            "{what}: {p}'s guard released the address {:?} ms after it froze; {b} held it {} ms \
             after; {p} is now {:?}, then {:?} at epoch {} (notes {:?}); client gap {} ms",
            last_p.map(|t| t.saturating_sub(stopped_at).as_millis()),
            (taken_at - stopped_at).as_millis(),
            ps.this_host.role,
            pw.this_host.role,
            pw.epoch,
            pw.this_host.notes,
            longest_gap(&probes, Duration::ZERO).as_millis()
        );
    }
}

mod restart_of_the_old_primary {
    use super::*;

    #[test]
    fn old_primary_restarts_as_backup_without_the_address() {
        let Some((_g, mut c, r)) = setup("old_primary_restarts_as_backup_without_the_address")
        else {
            return;
        };
        let (p, b) = names(&c, r);
        let what = format!("crash of {p}");
        let (m, next) = crash(&mut c, r, &what);
        m.report(&what, p, b);
        let roles = restart_old(
            &mut c,
            r.primary,
            next.primary,
            &format!("restart of {p}"),
            true,
        );
        assert_eq!(roles.primary, r.backup);
        assert_eq!(c.holders(), vec![b]);
        assert!(c
            .status(r.primary)
            .is_some_and(|s| s.this_host.role == "backup"
                && !s
                    .this_host
                    .shared_ips_held
                    .contains(&SHARED_CIDR.to_string())));
    }
}

/// The benchmark: crash, cut-off and planned swap, `TANDEM_BENCH_RUNS`
/// (default 10) times each on one relationship, printing the client-visible
/// gap (min/p50/max ms). Every run also checks the single-holder rule.
/// The port of the checked service in each appliance's namespace.
const SERVICE_PORT: u16 = 18080;

/// Waits until the service check is healthy on both appliances.
fn wait_checks_healthy(c: &NetCluster, r: Roles) {
    for i in [r.primary, r.backup] {
        wait_for("the check healthy on both appliances", SETTLE, || {
            c.health(i).filter(|h| {
                h.checks
                    .iter()
                    .any(|k| k.name == "web" && k.state == "healthy")
            })
        });
    }
}
mod service_check {
    use super::*;

    /// An HTTP service check failing on the primary: a planned swap moves
    /// the role, and the shared address follows, never held twice.
    #[test]
    fn a_failing_service_check_moves_the_address_to_the_backup() {
        let Some((_g, mut c, r)) = setup("a_failing_service_check_moves_the_address_to_the_backup")
        else {
            return;
        };
        let (p, b) = names(&c, r);
        let on_p = CheckedService::start(&c.topo, p, SERVICE_PORT);
        let _on_b = CheckedService::start(&c.topo, b, SERVICE_PORT);
        c.put_settings(r.primary, |v| {
            v["checks"] = serde_json::json!([{
                "name": "web", "kind": "http",
                "target": format!("http://127.0.0.1:{SERVICE_PORT}/"),
                "interval_ms": 100, "timeout_ms": 100, "rise": 2, "fall": 3
            }]);
        });
        wait_checks_healthy(&c, r);
        let what = format!("service check failing on {p}");
        let m = observe(&mut c, p, b, &what, |_| on_p.set_up(false));
        m.report(&what, p, b);
        assert_single_holder(&m.samples, &what);
        assert_released_before_taken(&m, p, b, &what);
        let next = c.wait_roles(SETTLE);
        assert_eq!(next.primary, r.backup, "{what}: roles {next:?}");
        let history: serde_json::Value = c
            .get_json(r.backup, "/api/v1/history?kind=swap&limit=10")
            .expect("history");
        assert!(
            history["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["actor"] == "tandem (check web)"),
            "{what}: {history}"
        );
    }
}

#[test]
#[ignore = "benchmark (a command): cargo test -p tandem-tests --test shared_ip_e2e -- --ignored --nocapture bench"]
fn bench_shared_ip_gap() {
    let Some((_g, mut c, mut r)) = setup("bench_shared_ip_gap") else {
        return;
    };
    let runs: usize = std::env::var("TANDEM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // `TANDEM_BENCH_SCENARIOS=crash,check` runs only those (default: all).
    let only = std::env::var("TANDEM_BENCH_SCENARIOS").unwrap_or_default();
    let runs_of = |name: &str| {
        if only.is_empty() || only.split(',').any(|s| s.trim() == name) {
            runs
        } else {
            0
        }
    };
    let mut gaps: Vec<(&str, Vec<u128>)> = vec![
        ("crash", Vec::new()),
        ("cut-off", Vec::new()),
        ("swap", Vec::new()),
    ];
    for k in 0..runs_of("crash") {
        let what = format!("bench crash {k}");
        let old = r.primary;
        let (m, next) = crash(&mut c, r, &what);
        m.report(&what, c.nodes[old].name, c.nodes[next.primary].name);
        gaps[0].1.push(m.gap.as_millis());
        r = restart_old(
            &mut c,
            old,
            next.primary,
            &format!("bench restart {k}"),
            true,
        );
    }
    for k in 0..runs_of("cut-off") {
        let what = format!("bench cut-off {k}");
        let (p, b) = names(&c, r);
        let (m, next) = cut_off(&mut c, r, &what);
        m.report(&what, p, b);
        gaps[1].1.push(m.gap.as_millis());
        r = next;
    }
    for k in 0..runs_of("swap") {
        let what = format!("bench swap {k}");
        let (p, b) = names(&c, r);
        let (m, next) = swap(&mut c, r, &what);
        m.report(&what, p, b);
        gaps[2].1.push(m.gap.as_millis());
        r = next;
    }
    // A service check failing on the primary (the default check: interval
    // 2 s, timeout 1 s, rise 2, fall 3; no hold-down between runs): from its
    // `fall`-th failed answer to the client answered by the backup over the
    // shared address.
    let services: Vec<CheckedService> = ["a", "b"]
        .iter()
        .filter(|_| runs_of("check") > 0)
        .map(|h| CheckedService::start(&c.topo, h, SERVICE_PORT))
        .collect();
    let service = |name: &str| &services[usize::from(name == "b")];
    if runs_of("check") > 0 {
        c.put_settings(r.primary, |v| {
            v["checks"] = serde_json::json!([{
                "name": "web", "kind": "http",
                "target": format!("http://127.0.0.1:{SERVICE_PORT}/")
            }]);
            v["check_hold_down_secs"] = serde_json::json!(0);
        });
    }
    let mut fall_to_ip = Vec::new();
    for k in 0..runs_of("check") {
        let what = format!("bench check {k}");
        let (p, b) = names(&c, r);
        wait_checks_healthy(&c, r);
        let m = observe(&mut c, p, b, &what, |_| service(p).set_up(false));
        m.report(&what, p, b);
        let fall = *service(p)
            .failures()
            .get(2)
            .unwrap_or_else(|| panic!("{what}: fewer than 3 failed answers"));
        let answered = m
            .probes
            .iter()
            .map(|x| (m.prober_started + x.at, x))
            .find(|(at, x)| *at > fall && x.answer.as_deref() == Some(b))
            .map(|(at, _)| at)
            .unwrap_or_else(|| panic!("{what}: {b} never answered after the fall"));
        fall_to_ip.push((answered - fall).as_millis());
        service(p).set_up(true);
        r = c.wait_roles(SETTLE);
    }
    gaps.push(("check", fall_to_ip));
    println!(
        "shared-IP client-visible gap (check: from the check's fall-th failed answer to the backup answering), primary timeout {} ms, {runs} runs each, nodes {}:",
        timeout_ms(),
        tandem_tests::tandem_bin().display()
    );
    for (name, mut v) in gaps {
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        let p50 = v[v.len() / 2];
        println!(
            "  {name:8} min {:5} ms  p50 {p50:5} ms  max {:5} ms  all {v:?}",
            v[0],
            v[v.len() - 1]
        );
    }
}
