//! Telemetry in SQLite: what the SQLite sink commits and what the API and CLI read.

use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{TransactionBehavior, params};

use super::SqliteStore;
use crate::store::{StoreError, StoredRecord, TelemetryQuery, TelemetryStore};

impl TelemetryStore for SqliteStore {
    fn insert_telemetry(
        &self,
        device_id: &str,
        tenant_id: i64,
        records: &[tether_protocol::telemetry::Record],
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO telemetry (device_id, seq, tenant_id, ts_ms, kind, topic, level, payload, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let received = tether_protocol::clock::now_ms();
            for r in records {
                inserted += stmt.execute(params![
                    device_id,
                    r.seq as i64,
                    tenant_id,
                    r.ts_ms,
                    r.kind.as_str(),
                    r.topic,
                    r.level.map(|l| l.as_str()),
                    r.payload.to_string(),
                    received
                ])?;
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn telemetry(&self, q: &TelemetryQuery<'_>) -> Result<Vec<StoredRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT device_id, seq, ts_ms, kind, topic, level, payload FROM telemetry
             WHERE device_id = ?1 AND seq > ?2
               AND (?3 IS NULL OR topic = ?3) AND (?4 IS NULL OR kind = ?4) AND (?5 IS NULL OR level = ?5)
               AND (?6 IS NULL OR ts_ms >= ?6) AND (?7 IS NULL OR ts_ms < ?7)
             ORDER BY seq LIMIT ?8",
        )?;
        let rows = stmt.query_map(
            params![
                q.device_id,
                q.after_seq as i64,
                q.topic,
                q.kind,
                q.level,
                q.from_ms,
                q.to_ms,
                q.limit as i64
            ],
            |r| {
                let ts_ms: i64 = r.get(2)?;
                let payload: String = r.get(6)?;
                Ok(StoredRecord {
                    device_id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    ts: humantime::format_rfc3339_millis(
                        UNIX_EPOCH + Duration::from_millis(ts_ms.max(0) as u64),
                    )
                    .to_string(),
                    ts_ms,
                    kind: r.get(3)?,
                    topic: r.get(4)?,
                    level: r.get(5)?,
                    payload: serde_json::from_str(&payload)
                        .unwrap_or(serde_json::Value::String(payload)),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn enforce_retention(&self) -> Result<usize, StoreError> {
        let now_ms = tether_protocol::clock::now_ms();
        let n = self.conn().execute(
            "DELETE FROM telemetry WHERE ts_ms < ?1 - 86400000 * (
                 SELECT retention_days FROM tenants WHERE tenants.id = telemetry.tenant_id)",
            params![now_ms],
        )?;
        Ok(n)
    }

    fn set_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        self.set_tenant_days(tenant, "retention_days", "retention", days)
    }
}
