//! Telemetry in PostgreSQL: what the store sink commits and what the API and CLI read.

use std::time::{Duration, UNIX_EPOCH};

use super::{PgStore, to_i64};
use crate::store::{StoreError, StoredRecord, TelemetryQuery, TelemetryStore};

impl TelemetryStore for PgStore {
    fn insert_telemetry(
        &self,
        device_id: &str,
        tenant_id: i64,
        records: &[tether_protocol::telemetry::Record],
    ) -> Result<usize, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        // One statement for the whole batch, its columns passed as arrays: a single round trip
        // and a single plan whatever the batch's size, and no limit on the number of
        // parameters to run into. The statement is atomic, so the batch goes in whole or not
        // at all, and ON CONFLICT skips the (device, seq) pairs already stored, also a pair
        // that comes twice in the batch. Sequence numbers are stored as SQLite stores them,
        // the u64's bits in a BIGINT, and read back the same way.
        let mut seqs = Vec::with_capacity(records.len());
        let mut ts = Vec::with_capacity(records.len());
        let mut kinds = Vec::with_capacity(records.len());
        let mut topics = Vec::with_capacity(records.len());
        let mut levels = Vec::with_capacity(records.len());
        let mut payloads = Vec::with_capacity(records.len());
        for r in records {
            seqs.push(r.seq as i64);
            ts.push(r.ts_ms);
            kinds.push(r.kind.as_str());
            topics.push(r.topic.as_str());
            levels.push(r.level.map(|l| l.as_str()));
            payloads.push(r.payload.to_string());
        }
        let received = tether_protocol::clock::now_ms();
        let inserted = self.block(async {
            self.client()
                .await?
                .execute(
                    "INSERT INTO telemetry (device_id, seq, tenant_id, ts_ms, kind, topic, level, payload, received_ms)
                     SELECT $1, r.seq, $2, r.ts_ms, r.kind, r.topic, r.level, r.payload, $3
                     FROM UNNEST($4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[])
                         AS r (seq, ts_ms, kind, topic, level, payload)
                     ON CONFLICT (device_id, seq) DO NOTHING",
                    &[
                        &device_id, &tenant_id, &received, &seqs, &ts, &kinds, &topics, &levels,
                        &payloads,
                    ],
                )
                .await
                .map_err(StoreError::from)
        })?;
        Ok(usize::try_from(inserted).unwrap_or(usize::MAX))
    }

    fn telemetry(&self, q: &TelemetryQuery<'_>) -> Result<Vec<StoredRecord>, StoreError> {
        let after_seq = q.after_seq as i64;
        let limit = to_i64(q.limit);
        let rows = self.block(async {
            self.client()
                .await?
                .query(
                    "SELECT device_id, seq, ts_ms, kind, topic, level, payload FROM telemetry
                     WHERE device_id = $1 AND seq > $2
                       AND ($3::text IS NULL OR topic = $3) AND ($4::text IS NULL OR kind = $4)
                       AND ($5::text IS NULL OR level = $5)
                       AND ($6::bigint IS NULL OR ts_ms >= $6) AND ($7::bigint IS NULL OR ts_ms < $7)
                     ORDER BY seq LIMIT $8",
                    &[
                        &q.device_id,
                        &after_seq,
                        &q.topic,
                        &q.kind,
                        &q.level,
                        &q.from_ms,
                        &q.to_ms,
                        &limit,
                    ],
                )
                .await
                .map_err(StoreError::from)
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let ts_ms: i64 = r.get(2);
                let payload: String = r.get(6);
                StoredRecord {
                    device_id: r.get(0),
                    seq: r.get::<_, i64>(1) as u64,
                    ts: humantime::format_rfc3339_millis(
                        UNIX_EPOCH + Duration::from_millis(u64::try_from(ts_ms).unwrap_or(0)),
                    )
                    .to_string(),
                    ts_ms,
                    kind: r.get(3),
                    topic: r.get(4),
                    level: r.get(5),
                    // A payload that is not JSON (never written by the relay) reads as text.
                    payload: serde_json::from_str(&payload)
                        .unwrap_or(serde_json::Value::String(payload)),
                }
            })
            .collect())
    }

    fn enforce_retention(&self) -> Result<usize, StoreError> {
        let now_ms = tether_protocol::clock::now_ms();
        let n = self.block(async {
            self.client()
                .await?
                .execute(
                    "DELETE FROM telemetry r USING tenants t
                     WHERE t.id = r.tenant_id AND r.ts_ms < $1 - 86400000 * t.retention_days",
                    &[&now_ms],
                )
                .await
                .map_err(StoreError::from)
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn set_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        self.set_tenant_days(tenant, "retention_days", "retention", days)
    }
}

#[cfg(test)]
mod tests {
    use tether_protocol::telemetry::{Kind, Record};

    use super::super::{PgStore, test_server};
    use crate::store::{TelemetryQuery, TelemetryStore, TenantStore};

    /// A batch of any size is one statement (more records than a multi-row VALUES list could
    /// take parameters for), a pair repeated within it is stored and counted once, and a
    /// batch sent again is all old.
    #[test]
    fn big_batches_with_repeats_count_each_new_pair_once() -> Result<(), Box<dyn std::error::Error>>
    {
        let db = test_server::Database::create()?;
        let store = PgStore::open(&db.url, 2)?;
        let tenant = store.add_tenant("acme")?;
        let record = |seq: u64| Record {
            seq,
            ts_ms: 1_000 + seq as i64,
            kind: Kind::Metric,
            topic: "t".into(),
            level: None,
            payload: serde_json::json!({ "v": seq }),
        };
        let mut batch: Vec<Record> = (1..=10_000).map(record).collect();
        batch.push(record(5));
        assert_eq!(store.insert_telemetry("dev_1", tenant.id, &batch)?, 10_000);
        assert_eq!(store.insert_telemetry("dev_1", tenant.id, &batch)?, 0);
        assert_eq!(store.insert_telemetry("dev_1", tenant.id, &[])?, 0);
        let more: Vec<Record> = (9_999..=10_001).map(record).collect();
        assert_eq!(store.insert_telemetry("dev_1", tenant.id, &more)?, 1);
        let last = store.telemetry(&TelemetryQuery {
            device_id: "dev_1",
            after_seq: 10_000,
            limit: 10,
            ..Default::default()
        })?;
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].seq, last[0].ts_ms), (10_001, 11_001));
        assert_eq!(last[0].payload, serde_json::json!({ "v": 10_001 }));
        Ok(())
    }
}
