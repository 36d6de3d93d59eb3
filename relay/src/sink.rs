//! Where telemetry goes once it reaches the relay.
//!
//! The upload path only knows [`Sink`]: commit a batch of one device's records durably, with
//! (device, seq) deduplication, then return. The relay acknowledges the batch to the device only
//! after `commit` returned, so a sink that loses nothing it committed gives exactly-once storage.
//! The default sink is the relay's own store, through the store interface: the embedded SQLite
//! file, or whichever backend the store runs on (PostgreSQL keeps telemetry with every other
//! durable fact). A NATS JetStream sink would implement the same trait (message id
//! `device/seq`).

use std::sync::Arc;

use tether_protocol::telemetry::Record;
use thiserror::Error;

use crate::store::{Store, StoreError};

/// Why a batch could not be committed.
#[derive(Debug, Error)]
pub enum SinkError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Durable storage for telemetry.
pub trait Sink: Send + Sync {
    /// Stores `records` of `device_id` (tenant `tenant_id`) durably; records already stored
    /// (same device and seq) are skipped. Returns how many were new.
    fn commit(
        &self,
        device_id: &str,
        tenant_id: i64,
        records: &[Record],
    ) -> Result<usize, SinkError>;
}

/// The store sink: telemetry committed into the relay's own store, whatever its backend (the
/// name is from when SQLite was the only one).
pub struct SqliteSink {
    store: Arc<Store>,
}

impl SqliteSink {
    /// A sink writing into `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

impl Sink for SqliteSink {
    fn commit(
        &self,
        device_id: &str,
        tenant_id: i64,
        records: &[Record],
    ) -> Result<usize, SinkError> {
        Ok(self.store.insert_telemetry(device_id, tenant_id, records)?)
    }
}
