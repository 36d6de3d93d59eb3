//! `relay store copy --from sqlite:PATH --to postgres://…`: moving a single relay's store into
//! the PostgreSQL database of a cluster, every row with its ids, so no board re-enrolls, no
//! token changes, and the audit trail continues where it was.
//!
//! Both schemas have the same tables and columns by design (see `migrations.rs`); the copy
//! reads the columns PostgreSQL has, from SQLite, in one read transaction (one snapshot), and
//! writes them in one PostgreSQL transaction, so the destination holds all of it or nothing.
//! The destination must be empty: merging two stores would make ids and names collide. The
//! audit trail is only ever inserted into, in its order and with its ids, and then the copy
//! itself is appended to it. The change feed is not copied: it only tells running relays what
//! to read again, and relays start from the whole state anyway.

use std::collections::BTreeMap;
use std::path::Path;

use deadpool_postgres::GenericClient;
use rusqlite::types::ValueRef;
use tokio_postgres::types::ToSql;

use super::PgStore;
use crate::store::{NewAudit, StoreError, sqlite::SqliteStore};

/// The tables copied, parents before children (foreign keys are checked row by row).
const TABLES: &[&str] = &[
    "tenants",
    "tokens",
    "users",
    "user_keys",
    "devices",
    "trusted_cas",
    "artifacts",
    "device_tags",
    "desired_state",
    "reported_state",
    "deployments",
    "deployment_devices",
    "actions",
    "sessions",
    "audit",
    "telemetry",
];

/// Tables whose `id` PostgreSQL hands out: after the copy they continue after the copied ids.
const IDENTITIES: &[&str] = &["tenants", "users", "audit"];

/// Parameters one INSERT carries at most (PostgreSQL's limit is 65,535).
const MAX_PARAMS: usize = 30_000;

/// What a copy moved: rows per table.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct CopySummary {
    /// Rows copied, by table.
    pub rows: BTreeMap<String, u64>,
}

/// A value on its way from SQLite to a PostgreSQL column.
#[derive(Debug)]
enum Cell {
    Int(Option<i64>),
    Bool(Option<bool>),
    Text(Option<String>),
}

impl Cell {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int(v) => v,
            Cell::Bool(v) => v,
            Cell::Text(v) => v,
        }
    }
}

/// The PostgreSQL column types of the store, as the copy converts to them.
#[derive(Debug, Clone, Copy)]
enum ColumnType {
    Int,
    Bool,
    Text,
}

fn invalid(message: String) -> StoreError {
    StoreError::Invalid(message)
}

fn cell(
    kind: ColumnType,
    value: ValueRef<'_>,
    table: &str,
    column: &str,
) -> Result<Cell, StoreError> {
    let wrong = || {
        invalid(format!(
            "{table}.{column} holds {value:?}, which does not fit a {kind:?} column"
        ))
    };
    Ok(match (kind, value) {
        (ColumnType::Int, ValueRef::Null) => Cell::Int(None),
        (ColumnType::Int, ValueRef::Integer(i)) => Cell::Int(Some(i)),
        (ColumnType::Bool, ValueRef::Null) => Cell::Bool(None),
        (ColumnType::Bool, ValueRef::Integer(i)) => Cell::Bool(Some(i != 0)),
        (ColumnType::Text, ValueRef::Null) => Cell::Text(None),
        (ColumnType::Text, ValueRef::Text(t)) => Cell::Text(Some(
            std::str::from_utf8(t)
                .map_err(|_| invalid(format!("{table}.{column} holds text that is not UTF-8")))?
                .to_string(),
        )),
        // SQLite's dynamic typing lets a number sit in a text column; PostgreSQL's does not.
        (ColumnType::Text, ValueRef::Integer(i)) => Cell::Text(Some(i.to_string())),
        _ => return Err(wrong()),
    })
}

impl PgStore {
    /// Copies everything in the SQLite store at `path` into this (empty) store; see the
    /// module doc.
    ///
    /// `host_key` (OpenSSH private key text) becomes the host key every relay on this store
    /// presents, replacing one a relay may have stored while the database was empty: the
    /// boards of the copied store pinned this one.
    pub fn import_sqlite(
        &self,
        path: &Path,
        host_key: &str,
        actor: &str,
    ) -> Result<CopySummary, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotFound {
                what: "SQLite store",
                key: path.display().to_string(),
            });
        }
        // Brings an older file up to this relay's schema (and refuses a newer one), so both
        // sides have the same columns.
        drop(SqliteStore::open(path)?);
        let mut source = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let snapshot = source.transaction()?;
        let rows = self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Nobody else may write while the copy decides that the store is empty and fills it.
            tx.batch_execute(&format!(
                "LOCK TABLE {} IN EXCLUSIVE MODE",
                TABLES.join(", ")
            ))
            .await?;
            let held: i64 = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM audit)
                          + (SELECT count(*) FROM telemetry)",
                    &[],
                )
                .await?
                .get(0);
            if held > 0 {
                return Err(StoreError::Conflict(
                    "the destination store already holds data; copy into a new, empty database"
                        .into(),
                ));
            }
            let mut rows = BTreeMap::new();
            for table in TABLES {
                let n = copy_table(&snapshot, &tx, table).await?;
                rows.insert(table.to_string(), n);
            }
            // Artifact bytes: relays of a cluster share no disk, so they go into the store
            // from the copied relay's files (`artifacts/` beside its SQLite file).
            let digests: Vec<String> = tx
                .query("SELECT DISTINCT sha256 FROM artifacts", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let files = path
                .parent()
                .unwrap_or(Path::new("."))
                .join(crate::config::ARTIFACTS_DIR);
            let mut blobs = 0u64;
            for digest in &digests {
                let Some(file) = crate::store::Store::artifact_path(&files, digest) else {
                    continue;
                };
                match std::fs::read(&file) {
                    Ok(data) => {
                        super::artifacts::put_blob(&tx, digest, &data).await?;
                        blobs += 1;
                    }
                    Err(e) => tracing::warn!(
                        "artifact {digest}: {}: {e}; devices cannot fetch it from other relays",
                        file.display()
                    ),
                }
            }
            rows.insert("artifact_blobs".to_string(), blobs);
            for table in IDENTITIES {
                tx.execute(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                                COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                    ),
                    &[],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO relay_host_key (private_key, created_at) VALUES ($1, $2)
                 ON CONFLICT (one) DO UPDATE SET private_key = EXCLUDED.private_key,
                                                 created_at = EXCLUDED.created_at",
                &[&host_key, &crate::store::now()],
            )
            .await?;
            let detail = serde_json::json!({
                "from": path.display().to_string(),
                "rows": rows,
            });
            super::audit::append(
                &tx,
                NewAudit {
                    tenant: None,
                    actor,
                    action: "store.copy",
                    target: Some(&path.display().to_string()),
                    source: None,
                    detail,
                },
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(rows)
        })?;
        Ok(CopySummary { rows })
    }
}

/// Copies one table; returns how many rows.
async fn copy_table(
    source: &rusqlite::Transaction<'_>,
    dest: &impl GenericClient,
    table: &str,
) -> Result<u64, StoreError> {
    let columns: Vec<(String, ColumnType)> = dest
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = $1
              ORDER BY ordinal_position",
            &[&table],
        )
        .await?
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let kind = match r.get::<_, &str>(1) {
                "bigint" | "integer" => ColumnType::Int,
                "boolean" => ColumnType::Bool,
                _ => ColumnType::Text,
            };
            (name, kind)
        })
        .collect();
    if columns.is_empty() {
        return Err(invalid(format!("the destination has no table {table}")));
    }
    // A column only PostgreSQL has (a `seq` that stands for SQLite's rowid) is left to its
    // default: rows are inserted in rowid order, so it counts them in the same order.
    let in_source: Vec<String> = source
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let columns: Vec<(String, ColumnType)> = columns
        .into_iter()
        .filter(|(name, _)| in_source.contains(name))
        .collect();
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let mut stmt = source
        .prepare(&format!(
            "SELECT {} FROM {table} ORDER BY rowid",
            names.join(", ")
        ))
        .or_else(|_| {
            // WITHOUT ROWID tables (telemetry, device tags) have no rowid; their primary key
            // orders them.
            source.prepare(&format!("SELECT {} FROM {table}", names.join(", ")))
        })
        .map_err(|e| invalid(format!("reading {table} from the SQLite store: {e}")))?;
    let per_batch = (MAX_PARAMS / columns.len()).clamp(1, 1000);
    let mut batch: Vec<Cell> = Vec::with_capacity(per_batch * columns.len());
    let mut total = 0u64;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        for (i, (name, kind)) in columns.iter().enumerate() {
            batch.push(cell(*kind, row.get_ref(i)?, table, name)?);
        }
        if batch.len() >= per_batch * columns.len() {
            total += insert(dest, table, &names, &batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        total += insert(dest, table, &names, &batch).await?;
    }
    Ok(total)
}

/// Inserts the rows in `cells` (row after row of `names.len()` values) with one statement.
async fn insert(
    dest: &impl GenericClient,
    table: &str,
    names: &[&str],
    cells: &[Cell],
) -> Result<u64, StoreError> {
    let width = names.len();
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", names.join(", "));
    for (r, _) in cells.chunks(width).enumerate() {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * width + c + 1));
        }
        sql.push(')');
    }
    let params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::as_sql).collect();
    Ok(dest.execute(sql.as_str(), &params).await?)
}
