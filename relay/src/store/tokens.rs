//! Tokens: enrollment tokens that let devices join a tenant, and API tokens for the HTTP API.
//!
//! Token secrets are kept only as SHA-256 hashes: the secret is shown once when minted, and a
//! copy of the store gives no usable token. Redeeming checks, in this order, that the token is
//! known, of the right kind and not revoked, not expired, and not used up.

use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use serde::Serialize;

use super::{
    Device, DeviceEnrollment, DeviceStatus, EnrolledDevice, Role, StoreError, expires_after,
    random_hex, rfc3339_from_unix, unix_now,
};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Enrolling devices.
    Enroll,
    /// The HTTP API.
    Api,
}

impl TokenKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TokenKind::Enroll => "enroll",
            TokenKind::Api => "api",
        }
    }
}

/// What `create_token` needs.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    /// Tenant name.
    pub tenant: &'a str,
    /// Kind of token.
    pub kind: TokenKind,
    /// Lifetime; `None` never expires.
    pub ttl: Option<Duration>,
    /// How many enrollments it allows; `None` is unlimited.
    pub uses: Option<u32>,
    /// Devices enrolled with it wait for an operator to accept them.
    pub require_accept: bool,
    /// An enrollment with `force` may replace a same-named device that holds another key.
    pub allow_replace: bool,
    /// What an API token may do (enrollment tokens only enroll).
    pub role: Role,
}

/// A freshly minted token: the secret is shown exactly once.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    /// Token id (not secret).
    pub id: String,
    /// The secret to hand out.
    pub secret: String,
    /// Tenant name.
    pub tenant: String,
    /// Kind.
    pub kind: TokenKind,
    /// Role of an API token.
    pub role: Option<Role>,
    /// Expiry (RFC 3339), if any.
    pub expires_at: Option<String>,
}

/// A token as listed (no secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Token id.
    pub id: String,
    /// Tenant name.
    pub tenant: String,
    /// Kind.
    pub kind: TokenKind,
    /// Role of an API token.
    pub role: Option<Role>,
    /// Creation time.
    pub created_at: String,
    /// Expiry, if any.
    pub expires_at: Option<String>,
    /// Enrollments left, if limited.
    pub uses_left: Option<i64>,
    /// Whether devices need acceptance.
    pub require_accept: bool,
    /// Whether a forced enrollment may replace a same-named device holding another key.
    pub allow_replace: bool,
    /// Whether the token was revoked.
    pub revoked: bool,
    /// Whether it can still be used, and if not, why.
    pub state: TokenState,
}

/// Whether a listed token can still be used.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TokenState {
    /// Usable.
    Active,
    /// Revoked by an operator.
    Revoked,
    /// Past its lifetime.
    Expired,
    /// No uses left.
    UsedUp,
}

impl std::fmt::Display for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenState::Active => "active",
            TokenState::Revoked => "revoked",
            TokenState::Expired => "expired",
            TokenState::UsedUp => "used-up",
        })
    }
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tenant an API token grants access to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiIdentity {
    /// Tenant id.
    pub tenant_id: i64,
    /// Tenant name.
    pub tenant: String,
    /// What the token may do.
    pub role: Role,
    /// The token's id (never its secret), for the audit trail.
    pub token_id: String,
}

/// Checks what `create_token` is asked for and mints the token's id and secret; the backend
/// stores it under its tenant.
pub(crate) fn mint_token(new: &NewToken<'_>) -> Result<MintedToken, StoreError> {
    if new.kind == TokenKind::Api && (new.uses.is_some() || new.require_accept || new.allow_replace)
    {
        return Err(StoreError::Invalid(
            "a use limit, require-accept and allow-replace apply to enrollment tokens only, not to API tokens"
                .into(),
        ));
    }
    if new.require_accept && new.allow_replace {
        return Err(StoreError::Invalid(
            "a token cannot both require acceptance and allow replacing devices: devices enrolled with it would be pending, and a pending device never replaces one"
                .into(),
        ));
    }
    if new.uses == Some(0) {
        return Err(StoreError::Invalid(
            "a token must allow at least 1 use".into(),
        ));
    }
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    Ok(MintedToken {
        id: format!("tok_{}", random_hex(8)),
        secret: format!(
            "tet_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        ),
        expires: expires_after(new.ttl),
    })
}

/// A token minted and not yet stored: only its hash is stored, the secret is shown once.
pub(crate) struct MintedToken {
    /// Token id.
    pub(crate) id: String,
    /// The secret.
    pub(crate) secret: String,
    /// Expiry in Unix seconds, if any.
    pub(crate) expires: Option<i64>,
}

impl MintedToken {
    /// What `create_token` returns once the token is stored for `tenant`.
    pub(crate) fn created(self, tenant: String, new: &NewToken<'_>) -> CreatedToken {
        CreatedToken {
            id: self.id,
            secret: self.secret,
            tenant,
            kind: new.kind,
            role: (new.kind == TokenKind::Api).then_some(new.role),
            expires_at: self.expires.map(rfc3339_from_unix),
        }
    }
}

/// A token's row as a listing reads it.
pub(crate) struct StoredTokenInfo {
    pub(crate) id: String,
    pub(crate) tenant: String,
    pub(crate) kind: String,
    pub(crate) role: String,
    pub(crate) created_at: String,
    pub(crate) expires_at: Option<i64>,
    pub(crate) uses_left: Option<i64>,
    pub(crate) require_accept: bool,
    pub(crate) allow_replace: bool,
    pub(crate) revoked: bool,
}

impl StoredTokenInfo {
    /// The token as listed, with its state at `now` (Unix seconds).
    pub(crate) fn info(self, now: i64) -> TokenInfo {
        // The same order of checks as redeeming, so the listed state is the error a
        // redemption would give.
        let state = if self.revoked {
            TokenState::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            TokenState::Expired
        } else if self.uses_left.is_some_and(|u| u <= 0) {
            TokenState::UsedUp
        } else {
            TokenState::Active
        };
        let kind = if self.kind == "api" {
            TokenKind::Api
        } else {
            TokenKind::Enroll
        };
        TokenInfo {
            id: self.id,
            tenant: self.tenant,
            kind,
            role: (kind == TokenKind::Api)
                .then(|| Role::parse(&self.role).ok())
                .flatten(),
            created_at: self.created_at,
            expires_at: self.expires_at.map(rfc3339_from_unix),
            uses_left: self.uses_left,
            require_accept: self.require_accept,
            allow_replace: self.allow_replace,
            revoked: self.revoked,
            state,
        }
    }
}

/// A token's row as a redemption reads it.
pub(crate) struct StoredToken {
    pub(crate) id: String,
    pub(crate) tenant_id: i64,
    pub(crate) tenant: String,
    pub(crate) kind: String,
    pub(crate) role: String,
    pub(crate) require_accept: bool,
    pub(crate) allow_replace: bool,
    pub(crate) uses_left: Option<i64>,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked: bool,
}

impl StoredToken {
    /// The token, if it is of `kind` and can be redeemed now: the checks in the order the
    /// module documents, each with its own error.
    pub(crate) fn redeemable(self, kind: TokenKind) -> Result<StoredToken, StoreError> {
        if self.revoked || self.kind != kind.as_str() {
            return Err(StoreError::InvalidToken);
        }
        if self.expires_at.is_some_and(|e| e <= unix_now()) {
            return Err(StoreError::TokenExpired);
        }
        if self.uses_left.is_some_and(|u| u <= 0) {
            return Err(StoreError::TokenUsedUp);
        }
        Ok(self)
    }

    /// The tenant an API token grants access to.
    pub(crate) fn api_identity(self) -> Result<ApiIdentity, StoreError> {
        Ok(ApiIdentity {
            tenant_id: self.tenant_id,
            tenant: self.tenant,
            role: Role::parse(&self.role)?,
            token_id: self.id,
        })
    }
}

/// What an enrollment writes, decided from the devices already enrolled before anything is
/// written, so that no device is removed by an enrollment that then turns out refused.
pub(crate) struct EnrollmentPlan {
    /// The same-named device with another key that the enrollment replaces: deleted first.
    pub(crate) replaced: Option<Device>,
    /// How the enrolled device is written.
    pub(crate) write: EnrollmentWrite,
}

/// How an enrollment writes its device.
pub(crate) enum EnrollmentWrite {
    /// The key is enrolled already: that device (by id) takes the new name, agent version
    /// and this status.
    Update { id: String, status: DeviceStatus },
    /// A new device with this status.
    Insert { status: DeviceStatus },
}

/// Decides an enrollment with `token` in its tenant, from the device that holds the
/// enrollment's key (`by_key`, of any tenant) and the device of the tenant with its name
/// (`by_name`).
pub(crate) fn plan_enrollment(
    token: &StoredToken,
    enrollment: &DeviceEnrollment,
    by_key: Option<Device>,
    by_name: Option<Device>,
) -> Result<EnrollmentPlan, StoreError> {
    let tenant_name = &token.tenant;
    if let Some(existing) = &by_key
        && existing.tenant_id != token.tenant_id
    {
        return Err(StoreError::Conflict(format!(
            "this device key is already enrolled in another tenant as {:?}",
            existing.name
        )));
    }
    if let Some(other) = &by_name
        && other.fingerprint != enrollment.fingerprint
    {
        if !enrollment.force {
            return Err(StoreError::Conflict(format!(
                "device name {:?} is already used by another device in tenant {tenant_name}; choose another --name, or re-enroll with --force and a token minted with --allow-replace to replace it",
                enrollment.name
            )));
        }
        if token.require_accept {
            return Err(StoreError::Conflict(format!(
                "device name {:?} is already used by another device in tenant {tenant_name}; a token minted with --require-accept enrolls devices as pending and never replaces one: choose another --name",
                enrollment.name
            )));
        }
        if !token.allow_replace {
            return Err(StoreError::Conflict(format!(
                "device name {:?} is already used by another device in tenant {tenant_name}; replacing it needs an enrollment token minted with --allow-replace",
                enrollment.name
            )));
        }
    }
    let replaced = by_name.filter(|other| other.fingerprint != enrollment.fingerprint);
    let status = if token.require_accept {
        DeviceStatus::Pending
    } else {
        DeviceStatus::Accepted
    };
    let write = match by_key {
        // Re-enrollment of the same key keeps its id. An accepted device stays accepted; a
        // pending one gets what a fresh enrollment with this token would get. An operator's
        // rejection is not undone by the device itself: the token it holds may allow many
        // uses.
        Some(existing) => {
            let keep = match existing.status {
                DeviceStatus::Accepted => DeviceStatus::Accepted,
                DeviceStatus::Pending => status,
                DeviceStatus::Rejected => {
                    return Err(StoreError::Conflict(format!(
                        "this device key belongs to device {:?} in tenant {tenant_name}, which an operator rejected; ask an operator to accept or remove it",
                        existing.name
                    )));
                }
            };
            EnrollmentWrite::Update {
                id: existing.id,
                status: keep,
            }
        }
        None => EnrollmentWrite::Insert { status },
    };
    Ok(EnrollmentPlan { replaced, write })
}

/// Tokens: minting, listing, revoking and redeeming them.
pub trait TokenStore {
    /// Mints a token; the returned secret is never stored.
    ///
    /// `uses`, `require_accept` and `allow_replace` are about enrollment and refused for API
    /// tokens rather than silently ignored; `uses: Some(0)` would mint a dead token and is
    /// refused too. A token may not both require acceptance and replace devices: a pending
    /// enrollment must never remove a device an operator already trusts.
    fn create_token(&self, new: NewToken<'_>) -> Result<CreatedToken, StoreError>;

    /// Tokens, optionally of one tenant, without secrets.
    fn tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenInfo>, StoreError>;

    /// Revokes a token by id.
    fn revoke_token(&self, id: &str) -> Result<(), StoreError>;

    /// The tenant an API token grants access to.
    fn api_token(&self, secret: &str) -> Result<ApiIdentity, StoreError>;

    /// Enrolls a device with an enrollment token, atomically.
    fn redeem_enroll_token(
        &self,
        secret: &str,
        enrollment: DeviceEnrollment,
    ) -> Result<EnrolledDevice, StoreError>;

    /// The tenant of token `id`, if there is such a token.
    fn token_tenant(&self, id: &str) -> Result<Option<String>, StoreError>;

    /// Gives API token `id` another role (enrollment tokens have none).
    fn set_token_role(&self, id: &str, role: Role) -> Result<(), StoreError>;
}
