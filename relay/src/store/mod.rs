//! Every durable fact of the relay, behind one interface: tenants, tokens, engineers, devices,
//! fleet state, actions, sessions, the audit trail and telemetry.
//!
//! [`Backend`] is the interface: one supertrait per family of facts ([`TenantStore`],
//! [`DeviceStore`], [`FleetStore`], …), each declared beside the types it speaks in, so every
//! backend implements a family in one place and a caller never learns which database is
//! behind it. [`Store`] is what callers hold: it dereferences to `dyn Backend`, so
//! `store.devices(..)` needs no import. [`Store::connect`] opens the backend a [`Location`]
//! names: the SQLite file ([`sqlite`]), the default for a single relay, or a PostgreSQL
//! database ([`postgres`]) shared by a cluster of relays. Both implement the same traits and
//! pass the same conformance suite (`store/conformance/`).
//!
//! Every operation is blocking. The SQLite backend does file I/O under a mutex, and the
//! PostgreSQL one waits on the calling thread for its asynchronous client; async callers run
//! operations on tokio's blocking threads (`spawn_blocking`), which keeps one calling
//! convention for both and keeps transactions, which span several statements, out of async
//! code.
//!
//! Writes that change what a device should do notify it through [`notify`]: nothing polls the
//! store per device.

use std::ops::Deref;
use std::path::{Path, PathBuf};

mod actions;
mod artifacts;
mod audit;
pub mod blocking;
mod cas;
#[cfg(test)]
mod conformance;
mod devices;
mod error;
mod fleet;
mod keys;
pub mod notify;
pub mod postgres;
mod relays;
mod sessions;
pub mod sqlite;
mod telemetry;
mod tenants;
mod tokens;
mod users;
mod values;

pub use actions::{ActionStore, ActionView};
pub use artifacts::{ArtifactInfo, ArtifactStore};
pub use audit::{AuditEntry, AuditStore, NewAudit};
pub use cas::{CaStore, TrustedCa};
pub use devices::{Device, DeviceEnrollment, DeviceStatus, DeviceStore, EnrolledDevice};
pub use error::StoreError;
pub use fleet::{
    DeploymentDevice, DeploymentView, DeviceState, FleetStore, NewDeployment, Target,
    config_overrides, read_local_artifacts,
};
pub use keys::{DeviceKeyStore, DeviceLogin};
pub use notify::{DeviceChanges, Notifier};
pub use relays::Released;
pub use sessions::{NewSession, SessionEnd, SessionQuery, SessionRecord, SessionStore};
pub use telemetry::{StoredRecord, TelemetryQuery, TelemetryStore};
pub use tenants::{RemovedTenant, Tenant, TenantContents, TenantStore};
pub use tokens::{
    ApiIdentity, CreatedToken, NewToken, TokenInfo, TokenKind, TokenState, TokenStore,
};
pub use users::{EngineerIdentity, EngineerKey, LiveEngineer, LiveGrants, Role, User, UserStore};
use values::{expires_after, hash_secret, random_hex, rfc3339_from_unix, unix_now};
pub use values::{now, validate_name};

/// Everything a store backend does: every family of facts, plus what concerns the store as a
/// whole.
pub trait Backend:
    TenantStore
    + TokenStore
    + UserStore
    + DeviceStore
    + DeviceKeyStore
    + FleetStore
    + ArtifactStore
    + ActionStore
    + SessionStore
    + AuditStore
    + TelemetryStore
    + CaStore
    + Send
    + Sync
{
    /// Writes a consistent copy of the whole store to `path` (which must not exist), mode
    /// 0600, while other handles go on reading and writing: the data of a backup. (SQLite:
    /// one snapshot of the database file, WAL included.)
    fn snapshot_into(&self, path: &Path) -> Result<(), StoreError>;

    /// Whether several relays may serve from this store at once (PostgreSQL), so that one
    /// relay's start-up must not reset what the others hold (their devices' online flags,
    /// their open sessions).
    fn is_shared(&self) -> bool;

    /// The host key every relay on this store presents (OpenSSH private key text): the one
    /// stored, or `candidate` (this relay's own) stored now when there is none yet, so the
    /// first relay of a cluster decides and every later one follows. `None` for a store that
    /// only one relay uses (SQLite), whose host key is the file in its data directory.
    fn cluster_host_key(&self, candidate: &str) -> Result<Option<String>, StoreError>;

    /// Serves from now on as relay `relay_id`: the links and sessions recorded through this
    /// handle are that relay's, and whatever a previous run of it left open (it was killed)
    /// is released now. On a store only one relay uses, that is every link and session.
    fn join_as_relay(&self, relay_id: &str) -> Result<Released, StoreError>;

    /// Says that this handle's relay is alive; called every few seconds.
    fn relay_heartbeat(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Releases what relays silent for longer than `silent_for` held (their devices offline,
    /// their sessions interrupted) and forgets them: a relay that died for good.
    fn reap_silent_relays(&self, silent_for: std::time::Duration) -> Result<Released, StoreError> {
        let _ = silent_for;
        Ok(Released::default())
    }

    /// Releases what this handle's relay still holds as it stops (on a store only one relay
    /// uses, every device still recorded online).
    fn leave_relays(&self) -> Result<Released, StoreError>;

    /// The notifier this backend tells, after each commit, which devices' desired state or
    /// queued actions changed.
    fn notifier(&self) -> &Notifier;

    /// Notifies the devices whose desired state or queued actions changed through another
    /// handle on the same store (another process, such as the admin CLI) since the last call,
    /// and forgets old change records; returns how many devices were notified. Cheap when
    /// nothing changed: the relay's one [`notify::Watcher`] calls it a few times a second.
    fn pick_up_changes(&self) -> Result<usize, StoreError>;
}

/// Where a store is: what `store.url` in the relay's configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (`sqlite:PATH`, or `store.path`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`), with at most `pool_size` connections.
    Postgres {
        /// The URL, password included.
        url: String,
        /// Connections kept at most.
        pool_size: usize,
    },
}

impl Location {
    /// Reads a store URL: `sqlite:PATH` or `postgres://…` (`postgresql://…`).
    pub fn parse(url: &str, pool_size: usize) -> Result<Location, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError::Invalid(
                    "store.url: sqlite: names no file (sqlite:/var/lib/tether-relay/relay.db)"
                        .into(),
                ));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Location::Postgres {
                url: url.to_string(),
                pool_size,
            });
        }
        Err(StoreError::Invalid(format!(
            "store.url: {:?} is neither sqlite:PATH nor postgres://HOST/DATABASE",
            redact(url)
        )))
    }

    /// Whether a store exists there already. A PostgreSQL database is created by its
    /// administrator, never by the relay, so it always counts as existing.
    pub fn exists(&self) -> bool {
        match self {
            Location::Sqlite(path) => path.exists(),
            Location::Postgres { .. } => true,
        }
    }
}

impl std::fmt::Display for Location {
    /// The location as a log line or an error may show it: without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres { url, .. } => f.write_str(&redact(url)),
        }
    }
}

/// `url` with the password of its user info replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            if user_info.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                url.to_string()
            }
        }
        None => url.to_string(),
    }
}

/// The relay's store, as callers hold it: a backend behind the [`Backend`] interface.
pub struct Store(Box<dyn Backend>);

impl Store {
    /// Opens the store at `location` (creating a SQLite file if needed) and brings its schema
    /// up to date.
    pub fn connect(location: &Location) -> Result<Store, StoreError> {
        match location {
            Location::Sqlite(path) => Store::open(path),
            Location::Postgres { url, pool_size } => {
                Ok(Store(Box::new(postgres::PgStore::open(url, *pool_size)?)))
            }
        }
    }

    /// Opens (creating if needed) the SQLite store at `path` and brings its schema up to date;
    /// see [`sqlite::SqliteStore::open`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store(Box::new(sqlite::SqliteStore::open(path)?)))
    }

    /// A store over any backend.
    pub fn new(backend: Box<dyn Backend>) -> Store {
        Store(backend)
    }

    /// Where an artifact's bytes are: `artifacts_dir` joined with the digest, or `None` when
    /// `sha256` is not a digest (so it can never name another path).
    pub fn artifact_path(artifacts_dir: &Path, sha256: &str) -> Option<PathBuf> {
        artifacts::artifact_path(artifacts_dir, sha256)
    }
}

impl Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &(dyn Backend + 'static) {
        &*self.0
    }
}

#[cfg(test)]
mod location_tests {
    use super::*;

    #[test]
    fn store_urls_are_read_and_passwords_never_shown() -> Result<(), StoreError> {
        assert_eq!(
            Location::parse("sqlite:/var/lib/r.db", 4)?,
            Location::Sqlite(PathBuf::from("/var/lib/r.db"))
        );
        assert_eq!(
            Location::parse("sqlite:relative.db", 4)?,
            Location::Sqlite(PathBuf::from("relative.db"))
        );
        let pg = Location::parse(
            "postgres://relay:hunter2@db:5432/tether?sslmode=verify-full",
            4,
        )?;
        assert_eq!(
            pg.to_string(),
            "postgres://relay:***@db:5432/tether?sslmode=verify-full"
        );
        let e = match Location::parse("mysql://root:pw@h/db", 4) {
            Ok(l) => panic!("accepted {l}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("store.url") && !e.contains("pw@"), "{e}");
        assert!(Location::parse("sqlite:", 4).is_err());
        Ok(())
    }
}
