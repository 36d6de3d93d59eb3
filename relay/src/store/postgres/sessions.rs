//! Engineers' sessions in PostgreSQL.

use tokio_postgres::Row;

use super::{PgStore, to_i64};
use crate::store::{
    NewSession, SessionEnd, SessionQuery, SessionRecord, SessionStore, StoreError, now, random_hex,
};

/// The columns [`session_from_row`] reads, of `sessions s JOIN tenants t`.
const SESSION_COLUMNS: &str = "s.id, t.name, s.device_id, s.device_name, s.engineer, \
    s.fingerprint, s.source, s.kind, s.command, s.term, s.width, s.height, s.started_at, \
    s.ended_at, s.end_reason, s.exit_status, s.exit_signal, s.bytes_in, s.bytes_out, \
    s.cast_file, s.files";

/// A stored count that the relay wrote from a u32; anything else is a damaged row, read as
/// unknown.
fn u32_column(r: &Row, i: usize) -> Option<u32> {
    r.get::<_, Option<i64>>(i)
        .and_then(|v| u32::try_from(v).ok())
}

/// A session and the name of its cast file from a row of [`SESSION_COLUMNS`].
fn session_from_row(r: &Row) -> (SessionRecord, Option<String>) {
    let cast_file: Option<String> = r.get(19);
    (
        SessionRecord {
            id: r.get(0),
            tenant: r.get(1),
            device_id: r.get(2),
            device: r.get(3),
            engineer: r.get(4),
            fingerprint: r.get(5),
            source: r.get(6),
            kind: r.get(7),
            command: r.get(8),
            term: r.get(9),
            width: u32_column(r, 10),
            height: u32_column(r, 11),
            started_at: r.get(12),
            ended_at: r.get(13),
            end_reason: r.get(14),
            exit_status: u32_column(r, 15),
            exit_signal: r.get(16),
            bytes_in: r.get::<_, i64>(17).max(0) as u64,
            bytes_out: r.get::<_, i64>(18).max(0) as u64,
            recorded: cast_file.is_some(),
            files: serde_json::from_str(r.get::<_, &str>(20)).unwrap_or(serde_json::Value::Null),
        },
        cast_file,
    )
}

impl SessionStore for PgStore {
    fn open_session(&self, s: NewSession<'_>) -> Result<String, StoreError> {
        let id = format!("ses_{}", random_hex(8));
        self.block(async {
            self.client()
                .await?
                .execute(
                    "INSERT INTO sessions (id, tenant_id, device_id, device_name, engineer, fingerprint,
                         source, started_at, started_ms, relay)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &id,
                        &s.tenant_id,
                        &s.device_id,
                        &s.device_name,
                        &s.engineer,
                        &s.fingerprint,
                        &s.source,
                        &now(),
                        &tether_protocol::clock::now_ms(),
                        &self.relay_id(),
                    ],
                )
                .await?;
            Ok::<_, StoreError>(())
        })?;
        Ok(id)
    }

    fn describe_session(
        &self,
        id: &str,
        kind: &str,
        command: Option<&str>,
        cast_file: Option<&str>,
    ) -> Result<(), StoreError> {
        self.block(async {
            // Only while it runs: a late description does not reopen an ended session.
            self.client()
                .await?
                .execute(
                    "UPDATE sessions SET kind = $2, command = $3, cast_file = $4
                     WHERE id = $1 AND ended_at IS NULL",
                    &[&id, &kind, &command, &cast_file],
                )
                .await?;
            Ok(())
        })
    }

    fn close_session(&self, id: &str, end: &SessionEnd) -> Result<(), StoreError> {
        let files = if end.files.is_null() {
            "[]".to_string()
        } else {
            end.files.to_string()
        };
        self.block(async {
            self.client()
                .await?
                .execute(
                    "UPDATE sessions SET kind = $2, command = $3, term = $4, width = $5, height = $6,
                         ended_at = $7, end_reason = $8, exit_status = $9, exit_signal = $10,
                         bytes_in = $11, bytes_out = $12, cast_file = $13, files = $14
                     WHERE id = $1",
                    &[
                        &id,
                        &end.kind,
                        &end.command,
                        &end.term,
                        &end.width.map(i64::from),
                        &end.height.map(i64::from),
                        &now(),
                        &end.reason,
                        &end.exit_status.map(i64::from),
                        &end.exit_signal,
                        &to_i64(end.bytes_in),
                        &to_i64(end.bytes_out),
                        &end.cast_file,
                        &files,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn close_interrupted_sessions(&self) -> Result<usize, StoreError> {
        let n = self.block(async {
            self.client()
                .await?
                .execute(
                    "UPDATE sessions SET ended_at = $1, end_reason = 'interrupted' WHERE ended_at IS NULL",
                    &[&now()],
                )
                .await
                .map_err(StoreError::from)
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn sessions(&self, q: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
        self.block(async {
            // Sessions opened in the same millisecond come by id, where SQLite takes its
            // rowid: an order, if not the order they opened in.
            let rows = self
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions s JOIN tenants t ON t.id = s.tenant_id
                         WHERE ($1::bigint IS NULL OR s.tenant_id = $1)
                           AND ($2::text IS NULL OR s.device_id = $2)
                           AND ($3::text IS NULL OR s.engineer = $3)
                         ORDER BY s.started_ms DESC, s.seq DESC LIMIT $4"
                    ),
                    &[&q.tenant_id, &q.device_id, &q.engineer, &to_i64(q.limit)],
                )
                .await?;
            Ok(rows.iter().map(|r| session_from_row(r).0).collect())
        })
    }

    fn session(
        &self,
        id: &str,
        tenant_id: Option<i64>,
    ) -> Result<(SessionRecord, Option<String>), StoreError> {
        self.block(async {
            self.client()
                .await?
                .query_opt(
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions s JOIN tenants t ON t.id = s.tenant_id
                         WHERE s.id = $1 AND ($2::bigint IS NULL OR s.tenant_id = $2)"
                    ),
                    &[&id, &tenant_id],
                )
                .await?
                .map(|r| session_from_row(&r))
                .ok_or_else(|| StoreError::NotFound {
                    what: "session",
                    key: id.to_string(),
                })
        })
    }

    fn expire_sessions(&self) -> Result<Vec<String>, StoreError> {
        self.block(async {
            // One statement deletes the rows and names their cast files, so no session is
            // deleted without its file being named (SQLite reads then deletes in a transaction).
            let rows = self
                .client()
                .await?
                .query(
                    "DELETE FROM sessions
                     WHERE started_ms < $1 - 86400000 * (
                             SELECT session_retention_days FROM tenants WHERE tenants.id = sessions.tenant_id)
                       AND ended_at IS NOT NULL
                     RETURNING cast_file",
                    &[&tether_protocol::clock::now_ms()],
                )
                .await?;
            Ok(rows
                .iter()
                .filter_map(|r| r.get::<_, Option<String>>(0))
                .collect())
        })
    }

    fn set_session_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        self.set_tenant_days(tenant, "session_retention_days", "session retention", days)
    }
}
