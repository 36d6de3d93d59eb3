//! Trusted certificate authorities in SQLite.

use super::tenants::tenant_id;
use rusqlite::params;

use super::SqliteStore;
use crate::store::{CaStore, EngineerKey, Role, StoreError, TrustedCa, now, validate_name};

pub(super) fn ca_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TrustedCa, String, String)> {
    Ok((
        TrustedCa {
            tenant_id: r.get(0)?,
            tenant: r.get(1)?,
            public_key: r.get(2)?,
            fingerprint: r.get(3)?,
            role: Role::Viewer,
            principals: Vec::new(),
            created_at: r.get(6)?,
        },
        r.get(4)?,
        r.get(5)?,
    ))
}

pub(super) fn finish(row: (TrustedCa, String, String)) -> Result<TrustedCa, StoreError> {
    let (mut ca, role, principals) = row;
    ca.role = Role::parse(&role)?;
    ca.principals = serde_json::from_str(&principals).unwrap_or_default();
    Ok(ca)
}

pub(super) const CA_COLUMNS: &str =
    "c.tenant_id, t.name, c.public_key, c.fingerprint, c.role, c.principals, c.created_at";

impl CaStore for SqliteStore {
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
        let conn = self.conn();
        let tenant_id = tenant_id(&conn, tenant)?;
        let principals_json = serde_json::to_string(principals).unwrap_or_else(|_| "[]".into());
        conn.execute(
            "INSERT INTO trusted_cas (tenant_id, public_key, fingerprint, role, principals, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (tenant_id, fingerprint) DO UPDATE SET role = ?4, principals = ?5",
            params![
                tenant_id,
                key.openssh,
                key.fingerprint,
                role.as_str(),
                principals_json,
                now()
            ],
        )?;
        drop(conn);
        self.trusted_cas(Some(tenant))?
            .into_iter()
            .find(|c| c.fingerprint == key.fingerprint)
            .ok_or_else(|| StoreError::NotFound {
                what: "trusted CA",
                key: key.fingerprint,
            })
    }

    fn untrust_ca(&self, tenant: &str, fingerprint: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let tenant_id = tenant_id(&conn, tenant)?;
        let n = conn.execute(
            "DELETE FROM trusted_cas WHERE tenant_id = ?1 AND fingerprint = ?2",
            params![tenant_id, fingerprint],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "trusted CA",
                key: fingerprint.to_string(),
            });
        }
        Ok(())
    }

    fn trusted_cas(&self, tenant: Option<&str>) -> Result<Vec<TrustedCa>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CA_COLUMNS} FROM trusted_cas c JOIN tenants t ON t.id = c.tenant_id
             WHERE ?1 IS NULL OR t.name = ?1 ORDER BY t.name, c.fingerprint"
        ))?;
        let rows = stmt.query_map(params![tenant], ca_from_row)?;
        rows.map(|r| finish(r?)).collect()
    }

    fn cas_by_fingerprint(&self, fingerprint: &str) -> Result<Vec<TrustedCa>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CA_COLUMNS} FROM trusted_cas c JOIN tenants t ON t.id = c.tenant_id
             WHERE c.fingerprint = ?1 ORDER BY t.id"
        ))?;
        let rows = stmt.query_map(params![fingerprint], ca_from_row)?;
        rows.map(|r| finish(r?)).collect()
    }

    fn any_trusted_ca(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT EXISTS (SELECT 1 FROM trusted_cas)", [], |r| {
                r.get(0)
            })?)
    }
}
