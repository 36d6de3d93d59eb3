//! Remote actions in the relay's store: commands to run, components to restart and reboots,
//! queued for one device each and carried out when its control channel is up.
//!
//! An action is `pending` until the control channel takes it ([`Store::take_pending_actions`],
//! which marks it `running`), and `succeeded` or `failed` once the device reports how it went
//! ([`Store::record_action_result`]). A pending action past its expiry becomes `expired`
//! instead of being sent. The agent keeps a result until it was delivered and sends it again
//! over the next channel, so recording a result is idempotent: a repeated result for an
//! action that already has one is ignored.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;
use tether_protocol::fleet::{Action, ActionKind, ActionResult, ActionStatus, MAX_ACTION_OUTPUT};

use super::{
    Device, Store, StoreError, device_where, now, random_hex, rfc3339_from_unix, tenant_id,
    unix_now,
};

/// Longest command of a `run` action, in bytes.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Longest time limit of a `run` action, in seconds (a day).
const MAX_TIMEOUT_SECS: u64 = 86_400;

/// Most actions a listing returns.
const LIST_LIMIT: i64 = 1000;

/// A stored action with its state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActionView {
    /// Id (`act_…`).
    pub id: String,
    /// Tenant name.
    pub tenant: String,
    /// Device id.
    pub device_id: String,
    /// Device name.
    pub device_name: String,
    /// What to do.
    pub action: ActionKind,
    /// Where it stands.
    pub status: ActionStatus,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    /// When it expires unless sent by then (RFC 3339); `None` never.
    pub expires_at: Option<String>,
    /// When it was sent to the device (RFC 3339).
    pub sent_at: Option<String>,
    /// When its result came, or when it expired (RFC 3339).
    pub finished_at: Option<String>,
    /// Exit code, for `run`.
    pub exit_code: Option<i32>,
    /// Output the device reported (stdout and stderr interleaved).
    pub output: Option<String>,
    /// Whether the output was cut at [`MAX_ACTION_OUTPUT`] bytes.
    pub truncated: bool,
    /// What went wrong, if it did.
    pub error: Option<String>,
}

fn status_as_str(status: ActionStatus) -> &'static str {
    match status {
        ActionStatus::Pending => "pending",
        ActionStatus::Running => "running",
        ActionStatus::Succeeded => "succeeded",
        ActionStatus::Failed => "failed",
        ActionStatus::Expired => "expired",
    }
}

/// Reads a stored status; the relay writes only the names above, anything else is a damaged
/// file and reads as failed (never as pending, which would send it).
fn status_parse(s: &str) -> ActionStatus {
    match s {
        "pending" => ActionStatus::Pending,
        "running" => ActionStatus::Running,
        "succeeded" => ActionStatus::Succeeded,
        "expired" => ActionStatus::Expired,
        _ => ActionStatus::Failed,
    }
}

/// Checks what an action asks for; errors name the offending field.
fn validate(action: &ActionKind) -> Result<(), StoreError> {
    match action {
        ActionKind::Run {
            command,
            timeout_secs,
        } => {
            if command.trim().is_empty() {
                return Err(StoreError::Invalid(
                    "the command of a run action must not be empty".into(),
                ));
            }
            if command.len() > MAX_COMMAND_BYTES {
                return Err(StoreError::Invalid(format!(
                    "the command of a run action is {} bytes, more than {MAX_COMMAND_BYTES}",
                    command.len()
                )));
            }
            if let Some(t) = timeout_secs
                && !(1..=MAX_TIMEOUT_SECS).contains(t)
            {
                return Err(StoreError::Invalid(format!(
                    "timeout_secs {t} of a run action must be between 1 and {MAX_TIMEOUT_SECS}"
                )));
            }
        }
        ActionKind::Restart { component } => {
            if component.trim().is_empty() {
                return Err(StoreError::Invalid(
                    "the component of a restart action must not be empty".into(),
                ));
            }
        }
        ActionKind::Reboot => {}
    }
    Ok(())
}

fn encode(action: &ActionKind) -> Result<String, StoreError> {
    serde_json::to_string(action)
        .map_err(|e| StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

/// Decodes a stored action; one that does not decode is a damaged file, reported like any
/// other value SQLite cannot convert.
fn decode(column: usize, text: &str) -> rusqlite::Result<ActionKind> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// `output` cut to at most `max` bytes at a character boundary; whether it was cut.
fn cap_output(output: &str, max: usize) -> (&str, bool) {
    if output.len() <= max {
        return (output, false);
    }
    let mut end = max;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    (&output[..end], true)
}

const VIEW_SELECT: &str = "SELECT a.id, t.name, a.device_id, d.name, a.action, a.status, a.created_at, \
     a.expires_at, a.sent_at, a.finished_at, a.exit_code, a.output, a.truncated, a.error \
     FROM actions a JOIN tenants t ON t.id = a.tenant_id JOIN devices d ON d.id = a.device_id";

/// Reads an action; a pending one past its expiry reads as expired even before
/// [`Store::take_pending_actions`] records that (the device may never connect again).
fn view_from_row(r: &Row<'_>) -> rusqlite::Result<ActionView> {
    let expires_at: Option<i64> = r.get(7)?;
    let mut status = status_parse(&r.get::<_, String>(5)?);
    if status == ActionStatus::Pending && expires_at.is_some_and(|e| e <= unix_now()) {
        status = ActionStatus::Expired;
    }
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
    .ok_or_else(|| StoreError::NotFound {
        what: "device",
        key: key.to_string(),
    })
}

impl Store {
    /// Queues an action for a device.
    ///
    /// With `tenant_id` the device (id or name) is looked up in that tenant only, and one of
    /// another tenant is not found; without it, the device is an id or a name unique across
    /// tenants (see [`Store::resolve_device`]). A `run` command must not be empty and at most
    /// 64 KiB, its `timeout_secs` 1 to 86400 when given; a `restart` must name a component.
    /// `ttl` is how long the action may wait for the device; `None` waits forever, and an
    /// action past it becomes `expired` instead of being sent.
    pub fn create_action(
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
        let expires_at = ttl
            .map(|ttl| unix_now().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)));
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let device = match (tenant_id, global) {
            (Some(tenant_id), _) => tenant_device(&tx, tenant_id, key)?,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(StoreError::NotFound {
                    what: "device",
                    key: key.to_string(),
                });
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
                return Err(StoreError::NotFound {
                    what: "device",
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let view = action_row(&tx, &id, None)?.ok_or_else(|| StoreError::NotFound {
            what: "action",
            key: id.clone(),
        })?;
        tx.commit()?;
        Ok(view)
    }

    /// The device's pending actions that have not expired, oldest first, to send now.
    ///
    /// In one transaction, pending actions past their expiry become `expired`, and the
    /// returned ones `running` with `sent_at` set: each action is handed out once. A stored
    /// action that no longer decodes is marked `failed` rather than blocking the others. An
    /// unknown device has no actions. The control channel calls this when a device connects
    /// and then every second.
    pub fn take_pending_actions(&self, device_id: &str) -> Result<Vec<Action>, StoreError> {
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

    /// Records how one of the device's actions ended.
    ///
    /// The status must be `succeeded` or `failed`. An action of another device, or one that
    /// does not exist, is not found. Output is kept up to [`MAX_ACTION_OUTPUT`] bytes (cut at
    /// a character boundary, and then marked truncated). A result for an action that already
    /// has one is ignored: the agent re-sends results it is not sure were delivered.
    pub fn record_action_result(
        &self,
        device_id: &str,
        result: &ActionResult,
    ) -> Result<(), StoreError> {
        if !matches!(
            result.status,
            ActionStatus::Succeeded | ActionStatus::Failed
        ) {
            return Err(StoreError::Invalid(format!(
                "the result of action {} has status {}; expected succeeded or failed",
                result.id, result.status
            )));
        }
        let (output, cut) = cap_output(&result.output, MAX_ACTION_OUTPUT);
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
        if matches!(
            status_parse(&status),
            ActionStatus::Succeeded | ActionStatus::Failed
        ) {
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
                result.truncated || cut,
                result.error
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Puts the device's `running` actions back to `pending` (clearing `sent_at`), so they are
    /// sent again; returns how many.
    ///
    /// Careful: the agent carries out each action it receives, it keeps no list of actions
    /// done. A requeued action that had already run runs again; a reboot that had rebooted
    /// the device (dropping the link before its result was delivered) reboots it again.
    pub fn requeue_running_actions(&self, device_id: &str) -> Result<u64, StoreError> {
        let n = self.conn().execute(
            "UPDATE actions SET status = ?2, sent_at = NULL WHERE device_id = ?1 AND status = ?3",
            params![
                device_id,
                status_as_str(ActionStatus::Pending),
                status_as_str(ActionStatus::Running)
            ],
        )?;
        Ok(n as u64)
    }

    /// Puts the given `running` actions back to `pending`: the ones taken for a device but
    /// never written to its channel (it closed part-way through a batch), which the device
    /// cannot have carried out.
    pub fn requeue_unsent_actions(&self, ids: &[String]) -> Result<u64, StoreError> {
        let conn = self.conn();
        let mut n = 0;
        for id in ids {
            n += conn.execute(
                "UPDATE actions SET status = ?2, sent_at = NULL WHERE id = ?1 AND status = ?3",
                params![
                    id,
                    status_as_str(ActionStatus::Pending),
                    status_as_str(ActionStatus::Running)
                ],
            )?;
        }
        Ok(n as u64)
    }

    /// The action `id`; with `tenant_id`, only if it belongs to that tenant.
    pub fn action(
        &self,
        id: &str,
        tenant_id: Option<i64>,
    ) -> Result<Option<ActionView>, StoreError> {
        action_row(&self.conn(), id, tenant_id)
    }

    /// Actions, newest first, at most 1000: optionally only of the tenant named `tenant`, and
    /// of one device (id or name; within `tenant` when given, else an id or a name unique
    /// across tenants). An unknown tenant or device is an error.
    pub fn actions(
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

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
    }

    impl Fixture {
        fn enroll(&self, tenant: &str, name: &str) -> Result<String, StoreError> {
            crate::store::test_support::enroll(&self.store, tenant, name)
        }

        fn tenant_id(&self, name: &str) -> Result<i64, Box<dyn std::error::Error>> {
            Ok(self.store.tenant_by_name(name)?.ok_or("no tenant")?.id)
        }
    }

    fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("relay.db"))?;
        store.add_tenant("acme")?;
        store.add_tenant("globex")?;
        Ok(Fixture { _dir: dir, store })
    }

    fn run(command: &str) -> ActionKind {
        ActionKind::Run {
            command: command.into(),
            timeout_secs: None,
        }
    }

    fn result(id: &str, status: ActionStatus, output: &str) -> ActionResult {
        ActionResult {
            id: id.into(),
            status,
            exit_code: Some(0),
            output: output.into(),
            truncated: false,
            error: None,
        }
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
        match r {
            Ok(v) => format!("unexpectedly ok: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn created_actions_are_taken_once_in_order_and_marked_running() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let b2 = f.enroll("acme", "b2")?;
        let first = f.store.create_action(None, "b1", &run("uptime"), None)?;
        assert!(
            first.id.starts_with("act_") && first.id.len() == 16,
            "{}",
            first.id
        );
        assert_eq!(
            (
                first.tenant.as_str(),
                first.device_id.as_str(),
                first.device_name.as_str()
            ),
            ("acme", b1.as_str(), "b1")
        );
        assert_eq!(first.status, ActionStatus::Pending);
        assert_eq!(
            (&first.expires_at, &first.sent_at, &first.finished_at),
            (&None, &None, &None)
        );
        let acme = f.tenant_id("acme")?;
        let second = f.store.create_action(
            Some(acme),
            &b1,
            &ActionKind::Restart {
                component: "com.example.app".into(),
            },
            Some(Duration::from_secs(3600)),
        )?;
        assert!(second.expires_at.is_some());
        let third = f
            .store
            .create_action(Some(acme), "b1", &ActionKind::Reboot, None)?;
        f.store.create_action(None, &b2, &run("other"), None)?;

        let taken = f.store.take_pending_actions(&b1)?;
        let ids: Vec<&str> = taken.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![first.id.as_str(), second.id.as_str(), third.id.as_str()]
        );
        assert_eq!(taken[0].action, run("uptime"));
        assert_eq!(taken[2].action, ActionKind::Reboot);
        for id in &ids {
            let view = f.store.action(id, None)?.ok_or("missing")?;
            assert_eq!(view.status, ActionStatus::Running);
            assert!(view.sent_at.is_some());
        }
        // Handed out once; the other device's action is untouched.
        assert!(f.store.take_pending_actions(&b1)?.is_empty());
        assert_eq!(f.store.take_pending_actions(&b2)?.len(), 1);
        assert!(f.store.take_pending_actions("dev_nope")?.is_empty());
        // Listing: newest first, by tenant and device.
        let listed = f.store.actions(Some("acme"), Some("b1"))?;
        let listed: Vec<&str> = listed.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            listed,
            vec![third.id.as_str(), second.id.as_str(), first.id.as_str()]
        );
        assert_eq!(f.store.actions(None, None)?.len(), 4);
        assert_eq!(f.store.actions(None, Some(&b2))?.len(), 1);
        assert!(f.store.actions(Some("globex"), None)?.is_empty());
        assert!(matches!(
            f.store.actions(Some("nope"), None),
            Err(StoreError::NotFound { what: "tenant", .. })
        ));
        assert!(matches!(
            f.store.actions(Some("globex"), Some(&b1)),
            Err(StoreError::NotFound { what: "device", .. })
        ));
        // Tenant scoping of one action.
        let globex = f.tenant_id("globex")?;
        assert_eq!(f.store.action(&first.id, Some(globex))?, None);
        assert!(f.store.action(&first.id, Some(acme))?.is_some());
        Ok(())
    }

    #[test]
    fn expired_actions_are_marked_and_not_sent() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let gone = f
            .store
            .create_action(None, &b1, &run("late"), Some(Duration::ZERO))?;
        let past =
            f.store
                .create_action(None, &b1, &run("later"), Some(Duration::from_secs(3600)))?;
        let fresh =
            f.store
                .create_action(None, &b1, &run("now"), Some(Duration::from_secs(3600)))?;
        f.store.conn().execute(
            "UPDATE actions SET expires_at = ?2 WHERE id = ?1",
            params![past.id, unix_now() - 10],
        )?;
        // Shown as expired already, before the device connects.
        let view = f.store.action(&past.id, None)?.ok_or("missing")?;
        assert_eq!(
            (view.status, view.finished_at),
            (ActionStatus::Expired, None)
        );
        assert_eq!(
            f.store.action(&fresh.id, None)?.map(|v| v.status),
            Some(ActionStatus::Pending)
        );
        let taken = f.store.take_pending_actions(&b1)?;
        assert_eq!(
            taken.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            vec![fresh.id.as_str()]
        );
        for id in [&gone.id, &past.id] {
            let view = f.store.action(id, None)?.ok_or("missing")?;
            assert_eq!(view.status, ActionStatus::Expired);
            assert!(view.finished_at.is_some() && view.sent_at.is_none());
        }
        Ok(())
    }

    #[test]
    fn results_are_recorded_capped_and_idempotent() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let ok = f.store.create_action(None, &b1, &run("echo hi"), None)?;
        let big = f.store.create_action(None, &b1, &run("yes"), None)?;
        f.store.take_pending_actions(&b1)?;
        f.store
            .record_action_result(&b1, &result(&ok.id, ActionStatus::Succeeded, "hi\n"))?;
        let view = f.store.action(&ok.id, None)?.ok_or("missing")?;
        assert_eq!(view.status, ActionStatus::Succeeded);
        assert_eq!(
            (view.exit_code, view.output.as_deref(), view.truncated),
            (Some(0), Some("hi\n"), false)
        );
        assert!(view.finished_at.is_some());
        // A repeated result changes nothing.
        f.store
            .record_action_result(&b1, &result(&ok.id, ActionStatus::Failed, "again"))?;
        assert_eq!(f.store.action(&ok.id, None)?, Some(view));

        // Over the limit, with a multi-byte character across the cut.
        let mut output = "x".repeat(MAX_ACTION_OUTPUT - 1);
        output.push('é');
        output.push_str("tail");
        let mut failed = result(&big.id, ActionStatus::Failed, &output);
        failed.exit_code = Some(2);
        failed.error = Some("exit status 2".into());
        f.store.record_action_result(&b1, &failed)?;
        let view = f.store.action(&big.id, None)?.ok_or("missing")?;
        assert_eq!(view.status, ActionStatus::Failed);
        let stored = view.output.ok_or("no output")?;
        assert_eq!(stored.len(), MAX_ACTION_OUTPUT - 1);
        assert!(stored.bytes().all(|b| b == b'x'));
        assert!(view.truncated);
        assert_eq!(
            (view.exit_code, view.error.as_deref()),
            (Some(2), Some("exit status 2"))
        );
        // A device may not report a status other than succeeded or failed.
        let again = f.store.create_action(None, &b1, &run("x"), None)?;
        let e = err_text(
            f.store
                .record_action_result(&b1, &result(&again.id, ActionStatus::Running, "")),
        );
        assert!(e.contains("succeeded or failed"), "{e}");
        Ok(())
    }

    #[test]
    fn a_result_for_another_devices_action_is_refused() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let b2 = f.enroll("acme", "b2")?;
        let g1 = f.enroll("globex", "g1")?;
        let a = f.store.create_action(None, &b1, &run("id"), None)?;
        f.store.take_pending_actions(&b1)?;
        for other in [&b2, &g1] {
            assert!(matches!(
                f.store
                    .record_action_result(other, &result(&a.id, ActionStatus::Succeeded, "")),
                Err(StoreError::NotFound { what: "action", .. })
            ));
        }
        assert!(matches!(
            f.store
                .record_action_result(&b1, &result("act_nope", ActionStatus::Succeeded, "")),
            Err(StoreError::NotFound { what: "action", .. })
        ));
        let view = f.store.action(&a.id, None)?.ok_or("missing")?;
        assert_eq!((view.status, view.output), (ActionStatus::Running, None));
        Ok(())
    }

    #[test]
    fn invalid_actions_and_devices_are_refused_by_name() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        f.enroll("globex", "g1")?;
        let cases = [
            (run(""), "command"),
            (run("  \n"), "command"),
            (run(&"x".repeat(MAX_COMMAND_BYTES + 1)), "command"),
            (
                ActionKind::Run {
                    command: "x".into(),
                    timeout_secs: Some(0),
                },
                "timeout_secs",
            ),
            (
                ActionKind::Run {
                    command: "x".into(),
                    timeout_secs: Some(MAX_TIMEOUT_SECS + 1),
                },
                "timeout_secs",
            ),
            (
                ActionKind::Restart {
                    component: " ".into(),
                },
                "component",
            ),
        ];
        for (action, field) in cases {
            let e = f.store.create_action(None, &b1, &action, None);
            assert!(matches!(e, Err(StoreError::Invalid(_))), "{action:?}");
            let e = err_text(e);
            assert!(e.contains(field), "{field}: {e}");
        }
        // The limits themselves are fine.
        f.store.create_action(
            None,
            &b1,
            &ActionKind::Run {
                command: "x".repeat(MAX_COMMAND_BYTES),
                timeout_secs: Some(MAX_TIMEOUT_SECS),
            },
            None,
        )?;
        // Another tenant's device is not found, by name or by id.
        let globex = f.tenant_id("globex")?;
        for key in ["b1", b1.as_str()] {
            assert!(matches!(
                f.store
                    .create_action(Some(globex), key, &ActionKind::Reboot, None),
                Err(StoreError::NotFound { what: "device", .. })
            ));
        }
        assert!(matches!(
            f.store
                .create_action(None, "nothing", &ActionKind::Reboot, None),
            Err(StoreError::NotFound { what: "device", .. })
        ));
        assert_eq!(f.store.actions(None, None)?.len(), 1);
        Ok(())
    }

    #[test]
    fn running_actions_are_requeued_and_sent_again() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let b2 = f.enroll("acme", "b2")?;
        let a = f.store.create_action(None, &b1, &run("a"), None)?;
        let done = f.store.create_action(None, &b1, &run("b"), None)?;
        let other = f.store.create_action(None, &b2, &run("c"), None)?;
        f.store.take_pending_actions(&b1)?;
        f.store.take_pending_actions(&b2)?;
        f.store
            .record_action_result(&b1, &result(&done.id, ActionStatus::Succeeded, ""))?;
        assert_eq!(f.store.requeue_running_actions(&b1)?, 1);
        let view = f.store.action(&a.id, None)?.ok_or("missing")?;
        assert_eq!((view.status, view.sent_at), (ActionStatus::Pending, None));
        let view = f.store.action(&done.id, None)?.ok_or("missing")?;
        assert_eq!(view.status, ActionStatus::Succeeded);
        let view = f.store.action(&other.id, None)?.ok_or("missing")?;
        assert_eq!(view.status, ActionStatus::Running);
        let again = f.store.take_pending_actions(&b1)?;
        assert_eq!(
            again.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            vec![a.id.as_str()]
        );
        assert_eq!(f.store.requeue_running_actions("dev_nope")?, 0);
        // A result arriving after a requeue (the device had done it) is still recorded.
        f.store.requeue_running_actions(&b1)?;
        f.store
            .record_action_result(&b1, &result(&a.id, ActionStatus::Succeeded, "late"))?;
        assert!(f.store.take_pending_actions(&b1)?.is_empty());
        Ok(())
    }

    #[test]
    fn an_unreadable_stored_action_fails_without_blocking_the_others() -> TestResult {
        let f = fixture()?;
        let b1 = f.enroll("acme", "b1")?;
        let broken = f.store.create_action(None, &b1, &run("a"), None)?;
        let fine = f.store.create_action(None, &b1, &run("b"), None)?;
        f.store.conn().execute(
            "UPDATE actions SET action = '{\"kind\":\"dance\"}' WHERE id = ?1",
            params![broken.id],
        )?;
        let taken = f.store.take_pending_actions(&b1)?;
        assert_eq!(
            taken.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            vec![fine.id.as_str()]
        );
        let status: String = f.store.conn().query_row(
            "SELECT status FROM actions WHERE id = ?1",
            params![broken.id],
            |r| r.get(0),
        )?;
        assert_eq!(status, "failed");
        Ok(())
    }

    #[test]
    fn output_is_cut_at_a_character_boundary() {
        assert_eq!(cap_output("abc", 3), ("abc", false));
        assert_eq!(cap_output("abcd", 3), ("abc", true));
        assert_eq!(cap_output("aé", 2), ("a", true));
        assert_eq!(cap_output("", 0), ("", false));
    }
}
