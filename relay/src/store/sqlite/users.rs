//! Engineers and tenants over their whole life: disabling, re-enabling and removing
//! engineers, changing their roles and keys, removing a tenant with everything it holds, and
//! the one query with which the serving relay re-checks every live engineer login.
//!
//! Names are compared exactly (SQLite's binary collation) after [`validate_name`], which
//! accepts lower case only: `Alice` is refused as a name, never matched to `alice`.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::cas::{CA_COLUMNS, ca_from_row, finish};
use super::tenants::{count, tenant_by_name};
use super::{SqliteStore, is_unique_violation};
use crate::store::tenants::no_tenant;
use crate::store::users::{
    check_key_removal, check_user_names, no_user, refuse_held_key, user_exists,
};
use crate::store::{
    EngineerIdentity, EngineerKey, LiveEngineer, LiveGrants, Role, StoreError, User, UserStore,
    now, validate_name,
};

/// Engineers matching `filter` (on `u`, `t`), with all their keys.
pub(super) fn users_where(
    conn: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<User>, StoreError> {
    let sql = format!(
        "SELECT u.id, u.name, t.name, u.role, u.disabled, u.created_at,
             (SELECT json_group_array(fingerprint) FROM
                 (SELECT k.fingerprint FROM user_keys k WHERE k.user_id = u.id ORDER BY k.rowid))
         FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE {filter} ORDER BY t.name, u.name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(p, |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, tenant, role, disabled, created_at, keys) = row?;
        let fingerprints: Vec<String> = serde_json::from_str(&keys).unwrap_or_default();
        out.push(User::stored(
            id,
            name,
            tenant,
            &role,
            disabled,
            created_at,
            fingerprints,
        )?);
    }
    Ok(out)
}

/// Refuses a key some engineer of tenant `tenant_id` already holds ([`refuse_held_key`]).
pub(super) fn refuse_key_held(
    conn: &Connection,
    tenant_id: i64,
    tenant: &str,
    fingerprint: &str,
) -> Result<(), StoreError> {
    let holder: Option<String> = conn
        .query_row(
            "SELECT u.name FROM user_keys k JOIN users u ON u.id = k.user_id
             WHERE k.tenant_id = ?1 AND k.fingerprint = ?2",
            params![tenant_id, fingerprint],
            |r| r.get(0),
        )
        .optional()?;
    refuse_held_key(tenant, fingerprint, holder)
}

/// The id of engineer `name` of `tenant` (with its tenant's id), or NotFound naming both.
fn user_id(conn: &Connection, tenant: &str, name: &str) -> Result<(i64, i64), StoreError> {
    check_user_names(tenant, name)?;
    let t = tenant_by_name(conn, tenant)?.ok_or_else(|| no_tenant(tenant))?;
    let id: Option<i64> = conn
        .query_row(
            "SELECT id FROM users WHERE tenant_id = ?1 AND name = ?2",
            params![t.id, name],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => Ok((id, t.id)),
        None => Err(no_user(tenant, name)),
    }
}

impl UserStore for SqliteStore {
    fn add_user(
        &self,
        name: &str,
        tenant: &str,
        role: Role,
        public_key_openssh: &str,
    ) -> Result<User, StoreError> {
        validate_name("user", name)?;
        let EngineerKey {
            openssh: canonical,
            fingerprint,
        } = EngineerKey::parse(public_key_openssh)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let t = tenant_by_name(&tx, tenant)?.ok_or_else(|| no_tenant(tenant))?;
        refuse_key_held(&tx, t.id, tenant, &fingerprint)?;
        let created_at = now();
        let inserted = tx.execute(
            "INSERT INTO users (tenant_id, name, role, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![t.id, name, role.as_str(), created_at],
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(user_exists(tenant, name)),
            Err(e) => return Err(e.into()),
        }
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO user_keys (user_id, tenant_id, public_key, fingerprint, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, t.id, canonical, fingerprint, created_at],
        )?;
        tx.commit()?;
        Ok(User::added(id, name, t.name, role, fingerprint, created_at))
    }

    fn users(&self) -> Result<Vec<User>, StoreError> {
        users_where(&self.conn(), "1", params![])
    }

    fn engineer_identities(&self, fingerprint: &str) -> Result<Vec<EngineerIdentity>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT u.name, t.id, t.name, u.role FROM user_keys k
             JOIN users u ON u.id = k.user_id JOIN tenants t ON t.id = u.tenant_id
             WHERE k.fingerprint = ?1 AND u.disabled = 0 ORDER BY t.id",
        )?;
        let rows = stmt.query_map(params![fingerprint], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (user, tenant_id, tenant, role) = row?;
            out.push(EngineerIdentity {
                user,
                tenant_id,
                tenant,
                role: Role::parse(&role)?,
            });
        }
        Ok(out)
    }

    fn user(&self, tenant: &str, name: &str) -> Result<User, StoreError> {
        let conn = self.conn();
        let (id, _) = user_id(&conn, tenant, name)?;
        users_where(&conn, "u.id = ?1", params![id])?
            .into_iter()
            .next()
            .ok_or_else(|| no_user(tenant, name))
    }

    fn remove_user(&self, tenant: &str, name: &str) -> Result<User, StoreError> {
        let user = self.user(tenant, name)?;
        self.conn()
            .execute("DELETE FROM users WHERE id = ?1", params![user.id])?;
        Ok(user)
    }

    fn set_user_disabled(
        &self,
        tenant: &str,
        name: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        let conn = self.conn();
        let (id, _) = user_id(&conn, tenant, name)?;
        let n = conn.execute(
            "UPDATE users SET disabled = ?2 WHERE id = ?1 AND disabled != ?2",
            params![id, disabled],
        )?;
        Ok(n > 0)
    }

    fn set_user_role(&self, tenant: &str, name: &str, role: Role) -> Result<Role, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (id, _) = user_id(&tx, tenant, name)?;
        let old: String =
            tx.query_row("SELECT role FROM users WHERE id = ?1", params![id], |r| {
                r.get(0)
            })?;
        tx.execute(
            "UPDATE users SET role = ?2 WHERE id = ?1",
            params![id, role.as_str()],
        )?;
        tx.commit()?;
        Role::parse(&old)
    }

    fn add_user_key(
        &self,
        tenant: &str,
        name: &str,
        public_key_openssh: &str,
    ) -> Result<String, StoreError> {
        let key = EngineerKey::parse(public_key_openssh)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (id, tenant_id) = user_id(&tx, tenant, name)?;
        refuse_key_held(&tx, tenant_id, tenant, &key.fingerprint)?;
        tx.execute(
            "INSERT INTO user_keys (user_id, tenant_id, public_key, fingerprint, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, tenant_id, key.openssh, key.fingerprint, now()],
        )?;
        tx.commit()?;
        Ok(key.fingerprint)
    }

    fn remove_user_key(
        &self,
        tenant: &str,
        name: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (id, _) = user_id(&tx, tenant, name)?;
        let keys = count(&tx, "SELECT count(*) FROM user_keys WHERE user_id = ?1", id)?;
        let n = tx.execute(
            "DELETE FROM user_keys WHERE user_id = ?1 AND fingerprint = ?2",
            params![id, fingerprint],
        )?;
        check_key_removal(tenant, name, fingerprint, n > 0, keys <= 1)?;
        tx.commit()?;
        Ok(())
    }

    fn disabled_engineers(&self, fingerprint: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT t.name, u.name FROM user_keys k JOIN users u ON u.id = k.user_id
             JOIN tenants t ON t.id = u.tenant_id
             WHERE k.fingerprint = ?1 AND u.disabled = 1 ORDER BY t.id",
        )?;
        let rows = stmt.query_map(params![fingerprint], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn live_engineer_grants(
        &self,
        key_fingerprints: &[String],
        ca_fingerprints: &[String],
        users: &[(i64, String)],
    ) -> Result<LiveGrants, StoreError> {
        let keys = serde_json::to_string(key_fingerprints).unwrap_or_else(|_| "[]".into());
        let cas = serde_json::to_string(ca_fingerprints).unwrap_or_else(|_| "[]".into());
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let engineers = {
            let mut stmt = tx.prepare(
                "SELECT k.fingerprint, u.tenant_id, u.name, u.role, u.disabled
                 FROM user_keys k JOIN users u ON u.id = k.user_id
                 WHERE k.fingerprint IN (SELECT value FROM json_each(?1))",
            )?;
            let rows = stmt.query_map(params![keys], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (fingerprint, tenant_id, user, role, disabled) = row?;
                out.push(LiveEngineer {
                    fingerprint,
                    tenant_id,
                    user,
                    role: Role::parse(&role)?,
                    disabled,
                });
            }
            out
        };
        let existing = {
            let pairs = serde_json::to_string(users).unwrap_or_else(|_| "[]".into());
            let mut stmt = tx.prepare(
                "SELECT u.tenant_id, u.name FROM users u, json_each(?1) j
                 WHERE u.tenant_id = json_extract(j.value, '$[0]')
                   AND u.name = json_extract(j.value, '$[1]')",
            )?;
            let rows = stmt.query_map(params![pairs], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let trusted = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {CA_COLUMNS} FROM trusted_cas c JOIN tenants t ON t.id = c.tenant_id
                 WHERE c.fingerprint IN (SELECT value FROM json_each(?1))"
            ))?;
            let rows = stmt.query_map(params![cas], ca_from_row)?;
            rows.map(|r| finish(r?)).collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(LiveGrants {
            engineers,
            trusted,
            existing,
        })
    }
}
