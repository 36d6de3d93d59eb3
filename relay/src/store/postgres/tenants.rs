//! Tenants in PostgreSQL.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{PgStore, is_unique_violation};
use crate::store::tenants::no_tenant;
use crate::store::{
    RemovedTenant, StoreError, Tenant, TenantContents, TenantStore, now, validate_name,
};

/// The columns [`tenant_from_row`] reads.
const TENANT_COLUMNS: &str = "id, name, created_at, retention_days, session_retention_days";

fn tenant_from_row(r: &Row) -> Tenant {
    Tenant {
        id: r.get(0),
        name: r.get(1),
        created_at: r.get(2),
        retention_days: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
        session_retention_days: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
    }
}

/// Tenant `name`, if it exists.
pub(super) async fn tenant_by_name(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<Tenant>, StoreError> {
    Ok(client
        .query_opt(
            &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1"),
            &[&name],
        )
        .await?
        .map(|r| tenant_from_row(&r)))
}

/// The id of tenant `name`, or NotFound naming it.
pub(super) async fn tenant_id(client: &impl GenericClient, name: &str) -> Result<i64, StoreError> {
    tenant_by_name(client, name)
        .await?
        .map(|t| t.id)
        .ok_or_else(|| no_tenant(name))
}

async fn count(
    client: &impl GenericClient,
    table: &str,
    tenant_id: i64,
) -> Result<u64, StoreError> {
    let row = client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE tenant_id = $1"),
            &[&tenant_id],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

async fn contents(
    client: &impl GenericClient,
    tenant_id: i64,
) -> Result<TenantContents, StoreError> {
    Ok(TenantContents {
        devices: count(client, "devices", tenant_id).await?,
        telemetry: count(client, "telemetry", tenant_id).await?,
        tokens: count(client, "tokens", tenant_id).await?,
        engineers: count(client, "users", tenant_id).await?,
        cas: count(client, "trusted_cas", tenant_id).await?,
        deployments: count(client, "deployments", tenant_id).await?,
        sessions: count(client, "sessions", tenant_id).await?,
        artifacts: count(client, "artifacts", tenant_id).await?,
    })
}

impl PgStore {
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
        let n = self.block(async {
            self.client()
                .await?
                .execute(
                    &format!("UPDATE tenants SET {column} = $2 WHERE name = $1"),
                    &[&tenant, &i64::from(days)],
                )
                .await
                .map_err(StoreError::from)
        })?;
        if n == 0 {
            return Err(no_tenant(tenant));
        }
        Ok(())
    }
}

impl TenantStore for PgStore {
    fn add_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        validate_name("tenant", name)?;
        self.block(async {
            let client = self.client().await?;
            match client
                .query_one(
                    &format!(
                        "INSERT INTO tenants (name, created_at) VALUES ($1, $2) RETURNING {TENANT_COLUMNS}"
                    ),
                    &[&name, &now()],
                )
                .await
            {
                Ok(row) => Ok(tenant_from_row(&row)),
                Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                    "tenant {name:?} already exists"
                ))),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.block(async {
            let rows = self
                .client()
                .await?
                .query(
                    &format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(tenant_from_row).collect())
        })
    }

    fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        self.block(async { tenant_by_name(&self.client().await?, name).await })
    }

    fn tenant_contents(&self, name: &str) -> Result<TenantContents, StoreError> {
        validate_name("tenant", name)?;
        self.block(async {
            let client = self.client().await?;
            let t = tenant_by_name(&client, name)
                .await?
                .ok_or_else(|| no_tenant(name))?;
            contents(&client, t.id).await
        })
    }

    fn remove_tenant(&self, name: &str, with_devices: bool) -> Result<RemovedTenant, StoreError> {
        validate_name("tenant", name)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let t = tenant_by_name(&tx, name)
                .await?
                .ok_or_else(|| no_tenant(name))?;
            // The row lock makes a concurrent removal of the same tenant wait for this one.
            tx.execute("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", &[&t.id])
                .await?;
            let deleted = contents(&tx, t.id).await?;
            if deleted.devices > 0 && !with_devices {
                return Err(StoreError::Conflict(format!(
                    "tenant {name} still has {} device(s); relay tenant remove {name} --with-devices --yes deletes them and their data",
                    deleted.devices
                )));
            }
            let strings = async |sql: &str| -> Result<Vec<String>, StoreError> {
                let rows = tx.query(sql, &[&t.id]).await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            };
            let device_ids = strings("SELECT id FROM devices WHERE tenant_id = $1").await?;
            let cast_files = strings(
                "SELECT cast_file FROM sessions WHERE tenant_id = $1 AND cast_file IS NOT NULL",
            )
            .await?;
            let orphaned_artifacts = strings(
                "SELECT a.sha256 FROM artifacts a WHERE a.tenant_id = $1 AND NOT EXISTS
                     (SELECT 1 FROM artifacts b WHERE b.sha256 = a.sha256 AND b.tenant_id != $1)",
            )
            .await?;
            // Telemetry has no foreign key (it is written in bulk by the sink); everything
            // else goes with the tenant row by ON DELETE CASCADE.
            tx.execute("DELETE FROM telemetry WHERE tenant_id = $1", &[&t.id])
                .await?;
            tx.execute("DELETE FROM tenants WHERE id = $1", &[&t.id])
                .await?;
            // The bytes of artifacts no other tenant holds go with them.
            tx.execute(
                "DELETE FROM artifact_blobs WHERE sha256 = ANY($1)",
                &[&orphaned_artifacts],
            )
            .await?;
            tx.commit().await?;
            Ok(RemovedTenant {
                deleted,
                device_ids,
                cast_files,
                orphaned_artifacts,
            })
        })
    }
}
