//! Tenants: the unit of isolation between customers, and what removing one takes with it.

use serde::Serialize;

use super::StoreError;

/// The error for a tenant that does not exist, by the name asked for.
pub(crate) fn no_tenant(name: &str) -> StoreError {
    StoreError::NotFound {
        what: "tenant",
        key: name.to_string(),
    }
}

/// A tenant: the unit of isolation between customers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Tenant {
    /// Internal id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Days of telemetry kept.
    pub retention_days: u32,
    /// Days session recordings are kept.
    pub session_retention_days: u32,
}

/// What a tenant holds, i.e. what removing it deletes.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TenantContents {
    /// Devices (with their tags, desired and reported state, actions and telemetry).
    pub devices: u64,
    /// Telemetry records.
    pub telemetry: u64,
    /// Enrollment and API tokens.
    pub tokens: u64,
    /// Engineers (with their keys).
    pub engineers: u64,
    /// Trusted SSH certificate authorities.
    pub cas: u64,
    /// Deployments.
    pub deployments: u64,
    /// Recorded sessions (rows and cast files).
    pub sessions: u64,
    /// Artifact records.
    pub artifacts: u64,
}

/// A removed tenant: what was deleted and which files to delete with it.
#[derive(Debug, Clone)]
pub struct RemovedTenant {
    /// What was deleted.
    pub deleted: TenantContents,
    /// The device ids removed (their live links must be dropped).
    pub device_ids: Vec<String>,
    /// Cast files of the removed sessions, relative to the sessions directory.
    pub cast_files: Vec<String>,
    /// Artifact digests no other tenant owns any more (their bytes may go).
    pub orphaned_artifacts: Vec<String>,
}

/// Tenants: creating, listing, and removing one with everything it holds.
pub trait TenantStore {
    /// Creates a tenant.
    fn add_tenant(&self, name: &str) -> Result<Tenant, StoreError>;

    /// All tenants.
    fn tenants(&self) -> Result<Vec<Tenant>, StoreError>;

    /// The tenant called `name`.
    fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError>;

    /// What tenant `name` holds, i.e. what [`TenantStore::remove_tenant`] would delete.
    fn tenant_contents(&self, name: &str) -> Result<TenantContents, StoreError>;

    /// Deletes tenant `name` and everything it holds: devices (tags, desired and reported
    /// state, actions), telemetry, tokens, engineers and their keys, trusted CAs, deployments,
    /// session records and artifact records. The audit trail stays (it is append-only and
    /// names the tenant in text). A tenant with devices is refused unless `with_devices`.
    /// The caller deletes the returned files.
    fn remove_tenant(&self, name: &str, with_devices: bool) -> Result<RemovedTenant, StoreError>;
}
