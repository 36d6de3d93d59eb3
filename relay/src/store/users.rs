//! Engineers: people who open sessions on devices, each in one tenant with one role and one or
//! more SSH keys.
//!
//! Names are compared exactly after [`validate_name`](super::validate_name), which accepts lower
//! case only: `Alice` is refused as a name, never matched to `alice`.

use serde::Serialize;

use super::{StoreError, TrustedCa, validate_name};

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

impl User {
    /// An engineer as read back, its key fingerprints oldest first.
    pub(crate) fn stored(
        id: i64,
        name: String,
        tenant: String,
        role: &str,
        disabled: bool,
        created_at: String,
        fingerprints: Vec<String>,
    ) -> Result<User, StoreError> {
        Ok(User {
            id,
            name,
            tenant,
            role: Role::parse(role)?,
            disabled,
            fingerprint: fingerprints.first().cloned().unwrap_or_default(),
            fingerprints,
            created_at,
        })
    }

    /// An engineer just added, with its one key.
    pub(crate) fn added(
        id: i64,
        name: &str,
        tenant: String,
        role: Role,
        fingerprint: String,
        created_at: String,
    ) -> User {
        User {
            id,
            name: name.to_string(),
            tenant,
            role,
            disabled: false,
            fingerprint: fingerprint.clone(),
            fingerprints: vec![fingerprint],
            created_at,
        }
    }
}

/// Checks the names an engineer is looked up by.
pub(crate) fn check_user_names(tenant: &str, name: &str) -> Result<(), StoreError> {
    validate_name("tenant", tenant)?;
    validate_name("user", name)
}

/// The error for an engineer `name` that tenant `tenant` does not have.
pub(crate) fn no_user(tenant: &str, name: &str) -> StoreError {
    StoreError::Invalid(format!("no user named {name:?} in tenant {tenant}"))
}

/// The error for adding engineer `name` to a tenant that has one of that name.
pub(crate) fn user_exists(tenant: &str, name: &str) -> StoreError {
    StoreError::Conflict(format!("user {name:?} already exists in tenant {tenant}"))
}

/// Refuses a key that engineer `holder` of tenant `tenant` already holds: one key is one
/// engineer within a tenant, or the SSH front could not tell which role applies.
pub(crate) fn refuse_held_key(
    tenant: &str,
    fingerprint: &str,
    holder: Option<String>,
) -> Result<(), StoreError> {
    match holder {
        Some(holder) => Err(StoreError::Conflict(format!(
            "key {fingerprint} is already registered in tenant {tenant} as user {holder:?}"
        ))),
        None => Ok(()),
    }
}

/// Checks the removal of key `fingerprint` of engineer `name`, from whether it deleted a key
/// and whether that was the engineer's last: an engineer keeps at least one key. An error
/// means the caller's transaction must not commit.
pub(crate) fn check_key_removal(
    tenant: &str,
    name: &str,
    fingerprint: &str,
    deleted: bool,
    last: bool,
) -> Result<(), StoreError> {
    if !deleted {
        return Err(StoreError::Invalid(format!(
            "user {name:?} of tenant {tenant} has no key {fingerprint:?} (relay user list shows its keys)"
        )));
    }
    if last {
        return Err(StoreError::Invalid(format!(
            "{fingerprint} is the last key of user {name:?}; use relay user remove or relay user disable"
        )));
    }
    Ok(())
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
