//! The PostgreSQL backend: the store of a cluster of relays, all of them on one database.
//!
//! It implements the same families of facts as the SQLite backend and passes the same
//! conformance suite. The store interface is blocking (see [`crate::store`]), while
//! `tokio-postgres` is asynchronous; the backend owns a small runtime of its own that drives
//! its connections, and each operation waits for its future on the calling thread
//! ([`PgStore::block`]). That works from any thread, a blocking thread of the relay's runtime
//! or the admin CLI's main thread alike, and never from inside the relay's own executor, so a
//! slow database stalls the call that waits for it and nothing else.
//!
//! Connections come from a `deadpool-postgres` pool with verified recycling: a connection is
//! checked with a round trip before it is handed out again, so a database restart costs the
//! calls in flight and nothing later. The schema is versioned in `schema_version`, and
//! migrations run under an advisory lock so that relays starting together apply each step
//! once (see `migrations.rs`).
//!
//! Every write that changes a device's desired state or queues an action inserts a
//! `device_changes` row in the same transaction, as with SQLite, so relays hear about each
//! other's writes by reading the new rows of one table a few times a second (one indexed query
//! per relay, not per device; see `changes.rs`).

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use super::{Backend, Notifier, StoreError};

mod actions;
mod artifacts;
mod audit;
mod cas;
mod changes;
mod devices;
mod fleet;
mod import;
mod keys;
mod migrations;
mod relays;
mod sessions;
mod telemetry;
mod tenants;
#[cfg(test)]
pub(crate) mod test_server;
mod tls;
mod tokens;
mod users;

/// How long a call waits for a free connection, or for a new one to be made, before it fails
/// with an error instead of hanging while the database is away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections one relay keeps at most.
pub const DEFAULT_POOL_SIZE: usize = 16;

pub use import::CopySummary;

/// The store in a PostgreSQL database.
pub struct PgStore {
    /// Drives the pool's connections; see the module doc.
    runtime: tokio::runtime::Runtime,
    pool: Pool,
    /// Told after each commit which devices changed.
    notifier: Notifier,
    /// How far the change feed has read.
    feed: Mutex<changes::Feed>,
    /// The relay this handle serves as, once it joined (see `relays.rs`).
    relay_id: std::sync::OnceLock<String>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db?sslmode=…`),
    /// with at most `pool_size` connections, and brings its schema up to date.
    ///
    /// `sslmode` is libpq's: `disable`, `prefer` (the default: TLS when the server offers it),
    /// `require` (TLS, any certificate), `verify-ca` and `verify-full` (TLS with a certificate
    /// from the system roots or from `sslrootcert=PATH`; `verify-full` also checks the host
    /// name). The password, if any, never appears in an error.
    pub fn open(url: &str, pool_size: usize) -> Result<PgStore, StoreError> {
        let (config, tls) = tls::parse_url(url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = {
            let _in_runtime = runtime.enter();
            Pool::builder(manager)
                .max_size(pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(CONNECT_TIMEOUT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| StoreError::Backend(Box::new(e)))?
        };
        let store = PgStore {
            runtime,
            pool,
            notifier: Notifier::new(),
            feed: Mutex::new(changes::Feed::default()),
            relay_id: std::sync::OnceLock::new(),
        };
        store.block(async {
            let mut client = store.client().await?;
            migrations::migrate(&mut client).await
        })?;
        let feed = store.block(async {
            let client = store.client().await?;
            changes::Feed::start(&client).await
        })?;
        *store.feed.lock().unwrap_or_else(|p| p.into_inner()) = feed;
        Ok(store)
    }

    /// The schema version this code writes; a database newer than this is refused.
    pub fn schema_version() -> i64 {
        migrations::latest()
    }

    /// Runs `future` to its end on the calling thread, with this backend's runtime driving the
    /// connections it uses.
    pub(crate) fn block<F: Future>(&self, future: F) -> F::Output {
        let _in_runtime = self.runtime.enter();
        wait(future)
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Wakes the thread that waits in [`wait`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` on this thread, parking between polls until its waker is called (by the
/// backend's runtime, whose thread drives the sockets and timers the future waits on).
fn wait<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        // A wake-up that came before this park makes it return at once; a spurious one only
        // costs another poll.
        std::thread::park();
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => e.into(),
        other => StoreError::Backend(format!("PostgreSQL connection pool: {other}").into()),
    }
}

impl Backend for PgStore {
    fn snapshot_into(&self, _path: &Path) -> Result<(), StoreError> {
        Err(StoreError::Invalid(
            "a PostgreSQL store is backed up with PostgreSQL's own tools (pg_dump, or continuous archiving); relay backup copies the SQLite store".into(),
        ))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn cluster_host_key(&self, candidate: &str) -> Result<Option<String>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            // Relays starting together race here; the first insert wins and all read it.
            client
                .execute(
                    "INSERT INTO relay_host_key (private_key, created_at) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&candidate, &super::now()],
                )
                .await?;
            let row = client
                .query_one("SELECT private_key FROM relay_host_key", &[])
                .await?;
            Ok(Some(row.get(0)))
        })
    }

    fn join_as_relay(&self, relay_id: &str) -> Result<super::Released, StoreError> {
        self.join(relay_id)
    }

    fn relay_heartbeat(&self) -> Result<(), StoreError> {
        self.heartbeat()
    }

    fn reap_silent_relays(&self, silent_for: Duration) -> Result<super::Released, StoreError> {
        self.reap(silent_for)
    }

    fn leave_relays(&self) -> Result<super::Released, StoreError> {
        self.leave()
    }

    fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    fn pick_up_changes(&self) -> Result<usize, StoreError> {
        changes::pick_up(self)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
}

/// Whether `e` is a violation of a UNIQUE or PRIMARY KEY constraint.
fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Converts a count or size the store keeps as BIGINT.
fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh database on the test server, for the conformance suite.
    fn fresh() -> Result<(test_server::Database, Box<dyn Backend>), Box<dyn std::error::Error>> {
        let db = test_server::Database::create()?;
        let store = PgStore::open(&db.url, 4)?;
        Ok((db, Box::new(store)))
    }

    crate::store::conformance::suite!(fresh);

    #[test]
    fn access_changes_through_another_handle_wake_this_ones_eviction_sweep()
    -> Result<(), Box<dyn std::error::Error>> {
        let db = test_server::Database::create()?;
        let relay = PgStore::open(&db.url, 2)?;
        let cli = PgStore::open(&db.url, 2)?;
        crate::store::conformance::access::access_changes_reach_the_serving_handle(&relay, &cli)
    }

    #[test]
    fn what_a_dead_relay_held_is_released_and_only_that() -> Result<(), Box<dyn std::error::Error>>
    {
        use crate::store::conformance::enroll;
        use crate::store::{DeviceStore, NewSession, SessionQuery, SessionStore, TenantStore};
        let db = test_server::Database::create()?;
        let r1 = PgStore::open(&db.url, 2)?;
        let r2 = PgStore::open(&db.url, 2)?;
        let first = r1.join_as_relay("r1")?;
        assert_eq!((first.devices, first.sessions), (0, 0));
        r2.join_as_relay("r2")?;
        assert!(r1.join_as_relay("again").is_err(), "a handle is one relay");
        let acme = r1.add_tenant("acme")?;
        let a = enroll(&r1, "acme", "a")?;
        let b = enroll(&r1, "acme", "b")?;
        r1.mark_online(&a, "192.0.2.1:1", None)?;
        r2.mark_online(&b, "192.0.2.2:1", None)?;
        let session = |store: &PgStore, device: &str| {
            store.open_session(NewSession {
                tenant_id: acme.id,
                device_id: device,
                device_name: "x",
                engineer: "alice",
                fingerprint: "SHA256:x",
                source: "192.0.2.9:1",
            })
        };
        let s1 = session(&r1, &a)?;
        let s2 = session(&r2, &b)?;
        let open = |id: &str| -> Result<bool, StoreError> {
            Ok(r2
                .sessions(&SessionQuery {
                    limit: 10,
                    ..Default::default()
                })?
                .iter()
                .any(|s| s.id == id && s.ended_at.is_none()))
        };

        // A relay that heartbeats is not reaped, however often the others reap.
        r1.relay_heartbeat()?;
        assert!(r2.reap_silent_relays(Duration::ZERO)?.relays.is_empty());

        // r1 goes silent (it was killed): after the silence, r2 releases r1's and only r1's.
        r2.block(async {
            r2.client()
                .await?
                .execute(
                    "UPDATE relays SET seen_at = seen_at - 100 WHERE id = 'r1'",
                    &[],
                )
                .await?;
            Ok::<_, StoreError>(())
        })?;
        assert!(
            r2.reap_silent_relays(Duration::from_secs(200))?
                .relays
                .is_empty()
        );
        let released = r2.reap_silent_relays(Duration::from_secs(30))?;
        assert_eq!(
            released,
            super::super::Released {
                relays: vec!["r1".into()],
                devices: 1,
                sessions: 1
            }
        );
        assert!(!r2.device(&a)?.is_some_and(|d| d.online));
        assert!(r2.device(&b)?.is_some_and(|d| d.online));
        assert!(!open(&s1)? && open(&s2)?);
        assert!(
            r2.reap_silent_relays(Duration::ZERO)?.relays.is_empty(),
            "reaped once"
        );

        // The device moved to r2; r1's late goodbye for its old link leaves it online.
        r2.mark_online(&a, "192.0.2.3:1", None)?;
        r1.mark_offline(&a)?;
        assert!(r2.device(&a)?.is_some_and(|d| d.online));

        // r2 restarts after a kill: what its previous run held is released when it joins.
        let r2_again = PgStore::open(&db.url, 2)?;
        let released = r2_again.join_as_relay("r2")?;
        assert_eq!((released.devices, released.sessions), (2, 1));
        assert!(!open(&s2)?);
        // And a clean stop releases what it holds.
        r2_again.mark_online(&b, "192.0.2.2:1", None)?;
        assert_eq!(r2_again.leave_relays()?.devices, 1);
        assert!(!r2.device(&b)?.is_some_and(|d| d.online));
        Ok(())
    }

    #[test]
    fn relays_starting_together_migrate_once_and_a_newer_schema_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let db = test_server::Database::create()?;
        // Four relays opening an empty database at once: the advisory lock lets one apply
        // each step, and every one ends at the newest version.
        let opened: Vec<Result<PgStore, StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| PgStore::open(&db.url, 1)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(StoreError::Invalid("panicked".into())))
                })
                .collect()
        });
        let mut stores = Vec::new();
        for o in opened {
            stores.push(o?);
        }
        let version: i64 = stores[0].block(async {
            Ok::<_, StoreError>(
                stores[0]
                    .client()
                    .await?
                    .query_one("SELECT version FROM schema_version", &[])
                    .await?
                    .get(0),
            )
        })?;
        assert_eq!(version, PgStore::schema_version());
        stores[0].block(async {
            stores[0]
                .client()
                .await?
                .execute("UPDATE schema_version SET version = 99", &[])
                .await
                .map_err(StoreError::from)
        })?;
        drop(stores);
        assert!(matches!(
            PgStore::open(&db.url, 1),
            Err(StoreError::TooNew { found: 99, .. })
        ));
        Ok(())
    }

    #[test]
    fn a_relay_without_the_file_writes_it_from_the_store_and_checks_it()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::store::{ArtifactStore, TenantStore};
        let db = test_server::Database::create()?;
        let store = PgStore::open(&db.url, 2)?;
        store.add_tenant("acme")?;
        let (one, two) = (tempfile::tempdir()?, tempfile::tempdir()?);
        // Three chunks, the last one short.
        let data: Vec<u8> = (0..(2 * artifacts::BLOB_CHUNK + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let info = store.put_artifact(one.path(), "acme", "big.bin", &data)?;
        assert!(store.ensure_artifact_file(two.path(), &info.sha256)?);
        assert_eq!(std::fs::read(two.path().join(&info.sha256))?, data);
        assert!(!store.ensure_artifact_file(two.path(), &"0".repeat(64))?);
        assert!(!store.ensure_artifact_file(two.path(), "../etc/passwd")?);
        // Bytes changed in the database are refused, and no file is left.
        store.block(async {
            store
                .client()
                .await?
                .execute("UPDATE artifact_blobs SET bytes = 'x' WHERE chunk = 1", &[])
                .await
                .map_err(StoreError::from)
        })?;
        let three = tempfile::tempdir()?;
        assert!(
            store
                .ensure_artifact_file(three.path(), &info.sha256)
                .is_err()
        );
        assert_eq!(std::fs::read_dir(three.path())?.count(), 0);
        Ok(())
    }
}
