//! The `netlink` driver (Linux): adds and removes the address with
//! netlink, then announces it ([`announce`](mod@super::super::announce)) on a schedule.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::TryStreamExt;

use super::super::announce::announce;
use crate::config::SharedIpConfig;
use crate::util::{lock, AbortOnDrop};

use super::super::spec::SharedIpSpec;
use super::{BoxFuture, DriverError, SharedIpDriver};

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
