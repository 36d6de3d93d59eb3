//! Engineers: people who open sessions on devices, each in one tenant with one role and one or
//! more SSH keys.
//!
//! Names are compared exactly after [`validate_name`](super::validate_name), which accepts lower
//! case only: `Alice` is refused as a name, never matched to `alice`.

use serde::Serialize;

use super::{StoreError, TrustedCa};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including user management.
    Admin,
    /// Shells, forwards, device operations.
    Operator,
    /// Read only: no shells, no forwards.
    Viewer,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
    pub(crate) fn parse(s: &str) -> Result<Role, StoreError> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(StoreError::Invalid(format!("unknown role {other:?}"))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s)
    }
}

/// An engineer registered with a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Internal id.
    pub id: i64,
    /// Name, unique in the tenant.
    pub name: String,
    /// Tenant name.
    pub tenant: String,
    /// Role.
    pub role: Role,
    /// Whether the engineer is disabled (refused at login, sessions closed).
    pub disabled: bool,
    /// SHA-256 fingerprint of the engineer's first key (see `fingerprints` for all).
    pub fingerprint: String,
    /// SHA-256 fingerprints of all the engineer's keys, oldest first.
    pub fingerprints: Vec<String>,
    /// Creation time.
    pub created_at: String,
}

/// An engineer's public key as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineerKey {
    /// The key in OpenSSH format, re-encoded (so stray whitespace does not matter).
    pub openssh: String,
    /// Its SHA-256 fingerprint, `SHA256:…` as OpenSSH prints it.
    pub fingerprint: String,
}

impl EngineerKey {
    /// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub fn parse(text: &str) -> Result<EngineerKey, StoreError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(StoreError::Invalid("the public key is empty".into()));
        }
        let key = russh::keys::PublicKey::from_openssh(text)
            .map_err(|e| StoreError::Invalid(format!("not an OpenSSH public key: {e}")))?;
        let openssh = key
            .to_openssh()
            .map_err(|e| StoreError::Invalid(format!("cannot encode the public key: {e}")))?;
        Ok(EngineerKey {
            openssh,
            fingerprint: key.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
        })
    }
}

/// Who an engineer key belongs to, in one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineerIdentity {
    /// User name.
    pub user: String,
    /// Tenant id.
    pub tenant_id: i64,
    /// Tenant name.
    pub tenant: String,
    /// Role in that tenant.
    pub role: Role,
}

/// One key of one engineer, as a live login re-check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEngineer {
    /// The key's fingerprint.
    pub fingerprint: String,
    /// Tenant id.
    pub tenant_id: i64,
    /// User name.
    pub user: String,
    /// Current role.
    pub role: Role,
    /// Whether the engineer is disabled.
    pub disabled: bool,
}

/// What [`UserStore::live_engineer_grants`] found.
#[derive(Debug, Clone, Default)]
pub struct LiveGrants {
    /// Every engineer holding one of the keys asked about.
    pub engineers: Vec<LiveEngineer>,
    /// Every tenant's trust in one of the CAs asked about.
    pub trusted: Vec<TrustedCa>,
    /// Of the `(tenant id, user)` pairs asked about, those that still exist.
    pub existing: Vec<(i64, String)>,
}

/// Engineers over their whole life: adding, disabling, re-keying, changing roles, removing.
pub trait UserStore {
    /// Registers an engineer's key with a tenant and role.
    fn add_user(
        &self,
        name: &str,
        tenant: &str,
        role: Role,
        public_key_openssh: &str,
    ) -> Result<User, StoreError>;

    /// All engineers.
    fn users(&self) -> Result<Vec<User>, StoreError>;

    /// Every enabled engineer a key belongs to (a key may be registered in several tenants).
    fn engineer_identities(&self, fingerprint: &str) -> Result<Vec<EngineerIdentity>, StoreError>;

    /// The engineer `name` of `tenant`.
    fn user(&self, tenant: &str, name: &str) -> Result<User, StoreError>;

    /// Deletes engineer `name` of `tenant` and its keys. Its sessions' records and its audit
    /// entries stay: they name the engineer, they do not point at the row.
    fn remove_user(&self, tenant: &str, name: &str) -> Result<User, StoreError>;

    /// Disables (or enables) engineer `name` of `tenant`; returns whether it changed.
    fn set_user_disabled(
        &self,
        tenant: &str,
        name: &str,
        disabled: bool,
    ) -> Result<bool, StoreError>;

    /// Gives engineer `name` of `tenant` another role; returns the role it had.
    fn set_user_role(&self, tenant: &str, name: &str, role: Role) -> Result<Role, StoreError>;

    /// Registers one more key for engineer `name` of `tenant`; returns its fingerprint.
    fn add_user_key(
        &self,
        tenant: &str,
        name: &str,
        public_key_openssh: &str,
    ) -> Result<String, StoreError>;

    /// Unregisters key `fingerprint` of engineer `name` of `tenant`. The last key is refused:
    /// an engineer who may no longer log in at all is removed or disabled instead.
    fn remove_user_key(
        &self,
        tenant: &str,
        name: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError>;

    /// The disabled engineers holding key `fingerprint`, as `(tenant, user)`: a refused login
    /// says why.
    fn disabled_engineers(&self, fingerprint: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// What stands today behind the live engineer logins: for the keys `key_fingerprints`,
    /// every engineer holding one; for the CAs `ca_fingerprints`, every tenant trusting one;
    /// of `users`, those that still exist (to tell a removed engineer from a removed key).
    /// One read transaction for all the logins the relay holds, however many.
    fn live_engineer_grants(
        &self,
        key_fingerprints: &[String],
        ca_fingerprints: &[String],
        users: &[(i64, String)],
    ) -> Result<LiveGrants, StoreError>;
}
