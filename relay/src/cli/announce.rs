//! Telling the relays of a cluster what an admin command changed, so that they act on it at
//! once: the devices whose desired state or queue it changed, and whether who may connect may
//! have changed. Best effort: a relay that misses the announcement picks up the same change
//! from the store (its change feed, its eviction sweep) within seconds.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::RelayConfig;
use crate::store::Store;

/// More devices than this in one command are announced as the first of them; the relays'
/// change feeds pick up the rest.
const MAX_ANNOUNCED: usize = 10_000;

/// How long an admin command waits for NATS before leaving the announcement to the feeds.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(3);

/// The changes of one admin command, collected while it runs.
pub(super) struct Announcer {
    nats: Option<String>,
    devices: Arc<Mutex<BTreeSet<String>>>,
}

impl Announcer {
    /// Collects the device changes written through `store` when `config` names the cluster's
    /// NATS; does nothing otherwise.
    pub(super) fn install(config: &RelayConfig, store: &Store) -> Announcer {
        let devices: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        if config.cluster.nats.is_some() {
            let into = devices.clone();
            store.notifier().forward_to(move |device| {
                let mut devices = into.lock().unwrap_or_else(|p| p.into_inner());
                if devices.len() < MAX_ANNOUNCED {
                    devices.insert(device.to_string());
                }
            });
        }
        Announcer {
            nats: config.cluster.nats.clone(),
            devices,
        }
    }

    /// Announces what was collected and, if `access`, that who may connect may have changed.
    pub(super) fn finish(self, access: bool) {
        let Some(url) = self.nats else {
            return;
        };
        let devices: Vec<String> = self
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if devices.is_empty() && !access {
            return;
        }
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("not announcing the change to the cluster: {e}");
                return;
            }
        };
        let sent = runtime.block_on(async {
            tokio::time::timeout(
                ANNOUNCE_TIMEOUT,
                crate::cluster::notify::announce(&url, &devices, access),
            )
            .await
        });
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "the relays will pick this change up from the store within seconds: {e}"
            ),
            Err(_) => tracing::warn!(
                "NATS did not answer within {ANNOUNCE_TIMEOUT:?}; the relays will pick this change up from the store within seconds"
            ),
        }
    }
}
