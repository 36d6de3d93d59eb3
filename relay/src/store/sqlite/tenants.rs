//! Tenants in SQLite.

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{SqliteStore, is_unique_violation};
use crate::store::tenants::no_tenant;
use crate::store::{
    RemovedTenant, StoreError, Tenant, TenantContents, TenantStore, now, validate_name,
};

/// The id of tenant `name`, or NotFound naming it.
pub(super) fn tenant_id(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    tenant_by_name(conn, name)?
        .map(|t| t.id)
        .ok_or_else(|| no_tenant(name))
}

pub(super) fn tenant_by_name(conn: &Connection, name: &str) -> Result<Option<Tenant>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?1"),
            params![name],
            tenant_from_row,
        )
        .optional()?)
}

/// The columns [`tenant_from_row`] reads.
const TENANT_COLUMNS: &str = "id, name, created_at, retention_days, session_retention_days";

fn tenant_from_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        retention_days: r.get(3)?,
        session_retention_days: r.get(4)?,
    })
}

pub(super) fn count(conn: &Connection, sql: &str, tenant_id: i64) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(sql, params![tenant_id], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(super) fn contents(conn: &Connection, tenant_id: i64) -> Result<TenantContents, StoreError> {
    Ok(TenantContents {
        devices: count(
            conn,
            "SELECT count(*) FROM devices WHERE tenant_id = ?1",
            tenant_id,
        )?,
        telemetry: count(
            conn,
            "SELECT count(*) FROM telemetry WHERE tenant_id = ?1",
            tenant_id,
        )?,
        tokens: count(
            conn,
            "SELECT count(*) FROM tokens WHERE tenant_id = ?1",
            tenant_id,
        )?,
        engineers: count(
            conn,
            "SELECT count(*) FROM users WHERE tenant_id = ?1",
            tenant_id,
        )?,
        cas: count(
            conn,
            "SELECT count(*) FROM trusted_cas WHERE tenant_id = ?1",
            tenant_id,
        )?,
        deployments: count(
            conn,
            "SELECT count(*) FROM deployments WHERE tenant_id = ?1",
            tenant_id,
        )?,
        sessions: count(
            conn,
            "SELECT count(*) FROM sessions WHERE tenant_id = ?1",
            tenant_id,
        )?,
        artifacts: count(
            conn,
            "SELECT count(*) FROM artifacts WHERE tenant_id = ?1",
            tenant_id,
        )?,
    })
}

impl SqliteStore {
    /// Sets a tenant's day count `column` (one of its retention settings, `what` in errors).
    pub(super) fn set_tenant_days(
        &self,
        tenant: &str,
        column: &'static str,
        what: &str,
        days: u32,
    ) -> Result<(), StoreError> {
        if days == 0 {
            return Err(StoreError::Invalid(format!(
                "{what} must be at least 1 day"
            )));
        }
        let n = self.conn().execute(
            &format!("UPDATE tenants SET {column} = ?2 WHERE name = ?1"),
            params![tenant, days],
        )?;
        if n == 0 {
            return Err(no_tenant(tenant));
        }
        Ok(())
    }
}

impl TenantStore for SqliteStore {
    fn add_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        validate_name("tenant", name)?;
        let conn = self.conn();
        let created_at = now();
        match conn.execute(
            "INSERT INTO tenants (name, created_at) VALUES (?1, ?2)",
            params![name, created_at],
        ) {
            Ok(_) => Ok(conn.query_row(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"),
                params![conn.last_insert_rowid()],
                tenant_from_row,
            )?),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "tenant {name:?} already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"
        ))?;
        let rows = stmt.query_map([], tenant_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        tenant_by_name(&self.conn(), name)
    }

    fn tenant_contents(&self, name: &str) -> Result<TenantContents, StoreError> {
        validate_name("tenant", name)?;
        let conn = self.conn();
        let t = tenant_by_name(&conn, name)?.ok_or_else(|| no_tenant(name))?;
        contents(&conn, t.id)
    }

    fn remove_tenant(&self, name: &str, with_devices: bool) -> Result<RemovedTenant, StoreError> {
        validate_name("tenant", name)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let t = tenant_by_name(&tx, name)?.ok_or_else(|| no_tenant(name))?;
        let deleted = contents(&tx, t.id)?;
        if deleted.devices > 0 && !with_devices {
            return Err(StoreError::Conflict(format!(
                "tenant {name} still has {} device(s); relay tenant remove {name} --with-devices --yes deletes them and their data",
                deleted.devices
            )));
        }
        let strings = |sql: &str| -> Result<Vec<String>, StoreError> {
            let mut stmt = tx.prepare(sql)?;
            let rows = stmt.query_map(params![t.id], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let device_ids = strings("SELECT id FROM devices WHERE tenant_id = ?1")?;
        let cast_files = strings(
            "SELECT cast_file FROM sessions WHERE tenant_id = ?1 AND cast_file IS NOT NULL",
        )?;
        let orphaned_artifacts = strings(
            "SELECT a.sha256 FROM artifacts a WHERE a.tenant_id = ?1 AND NOT EXISTS
                 (SELECT 1 FROM artifacts b WHERE b.sha256 = a.sha256 AND b.tenant_id != ?1)",
        )?;
        // Telemetry has no foreign key (it is written in bulk by the sink); everything else
        // goes with the tenant row by ON DELETE CASCADE.
        tx.execute("DELETE FROM telemetry WHERE tenant_id = ?1", params![t.id])?;
        tx.execute("DELETE FROM tenants WHERE id = ?1", params![t.id])?;
        tx.commit()?;
        Ok(RemovedTenant {
            deleted,
            device_ids,
            cast_files,
            orphaned_artifacts,
        })
    }
}
