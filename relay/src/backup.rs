//! `relay backup DIR`: a consistent copy of a relay's data directory, taken while it runs.
//!
//! The store is copied with SQLite's `VACUUM INTO`, which reads one snapshot of the database
//! (WAL included) while the relay goes on writing, so the copy is a database as it was at one
//! instant, never a torn file. The host key is copied so that boards, which pinned it at
//! enrollment, accept the restored relay. Artifacts are content-addressed and never change
//! once written; recordings of sessions still open are copied as far as they are written.
//! The result is itself a data directory: restoring is pointing `relay serve` at it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::config::RelayConfig;
use crate::store::Store;

/// Why a backup could not be made.
#[derive(Debug, Error)]
pub enum BackupError {
    /// The destination already holds files; a backup never overwrites one.
    #[error("{0} exists and is not empty; give a new directory")]
    NotEmpty(PathBuf),
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The store could not be copied.
    #[error("copying the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What a backup holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackupSummary {
    /// The backup's directory (a data directory).
    pub dir: PathBuf,
    /// Size of the copied store, bytes.
    pub store_bytes: u64,
    /// Whether the relay's host key was copied (it exists once `relay serve` ran).
    pub host_key: bool,
    /// Artifact files copied.
    pub artifacts: u64,
    /// Session recordings copied.
    pub recordings: u64,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the regular files of `from` into `to` (created 0700); returns how many. A missing
/// `from` is an empty one.
fn copy_files(from: &Path, to: &Path) -> Result<u64, BackupError> {
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("reading", from)(e)),
    };
    create_private_dir(to)?;
    let mut n = 0;
    for entry in entries {
        let entry = entry.map_err(io("reading", from))?;
        let kind = entry.file_type().map_err(io("reading", &entry.path()))?;
        if !kind.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).map_err(io("copying to", &target))?;
        n += 1;
    }
    Ok(n)
}

fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))
}

/// Writes a backup of the relay described by `config`, whose store is `store`, to `dest`.
pub fn backup(
    config: &RelayConfig,
    store: &Store,
    dest: &Path,
) -> Result<BackupSummary, BackupError> {
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(dest.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", dest)(e)),
    }
    create_private_dir(dest)?;
    let db = dest.join("relay.db");
    store.snapshot_into(&db)?;
    let store_bytes = std::fs::metadata(&db).map_err(io("reading", &db))?.len();
    let key = crate::hostkey::path(&config.data_dir);
    let host_key = match std::fs::copy(&key, crate::hostkey::path(dest)) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io("copying", &key)(e)),
    };
    let artifacts = copy_files(&config.artifacts_dir(), &dest.join("artifacts"))?;
    let recordings = copy_files(
        &config.sessions_dir(),
        &dest.join(crate::config::SESSIONS_DIR),
    )?;
    Ok(BackupSummary {
        dir: dest.to_path_buf(),
        store_bytes,
        host_key,
        artifacts,
        recordings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_backup_is_a_data_directory_with_everything_and_never_overwrites() -> TestResult {
        let dir = tempfile::tempdir()?;
        let config = RelayConfig {
            data_dir: dir.path().join("data"),
            ..RelayConfig::default()
        };
        let store = Store::open(&config.store_path())?;
        store.add_tenant("acme")?;
        std::fs::create_dir_all(config.artifacts_dir())?;
        std::fs::write(config.artifacts_dir().join("ab12"), b"bytes")?;
        std::fs::write(crate::hostkey::path(&config.data_dir), b"key")?;

        let dest = dir.path().join("backup");
        let summary = backup(&config, &store, &dest)?;
        assert!(summary.host_key && summary.artifacts == 1 && summary.recordings == 0);
        assert!(summary.store_bytes > 0);
        // The copy opens as a store with what the original held, while the original stays
        // open and writable.
        store.add_tenant("globex")?;
        let copy = Store::open(&dest.join("relay.db"))?;
        let names: Vec<String> = copy.tenants()?.into_iter().map(|t| t.name).collect();
        assert_eq!(names, vec!["acme".to_string()]);
        assert_eq!(std::fs::read(dest.join("artifacts/ab12"))?, b"bytes");

        assert!(matches!(
            backup(&config, &store, &dest),
            Err(BackupError::NotEmpty(_))
        ));
        Ok(())
    }
}
