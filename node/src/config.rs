//! The node's own configuration file (`node.toml` in the data directory) and
//! the layout of the data directory.
//!
//! The file is written by `init` and `join`, read by `run`; flags given to
//! `run` override it for that run only. It carries a format version so a
//! later release can migrate it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_storage::NodeKind;

/// Current `node.toml` format.
pub const CONFIG_FORMAT: u32 = 1;

/// Errors reading or writing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `node.toml` is missing: the directory was never initialised.
    #[error("{0} is not a tandem data directory (no node.toml): run `tandem init` or `tandem join` first")]
    NotInitialised(PathBuf),
    /// The directory already holds a node.
    #[error("{0} already holds a tandem node (node.toml exists); use another --dir")]
    AlreadyInitialised(PathBuf),
    /// The file exists but does not parse.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file was written by a newer release.
    #[error("{path} has format {found}, this release reads format {CONFIG_FORMAT}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// Another process uses the directory.
    #[error("data directory {0} is in use by another tandem process")]
    Locked(PathBuf),
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Default of [`Tuning::min_free_mb`]: room for a snapshot of a state with
/// a few hundred thousand records, and for control writes after
/// application writes stopped.
pub const DEFAULT_MIN_FREE_MB: u64 = 256;

/// Raft timing and storage tuning. Defaults suit a pair on a LAN.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Primary timeout used until the replicated setting is known (the
    /// replicated one wins once this node has it); Raft heartbeat and
    /// election timeouts are derived from it.
    pub primary_timeout_ms: u64,
    /// Build a snapshot after this many log entries since the last one, or
    /// after as many as the last snapshot held records when that is more
    /// (at most 16 times this; see `roles::snapshot_interval`).
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (for followers slightly behind).
    pub keep_behind_snapshot: u64,
    /// sled page cache, in MiB (sled's own default of 1 GiB is too much for an appliance).
    pub cache_mb: u64,
    /// Free space, in MiB, the data directory's filesystem must keep for
    /// application writes (config, sessions) to be accepted; below it they
    /// answer 507 and control writes use the rest. 0 turns the check off.
    pub min_free_mb: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            primary_timeout_ms: crate::settings::DEFAULT_PRIMARY_TIMEOUT_MS,
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            cache_mb: tandem_storage::DEFAULT_CACHE_CAPACITY / (1024 * 1024),
            min_free_mb: DEFAULT_MIN_FREE_MB,
        }
    }
}

/// Contents of `node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// File format version ([`CONFIG_FORMAT`]).
    pub format: u32,
    /// Human name of the node (`a`, `b`, `w`, a host name…).
    pub name: String,
    /// Appliance or witness.
    pub kind: NodeKind,
    /// Raft node id, assigned at init (1) or by the cluster at join.
    pub node_id: u64,
    /// The cluster this node belongs to.
    pub cluster_id: String,
    /// Address the peer listener binds.
    pub peer_listen: SocketAddr,
    /// Address peers dial (`host:port`).
    pub peer_advertise: String,
    /// Address the admin listener binds.
    pub api_listen: SocketAddr,
    /// Base URL of the admin API as others should use it (`https://host:port`).
    pub api_advertise: String,
    /// Timing and storage tuning.
    #[serde(default)]
    pub tuning: Tuning,
    /// How this node takes and gives up the shared IPs (edited by the
    /// administrator; absent means the `none` driver).
    #[serde(default)]
    pub shared_ip: SharedIpConfig,
    /// An administrator-provided certificate for the admin listener
    /// (absent: the node certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_tls: Option<AdminTlsConfig>,
    /// This node's site: the failure domain it shares with nothing else
    /// (a room, a building, a data centre). Absent: none given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// This node's host identity (the machine or hypervisor it runs on).
    /// Absent: derived from `/etc/machine-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
}

/// The `[admin_tls]` section of `node.toml`: the certificate the admin
/// listener presents to browsers and other HTTPS clients instead of the node
/// certificate. The peer listener always keeps the cluster certificate, and
/// Tandem's own clients (CLI, joining nodes) still get the cluster chain.
///
/// ```toml
/// [admin_tls]
/// cert = "/etc/tandem/admin-fullchain.pem"   # leaf first, then intermediates
/// key = "/etc/tandem/admin-key.pem"          # PKCS#8, PKCS#1 or SEC1 PEM
/// ```
///
/// Relative paths are relative to the data directory. Both files are read
/// at start (a missing, unreadable or mismatched pair stops `run` with one
/// line saying which) and again on SIGHUP (a bad pair is then logged and the
/// running certificate kept).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

/// Which shared-IP driver a node uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SharedIpDriverKind {
    /// Log only, hold nothing on the system (the demo default).
    #[default]
    None,
    /// Linux: add/remove the address through netlink and announce it.
    Netlink,
    /// Run the administrator's command (cloud floating-IP APIs).
    Script,
}

/// The `[shared_ip]` section of `node.toml`: how this node holds the shared
/// addresses that the replicated settings list.
///
/// ```toml
/// [shared_ip]
/// driver = "netlink"            # "none" (default) | "netlink" | "script"
/// # script = "/usr/local/sbin/floating-ip"  # driver = "script": run as
/// #   <script> <acquire|release|check> <address/prefix> <interface> <epoch>
/// announce_count = 5            # gratuitous ARPs / neighbour adverts per burst
/// announce_repeat_after_secs = 5 # second burst after this (0: none)
/// refresh_secs = 0              # repeat a burst every N s while primary (0: off)
/// check_targets = ["198.51.100.1"]  # gateway or test IP (IP: ICMP, IP:port: TCP)
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SharedIpConfig {
    /// The driver.
    pub driver: SharedIpDriverKind,
    /// The command the `script` driver runs.
    pub script: Option<PathBuf>,
    /// Bound on one run of the script, in seconds.
    pub script_timeout_secs: u64,
    /// Announcements (gratuitous ARP / unsolicited NA) sent at once on acquire.
    pub announce_count: u32,
    /// A second burst of `announce_count` this long after acquiring (0: none).
    pub announce_repeat_after_secs: u64,
    /// While held, a burst every this many seconds (0: off).
    pub refresh_secs: u64,
    /// Checked from the shared address after takeover (`IP` → ICMP echo,
    /// `IP:port` → TCP connect). Empty: the replicated `test_ips` are used.
    pub check_targets: Vec<String>,
}

impl Default for SharedIpConfig {
    fn default() -> Self {
        Self {
            driver: SharedIpDriverKind::None,
            script: None,
            script_timeout_secs: 10,
            announce_count: 5,
            announce_repeat_after_secs: 5,
            refresh_secs: 0,
            check_targets: Vec::new(),
        }
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps `root` (not created here).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `node.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("node.toml")
    }
    /// The cluster CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// The cluster CA key (appliances only; mode 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// This node's certificate.
    pub fn node_cert(&self) -> PathBuf {
        self.root.join("node.pem")
    }
    /// This node's key (mode 0600).
    pub fn node_key(&self) -> PathBuf {
        self.root.join("node.key")
    }
    /// sled database directory.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }
    /// Snapshot files and the spool for incoming ones.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    /// The lock file held while a process uses the directory.
    pub fn stood_down(&self) -> PathBuf {
        self.root.join("stood-down")
    }

    /// The lock file (see [`DataDir::lock`]).
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Reads and validates `node.toml`.
    ///
    /// # Errors
    /// [`ConfigError::NotInitialised`], [`ConfigError::Parse`], [`ConfigError::Format`].
    pub fn load(&self) -> Result<NodeConfig, ConfigError> {
        let path = self.config();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotInitialised(self.root.clone()))
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let cfg: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if cfg.format != CONFIG_FORMAT {
            return Err(ConfigError::Format {
                path,
                found: cfg.format,
            });
        }
        Ok(cfg)
    }

    /// Writes `node.toml` atomically (temp file, fsync, rename, fsync dir).
    ///
    /// # Errors
    /// [`ConfigError::Io`].
    pub fn save(&self, cfg: &NodeConfig) -> Result<(), ConfigError> {
        // Serialising a plain struct of strings and numbers cannot fail.
        let text = toml::to_string_pretty(cfg).expect("NodeConfig serialises to TOML");
        let path = self.config();
        tandem_certs::write_public_file(&path, &text)
            .map_err(|source| ConfigError::Io { path, source })
    }

    /// Fails if the directory already holds a node.
    ///
    /// # Errors
    /// [`ConfigError::AlreadyInitialised`].
    pub fn ensure_fresh(&self) -> Result<(), ConfigError> {
        if self.config().exists() {
            return Err(ConfigError::AlreadyInitialised(self.root.clone()));
        }
        self.create_private()
    }

    /// Creates the directory if needed and makes it 0700: what it holds
    /// (keys, the replicated state with password hashes) is for the node's
    /// own user only.
    fn create_private(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| ConfigError::Io {
            path: self.root.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(io)
    }

    /// Takes the exclusive lock on the directory for as long as the returned
    /// guard lives.
    ///
    /// # Errors
    /// [`ConfigError::Locked`] if another process holds it.
    pub fn lock(&self) -> Result<DirLock, ConfigError> {
        self.create_private()?;
        let path = self.lock_file();
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ConfigError::Io { path, source })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DirLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(ConfigError::Locked(self.root.clone())),
            Err((_, errno)) => Err(ConfigError::Io {
                path: self.lock_file(),
                source: std::io::Error::from(errno),
            }),
        }
    }
}

/// Holds the data directory's lock; released on drop (and by the kernel if
/// the process dies).
pub struct DirLock {
    _lock: nix::fcntl::Flock<File>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeConfig {
        NodeConfig {
            format: CONFIG_FORMAT,
            name: "a".into(),
            kind: NodeKind::Appliance,
            node_id: 1,
            cluster_id: "c0ffee".into(),
            peer_listen: "127.0.0.1:7001".parse().expect("literal address"),
            peer_advertise: "127.0.0.1:7001".into(),
            api_listen: "127.0.0.1:8001".parse().expect("literal address"),
            api_advertise: "https://127.0.0.1:8001".into(),
            tuning: Tuning::default(),
            shared_ip: SharedIpConfig::default(),
            admin_tls: None,
            site: None,
            host_id: None,
        }
    }

    #[test]
    fn admin_tls_section_round_trips() {
        let mut cfg = sample();
        cfg.admin_tls = Some(AdminTlsConfig {
            cert: "/etc/tandem/admin.pem".into(),
            key: "admin.key".into(),
        });
        let text = toml::to_string_pretty(&cfg).expect("serialise");
        assert!(text.contains("[admin_tls]"), "{text}");
        assert_eq!(toml::from_str::<NodeConfig>(&text).expect("parse"), cfg);
        let text = toml::to_string_pretty(&sample()).expect("serialise");
        assert!(!text.contains("admin_tls"), "{text}");
    }

    #[test]
    fn shared_ip_section_is_optional_and_parses() {
        let mut text = toml::to_string_pretty(&sample()).expect("serialise");
        // A node.toml written before the section existed still parses.
        let start = text.find("[shared_ip]").expect("section written");
        text.truncate(start);
        let cfg: NodeConfig = toml::from_str(&text).expect("parse without section");
        assert_eq!(cfg.shared_ip, SharedIpConfig::default());
        let text = format!(
            "{text}[shared_ip]\ndriver = \"script\"\nscript = \"/bin/true\"\nrefresh_secs = 30\n"
        );
        let cfg: NodeConfig = toml::from_str(&text).expect("parse with section");
        assert_eq!(cfg.shared_ip.driver, SharedIpDriverKind::Script);
        assert_eq!(cfg.shared_ip.refresh_secs, 30);
        assert_eq!(cfg.shared_ip.announce_count, 5);
    }

    #[test]
    fn save_load_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        dir.ensure_fresh().expect("fresh");
        dir.save(&sample()).expect("save");
        assert_eq!(dir.load().expect("load"), sample());
        assert!(matches!(
            dir.ensure_fresh(),
            Err(ConfigError::AlreadyInitialised(_))
        ));
    }

    #[test]
    fn missing_and_future_format_are_clear_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        assert!(matches!(dir.load(), Err(ConfigError::NotInitialised(_))));
        let mut cfg = sample();
        cfg.format = 99;
        dir.save(&cfg).expect("save");
        assert!(matches!(
            dir.load(),
            Err(ConfigError::Format { found: 99, .. })
        ));
    }

    #[test]
    fn lock_is_exclusive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        let held = dir.lock().expect("first lock");
        assert!(matches!(dir.lock(), Err(ConfigError::Locked(_))));
        drop(held);
        dir.lock().expect("lock again after release");
    }
}
