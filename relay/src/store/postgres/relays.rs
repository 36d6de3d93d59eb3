//! The relays serving from this database, so that what a dead relay held is released.
//!
//! A single relay on its own store marks every device offline and closes every open session
//! when it starts, since whatever was open belonged to its previous run. Relays sharing a
//! store cannot: the other relays' links and sessions are live. So each relay records its id
//! on the devices it holds (`devices.held_by`) and the sessions it carries (`sessions.relay`),
//! and writes `relays.seen_at` every few seconds. What a relay left behind is released when it
//! starts again under the same id, when it stops, and, for a relay that died for good, by any
//! other relay once that relay has been silent long enough.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::PgStore;
use crate::store::{Released, StoreError, unix_now};

/// Marks `relays`' devices offline and their sessions interrupted, in the caller's
/// transaction.
async fn release(client: &impl GenericClient, relays: &[String]) -> Result<Released, StoreError> {
    let now = crate::store::now();
    let devices = client
        .execute(
            "UPDATE devices SET online = FALSE, held_by = NULL, last_disconnected = $2
             WHERE online AND held_by = ANY($1)",
            &[&relays, &now],
        )
        .await?;
    let sessions = client
        .execute(
            "UPDATE sessions SET ended_at = $2, end_reason = 'interrupted'
             WHERE ended_at IS NULL AND relay = ANY($1)",
            &[&relays, &now],
        )
        .await?;
    Ok(Released {
        relays: relays.to_vec(),
        devices: usize::try_from(devices).unwrap_or(usize::MAX),
        sessions: usize::try_from(sessions).unwrap_or(usize::MAX),
    })
}

impl PgStore {
    /// This handle's relay id, once it joined.
    pub(super) fn relay_id(&self) -> Option<&str> {
        self.relay_id.get().map(String::as_str)
    }

    pub(super) fn join(&self, relay_id: &str) -> Result<Released, StoreError> {
        if self.relay_id.set(relay_id.to_string()).is_err() {
            return Err(StoreError::Invalid(
                "this store handle already serves as a relay".into(),
            ));
        }
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let released = release(&tx, &[relay_id.to_string()]).await?;
            tx.execute(
                "INSERT INTO relays (id, started_at, seen_at) VALUES ($1, $2, $2)
                 ON CONFLICT (id) DO UPDATE SET started_at = $2, seen_at = $2",
                &[&relay_id, &unix_now()],
            )
            .await?;
            tx.commit().await?;
            Ok(released)
        })
    }

    pub(super) fn heartbeat(&self) -> Result<(), StoreError> {
        let Some(id) = self.relay_id() else {
            return Ok(());
        };
        self.block(async {
            self.client()
                .await?
                .execute(
                    "INSERT INTO relays (id, started_at, seen_at) VALUES ($1, $2, $2)
                     ON CONFLICT (id) DO UPDATE SET seen_at = $2",
                    &[&id, &unix_now()],
                )
                .await?;
            Ok(())
        })
    }

    pub(super) fn reap(&self, silent_for: Duration) -> Result<Released, StoreError> {
        let me = self.relay_id().unwrap_or_default().to_string();
        let before =
            unix_now().saturating_sub(i64::try_from(silent_for.as_secs()).unwrap_or(i64::MAX));
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Relays reaping together each take the rows the others have not locked.
            let dead: Vec<String> = tx
                .query(
                    "SELECT id FROM relays WHERE seen_at < $1 AND id <> $2
                     FOR UPDATE SKIP LOCKED",
                    &[&before, &me],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if dead.is_empty() {
                return Ok(Released::default());
            }
            let released = release(&tx, &dead).await?;
            tx.execute("DELETE FROM relays WHERE id = ANY($1)", &[&dead])
                .await?;
            tx.commit().await?;
            Ok(released)
        })
    }

    pub(super) fn leave(&self) -> Result<Released, StoreError> {
        let Some(id) = self.relay_id() else {
            return Ok(Released::default());
        };
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let released = release(&tx, &[id.to_string()]).await?;
            tx.execute("DELETE FROM relays WHERE id = $1", &[&id])
                .await?;
            tx.commit().await?;
            Ok(released)
        })
    }
}
