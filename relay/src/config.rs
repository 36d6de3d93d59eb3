//! The relay's configuration file (YAML).
//!
//! Every key is optional; the defaults below are the documented ones (and `relay.yaml.example`
//! shows them all). Unknown keys and bad values are errors that name the file, the line and the
//! key: a typo in a key must not silently fall back to a default. Durations are humantime
//! strings (`30s`, `5m`, `1h 30m`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_protocol::config_file;

/// Default data directory of the relay.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tether-relay";

/// The relay configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Where the host key and the embedded store live.
    pub data_dir: PathBuf,
    /// The SSH port (device links and engineers).
    #[serde(deserialize_with = "null_is_default")]
    pub ssh: SshConfig,
    /// The HTTP port (API and WebSocket link).
    #[serde(deserialize_with = "null_is_default")]
    pub http: HttpConfig,
    /// The store.
    #[serde(deserialize_with = "null_is_default")]
    pub store: StoreConfig,
    /// Engineers' sessions: recording.
    #[serde(deserialize_with = "null_is_default")]
    pub sessions: SessionsConfig,
    /// Abuse limits.
    #[serde(deserialize_with = "null_is_default")]
    pub limits: LimitsConfig,
    /// Membership of a cluster of relays.
    #[serde(deserialize_with = "null_is_default")]
    pub cluster: ClusterConfig,
}

/// Membership of a cluster of relays: all on one PostgreSQL store, with NATS for presence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server (`nats://HOST:4222`, JetStream on) carrying which relay holds which
    /// device; unset: a relay of its own.
    pub nats: Option<String>,
    /// This relay's name in the cluster, unique among its relays; default
    /// `<host name>:<SSH port>`.
    pub relay_id: Option<String>,
    /// Where this relay accepts other relays' streams to the devices it holds (SSH, logged in
    /// with the cluster's host key); unset: engineers reach this relay's boards only through it.
    pub peer_listen: Option<SocketAddr>,
    /// The `HOST:PORT` other relays dial to reach `peer_listen`; default `peer_listen` itself
    /// (which must then name an address, not 0.0.0.0).
    pub advertise: Option<String>,
}

impl ClusterConfig {
    /// Where other relays reach this one's peer port, if it has one.
    pub fn peer_address(&self) -> Option<String> {
        let listen = self.peer_listen?;
        Some(self.advertise.clone().unwrap_or_else(|| listen.to_string()))
    }
}

/// Abuse limits (see [`crate::limits`]). A count of 0 means "no limit"; the defaults suit a
/// relay serving tens of thousands of devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Failed authentications (SSH keys and certificates, API tokens) one source address may
    /// make within `auth_failure_window` before it is refused for one more window.
    pub auth_failures_per_source: u32,
    /// The window of `auth_failures_per_source`, and how long a source is then refused.
    #[serde(with = "humantime_serde")]
    pub auth_failure_window: Duration,
    /// Authentication attempts allowed on one SSH connection (OpenSSH's MaxAuthTries).
    pub max_auth_tries: u32,
    /// SSH connections (TCP or WebSocket) that have not authenticated yet, in all.
    pub max_handshakes: usize,
    /// How long a new SSH connection waits for a place when all `max_handshakes` are taken
    /// before it is refused (at most `max_handshakes` connections wait); `0s` refuses at
    /// once. A reconnect storm then queues for a moment instead of backing off for long.
    #[serde(with = "humantime_serde")]
    pub handshake_wait: Duration,
    /// SSH connections that have not authenticated yet, per source address. A connection
    /// that logged in to enroll keeps its place until the login grace closes it.
    pub max_handshakes_per_source: usize,
    /// New SSH connections one source address may open per second, on average (a token
    /// bucket refilled at this rate); past it a connection is refused before the key
    /// exchange, which is what a DHEat flood is after. Raise it for a carrier NAT in front
    /// of many boards.
    pub handshake_rate_per_source: u32,
    /// New SSH connections one source may open at once before `handshake_rate_per_source`
    /// applies (the bucket's size).
    pub handshake_burst_per_source: u32,
    /// How long a connection may take from connecting to a useful login (OpenSSH's
    /// LoginGraceTime); connections that logged in only to enroll are closed after it too.
    #[serde(with = "humantime_serde")]
    pub login_grace: Duration,
    /// HTTP connections open at once, in all (a WebSocket link stops counting once upgraded).
    pub max_http_connections: usize,
    /// HTTP connections open at once per source address.
    pub max_http_connections_per_source: usize,
    /// Connections open at once on the peer port (`cluster.peer_listen`): each carries one
    /// engineer's stream from another relay.
    pub max_peer_connections: usize,
    /// Engineers' sessions open at once on one device.
    pub sessions_per_device: usize,
    /// Sessions one engineer may have open at once, over all devices.
    pub sessions_per_engineer: usize,
    /// Channels (sessions, forwards) open at once on one SSH connection.
    pub channels_per_connection: usize,
    /// An engineer's session with no traffic either way for this long is closed; `0s` never.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            auth_failures_per_source: 30,
            auth_failure_window: Duration::from_secs(60),
            max_auth_tries: 6,
            max_handshakes: 256,
            handshake_wait: Duration::from_secs(5),
            max_handshakes_per_source: 64,
            handshake_rate_per_source: 10,
            handshake_burst_per_source: 20,
            login_grace: Duration::from_secs(30),
            max_http_connections: 4096,
            max_http_connections_per_source: 256,
            max_peer_connections: 4096,
            sessions_per_device: 16,
            sessions_per_engineer: 32,
            channels_per_connection: 64,
            session_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// Settings of engineers' relay-terminated sessions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Record what engineers type in terminal sessions, not only what they see. Off by
    /// default: input holds passwords typed at prompts that do not echo.
    pub record_input: bool,
}

/// A section whose keys are all commented out (`store:` followed by comments only) is YAML
/// null; it means "all defaults", as in the example file, rather than a type error.
fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Settings of the SSH port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Interval of SSH keepalive probes to silent peers. Longer than the boards' own (120s),
    /// so that a board's keepalive, not the relay's, makes an idle link's one round trip.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Unanswered keepalives after which a peer is considered gone.
    pub keepalive_max: u32,
    /// Silence after which the kernel probes a connection (SSH port and HTTP port, so also
    /// WebSocket links) and drops a dead one within half as long again, without waking the
    /// relay; 0s leaves it off.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Also offer the older algorithms some clients still need: finite-field
    /// Diffie-Hellman key exchange (group14, group16, group18), the AES-CTR ciphers with their
    /// MACs and encrypt-and-MAC `hmac-sha2-256`/`-512`. Off by default: every OpenSSH since 7.4
    /// and every agent speaks curve25519 and AES-GCM.
    pub legacy_algorithms: bool,
}

/// Settings of the HTTP port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate and key; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted reverse proxy).
    pub trust_forwarded_for: bool,
}

/// PEM files for HTTPS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Settings of the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file; default `<data_dir>/relay.db`.
    pub path: Option<PathBuf>,
    /// Where the store is, as a URL: `sqlite:PATH`, or `postgres://USER@HOST:PORT/DATABASE`
    /// (with libpq's `sslmode` and `sslrootcert`) for a cluster of relays on one database.
    /// Instead of `path`, not beside it.
    pub url: Option<String>,
    /// Connections to PostgreSQL one relay keeps at most.
    pub pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: None,
            url: None,
            pool_size: crate::store::postgres::DEFAULT_POOL_SIZE,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            ssh: SshConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            sessions: SessionsConfig::default(),
            limits: LimitsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            trust_forwarded_for: false,
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 2222)),
            keepalive_interval: Duration::from_secs(180),
            keepalive_max: 3,
            tcp_keepalive: Duration::from_secs(60),
            legacy_algorithms: false,
        }
    }
}

/// Directory of the artifacts under the data directory.
pub const ARTIFACTS_DIR: &str = "artifacts";

/// Directory of the session recordings (cast files) under the data directory.
pub const SESSIONS_DIR: &str = "sessions";

/// Why a configuration file could not be used (shared with the agent's reader).
pub use tether_protocol::config_file::ConfigError;

impl RelayConfig {
    /// Where artifacts and recipes for devices are kept.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.data_dir.join(ARTIFACTS_DIR)
    }

    /// Where session recordings (asciicast files) are kept.
    pub fn sessions_dir(&self) -> PathBuf {
        self.data_dir.join(SESSIONS_DIR)
    }

    /// The SQLite file of the embedded store.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("relay.db"))
    }

    /// Where the store is: `store.url`, else the SQLite file of [`RelayConfig::store_path`].
    pub fn store_location(&self) -> Result<crate::store::Location, crate::store::StoreError> {
        match &self.store.url {
            Some(url) => crate::store::Location::parse(url, self.store.pool_size),
            None => Ok(crate::store::Location::Sqlite(self.store_path())),
        }
    }

    /// This relay's name in its cluster: `cluster.relay_id`, else `<host name>:<SSH port>`.
    pub fn relay_id(&self) -> String {
        self.cluster.relay_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "relay".into());
            format!("{host}:{}", self.ssh.listen.port())
        })
    }

    /// Loads the configuration file at `path` (same as [`load`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load(path)
    }

    /// Parses configuration text; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: RelayConfig = config_file::parse(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::invalid(path, key, message);
        if self.ssh.keepalive_interval.is_zero() {
            return Err(invalid(
                "ssh.keepalive_interval",
                "must be greater than zero",
            ));
        }
        if self.ssh.keepalive_max == 0 {
            return Err(invalid("ssh.keepalive_max", "must be at least 1"));
        }
        if self.limits.auth_failure_window.is_zero() {
            return Err(invalid(
                "limits.auth_failure_window",
                "must be greater than zero",
            ));
        }
        if self.limits.max_auth_tries == 0 {
            return Err(invalid("limits.max_auth_tries", "must be at least 1"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self
            .store
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid(
                "store.path",
                "must not be empty (leave it out for the default)",
            ));
        }
        if let Some(url) = &self.store.url {
            if self.store.path.is_some() {
                return Err(invalid(
                    "store.url",
                    "names the store, and so does store.path: keep one of them",
                ));
            }
            crate::store::Location::parse(url, self.store.pool_size).map_err(|e| {
                invalid("store.url", e.to_string().trim_start_matches("store.url: "))
            })?;
        }
        if let Some(nats) = &self.cluster.nats {
            if !(nats.starts_with("nats://") || nats.starts_with("tls://")) {
                return Err(invalid("cluster.nats", "must be a nats:// (or tls://) URL"));
            }
            let shared =
                self.store.url.as_deref().is_some_and(|u| {
                    u.starts_with("postgres://") || u.starts_with("postgresql://")
                });
            if !shared {
                return Err(invalid(
                    "cluster.nats",
                    "a cluster of relays shares one PostgreSQL store: set store.url to postgres://…",
                ));
            }
        }
        if let Some(listen) = self.cluster.peer_listen {
            if self.cluster.nats.is_none() {
                return Err(invalid(
                    "cluster.peer_listen",
                    "needs cluster.nats: other relays find this one through the presence map",
                ));
            }
            if listen.ip().is_unspecified() && self.cluster.advertise.is_none() {
                return Err(invalid(
                    "cluster.advertise",
                    "must name the HOST:PORT other relays dial when cluster.peer_listen listens on every address",
                ));
            }
        }
        if let Some(id) = &self.cluster.relay_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)))
        {
            return Err(invalid(
                "cluster.relay_id",
                "must be 1 to 64 letters, digits, '-', '_', '.' or ':'",
            ));
        }
        if self.store.pool_size == 0 {
            return Err(invalid("store.pool_size", "must be at least 1"));
        }
        if let Some(tls) = &self.http.tls {
            if tls.cert.as_os_str().is_empty() {
                return Err(invalid("http.tls.cert", "must name a PEM certificate file"));
            }
            if tls.key.as_os_str().is_empty() {
                return Err(invalid("http.tls.key", "must name a PEM private key file"));
            }
        }
        Ok(())
    }
}

/// Loads the configuration file at `path`.
pub fn load(path: &Path) -> Result<RelayConfig, ConfigError> {
    RelayConfig::parse(&config_file::read(path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RelayConfig, ConfigError> {
        RelayConfig::parse(text, Path::new("relay.yaml"))
    }

    #[test]
    fn defaults() -> Result<(), ConfigError> {
        let c = parse("")?;
        assert_eq!(c, RelayConfig::default());
        assert_eq!(c.ssh.listen.port(), 2222);
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(
            c.store_path(),
            PathBuf::from("/var/lib/tether-relay/relay.db")
        );
        Ok(())
    }

    #[test]
    fn full_file() -> Result<(), ConfigError> {
        let c = parse(
            "data_dir: /srv/relay\nssh:\n  listen: 127.0.0.1:2200\n  keepalive_interval: 1m\n  keepalive_max: 5\n\
             http:\n  listen: '[::1]:8443'\n  tls:\n    cert: /c.pem\n    key: /k.pem\n  trust_forwarded_for: true\n\
             store:\n  path: /db/relay.db\n",
        )?;
        assert_eq!(c.ssh.keepalive_interval, Duration::from_secs(60));
        assert_eq!(c.http.listen.port(), 8443);
        assert!(c.http.trust_forwarded_for);
        assert_eq!(
            c.http.tls.as_ref().map(|t| t.key.clone()),
            Some(PathBuf::from("/k.pem"))
        );
        assert_eq!(c.store_path(), PathBuf::from("/db/relay.db"));
        Ok(())
    }

    #[test]
    fn errors_name_file_line_and_key() -> Result<(), Box<dyn std::error::Error>> {
        let e = parse("ssh:\n  listen: 127.0.0.1:1\n  lisen: x\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("relay.yaml") && e.contains("lisen") && e.contains("line 3"),
            "{e}"
        );
        let e = parse("ssh:\n  listen: nowhere\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line 2"), "{e}");
        let e = parse("ssh:\n  keepalive_interval: 0s\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("ssh.keepalive_interval"), "{e}");
        let e = parse("http:\n  listen: 0.0.0.0:80\nssh:\n  keepalive_interval: soon\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("line 4") && e.contains("keepalive_interval"),
            "{e}"
        );
        let e = parse("http:\n  trust_forwarded_for: maybe\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line 2"), "{e}");
        let e = parse("http:\n  tls:\n    cert: /c.pem\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("key"), "{e}");
        let e = parse("store:\n  url: mysql://root:pw@db/x\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("store.url") && !e.contains("pw@"), "{e}");
        let e = parse("store:\n  url: postgres://db/x\n  path: /r.db\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("store.path"), "{e}");
        let e = parse("store:\n  url: postgres://db/x\n  pool_size: 0\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("store.pool_size"), "{e}");
        let e = parse("cluster:\n  nats: nats://n:4222\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("cluster.nats") && e.contains("PostgreSQL"),
            "{e}"
        );
        let e = parse("cluster:\n  relay_id: 'a b'\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("cluster.relay_id"), "{e}");
        let c = parse("store:\n  url: postgres://relay@db:5432/tether\n  pool_size: 4\n")?;
        assert_eq!(
            c.store_location()?,
            crate::store::Location::Postgres {
                url: "postgres://relay@db:5432/tether".into(),
                pool_size: 4
            }
        );
        let e = parse("store:\n  path: ''\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("store.path"), "{e}");
        Ok(())
    }

    #[test]
    fn load_reads_a_file_and_names_it_when_missing() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.yaml");
        std::fs::write(&path, "data_dir: /srv/tether\n")?;
        let c = load(&path)?;
        assert_eq!(c.store_path(), PathBuf::from("/srv/tether/relay.db"));
        assert_eq!(c.ssh, SshConfig::default());
        let missing = dir.path().join("nope.yaml");
        let e = RelayConfig::load(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nope.yaml"), "{e}");
        Ok(())
    }

    #[test]
    fn the_example_file_is_valid_and_shows_the_defaults() -> Result<(), ConfigError> {
        let example = include_str!("../relay.yaml.example");
        assert_eq!(parse(example)?, RelayConfig::default());
        // Sections whose keys are all commented out mean defaults.
        assert_eq!(
            parse("ssh:\nhttp:\nstore:\nsessions:\nlimits:\ncluster:\n")?,
            RelayConfig::default()
        );
        assert!(
            parse("sessions:\n  record_input: true\n")?
                .sessions
                .record_input
        );
        Ok(())
    }
}
