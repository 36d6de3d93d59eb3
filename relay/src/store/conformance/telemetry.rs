//! Conformance: telemetry, deduplicated on (device, seq).

use super::*;

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

pub(crate) fn dedup_filters_and_retention(store: &dyn Backend) -> TestResult {
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
