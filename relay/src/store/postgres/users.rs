//! Engineers in PostgreSQL over their whole life: disabling, re-enabling and removing
//! engineers, changing their roles and keys, and the one query with which the serving relay
//! re-checks every live engineer login.
//!
//! Names are compared exactly (the name columns are `COLLATE "C"`) after [`validate_name`],
//! which accepts lower case only: `Alice` is refused as a name, never matched to `alice`.
//!
//! Where SQLite serializes a check and the write it guards with an immediate transaction, this
//! backend locks the row the check is about: the tenant's row for "one key is one engineer per
//! tenant", the engineer's row for "an engineer keeps at least one key" and for reading the
//! role it replaces.

use deadpool_postgres::GenericClient;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::ToSql;

use super::cas::{CA_COLUMNS, ca_from_row};
use super::tenants::tenant_by_name;
use super::{PgStore, is_unique_violation};
use crate::store::tenants::no_tenant;
use crate::store::users::{
    check_key_removal, check_user_names, no_user, refuse_held_key, user_exists,
};
use crate::store::{
    EngineerIdentity, EngineerKey, LiveEngineer, LiveGrants, Role, StoreError, Tenant, User,
    UserStore, now, validate_name,
};

/// Engineers matching `filter` (on `u`, `t`, with `$1`… bound to `params`), with all their
/// keys, the first registered first.
async fn users_where(
    client: &impl GenericClient,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<User>, StoreError> {
    // In the order they were added (`seq`), as SQLite lists them by rowid.
    let sql = format!(
        "SELECT u.id, u.name, t.name, u.role, u.disabled, u.created_at,
             ARRAY(SELECT k.fingerprint FROM user_keys k WHERE k.user_id = u.id
                   ORDER BY k.seq)
         FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE {filter} ORDER BY t.name, u.name"
    );
    client
        .query(&sql, params)
        .await?
        .iter()
        .map(|r| {
            let fingerprints: Vec<String> = r.get(6);
            User::stored(
                r.get(0),
                r.get(1),
                r.get(2),
                r.get::<_, &str>(3),
                r.get(4),
                r.get(5),
                fingerprints,
            )
        })
        .collect()
}

/// Tenant `name`, its row locked until the end of the caller's transaction, or NotFound.
///
/// `FOR NO KEY UPDATE` makes checks of the tenant's engineer keys take turns without holding
/// up the inserts elsewhere that only reference the tenant (those take `FOR KEY SHARE`).
async fn lock_tenant(client: &impl GenericClient, name: &str) -> Result<Tenant, StoreError> {
    let t = tenant_by_name(client, name)
        .await?
        .ok_or_else(|| no_tenant(name))?;
    client
        .execute(
            "SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE",
            &[&t.id],
        )
        .await?;
    Ok(t)
}

/// Refuses a key some engineer of tenant `tenant_id` already holds ([`refuse_held_key`]).
async fn refuse_key_held(
    client: &impl GenericClient,
    tenant_id: i64,
    tenant: &str,
    fingerprint: &str,
) -> Result<(), StoreError> {
    let holder: Option<String> = client
        .query_opt(
            "SELECT u.name FROM user_keys k JOIN users u ON u.id = k.user_id
             WHERE k.tenant_id = $1 AND k.fingerprint = $2",
            &[&tenant_id, &fingerprint],
        )
        .await?
        .map(|r| r.get(0));
    refuse_held_key(tenant, fingerprint, holder)
}

/// The id of engineer `name` of `tenant` (with its tenant's id), or NotFound naming the
/// tenant, or Invalid naming the engineer. With `lock`, the engineer's row stays locked until
/// the end of the caller's transaction.
async fn user_id(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
    lock: bool,
) -> Result<(i64, i64), StoreError> {
    check_user_names(tenant, name)?;
    let t = tenant_by_name(client, tenant)
        .await?
        .ok_or_else(|| no_tenant(tenant))?;
    let sql = format!(
        "SELECT id FROM users WHERE tenant_id = $1 AND name = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match client.query_opt(&sql, &[&t.id, &name]).await? {
        Some(r) => Ok((r.get(0), t.id)),
        None => Err(no_user(tenant, name)),
    }
}

impl UserStore for PgStore {
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
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // The tenant's row lock serializes the key check with the insert below.
            let t = lock_tenant(&tx, tenant).await?;
            refuse_key_held(&tx, t.id, tenant, &fingerprint).await?;
            let created_at = now();
            let id: i64 = match tx
                .query_one(
                    "INSERT INTO users (tenant_id, name, role, created_at) VALUES ($1, $2, $3, $4)
                     RETURNING id",
                    &[&t.id, &name, &role.as_str(), &created_at],
                )
                .await
            {
                Ok(row) => row.get(0),
                Err(e) if is_unique_violation(&e) => return Err(user_exists(tenant, name)),
                Err(e) => return Err(e.into()),
            };
            tx.execute(
                "INSERT INTO user_keys (user_id, tenant_id, public_key, fingerprint, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &t.id, &canonical, &fingerprint, &created_at],
            )
            .await?;
            tx.commit().await?;
            Ok(User::added(id, name, t.name, role, fingerprint, created_at))
        })
    }

    fn users(&self) -> Result<Vec<User>, StoreError> {
        self.block(async { users_where(&self.client().await?, "TRUE", &[]).await })
    }

    fn engineer_identities(&self, fingerprint: &str) -> Result<Vec<EngineerIdentity>, StoreError> {
        // Enabled engineers only, in tenant order (the order a login tries them in).
        self.block(async {
            self.client()
                .await?
                .query(
                    "SELECT u.name, t.id, t.name, u.role FROM user_keys k
                     JOIN users u ON u.id = k.user_id JOIN tenants t ON t.id = u.tenant_id
                     WHERE k.fingerprint = $1 AND NOT u.disabled ORDER BY t.id",
                    &[&fingerprint],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(EngineerIdentity {
                        user: r.get(0),
                        tenant_id: r.get(1),
                        tenant: r.get(2),
                        role: Role::parse(r.get::<_, &str>(3))?,
                    })
                })
                .collect()
        })
    }

    fn user(&self, tenant: &str, name: &str) -> Result<User, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let (id, _) = user_id(&client, tenant, name, false).await?;
            users_where(&client, "u.id = $1", &[&id])
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| no_user(tenant, name))
        })
    }

    fn remove_user(&self, tenant: &str, name: &str) -> Result<User, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Locked, so that of two removals racing the second finds no user, as it would
            // after the first.
            let (id, _) = user_id(&tx, tenant, name, true).await?;
            let user = users_where(&tx, "u.id = $1", &[&id])
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| no_user(tenant, name))?;
            // Its keys go with it by ON DELETE CASCADE.
            tx.execute("DELETE FROM users WHERE id = $1", &[&id])
                .await?;
            tx.commit().await?;
            Ok(user)
        })
    }

    fn set_user_disabled(
        &self,
        tenant: &str,
        name: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        // Whether it changed anything: disabling a disabled engineer is no news.
        self.block(async {
            let client = self.client().await?;
            let (id, _) = user_id(&client, tenant, name, false).await?;
            let n = client
                .execute(
                    "UPDATE users SET disabled = $2 WHERE id = $1 AND disabled != $2",
                    &[&id, &disabled],
                )
                .await?;
            Ok(n > 0)
        })
    }

    fn set_user_role(&self, tenant: &str, name: &str, role: Role) -> Result<Role, StoreError> {
        // Returns the role it replaced; the row lock makes that the role this change replaced,
        // not one another change set in between.
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let (id, _) = user_id(&tx, tenant, name, true).await?;
            let old: String = tx
                .query_one("SELECT role FROM users WHERE id = $1", &[&id])
                .await?
                .get(0);
            tx.execute(
                "UPDATE users SET role = $2 WHERE id = $1",
                &[&id, &role.as_str()],
            )
            .await?;
            tx.commit().await?;
            Role::parse(&old)
        })
    }

    fn add_user_key(
        &self,
        tenant: &str,
        name: &str,
        public_key_openssh: &str,
    ) -> Result<String, StoreError> {
        let key = EngineerKey::parse(public_key_openssh)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let (id, tenant_id) = user_id(&tx, tenant, name, false).await?;
            // The tenant's row lock serializes the key check with the insert below.
            lock_tenant(&tx, tenant).await?;
            refuse_key_held(&tx, tenant_id, tenant, &key.fingerprint).await?;
            tx.execute(
                "INSERT INTO user_keys (user_id, tenant_id, public_key, fingerprint, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &tenant_id, &key.openssh, &key.fingerprint, &now()],
            )
            .await?;
            tx.commit().await?;
            Ok(key.fingerprint)
        })
    }

    fn remove_user_key(
        &self,
        tenant: &str,
        name: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // The engineer's row lock makes two removals of its last two keys take turns: the
            // second sees one key left and is refused.
            let (id, _) = user_id(&tx, tenant, name, true).await?;
            let keys: i64 = tx
                .query_one("SELECT count(*) FROM user_keys WHERE user_id = $1", &[&id])
                .await?
                .get(0);
            let n = tx
                .execute(
                    "DELETE FROM user_keys WHERE user_id = $1 AND fingerprint = $2",
                    &[&id, &fingerprint],
                )
                .await?;
            // Returning drops the transaction, which undoes the deletion.
            check_key_removal(tenant, name, fingerprint, n > 0, keys <= 1)?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn disabled_engineers(&self, fingerprint: &str) -> Result<Vec<(String, String)>, StoreError> {
        // (tenant, engineer) pairs, so a refused login can say why.
        self.block(async {
            Ok(self
                .client()
                .await?
                .query(
                    "SELECT t.name, u.name FROM user_keys k JOIN users u ON u.id = k.user_id
                     JOIN tenants t ON t.id = u.tenant_id
                     WHERE k.fingerprint = $1 AND u.disabled ORDER BY t.id",
                    &[&fingerprint],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn live_engineer_grants(
        &self,
        key_fingerprints: &[String],
        ca_fingerprints: &[String],
        users: &[(i64, String)],
    ) -> Result<LiveGrants, StoreError> {
        let (user_tenants, user_names): (Vec<i64>, Vec<&str>) =
            users.iter().map(|(t, n)| (*t, n.as_str())).unzip();
        self.block(async {
            let mut client = self.client().await?;
            // Three reads of one snapshot, as SQLite's read transaction gives: a repeatable
            // read transaction sees the database as of its first statement.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let engineers = tx
                .query(
                    "SELECT k.fingerprint, u.tenant_id, u.name, u.role, u.disabled
                     FROM user_keys k JOIN users u ON u.id = k.user_id
                     WHERE k.fingerprint = ANY($1)",
                    &[&key_fingerprints],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(LiveEngineer {
                        fingerprint: r.get(0),
                        tenant_id: r.get(1),
                        user: r.get(2),
                        role: Role::parse(r.get::<_, &str>(3))?,
                        disabled: r.get(4),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let existing = tx
                .query(
                    "SELECT u.tenant_id, u.name FROM users u
                     JOIN unnest($1::bigint[], $2::text[]) AS j (tenant_id, name)
                         ON u.tenant_id = j.tenant_id AND u.name = j.name",
                    &[&user_tenants, &user_names],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let trusted = tx
                .query(
                    &format!(
                        "SELECT {CA_COLUMNS} FROM trusted_cas c JOIN tenants t ON t.id = c.tenant_id
                         WHERE c.fingerprint = ANY($1)"
                    ),
                    &[&ca_fingerprints],
                )
                .await?
                .iter()
                .map(ca_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            Ok(LiveGrants {
                engineers,
                trusted,
                existing,
            })
        })
    }
}
