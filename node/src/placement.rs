//! Placement: each node's site (its failure domain: a room, a building, a
//! data centre) and host identity (the machine or hypervisor it runs on),
//! the replicated record of them, and the anti-affinity rule that two
//! appliances must not share either. A leaf: strings, JSON and one file read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the host identity comes from when none is configured.
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// Longest site label or host identity.
const MAX_LABEL: usize = 63;

/// One node's place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// The site label, if the administrator gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The host identity: the configured host name, or `machine-` and the
    /// first 16 hex digits of SHA-256 of the machine id (the id itself is
    /// not published); `None` when neither is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Place {
    /// This machine's place: the configured site, and the configured host
    /// identity or the one derived from the machine id.
    pub fn local(site: Option<&str>, host_id: Option<&str>) -> Self {
        Self {
            site: site.map(str::to_string),
            host: host_id.map(str::to_string).or_else(machine_host),
        }
    }

    /// What `self` and `other` share: the anti-affinity violations.
    pub fn shared_with(&self, other: &Place) -> Vec<Shared> {
        let mut out = Vec::new();
        if let (Some(a), Some(b)) = (&self.host, &other.host) {
            if a == b {
                out.push(Shared::Host(a.clone()));
            }
        }
        if let (Some(a), Some(b)) = (&self.site, &other.site) {
            if a == b {
                out.push(Shared::Site(a.clone()));
            }
        }
        out
    }
}

/// One thing two appliances share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shared {
    /// The same host identity: one machine failing takes both.
    Host(String),
    /// The same site: one site failing takes both.
    Site(String),
}

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shared::Host(h) => write!(f, "host {h:?}"),
            Shared::Site(s) => write!(f, "site {s:?}"),
        }
    }
}

/// Every anti-affinity violation in a list, `and`-joined (`site "x" and
/// host "y"`).
pub fn describe(shared: &[Shared]) -> String {
    shared
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A derived host identity from the first machine-id file that holds one.
fn machine_host() -> Option<String> {
    MACHINE_ID_FILES.iter().find_map(|p| {
        let id = std::fs::read_to_string(p).ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| {
            let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
            format!("machine-{}", &hex::encode(digest)[..16])
        })
    })
}

/// Site labels and configured host identities: 1 to 63 printable
/// characters without control characters.
///
/// # Errors
/// A message saying what is wrong.
pub fn validate_label(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() || value.len() > MAX_LABEL || value.chars().any(char::is_control) {
        return Err(format!(
            "invalid {what} {value:?}: use 1-{MAX_LABEL} printable characters"
        ));
    }
    Ok(())
}

/// The replicated placement record: node id → place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Places(pub BTreeMap<u64, Place>);

impl Places {
    /// Reads the stored JSON (`{"<id>": {"site", "host"}}`); unreadable
    /// entries are skipped (a record from a newer version keeps working).
    pub fn from_json(text: &str) -> Self {
        let raw: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(text).unwrap_or_default();
        Self(
            raw.into_iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, serde_json::from_value(v).ok()?)))
                .collect(),
        )
    }

    /// The JSON stored.
    pub fn to_json(&self) -> String {
        let raw: BTreeMap<String, &Place> =
            self.0.iter().map(|(k, v)| (k.to_string(), v)).collect();
        serde_json::to_string(&raw).unwrap_or_else(|_| "{}".into())
    }

    /// `id`'s place, if recorded.
    pub fn get(&self, id: u64) -> Option<&Place> {
        self.0.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(site: Option<&str>, host: Option<&str>) -> Place {
        Place {
            site: site.map(str::to_string),
            host: host.map(str::to_string),
        }
    }

    #[test]
    fn what_two_places_share() {
        let a = place(Some("north"), Some("h1"));
        assert_eq!(
            a.shared_with(&place(Some("north"), Some("h1"))),
            vec![Shared::Host("h1".into()), Shared::Site("north".into())]
        );
        assert_eq!(
            describe(&a.shared_with(&place(Some("north"), Some("h1")))),
            "host \"h1\" and site \"north\""
        );
        assert!(a.shared_with(&place(Some("south"), Some("h2"))).is_empty());
        // Unknown is not equal: two nodes without a site share none.
        assert!(place(None, None).shared_with(&place(None, None)).is_empty());
        assert_eq!(
            place(None, Some("h1")).shared_with(&place(Some("x"), Some("h1"))),
            vec![Shared::Host("h1".into())]
        );
    }

    #[test]
    fn the_record_round_trips_and_skips_what_it_cannot_read() {
        let mut p = Places::default();
        p.0.insert(1, place(Some("north"), Some("h1")));
        p.0.insert(2, place(None, Some("h2")));
        let json = p.to_json();
        assert_eq!(
            json,
            r#"{"1":{"site":"north","host":"h1"},"2":{"host":"h2"}}"#
        );
        assert_eq!(Places::from_json(&json), p);
        let odd = Places::from_json(r#"{"x":{},"3":{"site":5},"4":{"site":"s"}}"#);
        assert_eq!(odd.0.len(), 1);
        assert_eq!(odd.get(4).and_then(|p| p.site.as_deref()), Some("s"));
        assert_eq!(Places::from_json("not json"), Places::default());
    }

    #[test]
    fn labels() {
        assert!(validate_label("site", "rack 4, room B").is_ok());
        assert!(validate_label("site", "").is_err());
        assert!(validate_label("site", "  ").is_err());
        assert!(validate_label("site", &"x".repeat(64)).is_err());
        assert!(validate_label("host identity", "a\nb").is_err());
    }

    #[test]
    fn a_configured_host_identity_wins() {
        let p = Place::local(Some("north"), Some("hv-7"));
        assert_eq!(p.host.as_deref(), Some("hv-7"));
        assert_eq!(p.site.as_deref(), Some("north"));
        // Derived identities never publish the machine id itself.
        if let Some(h) = Place::local(None, None).host {
            assert!(h.starts_with("machine-") && h.len() == 24, "{h}");
        }
    }
}
