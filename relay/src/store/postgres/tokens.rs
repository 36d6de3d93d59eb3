//! Tokens in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

impl TokenStore for PgStore {
    fn create_token(&self, new: NewToken<'_>) -> Result<CreatedToken, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn revoke_token(&self, id: &str) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn api_token(&self, secret: &str) -> Result<ApiIdentity, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn redeem_enroll_token(
        &self,
        secret: &str,
        enrollment: DeviceEnrollment,
    ) -> Result<EnrolledDevice, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn token_tenant(&self, id: &str) -> Result<Option<String>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn set_token_role(&self, id: &str, role: Role) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
