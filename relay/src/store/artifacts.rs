//! Artifacts: component files, recipes and OS bundles stored on the relay for a tenant.
//!
//! Artifacts are content-addressed: the bytes live in `<data_dir>/artifacts/<sha256>`, written
//! to a temporary name, synced and renamed into place, whatever backend records them; the
//! store records which tenant put them, their size and the original file name. Putting the
//! same content twice is harmless and yields the same digest.
//!
//! The digest alone is no permission: a tenant's deployments may name, and its devices may
//! fetch, only the artifacts that tenant put (or that its deployments stored). Two tenants
//! putting the same bytes share one file and each have their own record; another tenant's
//! digest looks exactly like one that was never stored.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tether_protocol::fleet::is_sha256;

use super::{StoreError, random_hex};

/// An artifact stored on the relay for a tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// The tenant whose devices may fetch it.
    pub tenant: String,
    /// Its digest, lowercase hex; also its file name in the artifacts directory.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The file name the tenant first uploaded it as.
    pub name: String,
    /// When the tenant first stored it (RFC 3339).
    pub created_at: String,
}

/// Checks the name an artifact is uploaded as: a plain file name.
pub(crate) fn check_artifact_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "artifact name {name:?} must be a file name of 1-255 bytes without '/' or control characters"
        )))
    }
}

/// Writes `data` to `<dir>/<sha256>` atomically: a temporary file in the same directory,
/// synced, then renamed into place (and the directory synced).
pub(crate) fn write_artifact_file(dir: &Path, sha256: &str, data: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let final_path = dir.join(sha256);
    let temp = dir.join(format!(".{sha256}.{}.tmp", random_hex(6)));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, &final_path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io(&final_path)(e));
    }
    Ok(())
}

/// Where an artifact's bytes are: `artifacts_dir` joined with the digest, or `None` when
/// `sha256` is not a digest (so it can never name another path).
pub fn artifact_path(artifacts_dir: &Path, sha256: &str) -> Option<PathBuf> {
    is_sha256(sha256).then(|| artifacts_dir.join(sha256))
}

/// Artifacts of a tenant.
pub trait ArtifactStore {
    /// Stores `data` as an artifact of `tenant` under `artifacts_dir` (created if missing)
    /// and returns it; content the tenant already stored keeps its first name and creation
    /// time. The same bytes put by another tenant share the file but not the row.
    fn put_artifact(
        &self,
        artifacts_dir: &Path,
        tenant: &str,
        name: &str,
        data: &[u8],
    ) -> Result<ArtifactInfo, StoreError>;

    /// The artifact with digest `sha256` if `tenant` stored it.
    fn artifact(&self, tenant: &str, sha256: &str) -> Result<Option<ArtifactInfo>, StoreError>;

    /// The artifact with digest `sha256` if the tenant of device `device_id` stored it: what
    /// the device may fetch. An unknown device, another tenant's artifact and one never
    /// stored are all `None`, so the answer to a device tells it nothing about other tenants.
    fn device_artifact(
        &self,
        device_id: &str,
        sha256: &str,
    ) -> Result<Option<ArtifactInfo>, StoreError>;

    /// Artifacts of `tenant` (of every tenant if `None`), oldest first.
    fn artifacts(&self, tenant: Option<&str>) -> Result<Vec<ArtifactInfo>, StoreError>;

    /// Makes sure the bytes of `sha256` are in `artifacts_dir` on this host, as the file the
    /// relay sends devices; returns whether they are. A store of one relay (SQLite) keeps the
    /// files themselves, so this only looks; a store shared by a cluster (PostgreSQL) also
    /// keeps the bytes, and writes the file from them when another relay stored the artifact.
    fn ensure_artifact_file(&self, artifacts_dir: &Path, sha256: &str) -> Result<bool, StoreError>;
}
