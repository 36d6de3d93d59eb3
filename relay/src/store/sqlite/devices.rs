//! Devices in SQLite.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteStore;
use super::tenants::tenant_by_name;
use crate::store::devices::{is_welcome, no_device, only_device_named};
use crate::store::tenants::no_tenant;
use crate::store::{Device, DeviceStatus, DeviceStore, StoreError, now};

const DEVICE_COLUMNS: &str = "d.id, d.tenant_id, t.name, d.name, d.public_key, d.fingerprint, d.status, \
     d.created_at, d.online, d.last_connected, d.last_disconnected, d.remote_addr, d.agent_version";

pub(super) fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        tenant: row.get(2)?,
        name: row.get(3)?,
        public_key: row.get(4)?,
        fingerprint: row.get(5)?,
        status: DeviceStatus::parse(&row.get::<_, String>(6)?),
        created_at: row.get(7)?,
        online: row.get(8)?,
        last_connected: row.get(9)?,
        last_disconnected: row.get(10)?,
        remote_addr: row.get(11)?,
        agent_version: row.get(12)?,
    })
}

pub(super) fn device_where(
    conn: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Result<Option<Device>, StoreError> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE {filter}"
    );
    Ok(conn.query_row(&sql, p, device_from_row).optional()?)
}

pub(super) fn devices_where(
    conn: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<Device>, StoreError> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE {filter} ORDER BY t.name, d.name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(p, device_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl DeviceStore for SqliteStore {
    fn device_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Device>, StoreError> {
        device_where(
            &self.conn(),
            "d.fingerprint = ?1 OR d.next_fingerprint = ?1",
            params![fingerprint],
        )
    }

    fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        device_where(&self.conn(), "d.id = ?1", params![id])
    }

    fn find_device(
        &self,
        tenant_ids: &[i64],
        name_or_id: &str,
    ) -> Result<Option<Device>, StoreError> {
        let conn = self.conn();
        for tenant_id in tenant_ids {
            let found = device_where(
                &conn,
                "d.tenant_id = ?1 AND (d.name = ?2 OR d.id = ?2) ORDER BY d.id = ?2 DESC LIMIT 1",
                params![tenant_id, name_or_id],
            )?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn resolve_device(&self, id_or_name: &str) -> Result<Device, StoreError> {
        let conn = self.conn();
        if let Some(d) = device_where(&conn, "d.id = ?1", params![id_or_name])? {
            return Ok(d);
        }
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE d.name = ?1"
        );
        let mut stmt = conn.prepare(&sql)?;
        let found: Vec<Device> = stmt
            .query_map(params![id_or_name], device_from_row)?
            .collect::<Result<_, _>>()?;
        only_device_named(id_or_name, found)
    }

    fn devices(&self, tenant: Option<&str>) -> Result<Vec<Device>, StoreError> {
        let conn = self.conn();
        if let Some(name) = tenant
            && tenant_by_name(&conn, name)?.is_none()
        {
            return Err(no_tenant(name));
        }
        devices_where(&conn, "?1 IS NULL OR t.name = ?1", params![tenant])
    }

    fn tenant_devices(&self, tenant_id: i64) -> Result<Vec<Device>, StoreError> {
        devices_where(&self.conn(), "d.tenant_id = ?1", params![tenant_id])
    }

    fn set_device_status(&self, id: &str, status: DeviceStatus) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE devices SET status = ?2 WHERE id = ?1",
            params![id, status.as_str()],
        )?;
        if n == 0 {
            return Err(no_device(id));
        }
        Ok(())
    }

    fn remove_device(&self, id: &str) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM devices WHERE id = ?1", params![id])?;
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
        self.conn().execute(
            "UPDATE devices SET online = 1, last_connected = ?2, remote_addr = ?3,
                 agent_version = COALESCE(?4, agent_version) WHERE id = ?1",
            params![id, now(), remote_addr, agent_version],
        )?;
        Ok(())
    }

    fn mark_offline(&self, id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE devices SET online = 0, last_disconnected = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    fn mark_all_offline(&self) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE devices SET online = 0, last_disconnected = ?1 WHERE online = 1",
            params![now()],
        )?)
    }

    fn unwelcome_devices(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        // One read transaction: one consistent snapshot, and one lock instead of one per id.
        let tx = conn.transaction()?;
        let mut out = Vec::new();
        {
            let mut stmt = tx.prepare_cached("SELECT status FROM devices WHERE id = ?1")?;
            for id in ids {
                let status: Option<String> =
                    stmt.query_row(params![id], |r| r.get(0)).optional()?;
                if !is_welcome(status.as_deref()) {
                    out.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }
}
