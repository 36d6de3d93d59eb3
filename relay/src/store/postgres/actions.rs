//! Actions in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

impl ActionStore for PgStore {
    fn create_action(
        &self,
        tenant_id: Option<i64>,
        device: &str,
        action: &ActionKind,
        ttl: Option<Duration>,
    ) -> Result<ActionView, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn take_pending_actions(&self, device_id: &str) -> Result<Vec<Action>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn record_action_result(
        &self,
        device_id: &str,
        result: &ActionResult,
    ) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn requeue_running_actions(&self, device_id: &str) -> Result<u64, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn requeue_unsent_actions(&self, ids: &[String]) -> Result<u64, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn action(&self, id: &str, tenant_id: Option<i64>) -> Result<Option<ActionView>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn actions(
        &self,
        tenant: Option<&str>,
        device: Option<&str>,
    ) -> Result<Vec<ActionView>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
