//! The audit trail in PostgreSQL. Append-only: a trigger refuses every UPDATE, DELETE and
//! TRUNCATE on the table.
#![allow(unused_variables, unused_imports)]

use deadpool_postgres::GenericClient;

use super::PgStore;
use crate::store::*;
use std::time::SystemTime;

/// Appends an entry on `client`, inside whatever transaction it is in (so the entry commits
/// with the change it records, or not at all).
pub(super) async fn append(client: &impl GenericClient, e: NewAudit<'_>) -> Result<(), StoreError> {
    let detail = if e.detail.is_null() {
        "{}".to_string()
    } else {
        e.detail.to_string()
    };
    client
        .execute(
            "INSERT INTO audit (at, tenant, actor, action, target, source, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&now(), &e.tenant, &e.actor, &e.action, &e.target, &e.source, &detail],
        )
        .await?;
    Ok(())
}

impl AuditStore for PgStore {
    fn audit(&self, e: NewAudit<'_>) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn audit_entries(
        &self,
        since: Option<SystemTime>,
        tenant: Option<&str>,
        limit: usize,
        oldest: bool,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
