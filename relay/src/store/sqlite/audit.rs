//! The audit trail: who did what, when, from where. Append-only: SQLite triggers refuse every
//! UPDATE and DELETE on the table, so not even the relay's own code can rewrite history.

use rusqlite::params;

use std::time::SystemTime;

use super::SqliteStore;
use crate::store::{AuditEntry, AuditStore, NewAudit, StoreError, now};

/// Appends an entry on `conn`, inside whatever transaction it is in (so the entry commits with
/// the change it records, or not at all).
pub(super) fn append(conn: &rusqlite::Connection, e: NewAudit<'_>) -> Result<(), StoreError> {
    let detail = if e.detail.is_null() {
        "{}".to_string()
    } else {
        e.detail.to_string()
    };
    conn.execute(
        "INSERT INTO audit (at, tenant, actor, action, target, source, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![now(), e.tenant, e.actor, e.action, e.target, e.source, detail],
    )?;
    Ok(())
}

impl AuditStore for SqliteStore {
    fn audit(&self, e: NewAudit<'_>) -> Result<(), StoreError> {
        append(&self.conn(), e)
    }

    fn audit_entries(
        &self,
        since: Option<SystemTime>,
        tenant: Option<&str>,
        limit: usize,
        oldest: bool,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // `at` is text in the one form `now()` writes; the bound is written the same way so
        // that comparing them as text compares the times.
        let since = since.map(crate::timestamp::store_form);
        let order = if oldest { "ASC" } else { "DESC" };
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT * FROM (SELECT id, at, tenant, actor, action, target, source, detail FROM audit
                 WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR tenant = ?2)
                 ORDER BY id {order} LIMIT ?3)
             ORDER BY id"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![since, tenant, limit], |r| {
            let detail: String = r.get(7)?;
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                tenant: r.get(2)?,
                actor: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                source: r.get(6)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
