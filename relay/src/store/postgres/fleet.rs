//! Fleet in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

impl FleetStore for PgStore {
    fn set_tags(
        &self,
        device_id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn device_tags(&self, device_id: &str) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn create_deployment(
        &self,
        artifacts_dir: &Path,
        new: NewDeployment<'_>,
    ) -> Result<DeploymentView, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn deployment(
        &self,
        id: &str,
        tenant_id: Option<i64>,
    ) -> Result<Option<DeploymentView>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn deployments(&self, tenant: Option<&str>) -> Result<Vec<DeploymentView>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn desired_state(&self, device_id: &str) -> Result<Option<DesiredState>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn record_report(&self, device_id: &str, report: &ReportedState) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn device_state(&self, device_id: &str) -> Result<DeviceState, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn push_config(&self, device_id: &str, overrides: &Value) -> Result<DesiredState, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
