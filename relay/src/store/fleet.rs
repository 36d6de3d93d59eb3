//! Fleet state in the relay's store: artifacts, device tags, deployments, and each device's
//! desired and reported state.
//!
//! Artifacts (component files and the recipes themselves) are content-addressed: the bytes
//! live in `<data_dir>/artifacts/<sha256>`, written to a temporary name, synced and renamed
//! into place, and a row in `artifacts` records which tenant put them, their size and the
//! original file name. Putting the same content twice is harmless and yields the same digest.
//!
//! The digest alone is no permission: a tenant's deployments may name, and its devices may
//! fetch, only the artifacts that tenant put (or that its deployments stored). Two tenants
//! putting the same bytes share one file and each have their own row; another tenant's
//! digest looks exactly like one that was never stored.
//!
//! A deployment resolves its target (one device, or every accepted device of the tenant with
//! a tag) once, when it is created, and merges its components into each target device's
//! desired state in a single transaction: a deployed component replaces the one of the same
//! name, the others stay. Every change of a desired state increments its version; the device
//! applies each version once and reports how it went, which updates the deployment's row for
//! that device when the report is about the version the deployment produced.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tether_protocol::fleet::{
    DeploymentStatus, DesiredComponent, DesiredOs, DesiredState, ReportedState, is_sha256,
};
use tether_protocol::recipe::{self, ArtifactUri, Recipe};

use super::{
    Device, DeviceStatus, Store, StoreError, device_where, devices_where, now, random_hex,
    tenant_by_name, tenant_id, validate_name,
};

/// An artifact stored on the relay for a tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// The tenant whose devices may fetch it.
    pub tenant: String,
    /// Its digest, lowercase hex; also its file name in the artifacts directory.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The file name the tenant first uploaded it as.
    pub name: String,
    /// When the tenant first stored it (RFC 3339).
    pub created_at: String,
}

/// What a deployment is for: the devices of a tenant with a tag, or one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every accepted device of the tenant with this tag (`tag:T`).
    Tag(String),
    /// One device of the tenant, by id or name (`device:D`).
    Device(String),
}

impl FromStr for Target {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("tag", tag)) => {
                validate_name("tag", tag)
                    .map_err(|e| StoreError::Invalid(format!("target {s:?}: {e}")))?;
                Ok(Target::Tag(tag.to_string()))
            }
            Some(("device", device)) if !device.trim().is_empty() => {
                Ok(Target::Device(device.trim().to_string()))
            }
            _ => Err(StoreError::Invalid(format!(
                "target {s:?} must be tag:TAG or device:DEVICE"
            ))),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tag(tag) => write!(f, "tag:{tag}"),
            Target::Device(device) => write!(f, "device:{device}"),
        }
    }
}

/// What `create_deployment` needs.
#[derive(Debug, Clone)]
pub struct NewDeployment<'a> {
    /// Tenant name.
    pub tenant: &'a str,
    /// The devices to deploy to.
    pub target: Target,
    /// The recipes: (file name, recipe text). The file name appears in error messages and
    /// as the recipe artifact's name.
    pub recipes: Vec<(String, String)>,
    /// Configuration assignments: `component:key=value` for one component, `key=value` for
    /// every component of the deployment.
    pub set: Vec<String>,
    /// An OS bundle already stored as an artifact, and its version.
    pub os: Option<DesiredOs>,
    /// Files the recipes name by bare file name (`uri: server.py`), by that name: stored as
    /// the tenant's artifacts, and the recipes rewritten to name them on the relay.
    pub artifacts: Vec<(String, Vec<u8>)>,
    /// Components to take off the devices (undeploy).
    pub remove: Vec<String>,
}

/// A deployment and where it stands on each of its devices.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeploymentView {
    /// Id (`dep_…`).
    pub id: String,
    /// Tenant name.
    pub tenant: String,
    /// `tag:T` or `device:ID`.
    pub target: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// The components it deploys, by name.
    pub components: BTreeMap<String, DesiredComponent>,
    /// The components it removes.
    pub removed: Vec<String>,
    /// Its devices, by name.
    pub devices: Vec<DeploymentDevice>,
}

/// Where a deployment stands on one device.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeploymentDevice {
    /// Device id.
    pub device_id: String,
    /// Device name.
    pub device_name: String,
    /// Status the device reported for the deployment's version (pending until then).
    pub status: DeploymentStatus,
    /// What the device said about it.
    pub message: Option<String>,
    /// When the status last changed (RFC 3339).
    pub updated_at: String,
}

/// A device's desired and reported state side by side.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceState {
    /// Device id.
    pub device_id: String,
    /// What the relay wants it to run, if anything was ever deployed to it.
    pub desired: Option<DesiredState>,
    /// What it reported last, if it ever did.
    pub reported: Option<ReportedState>,
    /// When it reported that (RFC 3339).
    pub reported_at: Option<String>,
}

/// Builds the configuration overrides of a per-device push from `component:key=value`
/// assignments: a JSON object of component name → configuration patch (for
/// [`Store::push_config`]). Every assignment must name its component.
pub fn config_overrides(assignments: &[String]) -> Result<Value, StoreError> {
    let mut overrides = serde_json::Map::new();
    for assignment in assignments {
        let (component, key_value) = split_assignment(assignment)?;
        let Some(component) = component else {
            return Err(StoreError::Invalid(format!(
                "cannot set `{assignment}`: name the component, as in com.example.app:port=9000"
            )));
        };
        let patch = overrides
            .entry(component.to_string())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        recipe::apply_set(patch, &key_value)
            .map_err(|e| StoreError::Invalid(format!("{component}: {e}")))?;
    }
    Ok(Value::Object(overrides))
}

/// Splits `component:key=value` into the component and `key=value`; a bare `key=value` has no
/// component. Only the key part may carry the prefix: the value may contain ':' and '='.
fn split_assignment(assignment: &str) -> Result<(Option<&str>, String), StoreError> {
    let Some((key, value)) = assignment.split_once('=') else {
        return Err(StoreError::Invalid(format!(
            "cannot set `{assignment}`: expected [COMPONENT:]KEY=VALUE"
        )));
    };
    match key.split_once(':') {
        None => Ok((None, assignment.to_string())),
        Some((component, key)) => {
            let component = component.trim();
            if component.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "cannot set `{assignment}`: the component name before ':' is empty"
                )));
            }
            Ok((Some(component), format!("{key}={value}")))
        }
    }
}

/// The configuration overrides of each component of a deployment, built from its `--set`
/// assignments; every component starts with `{}`.
fn deployment_configurations(
    names: &[&str],
    assignments: &[String],
) -> Result<BTreeMap<String, Value>, StoreError> {
    let mut configurations: BTreeMap<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), Value::Object(serde_json::Map::new())))
        .collect();
    for assignment in assignments {
        let (component, key_value) = split_assignment(assignment)?;
        match component {
            Some(component) => {
                let Some(configuration) = configurations.get_mut(component) else {
                    return Err(StoreError::Invalid(format!(
                        "cannot set `{assignment}`: no recipe of this deployment is named {component} (its components: {})",
                        names.join(", ")
                    )));
                };
                recipe::apply_set(configuration, &key_value)
                    .map_err(|e| StoreError::Invalid(format!("{component}: {e}")))?;
            }
            None => {
                for (name, configuration) in configurations.iter_mut() {
                    recipe::apply_set(configuration, &key_value)
                        .map_err(|e| StoreError::Invalid(format!("{name}: {e}")))?;
                }
            }
        }
    }
    Ok(configurations)
}

/// Checks the name an artifact is uploaded as: a plain file name.
fn check_artifact_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "artifact name {name:?} must be a file name of 1-255 bytes without '/' or control characters"
        )))
    }
}

/// The supplied file's own key (borrowed from the deployment, not from the recipe).
fn supplied_key<'a>(supplied: &BTreeMap<&'a str, &[u8]>, name: &str) -> &'a str {
    supplied
        .get_key_value(name)
        .map(|(k, _)| *k)
        .unwrap_or_default()
}

/// Checks a component name given to remove: what a recipe's `name` may be.
fn validate_component_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= recipe::MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "cannot remove {name:?}: not a component name (letters, digits, '.', '-', '_')"
        )))
    }
}

/// Whether the stored recipe of `component` has a hard dependency on `name`; a recipe that
/// cannot be read is taken to have none (the device checks again before it removes anything).
fn hard_dependency(artifacts_dir: &Path, component: &DesiredComponent, name: &str) -> bool {
    let Some(path) = Store::artifact_path(artifacts_dir, &component.recipe_sha256) else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return false;
    };
    recipe::parse(&text, &path).is_ok_and(|r| {
        r.dependencies
            .get(name)
            .is_some_and(|d| d.kind == recipe::DependencyKind::Hard)
    })
}

/// Reads the recipes a deployment names and, from `dir`, each file they name by bare file
/// name (`uri: server.py`), for [`NewDeployment::artifacts`]. A name is only ever a plain file
/// name in `dir` (recipe validation refuses `/`, `..` and absolute paths, naming the recipe and
/// the artifact), and a file that leads out of `dir` through a symbolic link is refused too.
pub fn read_local_artifacts(
    dir: &Path,
    recipes: &[(String, String)],
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    let root = std::fs::canonicalize(dir).map_err(io(dir))?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (file, text) in recipes {
        let r =
            recipe::parse(text, Path::new(file)).map_err(|e| StoreError::Invalid(e.to_string()))?;
        for (m, manifest) in r.manifests.iter().enumerate() {
            for (i, artifact) in manifest.artifacts.iter().enumerate() {
                let ArtifactUri::Local(name) = &artifact.uri else {
                    continue;
                };
                if files.contains_key(name) {
                    continue;
                }
                let at = format!("{file}: manifests[{m}].artifacts[{i}]: artifact {name}");
                let plain = matches!(
                    Path::new(name).components().collect::<Vec<_>>().as_slice(),
                    [std::path::Component::Normal(_)]
                );
                if !plain {
                    return Err(StoreError::Invalid(format!(
                        "{at}: not a plain file name in {}",
                        dir.display()
                    )));
                }
                let path = root.join(name);
                let real = std::fs::canonicalize(&path).map_err(|e| {
                    StoreError::Invalid(format!("{at}: {}: {e}", dir.join(name).display()))
                })?;
                if real.parent() != Some(root.as_path()) {
                    return Err(StoreError::Invalid(format!(
                        "{at}: {} leads out of {} (to {}); refused",
                        dir.join(name).display(),
                        dir.display(),
                        real.display()
                    )));
                }
                if !real.is_file() {
                    return Err(StoreError::Invalid(format!(
                        "{at}: {} is not a regular file",
                        dir.join(name).display()
                    )));
                }
                let data = std::fs::read(&real).map_err(io(&real))?;
                files.insert(name.clone(), data);
            }
        }
    }
    Ok(files.into_iter().collect())
}

/// The name a recipe's text is stored under: the last component of the name it came with.
fn recipe_artifact_name(file: &str, recipe: &Recipe) -> String {
    let base = Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if check_artifact_name(&base).is_ok() {
        base
    } else {
        format!("{}.yaml", recipe.name)
    }
}

/// Writes `data` to `<dir>/<sha256>` atomically: a temporary file in the same directory,
/// synced, then renamed into place (and the directory synced).
fn write_artifact_file(dir: &Path, sha256: &str, data: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let final_path = dir.join(sha256);
    let temp = dir.join(format!(".{sha256}.{}.tmp", random_hex(6)));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, &final_path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io(&final_path)(e));
    }
    Ok(())
}

/// A stored JSON document that does not decode: a damaged file, reported like any other
/// value SQLite cannot convert.
fn decode<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            Box::new(e),
        ))
    })
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

fn version_to_sql(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Invalid(format!("desired-state version {version} is too large")))
}

fn status_as_str(status: DeploymentStatus) -> &'static str {
    match status {
        DeploymentStatus::Pending => "pending",
        DeploymentStatus::Downloading => "downloading",
        DeploymentStatus::Installing => "installing",
        DeploymentStatus::Succeeded => "succeeded",
        DeploymentStatus::Failed => "failed",
        DeploymentStatus::RolledBack => "rolled-back",
    }
}

/// Reads a stored status; the relay writes only the names above, anything else is a
/// damaged file and reads as failed rather than as a success.
fn status_parse(s: &str) -> DeploymentStatus {
    match s {
        "pending" => DeploymentStatus::Pending,
        "downloading" => DeploymentStatus::Downloading,
        "installing" => DeploymentStatus::Installing,
        "succeeded" => DeploymentStatus::Succeeded,
        "rolled-back" => DeploymentStatus::RolledBack,
        _ => DeploymentStatus::Failed,
    }
}

/// The columns [`artifact_from_row`] reads, from `artifacts a JOIN tenants t`.
const ARTIFACT_COLUMNS: &str = "t.name, a.sha256, a.size, a.name, a.created_at";

fn artifact_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ArtifactInfo> {
    Ok(ArtifactInfo {
        tenant: r.get(0)?,
        sha256: r.get(1)?,
        size: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        name: r.get(3)?,
        created_at: r.get(4)?,
    })
}

/// The artifact `sha256` of tenant `tenant_id`; another tenant's is `None` like a missing one.
fn artifact_row(
    conn: &Connection,
    tenant_id: i64,
    sha256: &str,
) -> Result<Option<ArtifactInfo>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN tenants t ON t.id = a.tenant_id
                 WHERE a.tenant_id = ?1 AND a.sha256 = ?2"
            ),
            params![tenant_id, sha256],
            artifact_from_row,
        )
        .optional()?)
}

fn device_exists(conn: &Connection, device_id: &str) -> Result<(), StoreError> {
    let found: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM devices WHERE id = ?1",
            params![device_id],
            |r| r.get(0),
        )
        .optional()?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound {
            what: "device",
            key: device_id.to_string(),
        }),
    }
}

fn tags_of(conn: &Connection, device_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT tag FROM device_tags WHERE device_id = ?1 ORDER BY tag")?;
    let rows = stmt.query_map(params![device_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn load_desired(conn: &Connection, device_id: &str) -> Result<Option<DesiredState>, StoreError> {
    let doc: Option<String> = conn
        .query_row(
            "SELECT doc FROM desired_state WHERE device_id = ?1",
            params![device_id],
            |r| r.get(0),
        )
        .optional()?;
    doc.map(|d| decode(&d)).transpose()
}

fn load_reported(conn: &Connection, device_id: &str) -> Result<Option<ReportedState>, StoreError> {
    let doc: Option<String> = conn
        .query_row(
            "SELECT doc FROM reported_state WHERE device_id = ?1",
            params![device_id],
            |r| r.get(0),
        )
        .optional()?;
    doc.map(|d| decode(&d)).transpose()
}

fn save_desired(
    conn: &Connection,
    device_id: &str,
    state: &DesiredState,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO desired_state (device_id, version, doc, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_id) DO UPDATE
             SET version = excluded.version, doc = excluded.doc, updated_at = excluded.updated_at",
        params![
            device_id,
            version_to_sql(state.version)?,
            encode(state)?,
            now()
        ],
    )?;
    Ok(())
}

/// One deployment, only of `tenant_id` when given.
fn deployment_row(
    conn: &Connection,
    id: &str,
    tenant_id: Option<i64>,
) -> Result<Option<DeploymentView>, StoreError> {
    let row = conn
        .query_row(
            "SELECT p.id, t.name, p.target, p.created_at, p.components, p.removed
             FROM deployments p JOIN tenants t ON t.id = p.tenant_id
             WHERE p.id = ?1 AND (?2 IS NULL OR p.tenant_id = ?2)",
            params![id, tenant_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, tenant, target, created_at, components, removed)) = row else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT x.device_id, d.name, x.status, x.message, x.updated_at
         FROM deployment_devices x JOIN devices d ON d.id = x.device_id
         WHERE x.deployment_id = ?1 ORDER BY d.name, d.id",
    )?;
    let devices = stmt
        .query_map(params![id], |r| {
            Ok(DeploymentDevice {
                device_id: r.get(0)?,
                device_name: r.get(1)?,
                status: status_parse(&r.get::<_, String>(2)?),
                message: r.get(3)?,
                updated_at: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(DeploymentView {
        id,
        tenant,
        target,
        created_at,
        components: decode(&components)?,
        removed: decode(&removed)?,
        devices,
    }))
}

impl Store {
    /// Stores `data` as an artifact of `tenant` under `artifacts_dir` (created if missing)
    /// and returns it; content the tenant already stored keeps its first name and creation
    /// time. The same bytes put by another tenant share the file but not the row.
    pub fn put_artifact(
        &self,
        artifacts_dir: &Path,
        tenant: &str,
        name: &str,
        data: &[u8],
    ) -> Result<ArtifactInfo, StoreError> {
        check_artifact_name(name)?;
        let tenant_id = tenant_id(&self.conn(), tenant)?;
        let sha256 = hex::encode(Sha256::digest(data));
        let size = i64::try_from(data.len())
            .map_err(|_| StoreError::Invalid(format!("artifact {name:?} is too large")))?;
        // The file first: a row never names bytes that are not there.
        write_artifact_file(artifacts_dir, &sha256, data)?;
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO artifacts (tenant_id, sha256, size, name, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant_id, sha256, size, name, now()],
        )?;
        artifact_row(&conn, tenant_id, &sha256)?.ok_or(StoreError::NotFound {
            what: "artifact",
            key: sha256,
        })
    }

    /// The artifact with digest `sha256` if `tenant` stored it.
    pub fn artifact(&self, tenant: &str, sha256: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        let conn = self.conn();
        let tenant_id = tenant_id(&conn, tenant)?;
        artifact_row(&conn, tenant_id, sha256)
    }

    /// The artifact with digest `sha256` if the tenant of device `device_id` stored it: what
    /// the device may fetch. An unknown device, another tenant's artifact and one never
    /// stored are all `None`, so the answer to a device tells it nothing about other tenants.
    pub fn device_artifact(
        &self,
        device_id: &str,
        sha256: &str,
    ) -> Result<Option<ArtifactInfo>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {ARTIFACT_COLUMNS} FROM devices d
                     JOIN artifacts a ON a.tenant_id = d.tenant_id
                     JOIN tenants t ON t.id = a.tenant_id
                     WHERE d.id = ?1 AND a.sha256 = ?2"
                ),
                params![device_id, sha256],
                artifact_from_row,
            )
            .optional()?)
    }

    /// Artifacts of `tenant` (of every tenant if `None`), oldest first.
    pub fn artifacts(&self, tenant: Option<&str>) -> Result<Vec<ArtifactInfo>, StoreError> {
        let conn = self.conn();
        let tenant_id = tenant.map(|name| tenant_id(&conn, name)).transpose()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN tenants t ON t.id = a.tenant_id
             WHERE ?1 IS NULL OR a.tenant_id = ?1 ORDER BY a.rowid"
        ))?;
        let rows = stmt.query_map(params![tenant_id], artifact_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Where an artifact's bytes are: `artifacts_dir` joined with the digest, or `None` when
    /// `sha256` is not a digest (so it can never name another path).
    pub fn artifact_path(artifacts_dir: &Path, sha256: &str) -> Option<PathBuf> {
        is_sha256(sha256).then(|| artifacts_dir.join(sha256))
    }

    /// Adds and removes tags of a device in one transaction; returns its tags after, sorted.
    pub fn set_tags(
        &self,
        device_id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError> {
        for tag in add.iter().chain(remove) {
            validate_name("tag", tag)?;
        }
        if let Some(both) = add.iter().find(|t| remove.contains(t)) {
            return Err(StoreError::Invalid(format!(
                "tag {both:?} is both added and removed"
            )));
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        device_exists(&tx, device_id)?;
        for tag in add {
            tx.execute(
                "INSERT OR IGNORE INTO device_tags (device_id, tag) VALUES (?1, ?2)",
                params![device_id, tag],
            )?;
        }
        for tag in remove {
            tx.execute(
                "DELETE FROM device_tags WHERE device_id = ?1 AND tag = ?2",
                params![device_id, tag],
            )?;
        }
        let tags = tags_of(&tx, device_id)?;
        tx.commit()?;
        Ok(tags)
    }

    /// A device's tags, sorted.
    pub fn device_tags(&self, device_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        device_exists(&conn, device_id)?;
        tags_of(&conn, device_id)
    }

    /// Creates a deployment and merges its components into the desired state of each of its
    /// devices.
    ///
    /// Every recipe is validated (errors name its file), every `relay:sha256:` artifact a
    /// recipe names, and the OS bundle, must be stored already for the tenant (the error
    /// names recipe and digest, and reads the same for another tenant's digest), and the
    /// recipe texts are stored as the tenant's artifacts. The target is resolved within the tenant: a
    /// device by id or name, or every accepted device with the tag (none is an error). Then,
    /// in one transaction, each device's desired state gets the deployment's components (a
    /// component of the same name is replaced), the deployment's id and the next version,
    /// and the deployment is recorded with one pending row per device.
    pub fn create_deployment(
        &self,
        artifacts_dir: &Path,
        new: NewDeployment<'_>,
    ) -> Result<DeploymentView, StoreError> {
        let tenant =
            tenant_by_name(&self.conn(), new.tenant)?.ok_or_else(|| StoreError::NotFound {
                what: "tenant",
                key: new.tenant.to_string(),
            })?;
        if new.recipes.is_empty() && new.os.is_none() && new.remove.is_empty() {
            return Err(StoreError::Invalid(
                "a deployment needs at least one recipe, a component to remove or an OS bundle"
                    .into(),
            ));
        }
        if let Some(os) = &new.os
            && artifact_row(&self.conn(), tenant.id, &os.bundle_sha256)?.is_none()
        {
            return Err(StoreError::Invalid(format!(
                "OS bundle {} is not stored on the relay for tenant {}",
                os.bundle_sha256, tenant.name
            )));
        }
        let supplied: BTreeMap<&str, &[u8]> = new
            .artifacts
            .iter()
            .map(|(name, data)| (name.as_str(), data.as_slice()))
            .collect();
        for name in supplied.keys() {
            check_artifact_name(name)?;
        }
        let mut used: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        let mut parsed: Vec<(&str, String, Recipe)> = Vec::new();
        for (file, text) in &new.recipes {
            let mut r = recipe::parse(text, Path::new(file))
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            if let Some((first, _, _)) = parsed.iter().find(|(_, _, p)| p.name == r.name) {
                return Err(StoreError::Invalid(format!(
                    "component {} is in two recipes of this deployment: {first} and {file}",
                    r.name
                )));
            }
            if new.remove.contains(&r.name) {
                return Err(StoreError::Invalid(format!(
                    "{file}: component {} is both deployed and removed by this deployment",
                    r.name
                )));
            }
            let mut rewritten = Vec::new();
            let component = r.name.clone();
            for (m, manifest) in r.manifests.iter_mut().enumerate() {
                for (i, artifact) in manifest.artifacts.iter_mut().enumerate() {
                    match &artifact.uri {
                        ArtifactUri::Relay { sha256, .. } => {
                            if artifact_row(&self.conn(), tenant.id, sha256)?.is_none() {
                                return Err(StoreError::Invalid(format!(
                                    "{file}: {component} needs artifact relay:sha256:{sha256}, which is not stored on the relay for tenant {}; upload it first (relay artifact put --tenant {})",
                                    tenant.name, tenant.name
                                )));
                            }
                        }
                        ArtifactUri::Local(name) => {
                            let name = name.clone();
                            let at = format!("{file}: manifests[{m}].artifacts[{i}]");
                            match supplied.get(name.as_str()) {
                                Some(data) => {
                                    let actual = hex::encode(Sha256::digest(data));
                                    if actual != artifact.sha256 {
                                        return Err(StoreError::Invalid(format!(
                                            "{at}: artifact {name} of {component}: the file supplied has sha256 {actual}, the recipe says {}",
                                            artifact.sha256
                                        )));
                                    }
                                    self.put_artifact(artifacts_dir, &tenant.name, &name, data)?;
                                    used.insert(supplied_key(&supplied, &name));
                                }
                                None => {
                                    if artifact_row(&self.conn(), tenant.id, &artifact.sha256)?
                                        .is_none()
                                    {
                                        return Err(StoreError::Invalid(format!(
                                            "{at}: artifact {name} of {component} is a bare file name: pass the directory that holds it (relay deploy create --artifacts DIR, or \"artifacts\" in the API), or put it first (relay artifact put --tenant {} {name})",
                                            tenant.name
                                        )));
                                    }
                                }
                            }
                            // Stored by digest on the relay, kept under its name on the device.
                            artifact.uri = ArtifactUri::Relay {
                                sha256: artifact.sha256.clone(),
                                name: Some(name.clone()),
                            };
                            rewritten.push(name);
                        }
                        ArtifactUri::Https(_) | ArtifactUri::File(_) => {}
                    }
                }
            }
            let text = if rewritten.is_empty() {
                text.clone()
            } else {
                let body =
                    recipe::to_text(&r).map_err(|e| StoreError::Invalid(format!("{file}: {e}")))?;
                format!(
                    "# {file} as deployed from the relay: {} stored on the relay by sha256.\n{body}",
                    rewritten.join(", ")
                )
            };
            parsed.push((file, text, r));
        }
        if let Some(unused) = supplied.keys().find(|n| !used.contains(**n)) {
            return Err(StoreError::Invalid(format!(
                "artifact {unused} is supplied but no recipe of this deployment names it"
            )));
        }
        for name in &new.remove {
            validate_component_name(name)?;
        }
        let names: Vec<&str> = parsed.iter().map(|(_, _, r)| r.name.as_str()).collect();
        let mut configurations = deployment_configurations(&names, &new.set)?;
        let mut components = BTreeMap::new();
        for (file, text, r) in &parsed {
            let stored = self.put_artifact(
                artifacts_dir,
                &tenant.name,
                &recipe_artifact_name(file, r),
                text.as_bytes(),
            )?;
            components.insert(
                r.name.clone(),
                DesiredComponent {
                    version: r.version.to_string(),
                    recipe_sha256: stored.sha256,
                    configuration: configurations
                        .remove(&r.name)
                        .unwrap_or_else(|| Value::Object(serde_json::Map::new())),
                },
            );
        }
        let removed: Vec<String> = {
            let mut r = new.remove.clone();
            r.sort();
            r.dedup();
            r
        };
        let mut changes: Vec<String> = components.keys().cloned().collect();
        changes.extend(removed.iter().cloned());
        changes.sort();

        let id = format!("dep_{}", random_hex(6));
        let created_at = now();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (target, devices): (String, Vec<Device>) = match &new.target {
            Target::Device(key) => {
                let d = device_where(
                    &tx,
                    "d.tenant_id = ?1 AND (d.name = ?2 OR d.id = ?2) ORDER BY d.id = ?2 DESC LIMIT 1",
                    params![tenant.id, key],
                )?
                .ok_or_else(|| StoreError::NotFound {
                    what: "device",
                    key: key.clone(),
                })?;
                (format!("device:{}", d.id), vec![d])
            }
            Target::Tag(tag) => {
                let devices = devices_where(
                    &tx,
                    "d.tenant_id = ?1 AND d.status = ?2 AND EXISTS
                         (SELECT 1 FROM device_tags g WHERE g.device_id = d.id AND g.tag = ?3)",
                    params![tenant.id, DeviceStatus::Accepted.as_str(), tag],
                )?;
                if devices.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "no device of tenant {} has tag {tag}",
                        tenant.name
                    )));
                }
                (format!("tag:{tag}"), devices)
            }
        };
        tx.execute(
            "INSERT INTO deployments (id, tenant_id, target, components, removed, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                tenant.id,
                target,
                encode(&components)?,
                encode(&removed)?,
                created_at
            ],
        )?;
        // A removal must be about something: a component desired on (or reported by) at
        // least one device of the target, and none may leave a component there without a
        // hard dependency it needs.
        for name in &removed {
            let mut known = false;
            for device in &devices {
                let desired = load_desired(&tx, &device.id)?.unwrap_or_default();
                let reported = load_reported(&tx, &device.id)?;
                known |= desired.components.contains_key(name)
                    || reported
                        .as_ref()
                        .is_some_and(|r| r.components.iter().any(|c| c.name == *name));
                for (other, component) in &desired.components {
                    if removed.contains(other) || components.contains_key(other) {
                        continue;
                    }
                    if hard_dependency(artifacts_dir, component, name) {
                        return Err(StoreError::Invalid(format!(
                            "cannot remove {name} from device {}: {other}, desired there, has a hard dependency on it; remove {other} too (--remove {other})",
                            device.name
                        )));
                    }
                }
            }
            if !known {
                return Err(StoreError::Invalid(format!(
                    "cannot remove {name}: no device of {target} has it in its desired state or reports it"
                )));
            }
        }
        for device in &devices {
            let mut desired = load_desired(&tx, &device.id)?.unwrap_or_default();
            for (name, component) in &components {
                desired.components.insert(name.clone(), component.clone());
            }
            for name in &removed {
                desired.components.remove(name);
            }
            desired.changes = Some(changes.clone());
            if let Some(os) = &new.os {
                desired.os = Some(os.clone());
            }
            desired.deployment_id = Some(id.clone());
            desired.version += 1;
            save_desired(&tx, &device.id, &desired)?;
            tx.execute(
                "INSERT INTO deployment_devices (deployment_id, device_id, desired_version, status, message, updated_at)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
                params![
                    id,
                    device.id,
                    version_to_sql(desired.version)?,
                    status_as_str(DeploymentStatus::Pending),
                    created_at
                ],
            )?;
        }
        let view = deployment_row(&tx, &id, None)?.ok_or_else(|| StoreError::NotFound {
            what: "deployment",
            key: id.clone(),
        })?;
        tx.commit()?;
        Ok(view)
    }

    /// The deployment `id`; with `tenant_id`, only if it belongs to that tenant.
    pub fn deployment(
        &self,
        id: &str,
        tenant_id: Option<i64>,
    ) -> Result<Option<DeploymentView>, StoreError> {
        let mut conn = self.conn();
        // One read transaction: the deployment and its rows from one snapshot.
        let tx = conn.transaction()?;
        let view = deployment_row(&tx, id, tenant_id)?;
        tx.commit()?;
        Ok(view)
    }

    /// Deployments, optionally of one tenant, oldest first.
    pub fn deployments(&self, tenant: Option<&str>) -> Result<Vec<DeploymentView>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let tenant_id = tenant.map(|name| tenant_id(&tx, name)).transpose()?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM deployments WHERE ?1 IS NULL OR tenant_id = ?1
                 ORDER BY created_at, rowid",
            )?;
            let rows = stmt.query_map(params![tenant_id], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(view) = deployment_row(&tx, &id, None)? {
                out.push(view);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// What the relay wants the device to run, if anything was ever deployed to it.
    pub fn desired_state(&self, device_id: &str) -> Result<Option<DesiredState>, StoreError> {
        load_desired(&self.conn(), device_id)
    }

    /// Records a device's report. When it names a deployment and a status, the deployment's
    /// row for this device takes that status and message, but only if the report is about the
    /// version that deployment produced: a report about an older version must not mark a newer
    /// deployment, nor one about a newer version an older deployment.
    pub fn record_report(&self, device_id: &str, report: &ReportedState) -> Result<(), StoreError> {
        let version = version_to_sql(report.version)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        device_exists(&tx, device_id)?;
        let at = now();
        // An OS version that changed since the last report is an installed update (or a
        // fallback to the other slot): the audit trail keeps it.
        let before: Option<(String, String)> = tx
            .query_row(
                "SELECT r.doc, t.name FROM reported_state r JOIN devices d ON d.id = r.device_id
                 JOIN tenants t ON t.id = d.tenant_id WHERE r.device_id = ?1",
                params![device_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((doc, tenant)) = before {
            let old_os = serde_json::from_str::<ReportedState>(&doc)
                .ok()
                .and_then(|r| r.os_version);
            if let Some(new_os) = &report.os_version
                && old_os.as_ref() != Some(new_os)
            {
                super::audit::append(
                    &tx,
                    super::NewAudit {
                        tenant: Some(&tenant),
                        actor: &format!("device:{device_id}"),
                        action: "ota.installed",
                        target: Some(device_id),
                        source: None,
                        detail: serde_json::json!({
                            "from": old_os,
                            "to": new_os,
                            "deployment": report.deployment_id,
                        }),
                    },
                )?;
            }
        }
        tx.execute(
            "INSERT INTO reported_state (device_id, doc, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (device_id) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
            params![device_id, encode(report)?, at],
        )?;
        if let (Some(deployment), Some(status)) = (&report.deployment_id, report.status) {
            // Unchanged status and message keep their time: updated_at says when it changed.
            tx.execute(
                "UPDATE deployment_devices SET status = ?3, message = ?4, updated_at = ?5
                 WHERE deployment_id = ?1 AND device_id = ?2 AND desired_version = ?6
                   AND (status IS NOT ?3 OR message IS NOT ?4)",
                params![
                    deployment,
                    device_id,
                    status_as_str(status),
                    report.message,
                    at,
                    version
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A device's desired and reported state.
    pub fn device_state(&self, device_id: &str) -> Result<DeviceState, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        device_exists(&tx, device_id)?;
        let desired = load_desired(&tx, device_id)?;
        let reported: Option<(String, String)> = tx
            .query_row(
                "SELECT doc, updated_at FROM reported_state WHERE device_id = ?1",
                params![device_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        tx.commit()?;
        let (reported, reported_at) = match reported {
            Some((doc, at)) => (Some(decode::<ReportedState>(&doc)?), Some(at)),
            None => (None, None),
        };
        Ok(DeviceState {
            device_id: device_id.to_string(),
            desired,
            reported,
            reported_at,
        })
    }

    /// Pushes configuration to one device: `overrides` (a JSON object of component name →
    /// configuration patch) is merged (RFC 7386: null deletes) into the configuration
    /// overrides of each named component of its desired state; the version increases and the
    /// state no longer belongs to a deployment. A component the device is not meant to run
    /// is an error naming it. Returns the new desired state.
    pub fn push_config(
        &self,
        device_id: &str,
        overrides: &Value,
    ) -> Result<DesiredState, StoreError> {
        let Value::Object(patches) = overrides else {
            return Err(StoreError::Invalid(
                "the configuration must be a JSON object of component name → configuration patch"
                    .into(),
            ));
        };
        if patches.is_empty() {
            return Err(StoreError::Invalid(
                "the configuration names no component".into(),
            ));
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        device_exists(&tx, device_id)?;
        let mut desired = load_desired(&tx, device_id)?.unwrap_or_default();
        for (name, patch) in patches {
            if !patch.is_object() {
                return Err(StoreError::Invalid(format!(
                    "the configuration of {name} must be a JSON object"
                )));
            }
            let Some(component) = desired.components.get_mut(name) else {
                return Err(StoreError::Invalid(format!(
                    "device {device_id} has no component {name} in its desired state"
                )));
            };
            recipe::merge(&mut component.configuration, patch);
        }
        desired.changes = Some(patches.keys().cloned().collect());
        desired.deployment_id = None;
        desired.version += 1;
        save_desired(&tx, device_id, &desired)?;
        tx.commit()?;
        Ok(desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tether_protocol::fleet::ReportedComponent;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const SHA_A: &str = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b";

    fn recipe_text(name: &str, version: &str, artifact: Option<&str>) -> String {
        let artifacts = match artifact {
            Some(sha) => {
                format!("    artifacts:\n      - uri: relay:sha256:{sha}\n        sha256: {sha}\n")
            }
            None => String::new(),
        };
        format!(
            "name: {name}\nversion: {version}\nconfiguration:\n  port: 8080\nmanifests:\n  - platform: {{ os: linux }}\n{artifacts}    lifecycle:\n      run:\n        script: sleep 1000\n"
        )
    }

    struct Fixture {
        dir: tempfile::TempDir,
        store: Store,
    }

    impl Fixture {
        fn artifacts(&self) -> PathBuf {
            self.dir.path().join("artifacts")
        }

        fn enroll(&self, tenant: &str, name: &str) -> Result<String, StoreError> {
            crate::store::test_support::enroll(&self.store, tenant, name)
        }

        fn deploy(
            &self,
            target: &str,
            recipes: &[(&str, String)],
            set: &[&str],
        ) -> Result<DeploymentView, StoreError> {
            self.store.create_deployment(
                &self.artifacts(),
                NewDeployment {
                    tenant: "acme",
                    target: target.parse()?,
                    recipes: recipes
                        .iter()
                        .map(|(f, t)| (f.to_string(), t.clone()))
                        .collect(),
                    set: set.iter().map(|s| s.to_string()).collect(),
                    os: None,
                    artifacts: Vec::new(),
                    remove: Vec::new(),
                },
            )
        }
    }

    fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("relay.db"))?;
        store.add_tenant("acme")?;
        store.add_tenant("globex")?;
        Ok(Fixture { dir, store })
    }

    fn err_text<T: fmt::Debug>(r: Result<T, StoreError>) -> String {
        match r {
            Ok(v) => format!("unexpectedly ok: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn put_artifact_is_idempotent_and_stores_the_bytes() -> TestResult {
        let f = fixture()?;
        let a = f
            .store
            .put_artifact(&f.artifacts(), "acme", "abc.txt", b"abc")?;
        assert_eq!(
            a.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            (a.tenant.as_str(), a.size, a.name.as_str()),
            ("acme", 3, "abc.txt")
        );
        let path = Store::artifact_path(&f.artifacts(), &a.sha256).ok_or("no path")?;
        assert_eq!(std::fs::read(&path)?, b"abc");
        // The same bytes again: same digest, first name kept, one row, no stray temp files.
        let again = f
            .store
            .put_artifact(&f.artifacts(), "acme", "other.txt", b"abc")?;
        assert_eq!(again, a);
        assert_eq!(f.store.artifacts(Some("acme"))?, vec![a.clone()]);
        assert_eq!(f.store.artifact("acme", &a.sha256)?, Some(a));
        assert_eq!(std::fs::read_dir(f.artifacts())?.count(), 1);
        assert_eq!(f.store.artifact("acme", SHA_A)?, None);
        assert_eq!(Store::artifact_path(&f.artifacts(), "../relay.db"), None);
        assert!(matches!(
            f.store.put_artifact(&f.artifacts(), "acme", "a/b", b"x"),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            f.store.put_artifact(&f.artifacts(), "nope", "a", b"x"),
            Err(StoreError::NotFound { what: "tenant", .. })
        ));
        Ok(())
    }

    #[test]
    fn artifacts_belong_to_the_tenant_that_put_them() -> TestResult {
        let f = fixture()?;
        let mine = f.enroll("acme", "b1")?;
        let theirs = f.enroll("globex", "g1")?;
        let a = f
            .store
            .put_artifact(&f.artifacts(), "acme", "tool.bin", b"acme's tool")?;
        // Only acme and acme's devices see it; for globex it is exactly as if never stored.
        assert_eq!(f.store.device_artifact(&mine, &a.sha256)?, Some(a.clone()));
        assert_eq!(f.store.device_artifact(&theirs, &a.sha256)?, None);
        assert_eq!(f.store.device_artifact(&theirs, SHA_A)?, None);
        assert_eq!(f.store.device_artifact("dev_nope", &a.sha256)?, None);
        assert_eq!(f.store.artifact("globex", &a.sha256)?, None);
        assert!(f.store.artifacts(Some("globex"))?.is_empty());
        assert!(matches!(
            f.store.artifacts(Some("nope")),
            Err(StoreError::NotFound { what: "tenant", .. })
        ));
        // A globex recipe naming acme's digest is refused in the words used for a missing one.
        let needs = |sha: &str| {
            vec![(
                "needs.yaml".to_string(),
                recipe_text("com.example.a", "1.0.0", Some(sha)),
            )]
        };
        let deploy_globex = |sha: &str| {
            f.store.create_deployment(
                &f.artifacts(),
                NewDeployment {
                    tenant: "globex",
                    target: Target::Device("g1".into()),
                    recipes: needs(sha),
                    set: Vec::new(),
                    os: None,
                    artifacts: Vec::new(),
                    remove: Vec::new(),
                },
            )
        };
        let foreign = err_text(deploy_globex(&a.sha256));
        let missing = err_text(deploy_globex(SHA_A));
        assert!(foreign.contains("not stored on the relay"), "{foreign}");
        assert_eq!(foreign.replace(&a.sha256, "X"), missing.replace(SHA_A, "X"));
        // The same bytes put by globex: one file, a row each, and now globex's device may.
        let g = f
            .store
            .put_artifact(&f.artifacts(), "globex", "copy.bin", b"acme's tool")?;
        assert_eq!(
            (g.sha256.as_str(), g.tenant.as_str()),
            (a.sha256.as_str(), "globex")
        );
        assert_eq!(
            f.store.device_artifact(&theirs, &a.sha256)?,
            Some(g.clone())
        );
        assert_eq!(std::fs::read_dir(f.artifacts())?.count(), 1);
        assert_eq!(f.store.artifacts(None)?, vec![a.clone(), g]);
        // A deployment's recipe is its tenant's artifact, not another's.
        let view = deploy_globex(&a.sha256)?;
        let recipe = &view.components["com.example.a"].recipe_sha256;
        assert!(f.store.device_artifact(&theirs, recipe)?.is_some());
        assert_eq!(f.store.device_artifact(&mine, recipe)?, None);
        Ok(())
    }

    #[test]
    fn tags_are_added_removed_and_validated() -> TestResult {
        let f = fixture()?;
        let d = f.enroll("acme", "b1")?;
        let tags = f.store.set_tags(&d, &["edge".into(), "eu".into()], &[])?;
        assert_eq!(tags, vec!["edge", "eu"]);
        assert_eq!(
            f.store.set_tags(&d, &["edge".into()], &["eu".into()])?,
            vec!["edge"]
        );
        assert_eq!(f.store.device_tags(&d)?, vec!["edge"]);
        assert!(matches!(
            f.store.set_tags(&d, &["Bad Tag".into()], &[]),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            f.store.set_tags("dev_nope", &["edge".into()], &[]),
            Err(StoreError::NotFound { what: "device", .. })
        ));
        Ok(())
    }

    #[test]
    fn targets_parse_and_name_bad_input() {
        assert_eq!(
            "tag:edge".parse::<Target>().ok(),
            Some(Target::Tag("edge".into()))
        );
        assert_eq!(
            "device:b1".parse::<Target>().ok(),
            Some(Target::Device("b1".into()))
        );
        assert_eq!(Target::Tag("edge".into()).to_string(), "tag:edge");
        for bad in ["edge", "tag:", "device:", "group:x", "tag:Bad"] {
            let e = err_text(bad.parse::<Target>());
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn deployment_by_tag_merges_components_and_bumps_versions() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let b2 = f.enroll("acme", "b2")?;
        let other = f.enroll("acme", "b3")?;
        let foreign = f.enroll("globex", "g1")?;
        for d in [&b1, &b2, &foreign] {
            f.store.set_tags(d, &["edge".into()], &[])?;
        }
        // A pending device with the tag is left out.
        f.store.set_device_status(&b2, DeviceStatus::Pending)?;
        let first = f.deploy(
            "tag:edge",
            &[
                ("a.yaml", recipe_text("com.example.a", "1.0.0", None)),
                ("b.yaml", recipe_text("com.example.b", "1.0.0", None)),
            ],
            &[],
        )?;
        assert!(
            first.id.starts_with("dep_") && first.id.len() == 16,
            "{}",
            first.id
        );
        assert_eq!(
            (first.tenant.as_str(), first.target.as_str()),
            ("acme", "tag:edge")
        );
        let ids: Vec<&str> = first.devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, vec![b1.as_str()]);
        assert_eq!(first.devices[0].status, DeploymentStatus::Pending);
        // The recipe text is stored as an artifact under its file name.
        let a = &first.components["com.example.a"];
        assert_eq!(a.version, "1.0.0");
        assert_eq!(a.configuration, json!({}));
        let stored = f
            .store
            .artifact("acme", &a.recipe_sha256)?
            .ok_or("recipe not stored")?;
        assert_eq!(stored.name, "a.yaml");
        let desired = f.store.desired_state(&b1)?.ok_or("no desired state")?;
        assert_eq!(desired.version, 1);
        assert_eq!(desired.deployment_id.as_deref(), Some(first.id.as_str()));
        assert_eq!(desired.components.len(), 2);
        assert_eq!(f.store.desired_state(&other)?, None);
        assert_eq!(f.store.desired_state(&foreign)?, None);

        // A second deployment replaces com.example.b and keeps com.example.a.
        let second = f.deploy(
            "device:b1",
            &[("b2.yaml", recipe_text("com.example.b", "2.0.0", None))],
            &[],
        )?;
        assert_eq!(second.target, format!("device:{b1}"));
        let desired = f.store.desired_state(&b1)?.ok_or("no desired state")?;
        assert_eq!(desired.version, 2);
        assert_eq!(desired.deployment_id.as_deref(), Some(second.id.as_str()));
        assert_eq!(desired.components["com.example.a"].version, "1.0.0");
        assert_eq!(desired.components["com.example.b"].version, "2.0.0");
        // Listing and tenant scoping.
        assert_eq!(f.store.deployments(Some("acme"))?.len(), 2);
        assert!(f.store.deployments(Some("globex"))?.is_empty());
        assert!(matches!(
            f.store.deployments(Some("nope")),
            Err(StoreError::NotFound { what: "tenant", .. })
        ));
        let globex = f.store.tenant_by_name("globex")?.ok_or("no globex")?;
        assert_eq!(f.store.deployment(&first.id, Some(globex.id))?, None);
        assert_eq!(f.store.deployment(&first.id, None)?, Some(first));
        Ok(())
    }

    #[test]
    fn bad_targets_recipes_and_artifacts_are_refused_by_name() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        f.enroll("globex", "g1")?;
        let ok = [("a.yaml", recipe_text("com.example.a", "1.0.0", None))];
        let e = err_text(f.deploy("tag:nobody", &ok, &[]));
        assert_eq!(e, "no device of tenant acme has tag nobody");
        // Another tenant's device is not found.
        assert!(matches!(
            f.deploy("device:g1", &ok, &[]),
            Err(StoreError::NotFound { what: "device", .. })
        ));
        let e = err_text(f.deploy("device:b1", &[("broken.yaml", "name: [".into())], &[]));
        assert!(e.contains("broken.yaml"), "{e}");
        let e = err_text(f.deploy(
            "device:b1",
            &[(
                "needs.yaml",
                recipe_text("com.example.a", "1.0.0", Some(SHA_A)),
            )],
            &[],
        ));
        assert!(e.contains("needs.yaml") && e.contains(SHA_A), "{e}");
        let e = err_text(f.deploy(
            "device:b1",
            &[
                ("a.yaml", recipe_text("com.example.a", "1.0.0", None)),
                ("a2.yaml", recipe_text("com.example.a", "2.0.0", None)),
            ],
            &[],
        ));
        assert!(e.contains("a.yaml") && e.contains("a2.yaml"), "{e}");
        // Nothing was deployed by any of these.
        assert_eq!(f.store.desired_state(&b1)?, None);
        assert!(f.store.deployments(None)?.is_empty());
        // Once the artifact is stored the recipe deploys.
        let data = b"tool";
        let sha = hex::encode(Sha256::digest(data));
        f.store
            .put_artifact(&f.artifacts(), "acme", "tool.bin", data)?;
        f.deploy(
            "device:b1",
            &[(
                "needs.yaml",
                recipe_text("com.example.a", "1.0.0", Some(&sha)),
            )],
            &[],
        )?;
        Ok(())
    }

    #[test]
    fn set_assignments_are_routed_to_their_components() -> TestResult {
        let f = fixture()?;
        f.enroll("acme", "b1")?;
        let view = f.deploy(
            "device:b1",
            &[
                ("a.yaml", recipe_text("com.example.a", "1.0.0", None)),
                ("b.yaml", recipe_text("com.example.b", "1.0.0", None)),
            ],
            &[
                "com.example.a:port=9000",
                "level=debug",
                "com.example.b:url=http://x:80/?a=b",
                "com.example.b:server.host=h",
            ],
        )?;
        assert_eq!(
            view.components["com.example.a"].configuration,
            json!({"port": 9000, "level": "debug"})
        );
        assert_eq!(
            view.components["com.example.b"].configuration,
            json!({"level": "debug", "url": "http://x:80/?a=b", "server": {"host": "h"}})
        );
        let e = err_text(f.deploy(
            "device:b1",
            &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
            &["com.example.zzz:port=1"],
        ));
        assert!(e.contains("com.example.zzz"), "{e}");
        let e = err_text(f.deploy(
            "device:b1",
            &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
            &["no-equals-sign"],
        ));
        assert!(e.contains("no-equals-sign"), "{e}");
        assert_eq!(
            config_overrides(&["com.example.a:port=1".into(), "com.example.a:x.y=z".into()])?,
            json!({"com.example.a": {"port": 1, "x": {"y": "z"}}})
        );
        assert!(config_overrides(&["port=1".into()]).is_err());
        Ok(())
    }

    #[test]
    fn reports_update_the_deployment_only_for_its_version() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let first = f.deploy(
            "device:b1",
            &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
            &[],
        )?;
        let second = f.deploy(
            "device:b1",
            &[("a.yaml", recipe_text("com.example.a", "2.0.0", None))],
            &[],
        )?;
        let report = |version, deployment: &str, status| ReportedState {
            version,
            deployment_id: Some(deployment.to_string()),
            status: Some(status),
            message: Some(format!("v{version}")),
            components: vec![ReportedComponent {
                name: "com.example.a".into(),
                version: "1.0.0".into(),
                state: "running".into(),
                errors: 0,
                restarts: 0,
                last_error: None,
                configuration: json!({}),
            }],
            inventory: None,
            os_version: None,
            failed: Vec::new(),
        };
        let status = |id: &str| -> Result<(DeploymentStatus, Option<String>), StoreError> {
            let view = f.store.deployment(id, None)?.ok_or(StoreError::NotFound {
                what: "deployment",
                key: id.to_string(),
            })?;
            Ok((view.devices[0].status, view.devices[0].message.clone()))
        };
        // A late report about version 1 naming the second deployment changes nothing.
        f.store
            .record_report(&b1, &report(1, &second.id, DeploymentStatus::Succeeded))?;
        assert_eq!(status(&second.id)?.0, DeploymentStatus::Pending);
        // About version 1 and the first deployment: that one is updated.
        f.store
            .record_report(&b1, &report(1, &first.id, DeploymentStatus::Succeeded))?;
        assert_eq!(
            status(&first.id)?,
            (DeploymentStatus::Succeeded, Some("v1".into()))
        );
        f.store
            .record_report(&b1, &report(2, &second.id, DeploymentStatus::RolledBack))?;
        assert_eq!(status(&second.id)?.0, DeploymentStatus::RolledBack);
        let state = f.store.device_state(&b1)?;
        assert_eq!(state.reported.map(|r| r.version), Some(2));
        assert!(state.reported_at.is_some());
        assert_eq!(state.desired.map(|d| d.version), Some(2));
        assert!(matches!(
            f.store.record_report("dev_nope", &ReportedState::default()),
            Err(StoreError::NotFound { .. })
        ));
        Ok(())
    }

    #[test]
    fn push_config_merges_and_refuses_unknown_components() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let e = err_text(
            f.store
                .push_config(&b1, &json!({"com.example.a": {"port": 1}})),
        );
        assert!(e.contains("com.example.a"), "{e}");
        f.deploy(
            "device:b1",
            &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
            &["port=9000", "keep=yes"],
        )?;
        let pushed = f.store.push_config(
            &b1,
            &json!({"com.example.a": {"port": 9100, "keep": null, "new": {"x": 1}}}),
        )?;
        assert_eq!(pushed.version, 2);
        assert_eq!(pushed.deployment_id, None);
        assert_eq!(
            pushed.components["com.example.a"].configuration,
            json!({"port": 9100, "new": {"x": 1}})
        );
        assert_eq!(f.store.desired_state(&b1)?, Some(pushed));
        let e = err_text(
            f.store
                .push_config(&b1, &json!({"com.example.zzz": {"a": 1}})),
        );
        assert!(e.contains("com.example.zzz"), "{e}");
        assert!(f.store.push_config(&b1, &json!([1])).is_err());
        assert_eq!(f.store.desired_state(&b1)?.map(|d| d.version), Some(2));
        Ok(())
    }

    #[test]
    fn bare_named_artifacts_are_stored_and_the_recipe_names_them_on_the_relay() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let data = b"#!/bin/sh\necho hi\n";
        let sha = hex::encode(Sha256::digest(data));
        let text = format!(
            "name: com.example.a\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: tool.sh\n        sha256: {sha}\n    lifecycle:\n      run: sh {{artifacts:path}}/tool.sh\n"
        );
        let deploy = |artifacts: Vec<(String, Vec<u8>)>, remove: Vec<String>| {
            f.store.create_deployment(
                &f.artifacts(),
                NewDeployment {
                    tenant: "acme",
                    target: Target::Device("b1".into()),
                    recipes: vec![("app.yaml".into(), text.clone())],
                    set: Vec::new(),
                    os: None,
                    artifacts,
                    remove,
                },
            )
        };
        // Neither supplied nor stored: refused, naming recipe, artifact and the way out.
        let e = err_text(deploy(Vec::new(), Vec::new()));
        assert!(
            e.contains("app.yaml: manifests[0].artifacts[0]")
                && e.contains("artifact tool.sh of com.example.a")
                && e.contains("--artifacts DIR"),
            "{e}"
        );
        let e = err_text(deploy(
            vec![("tool.sh".into(), b"other".to_vec())],
            Vec::new(),
        ));
        assert!(e.contains("tool.sh") && e.contains(&sha), "{e}");
        let e = err_text(deploy(
            vec![
                ("tool.sh".into(), data.to_vec()),
                ("extra.bin".into(), b"x".to_vec()),
            ],
            Vec::new(),
        ));
        assert!(e.contains("extra.bin"), "{e}");
        assert_eq!(f.store.desired_state(&b1)?, None);
        let view = deploy(vec![("tool.sh".into(), data.to_vec())], Vec::new())?;
        let stored = f
            .store
            .artifact("acme", &sha)?
            .ok_or("artifact not stored")?;
        assert_eq!(stored.name, "tool.sh");
        let recipe_sha = &view.components["com.example.a"].recipe_sha256;
        let path = Store::artifact_path(&f.artifacts(), recipe_sha).ok_or("no path")?;
        let deployed = recipe::parse(&std::fs::read_to_string(&path)?, &path)?;
        assert_eq!(
            deployed.manifests[0].artifacts[0].uri,
            ArtifactUri::Relay {
                sha256: sha.clone(),
                name: Some("tool.sh".into())
            }
        );
        let desired = f.store.desired_state(&b1)?.ok_or("no desired state")?;
        assert_eq!(desired.changes, Some(vec!["com.example.a".to_string()]));
        // Stored now, the same recipe deploys without the file.
        deploy(Vec::new(), Vec::new())?;
        Ok(())
    }

    #[test]
    fn removals_take_components_out_and_name_only_what_they_change() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let base = "name: com.example.base\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: sleep 1000\n";
        let user = "name: com.example.user\nversion: 1.0.0\ndependencies:\n  com.example.base:\n    version: \">=1.0.0\"\nmanifests:\n  - lifecycle:\n      run: sleep 1000\n";
        f.deploy(
            "device:b1",
            &[
                ("base.yaml", base.to_string()),
                ("user.yaml", user.to_string()),
                ("a.yaml", recipe_text("com.example.a", "1.0.0", None)),
            ],
            &[],
        )?;
        let remove = |names: &[&str]| {
            f.store.create_deployment(
                &f.artifacts(),
                NewDeployment {
                    tenant: "acme",
                    target: Target::Device("b1".into()),
                    recipes: Vec::new(),
                    set: Vec::new(),
                    os: None,
                    artifacts: Vec::new(),
                    remove: names.iter().map(|n| n.to_string()).collect(),
                },
            )
        };
        let e = err_text(remove(&["com.example.base"]));
        assert!(
            e.contains("com.example.user") && e.contains("--remove com.example.user"),
            "{e}"
        );
        let e = err_text(remove(&["com.example.nothing"]));
        assert!(e.contains("com.example.nothing"), "{e}");
        assert!(remove(&["bad name"]).is_err());
        let view = remove(&["com.example.a"])?;
        assert_eq!(view.removed, vec!["com.example.a"]);
        assert!(view.components.is_empty());
        let desired = f.store.desired_state(&b1)?.ok_or("no desired state")?;
        assert!(!desired.components.contains_key("com.example.a"));
        assert_eq!(desired.changes, Some(vec!["com.example.a".to_string()]));
        assert_eq!(f.store.deployment(&view.id, None)?, Some(view));
        // Both at once is fine; a configuration push names only what it patches.
        remove(&["com.example.base", "com.example.user"])?;
        f.deploy(
            "device:b1",
            &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
            &[],
        )?;
        let pushed = f
            .store
            .push_config(&b1, &json!({"com.example.a": {"port": 1}}))?;
        assert_eq!(pushed.changes, Some(vec!["com.example.a".to_string()]));
        Ok(())
    }

    #[test]
    fn device_state_before_anything_happened() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let state = f.store.device_state(&b1)?;
        assert_eq!(
            state,
            DeviceState {
                device_id: b1,
                desired: None,
                reported: None,
                reported_at: None,
            }
        );
        assert!(matches!(
            f.store.device_state("dev_nope"),
            Err(StoreError::NotFound { what: "device", .. })
        ));
        Ok(())
    }
}
