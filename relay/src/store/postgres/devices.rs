//! Devices in PostgreSQL.
#![allow(unused_variables, unused_imports)]

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgStore;
use crate::store::*;

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
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn find_device(
        &self,
        tenant_ids: &[i64],
        name_or_id: &str,
    ) -> Result<Option<Device>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn resolve_device(&self, id_or_name: &str) -> Result<Device, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn devices(&self, tenant: Option<&str>) -> Result<Vec<Device>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn tenant_devices(&self, tenant_id: i64) -> Result<Vec<Device>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn set_device_status(&self, id: &str, status: DeviceStatus) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn remove_device(&self, id: &str) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn mark_online(
        &self,
        id: &str,
        remote_addr: &str,
        agent_version: Option<&str>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn mark_offline(&self, id: &str) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn mark_all_offline(&self) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn unwelcome_devices(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
