//! Shared IPs: the addresses that follow the primary (`../shared/DESIGN.md` §7).
//!
//! - [`SharedIpSpec`]: one address with its prefix and this node's interface,
//!   parsed from the replicated settings ([`specs_for_node`]).
//! - [`SharedIpDriver`]: how an address is taken and given up. Three drivers:
//!   [`NetlinkDriver`] (Linux: netlink add/remove, then gratuitous ARP or
//!   unsolicited neighbour advertisement, repeated), [`ScriptDriver`] (the
//!   administrator's command, for cloud floating-IP APIs) and [`NoneDriver`]
//!   (log only; the demo default).
//! - [`SharedIpManager`]: reconciles "should this node hold them, at which
//!   epoch" with what the driver holds, retries failures with backoff, keeps
//!   the events for the history, and after a takeover checks that a gateway
//!   or test IP answers *from* the shared address.
//!
//! The manager never decides who is primary: the role manager tells it
//! ([`SharedIpHandle::set_desired`]) on every tick, and calls
//! [`SharedIpHandle::release_all`] on demotion, lease loss and break.
//!
//! A release for a hand-over ([`SharedIpHandle::release_for_hand_over`]) or
//! a shutdown ([`SharedIpHandle::release_for_shutdown`]) is final (DESIGN
//! rule 6): the manager itself refuses every later acquisition at that epoch
//! or below (after a shutdown release, at any epoch), whatever the role
//! manager still asks for on a tick that raced with the release.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{SharedIpConfig, SharedIpDriverKind};
use crate::settings::SharedIp;
use crate::util::{lock, now_ms, AbortOnDrop};

/// A boxed, sendable future (keeps [`SharedIpDriver`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Events kept for the history until drained.
const MAX_EVENTS: usize = 256;
/// First retry delay after a failure; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay for an acquire.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Longest retry delay for a release (giving up an address is urgent).
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(1);
/// How often the background loop re-queries what is held when nothing changes.
const HELD_REFRESH: Duration = Duration::from_secs(2);
/// Bound on one reachability probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One shared address as this node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SharedIpSpec {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The interface it lives on, on this node.
    pub interface: String,
}

/// A shared-IP entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared IP {input:?}: {reason}")]
pub struct SpecError {
    /// What was given.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

impl SharedIpSpec {
    /// Parses `address/prefix` (`192.0.2.10/24`, `2001:db8::10/64`) for
    /// `interface`. A missing prefix means a host address (/32 or /128).
    ///
    /// # Errors
    /// Malformed address or prefix, unspecified or multicast address, or an
    /// empty or over-long interface name.
    pub fn parse(address: &str, interface: &str) -> Result<Self, SpecError> {
        let err = |reason: String| SpecError {
            input: address.to_owned(),
            reason,
        };
        let (ip, prefix) = match address.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (address.trim(), None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| err(format!("{ip:?} is not an IP address")))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=max).contains(p))
                .ok_or_else(|| err(format!("prefix {p:?} is not in 1..={max}")))?,
        };
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(err("unspecified or multicast address".into()));
        }
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ', '\0']) {
            return Err(err(format!("bad interface name {interface:?}")));
        }
        Ok(Self {
            address: ip,
            prefix,
            interface: interface.to_owned(),
        })
    }

    /// `address/prefix`, the form status and the settings use.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }

    /// Identity of the spec inside the manager.
    fn key(&self) -> String {
        format!("{}@{}", self.cidr(), self.interface)
    }
}

impl fmt::Display for SharedIpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.cidr(), self.interface)
    }
}

/// The specs this node (`node_name`) should hold when primary: every
/// settings entry with an interface for it. Entries without one are skipped
/// (the other node holds them elsewhere or the settings are incomplete);
/// entries that do not parse are returned as errors (the settings API
/// validates them, so this only happens with hand-made documents).
pub fn specs_for_node(shared: &[SharedIp], node_name: &str) -> (Vec<SharedIpSpec>, Vec<SpecError>) {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for s in shared {
        let Some(iface) = s.interfaces.get(node_name) else {
            continue;
        };
        match SharedIpSpec::parse(&s.address, iface) {
            Ok(spec) if !specs.contains(&spec) => specs.push(spec),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    (specs, errors)
}

/// A driver failure, with whatever the driver could say about it (for a
/// script: its exit status and output).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

impl DriverError {
    fn new(what: impl fmt::Display) -> Self {
        Self(what.to_string())
    }
}

/// How shared addresses are taken and given up.
///
/// `acquire` and `release` are idempotent and return a human-readable note
/// for the history (a script's output, "already present"…). `held` asks the
/// system (not the driver's memory, where it can) which of `specs` are
/// present now and returns their `address/prefix`.
pub trait SharedIpDriver: Send + Sync {
    /// `none`, `netlink` or `script`.
    fn name(&self) -> &'static str;
    /// Takes `spec` for `epoch` (and announces it).
    fn acquire<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>>;
    /// Gives `spec` up.
    fn release<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>>;
    /// Which of `specs` are present now (`address/prefix`).
    fn held<'a>(
        &'a self,
        specs: &'a [SharedIpSpec],
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>>;
}

/// Builds the driver `cfg` names.
///
/// # Errors
/// `script` without a script path.
pub fn driver_from_config(cfg: &SharedIpConfig) -> Result<Arc<dyn SharedIpDriver>, DriverError> {
    Ok(match cfg.driver {
        SharedIpDriverKind::None => Arc::new(NoneDriver::default()),
        SharedIpDriverKind::Netlink => {
            Arc::new(NetlinkDriver::new(AnnounceSchedule::from_config(cfg)))
        }
        SharedIpDriverKind::Script => {
            let script = cfg.script.clone().ok_or_else(|| {
                DriverError::new(
                    "[shared_ip] driver = \"script\" needs script = \"/path/to/command\"",
                )
            })?;
            Arc::new(ScriptDriver::new(
                script,
                Duration::from_secs(cfg.script_timeout_secs.max(1)),
            ))
        }
    })
}

// ---------------------------------------------------------------- none

/// Logs only and holds nothing on the system; remembers what it "acquired"
/// so that status shows something meaningful in the demo.
#[derive(Debug, Default)]
pub struct NoneDriver {
    held: Mutex<BTreeSet<SharedIpSpec>>,
}

impl SharedIpDriver for NoneDriver {
    fn name(&self) -> &'static str {
        "none"
    }
    fn acquire<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            tracing::info!(%spec, epoch, "shared IP acquired (driver none: nothing changed on the system)");
            lock(&self.held).insert(spec.clone());
            Ok("driver none: logged only".to_owned())
        })
    }
    fn release<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            tracing::info!(%spec, epoch, "shared IP released (driver none: nothing changed on the system)");
            lock(&self.held).remove(spec);
            Ok("driver none: logged only".to_owned())
        })
    }
    fn held<'a>(
        &'a self,
        specs: &'a [SharedIpSpec],
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let held = lock(&self.held);
            Ok(specs
                .iter()
                .filter(|s| held.contains(*s))
                .map(SharedIpSpec::cidr)
                .collect())
        })
    }
}

// ---------------------------------------------------------------- script

/// Runs `<script> <acquire|release|check> <address/prefix> <interface> <epoch>`.
/// Exit status 0 is success (for `check`: the address is held here).
#[derive(Debug, Clone)]
pub struct ScriptDriver {
    script: PathBuf,
    timeout: Duration,
}

/// What one run of the script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// Exit code (None: killed by a signal or by the timeout).
    pub code: Option<i32>,
    /// Whether it ran out of time.
    pub timed_out: bool,
    /// stdout and stderr, trimmed and bounded.
    pub output: String,
}

impl ScriptDriver {
    /// A driver running `script`, each run bounded by `timeout`.
    pub fn new(script: PathBuf, timeout: Duration) -> Self {
        Self { script, timeout }
    }

    /// Runs the script once.
    ///
    /// # Errors
    /// The script cannot be started.
    pub async fn run(
        &self,
        action: &str,
        spec: &SharedIpSpec,
        epoch: u64,
    ) -> Result<ScriptOutcome, DriverError> {
        let mut cmd = tokio::process::Command::new(&self.script);
        cmd.arg(action)
            .arg(spec.cidr())
            .arg(&spec.interface)
            .arg(epoch.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| DriverError(format!("cannot run {}: {e}", self.script.display())))?;
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => Ok(ScriptOutcome {
                code: None,
                timed_out: true,
                output: String::new(),
            }),
            Ok(Err(e)) => Err(DriverError(format!("{}: {e}", self.script.display()))),
            Ok(Ok(out)) => {
                let mut text = String::new();
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                if !stdout.trim().is_empty() {
                    text.push_str("stdout: ");
                    text.push_str(stdout.trim());
                }
                if !stderr.trim().is_empty() {
                    if !text.is_empty() {
                        text.push_str("; ");
                    }
                    text.push_str("stderr: ");
                    text.push_str(stderr.trim());
                }
                Ok(ScriptOutcome {
                    code: out.status.code(),
                    timed_out: false,
                    output: bounded(text, 2000),
                })
            }
        }
    }

    async fn run_checked(
        &self,
        action: &str,
        spec: &SharedIpSpec,
        epoch: u64,
    ) -> Result<String, DriverError> {
        let o = self.run(action, spec, epoch).await?;
        let what = format!(
            "{} {action} {} {} {epoch}",
            self.script.display(),
            spec.cidr(),
            spec.interface
        );
        if o.timed_out {
            return Err(DriverError(format!(
                "{what}: timed out after {:?} (killed)",
                self.timeout
            )));
        }
        match o.code {
            Some(0) => Ok(if o.output.is_empty() {
                format!("{what}: ok")
            } else {
                format!("{what}: ok; {}", o.output)
            }),
            code => Err(DriverError(format!(
                "{what}: exit {}{}",
                code.map_or_else(|| "by signal".to_owned(), |c| c.to_string()),
                if o.output.is_empty() {
                    String::new()
                } else {
                    format!("; {}", o.output)
                }
            ))),
        }
    }
}

fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl SharedIpDriver for ScriptDriver {
    fn name(&self) -> &'static str {
        "script"
    }
    fn acquire<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(self.run_checked("acquire", spec, epoch))
    }
    fn release<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(self.run_checked("release", spec, epoch))
    }
    fn held<'a>(
        &'a self,
        specs: &'a [SharedIpSpec],
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let mut held = Vec::new();
            for s in specs {
                let o = self.run("check", s, 0).await?;
                if o.code == Some(0) && !o.timed_out {
                    held.push(s.cidr());
                }
            }
            Ok(held)
        })
    }
}

// ---------------------------------------------------------------- netlink

/// When announcements are sent: `count` at once, `count` more after
/// `repeat_after` (zero: not), then `count` every `refresh` while held
/// (zero: not). Keepalived's habit is 5, then 5 more after 5 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceSchedule {
    /// Announcements per burst.
    pub count: u32,
    /// Delay of the second burst (zero: none).
    pub repeat_after: Duration,
    /// Period of refresh bursts while held (zero: none).
    pub refresh: Duration,
}

impl Default for AnnounceSchedule {
    fn default() -> Self {
        Self {
            count: 5,
            repeat_after: Duration::from_secs(5),
            refresh: Duration::ZERO,
        }
    }
}

impl AnnounceSchedule {
    /// The schedule `[shared_ip]` sets.
    pub fn from_config(cfg: &SharedIpConfig) -> Self {
        Self {
            count: cfg.announce_count,
            repeat_after: Duration::from_secs(cfg.announce_repeat_after_secs),
            refresh: Duration::from_secs(cfg.refresh_secs),
        }
    }
}

/// Linux: adds/removes the address through rtnetlink, then announces it.
pub struct NetlinkDriver {
    schedule: AnnounceSchedule,
    /// Later announcement bursts, per spec key; aborted on release and drop.
    announcers: Mutex<BTreeMap<String, tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for NetlinkDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetlinkDriver")
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

impl Drop for NetlinkDriver {
    fn drop(&mut self) {
        for (_, h) in std::mem::take(&mut *lock(&self.announcers)) {
            h.abort();
        }
    }
}

/// One rtnetlink connection in the calling thread's network namespace.
fn netlink() -> Result<(rtnetlink::Handle, AbortOnDrop), DriverError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| DriverError(format!("opening a netlink socket: {e}")))?;
    Ok((handle, AbortOnDrop(tokio::spawn(conn))))
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Index and MAC address of `name`.
async fn link_info(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<(u32, Option<[u8; 6]>), DriverError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let msg = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(|e| {
            if errno_of(&e) == Some(libc::ENODEV) {
                DriverError(format!("no interface {name:?} on this node"))
            } else {
                DriverError(format!("looking up interface {name:?}: {e}"))
            }
        })?
        .ok_or_else(|| DriverError(format!("no interface {name:?} on this node")))?;
    let mac = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(b);
            Some(m)
        }
        _ => None,
    });
    Ok((msg.header.index, mac))
}

/// The address messages of `ip` on interface `index`.
async fn find_addresses(
    handle: &rtnetlink::Handle,
    index: Option<u32>,
    ip: Option<IpAddr>,
) -> Result<Vec<rtnetlink::packet_route::address::AddressMessage>, DriverError> {
    let mut req = handle.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    if let Some(ip) = ip {
        req = req.set_address_filter(ip);
    }
    req.execute()
        .try_collect()
        .await
        .map_err(|e| DriverError(format!("listing addresses: {e}")))
}

fn message_address(m: &rtnetlink::packet_route::address::AddressMessage) -> Option<IpAddr> {
    use rtnetlink::packet_route::address::AddressAttribute;
    // IPv4: IFA_LOCAL is the address (IFA_ADDRESS is the peer on p2p links).
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

impl NetlinkDriver {
    /// A driver announcing on `schedule`.
    pub fn new(schedule: AnnounceSchedule) -> Self {
        Self {
            schedule,
            announcers: Mutex::new(BTreeMap::new()),
        }
    }

    async fn do_acquire(&self, spec: &SharedIpSpec, epoch: u64) -> Result<String, DriverError> {
        use rtnetlink::packet_route::address::{
            AddressAttribute, AddressFlags, AddressHeaderFlags,
        };
        let (handle, _conn) = netlink()?;
        let (index, mac) = link_info(&handle, &spec.interface).await?;
        let mut req = handle.address().add(index, spec.address, spec.prefix);
        if spec.address.is_ipv6() {
            // No duplicate address detection: a tentative address cannot be
            // used for ~1 s, and the old primary has given it up already.
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let mut note = match req.execute().await {
            Ok(()) => format!("added {spec}"),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => format!("{spec} already present"),
            Err(e) => return Err(DriverError(format!("adding {spec}: {e}"))),
        };
        tracing::info!(%spec, epoch, "shared IP added");
        match announce(spec.clone(), index, mac, self.schedule.count).await {
            Ok(n) => note.push_str(&format!(", announced ×{n}")),
            Err(e) => {
                tracing::warn!(%spec, error = %e, "announcing the shared IP failed");
                note.push_str(&format!(", announcement failed: {e}"));
            }
        }
        self.start_announcer(spec, index, mac);
        Ok(note)
    }

    /// Later bursts: one after `repeat_after`, then every `refresh`.
    fn start_announcer(&self, spec: &SharedIpSpec, index: u32, mac: Option<[u8; 6]>) {
        let sched = self.schedule;
        if sched.count == 0 || (sched.repeat_after.is_zero() && sched.refresh.is_zero()) {
            return;
        }
        let spec2 = spec.clone();
        let task = tokio::spawn(async move {
            if !sched.repeat_after.is_zero() {
                tokio::time::sleep(sched.repeat_after).await;
                if let Err(e) = announce(spec2.clone(), index, mac, sched.count).await {
                    tracing::warn!(spec = %spec2, error = %e, "repeated announcement failed");
                }
            }
            if sched.refresh.is_zero() {
                return;
            }
            loop {
                tokio::time::sleep(sched.refresh).await;
                if let Err(e) = announce(spec2.clone(), index, mac, sched.count).await {
                    tracing::warn!(spec = %spec2, error = %e, "refresh announcement failed");
                }
            }
        });
        if let Some(old) = lock(&self.announcers).insert(spec.key(), task) {
            old.abort();
        }
    }

    async fn do_release(&self, spec: &SharedIpSpec, epoch: u64) -> Result<String, DriverError> {
        if let Some(t) = lock(&self.announcers).remove(&spec.key()) {
            t.abort();
        }
        let (handle, _conn) = netlink()?;
        let index = match link_info(&handle, &spec.interface).await {
            Ok((i, _)) => i,
            // No interface: the address cannot be there.
            Err(_) => return Ok(format!("{spec}: interface absent, nothing to remove")),
        };
        let found = find_addresses(&handle, Some(index), Some(spec.address)).await?;
        let found: Vec<_> = found
            .into_iter()
            .filter(|m| message_address(m) == Some(spec.address))
            .collect();
        if found.is_empty() {
            return Ok(format!("{spec} was not present"));
        }
        for m in found {
            match handle.address().del(m).execute().await {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        errno_of(&e),
                        Some(libc::ENOENT | libc::EADDRNOTAVAIL | libc::ESRCH)
                    ) => {}
                Err(e) => return Err(DriverError(format!("removing {spec}: {e}"))),
            }
        }
        tracing::info!(%spec, epoch, "shared IP removed");
        Ok(format!("removed {spec}"))
    }

    async fn do_held(&self, specs: &[SharedIpSpec]) -> Result<Vec<String>, DriverError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let (handle, _conn) = netlink()?;
        let mut indexes = BTreeMap::new();
        for s in specs {
            if !indexes.contains_key(&s.interface) {
                let i = link_info(&handle, &s.interface).await.ok().map(|(i, _)| i);
                indexes.insert(s.interface.clone(), i);
            }
        }
        let all = find_addresses(&handle, None, None).await?;
        Ok(specs
            .iter()
            .filter(|s| {
                let Some(Some(index)) = indexes.get(&s.interface) else {
                    return false;
                };
                all.iter()
                    .any(|m| m.header.index == *index && message_address(m) == Some(s.address))
            })
            .map(SharedIpSpec::cidr)
            .collect())
    }
}

impl SharedIpDriver for NetlinkDriver {
    fn name(&self) -> &'static str {
        "netlink"
    }
    fn acquire<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(self.do_acquire(spec, epoch))
    }
    fn release<'a>(
        &'a self,
        spec: &'a SharedIpSpec,
        epoch: u64,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(self.do_release(spec, epoch))
    }
    fn held<'a>(
        &'a self,
        specs: &'a [SharedIpSpec],
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(self.do_held(specs))
    }
}

/// Sends `count` announcements of `spec` (blocking syscalls on the blocking
/// pool). Returns how many were sent.
///
/// # Errors
/// The socket cannot be opened or a send fails.
pub async fn announce(
    spec: SharedIpSpec,
    ifindex: u32,
    mac: Option<[u8; 6]>,
    count: u32,
) -> Result<u32, DriverError> {
    if count == 0 {
        return Ok(0);
    }
    tokio::task::spawn_blocking(move || match spec.address {
        IpAddr::V4(ip) => {
            let mac = mac.ok_or_else(|| {
                DriverError(format!(
                    "{}: no Ethernet address, cannot send gratuitous ARP",
                    spec.interface
                ))
            })?;
            send_gratuitous_arp(ifindex, mac, ip, count)
        }
        IpAddr::V6(ip) => send_unsolicited_na(&spec.interface, ifindex, mac, ip, count),
    })
    .await
    .map_err(|e| DriverError(format!("announcement task: {e}")))?
    .map(|()| count)
}

/// The Ethernet frame of a gratuitous ARP request for `ip` from `mac`.
pub fn gratuitous_arp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]); // to broadcast
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac); // sender MAC
    f[28..32].copy_from_slice(&ip.octets()); // sender IP
                                             // target MAC stays zero
    f[38..42].copy_from_slice(&ip.octets()); // target IP = sender IP
    f
}

fn send_gratuitous_arp(
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    count: u32,
) -> Result<(), DriverError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(DriverError(format!(
            "opening an AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let frame = gratuitous_arp_frame(mac, ip);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex =
        i32::try_from(ifindex).map_err(|_| DriverError::new("interface index out of range"))?;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..count {
        // SAFETY: frame and sll are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(DriverError(format!(
                "sending gratuitous ARP for {ip}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// The ICMPv6 body of an unsolicited neighbour advertisement for `ip`
/// (override flag, target link-layer address option when `mac` is known).
/// The kernel fills in the checksum.
pub fn unsolicited_na(ip: Ipv6Addr, mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut p = vec![136u8, 0, 0, 0, 0x20, 0, 0, 0]; // type NA, code, checksum, flags O
    p.extend_from_slice(&ip.octets());
    if let Some(mac) = mac {
        p.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
        p.extend_from_slice(&mac);
    }
    p
}

fn send_unsolicited_na(
    iface: &str,
    ifindex: u32,
    mac: Option<[u8; 6]>,
    ip: Ipv6Addr,
    count: u32,
) -> Result<(), DriverError> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let io = |what: &str, e: std::io::Error| {
        DriverError(format!("neighbour advertisement for {ip}: {what}: {e}"))
    };
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(|e| io("socket", e))?;
    s.set_multicast_hops_v6(255)
        .map_err(|e| io("hop limit", e))?;
    s.set_unicast_hops_v6(255).map_err(|e| io("hop limit", e))?;
    s.set_multicast_if_v6(ifindex)
        .map_err(|e| io("interface", e))?;
    s.bind_device(Some(iface.as_bytes()))
        .map_err(|e| io("bind to device", e))?;
    let scope = if ip.is_unicast_link_local() {
        ifindex
    } else {
        0
    };
    s.bind(&SockAddr::from(std::net::SocketAddrV6::new(
        ip, 0, 0, scope,
    )))
    .map_err(|e| io("bind to the shared address", e))?;
    let to = SockAddr::from(std::net::SocketAddrV6::new(
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        0,
        0,
        ifindex,
    ));
    let packet = unsolicited_na(ip, mac);
    for _ in 0..count {
        s.send_to(&packet, &to).map_err(|e| io("send", e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- reachability

/// The result of checking that a gateway or test IP answers from the shared address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    /// The epoch of the takeover it was made after.
    pub epoch: u64,
    /// The source address (a shared IP).
    pub from: String,
    /// What was probed (`IP` → ICMP echo, `IP:port` → TCP connect).
    pub target: String,
    /// Whether it answered.
    pub ok: bool,
    /// Round trip or error.
    pub detail: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// Probes `target` (`IP` → one ICMP echo, `IP:port` → TCP connect; a
/// refused connection counts as an answer) with `from` as the source address.
pub async fn check_reachability(
    from: IpAddr,
    target: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let target = target.trim().to_owned();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        if let Ok(sa) = target.parse::<SocketAddr>() {
            tcp_probe(from, sa, timeout)?;
        } else if let Ok(ip) = target.parse::<IpAddr>() {
            icmp_probe(from, ip, timeout)?;
        } else {
            return Err(format!("{target:?} is neither IP nor IP:port"));
        }
        Ok(start.elapsed())
    })
    .await
    .map_err(|e| format!("probe task: {e}"))?
}

fn tcp_probe(from: IpAddr, to: SocketAddr, timeout: Duration) -> Result<(), String> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).map_err(|e| e.to_string())?;
    s.bind(&SockAddr::from(SocketAddr::new(from, 0)))
        .map_err(|e| format!("binding to {from}: {e}"))?;
    match s.connect_timeout(&SockAddr::from(to), timeout) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!("TCP {from} → {to}: {e}")),
    }
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp_probe(from: IpAddr, to: IpAddr, timeout: Duration) -> Result<(), String> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    if from.is_ipv4() != to.is_ipv4() {
        return Err(format!("{from} and {to} are of different families"));
    }
    let (domain, proto, req_type, reply_type) = if to.is_ipv4() {
        (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8)
    } else {
        (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8)
    };
    let s = Socket::new(domain, Type::RAW, Some(proto)).map_err(|e| format!("ICMP socket: {e}"))?;
    s.bind(&SockAddr::from(SocketAddr::new(from, 0)))
        .map_err(|e| format!("binding to {from}: {e}"))?;
    let id = (std::process::id() as u16) ^ 0x7464;
    let seq = rand::random::<u16>();
    let mut p = vec![req_type, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"tandem-shared-ip");
    if to.is_ipv4() {
        let c = icmp_checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    s.send_to(&p, &SockAddr::from(SocketAddr::new(to, 0)))
        .map_err(|e| format!("ICMP echo {from} → {to}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    // Bounded: ends at the deadline or after 1000 unrelated packets.
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let (n, src) = match s.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(format!("ICMP receive: {e}")),
        };
        // SAFETY: recv_from initialised the first n bytes.
        let data: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if src.as_socket().map(|a| a.ip()) != Some(to) {
            continue;
        }
        // IPv4 raw sockets deliver the IP header too.
        let icmp = if to.is_ipv4() {
            let ihl = usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4;
            data.get(ihl..).unwrap_or(&[])
        } else {
            &data[..]
        };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(());
        }
    }
    Err(format!(
        "no ICMP echo reply from {to} to {from} within {timeout:?}"
    ))
}

// ---------------------------------------------------------------- manager

/// One thing the manager did, for the history and the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedIpEvent {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// `acquire`, `release`, `cleanup` (release at start) or `check`.
    pub action: String,
    /// `address/prefix`.
    pub address: String,
    /// The interface.
    pub interface: String,
    /// The epoch it was done for.
    pub epoch: u64,
    /// Whether it worked.
    pub ok: bool,
    /// The driver's note or error (a script's output).
    pub detail: String,
}

/// What the manager holds and what is wrong, after a reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedIpReport {
    /// The driver.
    pub driver: String,
    /// `address/prefix` present on this node now (as the driver last saw).
    pub held: Vec<String>,
    /// Current failures (acquire/release retried with backoff).
    pub errors: Vec<String>,
    /// The last reachability check after a takeover, if any.
    pub reachability: Option<Reachability>,
}

#[derive(Debug, Clone)]
struct Failure {
    attempts: u32,
    next_try: Instant,
    error: String,
}

#[derive(Default)]
struct State {
    /// What this manager acquired (key → spec, epoch).
    acquired: BTreeMap<String, (SharedIpSpec, u64)>,
    /// Current failures, keyed by `action key`.
    failures: BTreeMap<String, Failure>,
    /// The specs last asked for.
    desired: Vec<SharedIpSpec>,
    /// The epoch the reachability check was started for.
    checked_epoch: Option<u64>,
    /// The running check.
    check_task: Option<tokio::task::JoinHandle<()>>,
    /// The last `held` answer and when.
    held: Vec<String>,
    held_at: Option<Instant>,
    held_error: Option<String>,
    /// Acquisitions at this epoch or below are refused: set by a final
    /// release (hand-over: its epoch; shutdown: `u64::MAX`).
    floor: Option<u64>,
}

/// Why addresses are given up, and whether that is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The role was lost (demotion, lease loss, fence, break): taken again
    /// only when the role manager asks with a valid lease.
    RoleLost,
    /// Leadership is being handed over: nothing is taken again at this
    /// epoch or below.
    HandOver,
    /// The node is stopping: nothing is taken again in this process.
    Shutdown,
}

/// Reconciles the desired shared IPs with what the driver holds.
pub struct SharedIpManager {
    driver: Arc<dyn SharedIpDriver>,
    check_targets: Vec<String>,
    /// The guard process told of every address before it is taken.
    guard: Option<Arc<crate::ip_guard::GuardLink>>,
    /// Wakes the background loop (the guard released something).
    kick: tokio::sync::Notify,
    /// The last pass skipped acquisitions for a lapsed lease.
    awaiting_lease: std::sync::atomic::AtomicBool,
    state: tokio::sync::Mutex<State>,
    events: Mutex<VecDeque<SharedIpEvent>>,
    reachability: Arc<Mutex<Option<Reachability>>>,
}

fn backoff(attempts: u32, max: Duration) -> Duration {
    RETRY_MIN
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(10))
        .min(max)
}

impl SharedIpManager {
    /// A manager for the driver `cfg` names.
    ///
    /// # Errors
    /// The configuration is incomplete (`script` without a path).
    pub fn from_config(cfg: &SharedIpConfig) -> Result<Self, DriverError> {
        Ok(Self::new(
            driver_from_config(cfg)?,
            cfg.check_targets.clone(),
        ))
    }

    /// A manager for `driver`; `check_targets` are probed from the shared
    /// address after a takeover (empty: the `test_ips` given to reconcile).
    pub fn new(driver: Arc<dyn SharedIpDriver>, check_targets: Vec<String>) -> Self {
        Self {
            driver,
            check_targets,
            guard: None,
            kick: tokio::sync::Notify::new(),
            awaiting_lease: std::sync::atomic::AtomicBool::new(false),
            state: tokio::sync::Mutex::new(State::default()),
            events: Mutex::new(VecDeque::new()),
            reachability: Arc::new(Mutex::new(None)),
        }
    }

    /// Tells `guard` of every address before it is taken and after each
    /// change (see [`crate::ip_guard`]).
    #[must_use]
    pub fn with_guard(mut self, guard: Arc<crate::ip_guard::GuardLink>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Tells the guard (if any) that `extra` and everything acquired may be
    /// on this host now.
    async fn tell_guard(&self, st: &State, extra: &[&SharedIpSpec], epoch: u64) {
        let Some(g) = &self.guard else { return };
        let mut held: Vec<(SharedIpSpec, u64)> = st.acquired.values().cloned().collect();
        for s in extra {
            if !held.iter().any(|(h, _)| h == *s) {
                held.push(((*s).clone(), epoch));
            }
        }
        held.sort();
        let _ = g.tell(held).await;
    }

    /// The guard released `addresses` (the lease ran out without renewal):
    /// they are no longer held; a node that is still primary takes them
    /// again on the next pass, which starts at once.
    pub async fn guard_released(&self, reason: &str, addresses: &[String], errors: &[String]) {
        let mut st = self.state.lock().await;
        let gone: Vec<(String, SharedIpSpec, u64)> = st
            .acquired
            .iter()
            .filter(|(_, (s, _))| addresses.contains(&s.cidr()))
            .map(|(k, (s, e))| (k.clone(), s.clone(), *e))
            .collect();
        for (key, spec, epoch) in gone {
            st.acquired.remove(&key);
            self.record(
                "guard-release",
                &spec,
                epoch,
                &Ok(format!("by the shared-IP guard: {reason}")),
            );
        }
        for e in errors {
            tracing::error!(error = %e, "the shared-IP guard could not release an address");
        }
        st.checked_epoch = None;
        self.refresh_held(&mut st, true).await;
        drop(st);
        self.kick.notify_one();
    }

    /// The driver's name.
    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    /// Takes the events recorded since the last call (oldest first).
    pub fn drain_events(&self) -> Vec<SharedIpEvent> {
        lock(&self.events).drain(..).collect()
    }

    fn record(
        &self,
        action: &str,
        spec: &SharedIpSpec,
        epoch: u64,
        result: &Result<String, DriverError>,
    ) {
        let (ok, detail) = match result {
            Ok(d) => (true, d.clone()),
            Err(e) => (false, e.0.clone()),
        };
        if ok {
            tracing::info!(action, %spec, epoch, detail = %detail, "shared IP");
        } else {
            tracing::warn!(action, %spec, epoch, error = %detail, "shared IP action failed; will retry");
        }
        let mut ev = lock(&self.events);
        if ev.len() >= MAX_EVENTS {
            ev.pop_front();
        }
        ev.push_back(SharedIpEvent {
            at_ms: now_ms(),
            action: action.to_owned(),
            address: spec.cidr(),
            interface: spec.interface.clone(),
            epoch,
            ok,
            detail,
        });
    }

    /// One pass: when `should_hold`, acquires every spec of `specs` not yet
    /// acquired at `epoch` and releases acquired ones no longer in `specs`;
    /// otherwise releases everything acquired. Failed actions are retried on
    /// later passes with backoff (acquire up to 10 s apart, release up to 1 s).
    /// After all specs are acquired at a new epoch, starts the reachability
    /// check (in the background; its result appears in later reports).
    ///
    /// `test_ips` are the replicated test addresses, used for the check when
    /// `[shared_ip] check_targets` is empty.
    pub async fn reconcile(
        &self,
        should_hold: bool,
        epoch: u64,
        specs: &[SharedIpSpec],
        test_ips: &[String],
    ) -> SharedIpReport {
        let mut st = self.state.lock().await;
        st.desired = specs.to_vec();
        self.awaiting_lease
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // A final release stands: a wish to hold at its epoch (a role tick
        // that raced with the release) is a wish to hold nothing.
        let should_hold = should_hold && st.floor.is_none_or(|f| epoch > f);
        let mut changed = false;
        let wanted: BTreeSet<String> = if should_hold {
            specs.iter().map(SharedIpSpec::key).collect()
        } else {
            BTreeSet::new()
        };
        // Release first: what must go goes before anything else happens.
        let extra: Vec<(String, SharedIpSpec, u64)> = st
            .acquired
            .iter()
            .filter(|(k, _)| !wanted.contains(*k))
            .map(|(k, (s, e))| (k.clone(), s.clone(), *e))
            .collect();
        if !should_hold {
            if let Some(t) = st.check_task.take() {
                t.abort();
            }
            st.checked_epoch = None;
        }
        for (key, spec, held_epoch) in extra {
            let fkey = format!("release {key}");
            if st
                .failures
                .get(&fkey)
                .is_some_and(|f| Instant::now() < f.next_try)
            {
                continue;
            }
            let r = self.driver.release(&spec, epoch.max(held_epoch)).await;
            self.record("release", &spec, epoch.max(held_epoch), &r);
            changed = true;
            match r {
                Ok(_) => {
                    st.acquired.remove(&key);
                    st.failures.remove(&fkey);
                }
                Err(e) => fail(&mut st.failures, fkey, e, RELEASE_RETRY_MAX),
            }
        }
        if !should_hold {
            // Failures of acquisitions no longer wanted are moot.
            st.failures.retain(|k, _| k.starts_with("release "));
        } else {
            st.failures.retain(|k, _| {
                k.strip_prefix("acquire ")
                    .is_none_or(|key| wanted.contains(key))
                    && k.strip_prefix("release ")
                        .is_none_or(|key| !wanted.contains(key))
            });
            // Nothing is taken on a lapsed lease (a pause, or a stale wish
            // of the role manager): the next renewal retries.
            let lapsed = self.guard.as_ref().is_some_and(|g| !g.lease_valid());
            self.awaiting_lease
                .store(lapsed, std::sync::atomic::Ordering::Relaxed);
            let due: Vec<&SharedIpSpec> = specs
                .iter()
                .filter(|_| !lapsed)
                .filter(|spec| {
                    let key = spec.key();
                    st.acquired.get(&key).is_none_or(|(_, e)| *e != epoch)
                        && st
                            .failures
                            .get(&format!("acquire {key}"))
                            .is_none_or(|f| Instant::now() >= f.next_try)
                })
                .collect();
            // The guard hears of an address before it is on this host.
            if !due.is_empty() {
                self.tell_guard(&st, &due, epoch).await;
            }
            for spec in due {
                let key = spec.key();
                let fkey = format!("acquire {key}");
                let r = self.driver.acquire(spec, epoch).await;
                self.record("acquire", spec, epoch, &r);
                changed = true;
                match r {
                    Ok(_) => {
                        st.acquired.insert(key, (spec.clone(), epoch));
                        st.failures.remove(&fkey);
                    }
                    Err(e) => fail(&mut st.failures, fkey, e, RETRY_MAX),
                }
            }
            let all = !specs.is_empty() && specs.iter().all(|s| st.acquired.contains_key(&s.key()));
            if all && st.checked_epoch != Some(epoch) {
                st.checked_epoch = Some(epoch);
                let targets = if self.check_targets.is_empty() {
                    test_ips.to_vec()
                } else {
                    self.check_targets.clone()
                };
                if let Some(t) = st.check_task.take() {
                    t.abort();
                }
                st.check_task = self.start_check(epoch, specs, &targets);
            }
        }
        if changed {
            self.tell_guard(&st, &[], epoch).await;
        }
        self.refresh_held(&mut st, changed).await;
        self.report_of(&st)
    }

    async fn refresh_held(&self, st: &mut State, force: bool) {
        if !force && st.held_at.is_some_and(|t| t.elapsed() < HELD_REFRESH) {
            return;
        }
        let mut query: Vec<SharedIpSpec> = st.desired.clone();
        for (s, _) in st.acquired.values() {
            if !query.contains(s) {
                query.push(s.clone());
            }
        }
        match self.driver.held(&query).await {
            Ok(h) => {
                st.held = h;
                st.held_error = None;
            }
            Err(e) => {
                // Fall back to what we believe we hold.
                st.held = st.acquired.values().map(|(s, _)| s.cidr()).collect();
                st.held_error = Some(format!("querying held addresses: {e}"));
            }
        }
        st.held.sort();
        st.held.dedup();
        st.held_at = Some(Instant::now());
    }

    fn report_of(&self, st: &State) -> SharedIpReport {
        let mut errors: Vec<String> = st
            .failures
            .iter()
            .map(|(k, f)| format!("{k}: {} (attempt {})", f.error, f.attempts))
            .collect();
        errors.extend(st.held_error.clone());
        errors.extend(self.guard.as_ref().and_then(|g| g.error()));
        SharedIpReport {
            driver: self.driver.name().to_owned(),
            held: st.held.clone(),
            errors,
            reachability: lock(&self.reachability).clone(),
        }
    }

    fn start_check(
        &self,
        epoch: u64,
        specs: &[SharedIpSpec],
        targets: &[String],
    ) -> Option<tokio::task::JoinHandle<()>> {
        if targets.is_empty() {
            return None;
        }
        let slot = self.reachability.clone();
        let specs = specs.to_vec();
        let targets = targets.to_vec();
        Some(tokio::spawn(async move {
            let mut last = None;
            for t in &targets {
                let fam_v4 = t
                    .parse::<SocketAddr>()
                    .map(|s| s.is_ipv4())
                    .or_else(|_| t.parse::<IpAddr>().map(|i| i.is_ipv4()));
                let Ok(v4) = fam_v4 else { continue };
                let Some(from) = specs.iter().find(|s| s.address.is_ipv4() == v4) else {
                    continue;
                };
                let r = check_reachability(from.address, t, CHECK_TIMEOUT).await;
                let res = Reachability {
                    epoch,
                    from: from.address.to_string(),
                    target: t.clone(),
                    ok: r.is_ok(),
                    detail: match &r {
                        Ok(d) => format!("answered in {} ms", d.as_millis()),
                        Err(e) => e.clone(),
                    },
                    at_ms: now_ms(),
                };
                if res.ok {
                    tracing::info!(target = %t, from = %from.address, "gateway answers from the shared address");
                } else {
                    tracing::warn!(target = %t, from = %from.address, error = %res.detail, "gateway does not answer from the shared address");
                }
                let ok = res.ok;
                last = Some(res);
                if ok {
                    break;
                }
            }
            if last.is_some() {
                *lock(&slot) = last;
            }
        }))
    }

    /// Releases everything this manager acquired and every desired spec the
    /// driver reports held (demotion, lease loss, break, shutdown). Each
    /// release is tried once now, whatever the backoff; failures stay in the
    /// report and are retried by later passes with `should_hold = false`.
    ///
    /// With [`Release::HandOver`] or [`Release::Shutdown`] the release is
    /// final: later acquisitions at `epoch` or below (shutdown: any epoch)
    /// are refused.
    pub async fn release_all(&self, epoch: u64, why: Release) -> SharedIpReport {
        let mut st = self.state.lock().await;
        let floor = match why {
            Release::RoleLost => None,
            Release::HandOver => Some(epoch),
            Release::Shutdown => Some(u64::MAX),
        };
        if floor.is_some() {
            st.floor = st.floor.max(floor);
        }
        if let Some(t) = st.check_task.take() {
            t.abort();
        }
        st.checked_epoch = None;
        let mut todo: Vec<(SharedIpSpec, u64)> = st.acquired.values().cloned().collect();
        let desired = st.desired.clone();
        if let Ok(h) = self.driver.held(&desired).await {
            for s in desired.into_iter().filter(|s| h.contains(&s.cidr())) {
                if !todo.iter().any(|(t, _)| *t == s) {
                    todo.push((s, epoch));
                }
            }
        }
        for (spec, e) in todo {
            let key = spec.key();
            let r = self.driver.release(&spec, epoch.max(e)).await;
            self.record("release", &spec, epoch.max(e), &r);
            let fkey = format!("release {key}");
            match r {
                Ok(_) => {
                    st.acquired.remove(&key);
                    st.failures.remove(&fkey);
                }
                Err(err) => {
                    // Keep it tracked so later passes retry.
                    st.acquired.entry(key).or_insert((spec, e));
                    fail(&mut st.failures, fkey, err, RELEASE_RETRY_MAX);
                }
            }
        }
        st.failures.retain(|k, _| k.starts_with("release "));
        self.tell_guard(&st, &[], epoch).await;
        self.refresh_held(&mut st, true).await;
        self.report_of(&st)
    }

    /// At start, on a node that is not primary: removes any of `specs` found
    /// on this node (left by a crash or a kill -9 of a former primary).
    pub async fn startup_cleanup(&self, specs: &[SharedIpSpec]) -> SharedIpReport {
        let mut st = self.state.lock().await;
        st.desired = specs.to_vec();
        match self.driver.held(specs).await {
            Ok(h) => {
                for spec in specs.iter().filter(|s| h.contains(&s.cidr())) {
                    let r = self.driver.release(spec, 0).await;
                    self.record("cleanup", spec, 0, &r);
                    if let Err(e) = r {
                        st.acquired.insert(spec.key(), (spec.clone(), 0));
                        fail(
                            &mut st.failures,
                            format!("release {}", spec.key()),
                            e,
                            RELEASE_RETRY_MAX,
                        );
                    }
                }
            }
            Err(e) => st.held_error = Some(format!("querying held addresses at start: {e}")),
        }
        self.tell_guard(&st, &[], 0).await;
        self.refresh_held(&mut st, true).await;
        self.report_of(&st)
    }

    /// Runs the manager in the background until `stop`; see [`SharedIpHandle`].
    /// On `stop` it releases everything (shutdown). Spawn the returned future
    /// on the node's task tracker.
    pub fn start(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> (SharedIpHandle, impl Future<Output = ()> + Send + 'static) {
        let (desired_tx, mut desired_rx) = watch::channel(Desired::default());
        let (report_tx, _) = watch::channel(SharedIpReport {
            driver: self.driver.name().to_owned(),
            ..SharedIpReport::default()
        });
        let report_tx = Arc::new(report_tx);
        let handle = SharedIpHandle {
            manager: self.clone(),
            desired: Arc::new(desired_tx),
            report: report_tx.clone(),
        };
        let mgr = self;
        let task = async move {
            let mut wait = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = desired_rx.changed() => if r.is_err() { break },
                    () = mgr.kick.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                let d = desired_rx.borrow_and_update().clone();
                if !d.started {
                    wait = HELD_REFRESH;
                    continue;
                }
                let report = mgr
                    .reconcile(d.should_hold, d.epoch, &d.specs, &d.test_ips)
                    .await;
                wait = if report.errors.is_empty()
                    && !mgr
                        .awaiting_lease
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    HELD_REFRESH
                } else {
                    RETRY_MIN
                };
                report_tx.send_replace(report);
            }
            let epoch = desired_rx.borrow().epoch;
            let report = mgr.release_all(epoch, Release::Shutdown).await;
            report_tx.send_replace(report);
        };
        (handle, task)
    }
}

fn fail(failures: &mut BTreeMap<String, Failure>, key: String, e: DriverError, max: Duration) {
    let attempts = failures.get(&key).map_or(0, |f| f.attempts) + 1;
    failures.insert(
        key,
        Failure {
            attempts,
            next_try: Instant::now() + backoff(attempts, max),
            error: e.0,
        },
    );
}

/// What the role manager wants (sent through [`SharedIpHandle::set_desired`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Desired {
    started: bool,
    should_hold: bool,
    epoch: u64,
    specs: Vec<SharedIpSpec>,
    test_ips: Vec<String>,
}

/// The role manager's side of a running [`SharedIpManager`].
#[derive(Clone)]
pub struct SharedIpHandle {
    manager: Arc<SharedIpManager>,
    desired: Arc<watch::Sender<Desired>>,
    /// Shared with the loop: `release_all` publishes its report at once, so
    /// status never shows an address as held after it was released.
    report: Arc<watch::Sender<SharedIpReport>>,
}

impl SharedIpHandle {
    /// Tells the manager what this node should hold; cheap, never waits (call
    /// it on every role tick). The background loop acts only on changes and
    /// on retries.
    pub fn set_desired(
        &self,
        should_hold: bool,
        epoch: u64,
        specs: Vec<SharedIpSpec>,
        test_ips: Vec<String>,
    ) {
        let d = Desired {
            started: true,
            should_hold,
            epoch,
            specs,
            test_ips,
        };
        self.desired.send_if_modified(|cur| {
            if *cur == d {
                false
            } else {
                *cur = d;
                true
            }
        });
    }

    /// Stops holding (the background loop will not re-acquire until
    /// `set_desired(true, …)`) and releases everything now, waiting for the
    /// driver. Use on demotion, lease loss and break.
    pub async fn release_all(&self) -> SharedIpReport {
        self.release(Release::RoleLost).await
    }

    /// [`Self::release_all`] before leadership is handed over: final for the
    /// current epoch. If the hand-over is abandoned while this node still
    /// leads, [`Self::abandon_hand_over`] lifts it.
    pub async fn release_for_hand_over(&self) -> SharedIpReport {
        self.release(Release::HandOver).await
    }

    /// [`Self::release_all`] at shutdown: final for this process.
    pub async fn release_for_shutdown(&self) -> SharedIpReport {
        self.release(Release::Shutdown).await
    }

    /// A planned swap failed before leadership moved: the addresses may be
    /// taken again at the current epoch (the role manager asks on its next
    /// tick, as it does for any primary). Does nothing after a shutdown
    /// release.
    pub async fn abandon_hand_over(&self) {
        let mut st = self.manager.state.lock().await;
        if st.floor != Some(u64::MAX) {
            st.floor = None;
        }
        drop(st);
        self.manager.kick.notify_one();
    }

    async fn release(&self, why: Release) -> SharedIpReport {
        let mut epoch = 0;
        self.desired.send_if_modified(|cur| {
            epoch = cur.epoch;
            let was = cur.should_hold;
            cur.should_hold = false;
            was
        });
        let report = self.manager.release_all(epoch, why).await;
        self.report.send_replace(report.clone());
        report
    }

    /// This primary's lease runs `valid_for` from now: the guard process
    /// releases the addresses if no renewal follows by then (the daemon is
    /// paused or stuck). Never waits; call it on every role tick while
    /// primary.
    pub fn renew_lease(&self, valid_for: Duration) {
        if let Some(g) = &self.manager.guard {
            g.renew(valid_for);
        }
    }

    /// Removes stale addresses at start (call once before the first
    /// `set_desired`, when this node is not primary).
    pub async fn startup_cleanup(&self, specs: &[SharedIpSpec]) -> SharedIpReport {
        self.manager.startup_cleanup(specs).await
    }

    /// The latest report (for status: `held` → `shared_ips_held`).
    pub fn report(&self) -> SharedIpReport {
        self.report.borrow().clone()
    }

    /// Events since the last call, for the history.
    pub fn drain_events(&self) -> Vec<SharedIpEvent> {
        self.manager.drain_events()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(a: &str) -> SharedIpSpec {
        SharedIpSpec::parse(a, "eth0").expect("valid spec")
    }

    #[test]
    fn parse_specs() {
        let s = spec("192.0.2.10/24");
        assert_eq!(s.address, "192.0.2.10".parse::<IpAddr>().expect("ip"));
        assert_eq!((s.prefix, s.cidr()), (24, "192.0.2.10/24".to_owned()));
        assert_eq!(spec("2001:db8::10/64").cidr(), "2001:db8::10/64");
        assert_eq!(spec("192.0.2.10").prefix, 32);
        for bad in [
            "192.0.2.10/33",
            "192.0.2.10/0",
            "x/24",
            "0.0.0.0/8",
            "224.0.0.1/4",
            "2001:db8::1/129",
        ] {
            assert!(SharedIpSpec::parse(bad, "eth0").is_err(), "{bad}");
        }
        assert!(SharedIpSpec::parse("192.0.2.10/24", "").is_err());
        assert!(SharedIpSpec::parse("192.0.2.10/24", "a-very-long-interface").is_err());
    }

    #[test]
    fn specs_for_a_node() {
        let shared = vec![
            SharedIp {
                address: "192.0.2.10/24".into(),
                interfaces: [
                    ("a".to_owned(), "eth0".to_owned()),
                    ("b".to_owned(), "ens3".to_owned()),
                ]
                .into(),
            },
            SharedIp {
                address: "2001:db8::10/64".into(),
                interfaces: [("a".to_owned(), "eth1".to_owned())].into(),
            },
            SharedIp {
                address: "nonsense".into(),
                interfaces: [("b".to_owned(), "eth0".to_owned())].into(),
            },
        ];
        let (a, errs) = specs_for_node(&shared, "a");
        assert_eq!(a.len(), 2);
        assert!(errs.is_empty());
        let (b, errs) = specs_for_node(&shared, "b");
        assert_eq!(
            b,
            vec![SharedIpSpec::parse("192.0.2.10/24", "ens3").expect("spec")]
        );
        assert_eq!(errs.len(), 1);
        assert!(specs_for_node(&shared, "w").0.is_empty());
    }

    #[test]
    fn packets() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = gratuitous_arp_frame(mac, Ipv4Addr::new(198, 51, 100, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[28..32], &f[38..42]);
        let na = unsolicited_na("2001:db8::1".parse().expect("ip"), Some(mac));
        assert_eq!((na[0], na[4], na.len()), (136, 0x20, 32));
        assert_eq!(&na[24..26], &[2, 1]);
        // RFC 1071 example.
        assert_eq!(
            icmp_checksum(&[0, 1, 0xf2, 3, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    /// A driver whose acquire fails the first `fail_first` times.
    struct Flaky {
        inner: NoneDriver,
        fail_first: Mutex<u32>,
    }
    impl SharedIpDriver for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn acquire<'a>(
            &'a self,
            spec: &'a SharedIpSpec,
            epoch: u64,
        ) -> BoxFuture<'a, Result<String, DriverError>> {
            Box::pin(async move {
                {
                    let mut n = lock(&self.fail_first);
                    if *n > 0 {
                        *n -= 1;
                        return Err(DriverError::new("simulated failure"));
                    }
                }
                self.inner.acquire(spec, epoch).await
            })
        }
        fn release<'a>(
            &'a self,
            spec: &'a SharedIpSpec,
            epoch: u64,
        ) -> BoxFuture<'a, Result<String, DriverError>> {
            self.inner.release(spec, epoch)
        }
        fn held<'a>(
            &'a self,
            specs: &'a [SharedIpSpec],
        ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
            self.inner.held(specs)
        }
    }

    #[tokio::test]
    async fn manager_acquires_releases_and_retries() {
        let m = SharedIpManager::new(
            Arc::new(Flaky {
                inner: NoneDriver::default(),
                fail_first: Mutex::new(1),
            }),
            vec![],
        );
        let specs = vec![spec("192.0.2.10/24"), spec("2001:db8::10/64")];
        let r = m.reconcile(true, 3, &specs, &[]).await;
        assert_eq!(r.held, vec!["2001:db8::10/64".to_owned()]);
        assert_eq!(r.errors.len(), 1, "{r:?}");
        // Within the backoff: not retried yet.
        let r = m.reconcile(true, 3, &specs, &[]).await;
        assert_eq!(r.errors.len(), 1);
        tokio::time::sleep(RETRY_MIN + Duration::from_millis(50)).await;
        let r = m.reconcile(true, 3, &specs, &[]).await;
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.held.len(), 2);
        // Settings drop one address: it is released.
        let r = m.reconcile(true, 3, &specs[1..], &[]).await;
        assert_eq!(r.held, vec!["2001:db8::10/64".to_owned()]);
        let r = m.reconcile(false, 4, &specs, &[]).await;
        assert!(r.held.is_empty());
        let ev = m.drain_events();
        let actions: Vec<(&str, bool)> = ev.iter().map(|e| (e.action.as_str(), e.ok)).collect();
        assert_eq!(
            actions,
            vec![
                ("acquire", false),
                ("acquire", true),
                ("acquire", true),
                ("release", true),
                ("release", true)
            ]
        );
    }

    #[tokio::test]
    async fn script_driver_passes_arguments_and_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("fip");
        let state = dir.path().join("state");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\nS={s}\necho \"$@\" >> {s}.log\ncase $1 in\n acquire) echo \"$2\" > $S; echo took $2 epoch $4;;\n release) rm -f $S; echo gave $2 >&2;;\n check) test -f $S;;\n slow) sleep 5;;\nesac\n",
                s = state.display()
            ),
        )
        .expect("write script");
        let mut p = std::fs::metadata(&script).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
        std::fs::set_permissions(&script, p).expect("chmod");
        let d = ScriptDriver::new(script, Duration::from_millis(500));
        let s = spec("192.0.2.10/24");
        assert!(d
            .held(std::slice::from_ref(&s))
            .await
            .expect("check")
            .is_empty());
        let note = d.acquire(&s, 7).await.expect("acquire");
        assert!(note.contains("took 192.0.2.10/24 epoch 7"), "{note}");
        assert_eq!(
            d.held(std::slice::from_ref(&s)).await.expect("check"),
            vec![s.cidr()]
        );
        let note = d.release(&s, 7).await.expect("release");
        assert!(note.contains("stderr: gave 192.0.2.10/24"), "{note}");
        let o = d.run("slow", &s, 7).await.expect("run");
        assert!(o.timed_out);
        let log = std::fs::read_to_string(format!("{}.log", state.display())).expect("log");
        assert!(log.contains("acquire 192.0.2.10/24 eth0 7"), "{log}");
    }

    #[tokio::test]
    async fn background_loop_follows_desired_state_and_releases_on_stop() {
        let m = Arc::new(SharedIpManager::new(
            Arc::new(NoneDriver::default()),
            vec![],
        ));
        let stop = CancellationToken::new();
        let (h, task) = m.start(stop.clone());
        let task = tokio::spawn(task);
        let specs = vec![spec("192.0.2.10/24")];
        assert!(h.startup_cleanup(&specs).await.held.is_empty());
        h.set_desired(true, 2, specs.clone(), vec![]);
        let mut held = Vec::new();
        for _ in 0..100 {
            held = h.report().held;
            if !held.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(held, vec!["192.0.2.10/24".to_owned()]);
        // Demotion: release_all waits for the driver and the loop does not re-acquire.
        assert!(h.release_all().await.held.is_empty());
        h.set_desired(true, 3, specs.clone(), vec![]);
        for _ in 0..100 {
            if !h.report().held.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!h.report().held.is_empty());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("loop ends")
            .expect("loop task");
        assert!(h.report().held.is_empty(), "released on stop");
        let actions: Vec<String> = h.drain_events().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["acquire", "release", "acquire", "release"]);
    }

    /// Polls the handle's report until `held` is what it says (bounded).
    async fn held_becomes(h: &SharedIpHandle, want: bool) -> bool {
        for _ in 0..100 {
            if h.report().held.is_empty() != want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// DESIGN rule 6: a wish to hold that races with a hand-over or
    /// shutdown release (a role tick that computed "primary" just before)
    /// takes nothing back; only a newer epoch does, and after a shutdown
    /// release nothing does.
    #[tokio::test]
    async fn a_final_release_is_final() {
        let m = Arc::new(SharedIpManager::new(
            Arc::new(NoneDriver::default()),
            vec![],
        ));
        let stop = CancellationToken::new();
        let (h, task) = m.clone().start(stop.clone());
        let task = tokio::spawn(task);
        let specs = vec![spec("192.0.2.10/24")];
        h.set_desired(true, 4, specs.clone(), vec![]);
        assert!(held_becomes(&h, true).await);

        assert!(h.release_for_hand_over().await.held.is_empty());
        h.set_desired(true, 4, specs.clone(), vec![]);
        let r = m.reconcile(true, 4, &specs, &[]).await;
        assert!(r.held.is_empty(), "taken back at the hand-over's epoch");
        assert!(!held_becomes(&h, true).await, "the loop took it back");
        // A failed swap lifts it; the same epoch may be held again.
        h.abandon_hand_over().await;
        assert!(held_becomes(&h, true).await);
        // Released for a hand-over again, then primary under a newer epoch.
        assert!(h.release_for_hand_over().await.held.is_empty());
        h.set_desired(true, 5, specs.clone(), vec![]);
        assert!(held_becomes(&h, true).await);

        assert!(h.release_for_shutdown().await.held.is_empty());
        for epoch in [5, 6, u64::MAX - 1] {
            h.set_desired(true, epoch, specs.clone(), vec![]);
            assert!(m.reconcile(true, epoch, &specs, &[]).await.held.is_empty());
        }
        h.abandon_hand_over().await;
        assert!(
            !held_becomes(&h, true).await,
            "taken after a shutdown release"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("loop ends")
            .expect("loop task");
        let acquired: Vec<u64> = h
            .drain_events()
            .into_iter()
            .filter(|e| e.action == "acquire")
            .map(|e| e.epoch)
            .collect();
        assert_eq!(acquired, [4, 4, 5]);
    }
}
