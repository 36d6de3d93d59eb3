//! Fleet state in the relay's store: artifacts, device tags, deployments, and each device's
//! desired and reported state.
//!
//! A deployment resolves its target (one device, or every accepted device of the tenant with
//! a tag) once, when it is created, and merges its components into each target device's
//! desired state in a single transaction: a deployed component replaces the one of the same
//! name, the others stay. Every change of a desired state increments its version; the device
//! applies each version once and reports how it went, which updates the deployment's row for
//! that device when the report is about the version the deployment produced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tether_protocol::fleet::{
    DeploymentStatus, DesiredComponent, DesiredOs, DesiredState, ReportedState,
};
use tether_protocol::recipe::{self, ArtifactUri, Recipe};

use super::artifacts::{artifact_path, check_artifact_name};
use super::devices::no_device;
use super::{ArtifactStore, Device, NewAudit, StoreError, Tenant, validate_name};

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

/// Reads a stored status; the relay writes only the names above, anything else is damaged
/// and reads as failed rather than as a success.
pub(crate) fn status_parse(s: &str) -> DeploymentStatus {
    match s {
        "pending" => DeploymentStatus::Pending,
        "downloading" => DeploymentStatus::Downloading,
        "installing" => DeploymentStatus::Installing,
        "succeeded" => DeploymentStatus::Succeeded,
        "rolled-back" => DeploymentStatus::RolledBack,
        _ => DeploymentStatus::Failed,
    }
}

/// A desired-state version as stored: both backends keep it in a signed 64-bit column.
pub(crate) fn version_to_sql(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Invalid(format!("desired-state version {version} is too large")))
}

/// Checks the tags of a tag change before anything is written.
pub(crate) fn check_tag_change(add: &[String], remove: &[String]) -> Result<(), StoreError> {
    for tag in add.iter().chain(remove) {
        validate_name("tag", tag)?;
    }
    if let Some(both) = add.iter().find(|t| remove.contains(t)) {
        return Err(StoreError::Invalid(format!(
            "tag {both:?} is both added and removed"
        )));
    }
    Ok(())
}

/// A deployment checked, with its supplied artifacts and its recipes stored: what is left is
/// to resolve its target and write it to its devices, in the backend's own transaction.
pub(crate) struct PlannedDeployment<'a> {
    /// The deployment's tenant.
    pub(crate) tenant: Tenant,
    /// What it deploys, by component name.
    pub(crate) components: BTreeMap<String, DesiredComponent>,
    /// What it removes, sorted, once each.
    pub(crate) removed: Vec<String>,
    /// The names it adds, changes or removes, sorted (the desired state's `changes`).
    pub(crate) changes: Vec<String>,
    /// The rest of the request.
    pub(crate) new: &'a NewDeployment<'a>,
}

/// Checks a deployment's recipes, artifacts, assignments and removals, and stores through
/// `store` the artifacts supplied and the recipes (rewritten to name supplied files on the
/// relay); nothing else is written yet. `has_artifact(tenant id, digest)` says whether the
/// tenant stored an artifact.
pub(crate) fn plan_deployment<'a, S>(
    store: &S,
    artifacts_dir: &Path,
    tenant: Tenant,
    new: &'a NewDeployment<'a>,
    has_artifact: impl Fn(i64, &str) -> Result<bool, StoreError>,
) -> Result<PlannedDeployment<'a>, StoreError>
where
    S: ArtifactStore + ?Sized,
{
    if new.recipes.is_empty() && new.os.is_none() && new.remove.is_empty() {
        return Err(StoreError::Invalid(
            "a deployment needs at least one recipe, a component to remove or an OS bundle".into(),
        ));
    }
    if let Some(os) = &new.os
        && !has_artifact(tenant.id, &os.bundle_sha256)?
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
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let mut parsed: Vec<(&str, String, Recipe)> = Vec::new();
    for (file, text) in &new.recipes {
        let mut r =
            recipe::parse(text, Path::new(file)).map_err(|e| StoreError::Invalid(e.to_string()))?;
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
                        if !has_artifact(tenant.id, sha256)? {
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
                                store.put_artifact(artifacts_dir, &tenant.name, &name, data)?;
                                used.insert(supplied_key(&supplied, &name));
                            }
                            None => {
                                if !has_artifact(tenant.id, &artifact.sha256)? {
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
        let stored = store.put_artifact(
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
    Ok(PlannedDeployment {
        tenant,
        components,
        removed,
        changes,
        new,
    })
}

impl PlannedDeployment<'_> {
    /// The deployment's target as recorded, and its devices, from what the backend found for
    /// it: the device with that id or name (at most one), or the tenant's accepted devices
    /// with the tag (none is an error).
    pub(crate) fn resolve_target(
        &self,
        found: Vec<Device>,
    ) -> Result<(String, Vec<Device>), StoreError> {
        match &self.new.target {
            Target::Device(key) => match found.into_iter().next() {
                Some(d) => Ok((format!("device:{}", d.id), vec![d])),
                None => Err(no_device(key)),
            },
            Target::Tag(tag) if found.is_empty() => Err(StoreError::Invalid(format!(
                "no device of tenant {} has tag {tag}",
                self.tenant.name
            ))),
            Target::Tag(tag) => Ok((format!("tag:{tag}"), found)),
        }
    }

    /// Whether the backend needs each device's reported state for [`Self::check_removals`].
    pub(crate) fn removes(&self) -> bool {
        !self.removed.is_empty()
    }

    /// Checks the removals against the target's devices and their desired and reported states
    /// (in the same order): a removal must be about something, a component desired on (or reported by) at
    /// least one device of `target`, and none may leave a component there without a hard
    /// dependency it needs.
    pub(crate) fn check_removals(
        &self,
        artifacts_dir: &Path,
        target: &str,
        devices: &[Device],
        states: &[(DesiredState, Option<ReportedState>)],
    ) -> Result<(), StoreError> {
        for name in &self.removed {
            let mut known = false;
            for (device, (desired, reported)) in devices.iter().zip(states) {
                known |= desired.components.contains_key(name)
                    || reported
                        .as_ref()
                        .is_some_and(|r| r.components.iter().any(|c| c.name == *name));
                for (other, component) in &desired.components {
                    if self.removed.contains(other) || self.components.contains_key(other) {
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
        Ok(())
    }

    /// A device's desired state once deployment `id` is merged into it: its components
    /// replace those of the same name, its removals go, and the version moves on.
    pub(crate) fn desired_after(&self, mut desired: DesiredState, id: &str) -> DesiredState {
        for (name, component) in &self.components {
            desired.components.insert(name.clone(), component.clone());
        }
        for name in &self.removed {
            desired.components.remove(name);
        }
        desired.changes = Some(self.changes.clone());
        if let Some(os) = &self.new.os {
            desired.os = Some(os.clone());
        }
        desired.deployment_id = Some(id.to_string());
        desired.version += 1;
        desired
    }
}

/// An OS version that changed between two reports of a device: an installed update (or a
/// fallback to the other slot), which the audit trail keeps.
pub(crate) struct OsInstalled {
    actor: String,
    detail: Value,
}

impl OsInstalled {
    /// The change from the report stored before (`before`, its JSON text) to `report`, if
    /// the OS version changed; a stored report that does not read counts as no version.
    pub(crate) fn between(
        device_id: &str,
        before: &str,
        report: &ReportedState,
    ) -> Option<OsInstalled> {
        let old_os = serde_json::from_str::<ReportedState>(before)
            .ok()
            .and_then(|r| r.os_version);
        let new_os = report.os_version.as_ref()?;
        (old_os.as_ref() != Some(new_os)).then(|| OsInstalled {
            actor: format!("device:{device_id}"),
            detail: serde_json::json!({
                "from": old_os,
                "to": new_os,
                "deployment": report.deployment_id,
            }),
        })
    }

    /// The audit entry for device `device_id` of `tenant`.
    pub(crate) fn audit<'a>(&'a self, tenant: &'a str, device_id: &'a str) -> NewAudit<'a> {
        NewAudit {
            tenant: Some(tenant),
            actor: &self.actor,
            action: "ota.installed",
            target: Some(device_id),
            source: None,
            detail: self.detail.clone(),
        }
    }
}

impl DeviceState {
    /// A device's states as read, the reported one with the time it was reported.
    pub(crate) fn of(
        device_id: &str,
        desired: Option<DesiredState>,
        reported: Option<(ReportedState, String)>,
    ) -> DeviceState {
        let (reported, reported_at) = reported.unzip();
        DeviceState {
            device_id: device_id.to_string(),
            desired,
            reported,
            reported_at,
        }
    }
}

/// The configuration patches of a push, by component name, once checked to be a JSON object
/// naming at least one component.
pub(crate) fn config_patches(
    overrides: &Value,
) -> Result<&serde_json::Map<String, Value>, StoreError> {
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
    Ok(patches)
}

/// Merges the patches of a push into device `device_id`'s desired state, which then no
/// longer belongs to a deployment and has the next version.
pub(crate) fn push_into(
    desired: &mut DesiredState,
    device_id: &str,
    patches: &serde_json::Map<String, Value>,
) -> Result<(), StoreError> {
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
    Ok(())
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
