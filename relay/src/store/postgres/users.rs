//! Users in PostgreSQL (not yet ported).
#![allow(unused_variables, unused_imports)]

use super::PgStore;
use crate::store::*;
use serde_json::Value;
use tether_protocol::fleet::*;
use std::time::{Duration, SystemTime};
use std::path::Path;

impl UserStore for PgStore {
    fn add_user(
        &self,
        name: &str,
        tenant: &str,
        role: Role,
        public_key_openssh: &str,
    ) -> Result<User, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn users(&self) -> Result<Vec<User>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn engineer_identities(&self, fingerprint: &str) -> Result<Vec<EngineerIdentity>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn user(&self, tenant: &str, name: &str) -> Result<User, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn remove_user(&self, tenant: &str, name: &str) -> Result<User, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn set_user_disabled(
        &self,
        tenant: &str,
        name: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn set_user_role(&self, tenant: &str, name: &str, role: Role) -> Result<Role, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn add_user_key(
        &self,
        tenant: &str,
        name: &str,
        public_key_openssh: &str,
    ) -> Result<String, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn remove_user_key(
        &self,
        tenant: &str,
        name: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn disabled_engineers(&self, fingerprint: &str) -> Result<Vec<(String, String)>, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

    fn live_engineer_grants(
        &self,
        key_fingerprints: &[String],
        ca_fingerprints: &[String],
        users: &[(i64, String)],
    ) -> Result<LiveGrants, StoreError> {
        Err(StoreError::Invalid("not yet ported to PostgreSQL".into()))
    }

}
