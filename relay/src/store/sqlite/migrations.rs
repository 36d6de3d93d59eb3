//! The store's schema and how it gets there.
//!
//! The schema version lives in SQLite's own header (`PRAGMA user_version`), so there is no
//! bookkeeping table to get out of step with it. Migrations are an append-only list: a released
//! entry is never edited, a change is a new entry. Each runs in its own `IMMEDIATE` transaction
//! together with the version bump, so a crash or a second process starting at the same moment
//! sees either the old schema or the new one, never half of it; the version is re-read inside
//! the transaction, so two processes opening a fresh file do not both apply a step.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// One step of the schema's history.
pub(super) struct Migration {
    /// What the step is for (shown when it fails).
    pub name: &'static str,
    /// The statements, run as one batch.
    pub sql: &'static str,
}

/// Schema migrations, applied in order; entry `i` brings the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "tenants, tokens, engineers and devices",
        sql: r#"
CREATE TABLE tenants (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE TABLE tokens (
    id             TEXT PRIMARY KEY,
    tenant_id      INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('enroll', 'api')),
    secret_hash    TEXT NOT NULL UNIQUE,
    created_at     TEXT NOT NULL,
    expires_at     INTEGER,
    uses_left      INTEGER,
    require_accept INTEGER NOT NULL DEFAULT 0,
    revoked        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX users_by_fingerprint ON users(fingerprint);
CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    tenant_id         INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    public_key        TEXT NOT NULL,
    fingerprint       TEXT NOT NULL UNIQUE,
    status            TEXT NOT NULL CHECK (status IN ('accepted', 'pending', 'rejected')),
    created_at        TEXT NOT NULL,
    online            INTEGER NOT NULL DEFAULT 0,
    last_connected    TEXT,
    last_disconnected TEXT,
    remote_addr       TEXT,
    agent_version     TEXT,
    UNIQUE (tenant_id, name)
);
"#,
    },
    Migration {
        name: "telemetry committed by the SQLite sink",
        sql: r#"
CREATE TABLE telemetry (
    device_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    tenant_id   INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    topic       TEXT NOT NULL,
    level       TEXT,
    payload     TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX telemetry_by_topic ON telemetry (tenant_id, device_id, topic, ts_ms);
CREATE INDEX telemetry_by_time ON telemetry (tenant_id, device_id, ts_ms);
"#,
    },
    Migration {
        name: "per-tenant telemetry retention",
        sql: r#"
ALTER TABLE tenants ADD COLUMN retention_days INTEGER NOT NULL DEFAULT 30;
"#,
    },
    Migration {
        name: "fleet: artifacts, device tags, desired and reported state, deployments",
        sql: r#"
CREATE TABLE artifacts (
    sha256      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE device_tags (
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
) WITHOUT ROWID;
CREATE INDEX device_tags_by_tag ON device_tags (tag, device_id);
CREATE TABLE desired_state (
    device_id   TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    doc         TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE reported_state (
    device_id   TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    doc         TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE deployments (
    id          TEXT PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    target      TEXT NOT NULL,
    components  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX deployments_by_tenant ON deployments (tenant_id, created_at);
CREATE TABLE deployment_devices (
    deployment_id   TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    device_id       TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    desired_version INTEGER NOT NULL,
    status          TEXT NOT NULL,
    message         TEXT,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
);
CREATE INDEX deployment_devices_by_device ON deployment_devices (device_id);
"#,
    },
    Migration {
        name: "remote actions",
        sql: r#"
CREATE TABLE actions (
    id          TEXT PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    action      TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  INTEGER,
    sent_at     TEXT,
    finished_at TEXT,
    exit_code   INTEGER,
    output      TEXT,
    truncated   INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX actions_by_device ON actions (device_id, status);
"#,
    },
    Migration {
        name: "append-only audit trail",
        sql: r#"
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    tenant  TEXT,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT,
    source  TEXT,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit (tenant, id);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"#,
    },
    Migration {
        name: "recorded engineer sessions",
        sql: r#"
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    tenant_id     INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL,
    device_name   TEXT NOT NULL,
    engineer      TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    source        TEXT NOT NULL,
    kind          TEXT,
    command       TEXT,
    term          TEXT,
    width         INTEGER,
    height        INTEGER,
    started_at    TEXT NOT NULL,
    started_ms    INTEGER NOT NULL,
    ended_at      TEXT,
    end_reason    TEXT,
    exit_status   INTEGER,
    exit_signal   TEXT,
    bytes_in      INTEGER NOT NULL DEFAULT 0,
    bytes_out     INTEGER NOT NULL DEFAULT 0,
    cast_file     TEXT,
    files         TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX sessions_by_tenant ON sessions (tenant_id, started_ms);
CREATE INDEX sessions_by_device ON sessions (device_id, started_ms);
ALTER TABLE tenants ADD COLUMN session_retention_days INTEGER NOT NULL DEFAULT 90;
"#,
    },
    Migration {
        name: "SSH certificate authorities trusted by tenants",
        sql: r#"
CREATE TABLE trusted_cas (
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    principals  TEXT NOT NULL DEFAULT '[]',
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, fingerprint)
);
CREATE INDEX trusted_cas_by_fingerprint ON trusted_cas (fingerprint);
"#,
    },
    Migration {
        name: "device key rotation",
        sql: r#"
ALTER TABLE devices ADD COLUMN next_public_key TEXT;
ALTER TABLE devices ADD COLUMN next_fingerprint TEXT;
CREATE UNIQUE INDEX devices_by_next_fingerprint ON devices (next_fingerprint);
"#,
    },
    Migration {
        name: "roles of API tokens",
        sql: r#"
ALTER TABLE tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'operator'
    CHECK (role IN ('admin', 'operator', 'viewer'));
"#,
    },
    Migration {
        name: "enrollment tokens that may replace a device",
        sql: r#"
ALTER TABLE tokens ADD COLUMN allow_replace INTEGER NOT NULL DEFAULT 0;
"#,
    },
    // The bytes stay content-addressed on disk; a row now says which tenant may use them.
    // What an older store cannot tell apart is left unowned (dropped) rather than guessed:
    // only a tenant's own deployments' recipes and OS bundles are attributed to it, and with
    // a single tenant every artifact is that tenant's. Others must be put again per tenant.
    Migration {
        name: "artifacts owned by tenants",
        sql: r#"
ALTER TABLE artifacts RENAME TO artifacts_unowned;
CREATE TABLE artifacts (
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, sha256)
);
INSERT OR IGNORE INTO artifacts (tenant_id, sha256, size, name, created_at)
    SELECT p.tenant_id, a.sha256, a.size, a.name, a.created_at
    FROM deployments p, json_each(p.components) c
    JOIN artifacts_unowned a ON a.sha256 = json_extract(c.value, '$.recipe_sha256')
    ORDER BY a.rowid;
INSERT OR IGNORE INTO artifacts (tenant_id, sha256, size, name, created_at)
    SELECT d.tenant_id, a.sha256, a.size, a.name, a.created_at
    FROM desired_state s JOIN devices d ON d.id = s.device_id
    JOIN artifacts_unowned a ON a.sha256 = json_extract(s.doc, '$.os.bundle_sha256')
    ORDER BY a.rowid;
INSERT OR IGNORE INTO artifacts (tenant_id, sha256, size, name, created_at)
    SELECT t.id, a.sha256, a.size, a.name, a.created_at
    FROM artifacts_unowned a, tenants t
    WHERE (SELECT count(*) FROM tenants) = 1
    ORDER BY a.rowid;
DROP TABLE artifacts_unowned;
"#,
    },
    // An engineer holds any number of keys (one key is still one engineer within a tenant)
    // and may be disabled without losing the name, role and history of the account.
    Migration {
        name: "engineers with several keys, disabled engineers",
        sql: r#"
CREATE TABLE users_v2 (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
INSERT INTO users_v2 (id, tenant_id, name, role, created_at)
    SELECT id, tenant_id, name, role, created_at FROM users;
CREATE TABLE user_keys (
    user_id     INTEGER NOT NULL REFERENCES users_v2(id) ON DELETE CASCADE,
    tenant_id   INTEGER NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, fingerprint),
    UNIQUE (tenant_id, fingerprint)
);
INSERT INTO user_keys (user_id, tenant_id, public_key, fingerprint, created_at)
    SELECT id, tenant_id, public_key, fingerprint, created_at FROM users;
DROP TABLE users;
ALTER TABLE users_v2 RENAME TO users;
CREATE INDEX user_keys_by_fingerprint ON user_keys (fingerprint);
"#,
    },
    Migration {
        name: "deployments that remove components",
        sql: r#"
ALTER TABLE deployments ADD COLUMN removed TEXT NOT NULL DEFAULT '[]';
"#,
    },
    Migration {
        name: "device change feed",
        sql: r#"
CREATE TABLE device_changes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    at        INTEGER NOT NULL
);
CREATE INDEX device_changes_by_time ON device_changes (at);
"#,
    },
    // Who may stay connected changes only through these rows, so the serving relay reads one
    // number a few times a second instead of checking every live link against the store.
    // Triggers count every such write, whoever makes it, and cascades from a tenant's removal.
    Migration {
        name: "access generation",
        sql: r#"
CREATE TABLE access_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
INSERT INTO access_generation (id, n) VALUES (1, 0);
CREATE TRIGGER access_device_status AFTER UPDATE OF status ON devices
    WHEN OLD.status IS NOT NEW.status
    BEGIN UPDATE access_generation SET n = n + 1; END;
CREATE TRIGGER access_device_removed AFTER DELETE ON devices
    BEGIN UPDATE access_generation SET n = n + 1; END;
CREATE TRIGGER access_user_changed AFTER UPDATE OF role, disabled ON users
    WHEN OLD.role IS NOT NEW.role OR OLD.disabled IS NOT NEW.disabled
    BEGIN UPDATE access_generation SET n = n + 1; END;
CREATE TRIGGER access_user_removed AFTER DELETE ON users
    BEGIN UPDATE access_generation SET n = n + 1; END;
CREATE TRIGGER access_key_removed AFTER DELETE ON user_keys
    BEGIN UPDATE access_generation SET n = n + 1; END;
CREATE TRIGGER access_ca_changed AFTER UPDATE ON trusted_cas
    BEGIN UPDATE access_generation SET n = n + 1; END;
CREATE TRIGGER access_ca_removed AFTER DELETE ON trusted_cas
    BEGIN UPDATE access_generation SET n = n + 1; END;
CREATE TRIGGER access_tenant_removed AFTER DELETE ON tenants
    BEGIN UPDATE access_generation SET n = n + 1; END;
"#,
    },
];

/// The schema version this code writes and understands.
pub(super) fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database up to the newest schema; refuses one newer than this code knows.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    apply(conn, MIGRATIONS)
}

fn apply(conn: &mut Connection, migrations: &[Migration]) -> Result<(), StoreError> {
    let known = migrations.len() as i64;
    loop {
        // IMMEDIATE takes the write lock before reading the version: two processes migrating
        // the same file at once serialize here instead of both applying the same step.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        if version == known {
            return Ok(());
        }
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|i| migrations.get(i))
        else {
            return Err(StoreError::Invalid(format!(
                "the store has an impossible schema version {version}"
            )));
        };
        tx.execute_batch(step.sql)
            .map_err(|source| StoreError::Migration {
                version: version + 1,
                name: step.name,
                source: source.into(),
            })?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn version(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
    }

    #[test]
    fn fresh_database_reaches_the_latest_version_and_reapplying_is_a_no_op() -> TestResult {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        assert_eq!(version(&conn)?, latest());
        migrate(&mut conn)?;
        assert_eq!(version(&conn)?, latest());
        Ok(())
    }

    #[test]
    fn an_old_database_is_upgraded_step_by_step_keeping_its_data() -> TestResult {
        let mut conn = Connection::open_in_memory()?;
        apply(&mut conn, &MIGRATIONS[..1])?;
        conn.execute(
            "INSERT INTO tenants (name, created_at) VALUES ('acme', '2024-01-01T00:00:00Z')",
            [],
        )?;
        migrate(&mut conn)?;
        assert_eq!(version(&conn)?, latest());
        // The column added later has its default for the row written before it existed.
        let days: i64 = conn.query_row(
            "SELECT retention_days FROM tenants WHERE name = 'acme'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(days, 30);
        Ok(())
    }

    #[test]
    fn engineers_keep_their_key_when_keys_get_a_table_of_their_own() -> TestResult {
        let mut conn = Connection::open_in_memory()?;
        let before = MIGRATIONS
            .iter()
            .position(|m| m.name == "engineers with several keys, disabled engineers")
            .unwrap_or(MIGRATIONS.len());
        apply(&mut conn, &MIGRATIONS[..before])?;
        conn.execute_batch(
            "INSERT INTO tenants (id, name, created_at) VALUES (1, 'acme', 't');
             INSERT INTO users (id, tenant_id, name, role, public_key, fingerprint, created_at)
                 VALUES (5, 1, 'alice', 'operator', 'ssh-ed25519 AAAA', 'SHA256:a', 't');",
        )?;
        migrate(&mut conn)?;
        let row: (i64, String, bool) = conn.query_row(
            "SELECT k.user_id, k.fingerprint, u.disabled FROM user_keys k JOIN users u ON u.id = k.user_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        assert_eq!(row, (5, "SHA256:a".to_string(), false));
        // Deleting the engineer deletes its keys: the foreign key follows the renamed table.
        conn.execute_batch("PRAGMA foreign_keys = ON; DELETE FROM users;")?;
        let keys: i64 = conn.query_row("SELECT count(*) FROM user_keys", [], |r| r.get(0))?;
        assert_eq!(keys, 0);
        Ok(())
    }

    /// The step before artifacts had tenants.
    fn before_artifact_owners() -> usize {
        MIGRATIONS
            .iter()
            .position(|m| m.name == "artifacts owned by tenants")
            .unwrap_or(MIGRATIONS.len())
    }

    fn owners(conn: &Connection) -> rusqlite::Result<Vec<(i64, String)>> {
        let mut stmt = conn.prepare("SELECT tenant_id, sha256 FROM artifacts ORDER BY 1, 2")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    #[test]
    fn old_artifacts_go_to_the_tenants_whose_deployments_used_them_and_no_others() -> TestResult {
        let mut conn = Connection::open_in_memory()?;
        apply(&mut conn, &MIGRATIONS[..before_artifact_owners()])?;
        conn.execute_batch(
            r#"
INSERT INTO tenants (id, name, created_at) VALUES (1, 'acme', 't'), (2, 'globex', 't');
INSERT INTO devices (id, tenant_id, name, public_key, fingerprint, status, created_at)
    VALUES ('dev_g', 2, 'g1', 'k', 'fp', 'accepted', 't');
INSERT INTO artifacts (sha256, size, name, created_at) VALUES
    ('aaaa', 1, 'acme-recipe.yaml', 't'),
    ('bbbb', 1, 'globex-bundle.raucb', 't'),
    ('cccc', 1, 'who-knows.bin', 't');
INSERT INTO deployments (id, tenant_id, target, components, created_at) VALUES
    ('dep_a', 1, 'tag:edge', '{"com.example.a": {"version": "1", "recipe_sha256": "aaaa"}}', 't');
INSERT INTO desired_state (device_id, version, doc, updated_at) VALUES
    ('dev_g', 1, '{"version": 1, "os": {"version": "2", "bundle_sha256": "bbbb"}}', 't');
"#,
        )?;
        migrate(&mut conn)?;
        // A component file nothing ties to one tenant belongs to none: it must be put again.
        assert_eq!(
            owners(&conn)?,
            vec![(1, "aaaa".to_string()), (2, "bbbb".to_string())]
        );
        Ok(())
    }

    #[test]
    fn with_a_single_tenant_every_old_artifact_is_its() -> TestResult {
        let mut conn = Connection::open_in_memory()?;
        apply(&mut conn, &MIGRATIONS[..before_artifact_owners()])?;
        conn.execute_batch(
            "INSERT INTO tenants (id, name, created_at) VALUES (7, 'acme', 't');
             INSERT INTO artifacts (sha256, size, name, created_at) VALUES ('cccc', 1, 'x', 't');",
        )?;
        migrate(&mut conn)?;
        assert_eq!(owners(&conn)?, vec![(7, "cccc".to_string())]);
        Ok(())
    }

    #[test]
    fn a_failing_step_leaves_the_previous_version_intact() -> TestResult {
        let mut conn = Connection::open_in_memory()?;
        let broken = [
            Migration {
                name: "ok",
                sql: "CREATE TABLE a (x INTEGER);",
            },
            Migration {
                name: "broken",
                sql: "CREATE TABLE b (x INTEGER); CREATE TABLE a (y INTEGER);",
            },
        ];
        let e = apply(&mut conn, &broken)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("schema version 2 (broken)"), "{e}");
        assert_eq!(version(&conn)?, 1);
        // Table b of the failed step was rolled back with it.
        let b: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'b'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(b, 0);
        Ok(())
    }

    #[test]
    fn newer_and_impossible_versions_are_refused() -> TestResult {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "user_version", latest() + 1)?;
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::TooNew { found, known }) if found == latest() + 1 && known == latest()
        ));
        conn.pragma_update(None, "user_version", -1)?;
        assert!(matches!(migrate(&mut conn), Err(StoreError::Invalid(_))));
        Ok(())
    }
}
