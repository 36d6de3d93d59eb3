//! Devices in PostgreSQL.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgStore;
use super::tenants::tenant_by_name;
use crate::store::devices::{is_welcome, no_device, only_device_named};
use crate::store::tenants::no_tenant;
use crate::store::{Device, DeviceStatus, DeviceStore, StoreError, now};

/// The columns [`device_from_row`] reads, of `devices d JOIN tenants t`.
const DEVICE_COLUMNS: &str = "d.id, d.tenant_id, t.name, d.name, d.public_key, d.fingerprint, d.status, \
     d.created_at, d.online, d.last_connected, d.last_disconnected, d.remote_addr, d.agent_version";

/// A device from a row of [`DEVICE_COLUMNS`].
pub(super) fn device_from_row(row: &Row) -> Device {
    Device {
        id: row.get(0),
        tenant_id: row.get(1),
        tenant: row.get(2),
        name: row.get(3),
        public_key: row.get(4),
        fingerprint: row.get(5),
        status: DeviceStatus::parse(row.get::<_, &str>(6)),
        created_at: row.get(7),
        online: row.get(8),
        last_connected: row.get(9),
        last_disconnected: row.get(10),
        remote_addr: row.get(11),
        agent_version: row.get(12),
    }
}

/// The one device matching `filter` (SQL over `d` and `t`, with `$1`… bound to `params`).
pub(super) async fn device_where(
    client: &impl GenericClient,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Device>, StoreError> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE {filter}"
    );
    Ok(client
        .query_opt(&sql, params)
        .await?
        .map(|r| device_from_row(&r)))
}

/// The devices matching `filter`, by tenant name and device name.
pub(super) async fn devices_where(
    client: &impl GenericClient,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Device>, StoreError> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE {filter} ORDER BY t.name, d.name"
    );
    Ok(client
        .query(&sql, params)
        .await?
        .iter()
        .map(device_from_row)
        .collect())
}

impl DeviceStore for PgStore {
    fn device_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Device>, StoreError> {
        // A device being rotated is found by its next key too, until its first login with it.
        self.block(async {
            device_where(
                &self.client().await?,
                "d.fingerprint = $1 OR d.next_fingerprint = $1",
                &[&fingerprint],
            )
            .await
        })
    }

    fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        self.block(async { device_where(&self.client().await?, "d.id = $1", &[&id]).await })
    }

    fn find_device(
        &self,
        tenant_ids: &[i64],
        name_or_id: &str,
    ) -> Result<Option<Device>, StoreError> {
        // One query instead of one per tenant: the first tenant of the list that has a match
        // wins, and within it a device whose id matches comes before one merely named so (a
        // device named like another's id never shadows that id).
        self.block(async {
            device_where(
                &self.client().await?,
                "d.tenant_id = ANY($1) AND (d.name = $2 OR d.id = $2)
                 ORDER BY array_position($1, d.tenant_id), (d.id = $2) DESC LIMIT 1",
                &[&tenant_ids, &name_or_id],
            )
            .await
        })
    }

    fn resolve_device(&self, id_or_name: &str) -> Result<Device, StoreError> {
        self.block(async {
            let client = self.client().await?;
            if let Some(d) = device_where(&client, "d.id = $1", &[&id_or_name]).await? {
                return Ok(d);
            }
            let found = devices_where(&client, "d.name = $1", &[&id_or_name]).await?;
            only_device_named(id_or_name, found)
        })
    }

    fn devices(&self, tenant: Option<&str>) -> Result<Vec<Device>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            // An unknown tenant is an error, not an empty list.
            if let Some(name) = tenant
                && tenant_by_name(&client, name).await?.is_none()
            {
                return Err(no_tenant(name));
            }
            devices_where(&client, "$1::text IS NULL OR t.name = $1", &[&tenant]).await
        })
    }

    fn tenant_devices(&self, tenant_id: i64) -> Result<Vec<Device>, StoreError> {
        self.block(async {
            devices_where(&self.client().await?, "d.tenant_id = $1", &[&tenant_id]).await
        })
    }

    fn set_device_status(&self, id: &str, status: DeviceStatus) -> Result<(), StoreError> {
        let n = self.block(async {
            self.client()
                .await?
                .execute(
                    "UPDATE devices SET status = $2 WHERE id = $1",
                    &[&id, &status.as_str()],
                )
                .await
                .map_err(StoreError::from)
        })?;
        if n == 0 {
            return Err(no_device(id));
        }
        Ok(())
    }

    fn remove_device(&self, id: &str) -> Result<(), StoreError> {
        // Its tags, states, deployment rows and actions go with it by ON DELETE CASCADE.
        let n = self.block(async {
            self.client()
                .await?
                .execute("DELETE FROM devices WHERE id = $1", &[&id])
                .await
                .map_err(StoreError::from)
        })?;
        if n == 0 {
            return Err(no_device(id));
        }
        Ok(())
    }

    fn mark_online(
        &self,
        id: &str,
        remote_addr: &str,
        agent_version: Option<&str>,
    ) -> Result<(), StoreError> {
        // An agent that did not say its version keeps the one known from before.
        self.block(async {
            self.client()
                .await?
                .execute(
                    "UPDATE devices SET online = TRUE, last_connected = $2, remote_addr = $3,
                         agent_version = COALESCE($4::text, agent_version), held_by = $5
                     WHERE id = $1",
                    &[&id, &now(), &remote_addr, &agent_version, &self.relay_id()],
                )
                .await?;
            Ok(())
        })
    }

    fn mark_offline(&self, id: &str) -> Result<(), StoreError> {
        self.block(async {
            self.client()
                .await?
                .execute(
                    // A relay whose link ended after the device linked to another relay
                    // leaves the flag to that relay.
                    "UPDATE devices SET online = FALSE, held_by = NULL, last_disconnected = $2
                     WHERE id = $1 AND ($3::text IS NULL OR held_by IS NULL OR held_by = $3)",
                    &[&id, &now(), &self.relay_id()],
                )
                .await?;
            Ok(())
        })
    }

    fn mark_all_offline(&self) -> Result<usize, StoreError> {
        self.block(async {
            let n = self
                .client()
                .await?
                .execute(
                    "UPDATE devices SET online = FALSE, last_disconnected = $1 WHERE online",
                    &[&now()],
                )
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn unwelcome_devices(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        // One statement: one consistent snapshot, and one round trip instead of one per id.
        let statuses: HashMap<String, String> = self.block(async {
            let rows = self
                .client()
                .await?
                .query("SELECT id, status FROM devices WHERE id = ANY($1)", &[&ids])
                .await?;
            Ok::<_, StoreError>(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        // Unknown devices are unwelcome too; the order is the caller's.
        Ok(ids
            .iter()
            .filter(|id| !is_welcome(statuses.get(id.as_str()).map(String::as_str)))
            .cloned()
            .collect())
    }
}
