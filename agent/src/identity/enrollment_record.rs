//! What enrollment recorded: the relay to dial, the device's id and the relay's pinned host key.
//!
//! Stored as JSON in the state directory, written atomically (write, fsync, rename) so a power
//! cut during re-enrollment leaves either the old or the new record.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// File name of the enrollment record inside the state directory.
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// The enrollment record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The relay URL the device dials (`ssh://…`, `ws://…`, `wss://…`).
    pub relay_url: String,
    /// The id the relay gave the device.
    pub device_id: String,
    /// The device's name in its tenant.
    pub name: String,
    /// The tenant the device belongs to.
    pub tenant: String,
    /// The relay's host key in OpenSSH public-key format, pinned at enrollment.
    pub relay_host_key: String,
    /// SHA-256 fingerprint of the relay's host key.
    pub relay_fingerprint: String,
    /// When the device enrolled (RFC 3339).
    pub enrolled_at: String,
}

/// Why the enrollment record could not be read or written.
#[derive(Debug, Error)]
pub enum EnrollmentError {
    /// The device has not enrolled yet.
    #[error("this device is not enrolled (no {0}); run `agent enroll URL --token TOKEN` first")]
    NotEnrolled(PathBuf),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The record file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The record is not valid JSON of the expected shape.
    #[error("{path}: corrupt enrollment record: {source}")]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
}

/// Path of the enrollment record in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(ENROLLMENT_FILE)
}

/// Reads the enrollment record.
pub fn load(state_dir: &Path) -> Result<Enrollment, EnrollmentError> {
    let path = path(state_dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EnrollmentError::NotEnrolled(path));
        }
        Err(source) => return Err(EnrollmentError::Io { path, source }),
    };
    serde_json::from_str(&text).map_err(|source| EnrollmentError::Corrupt { path, source })
}

/// Whether a record exists.
pub fn exists(state_dir: &Path) -> bool {
    path(state_dir).exists()
}

/// Writes the enrollment record atomically.
pub fn store(state_dir: &Path, enrollment: &Enrollment) -> Result<(), EnrollmentError> {
    let path = path(state_dir);
    crate::atomic_file::write(
        &path,
        &serde_json::to_vec_pretty(enrollment).unwrap_or_default(),
    )
    .map_err(|source| EnrollmentError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(matches!(
            load(dir.path()),
            Err(EnrollmentError::NotEnrolled(_))
        ));
        let e = Enrollment {
            relay_url: "ssh://127.0.0.1:2222".into(),
            device_id: "dev_1".into(),
            name: "b1".into(),
            tenant: "acme".into(),
            relay_host_key: "ssh-ed25519 AAAA".into(),
            relay_fingerprint: "SHA256:x".into(),
            enrolled_at: "2026-01-01T00:00:00Z".into(),
        };
        store(dir.path(), &e)?;
        assert_eq!(load(dir.path())?, e);
        fs::write(path(dir.path()), b"{not json")?;
        let err = load(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("corrupt enrollment record"), "{err}");
        Ok(())
    }
}
