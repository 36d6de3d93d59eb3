//! SSH certificate authorities a tenant trusts: an engineer holding a user certificate signed
//! by one of them is let in without a registered key, as OpenSSH's `TrustedUserCAKeys`.

use serde::Serialize;

use super::{Role, StoreError};

/// A CA trusted by a tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TrustedCa {
    /// Tenant id.
    #[serde(skip)]
    pub tenant_id: i64,
    /// Tenant name.
    pub tenant: String,
    /// The CA's public key (OpenSSH format).
    pub public_key: String,
    /// Its SHA-256 fingerprint.
    pub fingerprint: String,
    /// Role of engineers who log in with its certificates.
    pub role: Role,
    /// Principals accepted from its certificates; empty accepts any (valid) engineer name.
    pub principals: Vec<String>,
    /// When it was trusted.
    pub created_at: String,
}

/// Trusted SSH certificate authorities.
pub trait CaStore {
    /// Makes `tenant` trust the CA `key` (one OpenSSH public key line).
    fn trust_ca(
        &self,
        tenant: &str,
        key: &str,
        role: Role,
        principals: &[String],
    ) -> Result<TrustedCa, StoreError>;

    /// Stops `tenant` trusting the CA with `fingerprint`.
    fn untrust_ca(&self, tenant: &str, fingerprint: &str) -> Result<(), StoreError>;

    /// CAs trusted by `tenant` (all tenants if `None`).
    fn trusted_cas(&self, tenant: Option<&str>) -> Result<Vec<TrustedCa>, StoreError>;

    /// The tenants trusting the CA with `fingerprint`.
    fn cas_by_fingerprint(&self, fingerprint: &str) -> Result<Vec<TrustedCa>, StoreError>;

    /// Whether any tenant trusts any CA (if none, unknown keys can be refused at once).
    fn any_trusted_ca(&self) -> Result<bool, StoreError>;
}
