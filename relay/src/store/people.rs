//! Engineers and tenants over their whole life: disabling, re-enabling and removing
//! engineers, changing their roles and keys, removing a tenant with everything it holds, and
//! the one query with which the serving relay re-checks every live engineer login.
//!
//! Names are compared exactly (SQLite's binary collation) after [`validate_name`], which
//! accepts lower case only: `Alice` is refused as a name, never matched to `alice`.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::cas::{CA_COLUMNS, ca_from_row, finish};
use super::{
    EngineerKey, Role, Store, StoreError, TrustedCa, User, now, tenant_by_name, validate_name,
};

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

/// What [`Store::live_engineer_grants`] found.
#[derive(Debug, Clone, Default)]
pub struct LiveGrants {
    /// Every engineer holding one of the keys asked about.
    pub engineers: Vec<LiveEngineer>,
    /// Every tenant's trust in one of the CAs asked about.
    pub trusted: Vec<TrustedCa>,
    /// Of the `(tenant id, user)` pairs asked about, those that still exist.
    pub existing: Vec<(i64, String)>,
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
        out.push(User {
            id,
            name,
            tenant,
            role: Role::parse(&role)?,
            disabled,
            fingerprint: fingerprints.first().cloned().unwrap_or_default(),
            fingerprints,
            created_at,
        });
    }
    Ok(out)
}

/// Refuses a key some engineer of tenant `tenant_id` already holds: one key is one engineer
/// within a tenant, or the SSH front could not tell which role applies.
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
    match holder {
        Some(holder) => Err(StoreError::Conflict(format!(
            "key {fingerprint} is already registered in tenant {tenant} as user {holder:?}"
        ))),
        None => Ok(()),
    }
}

/// The id of engineer `name` of `tenant` (with its tenant's id), or NotFound naming both.
fn user_id(conn: &Connection, tenant: &str, name: &str) -> Result<(i64, i64), StoreError> {
    validate_name("tenant", tenant)?;
    validate_name("user", name)?;
    let t = tenant_by_name(conn, tenant)?.ok_or_else(|| StoreError::NotFound {
        what: "tenant",
        key: tenant.to_string(),
    })?;
    let id: Option<i64> = conn
        .query_row(
            "SELECT id FROM users WHERE tenant_id = ?1 AND name = ?2",
            params![t.id, name],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => Ok((id, t.id)),
        None => Err(StoreError::Invalid(format!(
            "no user named {name:?} in tenant {tenant}"
        ))),
    }
}

fn count(conn: &Connection, sql: &str, tenant_id: i64) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(sql, params![tenant_id], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn contents(conn: &Connection, tenant_id: i64) -> Result<TenantContents, StoreError> {
    Ok(TenantContents {
        devices: count(
            conn,
            "SELECT count(*) FROM devices WHERE tenant_id = ?1",
            tenant_id,
        )?,
        telemetry: count(
            conn,
            "SELECT count(*) FROM telemetry WHERE tenant_id = ?1",
            tenant_id,
        )?,
        tokens: count(
            conn,
            "SELECT count(*) FROM tokens WHERE tenant_id = ?1",
            tenant_id,
        )?,
        engineers: count(
            conn,
            "SELECT count(*) FROM users WHERE tenant_id = ?1",
            tenant_id,
        )?,
        cas: count(
            conn,
            "SELECT count(*) FROM trusted_cas WHERE tenant_id = ?1",
            tenant_id,
        )?,
        deployments: count(
            conn,
            "SELECT count(*) FROM deployments WHERE tenant_id = ?1",
            tenant_id,
        )?,
        sessions: count(
            conn,
            "SELECT count(*) FROM sessions WHERE tenant_id = ?1",
            tenant_id,
        )?,
        artifacts: count(
            conn,
            "SELECT count(*) FROM artifacts WHERE tenant_id = ?1",
            tenant_id,
        )?,
    })
}

impl Store {
    /// The engineer `name` of `tenant`.
    pub fn user(&self, tenant: &str, name: &str) -> Result<User, StoreError> {
        let conn = self.conn();
        let (id, _) = user_id(&conn, tenant, name)?;
        users_where(&conn, "u.id = ?1", params![id])?
            .into_iter()
            .next()
            .ok_or_else(|| {
                StoreError::Invalid(format!("no user named {name:?} in tenant {tenant}"))
            })
    }

    /// Deletes engineer `name` of `tenant` and its keys. Its sessions' records and its audit
    /// entries stay: they name the engineer, they do not point at the row.
    pub fn remove_user(&self, tenant: &str, name: &str) -> Result<User, StoreError> {
        let user = self.user(tenant, name)?;
        self.conn()
            .execute("DELETE FROM users WHERE id = ?1", params![user.id])?;
        Ok(user)
    }

    /// Disables (or enables) engineer `name` of `tenant`; returns whether it changed.
    pub fn set_user_disabled(
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

    /// Gives engineer `name` of `tenant` another role; returns the role it had.
    pub fn set_user_role(&self, tenant: &str, name: &str, role: Role) -> Result<Role, StoreError> {
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

    /// Registers one more key for engineer `name` of `tenant`; returns its fingerprint.
    pub fn add_user_key(
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

    /// Unregisters key `fingerprint` of engineer `name` of `tenant`. The last key is refused:
    /// an engineer who may no longer log in at all is removed or disabled instead.
    pub fn remove_user_key(
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
        if n == 0 {
            return Err(StoreError::Invalid(format!(
                "user {name:?} of tenant {tenant} has no key {fingerprint:?} (relay user list shows its keys)"
            )));
        }
        if keys <= 1 {
            return Err(StoreError::Invalid(format!(
                "{fingerprint} is the last key of user {name:?}; use relay user remove or relay user disable"
            )));
        }
        tx.commit()?;
        Ok(())
    }

    /// The disabled engineers holding key `fingerprint`, as `(tenant, user)`: a refused login
    /// says why.
    pub fn disabled_engineers(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT t.name, u.name FROM user_keys k JOIN users u ON u.id = k.user_id
             JOIN tenants t ON t.id = u.tenant_id
             WHERE k.fingerprint = ?1 AND u.disabled = 1 ORDER BY t.id",
        )?;
        let rows = stmt.query_map(params![fingerprint], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What stands today behind the live engineer logins: for the keys `key_fingerprints`,
    /// every engineer holding one; for the CAs `ca_fingerprints`, every tenant trusting one;
    /// of `users`, those that still exist (to tell a removed engineer from a removed key).
    /// One read transaction for all the logins the relay holds, however many.
    pub fn live_engineer_grants(
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

    /// The tenant of token `id`, if there is such a token.
    pub fn token_tenant(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT t.name FROM tokens k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Gives API token `id` another role (enrollment tokens have none).
    pub fn set_token_role(&self, id: &str, role: Role) -> Result<(), StoreError> {
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

    /// What tenant `name` holds, i.e. what [`Store::remove_tenant`] would delete.
    pub fn tenant_contents(&self, name: &str) -> Result<TenantContents, StoreError> {
        validate_name("tenant", name)?;
        let conn = self.conn();
        let t = tenant_by_name(&conn, name)?.ok_or_else(|| StoreError::NotFound {
            what: "tenant",
            key: name.to_string(),
        })?;
        contents(&conn, t.id)
    }

    /// Deletes tenant `name` and everything it holds: devices (tags, desired and reported
    /// state, actions), telemetry, tokens, engineers and their keys, trusted CAs, deployments,
    /// session records and artifact records. The audit trail stays (it is append-only and
    /// names the tenant in text). A tenant with devices is refused unless `with_devices`.
    /// The caller deletes the returned files.
    pub fn remove_tenant(
        &self,
        name: &str,
        with_devices: bool,
    ) -> Result<RemovedTenant, StoreError> {
        validate_name("tenant", name)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let t = tenant_by_name(&tx, name)?.ok_or_else(|| StoreError::NotFound {
            what: "tenant",
            key: name.to_string(),
        })?;
        let deleted = contents(&tx, t.id)?;
        if deleted.devices > 0 && !with_devices {
            return Err(StoreError::Conflict(format!(
                "tenant {name} still has {} device(s); relay tenant remove {name} --with-devices --yes deletes them and their data",
                deleted.devices
            )));
        }
        let strings = |sql: &str| -> Result<Vec<String>, StoreError> {
            let mut stmt = tx.prepare(sql)?;
            let rows = stmt.query_map(params![t.id], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let device_ids = strings("SELECT id FROM devices WHERE tenant_id = ?1")?;
        let cast_files = strings(
            "SELECT cast_file FROM sessions WHERE tenant_id = ?1 AND cast_file IS NOT NULL",
        )?;
        let orphaned_artifacts = strings(
            "SELECT a.sha256 FROM artifacts a WHERE a.tenant_id = ?1 AND NOT EXISTS
                 (SELECT 1 FROM artifacts b WHERE b.sha256 = a.sha256 AND b.tenant_id != ?1)",
        )?;
        // Telemetry has no foreign key (it is written in bulk by the sink); everything else
        // goes with the tenant row by ON DELETE CASCADE.
        tx.execute("DELETE FROM telemetry WHERE tenant_id = ?1", params![t.id])?;
        tx.execute("DELETE FROM tenants WHERE id = ?1", params![t.id])?;
        tx.commit()?;
        Ok(RemovedTenant {
            deleted,
            device_ids,
            cast_files,
            orphaned_artifacts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn key(seed: u8) -> Result<String, Box<dyn std::error::Error>> {
        let kp = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
        let k = russh::keys::PrivateKey::from(kp);
        Ok(k.public_key().to_openssh()?)
    }

    #[test]
    fn engineers_are_disabled_re_keyed_and_removed_by_exact_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("relay.db"))?;
        store.add_tenant("acme")?;
        store.add_tenant("globex")?;
        let alice = store.add_user("alice", "acme", Role::Operator, &key(1)?)?;
        store.add_user("alice", "globex", Role::Operator, &key(2)?)?;
        assert_eq!(store.engineer_identities(&alice.fingerprint)?.len(), 1);

        assert!(store.set_user_disabled("acme", "alice", true)?);
        assert!(!store.set_user_disabled("acme", "alice", true)?);
        assert!(store.engineer_identities(&alice.fingerprint)?.is_empty());
        assert_eq!(
            store.disabled_engineers(&alice.fingerprint)?,
            vec![("acme".to_string(), "alice".to_string())]
        );
        assert!(store.set_user_disabled("acme", "alice", false)?);

        let second = store.add_user_key("acme", "alice", &key(3)?)?;
        assert_eq!(store.user("acme", "alice")?.fingerprints.len(), 2);
        // A key is one engineer within a tenant.
        assert!(store.add_user_key("acme", "alice", &key(3)?).is_err());
        store.remove_user_key("acme", "alice", &second)?;
        let e = store
            .remove_user_key("acme", "alice", &alice.fingerprint)
            .err()
            .ok_or("last key removed")?;
        assert!(e.to_string().contains("last key"), "{e}");

        assert_eq!(
            store.set_user_role("acme", "alice", Role::Viewer)?,
            Role::Operator
        );
        let live =
            store.live_engineer_grants(std::slice::from_ref(&alice.fingerprint), &[], &[])?;
        assert_eq!(live.engineers.len(), 1);
        assert_eq!(live.engineers[0].role, Role::Viewer);

        // Names are exact: another spelling is refused, never matched to someone.
        assert!(store.remove_user("acme", "ALICE").is_err());
        assert!(store.remove_user("acme", "bob").is_err());
        store.remove_user("acme", "alice")?;
        assert_eq!(store.users()?.len(), 1);
        assert_eq!(store.users()?[0].tenant, "globex");
        Ok(())
    }

    #[test]
    fn a_tenant_with_devices_is_removed_only_when_asked_and_takes_its_data() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("relay.db"))?;
        store.add_tenant("acme")?;
        store.add_tenant("globex")?;
        super::super::test_support::enroll(&store, "acme", "b1")?;
        let kept = super::super::test_support::enroll(&store, "globex", "g1")?;
        store.add_user("alice", "acme", Role::Operator, &key(1)?)?;
        store.audit(crate::store::NewAudit {
            tenant: Some("acme"),
            actor: "admin",
            action: "x",
            ..Default::default()
        })?;
        let e = store
            .remove_tenant("acme", false)
            .err()
            .ok_or("removed with devices")?;
        assert!(e.to_string().contains("--with-devices"), "{e}");
        let removed = store.remove_tenant("acme", true)?;
        assert_eq!(removed.deleted.devices, 1);
        assert_eq!(removed.deleted.engineers, 1);
        assert_eq!(removed.device_ids.len(), 1);
        assert!(store.tenant_by_name("acme")?.is_none());
        assert!(store.users()?.is_empty());
        assert!(store.device(&kept)?.is_some());
        assert_eq!(store.audit_entries(None, Some("acme"), 10, false)?.len(), 1);
        Ok(())
    }
}
