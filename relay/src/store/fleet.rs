//! Fleet state in the relay's store: artifacts, device tags, deployments, and each device's
//! desired and reported state.
//!
//! A deployment resolves its target (one device, or every accepted device of the tenant with
//! a tag) once, when it is created, and merges its components into each target device's
//! desired state in a single transaction: a deployed component replaces the one of the same
//! name, the others stay. Every change of a desired state increments its version; the device
//! applies each version once and reports how it went, which updates the deployment's row for
//! that device when the report is about the version the deployment produced.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;
use tether_protocol::fleet::{
    DeploymentStatus, DesiredComponent, DesiredOs, DesiredState, ReportedState,
};
use tether_protocol::recipe::{self, ArtifactUri, Recipe};

use super::artifacts::{artifact_path, check_artifact_name};
use super::{StoreError, validate_name};

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
/// [`FleetStore::push_config`]). Every assignment must name its component.
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
pub(crate) fn split_assignment(assignment: &str) -> Result<(Option<&str>, String), StoreError> {
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
pub(crate) fn deployment_configurations(
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

/// The supplied file's own key (borrowed from the deployment, not from the recipe).
pub(crate) fn supplied_key<'a>(supplied: &BTreeMap<&'a str, &[u8]>, name: &str) -> &'a str {
    supplied
        .get_key_value(name)
        .map(|(k, _)| *k)
        .unwrap_or_default()
}

/// Checks a component name given to remove: what a recipe's `name` may be.
pub(crate) fn validate_component_name(name: &str) -> Result<(), StoreError> {
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
pub(crate) fn hard_dependency(
    artifacts_dir: &Path,
    component: &DesiredComponent,
    name: &str,
) -> bool {
    let Some(path) = artifact_path(artifacts_dir, &component.recipe_sha256) else {
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
pub(crate) fn recipe_artifact_name(file: &str, recipe: &Recipe) -> String {
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

/// Fleet state: device tags, deployments, and each device's desired and reported state.
///
/// Every write that changes a device's desired state notifies that device (see [`super::notify`]).
pub trait FleetStore {
    /// Adds and removes tags of a device in one transaction; returns its tags after, sorted.
    fn set_tags(
        &self,
        device_id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError>;

    /// A device's tags, sorted.
    fn device_tags(&self, device_id: &str) -> Result<Vec<String>, StoreError>;

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
    fn create_deployment(
        &self,
        artifacts_dir: &Path,
        new: NewDeployment<'_>,
    ) -> Result<DeploymentView, StoreError>;

    /// The deployment `id`; with `tenant_id`, only if it belongs to that tenant.
    fn deployment(
        &self,
        id: &str,
        tenant_id: Option<i64>,
    ) -> Result<Option<DeploymentView>, StoreError>;

    /// Deployments, optionally of one tenant, oldest first.
    fn deployments(&self, tenant: Option<&str>) -> Result<Vec<DeploymentView>, StoreError>;

    /// What the relay wants the device to run, if anything was ever deployed to it.
    fn desired_state(&self, device_id: &str) -> Result<Option<DesiredState>, StoreError>;

    /// Records a device's report. When it names a deployment and a status, the deployment's
    /// row for this device takes that status and message, but only if the report is about the
    /// version that deployment produced: a report about an older version must not mark a newer
    /// deployment, nor one about a newer version an older deployment.
    fn record_report(&self, device_id: &str, report: &ReportedState) -> Result<(), StoreError>;

    /// A device's desired and reported state.
    fn device_state(&self, device_id: &str) -> Result<DeviceState, StoreError>;

    /// Pushes configuration to one device: `overrides` (a JSON object of component name →
    /// configuration patch) is merged (RFC 7386: null deletes) into the configuration
    /// overrides of each named component of its desired state; the version increases and the
    /// state no longer belongs to a deployment. A component the device is not meant to run
    /// is an error naming it. Returns the new desired state.
    fn push_config(&self, device_id: &str, overrides: &Value) -> Result<DesiredState, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let e = bad
                .parse::<Target>()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
