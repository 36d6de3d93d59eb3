//! Engineers' relay-terminated sessions: who opened what on which device, when, and how it
//! ended. The terminal recording itself is an asciicast file beside the store
//! (`<data_dir>/sessions/<id>.cast`); its row here says where it is.
//!
//! A row is written when the session opens and completed when it closes, so a relay that dies
//! mid-session leaves a row without an end, which the next start closes as `interrupted`.

use serde::Serialize;

use super::StoreError;

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

/// Engineers' sessions.
pub trait SessionStore {
    /// Records that a session opened; returns its id.
    fn open_session(&self, s: NewSession<'_>) -> Result<String, StoreError>;

    /// Notes what a running session is (so an interrupted one still says), unless it ended.
    fn describe_session(
        &self,
        id: &str,
        kind: &str,
        command: Option<&str>,
        cast_file: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Records how a session ended.
    fn close_session(&self, id: &str, end: &SessionEnd) -> Result<(), StoreError>;

    /// Closes sessions a previous run of the relay left open (it died before they ended).
    fn close_interrupted_sessions(&self) -> Result<usize, StoreError>;

    /// Sessions, newest first.
    fn sessions(&self, q: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError>;

    /// One session and the name of its cast file, if `tenant_id` (when given) may see it.
    fn session(
        &self,
        id: &str,
        tenant_id: Option<i64>,
    ) -> Result<(SessionRecord, Option<String>), StoreError>;

    /// Deletes ended sessions older than their tenant's session retention; returns the cast
    /// files to delete with them.
    fn expire_sessions(&self) -> Result<Vec<String>, StoreError>;

    /// Sets how many days of session recordings a tenant keeps.
    fn set_session_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError>;
}
