//! The audit trail: who did what, when, from where. Append-only: the interface has no way to
//! change or delete an entry, and a backend enforces that below the relay's code too (SQLite
//! with triggers that refuse every UPDATE and DELETE on the table).

use std::time::SystemTime;

use serde::Serialize;

use super::StoreError;

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

/// The audit trail; entries are only ever appended.
pub trait AuditStore {
    /// Appends an entry.
    fn audit(&self, e: NewAudit<'_>) -> Result<(), StoreError>;

    /// Entries from `since` (inclusive, to the second) on, of `tenant` if given: at most
    /// `limit` of them, the newest unless `oldest`, listed oldest first either way.
    fn audit_entries(
        &self,
        since: Option<SystemTime>,
        tenant: Option<&str>,
        limit: usize,
        oldest: bool,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}
