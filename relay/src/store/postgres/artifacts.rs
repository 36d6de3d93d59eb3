//! Artifacts in PostgreSQL: the rows say which tenant put which digest, and the bytes are
//! kept too (`artifact_blobs`, in chunks of [`BLOB_CHUNK`]), because the relays of a cluster
//! do not share a disk: the relay that stores an artifact writes its file and its chunks, and
//! a relay asked for it by a device writes its own file from the chunks the first time
//! ([`ArtifactStore::ensure_artifact_file`]), checking the digest before it is used.

use std::path::Path;

use deadpool_postgres::GenericClient;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;

use super::PgStore;
use super::tenants::tenant_id;
use crate::store::artifacts::{artifact_path, check_artifact_name, write_artifact_file};
use crate::store::{ArtifactInfo, ArtifactStore, StoreError, now};

/// Bytes per row of `artifact_blobs`: large enough that an OS bundle is a few hundred rows,
/// small enough that one row is never a burden on either side.
pub(super) const BLOB_CHUNK: usize = 1 << 20;

/// Stores the bytes of `sha256` as chunks unless they are stored already.
pub(super) async fn put_blob(
    client: &impl GenericClient,
    sha256: &str,
    data: &[u8],
) -> Result<(), StoreError> {
    let stored = client
        .query_opt(
            "SELECT 1 FROM artifact_blobs WHERE sha256 = $1 AND chunk = 0",
            &[&sha256],
        )
        .await?;
    if stored.is_some() {
        return Ok(());
    }
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(BLOB_CHUNK).collect()
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        client
            .execute(
                "INSERT INTO artifact_blobs (sha256, chunk, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&sha256, &super::to_i64(i), &chunk],
            )
            .await?;
    }
    Ok(())
}

/// The columns [`artifact_from_row`] reads, from `artifacts a JOIN tenants t`.
const ARTIFACT_COLUMNS: &str = "t.name, a.sha256, a.size, a.name, a.created_at";

/// An artifact from a row of [`ARTIFACT_COLUMNS`].
fn artifact_from_row(r: &Row) -> ArtifactInfo {
    ArtifactInfo {
        tenant: r.get(0),
        sha256: r.get(1),
        size: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
        name: r.get(3),
        created_at: r.get(4),
    }
}

/// The artifact `sha256` of tenant `tenant_id`; another tenant's is `None` like a missing one.
pub(super) async fn artifact_row(
    client: &impl GenericClient,
    tenant_id: i64,
    sha256: &str,
) -> Result<Option<ArtifactInfo>, StoreError> {
    Ok(client
        .query_opt(
            &format!(
                "SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN tenants t ON t.id = a.tenant_id
                 WHERE a.tenant_id = $1 AND a.sha256 = $2"
            ),
            &[&tenant_id, &sha256],
        )
        .await?
        .map(|r| artifact_from_row(&r)))
}

impl ArtifactStore for PgStore {
    fn put_artifact(
        &self,
        artifacts_dir: &Path,
        tenant: &str,
        name: &str,
        data: &[u8],
    ) -> Result<ArtifactInfo, StoreError> {
        check_artifact_name(name)?;
        let tenant_id = self.block(async { tenant_id(&self.client().await?, tenant).await })?;
        let sha256 = hex::encode(Sha256::digest(data));
        let size = i64::try_from(data.len())
            .map_err(|_| StoreError::Invalid(format!("artifact {name:?} is too large")))?;
        // The file first: a row never names bytes that are not there.
        write_artifact_file(artifacts_dir, &sha256, data)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            put_blob(&tx, &sha256, data).await?;
            // Content the tenant already stored keeps its first name and creation time.
            tx.execute(
                "INSERT INTO artifacts (tenant_id, sha256, size, name, created_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&tenant_id, &sha256, &size, &name, &now()],
            )
            .await?;
            let row = artifact_row(&tx, tenant_id, &sha256)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "artifact",
                    key: sha256.clone(),
                })?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn artifact(&self, tenant: &str, sha256: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let tenant_id = tenant_id(&client, tenant).await?;
            artifact_row(&client, tenant_id, sha256).await
        })
    }

    fn device_artifact(
        &self,
        device_id: &str,
        sha256: &str,
    ) -> Result<Option<ArtifactInfo>, StoreError> {
        self.block(async {
            Ok(self
                .client()
                .await?
                .query_opt(
                    &format!(
                        "SELECT {ARTIFACT_COLUMNS} FROM devices d
                         JOIN artifacts a ON a.tenant_id = d.tenant_id
                         JOIN tenants t ON t.id = a.tenant_id
                         WHERE d.id = $1 AND a.sha256 = $2"
                    ),
                    &[&device_id, &sha256],
                )
                .await?
                .map(|r| artifact_from_row(&r)))
        })
    }

    fn artifacts(&self, tenant: Option<&str>) -> Result<Vec<ArtifactInfo>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let tenant_id = match tenant {
                Some(name) => Some(tenant_id(&client, name).await?),
                None => None,
            };
            // In the order they were put (`seq`), as SQLite lists them by rowid.
            let rows = client
                .query(
                    &format!(
                        "SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN tenants t ON t.id = a.tenant_id
                         WHERE $1::bigint IS NULL OR a.tenant_id = $1
                         ORDER BY a.seq"
                    ),
                    &[&tenant_id],
                )
                .await?;
            Ok(rows.iter().map(artifact_from_row).collect())
        })
    }

    fn ensure_artifact_file(&self, artifacts_dir: &Path, sha256: &str) -> Result<bool, StoreError> {
        let Some(path) = artifact_path(artifacts_dir, sha256) else {
            return Ok(false);
        };
        if path.is_file() {
            return Ok(true);
        }
        // Chunk by chunk into a temporary file, so that memory holds one chunk, not the
        // artifact; the file takes its name only once its digest is right.
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if !artifacts_dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(artifacts_dir)
                .map_err(io)?;
        }
        let temp = artifacts_dir.join(format!(".{sha256}.{}.fetch", crate::store::random_hex(6)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io)?;
        let mut hasher = Sha256::new();
        let mut chunk = 0i64;
        let written = loop {
            let row = self.block(async {
                self.client()
                    .await?
                    .query_opt(
                        "SELECT bytes FROM artifact_blobs WHERE sha256 = $1 AND chunk = $2",
                        &[&sha256, &chunk],
                    )
                    .await
                    .map_err(StoreError::from)
            });
            let row = match row {
                Ok(Some(row)) => row,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let data: &[u8] = row.get(0);
            hasher.update(data);
            if let Err(e) = file.write_all(data) {
                break Err(io(e));
            }
            chunk += 1;
        };
        let finished = written.and_then(|()| {
            if chunk == 0 {
                return Ok(false);
            }
            if hex::encode(hasher.finalize()) != sha256 {
                return Err(StoreError::Invalid(format!(
                    "the stored bytes of artifact {sha256} do not match its digest"
                )));
            }
            file.sync_all().map_err(io)?;
            std::fs::rename(&temp, &path).map_err(io)?;
            Ok(true)
        });
        if !matches!(finished, Ok(true)) {
            let _ = std::fs::remove_file(&temp);
        }
        finished
    }
}
