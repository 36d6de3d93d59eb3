//! The SQLite backend: one file holds every durable fact of a relay.
//!
//! The serving relay and the admin CLI open the same file at once, so the database runs in WAL
//! mode with a busy timeout, and every change that touches more than one row is a single
//! transaction. The schema is versioned with `PRAGMA user_version`; migrations run in order,
//! each in its own transaction, and a database newer than this code is refused rather than
//! misread (see [`migrations`]). Token secrets are stored only as SHA-256 hashes: the secret
//! is shown once when minted and a copy of the database file gives no usable token.
//!
//! Every write that changes a device's desired state or queues an action for it also inserts a
//! row into `device_changes` in the same transaction (see [`changes`]), so the serving relay
//! hears about the admin CLI's writes without polling any device's state.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, params};

use super::{Backend, Notifier, StoreError};

mod actions;
mod artifacts;
mod audit;
mod cas;
mod changes;
mod devices;
mod fleet;
mod keys;
mod migrations;
mod sessions;
mod telemetry;
mod tenants;
mod tokens;
mod users;

/// The store in one SQLite file, behind one connection.
pub struct SqliteStore {
    /// One connection: SQLite serializes writers anyway, and `PRAGMA data_version` (the change
    /// feed's cheap check) is only meaningful on one connection.
    conn: Mutex<Connection>,
    /// Told after each commit which devices changed.
    notifier: Notifier,
    /// How far the change feed has read what other handles wrote.
    feed: Mutex<changes::Feed>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    ///
    /// A new file is created with mode 0600 and a missing parent directory with mode 0700: the
    /// store holds device and engineer keys and token hashes, readable by the relay alone.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        // Create the file ourselves so it never exists with the umask's wider mode, not even
        // for a moment; SQLite gives its -wal and -shm files the mode of the database file.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let mut conn = Connection::open(path)?;
        // The relay and the admin CLI write the same file; a writer waits for the other
        // instead of failing at once.
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Some file systems (network mounts) cannot do WAL; SQLite then keeps its rollback
            // journal, which is correct, only readers block writers.
            tracing::warn!(
                "{}: SQLite refused WAL mode (journal mode {mode}); readers will block writers",
                path.display()
            );
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        // NORMAL is durable across process crashes in WAL mode; only an OS crash may lose the
        // last commits, and it never corrupts the file.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrations::migrate(&mut conn)?;
        let feed = changes::Feed::start(&conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            notifier: Notifier::new(),
            feed: Mutex::new(feed),
        })
    }

    /// The schema version this code writes; a store file newer than this is refused.
    pub fn schema_version() -> i64 {
        migrations::latest()
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back),
        // so a poisoned lock can be used again.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for SqliteStore {
    fn snapshot_into(&self, path: &Path) -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let target = path
            .to_str()
            .ok_or_else(|| StoreError::Invalid(format!("{} is not UTF-8", path.display())))?;
        self.conn().execute("VACUUM INTO ?1", params![target])?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
            StoreError::Io {
                path: path.display().to_string(),
                source,
            }
        })
    }

    fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    fn pick_up_changes(&self) -> Result<usize, StoreError> {
        changes::pick_up(self)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}
