//! Fleet state in the relay's store: artifacts, device tags, deployments, and each device's
//! desired and reported state.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tether_protocol::fleet::{DeploymentStatus, DesiredComponent, DesiredState, ReportedState};
use tether_protocol::recipe::{self, ArtifactUri, Recipe};

use super::artifacts::artifact_row;
use super::changes;
use super::devices::{device_where, devices_where};
use super::tenants::{tenant_by_name, tenant_id};
use crate::store::artifacts::check_artifact_name;
use crate::store::fleet::{
    deployment_configurations, hard_dependency, recipe_artifact_name, supplied_key,
    validate_component_name,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use crate::store::{
    ArtifactStore, DeploymentDevice, DeploymentView, Device, DeviceState, DeviceStatus, FleetStore,
    NewAudit, NewDeployment, StoreError, Target, now, random_hex, validate_name,
};

/// A stored JSON document that does not decode: a damaged file, reported like any other
/// value SQLite cannot convert.
fn decode<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::from(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            Box::new(e),
        ))
    })
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::from(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
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

/// Writes a device's desired state and records the change for the change feed, inside the
/// caller's transaction; the caller notifies the device once it committed.
fn save_desired(
    conn: &Connection,
    device_id: &str,
    state: &DesiredState,
) -> Result<(), StoreError> {
    changes::record(conn, device_id)?;
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

impl FleetStore for SqliteStore {
    fn set_tags(
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

    fn device_tags(&self, device_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        device_exists(&conn, device_id)?;
        tags_of(&conn, device_id)
    }

    fn create_deployment(
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
        for device in &devices {
            self.notifier.notify(&device.id);
        }
        Ok(view)
    }

    fn deployment(
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

    fn deployments(&self, tenant: Option<&str>) -> Result<Vec<DeploymentView>, StoreError> {
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

    fn desired_state(&self, device_id: &str) -> Result<Option<DesiredState>, StoreError> {
        load_desired(&self.conn(), device_id)
    }

    fn record_report(&self, device_id: &str, report: &ReportedState) -> Result<(), StoreError> {
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
                    NewAudit {
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

    fn device_state(&self, device_id: &str) -> Result<DeviceState, StoreError> {
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

    fn push_config(&self, device_id: &str, overrides: &Value) -> Result<DesiredState, StoreError> {
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
        self.notifier.notify(device_id);
        Ok(desired)
    }
}
