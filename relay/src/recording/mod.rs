//! Recording of relay-terminated engineer sessions.
//!
//! Every session an engineer opens on a device through the relay is recorded while the proxy
//! carries it ([`crate::ssh::proxy::relay_session`] reports each request and byte here):
//! - a terminal session (a pty was requested) becomes an asciicast v2 file ([`cast`]) with its
//!   output, resizes and, when configured, input;
//! - an exec is recorded as its command, exit status and byte counts;
//! - an sftp session (which is also what OpenSSH's `scp` speaks) as its file operations
//!   ([`sftp`]).
//!
//! The session's metadata lives in the store ([`crate::store::SessionRecord`]). Recording never
//! holds up or breaks a session: a write that fails is logged once and the session goes on.

pub mod cast;
pub mod sftp;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::blocking::with_store;
use crate::store::{SessionEnd, Store};

/// Longest exec command kept (bytes of the command line).
const MAX_COMMAND: usize = 4096;

/// What a session is, once the client said.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Shell,
    Exec(String),
    Subsystem(String),
}

/// The recording of one session, shared by the proxy's two pumps.
pub struct Recording {
    /// Session id in the store.
    pub id: String,
    store: Arc<Store>,
    dir: PathBuf,
    record_input: bool,
    title: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pty: Option<(String, u32, u32)>,
    kind: Option<Kind>,
    cast: Option<cast::CastWriter<File>>,
    cast_file: Option<String>,
    sftp: Option<sftp::SftpObserver>,
    bytes_in: u64,
    bytes_out: u64,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    /// A write to the cast file failed (logged once); the session goes on unrecorded.
    broken: bool,
}

impl Recording {
    /// Starts the recording of session `id` (already in the store); cast files go to `dir`.
    pub fn new(
        store: Arc<Store>,
        id: String,
        dir: &Path,
        record_input: bool,
        title: String,
    ) -> Arc<Recording> {
        Arc::new(Recording {
            id,
            store,
            dir: dir.to_path_buf(),
            record_input,
            title,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client asked for a terminal.
    pub fn pty(&self, term: &str, width: u32, height: u32) {
        let term: String = term.chars().take(64).collect();
        self.state().pty = Some((term, width, height));
    }

    /// The client asked for a shell.
    pub fn shell(&self) {
        self.begin(Kind::Shell);
    }

    /// The client asked to run `command`.
    pub fn exec(&self, command: &[u8]) {
        let end = command.len().min(MAX_COMMAND);
        self.begin(Kind::Exec(
            String::from_utf8_lossy(&command[..end]).into_owned(),
        ));
    }

    /// The client asked for subsystem `name`.
    pub fn subsystem(&self, name: &str) {
        self.begin(Kind::Subsystem(name.chars().take(64).collect()));
    }

    fn begin(&self, kind: Kind) {
        let mut st = self.state();
        if st.kind.is_some() {
            // SSH allows one shell, exec or subsystem per channel; the device refuses more.
            return;
        }
        if matches!(&kind, Kind::Subsystem(name) if name == "sftp") {
            st.sftp = Some(sftp::SftpObserver::default());
        }
        if let Some((term, width, height)) = st.pty.clone()
            && !matches!(kind, Kind::Subsystem(_))
        {
            let name = format!("{}.cast", self.id);
            let header = cast::CastWriter::<File>::header(
                size_or(width, 80),
                size_or(height, 24),
                &term,
                self.title.clone(),
            );
            match create_private(&self.dir, &name).and_then(|f| cast::CastWriter::new(f, &header)) {
                Ok(w) => {
                    st.cast = Some(w);
                    st.cast_file = Some(name);
                }
                Err(e) => {
                    tracing::error!(
                        "session {}: cannot record to {}: {e}",
                        self.id,
                        self.dir.join(&name).display()
                    );
                    st.broken = true;
                }
            }
        }
        let (label, command) = describe(&kind);
        let cast_file = st.cast_file.clone();
        st.kind = Some(kind);
        drop(st);
        let store = self.store.clone();
        let id = self.id.clone();
        // Written now so that a session the relay never sees end still says what it was.
        tokio::spawn(async move {
            let written = with_store(&store, move |s| {
                s.describe_session(&id, &label, command.as_deref(), cast_file.as_deref())
            })
            .await;
            if let Ok(Err(e)) = written {
                tracing::error!("session record: {e}");
            }
        });
    }

    /// The terminal was resized.
    pub fn resize(&self, width: u32, height: u32) {
        self.with_cast(|c| c.resize(width, height));
    }

    /// Bytes from the engineer to the device.
    pub fn input(&self, data: &[u8]) {
        let mut st = self.state();
        st.bytes_in += data.len() as u64;
        if let Some(o) = st.sftp.as_mut() {
            o.client_bytes(data);
        }
        drop(st);
        if self.record_input {
            self.with_cast(|c| c.input(data));
        }
    }

    /// Bytes from the device to the engineer (stdout and stderr).
    pub fn output(&self, data: &[u8]) {
        let mut st = self.state();
        st.bytes_out += data.len() as u64;
        if let Some(o) = st.sftp.as_mut() {
            o.server_bytes(data);
        }
        drop(st);
        self.with_cast(|c| c.output(data));
    }

    /// Writes what is buffered to the cast file (called periodically, so a relay that dies
    /// loses at most the last moments of a quiet session's output).
    pub fn flush(&self) {
        self.with_cast(|c| c.flush());
    }

    /// The remote process exited.
    pub fn exit_status(&self, status: u32) {
        self.state().exit_status = Some(status);
    }

    /// The remote process was killed by a signal.
    pub fn exit_signal(&self, signal: &str) {
        self.state().exit_signal = Some(signal.chars().take(32).collect());
    }

    fn with_cast(&self, f: impl FnOnce(&mut cast::CastWriter<File>) -> std::io::Result<()>) {
        let mut st = self.state();
        let Some(c) = st.cast.as_mut() else {
            return;
        };
        if let Err(e) = f(c) {
            tracing::error!("session {}: recording stopped: {e}", self.id);
            st.cast = None;
            st.broken = true;
        }
    }

    /// Ends the recording and completes the session's record; `reason` says how it ended.
    pub async fn finish(&self, reason: &str) -> SessionEnd {
        let end = {
            let mut st = self.state();
            if let Some(mut c) = st.cast.take()
                && let Err(e) = c.finish()
            {
                tracing::error!("session {}: finishing the recording: {e}", self.id);
            }
            let files = match st.sftp.take() {
                Some(o) => {
                    let (ops, dropped) = o.finish();
                    if dropped > 0 {
                        tracing::warn!(
                            "session {}: {dropped} file operations beyond the first {} not listed",
                            self.id,
                            sftp::MAX_OPS
                        );
                    }
                    serde_json::to_value(ops).unwrap_or_default()
                }
                None => serde_json::json!([]),
            };
            let (kind, command) = match &st.kind {
                Some(k) => {
                    let (label, command) = describe(k);
                    (Some(label), command)
                }
                None => (None, None),
            };
            SessionEnd {
                kind,
                command,
                term: st.pty.as_ref().map(|p| p.0.clone()),
                width: st.pty.as_ref().map(|p| p.1),
                height: st.pty.as_ref().map(|p| p.2),
                reason: reason.to_string(),
                exit_status: st.exit_status,
                exit_signal: st.exit_signal.clone(),
                bytes_in: st.bytes_in,
                bytes_out: st.bytes_out,
                cast_file: st.cast_file.clone(),
                files,
            }
        };
        let id = self.id.clone();
        let record = end.clone();
        if let Ok(Err(e)) = with_store(&self.store, move |s| s.close_session(&id, &record)).await {
            tracing::error!("session {}: cannot record its end: {e}", self.id);
        }
        end
    }
}

/// The store's label and command of a session kind.
fn describe(kind: &Kind) -> (String, Option<String>) {
    match kind {
        Kind::Shell => ("shell".into(), None),
        Kind::Exec(c) => ("exec".into(), Some(c.clone())),
        Kind::Subsystem(n) if n == "sftp" => ("sftp".into(), None),
        Kind::Subsystem(n) => (format!("subsystem:{n}"), None),
    }
}

/// OpenSSH sends 0x0 when its stdin is no terminal; players need a size.
fn size_or(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v.min(10_000) }
}

/// Creates `dir/name` readable by the relay alone (recordings hold whatever was typed and
/// shown), creating `dir` with mode 0700 if needed.
fn create_private(dir: &Path, name: &str) -> std::io::Result<File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(name))
}

/// Deletes the cast files of sessions past their retention.
pub fn delete_casts(dir: &Path, names: &[String]) {
    for name in names {
        // Names come from our own rows, but a path separator would let a row point outside.
        if name.contains('/') {
            continue;
        }
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("retention: cannot delete {}: {e}", dir.join(name).display()),
        }
    }
}
