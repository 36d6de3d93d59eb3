//! Trusted certificate authorities in PostgreSQL.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgStore;
use super::tenants::tenant_id;
use crate::store::{CaStore, EngineerKey, Role, StoreError, TrustedCa, now, validate_name};

/// The columns [`ca_from_row`] reads, of `trusted_cas c JOIN tenants t`.
pub(super) const CA_COLUMNS: &str =
    "c.tenant_id, t.name, c.public_key, c.fingerprint, c.role, c.principals, c.created_at";

/// A trusted CA from a row of [`CA_COLUMNS`].
pub(super) fn ca_from_row(r: &Row) -> Result<TrustedCa, StoreError> {
    Ok(TrustedCa {
        tenant_id: r.get(0),
        tenant: r.get(1),
        public_key: r.get(2),
        fingerprint: r.get(3),
        role: Role::parse(r.get::<_, &str>(4))?,
        // The store writes this list itself; a damaged one limits no principal rather than
        // failing every login of the tenant.
        principals: serde_json::from_str(r.get::<_, &str>(5)).unwrap_or_default(),
        created_at: r.get(6),
    })
}

/// The trusted CAs matching `filter` (SQL over `c` and `t`, with `$1`… bound to `params`),
/// in the order `order` (SQL too).
pub(super) async fn cas_where(
    client: &impl GenericClient,
    filter: &str,
    order: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<TrustedCa>, StoreError> {
    let sql = format!(
        "SELECT {CA_COLUMNS} FROM trusted_cas c JOIN tenants t ON t.id = c.tenant_id
         WHERE {filter} ORDER BY {order}"
    );
    client
        .query(&sql, params)
        .await?
        .iter()
        .map(ca_from_row)
        .collect()
}

impl CaStore for PgStore {
    fn trust_ca(
        &self,
        tenant: &str,
        key: &str,
        role: Role,
        principals: &[String],
    ) -> Result<TrustedCa, StoreError> {
        let key = EngineerKey::parse(key)?;
        for p in principals {
            validate_name("principal", p)?;
        }
        let principals_json = serde_json::to_string(principals).unwrap_or_else(|_| "[]".into());
        self.block(async {
            let client = self.client().await?;
            let tenant_id = tenant_id(&client, tenant).await?;
            // Trusting a CA again changes its role and principals and keeps when it was first
            // trusted; the row as it is afterwards is read back in the same statement.
            let row = client
                .query_one(
                    &format!(
                        "WITH c AS (
                             INSERT INTO trusted_cas (tenant_id, public_key, fingerprint, role, principals, created_at)
                             VALUES ($1, $2, $3, $4, $5, $6)
                             ON CONFLICT (tenant_id, fingerprint)
                                 DO UPDATE SET role = EXCLUDED.role, principals = EXCLUDED.principals
                             RETURNING *)
                         SELECT {CA_COLUMNS} FROM c JOIN tenants t ON t.id = c.tenant_id"
                    ),
                    &[
                        &tenant_id,
                        &key.openssh,
                        &key.fingerprint,
                        &role.as_str(),
                        &principals_json,
                        &now(),
                    ],
                )
                .await?;
            ca_from_row(&row)
        })
    }

    fn untrust_ca(&self, tenant: &str, fingerprint: &str) -> Result<(), StoreError> {
        let n = self.block(async {
            let client = self.client().await?;
            let tenant_id = tenant_id(&client, tenant).await?;
            client
                .execute(
                    "DELETE FROM trusted_cas WHERE tenant_id = $1 AND fingerprint = $2",
                    &[&tenant_id, &fingerprint],
                )
                .await
                .map_err(StoreError::from)
        })?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "trusted CA",
                key: fingerprint.to_string(),
            });
        }
        Ok(())
    }

    fn trusted_cas(&self, tenant: Option<&str>) -> Result<Vec<TrustedCa>, StoreError> {
        self.block(async {
            cas_where(
                &self.client().await?,
                "$1::text IS NULL OR t.name = $1",
                "t.name, c.fingerprint",
                &[&tenant],
            )
            .await
        })
    }

    fn cas_by_fingerprint(&self, fingerprint: &str) -> Result<Vec<TrustedCa>, StoreError> {
        // In tenant order, as the engineer identities of a key are.
        self.block(async {
            cas_where(
                &self.client().await?,
                "c.fingerprint = $1",
                "t.id",
                &[&fingerprint],
            )
            .await
        })
    }

    fn any_trusted_ca(&self) -> Result<bool, StoreError> {
        self.block(async {
            Ok(self
                .client()
                .await?
                .query_one("SELECT EXISTS (SELECT 1 FROM trusted_cas)", &[])
                .await?
                .get(0))
        })
    }
}
