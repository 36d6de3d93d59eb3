//! Telemetry in the relay's store: what the SQLite sink commits and what the API and CLI read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{TransactionBehavior, params};
use serde::Serialize;

use super::{Store, StoreError};

/// What to read from a device's telemetry.
#[derive(Debug, Clone, Default)]
pub struct TelemetryQuery<'a> {
    /// The device.
    pub device_id: &'a str,
    /// Only this topic.
    pub topic: Option<&'a str>,
    /// Only this kind (`metric`, `log`, `event`).
    pub kind: Option<&'a str>,
    /// Only this level (events).
    pub level: Option<&'a str>,
    /// Producer time at or after (ms since the Unix epoch).
    pub from_ms: Option<i64>,
    /// Producer time before (ms since the Unix epoch).
    pub to_ms: Option<i64>,
    /// Records after this sequence number (pagination cursor).
    pub after_seq: u64,
    /// Most records returned.
    pub limit: usize,
}

/// A telemetry record as stored by the relay.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredRecord {
    /// Device that produced it.
    pub device_id: String,
    /// Its sequence number on that device.
    pub seq: u64,
    /// Producer timestamp (RFC 3339 with milliseconds).
    pub ts: String,
    /// Producer timestamp, ms since the Unix epoch.
    pub ts_ms: i64,
    /// metric, log or event.
    pub kind: String,
    /// Topic.
    pub topic: String,
    /// Level, for events.
    pub level: Option<String>,
    /// Payload.
    pub payload: serde_json::Value,
}

impl Store {
    /// Stores records of one device in one transaction, ignoring (device, seq) pairs already
    /// stored; returns how many were new.
    pub fn insert_telemetry(
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
            let received = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
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

    /// Records of a device matching `q`, oldest first (by sequence number).
    pub fn telemetry(&self, q: &TelemetryQuery<'_>) -> Result<Vec<StoredRecord>, StoreError> {
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

    /// Deletes telemetry older than each tenant's retention; returns how many records went.
    pub fn enforce_retention(&self) -> Result<usize, StoreError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let n = self.conn().execute(
            "DELETE FROM telemetry WHERE ts_ms < ?1 - 86400000 * (
                 SELECT retention_days FROM tenants WHERE tenants.id = telemetry.tenant_id)",
            params![now_ms],
        )?;
        Ok(n)
    }

    /// Sets how many days of telemetry a tenant keeps.
    pub fn set_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        self.set_tenant_days(tenant, "retention_days", "retention", days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protocol::telemetry::{Kind, Level, Record};

    fn record(seq: u64, ts_ms: i64, kind: Kind, topic: &str) -> Record {
        Record {
            seq,
            ts_ms,
            kind,
            topic: topic.into(),
            level: (kind == Kind::Event).then_some(Level::Info),
            payload: serde_json::json!(seq),
        }
    }

    #[test]
    fn dedup_filters_and_retention() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("relay.db"))?;
        let tenant = store.add_tenant("acme")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let old = now - 3 * 86_400_000;
        let batch = vec![
            record(1, old, Kind::Metric, "a"),
            record(2, now, Kind::Metric, "b"),
            record(3, now, Kind::Event, "a"),
        ];
        assert_eq!(store.insert_telemetry("dev_1", tenant.id, &batch)?, 3);
        // The same batch again (a lost ack) changes nothing.
        assert_eq!(store.insert_telemetry("dev_1", tenant.id, &batch)?, 0);
        let q = |topic, kind, after| TelemetryQuery {
            device_id: "dev_1",
            topic,
            kind,
            after_seq: after,
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.telemetry(&q(Some("a"), None, 0))?.len(), 2);
        assert_eq!(store.telemetry(&q(None, Some("event"), 0))?.len(), 1);
        assert_eq!(store.telemetry(&q(None, None, 2))?.len(), 1);
        let recent = TelemetryQuery {
            device_id: "dev_1",
            from_ms: Some(now - 1000),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.telemetry(&recent)?.len(), 2);
        assert_eq!(store.enforce_retention()?, 0);
        store.set_retention("acme", 1)?;
        assert_eq!(store.enforce_retention()?, 1);
        assert_eq!(store.telemetry(&q(None, None, 0))?.len(), 2);
        assert!(store.set_retention("acme", 0).is_err());
        Ok(())
    }
}
