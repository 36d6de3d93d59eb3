//! Artifacts in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

impl ArtifactStore for PgStore {
    fn put_artifact(
        &self,
        artifacts_dir: &Path,
        tenant: &str,
        name: &str,
        data: &[u8],
    ) -> Result<ArtifactInfo, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn artifact(&self, tenant: &str, sha256: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn device_artifact(
        &self,
        device_id: &str,
        sha256: &str,
    ) -> Result<Option<ArtifactInfo>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn artifacts(&self, tenant: Option<&str>) -> Result<Vec<ArtifactInfo>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
