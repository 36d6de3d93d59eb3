//! Telemetry in the relay's store: what the store sink commits and what the API and CLI read.
//! Records are deduplicated on (device, seq), so a batch committed twice is stored once.

use serde::Serialize;

use super::StoreError;

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

/// Telemetry records, deduplicated on (device, seq).
pub trait TelemetryStore {
    /// Stores records of one device in one transaction, ignoring (device, seq) pairs already
    /// stored; returns how many were new.
    fn insert_telemetry(
        &self,
        device_id: &str,
        tenant_id: i64,
        records: &[tether_protocol::telemetry::Record],
    ) -> Result<usize, StoreError>;

    /// Records of a device matching `q`, oldest first (by sequence number).
    fn telemetry(&self, q: &TelemetryQuery<'_>) -> Result<Vec<StoredRecord>, StoreError>;

    /// Deletes telemetry older than each tenant's retention; returns how many records went.
    fn enforce_retention(&self) -> Result<usize, StoreError>;

    /// Sets how many days of telemetry a tenant keeps.
    fn set_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError>;
}
