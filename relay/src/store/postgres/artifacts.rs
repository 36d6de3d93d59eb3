//! Artifact records in PostgreSQL. The bytes live in files beside the store, whatever the
//! backend (see [`crate::store::artifacts`]); the rows say which tenant put which digest.

use std::path::Path;

use deadpool_postgres::GenericClient;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;

use super::PgStore;
use super::tenants::tenant_id;
use crate::store::artifacts::{check_artifact_name, write_artifact_file};
use crate::store::{ArtifactInfo, ArtifactStore, StoreError, now};

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
            let client = self.client().await?;
            // Content the tenant already stored keeps its first name and creation time.
            client
                .execute(
                    "INSERT INTO artifacts (tenant_id, sha256, size, name, created_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&tenant_id, &sha256, &size, &name, &now()],
                )
                .await?;
            artifact_row(&client, tenant_id, &sha256)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "artifact",
                    key: sha256.clone(),
                })
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
}
