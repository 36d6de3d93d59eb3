//! Tokens in SQLite.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use super::devices::device_where;
use super::tenants::tenant_by_name;
use crate::store::devices::no_device;
use crate::store::tenants::no_tenant;
use crate::store::tokens::{
    EnrollmentPlan, EnrollmentWrite, StoredToken, StoredTokenInfo, mint_token, plan_enrollment,
};
use crate::store::{
    ApiIdentity, CreatedToken, DeviceEnrollment, EnrolledDevice, NewToken, Role, StoreError,
    TokenInfo, TokenKind, TokenStore, hash_secret, now, random_hex, unix_now,
};

/// Checks a token of `kind` and returns what redeeming it grants.
fn check_token(
    conn: &Connection,
    secret: &str,
    kind: TokenKind,
) -> Result<StoredToken, StoreError> {
    conn.query_row(
        "SELECT k.id, k.tenant_id, t.name, k.kind, k.role, k.require_accept, k.allow_replace,
             k.uses_left, k.expires_at, k.revoked
         FROM tokens k JOIN tenants t ON t.id = k.tenant_id WHERE k.secret_hash = ?1",
        params![hash_secret(secret)],
        |r| {
            Ok(StoredToken {
                id: r.get(0)?,
                tenant_id: r.get(1)?,
                tenant: r.get(2)?,
                kind: r.get(3)?,
                role: r.get(4)?,
                require_accept: r.get(5)?,
                allow_replace: r.get(6)?,
                uses_left: r.get(7)?,
                expires_at: r.get(8)?,
                revoked: r.get(9)?,
            })
        },
    )
    .optional()?
    .ok_or(StoreError::InvalidToken)?
    .redeemable(kind)
}

impl TokenStore for SqliteStore {
    fn create_token(&self, new: NewToken<'_>) -> Result<CreatedToken, StoreError> {
        let minted = mint_token(&new)?;
        let conn = self.conn();
        let tenant = tenant_by_name(&conn, new.tenant)?.ok_or_else(|| no_tenant(new.tenant))?;
        conn.execute(
            "INSERT INTO tokens (id, tenant_id, kind, secret_hash, created_at, expires_at, uses_left, require_accept, role, allow_replace)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![minted.id, tenant.id, new.kind.as_str(), hash_secret(&minted.secret), now(), minted.expires, new.uses, new.require_accept, new.role.as_str(), new.allow_replace],
        )?;
        Ok(minted.created(tenant.name, &new))
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
            Ok(StoredTokenInfo {
                id: r.get(0)?,
                tenant: r.get(1)?,
                kind: r.get(2)?,
                created_at: r.get(3)?,
                expires_at: r.get(4)?,
                uses_left: r.get(5)?,
                require_accept: r.get(6)?,
                revoked: r.get(7)?,
                role: r.get(8)?,
                allow_replace: r.get(9)?,
            }
            .info(now))
        })?;
        let tokens: Vec<TokenInfo> = rows.collect::<Result<_, _>>()?;
        if tokens.is_empty()
            && let Some(name) = tenant
            && tenant_by_name(&conn, name)?.is_none()
        {
            return Err(no_tenant(name));
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
        check_token(&self.conn(), secret, TokenKind::Api)?.api_identity()
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
        let token = check_token(&tx, secret, TokenKind::Enroll)?;
        let by_key = device_where(&tx, "d.fingerprint = ?1", params![enrollment.fingerprint])?;
        let by_name = device_where(
            &tx,
            "d.tenant_id = ?1 AND d.name = ?2",
            params![token.tenant_id, enrollment.name],
        )?;
        let EnrollmentPlan { replaced, write } =
            plan_enrollment(&token, &enrollment, by_key, by_name)?;
        if let Some(other) = &replaced {
            tx.execute("DELETE FROM devices WHERE id = ?1", params![other.id])?;
        }
        let id = match write {
            EnrollmentWrite::Update { id, status } => {
                tx.execute(
                    "UPDATE devices SET name = ?2, agent_version = ?3, status = ?4 WHERE id = ?1",
                    params![
                        id,
                        enrollment.name,
                        enrollment.agent_version,
                        status.as_str()
                    ],
                )?;
                id
            }
            EnrollmentWrite::Insert { status } => {
                let id = format!("dev_{}", random_hex(8));
                tx.execute(
                    "INSERT INTO devices (id, tenant_id, name, public_key, fingerprint, status, created_at, agent_version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        id,
                        token.tenant_id,
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
        if token.uses_left.is_some() {
            tx.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1",
                params![token.id],
            )?;
        }
        let device = device_where(&tx, "d.id = ?1", params![id])?.ok_or_else(|| no_device(&id))?;
        tx.commit()?;
        Ok(EnrolledDevice {
            device,
            tenant_name: token.tenant,
            token_id: token.id,
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
