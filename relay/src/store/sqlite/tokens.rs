//! Tokens in SQLite.

use base64::Engine;
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use super::devices::device_where;
use super::tenants::tenant_by_name;
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
}

/// Checks a token of `kind` and returns what redeeming it grants.
fn check_token(
    conn: &Connection,
    secret: &str,
    kind: TokenKind,
) -> Result<CheckedToken, StoreError> {
    let row = conn
            .query_row(
                "SELECT k.id, k.tenant_id, t.name, k.require_accept, k.uses_left, k.expires_at, k.revoked, k.kind, k.allow_replace
                 FROM tokens k JOIN tenants t ON t.id = k.tenant_id WHERE k.secret_hash = ?1",
                params![hash_secret(secret)],
                |r| {
                    Ok((
                        CheckedToken {
                            id: r.get(0)?,
                            tenant_id: r.get(1)?,
                            tenant: r.get(2)?,
                            require_accept: r.get(3)?,
                            uses_left: r.get(4)?,
                            allow_replace: r.get(8)?,
                        },
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, bool>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                },
            )
            .optional()?;
    let Some((token, expires_at, revoked, k)) = row else {
        return Err(StoreError::InvalidToken);
    };
    if revoked || k != kind.as_str() {
        return Err(StoreError::InvalidToken);
    }
    if expires_at.is_some_and(|e| e <= unix_now()) {
        return Err(StoreError::TokenExpired);
    }
    if token.uses_left.is_some_and(|u| u <= 0) {
        return Err(StoreError::TokenUsedUp);
    }
    Ok(token)
}

impl TokenStore for SqliteStore {
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
        let conn = self.conn();
        let tenant = tenant_by_name(&conn, new.tenant)?.ok_or_else(|| StoreError::NotFound {
            what: "tenant",
            key: new.tenant.to_string(),
        })?;
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
        conn.execute(
            "INSERT INTO tokens (id, tenant_id, kind, secret_hash, created_at, expires_at, uses_left, require_accept, role, allow_replace)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![id, tenant.id, new.kind.as_str(), hash_secret(&secret), now(), expires, new.uses, new.require_accept, new.role.as_str(), new.allow_replace],
        )?;
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
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT k.id, t.name, k.kind, k.created_at, k.expires_at, k.uses_left, k.require_accept, k.revoked, k.role, k.allow_replace
             FROM tokens k JOIN tenants t ON t.id = k.tenant_id
             WHERE ?1 IS NULL OR t.name = ?1 ORDER BY k.rowid",
        )?;
        let now = unix_now();
        let rows = stmt.query_map(params![tenant], |r| {
            let expires_at: Option<i64> = r.get(4)?;
            let uses_left: Option<i64> = r.get(5)?;
            let revoked: bool = r.get(7)?;
            // The same order of checks as redeeming, so the listed state is the error a
            // redemption would give.
            let state = if revoked {
                TokenState::Revoked
            } else if expires_at.is_some_and(|e| e <= now) {
                TokenState::Expired
            } else if uses_left.is_some_and(|u| u <= 0) {
                TokenState::UsedUp
            } else {
                TokenState::Active
            };
            let kind = if r.get::<_, String>(2)? == "api" {
                TokenKind::Api
            } else {
                TokenKind::Enroll
            };
            let role: String = r.get(8)?;
            Ok(TokenInfo {
                id: r.get(0)?,
                tenant: r.get(1)?,
                kind,
                role: (kind == TokenKind::Api)
                    .then(|| Role::parse(&role).ok())
                    .flatten(),
                created_at: r.get(3)?,
                expires_at: expires_at.map(rfc3339_from_unix),
                uses_left,
                require_accept: r.get(6)?,
                allow_replace: r.get(9)?,
                revoked,
                state,
            })
        })?;
        let tokens: Vec<TokenInfo> = rows.collect::<Result<_, _>>()?;
        if tokens.is_empty()
            && let Some(name) = tenant
            && tenant_by_name(&conn, name)?.is_none()
        {
            return Err(StoreError::NotFound {
                what: "tenant",
                key: name.to_string(),
            });
        }
        Ok(tokens)
    }

    fn revoke_token(&self, id: &str) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "token",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    fn api_token(&self, secret: &str) -> Result<ApiIdentity, StoreError> {
        let conn = self.conn();
        let CheckedToken {
            id,
            tenant_id,
            tenant,
            ..
        } = check_token(&conn, secret, TokenKind::Api)?;
        let role: String =
            conn.query_row("SELECT role FROM tokens WHERE id = ?1", params![id], |r| {
                r.get(0)
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let CheckedToken {
            id: token_id,
            tenant_id,
            tenant: tenant_name,
            require_accept,
            uses_left,
            allow_replace,
        } = check_token(&tx, secret, TokenKind::Enroll)?;
        let by_key = device_where(&tx, "d.fingerprint = ?1", params![enrollment.fingerprint])?;
        let by_name = device_where(
            &tx,
            "d.tenant_id = ?1 AND d.name = ?2",
            params![tenant_id, enrollment.name],
        )?;
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
                tx.execute("DELETE FROM devices WHERE id = ?1", params![other.id])?;
                Some(other.clone())
            }
            _ => None,
        };
        let status = if require_accept {
            DeviceStatus::Pending
        } else {
            DeviceStatus::Accepted
        };
        let id = match by_key {
            Some(existing) => {
                // Re-enrollment of the same key keeps its id. An accepted device stays accepted;
                // a pending one gets what a fresh enrollment with this token would get. An
                // operator's rejection is not undone by the device itself: the token it holds
                // may allow many uses. (Returning drops the transaction, undoing any deletion.)
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
                    "UPDATE devices SET name = ?2, agent_version = ?3, status = ?4 WHERE id = ?1",
                    params![
                        existing.id,
                        enrollment.name,
                        enrollment.agent_version,
                        keep.as_str()
                    ],
                )?;
                existing.id
            }
            None => {
                let id = format!("dev_{}", random_hex(8));
                tx.execute(
                    "INSERT INTO devices (id, tenant_id, name, public_key, fingerprint, status, created_at, agent_version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        id,
                        tenant_id,
                        enrollment.name,
                        enrollment.public_key_openssh,
                        enrollment.fingerprint,
                        status.as_str(),
                        now(),
                        enrollment.agent_version
                    ],
                )?;
                id
            }
        };
        if uses_left.is_some() {
            tx.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1",
                params![token_id],
            )?;
        }
        let device =
            device_where(&tx, "d.id = ?1", params![id])?.ok_or_else(|| StoreError::NotFound {
                what: "device",
                key: id.clone(),
            })?;
        tx.commit()?;
        Ok(EnrolledDevice {
            device,
            tenant_name,
            token_id,
            replaced,
        })
    }

    fn token_tenant(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT t.name FROM tokens k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn set_token_role(&self, id: &str, role: Role) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE tokens SET role = ?2 WHERE id = ?1 AND kind = 'api'",
            params![id, role.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "API token",
                key: id.to_string(),
            });
        }
        Ok(())
    }
}
