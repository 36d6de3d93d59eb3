//! The SQLite backend: one file holds every durable fact of a relay.
//!
//! The serving relay and the admin CLI open the same file at once, so the database runs in WAL
//! mode with a busy timeout, and every change that touches more than one row is a single
//! transaction. The schema is versioned with `PRAGMA user_version`; migrations run in order,
//! each in its own transaction, and a database newer than this code is refused rather than
//! misread (see `migrations.rs`). Token secrets are stored only as SHA-256 hashes: the secret
//! is shown once when minted and a copy of the database file gives no usable token.
//!
//! Every write that changes a device's desired state or queues an action for it also inserts a
//! row into `device_changes` in the same transaction (see `changes.rs`), so the serving relay
//! hears about the admin CLI's writes without polling any device's state.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, params};

use super::devices::DeviceStore;
use super::sessions::SessionStore;
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

    fn is_shared(&self) -> bool {
        false
    }

    fn cluster_host_key(&self, _candidate: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// The only relay on this store: every link and session a previous run recorded is gone.
    fn join_as_relay(&self, relay_id: &str) -> Result<super::Released, StoreError> {
        let devices = self.mark_all_offline()?;
        let sessions = self.close_interrupted_sessions()?;
        Ok(super::Released {
            relays: vec![relay_id.to_string()],
            devices,
            sessions,
        })
    }

    /// Whatever a link could not record as it ended is cleared: no other relay shares it.
    fn leave_relays(&self) -> Result<super::Released, StoreError> {
        Ok(super::Released {
            devices: self.mark_all_offline()?,
            ..Default::default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{TestResult, enroll, enrollment, run, token};
    use crate::store::{
        ActionStore, AuditStore, DeviceStatus, DeviceStore, NewAudit, NewSession, SessionStore,
        TenantStore, TokenKind, TokenStore,
    };

    /// A fresh SQLite store in a temporary directory, for the conformance suite.
    fn fresh() -> Result<(tempfile::TempDir, Box<dyn Backend>), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("relay.db"))?;
        Ok((dir, Box::new(store)))
    }

    crate::store::conformance::suite!(fresh);

    #[test]
    fn migrations_are_idempotent_and_newer_files_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/relay.db");
        {
            let s = SqliteStore::open(&path)?;
            s.add_tenant("acme")?;
        }
        let s = SqliteStore::open(&path)?;
        assert_eq!(s.tenants()?.len(), 1);
        drop(s);
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "user_version", 99)?;
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
        Ok(())
    }

    #[test]
    fn new_files_are_private_and_wal() -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state/relay.db");
        let s = SqliteStore::open(&path)?;
        s.add_tenant("acme")?;
        let mode = |p: &Path| -> std::io::Result<u32> {
            Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
        };
        assert_eq!(mode(&dir.path().join("state"))?, 0o700);
        assert_eq!(mode(&path)?, 0o600);
        let journal: String = s
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!(journal, "wal");
        let fk: bool = s
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
        assert!(fk);
        Ok(())
    }

    #[test]
    fn concurrent_redemptions_from_several_processes_respect_the_use_limit() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let s = SqliteStore::open(&path)?;
        s.add_tenant("acme")?;
        let secret = token(&s, "acme", None, Some(3))?;
        // Each thread has its own connection, as separate relay processes would.
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (path, secret) = (path.clone(), secret.clone());
                std::thread::spawn(move || -> Result<bool, String> {
                    let store = SqliteStore::open(&path).map_err(|e| e.to_string())?;
                    match store.redeem_enroll_token(
                        &secret,
                        enrollment(&format!("b{i}"), &format!("fp{i}")),
                    ) {
                        Ok(_) => Ok(true),
                        Err(StoreError::TokenUsedUp) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    }
                })
            })
            .collect();
        let mut enrolled = 0;
        for h in handles {
            if h.join().map_err(|_| "thread panicked")?? {
                enrolled += 1;
            }
        }
        assert_eq!(enrolled, 3);
        assert_eq!(s.devices(Some("acme"))?.len(), 3);
        assert_eq!(s.tokens(None)?[0].uses_left, Some(0));
        Ok(())
    }

    #[test]
    fn two_handles_on_one_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let a = SqliteStore::open(&path)?;
        let b = SqliteStore::open(&path)?;
        a.add_tenant("acme")?;
        assert!(b.tenant_by_name("acme")?.is_some());
        assert!(matches!(b.add_tenant("acme"), Err(StoreError::Conflict(_))));
        // A change made through one handle is seen by the other at once (the admin CLI
        // rejecting a device while the relay serves it).
        let t = token(&a, "acme", None, None)?;
        let d = b.redeem_enroll_token(&t, enrollment("b1", "fp1"))?.device;
        assert!(b.unwelcome_devices(std::slice::from_ref(&d.id))?.is_empty());
        a.set_device_status(&d.id, DeviceStatus::Rejected)?;
        assert_eq!(
            b.unwelcome_devices(std::slice::from_ref(&d.id))?,
            vec![d.id.clone()]
        );
        a.remove_device(&d.id)?;
        assert!(b.device(&d.id)?.is_none());
        assert!(matches!(
            b.remove_device(&d.id),
            Err(StoreError::NotFound { .. })
        ));
        Ok(())
    }

    #[test]
    fn token_secrets_are_stored_hashed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let s = SqliteStore::open(&path)?;
        s.add_tenant("acme")?;
        let once = token(&s, "acme", None, Some(1))?;
        let api = s.create_token(crate::store::NewToken {
            tenant: "acme",
            kind: TokenKind::Api,
            ttl: None,
            uses: None,
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        drop(s);
        let mut bytes = std::fs::read(&path)?;
        if let Ok(wal) = std::fs::read(dir.path().join("relay.db-wal")) {
            bytes.extend(wal);
        }
        for secret in [&once, &api.secret] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret stored in clear"
            );
        }
        Ok(())
    }

    #[test]
    fn an_unreadable_stored_action_fails_without_blocking_the_others() -> TestResult {
        let (_dir, store) = fresh_sqlite()?;
        store.add_tenant("acme")?;
        let b1 = enroll(&store, "acme", "b1")?;
        let broken = store.create_action(None, &b1, &run("a"), None)?;
        let fine = store.create_action(None, &b1, &run("b"), None)?;
        store.conn().execute(
            "UPDATE actions SET action = '{\"kind\":\"dance\"}' WHERE id = ?1",
            params![broken.id],
        )?;
        let taken = store.take_pending_actions(&b1)?;
        assert_eq!(
            taken.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            vec![fine.id.as_str()]
        );
        let status: String = store.conn().query_row(
            "SELECT status FROM actions WHERE id = ?1",
            params![broken.id],
            |r| r.get(0),
        )?;
        assert_eq!(status, "failed");
        Ok(())
    }

    #[test]
    fn a_pending_action_past_its_expiry_reads_expired_before_it_is_taken() -> TestResult {
        let (_dir, store) = fresh_sqlite()?;
        store.add_tenant("acme")?;
        let b1 = enroll(&store, "acme", "b1")?;
        let past = store.create_action(
            None,
            &b1,
            &run("later"),
            Some(std::time::Duration::from_secs(3600)),
        )?;
        store.conn().execute(
            "UPDATE actions SET expires_at = ?2 WHERE id = ?1",
            params![past.id, crate::store::unix_now() - 10],
        )?;
        let view = store.action(&past.id, None)?.ok_or("missing")?;
        assert_eq!(
            (view.status, view.finished_at),
            (tether_protocol::fleet::ActionStatus::Expired, None)
        );
        assert!(store.take_pending_actions(&b1)?.is_empty());
        let view = store.action(&past.id, None)?.ok_or("missing")?;
        assert!(view.finished_at.is_some() && view.sent_at.is_none());
        Ok(())
    }

    #[test]
    fn the_audit_table_refuses_updates_and_deletes() -> TestResult {
        let (_dir, store) = fresh_sqlite()?;
        store.audit(NewAudit {
            actor: "admin",
            action: "tenant.add",
            ..Default::default()
        })?;
        let conn = store.conn();
        assert!(
            conn.execute("UPDATE audit SET actor = 'mallory'", [])
                .is_err()
        );
        assert!(conn.execute("DELETE FROM audit", []).is_err());
        drop(conn);
        assert_eq!(store.audit_entries(None, None, 100, false)?.len(), 1);
        Ok(())
    }

    #[test]
    fn sessions_past_their_tenants_retention_expire() -> TestResult {
        let (_dir, store) = fresh_sqlite()?;
        let acme = store.add_tenant("acme")?;
        let a = store.open_session(NewSession {
            tenant_id: acme.id,
            device_id: "dev_1",
            device_name: "board1",
            engineer: "alice",
            fingerprint: "SHA256:x",
            source: "127.0.0.1:1",
        })?;
        store.close_session(
            &a,
            &crate::store::SessionEnd {
                reason: "exited".into(),
                cast_file: Some("a.cast".into()),
                ..Default::default()
            },
        )?;
        store.set_session_retention("acme", 1)?;
        store.conn().execute(
            "UPDATE sessions SET started_ms = started_ms - 2 * 86400000 WHERE id = ?1",
            params![a],
        )?;
        assert_eq!(store.expire_sessions()?, vec!["a.cast".to_string()]);
        assert!(store.session(&a, None).is_err());
        Ok(())
    }

    #[test]
    fn another_processs_writes_reach_this_ones_devices_through_the_change_feed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let relay = SqliteStore::open(&path)?;
        let cli = SqliteStore::open(&path)?;
        relay.add_tenant("acme")?;
        let b1 = enroll(&relay, "acme", "b1")?;
        let b2 = enroll(&relay, "acme", "b2")?;
        let mut c1 = relay.notifier().subscribe(&b1);
        let mut c2 = relay.notifier().subscribe(&b2);
        c1.take_change();
        c2.take_change();
        // Nothing written elsewhere: the check reads no table and notifies nobody.
        assert_eq!(relay.pick_up_changes()?, 0);
        cli.create_action(None, &b1, &run("uptime"), None)?;
        // The other handle's notifier is not this one's.
        assert!(!c1.has_changed());
        assert_eq!(relay.pick_up_changes()?, 1);
        assert!(c1.take_change());
        assert!(!c2.take_change());
        // Each change is picked up once.
        assert_eq!(relay.pick_up_changes()?, 0);
        // Writes by this handle notified at once and do not come back as another's.
        relay.create_action(None, &b2, &run("uptime"), None)?;
        assert!(c2.take_change());
        assert_eq!(relay.pick_up_changes()?, 0);
        // Writes that change no device's state or queue (here a tenant) notify nobody.
        cli.add_tenant("globex")?;
        assert_eq!(
            relay.pick_up_changes()?,
            1,
            "b2's own change is listed once more"
        );
        assert_eq!(relay.pick_up_changes()?, 0);
        Ok(())
    }

    #[test]
    fn another_processs_access_changes_wake_this_ones_eviction_sweep() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let relay = SqliteStore::open(&path)?;
        let cli = SqliteStore::open(&path)?;
        crate::store::conformance::access::access_changes_reach_the_serving_handle(&relay, &cli)
    }

    #[test]
    fn old_change_rows_are_pruned() -> TestResult {
        let (_dir, store) = fresh_sqlite()?;
        store.add_tenant("acme")?;
        let b1 = enroll(&store, "acme", "b1")?;
        store.create_action(None, &b1, &run("uptime"), None)?;
        let rows = |s: &SqliteStore| -> rusqlite::Result<i64> {
            s.conn()
                .query_row("SELECT count(*) FROM device_changes", [], |r| r.get(0))
        };
        assert_eq!(rows(&store)?, 1);
        store.conn().execute(
            "UPDATE device_changes SET at = at - ?1",
            params![changes::KEEP_SECS + 1],
        )?;
        store.feed.lock().map_err(|_| "poisoned")?.age_for_tests();
        store.pick_up_changes()?;
        assert_eq!(rows(&store)?, 0);
        Ok(())
    }

    /// A fresh SQLite store as itself, for tests that look inside.
    fn fresh_sqlite() -> Result<(tempfile::TempDir, SqliteStore), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("relay.db"))?;
        Ok((dir, store))
    }
}
