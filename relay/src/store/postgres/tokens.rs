//! Tokens in PostgreSQL.

use deadpool_postgres::GenericClient;

use super::devices::device_where;
use super::tenants::tenant_by_name;
use super::{PgStore, is_unique_violation};
use crate::store::devices::no_device;
use crate::store::tenants::no_tenant;
use crate::store::tokens::{
    EnrollmentPlan, EnrollmentWrite, StoredToken, StoredTokenInfo, mint_token, plan_enrollment,
};
use crate::store::{
    ApiIdentity, CreatedToken, DeviceEnrollment, EnrolledDevice, NewToken, Role, StoreError,
    TokenInfo, TokenKind, TokenStore, hash_secret, now, random_hex, unix_now,
};

/// Checks a token of `kind` and returns what redeeming it grants. With `lock`, the token's
/// row stays locked until the caller's transaction ends, so that two redemptions racing for
/// its last use cannot both pass the check: the second waits, and then sees the use taken.
async fn check_token(
    client: &impl GenericClient,
    secret: &str,
    kind: TokenKind,
    lock: bool,
) -> Result<StoredToken, StoreError> {
    let sql = format!(
        "SELECT k.id, k.tenant_id, t.name, k.kind, k.role, k.require_accept, k.allow_replace,
             k.uses_left, k.expires_at, k.revoked
         FROM tokens k JOIN tenants t ON t.id = k.tenant_id WHERE k.secret_hash = $1{}",
        if lock { " FOR UPDATE OF k" } else { "" }
    );
    let Some(r) = client.query_opt(&sql, &[&hash_secret(secret)]).await? else {
        return Err(StoreError::InvalidToken);
    };
    StoredToken {
        id: r.get(0),
        tenant_id: r.get(1),
        tenant: r.get(2),
        kind: r.get(3),
        role: r.get(4),
        require_accept: r.get(5),
        allow_replace: r.get(6),
        uses_left: r.get(7),
        expires_at: r.get(8),
        revoked: r.get(9),
    }
    .redeemable(kind)
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
        let minted = mint_token(&new)?;
        let uses = new.uses.map(i64::from);
        let tenant = self.block(async {
            let client = self.client().await?;
            let tenant = tenant_by_name(&client, new.tenant)
                .await?
                .ok_or_else(|| no_tenant(new.tenant))?;
            client
                .execute(
                    "INSERT INTO tokens (id, tenant_id, kind, secret_hash, created_at, expires_at, uses_left, require_accept, role, allow_replace)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &minted.id,
                        &tenant.id,
                        &new.kind.as_str(),
                        &hash_secret(&minted.secret),
                        &now(),
                        &minted.expires,
                        &uses,
                        &new.require_accept,
                        &new.role.as_str(),
                        &new.allow_replace,
                    ],
                )
                .await?;
            Ok::<_, StoreError>(tenant)
        })?;
        Ok(minted.created(tenant.name, &new))
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
                    StoredTokenInfo {
                        id: r.get(0),
                        tenant: r.get(1),
                        kind: r.get(2),
                        created_at: r.get(3),
                        expires_at: r.get(4),
                        uses_left: r.get(5),
                        require_accept: r.get(6),
                        revoked: r.get(7),
                        role: r.get(8),
                        allow_replace: r.get(9),
                    }
                    .info(now)
                })
                .collect();
            // An unknown tenant is an error, not an empty list.
            if tokens.is_empty()
                && let Some(name) = tenant
                && tenant_by_name(&client, name).await?.is_none()
            {
                return Err(no_tenant(name));
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
        self.block(async {
            check_token(&self.client().await?, secret, TokenKind::Api, false).await
        })?
        .api_identity()
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
            let token = check_token(&tx, secret, TokenKind::Enroll, true).await?;
            let by_key = device_where(&tx, "d.fingerprint = $1", &[&enrollment.fingerprint]).await?;
            let by_name = device_where(
                &tx,
                "d.tenant_id = $1 AND d.name = $2",
                &[&token.tenant_id, &enrollment.name],
            )
            .await?;
            let EnrollmentPlan { replaced, write } =
                plan_enrollment(&token, &enrollment, by_key, by_name)?;
            if let Some(other) = &replaced {
                tx.execute("DELETE FROM devices WHERE id = $1", &[&other.id])
                    .await?;
            }
            let written = match write {
                EnrollmentWrite::Update { id, status } => tx
                    .execute(
                        "UPDATE devices SET name = $2, agent_version = $3, status = $4 WHERE id = $1",
                        &[
                            &id,
                            &enrollment.name,
                            &enrollment.agent_version,
                            &status.as_str(),
                        ],
                    )
                    .await
                    .map(|_| id),
                EnrollmentWrite::Insert { status } => {
                    let id = format!("dev_{}", random_hex(8));
                    tx.execute(
                        "INSERT INTO devices (id, tenant_id, name, public_key, fingerprint, status, created_at, agent_version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[
                            &id,
                            &token.tenant_id,
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
                    return Err(enrolled_meanwhile(&enrollment.name, &token.tenant));
                }
                Err(e) => return Err(e.into()),
            };
            if token.uses_left.is_some() {
                tx.execute(
                    "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1",
                    &[&token.id],
                )
                .await?;
            }
            let device = device_where(&tx, "d.id = $1", &[&id])
                .await?
                .ok_or_else(|| no_device(&id))?;
            tx.commit().await?;
            Ok(EnrolledDevice {
                device,
                tenant_name: token.tenant,
                token_id: token.id,
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
