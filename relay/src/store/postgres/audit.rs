//! Audit in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

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
