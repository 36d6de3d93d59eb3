//! Telemetry in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

impl TelemetryStore for PgStore {
    fn insert_telemetry(
        &self,
        device_id: &str,
        tenant_id: i64,
        records: &[tether_protocol::telemetry::Record],
    ) -> Result<usize, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn telemetry(&self, q: &TelemetryQuery<'_>) -> Result<Vec<StoredRecord>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn enforce_retention(&self) -> Result<usize, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn set_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
