//! The PostgreSQL change feed: which devices' desired state or queued actions changed through
//! other handles (other relays of the cluster, the admin CLI), for this relay to notify the
//! control channels it holds.
//!
//! A write that changes what a device should do inserts a `device_changes` row in its own
//! transaction ([`record`]). [`pick_up`] reads the rows after the last one seen: one query on
//! an index a few times a second per relay, whatever the number of devices, and the access
//! generation, a number that triggers move with every write to who may stay connected: when it
//! moved, the relay's eviction sweep runs. Rows older than [`KEEP_SECS`] are deleted now and
//! then; a reader that was away longer starts afresh anyway.
//!
//! Identity values are handed out at insert but become visible at commit, so a row with a
//! lower id than one already seen may still appear (a longer transaction that started first).
//! The feed therefore reads again the rows of the last few seconds instead of only those past
//! the highest id, and remembers the ids it has seen there: a late row is picked up, and a
//! notification repeated costs a read, never a wrong state.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use deadpool_postgres::GenericClient;

use super::PgStore;
use crate::store::{StoreError, unix_now};

/// How long a change row is kept, in seconds.
const KEEP_SECS: i64 = 3600;

/// How often old change rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How far back rows are read again, in seconds: longer than any write transaction holds an
/// uncommitted change row.
const LATE_SECS: i64 = 10;

/// How far one handle has read the feed.
pub(super) struct Feed {
    /// The ids seen among the rows of the last [`LATE_SECS`], with their time.
    seen: HashSet<i64>,
    /// The oldest id not yet certainly committed-or-seen: rows from here on are read.
    low_id: i64,
    /// When old rows were last deleted.
    pruned_at: Instant,
    /// The access generation when last read: it moves when who may stay connected changed.
    access: i64,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed {
            seen: HashSet::new(),
            low_id: 0,
            pruned_at: Instant::now(),
            access: 0,
        }
    }
}

/// The access generation: triggers move it with every write to who may stay connected.
async fn access_generation(client: &impl GenericClient) -> Result<i64, StoreError> {
    let row = client
        .query_one("SELECT n FROM access_generation WHERE id = 1", &[])
        .await?;
    Ok(row.get(0))
}

impl Feed {
    /// A feed positioned after every change already recorded.
    pub(super) async fn start(client: &impl GenericClient) -> Result<Feed, StoreError> {
        let row = client
            .query_one("SELECT COALESCE(MAX(id), 0) FROM device_changes", &[])
            .await?;
        Ok(Feed {
            low_id: row.get::<_, i64>(0) + 1,
            access: access_generation(client).await?,
            ..Feed::default()
        })
    }
}

/// Records, inside the caller's transaction, that `device_id`'s desired state or queue
/// changed.
pub(super) async fn record(client: &impl GenericClient, device_id: &str) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO device_changes (device_id, at) VALUES ($1, $2)",
            &[&device_id, &unix_now()],
        )
        .await?;
    Ok(())
}

/// Notifies the devices changed through other handles since the last call; see the module doc.
pub(super) fn pick_up(store: &PgStore) -> Result<usize, StoreError> {
    let mut feed = store.feed.lock().unwrap_or_else(|p| p.into_inner());
    let (devices, access_moved) = store.block(async {
        let client = store.client().await?;
        if feed.pruned_at.elapsed() >= PRUNE_EVERY {
            feed.pruned_at = Instant::now();
            client
                .execute(
                    "DELETE FROM device_changes WHERE at < $1",
                    &[&unix_now().saturating_sub(KEEP_SECS)],
                )
                .await?;
        }
        let rows = client
            .query(
                "SELECT id, device_id, at FROM device_changes WHERE id >= $1 ORDER BY id",
                &[&feed.low_id],
            )
            .await?;
        let late = unix_now().saturating_sub(LATE_SECS);
        let mut devices = BTreeSet::new();
        let mut low = None;
        for row in &rows {
            let id: i64 = row.get(0);
            let at: i64 = row.get(2);
            if feed.seen.insert(id) {
                devices.insert(row.get::<_, String>(1));
            }
            // Rows older than the lateness bound cannot be preceded by a row still to commit:
            // the window starts after the last of them.
            if at < late {
                low = Some(id + 1);
            }
        }
        if let Some(low) = low {
            feed.low_id = low;
            feed.seen.retain(|id| *id >= low);
        }
        let access = access_generation(&client).await?;
        let access_moved = access != feed.access;
        feed.access = access;
        Ok::<_, StoreError>((devices, access_moved))
    })?;
    drop(feed);
    if access_moved {
        store.notifier.notify_access();
    }
    for device in &devices {
        store.notifier.notify_local(device);
    }
    Ok(devices.len())
}
