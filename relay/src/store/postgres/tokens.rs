//! Tokens in PostgreSQL.

use base64::Engine;
use deadpool_postgres::GenericClient;
use rand::RngCore;

use super::devices::device_where;
use super::tenants::tenant_by_name;
use super::{PgStore, is_unique_violation};
use crate::store::{
    ApiIdentity, CreatedToken, DeviceEnrollment, DeviceStatus, EnrolledDevice, NewToken, Role,
    StoreError, TokenInfo, TokenKind, TokenState, TokenStore, hash_secret, now, random_hex,
    rfc3339_from_unix, unix_now,
};

/// A valid, unexpired, unrevoked token and what it grants.
struct CheckedToken {
    id: String,
    tenant_id: i64,
    tenant: String,
    require_accept: bool,
    uses_left: Option<i64>,
    allow_replace: bool,
    role: String,
}

/// Checks a token of `kind` and returns what redeeming it grants. With `lock`, the token's
/// row stays locked until the caller's transaction ends, so that two redemptions racing for
/// its last use cannot both pass the check: the second waits, and then sees the use taken.
async fn check_token(
    client: &impl GenericClient,
    secret: &str,
    kind: TokenKind,
    lock: bool,
) -> Result<CheckedToken, StoreError> {
    let sql = format!(
        "SELECT k.id, k.tenant_id, t.name, k.require_accept, k.uses_left, k.expires_at, k.revoked,
             k.kind, k.allow_replace, k.role
         FROM tokens k JOIN tenants t ON t.id = k.tenant_id WHERE k.secret_hash = $1{}",
        if lock { " FOR UPDATE OF k" } else { "" }
    );
    let Some(r) = client.query_opt(&sql, &[&hash_secret(secret)]).await? else {
        return Err(StoreError::InvalidToken);
    };
    let expires_at: Option<i64> = r.get(5);
    let revoked: bool = r.get(6);
    if revoked || r.get::<_, &str>(7) != kind.as_str() {
        return Err(StoreError::InvalidToken);
    }
    if expires_at.is_some_and(|e| e <= unix_now()) {
        return Err(StoreError::TokenExpired);
    }
    let uses_left: Option<i64> = r.get(4);
    if uses_left.is_some_and(|u| u <= 0) {
        return Err(StoreError::TokenUsedUp);
    }
    Ok(CheckedToken {
        id: r.get(0),
        tenant_id: r.get(1),
        tenant: r.get(2),
        require_accept: r.get(3),
        uses_left,
        allow_replace: r.get(8),
        role: r.get(9),
    })
}

/// An enrollment's own insert or rename that met a device enrolled at the same moment by
/// another redemption (same key, or same name in the tenant): the same refusal the checks
/// give when the other one came first.
fn enrolled_meanwhile(name: &str, tenant: &str) -> StoreError {
    StoreError::Conflict(format!(
        "device name {name:?} or this device key was enrolled in tenant {tenant} or another tenant at the same moment; try again"
    ))
}

impl TokenStore for PgStore {
    fn create_token(&self, new: NewToken<'_>) -> Result<CreatedToken, StoreError> {
        if new.kind == TokenKind::Api
            && (new.uses.is_some() || new.require_accept || new.allow_replace)
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
        let secret = format!(
            "tet_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let id = format!("tok_{}", random_hex(8));
        // Whole seconds are enough for a lifetime and keep the column a plain integer.
        let expires = new
            .ttl
            .map(|ttl| unix_now().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)));
        let uses = new.uses.map(i64::from);
        let tenant = self.block(async {
            let client = self.client().await?;
            let tenant = tenant_by_name(&client, new.tenant)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "tenant",
                    key: new.tenant.to_string(),
                })?;
            client
                .execute(
                    "INSERT INTO tokens (id, tenant_id, kind, secret_hash, created_at, expires_at, uses_left, require_accept, role, allow_replace)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &id,
                        &tenant.id,
                        &new.kind.as_str(),
                        &hash_secret(&secret),
                        &now(),
                        &expires,
                        &uses,
                        &new.require_accept,
                        &new.role.as_str(),
                        &new.allow_replace,
                    ],
                )
                .await?;
            Ok::<_, StoreError>(tenant)
        })?;
        Ok(CreatedToken {
            id,
            secret,
            tenant: tenant.name,
            kind: new.kind,
            role: (new.kind == TokenKind::Api).then_some(new.role),
            expires_at: expires.map(rfc3339_from_unix),
        })
    }

    fn tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            // In the order they were minted (`seq`), as SQLite lists them by rowid.
            let rows = client
                .query(
                    "SELECT k.id, t.name, k.kind, k.created_at, k.expires_at, k.uses_left, k.require_accept,
                         k.revoked, k.role, k.allow_replace
                     FROM tokens k JOIN tenants t ON t.id = k.tenant_id
                     WHERE $1::text IS NULL OR t.name = $1 ORDER BY k.seq",
                    &[&tenant],
                )
                .await?;
            let now = unix_now();
            let tokens: Vec<TokenInfo> = rows
                .iter()
                .map(|r| {
                    let expires_at: Option<i64> = r.get(4);
                    let uses_left: Option<i64> = r.get(5);
                    let revoked: bool = r.get(7);
                    // The same order of checks as redeeming, so the listed state is the error
                    // a redemption would give.
                    let state = if revoked {
                        TokenState::Revoked
                    } else if expires_at.is_some_and(|e| e <= now) {
                        TokenState::Expired
                    } else if uses_left.is_some_and(|u| u <= 0) {
                        TokenState::UsedUp
                    } else {
                        TokenState::Active
                    };
                    let kind = if r.get::<_, &str>(2) == "api" {
                        TokenKind::Api
                    } else {
                        TokenKind::Enroll
                    };
                    TokenInfo {
                        id: r.get(0),
                        tenant: r.get(1),
                        kind,
                        role: (kind == TokenKind::Api)
                            .then(|| Role::parse(r.get::<_, &str>(8)).ok())
                            .flatten(),
                        created_at: r.get(3),
                        expires_at: expires_at.map(rfc3339_from_unix),
                        uses_left,
                        require_accept: r.get(6),
                        allow_replace: r.get(9),
                        revoked,
                        state,
                    }
                })
                .collect();
            // An unknown tenant is an error, not an empty list.
            if tokens.is_empty()
                && let Some(name) = tenant
                && tenant_by_name(&client, name).await?.is_none()
            {
                return Err(StoreError::NotFound {
                    what: "tenant",
                    key: name.to_string(),
                });
            }
            Ok(tokens)
        })
    }

    fn revoke_token(&self, id: &str) -> Result<(), StoreError> {
        let n = self.block(async {
            self.client()
                .await?
                .execute("UPDATE tokens SET revoked = TRUE WHERE id = $1", &[&id])
                .await
                .map_err(StoreError::from)
        })?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "token",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    fn api_token(&self, secret: &str) -> Result<ApiIdentity, StoreError> {
        // A read: an API token has no uses to count, so nothing is locked.
        let CheckedToken {
            id,
            tenant_id,
            tenant,
            role,
            ..
        } = self.block(async {
            check_token(&self.client().await?, secret, TokenKind::Api, false).await
        })?;
        Ok(ApiIdentity {
            tenant_id,
            tenant,
            role: Role::parse(&role)?,
            token_id: id,
        })
    }

    fn redeem_enroll_token(
        &self,
        secret: &str,
        enrollment: DeviceEnrollment,
    ) -> Result<EnrolledDevice, StoreError> {
        tether_protocol::names::validate_device_name(&enrollment.name)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // SQLite serializes the whole redemption with an immediate transaction; here the
            // token's row is locked (FOR UPDATE in check_token) until the commit, so
            // redemptions of one token take turns, and redemptions of different tokens that
            // meet on one device key or name are told apart by the UNIQUE constraints below.
            let CheckedToken {
                id: token_id,
                tenant_id,
                tenant: tenant_name,
                require_accept,
                uses_left,
                allow_replace,
                ..
            } = check_token(&tx, secret, TokenKind::Enroll, true).await?;
            let by_key = device_where(&tx, "d.fingerprint = $1", &[&enrollment.fingerprint]).await?;
            let by_name = device_where(
                &tx,
                "d.tenant_id = $1 AND d.name = $2",
                &[&tenant_id, &enrollment.name],
            )
            .await?;
            if let Some(existing) = &by_key
                && existing.tenant_id != tenant_id
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
                // Every check comes before the deletion: a device is never removed by an
                // enrollment that then turns out pending or refused.
                if require_accept {
                    return Err(StoreError::Conflict(format!(
                        "device name {:?} is already used by another device in tenant {tenant_name}; a token minted with --require-accept enrolls devices as pending and never replaces one: choose another --name",
                        enrollment.name
                    )));
                }
                if !allow_replace {
                    return Err(StoreError::Conflict(format!(
                        "device name {:?} is already used by another device in tenant {tenant_name}; replacing it needs an enrollment token minted with --allow-replace",
                        enrollment.name
                    )));
                }
            }
            let replaced = match &by_name {
                Some(other) if other.fingerprint != enrollment.fingerprint => {
                    tx.execute("DELETE FROM devices WHERE id = $1", &[&other.id])
                        .await?;
                    Some(other.clone())
                }
                _ => None,
            };
            let status = if require_accept {
                DeviceStatus::Pending
            } else {
                DeviceStatus::Accepted
            };
            let written = match by_key {
                Some(existing) => {
                    // Re-enrollment of the same key keeps its id. An accepted device stays
                    // accepted; a pending one gets what a fresh enrollment with this token
                    // would get. An operator's rejection is not undone by the device itself:
                    // the token it holds may allow many uses. (Returning drops the
                    // transaction, undoing any deletion.)
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
                    tx.execute(
                        "UPDATE devices SET name = $2, agent_version = $3, status = $4 WHERE id = $1",
                        &[
                            &existing.id,
                            &enrollment.name,
                            &enrollment.agent_version,
                            &keep.as_str(),
                        ],
                    )
                    .await
                    .map(|_| existing.id)
                }
                None => {
                    let id = format!("dev_{}", random_hex(8));
                    tx.execute(
                        "INSERT INTO devices (id, tenant_id, name, public_key, fingerprint, status, created_at, agent_version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[
                            &id,
                            &tenant_id,
                            &enrollment.name,
                            &enrollment.public_key_openssh,
                            &enrollment.fingerprint,
                            &status.as_str(),
                            &now(),
                            &enrollment.agent_version,
                        ],
                    )
                    .await
                    .map(|_| id)
                }
            };
            let id = match written {
                Ok(id) => id,
                Err(e) if is_unique_violation(&e) => {
                    return Err(enrolled_meanwhile(&enrollment.name, &tenant_name));
                }
                Err(e) => return Err(e.into()),
            };
            if uses_left.is_some() {
                tx.execute(
                    "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1",
                    &[&token_id],
                )
                .await?;
            }
            let device = device_where(&tx, "d.id = $1", &[&id])
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "device",
                    key: id.clone(),
                })?;
            tx.commit().await?;
            Ok(EnrolledDevice {
                device,
                tenant_name,
                token_id,
                replaced,
            })
        })
    }

    fn token_tenant(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.block(async {
            Ok(self
                .client()
                .await?
                .query_opt(
                    "SELECT t.name FROM tokens k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1",
                    &[&id],
                )
                .await?
                .map(|r| r.get(0)))
        })
    }

    fn set_token_role(&self, id: &str, role: Role) -> Result<(), StoreError> {
        // Only API tokens have a role that means something.
        let n = self.block(async {
            self.client()
                .await?
                .execute(
                    "UPDATE tokens SET role = $2 WHERE id = $1 AND kind = 'api'",
                    &[&id, &role.as_str()],
                )
                .await
                .map_err(StoreError::from)
        })?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "API token",
                key: id.to_string(),
            });
        }
        Ok(())
    }
}
