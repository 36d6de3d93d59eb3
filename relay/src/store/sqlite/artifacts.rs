//! Artifact records in SQLite.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::SqliteStore;
use super::tenants::tenant_id;
use crate::store::artifacts::{artifact_path, check_artifact_name, write_artifact_file};
use crate::store::{ArtifactInfo, ArtifactStore, StoreError, now};

/// The columns [`artifact_from_row`] reads, from `artifacts a JOIN tenants t`.
const ARTIFACT_COLUMNS: &str = "t.name, a.sha256, a.size, a.name, a.created_at";

fn artifact_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ArtifactInfo> {
    Ok(ArtifactInfo {
        tenant: r.get(0)?,
        sha256: r.get(1)?,
        size: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        name: r.get(3)?,
        created_at: r.get(4)?,
    })
}

/// The artifact `sha256` of tenant `tenant_id`; another tenant's is `None` like a missing one.
pub(super) fn artifact_row(
    conn: &Connection,
    tenant_id: i64,
    sha256: &str,
) -> Result<Option<ArtifactInfo>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN tenants t ON t.id = a.tenant_id
                 WHERE a.tenant_id = ?1 AND a.sha256 = ?2"
            ),
            params![tenant_id, sha256],
            artifact_from_row,
        )
        .optional()?)
}

impl ArtifactStore for SqliteStore {
    fn put_artifact(
        &self,
        artifacts_dir: &Path,
        tenant: &str,
        name: &str,
        data: &[u8],
    ) -> Result<ArtifactInfo, StoreError> {
        check_artifact_name(name)?;
        let tenant_id = tenant_id(&self.conn(), tenant)?;
        let sha256 = hex::encode(Sha256::digest(data));
        let size = i64::try_from(data.len())
            .map_err(|_| StoreError::Invalid(format!("artifact {name:?} is too large")))?;
        // The file first: a row never names bytes that are not there.
        write_artifact_file(artifacts_dir, &sha256, data)?;
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO artifacts (tenant_id, sha256, size, name, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant_id, sha256, size, name, now()],
        )?;
        artifact_row(&conn, tenant_id, &sha256)?.ok_or(StoreError::NotFound {
            what: "artifact",
            key: sha256,
        })
    }

    fn artifact(&self, tenant: &str, sha256: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        let conn = self.conn();
        let tenant_id = tenant_id(&conn, tenant)?;
        artifact_row(&conn, tenant_id, sha256)
    }

    fn device_artifact(
        &self,
        device_id: &str,
        sha256: &str,
    ) -> Result<Option<ArtifactInfo>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {ARTIFACT_COLUMNS} FROM devices d
                     JOIN artifacts a ON a.tenant_id = d.tenant_id
                     JOIN tenants t ON t.id = a.tenant_id
                     WHERE d.id = ?1 AND a.sha256 = ?2"
                ),
                params![device_id, sha256],
                artifact_from_row,
            )
            .optional()?)
    }

    fn artifacts(&self, tenant: Option<&str>) -> Result<Vec<ArtifactInfo>, StoreError> {
        let conn = self.conn();
        let tenant_id = tenant.map(|name| tenant_id(&conn, name)).transpose()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN tenants t ON t.id = a.tenant_id
             WHERE ?1 IS NULL OR a.tenant_id = ?1 ORDER BY a.rowid"
        ))?;
        let rows = stmt.query_map(params![tenant_id], artifact_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ensure_artifact_file(&self, artifacts_dir: &Path, sha256: &str) -> Result<bool, StoreError> {
        Ok(artifact_path(artifacts_dir, sha256).is_some_and(|p| p.is_file()))
    }
}
