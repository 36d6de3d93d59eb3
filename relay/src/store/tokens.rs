//! Tokens: enrollment tokens that let devices join a tenant, and API tokens for the HTTP API.
//!
//! Token secrets are kept only as SHA-256 hashes: the secret is shown once when minted, and a
//! copy of the store gives no usable token. Redeeming checks, in this order, that the token is
//! known, of the right kind and not revoked, not expired, and not used up.

use std::time::Duration;

use serde::Serialize;

use super::{DeviceEnrollment, EnrolledDevice, Role, StoreError};

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
