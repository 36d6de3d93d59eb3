//! Fleet state in the relay's store: artifacts, device tags, deployments, and each device's
//! desired and reported state.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tether_protocol::fleet::{DeploymentStatus, DesiredState, ReportedState};

use super::artifacts::artifact_row;
use super::changes;
use super::devices::{device_where, devices_where};
use super::tenants::{tenant_by_name, tenant_id};
use crate::store::devices::no_device;
use crate::store::fleet::{
    OsInstalled, check_tag_change, config_patches, plan_deployment, push_into, status_parse,
    version_to_sql,
};
use crate::store::tenants::no_tenant;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use crate::store::{
    DeploymentDevice, DeploymentView, DeviceState, DeviceStatus, FleetStore, NewDeployment,
    StoreError, Target, now, random_hex,
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

fn device_exists(conn: &Connection, device_id: &str) -> Result<(), StoreError> {
    let found: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM devices WHERE id = ?1",
            params![device_id],
            |r| r.get(0),
        )
        .optional()?;
    found.map(|_| ()).ok_or_else(|| no_device(device_id))
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
        check_tag_change(add, remove)?;
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
            tenant_by_name(&self.conn(), new.tenant)?.ok_or_else(|| no_tenant(new.tenant))?;
        let plan = plan_deployment(self, artifacts_dir, tenant, &new, |tenant_id, sha256| {
            Ok(artifact_row(&self.conn(), tenant_id, sha256)?.is_some())
        })?;
        let tenant = &plan.tenant;

        let id = format!("dep_{}", random_hex(6));
        let created_at = now();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = match &new.target {
            Target::Device(key) => device_where(
                &tx,
                "d.tenant_id = ?1 AND (d.name = ?2 OR d.id = ?2) ORDER BY d.id = ?2 DESC LIMIT 1",
                params![tenant.id, key],
            )?
            .into_iter()
            .collect(),
            Target::Tag(tag) => devices_where(
                &tx,
                "d.tenant_id = ?1 AND d.status = ?2 AND EXISTS
                     (SELECT 1 FROM device_tags g WHERE g.device_id = d.id AND g.tag = ?3)",
                params![tenant.id, DeviceStatus::Accepted.as_str(), tag],
            )?,
        };
        let (target, devices) = plan.resolve_target(found)?;
        tx.execute(
            "INSERT INTO deployments (id, tenant_id, target, components, removed, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                tenant.id,
                target,
                encode(&plan.components)?,
                encode(&plan.removed)?,
                created_at
            ],
        )?;
        let mut states = Vec::with_capacity(devices.len());
        for device in &devices {
            let desired = load_desired(&tx, &device.id)?.unwrap_or_default();
            let reported = if plan.removes() {
                load_reported(&tx, &device.id)?
            } else {
                None
            };
            states.push((desired, reported));
        }
        plan.check_removals(artifacts_dir, &target, &devices, &states)?;
        for (device, (desired, _)) in devices.iter().zip(states) {
            let desired = plan.desired_after(desired, &id);
            save_desired(&tx, &device.id, &desired)?;
            tx.execute(
                "INSERT INTO deployment_devices (deployment_id, device_id, desired_version, status, message, updated_at)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
                params![
                    id,
                    device.id,
                    version_to_sql(desired.version)?,
                    DeploymentStatus::Pending.as_str(),
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
        if let Some((doc, tenant)) = before
            && let Some(installed) = OsInstalled::between(device_id, &doc, report)
        {
            super::audit::append(&tx, installed.audit(&tenant, device_id))?;
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
                    status.as_str(),
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
        let reported = match reported {
            Some((doc, at)) => Some((decode::<ReportedState>(&doc)?, at)),
            None => None,
        };
        Ok(DeviceState::of(device_id, desired, reported))
    }

    fn push_config(&self, device_id: &str, overrides: &Value) -> Result<DesiredState, StoreError> {
        let patches = config_patches(overrides)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        device_exists(&tx, device_id)?;
        let mut desired = load_desired(&tx, device_id)?.unwrap_or_default();
        push_into(&mut desired, device_id, patches)?;
        save_desired(&tx, device_id, &desired)?;
        tx.commit()?;
        self.notifier.notify(device_id);
        Ok(desired)
    }
}
