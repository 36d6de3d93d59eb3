//! Remote actions in SQLite.

use std::time::Duration;

use tether_protocol::fleet::{Action, ActionKind, ActionResult, ActionStatus};

use super::changes;
use super::devices::device_where;
use super::tenants::tenant_id;
use crate::store::actions::{
    LIST_LIMIT, has_result, result_output, shown_status, status_as_str, validate,
};
use crate::store::devices::no_device;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::SqliteStore;
use crate::store::{
    ActionStore, ActionView, Device, DeviceStore, StoreError, expires_after, now, random_hex,
    rfc3339_from_unix, unix_now,
};

fn encode(action: &ActionKind) -> Result<String, StoreError> {
    serde_json::to_string(action)
        .map_err(|e| StoreError::from(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

/// Decodes a stored action; one that does not decode is a damaged file, reported like any
/// other value SQLite cannot convert.
fn decode(column: usize, text: &str) -> rusqlite::Result<ActionKind> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

const VIEW_SELECT: &str = "SELECT a.id, t.name, a.device_id, d.name, a.action, a.status, a.created_at, \
     a.expires_at, a.sent_at, a.finished_at, a.exit_code, a.output, a.truncated, a.error \
     FROM actions a JOIN tenants t ON t.id = a.tenant_id JOIN devices d ON d.id = a.device_id";

/// Reads an action, with the status it is shown with ([`shown_status`]).
fn view_from_row(r: &Row<'_>) -> rusqlite::Result<ActionView> {
    let expires_at: Option<i64> = r.get(7)?;
    let status = shown_status(&r.get::<_, String>(5)?, expires_at);
    Ok(ActionView {
        id: r.get(0)?,
        tenant: r.get(1)?,
        device_id: r.get(2)?,
        device_name: r.get(3)?,
        action: decode(4, &r.get::<_, String>(4)?)?,
        status,
        created_at: r.get(6)?,
        expires_at: expires_at.map(rfc3339_from_unix),
        sent_at: r.get(8)?,
        finished_at: r.get(9)?,
        exit_code: r.get(10)?,
        output: r.get(11)?,
        truncated: r.get(12)?,
        error: r.get(13)?,
    })
}

/// One action, only of `tenant_id` when given.
fn action_row(
    conn: &Connection,
    id: &str,
    tenant_id: Option<i64>,
) -> Result<Option<ActionView>, StoreError> {
    let sql = format!("{VIEW_SELECT} WHERE a.id = ?1 AND (?2 IS NULL OR a.tenant_id = ?2)");
    Ok(conn
        .query_row(&sql, params![id, tenant_id], view_from_row)
        .optional()?)
}

/// A device of the tenant by id or name (an id wins over another device's name).
fn tenant_device(conn: &Connection, tenant_id: i64, key: &str) -> Result<Device, StoreError> {
    device_where(
        conn,
        "d.tenant_id = ?1 AND (d.name = ?2 OR d.id = ?2) ORDER BY d.id = ?2 DESC LIMIT 1",
        params![tenant_id, key],
    )?
    .ok_or_else(|| no_device(key))
}

impl ActionStore for SqliteStore {
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
        // Before taking the connection: resolve_device takes it itself.
        let global = match tenant_id {
            Some(_) => None,
            None => Some(self.resolve_device(key)?),
        };
        let id = format!("act_{}", random_hex(6));
        let expires_at = expires_after(ttl);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let device = match (tenant_id, global) {
            (Some(tenant_id), _) => tenant_device(&tx, tenant_id, key)?,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(no_device(key));
            }
        };
        let inserted = tx.execute(
            "INSERT INTO actions (id, tenant_id, device_id, action, status, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                device.tenant_id,
                device.id,
                doc,
                status_as_str(ActionStatus::Pending),
                now(),
                expires_at
            ],
        );
        match inserted {
            Ok(_) => {}
            // The device was removed between resolving it and now.
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(no_device(key));
            }
            Err(e) => return Err(e.into()),
        }
        changes::record(&tx, &device.id)?;
        let view = action_row(&tx, &id, None)?.ok_or_else(|| StoreError::NotFound {
            what: "action",
            key: id.clone(),
        })?;
        tx.commit()?;
        self.notifier.notify(&device.id);
        Ok(view)
    }

    fn take_pending_actions(&self, device_id: &str) -> Result<Vec<Action>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        tx.execute(
            "UPDATE actions SET status = ?2, finished_at = ?3
             WHERE device_id = ?1 AND status = ?4 AND expires_at IS NOT NULL AND expires_at <= ?5",
            params![
                device_id,
                status_as_str(ActionStatus::Expired),
                at,
                status_as_str(ActionStatus::Pending),
                unix_now()
            ],
        )?;
        let rows: Vec<(String, String)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, action FROM actions WHERE device_id = ?1 AND status = ?2 ORDER BY rowid",
            )?;
            let rows = stmt.query_map(
                params![device_id, status_as_str(ActionStatus::Pending)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, doc) in rows {
            match decode(1, &doc) {
                Ok(action) => {
                    tx.execute(
                        "UPDATE actions SET status = ?2, sent_at = ?3 WHERE id = ?1",
                        params![id, status_as_str(ActionStatus::Running), at],
                    )?;
                    out.push(Action { id, action });
                }
                Err(e) => {
                    tracing::error!("action {id}: the stored action cannot be read: {e}");
                    tx.execute(
                        "UPDATE actions SET status = ?2, finished_at = ?3, error = ?4 WHERE id = ?1",
                        params![
                            id,
                            status_as_str(ActionStatus::Failed),
                            at,
                            format!("the stored action cannot be read: {e}")
                        ],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn record_action_result(
        &self,
        device_id: &str,
        result: &ActionResult,
    ) -> Result<(), StoreError> {
        let (output, truncated) = result_output(result)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status: Option<String> = tx
            .query_row(
                "SELECT status FROM actions WHERE id = ?1 AND device_id = ?2",
                params![result.id, device_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(status) = status else {
            return Err(StoreError::NotFound {
                what: "action",
                key: result.id.clone(),
            });
        };
        if has_result(&status) {
            return Ok(());
        }
        tx.execute(
            "UPDATE actions SET status = ?2, finished_at = ?3, exit_code = ?4, output = ?5,
                 truncated = ?6, error = ?7
             WHERE id = ?1",
            params![
                result.id,
                status_as_str(result.status),
                now(),
                result.exit_code,
                output,
                truncated,
                result.error
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn requeue_running_actions(&self, device_id: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE actions SET status = ?2, sent_at = NULL WHERE device_id = ?1 AND status = ?3",
            params![
                device_id,
                status_as_str(ActionStatus::Pending),
                status_as_str(ActionStatus::Running)
            ],
        )?;
        if n > 0 {
            changes::record(&tx, device_id)?;
        }
        tx.commit()?;
        drop(conn);
        if n > 0 {
            self.notifier.notify(device_id);
        }
        Ok(n as u64)
    }

    fn requeue_unsent_actions(&self, ids: &[String]) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        let mut devices = std::collections::BTreeSet::new();
        for id in ids {
            let device: Option<String> = tx
                .query_row(
                    "UPDATE actions SET status = ?2, sent_at = NULL WHERE id = ?1 AND status = ?3
                     RETURNING device_id",
                    params![
                        id,
                        status_as_str(ActionStatus::Pending),
                        status_as_str(ActionStatus::Running)
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(device) = device {
                n += 1;
                devices.insert(device);
            }
        }
        for device in &devices {
            changes::record(&tx, device)?;
        }
        tx.commit()?;
        drop(conn);
        for device in &devices {
            self.notifier.notify(device);
        }
        Ok(n)
    }

    fn action(&self, id: &str, tenant_id: Option<i64>) -> Result<Option<ActionView>, StoreError> {
        action_row(&self.conn(), id, tenant_id)
    }

    fn actions(
        &self,
        tenant: Option<&str>,
        device: Option<&str>,
    ) -> Result<Vec<ActionView>, StoreError> {
        // Without a tenant a device name is resolved across tenants, which takes the
        // connection itself.
        let resolved = match (tenant, device) {
            (None, Some(key)) => Some(self.resolve_device(key)?.id),
            _ => None,
        };
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let tenant_id = tenant.map(|name| tenant_id(&tx, name)).transpose()?;
        let device_id = match (resolved, tenant_id, device) {
            (Some(id), _, _) => Some(id),
            (None, Some(tenant_id), Some(key)) => Some(tenant_device(&tx, tenant_id, key)?.id),
            _ => None,
        };
        let views = {
            let sql = format!(
                "{VIEW_SELECT} WHERE (?1 IS NULL OR a.tenant_id = ?1) AND (?2 IS NULL OR a.device_id = ?2)
                 ORDER BY a.rowid DESC LIMIT ?3"
            );
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map(params![tenant_id, device_id, LIST_LIMIT], view_from_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(views)
    }
}
