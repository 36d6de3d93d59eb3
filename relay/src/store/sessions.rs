//! Engineers' relay-terminated sessions: who opened what on which device, when, and how it
//! ended. The terminal recording itself is an asciicast file beside the store
//! (`<data_dir>/sessions/<id>.cast`); its row here says where it is.
//!
//! A row is written when the session opens and completed when it closes, so a relay that dies
//! mid-session leaves a row without an end, which the next start closes as `interrupted`.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Row, params};
use serde::Serialize;

use super::{Store, StoreError, now, random_hex};

/// A recorded session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionRecord {
    /// Stable id (`ses_…`).
    pub id: String,
    /// Tenant name.
    pub tenant: String,
    /// Device id.
    pub device_id: String,
    /// Device name when the session opened.
    pub device: String,
    /// Engineer's user name.
    pub engineer: String,
    /// Fingerprint of the key the engineer logged in with.
    pub fingerprint: String,
    /// The engineer's address.
    pub source: String,
    /// `shell`, `exec`, `sftp` or `subsystem:<name>`; absent until the client asked.
    pub kind: Option<String>,
    /// The command of an exec.
    pub command: Option<String>,
    /// Terminal type, when a pty was requested.
    pub term: Option<String>,
    /// Terminal columns at the start.
    pub width: Option<u32>,
    /// Terminal rows at the start.
    pub height: Option<u32>,
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339); absent while it runs.
    pub ended_at: Option<String>,
    /// `exited` (the device's process ended), `engineer disconnected`, `relay stopped`,
    /// `interrupted` (the relay died before the end).
    pub end_reason: Option<String>,
    /// Exit status of the remote process.
    pub exit_status: Option<u32>,
    /// Signal that ended the remote process.
    pub exit_signal: Option<String>,
    /// Bytes from the engineer to the device.
    pub bytes_in: u64,
    /// Bytes from the device to the engineer.
    pub bytes_out: u64,
    /// Whether a terminal recording (asciicast) exists.
    pub recorded: bool,
    /// File operations of an sftp session.
    pub files: serde_json::Value,
}

/// What is known when a session opens.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// Tenant id.
    pub tenant_id: i64,
    /// Device id.
    pub device_id: &'a str,
    /// Device name.
    pub device_name: &'a str,
    /// Engineer's user name.
    pub engineer: &'a str,
    /// Key fingerprint.
    pub fingerprint: &'a str,
    /// Engineer's address.
    pub source: &'a str,
}

/// What is known when a session ends.
#[derive(Debug, Clone, Default)]
pub struct SessionEnd {
    /// Session kind.
    pub kind: Option<String>,
    /// Exec command.
    pub command: Option<String>,
    /// Terminal type.
    pub term: Option<String>,
    /// Columns at the start.
    pub width: Option<u32>,
    /// Rows at the start.
    pub height: Option<u32>,
    /// How it ended.
    pub reason: String,
    /// Remote exit status.
    pub exit_status: Option<u32>,
    /// Remote exit signal.
    pub exit_signal: Option<String>,
    /// Bytes engineer → device.
    pub bytes_in: u64,
    /// Bytes device → engineer.
    pub bytes_out: u64,
    /// Name of the cast file in the sessions directory.
    pub cast_file: Option<String>,
    /// File operations (JSON array).
    pub files: serde_json::Value,
}

/// Which sessions to list.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Only this tenant's.
    pub tenant_id: Option<i64>,
    /// Only this device's (id).
    pub device_id: Option<String>,
    /// Only this engineer's.
    pub engineer: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

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

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Records that a session opened; returns its id.
    pub fn open_session(&self, s: NewSession<'_>) -> Result<String, StoreError> {
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
                unix_ms()
            ],
        )?;
        Ok(id)
    }

    /// Notes what a running session is (so an interrupted one still says), unless it ended.
    pub fn describe_session(
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

    /// Records how a session ended.
    pub fn close_session(&self, id: &str, end: &SessionEnd) -> Result<(), StoreError> {
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

    /// Closes sessions a previous run of the relay left open (it died before they ended).
    pub fn close_interrupted_sessions(&self) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE sessions SET ended_at = ?1, end_reason = 'interrupted' WHERE ended_at IS NULL",
            params![now()],
        )?)
    }

    /// Sessions, newest first.
    pub fn sessions(&self, q: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
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

    /// One session and the name of its cast file, if `tenant_id` (when given) may see it.
    pub fn session(
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

    /// Deletes ended sessions older than their tenant's session retention; returns the cast
    /// files to delete with them.
    pub fn expire_sessions(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let cutoff = "started_ms < ?1 - 86400000 * (
                 SELECT session_retention_days FROM tenants WHERE tenants.id = sessions.tenant_id)
             AND ended_at IS NOT NULL";
        let casts: Vec<String> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT cast_file FROM sessions WHERE cast_file IS NOT NULL AND {cutoff}"
            ))?;
            let rows = stmt.query_map(params![unix_ms()], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        tx.execute(
            &format!("DELETE FROM sessions WHERE {cutoff}"),
            params![unix_ms()],
        )?;
        tx.commit()?;
        Ok(casts)
    }

    /// Sets how many days of session recordings a tenant keeps.
    pub fn set_session_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        self.set_tenant_days(tenant, "session_retention_days", "session retention", days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_close_list_and_expire() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("relay.db"))?;
        let acme = store.add_tenant("acme")?;
        let other = store.add_tenant("other")?;
        let new = |tenant_id, engineer| NewSession {
            tenant_id,
            device_id: "dev_1",
            device_name: "board1",
            engineer,
            fingerprint: "SHA256:x",
            source: "127.0.0.1:1",
        };
        let a = store.open_session(new(acme.id, "alice"))?;
        let b = store.open_session(new(other.id, "bob"))?;
        store.describe_session(&a, "shell", None, Some("a.cast"))?;
        store.close_session(
            &a,
            &SessionEnd {
                kind: Some("shell".into()),
                reason: "exited".into(),
                exit_status: Some(3),
                bytes_out: 10,
                cast_file: Some("a.cast".into()),
                ..Default::default()
            },
        )?;
        // A late description does not reopen an ended session.
        store.describe_session(&a, "exec", Some("x"), None)?;
        let (rec, cast) = store.session(&a, Some(acme.id))?;
        assert_eq!(rec.kind.as_deref(), Some("shell"));
        assert_eq!(rec.exit_status, Some(3));
        assert_eq!(cast.as_deref(), Some("a.cast"));
        assert!(store.session(&a, Some(other.id)).is_err());
        let q = SessionQuery {
            tenant_id: Some(acme.id),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.sessions(&q)?.len(), 1);
        let q = SessionQuery {
            engineer: Some("bob".into()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.sessions(&q)?[0].id, b);
        assert_eq!(store.close_interrupted_sessions()?, 1);
        let (rec, _) = store.session(&b, None)?;
        assert_eq!(rec.end_reason.as_deref(), Some("interrupted"));
        assert!(store.expire_sessions()?.is_empty());
        store.set_session_retention("acme", 1)?;
        store.conn().execute(
            "UPDATE sessions SET started_ms = started_ms - 2 * 86400000 WHERE id = ?1",
            params![a],
        )?;
        assert_eq!(store.expire_sessions()?, vec!["a.cast".to_string()]);
        assert!(store.session(&a, None).is_err());
        assert!(store.set_session_retention("acme", 0).is_err());
        Ok(())
    }
}
