//! Cas in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

impl CaStore for PgStore {
    fn trust_ca(
        &self,
        tenant: &str,
        key: &str,
        role: Role,
        principals: &[String],
    ) -> Result<TrustedCa, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn untrust_ca(&self, tenant: &str, fingerprint: &str) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn trusted_cas(&self, tenant: Option<&str>) -> Result<Vec<TrustedCa>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn cas_by_fingerprint(&self, fingerprint: &str) -> Result<Vec<TrustedCa>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn any_trusted_ca(&self) -> Result<bool, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
