//! Every durable fact of the relay, in SQLite: tenants, tokens, engineers and devices.
//!
//! The serving relay and the admin CLI open the same file at once, so the database runs in WAL
//! mode with a busy timeout, and every change that touches more than one row is a single
//! transaction. The schema is versioned with `PRAGMA user_version`; migrations run in order,
//! each in its own transaction, and a database newer than this code is refused rather than
//! misread (see [`migrations`]). Token secrets are stored only as SHA-256 hashes: the secret
//! is shown once when minted and a copy of the database file gives no usable token.
//!
//! Every method is blocking (SQLite I/O under a mutex); async callers run them with
//! `tokio::task::spawn_blocking`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

mod actions;
mod audit;
pub mod blocking;
mod cas;
mod fleet;
mod keys;
mod migrations;
mod people;
mod sessions;
mod telemetry;
pub use actions::ActionView;
pub use audit::{AuditEntry, NewAudit};
pub use cas::TrustedCa;
pub use fleet::{
    ArtifactInfo, DeploymentDevice, DeploymentView, DeviceState, NewDeployment, Target,
    config_overrides, read_local_artifacts,
};
pub use keys::DeviceLogin;
pub use people::{LiveEngineer, LiveGrants, RemovedTenant, TenantContents};
pub use sessions::{NewSession, SessionEnd, SessionQuery, SessionRecord};
pub use telemetry::{StoredRecord, TelemetryQuery};

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
    /// A schema migration failed; the store stays at the version before it.
    #[error("migrating the store to schema version {version} ({name}) failed: {source}")]
    Migration {
        /// The version the step would have reached.
        version: i64,
        /// What the step is for.
        name: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
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
    /// Days of telemetry kept.
    pub retention_days: u32,
    /// Days session recordings are kept.
    pub session_retention_days: u32,
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
    /// Whether the role may open shells, exec, sftp and forwards on a device (viewers only
    /// read).
    pub fn may_open_sessions(self) -> bool {
        self != Role::Viewer
    }

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

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    /// Whether the engineer is disabled (refused at login, sessions closed).
    pub disabled: bool,
    /// SHA-256 fingerprint of the engineer's first key (see `fingerprints` for all).
    pub fingerprint: String,
    /// SHA-256 fingerprints of all the engineer's keys, oldest first.
    pub fingerprints: Vec<String>,
    /// Creation time.
    pub created_at: String,
}

/// An engineer's public key as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineerKey {
    /// The key in OpenSSH format, re-encoded (so stray whitespace does not matter).
    pub openssh: String,
    /// Its SHA-256 fingerprint, `SHA256:…` as OpenSSH prints it.
    pub fingerprint: String,
}

impl EngineerKey {
    /// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub fn parse(text: &str) -> Result<EngineerKey, StoreError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(StoreError::Invalid("the public key is empty".into()));
        }
        let key = russh::keys::PublicKey::from_openssh(text)
            .map_err(|e| StoreError::Invalid(format!("not an OpenSSH public key: {e}")))?;
        let openssh = key
            .to_openssh()
            .map_err(|e| StoreError::Invalid(format!("cannot encode the public key: {e}")))?;
        Ok(EngineerKey {
            openssh,
            fingerprint: key.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
        })
    }
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
    /// Reads a stored status. The CHECK constraint allows only the three names; anything
    /// else would be a damaged file, and reading it as rejected keeps the device out.
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
    /// Id of the token redeemed (never its secret).
    pub token_id: String,
    /// The same-named device (with another key) that this enrollment replaced, if any.
    pub replaced: Option<Device>,
}

/// A valid, unexpired, unrevoked token and what it grants.
struct CheckedToken {
    id: String,
    tenant_id: i64,
    tenant: String,
    require_accept: bool,
    uses_left: Option<i64>,
    allow_replace: bool,
}

/// The relay's store.
pub struct Store {
    conn: Mutex<Connection>,
}

/// Current time as RFC 3339 UTC.
pub fn now() -> String {
    crate::timestamp::store_form(SystemTime::now())
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
        return Ok(());
    }
    // A name of a megabyte is reported by its start and length, not echoed whole.
    let shown = if name.chars().count() > 64 {
        let start: String = name.chars().take(32).collect();
        format!("{start:?}… ({} bytes)", name.len())
    } else {
        format!("{name:?}")
    };
    Err(StoreError::Invalid(format!(
        "{what} name {shown} must be 1-63 characters of a-z, 0-9, '-', '_', '.' starting with a letter or digit"
    )))
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
    /// Writes a consistent copy of the whole database to `path` (which must not exist), mode
    /// 0600, while other connections go on reading and writing: one snapshot, WAL included.
    pub fn snapshot_into(&self, path: &Path) -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let target = path
            .to_str()
            .ok_or_else(|| StoreError::Invalid(format!("{} is not UTF-8", path.display())))?;
        self.conn().execute("VACUUM INTO ?1", params![target])?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
            StoreError::Io {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    ///
    /// A new file is created with mode 0600 and a missing parent directory with mode 0700: the
    /// store holds device and engineer keys and token hashes, readable by the relay alone.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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
        // Create the file ourselves so it never exists with the umask's wider mode, not even
        // for a moment; SQLite gives its -wal and -shm files the mode of the database file.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let mut conn = Connection::open(path)?;
        // The relay and the admin CLI write the same file; a writer waits for the other
        // instead of failing at once.
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Some file systems (network mounts) cannot do WAL; SQLite then keeps its rollback
            // journal, which is correct, only readers block writers.
            tracing::warn!(
                "{}: SQLite refused WAL mode (journal mode {mode}); readers will block writers",
                path.display()
            );
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        // NORMAL is durable across process crashes in WAL mode; only an OS crash may lose the
        // last commits, and it never corrupts the file.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrations::migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version this code writes; a store file newer than this is refused.
    pub fn schema_version() -> i64 {
        migrations::latest()
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
            Ok(_) => Ok(conn.query_row(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"),
                params![conn.last_insert_rowid()],
                tenant_from_row,
            )?),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "tenant {name:?} already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a tenant's day count `column` (one of its retention settings, `what` in errors).
    fn set_tenant_days(
        &self,
        tenant: &str,
        column: &'static str,
        what: &str,
        days: u32,
    ) -> Result<(), StoreError> {
        if days == 0 {
            return Err(StoreError::Invalid(format!(
                "{what} must be at least 1 day"
            )));
        }
        let n = self.conn().execute(
            &format!("UPDATE tenants SET {column} = ?2 WHERE name = ?1"),
            params![tenant, days],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "tenant",
                key: tenant.to_string(),
            });
        }
        Ok(())
    }

    /// All tenants.
    pub fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"
        ))?;
        let rows = stmt.query_map([], tenant_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The tenant called `name`.
    pub fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        tenant_by_name(&self.conn(), name)
    }

    /// Mints a token; the returned secret is never stored.
    ///
    /// `uses`, `require_accept` and `allow_replace` are about enrollment and refused for API
    /// tokens rather than silently ignored; `uses: Some(0)` would mint a dead token and is
    /// refused too. A token may not both require acceptance and replace devices: a pending
    /// enrollment must never remove a device an operator already trusts.
    pub fn create_token(&self, new: NewToken<'_>) -> Result<CreatedToken, StoreError> {
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

    /// Tokens, optionally of one tenant, without secrets.
    pub fn tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
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

    /// The tenant an API token grants access to.
    pub fn api_token(&self, secret: &str) -> Result<ApiIdentity, StoreError> {
        let conn = self.conn();
        let CheckedToken {
            id,
            tenant_id,
            tenant,
            ..
        } = Self::check_token(&conn, secret, TokenKind::Api)?;
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
        let CheckedToken {
            id: token_id,
            tenant_id,
            tenant: tenant_name,
            require_accept,
            uses_left,
            allow_replace,
        } = Self::check_token(&tx, secret, TokenKind::Enroll)?;
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

    /// Registers an engineer's key with a tenant and role.
    pub fn add_user(
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
        let t = tenant_by_name(&tx, tenant)?.ok_or_else(|| StoreError::NotFound {
            what: "tenant",
            key: tenant.to_string(),
        })?;
        people::refuse_key_held(&tx, t.id, tenant, &fingerprint)?;
        let created_at = now();
        let inserted = tx.execute(
            "INSERT INTO users (tenant_id, name, role, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![t.id, name, role.as_str(), created_at],
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "user {name:?} already exists in tenant {tenant}"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO user_keys (user_id, tenant_id, public_key, fingerprint, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, t.id, canonical, fingerprint, created_at],
        )?;
        tx.commit()?;
        Ok(User {
            id,
            name: name.to_string(),
            tenant: t.name,
            role,
            disabled: false,
            fingerprint: fingerprint.clone(),
            fingerprints: vec![fingerprint],
            created_at,
        })
    }

    /// All engineers.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        people::users_where(&self.conn(), "1", params![])
    }

    /// Every enabled engineer a key belongs to (a key may be registered in several tenants).
    pub fn engineer_identities(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<EngineerIdentity>, StoreError> {
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

    /// The device holding key `fingerprint`.
    pub fn device_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Device>, StoreError> {
        device_where(
            &self.conn(),
            "d.fingerprint = ?1 OR d.next_fingerprint = ?1",
            params![fingerprint],
        )
    }

    /// The device with id `id`.
    pub fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        device_where(&self.conn(), "d.id = ?1", params![id])
    }

    /// A device by name or id, only within `tenant_ids` (the caller's tenants: a device of
    /// any other tenant is reported as absent). Tenants are searched in the order given; an id
    /// wins over another device's name.
    pub fn find_device(
        &self,
        tenant_ids: &[i64],
        name_or_id: &str,
    ) -> Result<Option<Device>, StoreError> {
        let conn = self.conn();
        for tenant_id in tenant_ids {
            let found = device_where(
                &conn,
                "d.tenant_id = ?1 AND (d.name = ?2 OR d.id = ?2) ORDER BY d.id = ?2 DESC LIMIT 1",
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
        let n = found.len();
        let mut found = found.into_iter();
        match (found.next(), n) {
            (Some(d), 1) => Ok(d),
            (None, _) => Err(StoreError::NotFound {
                what: "device",
                key: id_or_name.to_string(),
            }),
            _ => Err(StoreError::Conflict(format!(
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
    ///
    /// The serving relay asks this every few seconds for the devices whose links it holds, so
    /// an admin command in another process takes effect without any signalling between them.
    pub fn unwelcome_devices(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        // One read transaction: one consistent snapshot, and one lock instead of one per id.
        let tx = conn.transaction()?;
        let mut out = Vec::new();
        {
            let mut stmt = tx.prepare_cached("SELECT status FROM devices WHERE id = ?1")?;
            for id in ids {
                let status: Option<String> =
                    stmt.query_row(params![id], |r| r.get(0)).optional()?;
                if status.as_deref() != Some(DeviceStatus::Accepted.as_str()) {
                    out.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }
}

/// The id of tenant `name`, or NotFound naming it.
fn tenant_id(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    tenant_by_name(conn, name)?
        .map(|t| t.id)
        .ok_or_else(|| StoreError::NotFound {
            what: "tenant",
            key: name.to_string(),
        })
}

fn tenant_by_name(conn: &Connection, name: &str) -> Result<Option<Tenant>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?1"),
            params![name],
            tenant_from_row,
        )
        .optional()?)
}

/// The columns [`tenant_from_row`] reads.
const TENANT_COLUMNS: &str = "id, name, created_at, retention_days, session_retention_days";

fn tenant_from_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        retention_days: r.get(3)?,
        session_retention_days: r.get(4)?,
    })
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

/// Helpers shared by the store's tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{DeviceEnrollment, NewToken, Store, StoreError, TokenKind};

    /// Enrolls a device `name` in `tenant` with a made-up key; returns its id.
    pub(crate) fn enroll(store: &Store, tenant: &str, name: &str) -> Result<String, StoreError> {
        let t = store.create_token(NewToken {
            tenant,
            kind: TokenKind::Enroll,
            ttl: None,
            uses: None,
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        Ok(store
            .redeem_enroll_token(
                &t.secret,
                DeviceEnrollment {
                    name: name.into(),
                    public_key_openssh: format!("key-{tenant}-{name}"),
                    fingerprint: format!("fp-{tenant}-{name}"),
                    agent_version: "0.1.0".into(),
                    force: false,
                },
            )?
            .device
            .id)
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
                allow_replace: false,
                role: crate::store::Role::Operator,
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
    fn new_files_are_private_and_wal() -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state/relay.db");
        let s = Store::open(&path)?;
        s.add_tenant("acme")?;
        let mode = |p: &Path| -> std::io::Result<u32> {
            Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
        };
        assert_eq!(mode(&dir.path().join("state"))?, 0o700);
        assert_eq!(mode(&path)?, 0o600);
        let journal: String = s
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!(journal, "wal");
        let fk: bool = s
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
        assert!(fk);
        Ok(())
    }

    #[test]
    fn token_secrets_have_the_documented_shape_and_bad_requests_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = Store::open(&dir.path().join("relay.db"))?;
        s.add_tenant("acme")?;
        let t = s.create_token(NewToken {
            tenant: "acme",
            kind: TokenKind::Enroll,
            ttl: Some(Duration::from_secs(3600)),
            uses: Some(2),
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        let body = t.secret.strip_prefix("tet_").ok_or("no tet_ prefix")?;
        assert_eq!(body.len(), 43);
        assert!(
            body.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert!(t.id.starts_with("tok_") && t.expires_at.is_some());
        let listed = s.tokens(Some("acme"))?;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].uses_left, Some(2));
        assert_eq!(listed[0].state, TokenState::Active);
        let json = serde_json::to_string(&listed)?;
        assert!(!json.contains(body), "listing shows the secret");
        let mut bad = NewToken {
            tenant: "acme",
            kind: TokenKind::Enroll,
            ttl: None,
            uses: Some(0),
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        };
        assert!(matches!(
            s.create_token(bad.clone()),
            Err(StoreError::Invalid(_))
        ));
        bad.kind = TokenKind::Api;
        bad.uses = Some(3);
        assert!(matches!(
            s.create_token(bad.clone()),
            Err(StoreError::Invalid(_))
        ));
        bad.tenant = "nope";
        bad.uses = None;
        let e = s.create_token(bad).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("no tenant named \"nope\""));
        assert!(matches!(
            s.tokens(Some("nope")),
            Err(StoreError::NotFound { what: "tenant", .. })
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
            allow_replace: false,
            role: crate::store::Role::Operator,
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
        let states: Vec<TokenState> = s.tokens(None)?.iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            vec![TokenState::UsedUp, TokenState::Expired, TokenState::Revoked]
        );
        let expired_api = s.create_token(NewToken {
            tenant: "acme",
            kind: TokenKind::Api,
            ttl: Some(Duration::ZERO),
            uses: None,
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        assert!(matches!(
            s.api_token(&expired_api.secret),
            Err(StoreError::TokenExpired)
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
        // Nor with force and a token that does not allow replacing, nor with one whose
        // devices would be pending; the device stays as it was.
        assert!(matches!(
            s.redeem_enroll_token(&t, forced.clone()),
            Err(StoreError::Conflict(m)) if m.contains("--allow-replace")
        ));
        let new_token = |require_accept: bool, allow_replace: bool| {
            s.create_token(NewToken {
                tenant: "acme",
                kind: TokenKind::Enroll,
                ttl: None,
                uses: None,
                require_accept,
                allow_replace,
                role: crate::store::Role::Operator,
            })
        };
        let pending_token = new_token(true, false)?;
        assert!(matches!(
            s.redeem_enroll_token(&pending_token.secret, forced.clone()),
            Err(StoreError::Conflict(m)) if m.contains("require-accept")
        ));
        assert_eq!(
            s.device(&first.id)?.map(|d| (d.fingerprint, d.status)),
            Some(("fp1".to_string(), DeviceStatus::Accepted))
        );
        assert!(matches!(new_token(true, true), Err(StoreError::Invalid(_))));
        let replacing = new_token(false, true)?;
        let enrolled = s.redeem_enroll_token(&replacing.secret, forced)?;
        let replaced = enrolled.device;
        assert_ne!(replaced.id, first.id);
        assert_eq!(enrolled.replaced.map(|d| d.id), Some(first.id.clone()));
        assert_eq!(enrolled.token_id, replacing.id);
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
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        let pending = s
            .redeem_enroll_token(&p.secret, enrollment("b9", "fp9"))?
            .device;
        assert_eq!(pending.status, DeviceStatus::Pending);
        assert_eq!(
            s.unwelcome_devices(&[pending.id.clone(), replaced.id.clone(), "dev_gone".into()])?,
            vec![pending.id.clone(), "dev_gone".to_string()]
        );
        // Re-enrolling a pending device with a token that needs no acceptance admits it ...
        let again = s.redeem_enroll_token(&t, enrollment("b9", "fp9"))?.device;
        assert_eq!(
            (again.id.as_str(), again.status),
            (pending.id.as_str(), DeviceStatus::Accepted)
        );
        // ... and an accepted one stays accepted with a require-accept token.
        let still = s
            .redeem_enroll_token(&p.secret, enrollment("b9", "fp9"))?
            .device;
        assert_eq!(still.status, DeviceStatus::Accepted);
        // A rejected device cannot re-admit itself, and the attempt costs no token use.
        s.set_device_status(&still.id, DeviceStatus::Rejected)?;
        let once = token(&s, "acme", None, Some(1))?;
        let e = s
            .redeem_enroll_token(&once, enrollment("b9", "fp9"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("rejected") && e.contains("\"b9\""), "{e}");
        assert_eq!(
            s.device(&still.id)?.map(|d| d.status),
            Some(DeviceStatus::Rejected)
        );
        s.redeem_enroll_token(&once, enrollment("b10", "fp10"))?;
        // A name conflict names the device and the tenant.
        let e = s
            .redeem_enroll_token(&t, enrollment("b10", "fp11"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("\"b10\"") && e.contains("acme"), "{e}");
        // Bad names are refused before anything else.
        assert!(matches!(
            s.redeem_enroll_token(&t, enrollment("Bad Name", "fp12")),
            Err(StoreError::Invalid(_))
        ));
        Ok(())
    }

    #[test]
    fn concurrent_redemptions_from_several_processes_respect_the_use_limit() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let s = Store::open(&path)?;
        s.add_tenant("acme")?;
        let secret = token(&s, "acme", None, Some(3))?;
        // Each thread has its own connection, as separate relay processes would.
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (path, secret) = (path.clone(), secret.clone());
                std::thread::spawn(move || -> Result<bool, String> {
                    let store = Store::open(&path).map_err(|e| e.to_string())?;
                    match store.redeem_enroll_token(
                        &secret,
                        enrollment(&format!("b{i}"), &format!("fp{i}")),
                    ) {
                        Ok(_) => Ok(true),
                        Err(StoreError::TokenUsedUp) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    }
                })
            })
            .collect();
        let mut enrolled = 0;
        for h in handles {
            if h.join().map_err(|_| "thread panicked")?? {
                enrolled += 1;
            }
        }
        assert_eq!(enrolled, 3);
        assert_eq!(s.devices(Some("acme"))?.len(), 3);
        assert_eq!(s.tokens(None)?[0].uses_left, Some(0));
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
        assert_eq!(s.find_device(&[], "board")?, None);
        // Searching both tenants finds the one listed first.
        assert_eq!(
            s.find_device(&[globex.id, acme.id], "board")?.map(|d| d.id),
            Some(dg.id.clone())
        );
        // A device named like another device's id does not shadow that id.
        let shadow = s.redeem_enroll_token(&a, enrollment(&da.id, "fs"))?.device;
        assert_eq!(
            s.find_device(&[acme.id], &da.id)?.map(|d| d.id),
            Some(da.id.clone())
        );
        assert_eq!(s.resolve_device(&shadow.id)?.name, da.id);
        assert!(matches!(
            s.resolve_device("nothing"),
            Err(StoreError::NotFound { what: "device", .. })
        ));
        assert_eq!(s.devices(Some("acme"))?.len(), 2);
        assert_eq!(s.devices(None)?.len(), 3);
        assert!(matches!(
            s.devices(Some("nope")),
            Err(StoreError::NotFound { .. })
        ));
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
        // One key is one engineer per tenant.
        let e = s
            .add_user("alias", "acme", Role::Viewer, KEY_B)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("\"bob\"") && e.contains("acme"), "{e}");
        assert!(matches!(
            s.add_user("Bad Name", "acme", Role::Viewer, KEY_B),
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
        // A change made through one handle is seen by the other at once (the admin CLI
        // rejecting a device while the relay serves it).
        let t = token(&a, "acme", None, None)?;
        let d = b.redeem_enroll_token(&t, enrollment("b1", "fp1"))?.device;
        assert!(b.unwelcome_devices(std::slice::from_ref(&d.id))?.is_empty());
        a.set_device_status(&d.id, DeviceStatus::Rejected)?;
        assert_eq!(
            b.unwelcome_devices(std::slice::from_ref(&d.id))?,
            vec![d.id.clone()]
        );
        a.remove_device(&d.id)?;
        assert!(b.device(&d.id)?.is_none());
        assert!(matches!(
            b.remove_device(&d.id),
            Err(StoreError::NotFound { .. })
        ));
        Ok(())
    }
}
