//! Sessions in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

impl SessionStore for PgStore {
    fn open_session(&self, s: NewSession<'_>) -> Result<String, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn describe_session(
        &self,
        id: &str,
        kind: &str,
        command: Option<&str>,
        cast_file: Option<&str>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn close_session(&self, id: &str, end: &SessionEnd) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn close_interrupted_sessions(&self) -> Result<usize, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn sessions(&self, q: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn session(
        &self,
        id: &str,
        tenant_id: Option<i64>,
    ) -> Result<(SessionRecord, Option<String>), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn expire_sessions(&self) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn set_session_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
