//! Engineers' sessions in SQLite.

use rusqlite::{Row, params};

use super::SqliteStore;
use crate::store::{
    NewSession, SessionEnd, SessionQuery, SessionRecord, SessionStore, StoreError, now, random_hex,
};

const SESSION_COLUMNS: &str = "s.id, t.name, s.device_id, s.device_name, s.engineer, \
    s.fingerprint, s.source, s.kind, s.command, s.term, s.width, s.height, s.started_at, \
    s.ended_at, s.end_reason, s.exit_status, s.exit_signal, s.bytes_in, s.bytes_out, \
    s.cast_file, s.files";

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<(SessionRecord, Option<String>)> {
    let files: String = r.get(20)?;
    let cast_file: Option<String> = r.get(19)?;
    Ok((
        SessionRecord {
            id: r.get(0)?,
            tenant: r.get(1)?,
            device_id: r.get(2)?,
            device: r.get(3)?,
            engineer: r.get(4)?,
            fingerprint: r.get(5)?,
            source: r.get(6)?,
            kind: r.get(7)?,
            command: r.get(8)?,
            term: r.get(9)?,
            width: r.get(10)?,
            height: r.get(11)?,
            started_at: r.get(12)?,
            ended_at: r.get(13)?,
            end_reason: r.get(14)?,
            exit_status: r.get(15)?,
            exit_signal: r.get(16)?,
            bytes_in: r.get::<_, i64>(17)?.max(0) as u64,
            bytes_out: r.get::<_, i64>(18)?.max(0) as u64,
            recorded: cast_file.is_some(),
            files: serde_json::from_str(&files).unwrap_or(serde_json::Value::Null),
        },
        cast_file,
    ))
}

impl SessionStore for SqliteStore {
    fn open_session(&self, s: NewSession<'_>) -> Result<String, StoreError> {
        let id = format!("ses_{}", random_hex(8));
        self.conn().execute(
            "INSERT INTO sessions (id, tenant_id, device_id, device_name, engineer, fingerprint,
                 source, started_at, started_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                id,
                s.tenant_id,
                s.device_id,
                s.device_name,
                s.engineer,
                s.fingerprint,
                s.source,
                now(),
                tether_protocol::clock::now_ms()
            ],
        )?;
        Ok(id)
    }

    fn describe_session(
        &self,
        id: &str,
        kind: &str,
        command: Option<&str>,
        cast_file: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sessions SET kind = ?2, command = ?3, cast_file = ?4
             WHERE id = ?1 AND ended_at IS NULL",
            params![id, kind, command, cast_file],
        )?;
        Ok(())
    }

    fn close_session(&self, id: &str, end: &SessionEnd) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sessions SET kind = ?2, command = ?3, term = ?4, width = ?5, height = ?6,
                 ended_at = ?7, end_reason = ?8, exit_status = ?9, exit_signal = ?10,
                 bytes_in = ?11, bytes_out = ?12, cast_file = ?13, files = ?14
             WHERE id = ?1",
            params![
                id,
                end.kind,
                end.command,
                end.term,
                end.width,
                end.height,
                now(),
                end.reason,
                end.exit_status,
                end.exit_signal,
                end.bytes_in as i64,
                end.bytes_out as i64,
                end.cast_file,
                if end.files.is_null() {
                    "[]".to_string()
                } else {
                    end.files.to_string()
                },
            ],
        )?;
        Ok(())
    }

    fn close_interrupted_sessions(&self) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE sessions SET ended_at = ?1, end_reason = 'interrupted' WHERE ended_at IS NULL",
            params![now()],
        )?)
    }

    fn sessions(&self, q: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s JOIN tenants t ON t.id = s.tenant_id
             WHERE (?1 IS NULL OR s.tenant_id = ?1) AND (?2 IS NULL OR s.device_id = ?2)
               AND (?3 IS NULL OR s.engineer = ?3)
             ORDER BY s.started_ms DESC, s.rowid DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![q.tenant_id, q.device_id, q.engineer, q.limit as i64],
            session_from_row,
        )?;
        Ok(rows.map(|r| r.map(|(s, _)| s)).collect::<Result<_, _>>()?)
    }

    fn session(
        &self,
        id: &str,
        tenant_id: Option<i64>,
    ) -> Result<(SessionRecord, Option<String>), StoreError> {
        let conn = self.conn();
        let found = conn.query_row(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s JOIN tenants t ON t.id = s.tenant_id
                 WHERE s.id = ?1 AND (?2 IS NULL OR s.tenant_id = ?2)"
            ),
            params![id, tenant_id],
            session_from_row,
        );
        match found {
            Ok(v) => Ok(v),
            Err(rusqlite::Error::QueryReturnedNoRows) => Err(StoreError::NotFound {
                what: "session",
                key: id.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn expire_sessions(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let cutoff = "started_ms < ?1 - 86400000 * (
                 SELECT session_retention_days FROM tenants WHERE tenants.id = sessions.tenant_id)
             AND ended_at IS NOT NULL";
        let casts: Vec<String> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT cast_file FROM sessions WHERE cast_file IS NOT NULL AND {cutoff}"
            ))?;
            let rows = stmt.query_map(params![tether_protocol::clock::now_ms()], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        tx.execute(
            &format!("DELETE FROM sessions WHERE {cutoff}"),
            params![tether_protocol::clock::now_ms()],
        )?;
        tx.commit()?;
        Ok(casts)
    }

    fn set_session_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        self.set_tenant_days(tenant, "session_retention_days", "session retention", days)
    }
}
