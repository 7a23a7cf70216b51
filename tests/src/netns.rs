//! Network-namespace harness for the shared-IP tests.
//!
//! [`Topology::create`] builds, with `ip` from iproute2:
//!
//! ```text
//!   <p>sw:  br0 ── v-a ─┐ ── v-b ─┐ ── v-w ─┐ ── v-client ─┐
//!   <p>a:   eth0 198.51.100.11/24  2001:db8:100::11/64
//!   <p>b:   eth0 198.51.100.12/24  2001:db8:100::12/64
//!   <p>w:   eth0 198.51.100.13/24  2001:db8:100::13/64
//!   <p>client: eth0 198.51.100.20/24  2001:db8:100::20/64
//! ```
//!
//! where `<p>` is `tdm<pid>x<n>-`, unique per topology of this process. Only
//! documentation ranges are used, and only inside these namespaces. Dropping
//! the topology (also while panicking) deletes every namespace it created;
//! namespaces left by a process that no longer exists (`tdm<pid>x…` with a
//! dead pid) are removed when a topology is created.
//!
//! [`netns_or_skip`] is the gate every test calls first: it says why
//! namespaces cannot be used and fails when `CI=true`, else the test skips.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The IPv4 test network (TEST-NET-2).
pub const NET4: &str = "198.51.100";
/// The IPv6 test network (documentation prefix).
pub const NET6: &str = "2001:db8:100";
/// The interface name inside every node and client namespace.
pub const IFACE: &str = "eth0";
/// The namespaces of a topology besides the switch.
pub const HOSTS: [&str; 4] = ["a", "b", "w", "client"];

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Host part of each host's address.
pub fn host_octet(name: &str) -> u8 {
    match name {
        "a" => 11,
        "b" => 12,
        "w" => 13,
        _ => 20,
    }
}

/// IPv4 address of `name` (`a`, `b`, `w`, `client`).
pub fn addr4(name: &str) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, host_octet(name))
}

/// IPv6 address of `name`.
pub fn addr6(name: &str) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x100,
        0,
        0,
        0,
        0,
        u16::from(host_octet(name)),
    )
}

/// Runs `ip ARGS`, returning its output (never panics).
pub fn ip(args: &[&str]) -> std::io::Result<Output> {
    Command::new("ip").args(args).output()
}

/// Runs `ip ARGS` and fails with its stderr unless it succeeds.
///
/// # Errors
/// `ip` cannot run or exits non-zero.
pub fn ip_ok(args: &[&str]) -> anyhow::Result<String> {
    let o = ip(args)?;
    if !o.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Why namespaces cannot be used here, if they cannot.
pub fn netns_unavailable() -> Option<String> {
    if !crate::is_root() {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    match ip(&["-V"]) {
        Err(e) => return Some(format!("`ip` (iproute2) cannot run: {e}")),
        Ok(o) if !o.status.success() => return Some("`ip -V` failed".into()),
        Ok(_) => {}
    }
    let probe = format!(
        "tdm{}probe{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    match ip(&["netns", "add", &probe]) {
        Ok(o) if o.status.success() => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Ok(o) => Some(format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip netns add`: {e}")),
    }
}

/// The gate of every namespace test: `true` to go on. When namespaces are
/// unavailable it prints why and returns `false` (skip), or panics when
/// `CI=true` (CI must run these tests).
pub fn netns_or_skip(test: &str) -> bool {
    let Some(why) = netns_unavailable() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: network namespaces are required in CI: {why}");
    }
    println!("{test}: SKIPPED: {why}");
    false
}

/// Deletes namespaces left by earlier test processes that died (kill -9,
/// aborted run): names `tdm<pid>x…` whose pid is gone.
pub fn remove_stale() {
    let Ok(o) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("tdm") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A switch namespace with a bridge and one namespace per host.
#[derive(Debug)]
pub struct Topology {
    /// Name prefix of every namespace.
    pub prefix: String,
    created: Vec<String>,
}

impl Topology {
    /// Builds the topology (see the module documentation).
    ///
    /// # Errors
    /// An `ip` command fails; whatever was created is deleted.
    pub fn create() -> anyhow::Result<Self> {
        remove_stale();
        let prefix = format!(
            "tdm{}x{}-",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut t = Self {
            prefix,
            created: Vec::new(),
        };
        let sw = t.ns("sw");
        ip_ok(&["netns", "add", &sw])?;
        t.created.push(sw.clone());
        ip_ok(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip_ok(&["-n", &sw, "link", "set", "br0", "up"])?;
        ip_ok(&["-n", &sw, "link", "set", "lo", "up"])?;
        for h in HOSTS {
            let ns = t.ns(h);
            ip_ok(&["netns", "add", &ns])?;
            t.created.push(ns.clone());
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"])?;
            t.plug(h)?;
        }
        Ok(t)
    }

    /// Connects host `h` to the switch: a veth pair (`v-<h>` on the bridge,
    /// [`IFACE`] in `h`) and `h`'s own addresses. Done by [`Topology::create`];
    /// call it again after [`Topology::unplug`].
    ///
    /// # Errors
    /// An `ip` command fails.
    pub fn plug(&self, h: &str) -> anyhow::Result<()> {
        let sw = self.ns("sw");
        let ns = self.ns(h);
        let port = format!("v-{h}");
        ip_ok(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", IFACE, "netns", &ns,
        ])?;
        ip_ok(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
        ip_ok(&["-n", &ns, "link", "set", IFACE, "up"])?;
        let a4 = format!("{}/24", addr4(h));
        let a6 = format!("{}/64", addr6(h));
        ip_ok(&["-n", &ns, "addr", "add", &a4, "dev", IFACE])?;
        ip_ok(&["-n", &ns, "addr", "add", &a6, "dev", IFACE, "nodad"])?;
        Ok(())
    }

    /// Pulls host `h` off the network as a machine that loses power does:
    /// its [`IFACE`] (and the veth end on the switch) is deleted, and with
    /// it every address on it, the shared ones included.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn unplug(&self, h: &str) -> anyhow::Result<()> {
        self.ip(h, &["link", "del", IFACE]).map(drop)
    }

    /// Sets [`IFACE`] of host `h` down or up (the host is cut off from every
    /// peer but keeps its addresses).
    ///
    /// # Errors
    /// `ip` fails.
    pub fn set_link(&self, h: &str, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        self.ip(h, &["link", "set", IFACE, state]).map(drop)
    }

    /// Full namespace name of host `h` (`a`, `b`, `w`, `client`, `sw`).
    pub fn ns(&self, h: &str) -> String {
        format!("{}{h}", self.prefix)
    }

    /// `ip -n <ns of h> ARGS`.
    ///
    /// # Errors
    /// As [`ip_ok`].
    pub fn ip(&self, h: &str, args: &[&str]) -> anyhow::Result<String> {
        let ns = self.ns(h);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        ip_ok(&all)
    }

    /// A command that runs `program` inside host `h` (`ip netns exec`).
    pub fn command(&self, h: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(self.ns(h)).arg(program);
        c
    }

    /// MAC address of [`IFACE`] in host `h`.
    ///
    /// # Errors
    /// `ip` fails or prints something unexpected.
    pub fn mac(&self, h: &str) -> anyhow::Result<String> {
        let out = self.ip(h, &["-j", "link", "show", IFACE])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["address"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no address in {out}"))
    }

    /// Whether `addr` (without prefix) is configured in host `h`.
    pub fn has_addr(&self, h: &str, addr: IpAddr) -> bool {
        self.ip(h, &["-j", "addr", "show"])
            .ok()
            .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
            .and_then(|v| {
                v.as_array().map(|links| {
                    links.iter().any(|l| {
                        l["addr_info"].as_array().is_some_and(|infos| {
                            infos
                                .iter()
                                .any(|i| i["local"].as_str() == Some(&addr.to_string()))
                        })
                    })
                })
            })
            .unwrap_or(false)
    }

    /// The hosts holding `addr` right now.
    pub fn holders(&self, addr: IpAddr) -> Vec<&'static str> {
        HOSTS
            .into_iter()
            .filter(|h| self.has_addr(h, addr))
            .collect()
    }

    /// The link-layer address host `h` has for `addr` in its neighbour
    /// table (lower case), if any.
    pub fn neighbour_mac(&self, h: &str, addr: IpAddr) -> Option<String> {
        let out = self
            .ip(h, &["-j", "neigh", "show", &addr.to_string()])
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v.as_array()?
            .iter()
            .find_map(|e| e["lladdr"].as_str().map(str::to_lowercase))
    }

    /// Runs `f` on a dedicated thread inside host `h`'s network namespace,
    /// with a current-thread Tokio runtime (threads it starts, such as
    /// `spawn_blocking`, inherit the namespace). Sockets created there stay
    /// in that namespace after `f` returns.
    ///
    /// # Panics
    /// The namespace cannot be entered, or `f` panics.
    pub fn run_in<F, Fut, R>(&self, h: &str, f: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        let path = format!("/var/run/netns/{}", self.ns(h));
        std::thread::scope(|s| {
            s.spawn(move || {
                let file =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Polls `probe` every 10 ms until it returns `Some`, at most `timeout`.
    pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
        let start = Instant::now();
        let max_rounds = timeout.as_millis() / 10 + 1;
        for _ in 0..max_rounds {
            if let Some(v) = probe() {
                return Some(v);
            }
            if start.elapsed() >= timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Hosts first, the switch last; deleting a namespace removes its
        // veth ends and the bridge.
        for ns in self.created.iter().rev() {
            if let Ok(o) = ip(&["netns", "del", ns]) {
                if !o.status.success() {
                    eprintln!(
                        "netns teardown: ip netns del {ns}: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
            }
        }
    }
}

/// One observation of the [`Sampler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Time since the sampler started.
    pub at: Duration,
    /// Hosts holding the address at that instant.
    pub holders: Vec<&'static str>,
}

/// Records every 10 ms which hosts hold an address. One thread enters each
/// host's namespace in turn (`setns`) and tries to bind a UDP socket to the
/// address: that succeeds exactly where the address is local, so a sample is
/// a near-instant snapshot (tens of microseconds for all hosts).
pub struct Sampler {
    /// When sampling started (the origin of every [`Sample::at`]).
    pub started: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
}

/// Bound on the samples of one [`Sampler`] or [`Prober`] (10 min at 10 ms).
pub const MAX_SAMPLES: usize = 60_000;

impl Sampler {
    /// Starts sampling `addr` in every host of `t`.
    ///
    /// # Panics
    /// A namespace cannot be opened.
    pub fn start(t: &Topology, addr: IpAddr) -> Self {
        let fds: Vec<(&'static str, std::fs::File)> = HOSTS
            .into_iter()
            .map(|h| {
                let p = format!("/var/run/netns/{}", t.ns(h));
                (
                    h,
                    std::fs::File::open(&p).unwrap_or_else(|e| panic!("open {p}: {e}")),
                )
            })
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop2.load(Ordering::SeqCst) && samples.len() < MAX_SAMPLES {
                let at = start.elapsed();
                let mut holders = Vec::new();
                for (h, f) in &fds {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    if std::net::UdpSocket::bind(std::net::SocketAddr::new(addr, 0)).is_ok() {
                        holders.push(*h);
                    }
                }
                samples.push(Sample { at, holders });
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        Self {
            started: start,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the samples.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().expect("sampler thread"))
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Samples in which more than one host held the address.
pub fn overlaps(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| s.holders.len() > 1).collect()
}

/// One TCP probe of the [`Prober`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Time since the prober started.
    pub at: Duration,
    /// What answered (the first line the server sent), if anything did.
    pub answer: Option<String>,
}

/// From the client namespace, connects to `addr` every 10 ms (each attempt
/// bounded by 100 ms) and records who answered: the servers write their
/// name and close (an HTTP endpoint naming the node, or [`NameServer`]).
/// [`Prober::start_with`] takes any probe (e.g. an HTTPS `/health`).
pub struct Prober {
    /// When probing started (the origin of every [`Probe::at`]).
    pub started: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    probes: std::sync::Arc<std::sync::Mutex<Vec<Probe>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Starts probing `target` from host `from` of `t`.
    ///
    /// # Panics
    /// The namespace cannot be opened.
    pub fn start(t: &Topology, from: &str, target: std::net::SocketAddr) -> Self {
        Self::start_with(t, from, move || probe_once(target))
    }

    /// Runs `probe` every 10 ms inside host `from`; what it returns is the
    /// answer (`None`: nobody answered).
    ///
    /// # Panics
    /// The namespace cannot be opened.
    pub fn start_with<F>(t: &Topology, from: &str, probe: F) -> Self
    where
        F: FnMut() -> Option<String> + Send + 'static,
    {
        Self::start_lanes(t, from, vec![probe])
    }

    /// Like [`Prober::start_with`] with one sequential probe loop per
    /// element of `lanes`, the loops started 10 ms / `lanes.len()` apart: a
    /// probe stuck on a connection whose address went away does not hold up
    /// the next one. Probes are ordered by their start time.
    ///
    /// # Panics
    /// The namespace cannot be opened, or `lanes` is empty.
    pub fn start_lanes<F>(t: &Topology, from: &str, lanes: Vec<F>) -> Self
    where
        F: FnMut() -> Option<String> + Send + 'static,
    {
        assert!(!lanes.is_empty(), "a prober needs a lane");
        let p = format!("/var/run/netns/{}", t.ns(from));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Instant::now();
        let n_lanes = u32::try_from(lanes.len()).unwrap_or(u32::MAX);
        let threads = lanes
            .into_iter()
            .zip(0u32..)
            .map(|(mut probe, k)| {
                let f = std::fs::File::open(&p).unwrap_or_else(|e| panic!("open {p}: {e}"));
                let (stop, probes) = (stop.clone(), probes.clone());
                std::thread::spawn(move || {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    std::thread::sleep(Duration::from_millis(10) * k / n_lanes);
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && n < MAX_SAMPLES {
                        let at = started.elapsed();
                        let answer = probe();
                        probes
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(Probe { at, answer });
                        n += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Self {
            started,
            stop,
            probes,
            threads,
        }
    }

    /// The newest probe so far (by start time, among the finished ones).
    pub fn latest(&self) -> Option<Probe> {
        self.probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .max_by_key(|p| p.at)
            .cloned()
    }

    /// Whether the newest probe was answered by `name`.
    pub fn answered_by(&self, name: &str) -> bool {
        self.latest()
            .is_some_and(|p| p.answer.as_deref() == Some(name))
    }

    /// Stops and returns the probes, ordered by start time.
    pub fn finish(mut self) -> Vec<Probe> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("prober thread");
        }
        let mut probes = std::mem::take(
            &mut *self
                .probes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        probes.sort_by_key(|p| p.at);
        probes
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn probe_once(target: std::net::SocketAddr) -> Option<String> {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)).ok()?;
    c.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.lines()
        .next()
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

/// The longest time between two answered probes (the client-visible gap),
/// counted from the last answer before `after` on.
pub fn longest_gap(probes: &[Probe], after: Duration) -> Duration {
    let mut last_ok: Option<Duration> = None;
    let mut worst = Duration::ZERO;
    for p in probes {
        if p.answer.is_some() {
            if let Some(l) = last_ok {
                if p.at >= after {
                    worst = worst.max(p.at - l);
                }
            }
            last_ok = Some(p.at);
        }
    }
    worst
}

/// A TCP server in host `h` on `0.0.0.0:port` and `[::]:port` that writes
/// `name\n` to every connection and closes it; stops on drop.
pub struct NameServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NameServer {
    /// Starts it.
    ///
    /// # Panics
    /// The listeners cannot be created.
    pub fn start(t: &Topology, h: &str, port: u16) -> Self {
        let listeners = t.run_in(h, || async move {
            let v4 = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind v4");
            let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                .expect("v6 socket");
            v6.set_only_v6(true).expect("v6only");
            v6.set_reuse_address(true).expect("reuse");
            v6.bind(&std::net::SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())
                .expect("bind v6");
            v6.listen(128).expect("listen");
            vec![v4, std::net::TcpListener::from(v6)]
        });
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let name = h.to_owned();
        let threads = listeners
            .into_iter()
            .map(|l| {
                let stop = stop.clone();
                let name = name.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    l.set_nonblocking(true).expect("nonblocking");
                    while !stop.load(Ordering::SeqCst) {
                        match l.accept() {
                            Ok((mut c, _)) => {
                                let _ = c.write_all(format!("{name}\n").as_bytes());
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// An HTTP server in host `h` on `127.0.0.1:port` (that namespace's own
/// loopback) for service checks: it answers every request with 200 or 503
/// as the test says; stops on drop.
pub struct CheckedService {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CheckedService {
    /// Starts it, answering 200.
    ///
    /// # Panics
    /// The listener cannot be created.
    pub fn start(t: &Topology, h: &str, port: u16) -> Self {
        let listener = t.run_in(h, || async move {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the checked service")
        });
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (up, stop, failures) = (up.clone(), stop.clone(), failures.clone());
            move || {
                use std::io::{Read, Write};
                listener.set_nonblocking(true).expect("nonblocking");
                while !stop.load(Ordering::SeqCst) {
                    let Ok((mut c, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                    // The request head (bounded), then the answer.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, body) = if up.load(Ordering::SeqCst) {
                        ("200 OK", "up")
                    } else {
                        ("503 Service Unavailable", "down")
                    };
                    let _ = c.write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    if body == "down" {
                        failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(Instant::now());
                    }
                }
            }
        });
        Self {
            up,
            failures,
            stop,
            thread: Some(thread),
        }
    }

    /// Answers 200 (`true`) or 503 from now on (and forgets the failures
    /// answered so far).
    pub fn set_up(&self, up: bool) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.up.store(up, Ordering::SeqCst);
    }

    /// When it answered each 503 since the last [`Self::set_up`].
    pub fn failures(&self) -> Vec<Instant> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for CheckedService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
