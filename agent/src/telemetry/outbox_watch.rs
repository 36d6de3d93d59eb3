//! Wakes the idle uploader when the outbox changed, whichever process changed it.
//!
//! Records reach the outbox from the agent's own producers and from other processes (`agent
//! telemetry send`, `agent notify`), always through SQLite, and every commit writes the outbox's
//! write-ahead log. An inotify watch on the outbox's directory, filtered to the outbox's own
//! files, therefore tells the uploader that there may be something new to send, so an idle agent
//! does not look at the outbox ten times a second. Where inotify is not available (the per-user
//! limit of inotify instances is reached, say), the uploader looks every [`FALLBACK_POLL`].

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How often the outbox is looked at when it cannot be watched.
pub const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// How long after the first change the uploader waits for the rest of it: one commit is
/// several writes to the log, and a producer often commits a few times in a row.
const COALESCE: Duration = Duration::from_millis(20);

/// The inotify instance, in the form tokio's reactor registers.
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Changes of one outbox file (the database, its write-ahead log and its journal).
pub struct OutboxWatch {
    watch: Option<AsyncFd<Watch>>,
    file_name: OsString,
}

impl OutboxWatch {
    /// Starts watching the outbox at `path`. Changes made after this call are seen by the next
    /// [`changed`](Self::changed), so it must be created before the outbox is first read.
    pub fn new(path: &Path) -> Self {
        let file_name = path.file_name().map(OsString::from).unwrap_or_default();
        let watch = match watch_dir(path) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!(
                    "cannot watch the outbox {} ({e}); looking every {} ms instead",
                    path.display(),
                    FALLBACK_POLL.as_millis()
                );
                None
            }
        };
        Self { watch, file_name }
    }

    /// Whether changes are seen as they happen (false: polling).
    pub fn is_watching(&self) -> bool {
        self.watch.is_some()
    }

    /// Returns once the outbox may have changed since the previous call.
    pub async fn changed(&mut self) {
        let Some(watch) = &self.watch else {
            tokio::time::sleep(FALLBACK_POLL).await;
            return;
        };
        let outcome = loop {
            let mut guard = match watch.readable().await {
                Ok(g) => g,
                Err(e) => break Err(e),
            };
            // Everything queued is read at once: a burst of commits is one wake-up.
            let mut relevant = false;
            let drained = loop {
                match guard.try_io(|w| w.get_ref().0.read_events().map_err(std::io::Error::from)) {
                    Ok(Ok(events)) => {
                        relevant |= events.iter().any(|e| concerns(e, &self.file_name));
                    }
                    Ok(Err(e)) => break Err(e),
                    // Nothing more queued; readiness was cleared by try_io.
                    Err(_would_block) => break Ok(()),
                }
            };
            match drained {
                Ok(()) if relevant => {
                    tokio::time::sleep(COALESCE).await;
                    break drain(watch);
                }
                Ok(()) => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(
                "watching the outbox failed ({e}); looking every {} ms instead",
                FALLBACK_POLL.as_millis()
            );
            self.watch = None;
        }
    }
}

/// Reads and drops whatever events are queued, without waiting.
fn drain(watch: &AsyncFd<Watch>) -> std::io::Result<()> {
    loop {
        match watch.get_ref().0.read_events() {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

// `AsyncFd::with_interest` is deprecated because it is unsound for a `T` whose `as_raw_fd`
// could close or change its descriptor while registered. `Watch` owns its descriptor (the
// `OwnedFd` inside `Inotify`) for as long as it lives and never replaces it, which is what the
// unsafe replacement asks its callers to promise; this keeps the crate's `unsafe` in the
// modules `lib.rs` names.
#[allow(deprecated)]
fn watch_dir(path: &Path) -> std::io::Result<AsyncFd<Watch>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    // A commit writes the log (IN_MODIFY); SQLite may also create or replace its files.
    inotify.add_watch(
        dir,
        AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO,
    )?;
    AsyncFd::with_interest(Watch(inotify), Interest::READABLE)
}

/// Whether `event` is about the outbox: `outbox.db`, `outbox.db-wal`, `outbox.db-journal`, or
/// a lost queue (after which anything may have changed).
fn concerns(event: &InotifyEvent, file_name: &OsString) -> bool {
    if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return true;
    }
    event.name.as_ref().is_some_and(|name| {
        name.as_encoded_bytes()
            .starts_with(file_name.as_encoded_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn a_write_to_the_outbox_wakes_and_other_files_do_not() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("outbox.db");
        let mut watch = OutboxWatch::new(&path);
        assert!(watch.is_watching());

        std::fs::write(dir.path().join("status.json"), b"{}")?;
        let quiet = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
        assert!(
            quiet.is_err(),
            "another file in the directory woke the watch"
        );

        std::fs::write(dir.path().join("outbox.db-wal"), b"frame")?;
        tokio::time::timeout(Duration::from_secs(5), watch.changed()).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_commit_by_another_connection_wakes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("outbox.db");
        let conn = rusqlite::Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch("CREATE TABLE t (x INTEGER)")?;
        let mut watch = OutboxWatch::new(&path);
        let writer = rusqlite::Connection::open(&path)?;
        writer.execute("INSERT INTO t VALUES (1)", [])?;
        tokio::time::timeout(Duration::from_secs(5), watch.changed()).await?;
        Ok(())
    }

    #[tokio::test]
    async fn an_unwatchable_outbox_falls_back_to_polling() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut watch = OutboxWatch::new(&dir.path().join("missing").join("outbox.db"));
        assert!(!watch.is_watching());
        tokio::time::timeout(Duration::from_secs(5), watch.changed()).await?;
        Ok(())
    }
}
