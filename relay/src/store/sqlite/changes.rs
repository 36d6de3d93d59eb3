//! The SQLite change feed: which devices' desired state or queued actions changed, for the
//! relay to hear about writes made by other processes on the same file (the admin CLI).
//!
//! A write that changes what a device should do inserts a `device_changes` row in its own
//! transaction ([`record`]), so the row exists exactly when the change does. The writing
//! handle notifies its own process at once after the commit; the serving relay's watcher calls
//! [`pick_up`] a few times a second, which first asks `PRAGMA data_version`. That number moves
//! only when another connection committed, so while nobody else writes, a check is one pragma
//! on an idle connection and reads no table; when it moved, the rows after the last one seen
//! name the devices to notify, and the access generation (a number that triggers move with
//! every write to who may stay connected) says whether the relay's eviction sweep must run.
//! Rows older than [`KEEP_SECS`] are deleted now and then: a reader that was away longer
//! starts afresh anyway (its control channels send the whole state when they open).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::SqliteStore;
use crate::store::{StoreError, unix_now};

/// How long a change row is kept, in seconds.
pub(super) const KEEP_SECS: i64 = 3600;

/// How often old change rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How far one handle has read the feed.
pub(super) struct Feed {
    /// `PRAGMA data_version` when last checked.
    data_version: i64,
    /// The last change row read.
    last_id: i64,
    /// The access generation when last read: it moves when who may stay connected changed.
    access: i64,
    /// When old rows were last deleted.
    pruned_at: Instant,
}

impl Feed {
    /// A feed positioned after every change already recorded: a handle hears only about
    /// changes made after it opened.
    pub(super) fn start(conn: &Connection) -> Result<Feed, StoreError> {
        Ok(Feed {
            data_version: data_version(conn)?,
            last_id: conn.query_row(
                "SELECT COALESCE(MAX(id), 0) FROM device_changes",
                [],
                |r| r.get(0),
            )?,
            access: access_generation(conn)?,
            pruned_at: Instant::now(),
        })
    }
}

fn access_generation(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT n FROM access_generation WHERE id = 1", [], |r| {
            r.get(0)
        })?,
    )
}

#[cfg(test)]
impl Feed {
    /// Makes the next [`pick_up`] prune at once.
    pub(super) fn age_for_tests(&mut self) {
        self.pruned_at = Instant::now()
            .checked_sub(PRUNE_EVERY)
            .unwrap_or(self.pruned_at);
    }
}

fn data_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

/// Records, inside the caller's transaction, that `device_id`'s desired state or queue
/// changed.
pub(super) fn record(conn: &Connection, device_id: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO device_changes (device_id, at) VALUES (?1, ?2)",
        params![device_id, unix_now()],
    )?;
    Ok(())
}

/// Notifies the devices changed through other connections since the last call; see the
/// module doc.
pub(super) fn pick_up(store: &SqliteStore) -> Result<usize, StoreError> {
    let conn = store.conn();
    let mut feed = store.feed.lock().unwrap_or_else(|p| p.into_inner());
    if feed.pruned_at.elapsed() >= PRUNE_EVERY {
        feed.pruned_at = Instant::now();
        conn.execute(
            "DELETE FROM device_changes WHERE at < ?1",
            params![unix_now().saturating_sub(KEEP_SECS)],
        )?;
    }
    let version = data_version(&conn)?;
    if version == feed.data_version {
        return Ok(0);
    }
    feed.data_version = version;
    let mut devices = BTreeSet::new();
    {
        let mut stmt = conn
            .prepare_cached("SELECT id, device_id FROM device_changes WHERE id > ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![feed.last_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (id, device) = row?;
            feed.last_id = feed.last_id.max(id);
            devices.insert(device);
        }
    }
    let access = access_generation(&conn)?;
    let access_moved = access != feed.access;
    feed.access = access;
    drop(feed);
    drop(conn);
    if access_moved {
        store.notifier.notify_access();
    }
    // This handle's own writes are among the rows too (they notified at once already); a
    // second notification only costs the channel a read.
    for device in &devices {
        store.notifier.notify_local(device);
    }
    Ok(devices.len())
}
