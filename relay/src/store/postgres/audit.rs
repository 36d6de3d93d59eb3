//! The audit trail in PostgreSQL. Append-only: a trigger refuses every UPDATE, DELETE and
//! TRUNCATE on the table.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;

use super::{PgStore, to_i64};
use crate::store::{AuditEntry, AuditStore, NewAudit, StoreError, now};

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
        self.block(async { append(&self.client().await?, e).await })
    }

    fn audit_entries(
        &self,
        since: Option<SystemTime>,
        tenant: Option<&str>,
        limit: usize,
        oldest: bool,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // `at` is text in the one form `now()` writes; the bound is written the same way so
        // that comparing them as bytes (COLLATE "C", whatever the database's locale)
        // compares the times.
        let since = since.map(crate::timestamp::store_form);
        let order = if oldest { "ASC" } else { "DESC" };
        let limit = to_i64(limit);
        self.block(async {
            let rows = self
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT * FROM (SELECT id, at, tenant, actor, action, target, source, detail FROM audit
                             WHERE ($1::text IS NULL OR at COLLATE \"C\" >= $1)
                               AND ($2::text IS NULL OR tenant = $2)
                             ORDER BY id {order} LIMIT $3) AS picked
                         ORDER BY id"
                    ),
                    &[&since, &tenant, &limit],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| AuditEntry {
                    id: r.get(0),
                    at: r.get(1),
                    tenant: r.get(2),
                    actor: r.get(3),
                    action: r.get(4),
                    target: r.get(5),
                    source: r.get(6),
                    detail: serde_json::from_str(r.get::<_, &str>(7))
                        .unwrap_or(serde_json::Value::Null),
                })
                .collect())
        })
    }
}
