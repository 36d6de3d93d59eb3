//! Fleet state in PostgreSQL: device tags, deployments, and each device's desired and reported
//! state.
//!
//! Where SQLite serializes a read-then-write with an immediate transaction (a desired state
//! read, changed and written back with the next version; a report compared with the last
//! one), this backend locks the row of each device concerned first ([`lock_devices`]), so
//! two relays writing for one device take turns and neither writes over what the other
//! wrote. Reads that take several statements read one snapshot ([`snapshot`]).

use std::path::Path;

use deadpool_postgres::{GenericClient, Transaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tether_protocol::fleet::{DeploymentStatus, DesiredState, ReportedState};
use tokio_postgres::IsolationLevel;

use super::artifacts::artifact_row;
use super::devices::{device_where, devices_where};
use super::tenants::{tenant_by_name, tenant_id};
use super::{PgStore, changes};
use crate::store::devices::no_device;
use crate::store::fleet::{
    OsInstalled, PlannedDeployment, check_tag_change, config_patches, plan_deployment, push_into,
    status_parse, version_to_sql,
};
use crate::store::tenants::no_tenant;
use crate::store::{
    DeploymentDevice, DeploymentView, Device, DeviceState, DeviceStatus, FleetStore, NewDeployment,
    StoreError, Target, now, random_hex,
};

/// A stored JSON document that does not decode: a damaged row, reported as the backend's
/// failure like any other value it cannot read.
fn decode<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// A document as the JSON text it is stored as.
fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// NotFound unless device `device_id` exists.
async fn device_exists(client: &impl GenericClient, device_id: &str) -> Result<(), StoreError> {
    client
        .query_opt("SELECT 1 FROM devices WHERE id = $1", &[&device_id])
        .await?
        .map(|_| ())
        .ok_or_else(|| no_device(device_id))
}

/// Locks the rows of devices `ids` until the caller's transaction ends, in one order (by id)
/// so that two transactions locking several never wait for each other in a circle; returns
/// how many exist. This is what SQLite's immediate transactions do here: a second writer for
/// one of these devices (another relay, the admin CLI) waits for this one to commit and then
/// reads what it wrote. `FOR NO KEY UPDATE` leaves the rows free for what only needs the
/// device to exist (a new action or session row referring to it) and for reads.
async fn lock_devices(client: &impl GenericClient, ids: &[&str]) -> Result<usize, StoreError> {
    let rows = client
        .query(
            "SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            &[&ids],
        )
        .await?;
    Ok(rows.len())
}

/// Locks device `device_id`'s row (see [`lock_devices`]); NotFound if there is none.
async fn lock_device(client: &impl GenericClient, device_id: &str) -> Result<(), StoreError> {
    match lock_devices(client, &[device_id]).await? {
        0 => Err(no_device(device_id)),
        _ => Ok(()),
    }
}

/// A transaction that reads one snapshot of the database throughout, for reads that take
/// several statements (SQLite's read transaction); it writes nothing.
async fn snapshot(client: &mut deadpool_postgres::Client) -> Result<Transaction<'_>, StoreError> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The tags of device `device_id`, in byte order.
async fn tags_of(client: &impl GenericClient, device_id: &str) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT tag FROM device_tags WHERE device_id = $1 ORDER BY tag",
            &[&device_id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Device `device_id`'s desired state, if anything was ever deployed to it.
async fn load_desired(
    client: &impl GenericClient,
    device_id: &str,
) -> Result<Option<DesiredState>, StoreError> {
    client
        .query_opt(
            "SELECT doc FROM desired_state WHERE device_id = $1",
            &[&device_id],
        )
        .await?
        .map(|r| decode(r.get::<_, &str>(0)))
        .transpose()
}

/// What device `device_id` reported last, if it ever did.
async fn load_reported(
    client: &impl GenericClient,
    device_id: &str,
) -> Result<Option<ReportedState>, StoreError> {
    client
        .query_opt(
            "SELECT doc FROM reported_state WHERE device_id = $1",
            &[&device_id],
        )
        .await?
        .map(|r| decode(r.get::<_, &str>(0)))
        .transpose()
}

/// Writes a device's desired state and records the change for the change feed, inside the
/// caller's transaction; the caller notifies the device once it committed.
async fn save_desired(
    client: &impl GenericClient,
    device_id: &str,
    state: &DesiredState,
) -> Result<(), StoreError> {
    changes::record(client, device_id).await?;
    client
        .execute(
            "INSERT INTO desired_state (device_id, version, doc, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (device_id) DO UPDATE
                 SET version = excluded.version, doc = excluded.doc, updated_at = excluded.updated_at",
            &[
                &device_id,
                &version_to_sql(state.version)?,
                &encode(state)?,
                &now(),
            ],
        )
        .await?;
    Ok(())
}

/// One deployment, only of `tenant_id` when given.
async fn deployment_row(
    client: &impl GenericClient,
    id: &str,
    tenant_id: Option<i64>,
) -> Result<Option<DeploymentView>, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT p.id, t.name, p.target, p.created_at, p.components, p.removed
             FROM deployments p JOIN tenants t ON t.id = p.tenant_id
             WHERE p.id = $1 AND ($2::bigint IS NULL OR p.tenant_id = $2)",
            &[&id, &tenant_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let id: String = row.get(0);
    let devices = client
        .query(
            "SELECT x.device_id, d.name, x.status, x.message, x.updated_at
             FROM deployment_devices x JOIN devices d ON d.id = x.device_id
             WHERE x.deployment_id = $1 ORDER BY d.name, d.id",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| DeploymentDevice {
            device_id: r.get(0),
            device_name: r.get(1),
            status: status_parse(r.get::<_, &str>(2)),
            message: r.get(3),
            updated_at: r.get(4),
        })
        .collect();
    Ok(Some(DeploymentView {
        id,
        tenant: row.get(1),
        target: row.get(2),
        created_at: row.get(3),
        components: decode(row.get::<_, &str>(4))?,
        removed: decode(row.get::<_, &str>(5))?,
        devices,
    }))
}

impl PgStore {
    /// Whether tenant `tenant_id` stored artifact `sha256`.
    fn has_artifact(&self, tenant_id: i64, sha256: &str) -> Result<bool, StoreError> {
        self.block(async {
            Ok(artifact_row(&self.client().await?, tenant_id, sha256)
                .await?
                .is_some())
        })
    }

    /// Checks a deployment and stores its supplied artifacts and recipes; nothing else is
    /// written yet (see [`PgStore::write_deployment`]).
    fn plan_deployment<'a>(
        &self,
        artifacts_dir: &Path,
        new: &'a NewDeployment<'a>,
    ) -> Result<PlannedDeployment<'a>, StoreError> {
        let tenant = self
            .block(async { tenant_by_name(&self.client().await?, new.tenant).await })?
            .ok_or_else(|| no_tenant(new.tenant))?;
        plan_deployment(self, artifacts_dir, tenant, new, |tenant_id, sha256| {
            self.has_artifact(tenant_id, sha256)
        })
    }

    /// Resolves a planned deployment's target and writes it, and each target device's new
    /// desired state, in one transaction; returns the deployment and its devices (for the
    /// caller to notify once committed).
    async fn write_deployment(
        &self,
        artifacts_dir: &Path,
        plan: &PlannedDeployment<'_>,
    ) -> Result<(DeploymentView, Vec<Device>), StoreError> {
        let tenant = &plan.tenant;
        let id = format!("dep_{}", random_hex(6));
        let created_at = now();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let found = match &plan.new.target {
            Target::Device(key) => device_where(
                &tx,
                "d.tenant_id = $1 AND (d.name = $2 OR d.id = $2) ORDER BY d.id = $2 DESC LIMIT 1",
                &[&tenant.id, key],
            )
            .await?
            .into_iter()
            .collect(),
            Target::Tag(tag) => {
                devices_where(
                    &tx,
                    "d.tenant_id = $1 AND d.status = $2 AND EXISTS
                         (SELECT 1 FROM device_tags g WHERE g.device_id = d.id AND g.tag = $3)",
                    &[&tenant.id, &DeviceStatus::Accepted.as_str(), tag],
                )
                .await?
            }
        };
        let (target, devices) = plan.resolve_target(found)?;
        // Each target device's desired state is read and written back with the next version
        // below: its row stays locked until the commit, so that a concurrent deployment or
        // configuration push for it waits and then builds on this one.
        let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
        lock_devices(&tx, &ids).await?;
        tx.execute(
            "INSERT INTO deployments (id, tenant_id, target, components, removed, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &tenant.id,
                &target,
                &encode(&plan.components)?,
                &encode(&plan.removed)?,
                &created_at,
            ],
        )
        .await?;
        let mut states = Vec::with_capacity(devices.len());
        for device in &devices {
            let desired = load_desired(&tx, &device.id).await?.unwrap_or_default();
            let reported = if plan.removes() {
                load_reported(&tx, &device.id).await?
            } else {
                None
            };
            states.push((desired, reported));
        }
        plan.check_removals(artifacts_dir, &target, &devices, &states)?;
        for (device, (desired, _)) in devices.iter().zip(states) {
            let desired = plan.desired_after(desired, &id);
            save_desired(&tx, &device.id, &desired).await?;
            tx.execute(
                "INSERT INTO deployment_devices (deployment_id, device_id, desired_version, status, message, updated_at)
                 VALUES ($1, $2, $3, $4, NULL, $5)",
                &[
                    &id,
                    &device.id,
                    &version_to_sql(desired.version)?,
                    &DeploymentStatus::Pending.as_str(),
                    &created_at,
                ],
            )
            .await?;
        }
        let view = deployment_row(&tx, &id, None)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "deployment",
                key: id.clone(),
            })?;
        tx.commit().await?;
        Ok((view, devices))
    }
}

impl FleetStore for PgStore {
    fn set_tags(
        &self,
        device_id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError> {
        check_tag_change(add, remove)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Locked so that the tags returned are the ones this change left, not a mix
            // with a concurrent change's.
            lock_device(&tx, device_id).await?;
            tx.execute(
                "INSERT INTO device_tags (device_id, tag) SELECT $1, unnest($2::text[])
                 ON CONFLICT DO NOTHING",
                &[&device_id, &add],
            )
            .await?;
            tx.execute(
                "DELETE FROM device_tags WHERE device_id = $1 AND tag = ANY($2)",
                &[&device_id, &remove],
            )
            .await?;
            let tags = tags_of(&tx, device_id).await?;
            tx.commit().await?;
            Ok(tags)
        })
    }

    fn device_tags(&self, device_id: &str) -> Result<Vec<String>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            device_exists(&tx, device_id).await?;
            let tags = tags_of(&tx, device_id).await?;
            tx.commit().await?;
            Ok(tags)
        })
    }

    fn create_deployment(
        &self,
        artifacts_dir: &Path,
        new: NewDeployment<'_>,
    ) -> Result<DeploymentView, StoreError> {
        let plan = self.plan_deployment(artifacts_dir, &new)?;
        let (view, devices) = self.block(self.write_deployment(artifacts_dir, &plan))?;
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
        self.block(async {
            let mut client = self.client().await?;
            // The deployment and its rows from one snapshot.
            let tx = snapshot(&mut client).await?;
            let view = deployment_row(&tx, id, tenant_id).await?;
            tx.commit().await?;
            Ok(view)
        })
    }

    fn deployments(&self, tenant: Option<&str>) -> Result<Vec<DeploymentView>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let tenant_id = match tenant {
                Some(name) => Some(tenant_id(&tx, name).await?),
                None => None,
            };
            // Oldest first (`seq`), as SQLite lists them by rowid.
            let ids: Vec<String> = tx
                .query(
                    "SELECT id FROM deployments WHERE $1::bigint IS NULL OR tenant_id = $1
                     ORDER BY seq",
                    &[&tenant_id],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(view) = deployment_row(&tx, &id, None).await? {
                    out.push(view);
                }
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    fn desired_state(&self, device_id: &str) -> Result<Option<DesiredState>, StoreError> {
        self.block(async { load_desired(&self.client().await?, device_id).await })
    }

    fn record_report(&self, device_id: &str, report: &ReportedState) -> Result<(), StoreError> {
        let version = version_to_sql(report.version)?;
        let doc = encode(report)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Locked so that two reports of one device racing (a reconnect through another
            // relay) compare with each other's OS version, not both with the one before.
            lock_device(&tx, device_id).await?;
            let at = now();
            // An OS version that changed since the last report is an installed update (or a
            // fallback to the other slot): the audit trail keeps it.
            let before = tx
                .query_opt(
                    "SELECT r.doc, t.name FROM reported_state r JOIN devices d ON d.id = r.device_id
                     JOIN tenants t ON t.id = d.tenant_id WHERE r.device_id = $1",
                    &[&device_id],
                )
                .await?;
            if let Some(row) = before
                && let Some(installed) =
                    OsInstalled::between(device_id, row.get::<_, &str>(0), report)
            {
                let tenant: String = row.get(1);
                super::audit::append(&tx, installed.audit(&tenant, device_id)).await?;
            }
            tx.execute(
                "INSERT INTO reported_state (device_id, doc, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (device_id) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
                &[&device_id, &doc, &at],
            )
            .await?;
            if let (Some(deployment), Some(status)) = (&report.deployment_id, report.status) {
                // Unchanged status and message keep their time: updated_at says when it changed.
                tx.execute(
                    "UPDATE deployment_devices SET status = $3, message = $4, updated_at = $5
                     WHERE deployment_id = $1 AND device_id = $2 AND desired_version = $6
                       AND (status IS DISTINCT FROM $3 OR message IS DISTINCT FROM $4)",
                    &[
                        deployment,
                        &device_id,
                        &status.as_str(),
                        &report.message,
                        &at,
                        &version,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn device_state(&self, device_id: &str) -> Result<DeviceState, StoreError> {
        let (desired, reported) = self.block(async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            device_exists(&tx, device_id).await?;
            let desired = load_desired(&tx, device_id).await?;
            let reported: Option<(String, String)> = tx
                .query_opt(
                    "SELECT doc, updated_at FROM reported_state WHERE device_id = $1",
                    &[&device_id],
                )
                .await?
                .map(|r| (r.get(0), r.get(1)));
            tx.commit().await?;
            Ok::<_, StoreError>((desired, reported))
        })?;
        let reported = match reported {
            Some((doc, at)) => Some((decode::<ReportedState>(&doc)?, at)),
            None => None,
        };
        Ok(DeviceState::of(device_id, desired, reported))
    }

    fn push_config(&self, device_id: &str, overrides: &Value) -> Result<DesiredState, StoreError> {
        let patches = config_patches(overrides)?;
        let desired = self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // The desired state is read, patched and written back with the next version:
            // locked so that a concurrent deployment or push waits and builds on this one.
            lock_device(&tx, device_id).await?;
            let mut desired = load_desired(&tx, device_id).await?.unwrap_or_default();
            push_into(&mut desired, device_id, patches)?;
            save_desired(&tx, device_id, &desired).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(desired)
        })?;
        self.notifier.notify(device_id);
        Ok(desired)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;
    use tether_protocol::fleet::{DesiredComponent, DesiredState};

    use super::super::{PgStore, test_server};
    use super::save_desired;
    use crate::store::{FleetStore, TenantStore, now};

    /// Configuration pushes for one device from several threads (several relays) take turns:
    /// each builds on the one before, so no version is handed out twice and none is lost.
    #[test]
    fn concurrent_pushes_to_one_device_each_get_their_own_version()
    -> Result<(), Box<dyn std::error::Error>> {
        let db = test_server::Database::create()?;
        let store = PgStore::open(&db.url, 8)?;
        let tenant = store.add_tenant("acme")?;
        let mut desired = DesiredState {
            version: 1,
            ..Default::default()
        };
        desired.components.insert(
            "com.example.a".into(),
            DesiredComponent {
                version: "1.0.0".into(),
                recipe_sha256: "0".repeat(64),
                configuration: json!({}),
            },
        );
        store.block(async {
            let client = store.client().await?;
            client
                .execute(
                    "INSERT INTO devices (id, tenant_id, name, public_key, fingerprint, status, created_at)
                     VALUES ('dev_1', $1, 'b1', 'key', 'fp', 'accepted', $2)",
                    &[&tenant.id, &now()],
                )
                .await?;
            save_desired(&client, "dev_1", &desired).await
        })?;
        let versions = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let store = &store;
                    s.spawn(move || {
                        (0..10)
                            .map(|i| {
                                store
                                    .push_config(
                                        "dev_1",
                                        &json!({"com.example.a": {"t": t, "i": i}}),
                                    )
                                    .map(|d| d.version)
                            })
                            .collect::<Result<Vec<u64>, _>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().map_err(|_| "a pushing thread panicked"))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut all = BTreeSet::new();
        for v in versions {
            all.extend(v?);
        }
        assert_eq!(all, (2..=41).collect::<BTreeSet<u64>>());
        assert_eq!(store.desired_state("dev_1")?.map(|d| d.version), Some(41));
        Ok(())
    }
}
