//! Every durable fact of the relay, behind one interface: tenants, tokens, engineers, devices,
//! fleet state, actions, sessions, the audit trail and telemetry.
//!
//! [`Backend`] is the interface: one supertrait per family of facts ([`TenantStore`],
//! [`DeviceStore`], [`FleetStore`], …), each declared beside the types it speaks in, so every
//! backend implements a family in one place and a caller never learns which database is
//! behind it. [`Store`] is what callers hold: it dereferences to `dyn Backend`, so
//! `store.devices(..)` needs no import, and [`Store::open`] opens the SQLite backend
//! ([`sqlite`]), the default and today the only one. PostgreSQL is to implement the same
//! traits and run the same conformance suite (`store/conformance/`) unchanged.
//!
//! Every operation is blocking. The SQLite backend does file I/O under a mutex, and the
//! PostgreSQL one is to use the blocking `postgres` client; async callers run operations on
//! tokio's blocking threads (`spawn_blocking`), which keeps one calling convention for both and
//! keeps transactions, which span several statements, out of async code.
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
pub use sessions::{NewSession, SessionEnd, SessionQuery, SessionRecord, SessionStore};
pub use telemetry::{StoredRecord, TelemetryQuery, TelemetryStore};
pub use tenants::{RemovedTenant, Tenant, TenantContents, TenantStore};
pub use tokens::{
    ApiIdentity, CreatedToken, NewToken, TokenInfo, TokenKind, TokenState, TokenStore,
};
pub use users::{EngineerIdentity, EngineerKey, LiveEngineer, LiveGrants, Role, User, UserStore};
use values::{hash_secret, random_hex, rfc3339_from_unix, unix_now};
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

    /// The notifier this backend tells, after each commit, which devices' desired state or
    /// queued actions changed.
    fn notifier(&self) -> &Notifier;

    /// Notifies the devices whose desired state or queued actions changed through another
    /// handle on the same store (another process, such as the admin CLI) since the last call,
    /// and forgets old change records; returns how many devices were notified. Cheap when
    /// nothing changed: the relay's one [`notify::Watcher`] calls it a few times a second.
    fn pick_up_changes(&self) -> Result<usize, StoreError>;
}

/// The relay's store, as callers hold it: a backend behind the [`Backend`] interface.
pub struct Store(Box<dyn Backend>);

impl Store {
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
