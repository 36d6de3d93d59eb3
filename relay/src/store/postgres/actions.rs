//! Remote actions in PostgreSQL.
//!
//! Actions are handed out and listed in the order they were queued: by the table's `seq`
//! identity column, where SQLite uses its rowid (`created_at` has whole seconds only, and
//! several actions are often queued within one).

use std::collections::BTreeSet;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tether_protocol::fleet::{Action, ActionKind, ActionResult, ActionStatus};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, Row};

use super::devices::device_where;
use super::tenants::tenant_id;
use super::{PgStore, changes};
use crate::store::actions::{
    LIST_LIMIT, has_result, result_output, shown_status, status_as_str, validate,
};
use crate::store::devices::no_device;
use crate::store::{
    ActionStore, ActionView, Device, DeviceStore, StoreError, expires_after, now, random_hex,
    rfc3339_from_unix, unix_now,
};

/// The JSON document an action is stored as.
fn encode(action: &ActionKind) -> Result<String, StoreError> {
    serde_json::to_string(action).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// Decodes a stored action; one that does not decode is a damaged row.
fn decode(text: &str) -> Result<ActionKind, serde_json::Error> {
    serde_json::from_str(text)
}

/// The columns [`view_from_row`] reads, of `actions a` joined with its tenant and device.
const VIEW_SELECT: &str = "SELECT a.id, t.name, a.device_id, d.name, a.action, a.status, a.created_at, \
     a.expires_at, a.sent_at, a.finished_at, a.exit_code, a.output, a.truncated, a.error \
     FROM actions a JOIN tenants t ON t.id = a.tenant_id JOIN devices d ON d.id = a.device_id";

/// Reads an action, with the status it is shown with ([`shown_status`]).
fn view_from_row(r: &Row) -> Result<ActionView, StoreError> {
    let expires_at: Option<i64> = r.get(7);
    let status = shown_status(r.get::<_, &str>(5), expires_at);
    let id: String = r.get(0);
    let action = decode(r.get::<_, &str>(4)).map_err(|e| {
        StoreError::Backend(format!("action {id}: the stored action cannot be read: {e}").into())
    })?;
    Ok(ActionView {
        id,
        tenant: r.get(1),
        device_id: r.get(2),
        device_name: r.get(3),
        action,
        status,
        created_at: r.get(6),
        expires_at: expires_at.map(rfc3339_from_unix),
        sent_at: r.get(8),
        finished_at: r.get(9),
        // The relay stores only an i32 here; anything else is a damaged row, read as unknown.
        exit_code: r
            .get::<_, Option<i64>>(10)
            .and_then(|c| i32::try_from(c).ok()),
        output: r.get(11),
        truncated: r.get(12),
        error: r.get(13),
    })
}

/// One action, only of `tenant_id` when given.
async fn action_row(
    client: &impl GenericClient,
    id: &str,
    tenant_id: Option<i64>,
) -> Result<Option<ActionView>, StoreError> {
    let sql = format!("{VIEW_SELECT} WHERE a.id = $1 AND ($2::bigint IS NULL OR a.tenant_id = $2)");
    client
        .query_opt(&sql, &[&id, &tenant_id])
        .await?
        .map(|r| view_from_row(&r))
        .transpose()
}

/// A device of the tenant by id or name (an id wins over another device's name).
async fn tenant_device(
    client: &impl GenericClient,
    tenant_id: i64,
    key: &str,
) -> Result<Device, StoreError> {
    device_where(
        client,
        "d.tenant_id = $1 AND (d.name = $2 OR d.id = $2) ORDER BY (d.id = $2) DESC LIMIT 1",
        &[&tenant_id, &key],
    )
    .await?
    .ok_or_else(|| no_device(key))
}

impl ActionStore for PgStore {
    fn create_action(
        &self,
        tenant_id: Option<i64>,
        device: &str,
        action: &ActionKind,
        ttl: Option<Duration>,
    ) -> Result<ActionView, StoreError> {
        validate(action)?;
        let doc = encode(action)?;
        let key = device;
        // Outside the transaction: resolve_device waits for a connection of its own.
        let global = match tenant_id {
            Some(_) => None,
            None => Some(self.resolve_device(key)?),
        };
        let id = format!("act_{}", random_hex(6));
        let expires_at = expires_after(ttl);
        let (device_id, view) = self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let device = match (tenant_id, global) {
                (Some(tenant_id), _) => tenant_device(&tx, tenant_id, key).await?,
                (None, Some(d)) => d,
                (None, None) => {
                    return Err(no_device(key));
                }
            };
            // The foreign key locks the device row until commit, so a removal racing with
            // this insert either waits for it or makes it fail here.
            let inserted = tx
                .execute(
                    "INSERT INTO actions (id, tenant_id, device_id, action, status, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &id,
                        &device.tenant_id,
                        &device.id,
                        &doc,
                        &status_as_str(ActionStatus::Pending),
                        &now(),
                        &expires_at,
                    ],
                )
                .await;
            match inserted {
                Ok(_) => {}
                // The device was removed between resolving it and now.
                Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    return Err(no_device(key));
                }
                Err(e) => return Err(e.into()),
            }
            changes::record(&tx, &device.id).await?;
            let view = action_row(&tx, &id, None)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "action",
                    key: id.clone(),
                })?;
            tx.commit().await?;
            Ok((device.id, view))
        })?;
        self.notifier.notify(&device_id);
        Ok(view)
    }

    fn take_pending_actions(&self, device_id: &str) -> Result<Vec<Action>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let at = now();
            tx.execute(
                "UPDATE actions SET status = $2, finished_at = $3
                 WHERE device_id = $1 AND status = $4 AND expires_at IS NOT NULL AND expires_at <= $5",
                &[
                    &device_id,
                    &status_as_str(ActionStatus::Expired),
                    &at,
                    &status_as_str(ActionStatus::Pending),
                    &unix_now(),
                ],
            )
            .await?;
            // FOR UPDATE where SQLite takes an immediate transaction: a second take for the
            // same device (two control channels racing) waits for this one's commit, and then
            // finds these rows no longer pending, so each action is handed out once.
            let rows = tx
                .query(
                    "SELECT id, action FROM actions WHERE device_id = $1 AND status = $2
                     ORDER BY seq FOR UPDATE",
                    &[&device_id, &status_as_str(ActionStatus::Pending)],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.get(0);
                match decode(row.get::<_, &str>(1)) {
                    Ok(action) => out.push(Action { id, action }),
                    Err(e) => {
                        tracing::error!("action {id}: the stored action cannot be read: {e}");
                        tx.execute(
                            "UPDATE actions SET status = $2, finished_at = $3, error = $4 WHERE id = $1",
                            &[
                                &id,
                                &status_as_str(ActionStatus::Failed),
                                &at,
                                &format!("the stored action cannot be read: {e}"),
                            ],
                        )
                        .await?;
                    }
                }
            }
            let ids: Vec<&str> = out.iter().map(|a| a.id.as_str()).collect();
            if !ids.is_empty() {
                tx.execute(
                    "UPDATE actions SET status = $2, sent_at = $3 WHERE id = ANY($1)",
                    &[&ids, &status_as_str(ActionStatus::Running), &at],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    fn record_action_result(
        &self,
        device_id: &str,
        result: &ActionResult,
    ) -> Result<(), StoreError> {
        let (output, truncated) = result_output(result)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // FOR UPDATE where SQLite takes an immediate transaction: of two deliveries of the
            // same result racing, the second waits and then sees the first one's status.
            let status = tx
                .query_opt(
                    "SELECT status FROM actions WHERE id = $1 AND device_id = $2 FOR UPDATE",
                    &[&result.id, &device_id],
                )
                .await?;
            let Some(status) = status else {
                return Err(StoreError::NotFound {
                    what: "action",
                    key: result.id.clone(),
                });
            };
            if has_result(status.get::<_, &str>(0)) {
                return Ok(());
            }
            tx.execute(
                "UPDATE actions SET status = $2, finished_at = $3, exit_code = $4, output = $5,
                     truncated = $6, error = $7
                 WHERE id = $1",
                &[
                    &result.id,
                    &status_as_str(result.status),
                    &now(),
                    &result.exit_code.map(i64::from),
                    &output,
                    &truncated,
                    &result.error,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn requeue_running_actions(&self, device_id: &str) -> Result<u64, StoreError> {
        let n = self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE actions SET status = $2, sent_at = NULL WHERE device_id = $1 AND status = $3",
                    &[
                        &device_id,
                        &status_as_str(ActionStatus::Pending),
                        &status_as_str(ActionStatus::Running),
                    ],
                )
                .await?;
            if n > 0 {
                changes::record(&tx, device_id).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(n)
        })?;
        if n > 0 {
            self.notifier.notify(device_id);
        }
        Ok(n)
    }

    fn requeue_unsent_actions(&self, ids: &[String]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (n, devices) = self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // One statement for the whole batch; each row updated is one action requeued.
            let rows = tx
                .query(
                    "UPDATE actions SET status = $2, sent_at = NULL WHERE id = ANY($1) AND status = $3
                     RETURNING device_id",
                    &[
                        &ids,
                        &status_as_str(ActionStatus::Pending),
                        &status_as_str(ActionStatus::Running),
                    ],
                )
                .await?;
            let devices: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
            for device in &devices {
                changes::record(&tx, device).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>((rows.len() as u64, devices))
        })?;
        for device in &devices {
            self.notifier.notify(device);
        }
        Ok(n)
    }

    fn action(&self, id: &str, tenant_id: Option<i64>) -> Result<Option<ActionView>, StoreError> {
        self.block(async { action_row(&self.client().await?, id, tenant_id).await })
    }

    fn actions(
        &self,
        tenant: Option<&str>,
        device: Option<&str>,
    ) -> Result<Vec<ActionView>, StoreError> {
        // Without a tenant a device name is resolved across tenants, which waits for a
        // connection of its own.
        let resolved = match (tenant, device) {
            (None, Some(key)) => Some(self.resolve_device(key)?.id),
            _ => None,
        };
        self.block(async {
            let mut client = self.client().await?;
            // One snapshot for the lookups and the listing, as SQLite's read transaction.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let tenant_id = match tenant {
                Some(name) => Some(tenant_id(&tx, name).await?),
                None => None,
            };
            let device_id = match (resolved, tenant_id, device) {
                (Some(id), _, _) => Some(id),
                (None, Some(tenant_id), Some(key)) => {
                    Some(tenant_device(&tx, tenant_id, key).await?.id)
                }
                _ => None,
            };
            let sql = format!(
                "{VIEW_SELECT} WHERE ($1::bigint IS NULL OR a.tenant_id = $1)
                   AND ($2::text IS NULL OR a.device_id = $2)
                 ORDER BY a.seq DESC LIMIT $3"
            );
            let rows = tx
                .query(&sql, &[&tenant_id, &device_id, &LIST_LIMIT])
                .await?;
            let views = rows.iter().map(view_from_row).collect::<Result<_, _>>()?;
            tx.commit().await?;
            Ok(views)
        })
    }
}
