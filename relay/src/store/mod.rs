//! Every durable fact of the relay, in SQLite: tenants, tokens, engineers and devices.
//!
//! The serving relay and the admin CLI open the same file at once, so the database runs in WAL
//! mode with a busy timeout, and every change that touches more than one row is a single
//! transaction. The schema is versioned with `PRAGMA user_version`; migrations run in order,
//! each in its own transaction, and a database newer than this code is refused rather than
//! misread. Token secrets are stored only as SHA-256 hashes.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

mod telemetry;
pub use telemetry::{StoredRecord, TelemetryQuery};

/// Schema migrations, applied in order; entry `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
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
    r#"
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
    r#"
ALTER TABLE tenants ADD COLUMN retention_days INTEGER NOT NULL DEFAULT 30;
"#,
];

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Something named does not exist.
    #[error("no {what} named {key:?}")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// The name or id asked for.
        key: String,
    },
    /// The change would break a uniqueness rule.
    #[error("{0}")]
    Conflict(String),
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The token is unknown, of the wrong kind or revoked.
    #[error("invalid token")]
    InvalidToken,
    /// The token's lifetime is over.
    #[error("the token has expired")]
    TokenExpired,
    /// The token was used as often as it may be.
    #[error("the token has been used up")]
    TokenUsedUp,
    /// The database was written by a newer relay.
    #[error(
        "the store is at schema version {found}, newer than this relay understands ({known}); upgrade the relay"
    )]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this code knows.
        known: i64,
    },
    /// Creating the store's directory or file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A tenant: the unit of isolation between customers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Tenant {
    /// Internal id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
}

/// What a token is good for.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Enrolling devices.
    Enroll,
    /// The HTTP API.
    Api,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
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
    /// Creation time.
    pub created_at: String,
    /// Expiry, if any.
    pub expires_at: Option<String>,
    /// Enrollments left, if limited.
    pub uses_left: Option<i64>,
    /// Whether devices need acceptance.
    pub require_accept: bool,
    /// Whether the token was revoked.
    pub revoked: bool,
}

/// The tenant an API token grants access to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiIdentity {
    /// Tenant id.
    pub tenant_id: i64,
    /// Tenant name.
    pub tenant: String,
}

/// Role of an engineer within a tenant.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including user management.
    Admin,
    /// Shells, forwards, device operations.
    Operator,
    /// Read only: no shells, no forwards.
    Viewer,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
    fn parse(s: &str) -> Result<Role, StoreError> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(StoreError::Invalid(format!("unknown role {other:?}"))),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s)
    }
}

/// An engineer registered with a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Internal id.
    pub id: i64,
    /// Name, unique in the tenant.
    pub name: String,
    /// Tenant name.
    pub tenant: String,
    /// Role.
    pub role: Role,
    /// SHA-256 fingerprint of the key.
    pub fingerprint: String,
    /// Creation time.
    pub created_at: String,
}

/// Who an engineer key belongs to, in one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineerIdentity {
    /// User name.
    pub user: String,
    /// Tenant id.
    pub tenant_id: i64,
    /// Tenant name.
    pub tenant: String,
    /// Role in that tenant.
    pub role: Role,
}

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// May hold its link.
    Accepted,
    /// Enrolled, waiting for an operator.
    Pending,
    /// Refused by an operator.
    Rejected,
}

impl DeviceStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Accepted => "accepted",
            DeviceStatus::Pending => "pending",
            DeviceStatus::Rejected => "rejected",
        }
    }
    fn parse(s: &str) -> DeviceStatus {
        match s {
            "accepted" => DeviceStatus::Accepted,
            "pending" => DeviceStatus::Pending,
            _ => DeviceStatus::Rejected,
        }
    }
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device and its connection state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Device {
    /// Stable id (`dev_…`).
    pub id: String,
    /// Tenant id.
    #[serde(skip)]
    pub tenant_id: i64,
    /// Tenant name.
    pub tenant: String,
    /// Name, unique in the tenant.
    pub name: String,
    /// Public key (OpenSSH format).
    pub public_key: String,
    /// SHA-256 fingerprint of the key.
    pub fingerprint: String,
    /// Whether it may connect.
    pub status: DeviceStatus,
    /// Enrollment time.
    pub created_at: String,
    /// Whether its link is up.
    pub online: bool,
    /// When its link last came up.
    pub last_connected: Option<String>,
    /// When its link last went down.
    pub last_disconnected: Option<String>,
    /// Address its link came from.
    pub remote_addr: Option<String>,
    /// Agent version it reported.
    pub agent_version: Option<String>,
}

/// What enrollment records about a device.
#[derive(Debug, Clone)]
pub struct DeviceEnrollment {
    /// Requested name.
    pub name: String,
    /// Public key (OpenSSH format).
    pub public_key_openssh: String,
    /// Its SHA-256 fingerprint.
    pub fingerprint: String,
    /// Agent version.
    pub agent_version: String,
    /// Replace a device of the same name with another key.
    pub force: bool,
}

/// The outcome of a successful enrollment.
#[derive(Debug, Clone)]
pub struct EnrolledDevice {
    /// The device as stored.
    pub device: Device,
    /// Its tenant's name.
    pub tenant_name: String,
}

/// The relay's store.
pub struct Store {
    conn: Mutex<Connection>,
}

/// Current time as RFC 3339 UTC.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rfc3339_from_unix(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Checks a tenant or user name: `[a-z0-9][a-z0-9-_.]*`, at most 63 characters.
pub fn validate_name(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{what} name {name:?} must be 1-63 characters of a-z, 0-9, '-', '_', '.' starting with a letter or digit"
        )))
    }
}

const DEVICE_COLUMNS: &str = "d.id, d.tenant_id, t.name, d.name, d.public_key, d.fingerprint, d.status, \
     d.created_at, d.online, d.last_connected, d.last_disconnected, d.remote_addr, d.agent_version";

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        tenant: row.get(2)?,
        name: row.get(3)?,
        public_key: row.get(4)?,
        fingerprint: row.get(5)?,
        status: DeviceStatus::parse(&row.get::<_, String>(6)?),
        created_at: row.get(7)?,
        online: row.get(8)?,
        last_connected: row.get(9)?,
        last_disconnected: row.get(10)?,
        remote_addr: row.get(11)?,
        agent_version: row.get(12)?,
    })
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let fresh = !path.exists();
        let mut conn = Connection::open(path)?;
        if fresh {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back),
        // so a poisoned lock can be used again.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a tenant.
    pub fn add_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        validate_name("tenant", name)?;
        let conn = self.conn();
        let created_at = now();
        match conn.execute(
            "INSERT INTO tenants (name, created_at) VALUES (?1, ?2)",
            params![name, created_at],
        ) {
            Ok(_) => Ok(Tenant {
                id: conn.last_insert_rowid(),
                name: name.to_string(),
                created_at,
            }),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "tenant {name:?} already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// All tenants.
    pub fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, name, created_at FROM tenants ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(Tenant {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The tenant called `name`.
    pub fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        tenant_by_name(&self.conn(), name)
    }

    /// Mints a token; the returned secret is never stored.
    pub fn create_token(&self, new: NewToken<'_>) -> Result<CreatedToken, StoreError> {
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
        let expires = new
            .ttl
            .map(|ttl| unix_now().saturating_add(ttl.as_secs().min(i64::MAX as u64) as i64));
        conn.execute(
            "INSERT INTO tokens (id, tenant_id, kind, secret_hash, created_at, expires_at, uses_left, require_accept)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![id, tenant.id, new.kind.as_str(), hash_secret(&secret), now(), expires, new.uses, new.require_accept],
        )?;
        Ok(CreatedToken {
            id,
            secret,
            tenant: tenant.name,
            kind: new.kind,
            expires_at: expires.map(rfc3339_from_unix),
        })
    }

    /// Tokens, optionally of one tenant, without secrets.
    pub fn tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT k.id, t.name, k.kind, k.created_at, k.expires_at, k.uses_left, k.require_accept, k.revoked
             FROM tokens k JOIN tenants t ON t.id = k.tenant_id
             WHERE ?1 IS NULL OR t.name = ?1 ORDER BY k.created_at, k.id",
        )?;
        let rows = stmt.query_map(params![tenant], |r| {
            Ok(TokenInfo {
                id: r.get(0)?,
                tenant: r.get(1)?,
                kind: if r.get::<_, String>(2)? == "api" {
                    TokenKind::Api
                } else {
                    TokenKind::Enroll
                },
                created_at: r.get(3)?,
                expires_at: r.get::<_, Option<i64>>(4)?.map(rfc3339_from_unix),
                uses_left: r.get(5)?,
                require_accept: r.get(6)?,
                revoked: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a token by id.
    pub fn revoke_token(&self, id: &str) -> Result<(), StoreError> {
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

    /// Checks a token of `kind` and returns (token id, tenant id, tenant name, require_accept).
    fn check_token(
        conn: &Connection,
        secret: &str,
        kind: TokenKind,
    ) -> Result<(String, i64, String, bool, Option<i64>), StoreError> {
        let row = conn
            .query_row(
                "SELECT k.id, k.tenant_id, t.name, k.require_accept, k.uses_left, k.expires_at, k.revoked, k.kind
                 FROM tokens k JOIN tenants t ON t.id = k.tenant_id WHERE k.secret_hash = ?1",
                params![hash_secret(secret)],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, bool>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, tenant_id, tenant, require_accept, uses_left, expires_at, revoked, k)) = row
        else {
            return Err(StoreError::InvalidToken);
        };
        if revoked || k != kind.as_str() {
            return Err(StoreError::InvalidToken);
        }
        if expires_at.is_some_and(|e| e <= unix_now()) {
            return Err(StoreError::TokenExpired);
        }
        if uses_left.is_some_and(|u| u <= 0) {
            return Err(StoreError::TokenUsedUp);
        }
        Ok((id, tenant_id, tenant, require_accept, uses_left))
    }

    /// The tenant an API token grants access to.
    pub fn api_token(&self, secret: &str) -> Result<ApiIdentity, StoreError> {
        let conn = self.conn();
        let (_, tenant_id, tenant, _, _) = Self::check_token(&conn, secret, TokenKind::Api)?;
        Ok(ApiIdentity { tenant_id, tenant })
    }

    /// Enrolls a device with an enrollment token, atomically.
    pub fn redeem_enroll_token(
        &self,
        secret: &str,
        enrollment: DeviceEnrollment,
    ) -> Result<EnrolledDevice, StoreError> {
        tether_protocol::names::validate_device_name(&enrollment.name)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (token_id, tenant_id, tenant_name, require_accept, uses_left) =
            Self::check_token(&tx, secret, TokenKind::Enroll)?;
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
                    "device name {:?} is already used by another device in tenant {tenant_name}; choose another --name, or re-enroll with --force to replace it",
                    enrollment.name
                )));
            }
            tx.execute("DELETE FROM devices WHERE id = ?1", params![other.id])?;
        }
        let status = if require_accept {
            DeviceStatus::Pending
        } else {
            DeviceStatus::Accepted
        };
        let id = match by_key {
            Some(existing) => {
                // Re-enrollment of the same key keeps its id (and its acceptance decision,
                // unless it was rejected: a fresh token from an operator re-admits it).
                let keep = if existing.status == DeviceStatus::Rejected {
                    status
                } else {
                    existing.status
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
        })
    }

    /// Registers an engineer's key with a tenant and role.
    pub fn add_user(
        &self,
        name: &str,
        tenant: &str,
        role: Role,
        public_key_openssh: &str,
    ) -> Result<User, StoreError> {
        validate_name("user", name)?;
        let key = russh::keys::PublicKey::from_openssh(public_key_openssh.trim())
            .map_err(|e| StoreError::Invalid(format!("not an OpenSSH public key: {e}")))?;
        let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
        let canonical = key
            .to_openssh()
            .map_err(|e| StoreError::Invalid(format!("cannot encode the public key: {e}")))?;
        let conn = self.conn();
        let t = tenant_by_name(&conn, tenant)?.ok_or_else(|| StoreError::NotFound {
            what: "tenant",
            key: tenant.to_string(),
        })?;
        let created_at = now();
        match conn.execute(
            "INSERT INTO users (tenant_id, name, role, public_key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.id, name, role.as_str(), canonical, fingerprint, created_at],
        ) {
            Ok(_) => Ok(User {
                id: conn.last_insert_rowid(),
                name: name.to_string(),
                tenant: t.name,
                role,
                fingerprint,
                created_at,
            }),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("user {name:?} already exists in tenant {tenant}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// All engineers.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT u.id, u.name, t.name, u.role, u.fingerprint, u.created_at
             FROM users u JOIN tenants t ON t.id = u.tenant_id ORDER BY t.name, u.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, String>(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, tenant, role, fingerprint, created_at) = row?;
            out.push(User {
                id,
                name,
                tenant,
                role: Role::parse(&role)?,
                fingerprint,
                created_at,
            });
        }
        Ok(out)
    }

    /// Everyone a key belongs to (a key may be registered in several tenants).
    pub fn engineer_identities(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<EngineerIdentity>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT u.name, t.id, t.name, u.role FROM users u JOIN tenants t ON t.id = u.tenant_id
             WHERE u.fingerprint = ?1 ORDER BY t.id",
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

    /// The device holding key `fingerprint`.
    pub fn device_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Device>, StoreError> {
        device_where(&self.conn(), "d.fingerprint = ?1", params![fingerprint])
    }

    /// The device with id `id`.
    pub fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        device_where(&self.conn(), "d.id = ?1", params![id])
    }

    /// A device by name or id, only within `tenant_ids`.
    pub fn find_device(
        &self,
        tenant_ids: &[i64],
        name_or_id: &str,
    ) -> Result<Option<Device>, StoreError> {
        let conn = self.conn();
        for tenant_id in tenant_ids {
            let found = device_where(
                &conn,
                "d.tenant_id = ?1 AND (d.name = ?2 OR d.id = ?2)",
                params![tenant_id, name_or_id],
            )?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// A device by id, or by name when the name is unique across tenants (admin commands).
    pub fn resolve_device(&self, id_or_name: &str) -> Result<Device, StoreError> {
        let conn = self.conn();
        if let Some(d) = device_where(&conn, "d.id = ?1", params![id_or_name])? {
            return Ok(d);
        }
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE d.name = ?1"
        );
        let mut stmt = conn.prepare(&sql)?;
        let found: Vec<Device> = stmt
            .query_map(params![id_or_name], device_from_row)?
            .collect::<Result<_, _>>()?;
        match found.len() {
            1 => Ok(found.into_iter().next().ok_or(StoreError::InvalidToken)?),
            0 => Err(StoreError::NotFound {
                what: "device",
                key: id_or_name.to_string(),
            }),
            n => Err(StoreError::Conflict(format!(
                "{n} devices in different tenants are named {id_or_name:?}; use the device id"
            ))),
        }
    }

    /// Devices, optionally of one tenant.
    pub fn devices(&self, tenant: Option<&str>) -> Result<Vec<Device>, StoreError> {
        let conn = self.conn();
        if let Some(name) = tenant
            && tenant_by_name(&conn, name)?.is_none()
        {
            return Err(StoreError::NotFound {
                what: "tenant",
                key: name.to_string(),
            });
        }
        devices_where(&conn, "?1 IS NULL OR t.name = ?1", params![tenant])
    }

    /// Devices of the tenant with id `tenant_id`.
    pub fn tenant_devices(&self, tenant_id: i64) -> Result<Vec<Device>, StoreError> {
        devices_where(&self.conn(), "d.tenant_id = ?1", params![tenant_id])
    }

    /// Sets whether a device may connect.
    pub fn set_device_status(&self, id: &str, status: DeviceStatus) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE devices SET status = ?2 WHERE id = ?1",
            params![id, status.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "device",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    /// Deletes a device.
    pub fn remove_device(&self, id: &str) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM devices WHERE id = ?1", params![id])?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "device",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    /// Records that a device's link came up.
    pub fn mark_online(
        &self,
        id: &str,
        remote_addr: &str,
        agent_version: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE devices SET online = 1, last_connected = ?2, remote_addr = ?3,
                 agent_version = COALESCE(?4, agent_version) WHERE id = ?1",
            params![id, now(), remote_addr, agent_version],
        )?;
        Ok(())
    }

    /// Records that a device's link went down.
    pub fn mark_offline(&self, id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE devices SET online = 0, last_disconnected = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    /// Marks every online device offline (relay start-up and shutdown).
    pub fn mark_all_offline(&self) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE devices SET online = 0, last_disconnected = ?1 WHERE online = 1",
            params![now()],
        )?;
        Ok(())
    }

    /// Of the given device ids, those that are no longer accepted or no longer exist.
    pub fn unwelcome_devices(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT status FROM devices WHERE id = ?1")?;
        let mut out = Vec::new();
        for id in ids {
            let status: Option<String> = stmt.query_row(params![id], |r| r.get(0)).optional()?;
            if status.as_deref() != Some("accepted") {
                out.push(id.clone());
            }
        }
        Ok(out)
    }
}

fn tenant_by_name(conn: &Connection, name: &str) -> Result<Option<Tenant>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, name, created_at FROM tenants WHERE name = ?1",
            params![name],
            |r| {
                Ok(Tenant {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                })
            },
        )
        .optional()?)
}

fn device_where(
    conn: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Result<Option<Device>, StoreError> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE {filter}"
    );
    Ok(conn.query_row(&sql, p, device_from_row).optional()?)
}

fn devices_where(
    conn: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<Device>, StoreError> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE {filter} ORDER BY t.name, d.name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(p, device_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    loop {
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
        let index = usize::try_from(version).unwrap_or(0);
        if let Some(sql) = MIGRATIONS.get(index) {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ a";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuxHsuD3D1T6DwjHg8u6Pn/5O6IWxnpPmqPGrXEmXNV b";

    fn enrollment(name: &str, fp: &str) -> DeviceEnrollment {
        DeviceEnrollment {
            name: name.into(),
            public_key_openssh: format!("key-{fp}"),
            fingerprint: fp.into(),
            agent_version: "0.1.0".into(),
            force: false,
        }
    }

    fn token(
        store: &Store,
        tenant: &str,
        ttl: Option<Duration>,
        uses: Option<u32>,
    ) -> Result<String, StoreError> {
        Ok(store
            .create_token(NewToken {
                tenant,
                kind: TokenKind::Enroll,
                ttl,
                uses,
                require_accept: false,
            })?
            .secret)
    }

    #[test]
    fn migrations_are_idempotent_and_newer_files_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/relay.db");
        {
            let s = Store::open(&path)?;
            s.add_tenant("acme")?;
        }
        let s = Store::open(&path)?;
        assert_eq!(s.tenants()?.len(), 1);
        drop(s);
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "user_version", 99)?;
        drop(conn);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
        Ok(())
    }

    #[test]
    fn tokens_expire_run_out_and_are_hashed_at_rest() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let s = Store::open(&path)?;
        s.add_tenant("acme")?;
        assert!(matches!(
            s.redeem_enroll_token("tet_nope", enrollment("b", "fp0")),
            Err(StoreError::InvalidToken)
        ));
        let once = token(&s, "acme", None, Some(1))?;
        s.redeem_enroll_token(&once, enrollment("b1", "fp1"))?;
        assert!(matches!(
            s.redeem_enroll_token(&once, enrollment("b2", "fp2")),
            Err(StoreError::TokenUsedUp)
        ));
        let expired = token(&s, "acme", Some(Duration::ZERO), None)?;
        assert!(matches!(
            s.redeem_enroll_token(&expired, enrollment("b3", "fp3")),
            Err(StoreError::TokenExpired)
        ));
        let api = s.create_token(NewToken {
            tenant: "acme",
            kind: TokenKind::Api,
            ttl: None,
            uses: None,
            require_accept: false,
        })?;
        assert_eq!(s.api_token(&api.secret)?.tenant, "acme");
        assert!(matches!(s.api_token(&once), Err(StoreError::InvalidToken)));
        assert!(matches!(
            s.redeem_enroll_token(&api.secret, enrollment("b4", "fp4")),
            Err(StoreError::InvalidToken)
        ));
        s.revoke_token(&api.id)?;
        assert!(matches!(
            s.api_token(&api.secret),
            Err(StoreError::InvalidToken)
        ));
        drop(s);
        let mut bytes = std::fs::read(&path)?;
        if let Ok(wal) = std::fs::read(dir.path().join("relay.db-wal")) {
            bytes.extend(wal);
        }
        for secret in [&once, &api.secret] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret stored in clear"
            );
        }
        Ok(())
    }

    #[test]
    fn re_enrollment_rules() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = Store::open(&dir.path().join("relay.db"))?;
        s.add_tenant("acme")?;
        s.add_tenant("globex")?;
        let t = token(&s, "acme", None, None)?;
        let first = s.redeem_enroll_token(&t, enrollment("b1", "fp1"))?.device;
        // Same key again keeps the id and may rename.
        let again = s
            .redeem_enroll_token(&t, enrollment("b1-renamed", "fp1"))?
            .device;
        assert_eq!(first.id, again.id);
        assert_eq!(again.name, "b1-renamed");
        // Another key may not take the name without force.
        assert!(matches!(
            s.redeem_enroll_token(&t, enrollment("b1-renamed", "fp2")),
            Err(StoreError::Conflict(_))
        ));
        let mut forced = enrollment("b1-renamed", "fp2");
        forced.force = true;
        let replaced = s.redeem_enroll_token(&t, forced)?.device;
        assert_ne!(replaced.id, first.id);
        assert!(s.device(&first.id)?.is_none());
        // A key of another tenant is refused.
        let g = token(&s, "globex", None, None)?;
        assert!(matches!(
            s.redeem_enroll_token(&g, enrollment("x", "fp2")),
            Err(StoreError::Conflict(_))
        ));
        // Pending devices with require_accept.
        let p = s.create_token(NewToken {
            tenant: "acme",
            kind: TokenKind::Enroll,
            ttl: None,
            uses: None,
            require_accept: true,
        })?;
        let pending = s
            .redeem_enroll_token(&p.secret, enrollment("b9", "fp9"))?
            .device;
        assert_eq!(pending.status, DeviceStatus::Pending);
        assert_eq!(
            s.unwelcome_devices(&[pending.id.clone(), replaced.id.clone(), "dev_gone".into()])?,
            vec![pending.id, "dev_gone".to_string()]
        );
        Ok(())
    }

    #[test]
    fn device_lookup_is_tenant_scoped() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = Store::open(&dir.path().join("relay.db"))?;
        let acme = s.add_tenant("acme")?;
        let globex = s.add_tenant("globex")?;
        let a = token(&s, "acme", None, None)?;
        let g = token(&s, "globex", None, None)?;
        let da = s.redeem_enroll_token(&a, enrollment("board", "fa"))?.device;
        let dg = s.redeem_enroll_token(&g, enrollment("board", "fg"))?.device;
        assert_eq!(
            s.find_device(&[acme.id], "board")?.map(|d| d.id),
            Some(da.id.clone())
        );
        assert_eq!(
            s.find_device(&[globex.id], "board")?.map(|d| d.id),
            Some(dg.id.clone())
        );
        assert_eq!(s.find_device(&[globex.id], &da.id)?, None);
        assert!(matches!(
            s.resolve_device("board"),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.resolve_device(&da.id)?.id, da.id);
        s.mark_online(&da.id, "127.0.0.1:5", Some("0.2.0"))?;
        let d = s.device(&da.id)?.ok_or("missing")?;
        assert!(d.online && d.agent_version.as_deref() == Some("0.2.0"));
        s.mark_all_offline()?;
        let d = s.device(&da.id)?.ok_or("missing")?;
        assert!(!d.online && d.last_disconnected.is_some());
        Ok(())
    }

    #[test]
    fn users_and_engineer_identities() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = Store::open(&dir.path().join("relay.db"))?;
        s.add_tenant("acme")?;
        s.add_tenant("globex")?;
        let u = s.add_user("alice", "acme", Role::Admin, KEY_A)?;
        s.add_user("alice", "globex", Role::Viewer, KEY_A)?;
        s.add_user("bob", "acme", Role::Operator, KEY_B)?;
        assert!(u.fingerprint.starts_with("SHA256:"));
        assert!(matches!(
            s.add_user("alice", "acme", Role::Viewer, KEY_B),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.add_user("carol", "acme", Role::Viewer, "not a key"),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.add_user("dave", "nope", Role::Viewer, KEY_B),
            Err(StoreError::NotFound { .. })
        ));
        let ids = s.engineer_identities(&u.fingerprint)?;
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1].role, Role::Viewer);
        assert_eq!(s.users()?.len(), 3);
        Ok(())
    }

    #[test]
    fn two_handles_on_one_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let a = Store::open(&path)?;
        let b = Store::open(&path)?;
        a.add_tenant("acme")?;
        assert!(b.tenant_by_name("acme")?.is_some());
        assert!(matches!(b.add_tenant("acme"), Err(StoreError::Conflict(_))));
        Ok(())
    }
}
