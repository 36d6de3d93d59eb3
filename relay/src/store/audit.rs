//! The audit trail: who did what, when, from where. Append-only: SQLite triggers refuse every
//! UPDATE and DELETE on the table, so not even the relay's own code can rewrite history.

use std::time::SystemTime;

use rusqlite::params;
use serde::Serialize;

use super::{Store, StoreError, now};

/// One audit entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    /// Position in the trail.
    pub id: i64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Tenant concerned, if any.
    pub tenant: Option<String>,
    /// Who: `engineer:alice`, `device:dev_…`, `admin` (the CLI on the relay host), `api:<token id>`.
    pub actor: String,
    /// What, e.g. `auth.success`, `auth.failure`, `link.up`, `device.accept`, `deploy.create`.
    pub action: String,
    /// On what (device id, user name, deployment id, …).
    pub target: Option<String>,
    /// Source address, for network actions.
    pub source: Option<String>,
    /// Anything else worth keeping (JSON).
    pub detail: serde_json::Value,
}

/// A new entry.
#[derive(Debug, Clone, Default)]
pub struct NewAudit<'a> {
    /// Tenant concerned.
    pub tenant: Option<&'a str>,
    /// Who.
    pub actor: &'a str,
    /// What.
    pub action: &'a str,
    /// On what.
    pub target: Option<&'a str>,
    /// From where.
    pub source: Option<&'a str>,
    /// More.
    pub detail: serde_json::Value,
}

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

impl Store {
    /// Appends an entry.
    pub fn audit(&self, e: NewAudit<'_>) -> Result<(), StoreError> {
        append(&self.conn(), e)
    }

    /// Entries from `since` (inclusive, to the second) on, of `tenant` if given: at most
    /// `limit` of them, the newest unless `oldest`, listed oldest first either way.
    pub fn audit_entries(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_and_never_rewritten() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("relay.db"))?;
        store.audit(NewAudit {
            tenant: Some("acme"),
            actor: "admin",
            action: "tenant.add",
            target: Some("acme"),
            ..Default::default()
        })?;
        store.audit(NewAudit {
            actor: "engineer:alice",
            action: "auth.failure",
            source: Some("192.0.2.1:5000"),
            detail: serde_json::json!({"fingerprint": "SHA256:x"}),
            ..Default::default()
        })?;
        let all = store.audit_entries(None, None, 100, false)?;
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].detail["fingerprint"], "SHA256:x");
        assert_eq!(
            store.audit_entries(None, Some("acme"), 100, false)?.len(),
            1
        );
        let hour = std::time::Duration::from_secs(3600);
        let since = |t| {
            store
                .audit_entries(Some(t), None, 100, false)
                .map(|e| e.len())
        };
        assert_eq!(since(SystemTime::now() - hour)?, 2);
        assert_eq!(since(SystemTime::now() + hour)?, 0);
        let conn = store.conn();
        assert!(
            conn.execute("UPDATE audit SET actor = 'mallory'", [])
                .is_err()
        );
        assert!(conn.execute("DELETE FROM audit", []).is_err());
        drop(conn);
        assert_eq!(store.audit_entries(None, None, 100, false)?.len(), 2);
        // A limit keeps the newest entries unless the oldest are asked for; oldest first.
        let newest = store.audit_entries(None, None, 1, false)?;
        assert_eq!(newest[0].action, "auth.failure");
        let oldest = store.audit_entries(None, None, 1, true)?;
        assert_eq!(oldest[0].action, "tenant.add");
        let both = store.audit_entries(None, None, 2, false)?;
        assert!(both[0].id < both[1].id);
        Ok(())
    }
}
