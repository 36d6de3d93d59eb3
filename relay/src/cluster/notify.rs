//! Change notifications between the relays of a cluster, on NATS.
//!
//! Two facts travel: a device's desired state or queue changed ([`DEVICE_SUBJECT`], from a
//! deployment, an action or a configuration push made through one relay's API or the admin
//! CLI), and who may connect changed ([`ACCESS_SUBJECT`]: a device rejected or removed, an
//! engineer removed or disabled, a key or CA withdrawn, a role lowered). A relay that hears of
//! the first wakes the device's control channel if it holds the link; one that hears of the
//! second runs its eviction sweep at once instead of at its next tick.
//!
//! Notifications carry no state, only a hint to read the store, and core NATS is at most once:
//! a notification lost (NATS away, a slow consumer) delays the change until the relay's change
//! feed or its next sweep picks it up, never loses it, since the store is the truth. The
//! outbound queue is bounded; a change that finds it full is left to the feed likewise.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;
use crate::store::Notifier;

/// The subject of device change notifications.
pub const DEVICE_SUBJECT: &str = "tether.notify.device";

/// The subject of access change notifications.
pub const ACCESS_SUBJECT: &str = "tether.notify.access";

/// The origin of notifications from admin commands.
const ADMIN_ORIGIN: &str = "(admin)";

/// How many outbound notifications may wait for NATS.
const OUTBOX: usize = 4096;

/// The longest device id a notification may carry (ids are far shorter; a longer one is not
/// a device's and is dropped unread).
const MAX_DEVICE_ID: usize = 256;

/// One notification on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    /// The relay (or [`ADMIN_ORIGIN`] for an admin command) it came from, so that a relay skips its own.
    origin: String,
    /// The device whose desired state or queue changed; absent for an access change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
}

/// Starts forwarding the changes written through `notifier` to the other relays, and telling
/// `notifier` and `access` what they announce. Runs until the client is dropped; returns at
/// once, also while NATS is away.
pub fn start(
    client: async_nats::Client,
    relay_id: &str,
    notifier: &Notifier,
    access: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let (tx, rx) = mpsc::channel::<String>(OUTBOX);
    let dropped = metrics.clone();
    notifier.forward_to(move |device| {
        if tx.try_send(device.to_string()).is_err() {
            dropped.cluster_notes("device", "dropped").inc();
        }
    });
    tokio::spawn(publish(
        client.clone(),
        relay_id.to_string(),
        rx,
        metrics.clone(),
    ));
    tokio::spawn(listen(
        client,
        relay_id.to_string(),
        notifier.clone(),
        access,
        metrics,
    ));
}

async fn publish(
    client: async_nats::Client,
    origin: String,
    mut rx: mpsc::Receiver<String>,
    metrics: Arc<Metrics>,
) {
    while let Some(device) = rx.recv().await {
        let note = Note {
            origin: origin.clone(),
            device: Some(device),
        };
        let Ok(body) = serde_json::to_vec(&note) else {
            continue;
        };
        match client.publish(DEVICE_SUBJECT, body.into()).await {
            Ok(()) => {
                metrics.cluster_notes("device", "sent").inc();
            }
            Err(e) => {
                metrics.cluster_notes("device", "dropped").inc();
                tracing::debug!("publishing a device change: {e}");
            }
        }
    }
}

async fn listen(
    client: async_nats::Client,
    relay_id: String,
    notifier: Notifier,
    access: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let mut delay = Duration::from_millis(200);
    let (mut devices, mut accesses) = loop {
        let subscribed = async {
            Ok::<_, async_nats::SubscribeError>((
                client.subscribe(DEVICE_SUBJECT).await?,
                client.subscribe(ACCESS_SUBJECT).await?,
            ))
        };
        match subscribed.await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!("subscribing to change notifications: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    loop {
        let (kind, message) = tokio::select! {
            Some(m) = devices.next() => ("device", m),
            Some(m) = accesses.next() => ("access", m),
            else => return,
        };
        let Ok(note) = serde_json::from_slice::<Note>(&message.payload) else {
            metrics.cluster_notes(kind, "malformed").inc();
            continue;
        };
        if note.origin == relay_id {
            continue;
        }
        metrics.cluster_notes(kind, "received").inc();
        match (kind, note.device) {
            ("device", Some(device)) if device.len() <= MAX_DEVICE_ID => {
                notifier.notify_local(&device)
            }
            ("access", _) => access.notify_one(),
            _ => {
                metrics.cluster_notes(kind, "malformed").inc();
            }
        }
    }
}

/// Announces, from a process that is not a serving relay (the admin CLI), that `devices`
/// changed and, if `access`, that who may connect changed. Best effort within a few seconds:
/// the relays' change feeds and sweeps pick up the same changes from the store anyway.
pub async fn announce(
    url: &str,
    devices: &[String],
    access: bool,
) -> Result<(), super::ClusterError> {
    let nats = |e: &dyn std::fmt::Display| super::ClusterError::Nats(e.to_string());
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .map_err(|e| nats(&e))?;
    // Not a valid relay id, so no relay mistakes it for its own.
    let origin = ADMIN_ORIGIN.to_string();
    for device in devices {
        let note = Note {
            origin: origin.clone(),
            device: Some(device.clone()),
        };
        let body = serde_json::to_vec(&note).map_err(|e| nats(&e))?;
        client
            .publish(DEVICE_SUBJECT, body.into())
            .await
            .map_err(|e| nats(&e))?;
    }
    if access {
        let body = serde_json::to_vec(&Note {
            origin,
            device: None,
        })
        .map_err(|e| nats(&e))?;
        client
            .publish(ACCESS_SUBJECT, body.into())
            .await
            .map_err(|e| nats(&e))?;
    }
    client.flush().await.map_err(|e| nats(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While NATS is away nothing drains the outbound queue: changes beyond its bound are
    /// counted as dropped at once, the writer is never held up, and memory stays bounded.
    #[tokio::test]
    async fn changes_beyond_the_outbox_are_dropped_while_nats_is_away()
    -> Result<(), Box<dyn std::error::Error>> {
        // A port nobody listens on: NATS is away for the whole test.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        const CLIENT_QUEUE: usize = 16;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .client_capacity(CLIENT_QUEUE)
            .connect(format!("127.0.0.1:{port}"))
            .await?;
        let notifier = Notifier::new();
        let metrics = Metrics::new();
        start(
            client,
            "relay-a",
            &notifier,
            Arc::new(Notify::new()),
            metrics.clone(),
        );
        const CHANGES: usize = 20_000;
        let started = std::time::Instant::now();
        for i in 0..CHANGES {
            notifier.notify(&format!("dev_{i:016x}"));
        }
        let took = started.elapsed();
        // Let the publishing task take what it can (the client's queue, then it blocks).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let dropped = metrics.cluster_notes("device", "dropped").get();
        let sent = metrics.cluster_notes("device", "sent").get();
        // At most the outbox, the client's queue and the one in the publisher's hands wait.
        let waiting = CHANGES as u64 - dropped - sent;
        assert!(
            waiting <= (OUTBOX + CLIENT_QUEUE + 1) as u64,
            "{waiting} changes wait for NATS (dropped {dropped}, sent {sent})"
        );
        assert!(
            dropped >= (CHANGES - OUTBOX - CLIENT_QUEUE - 1) as u64,
            "only {dropped} dropped"
        );
        // Not a performance figure: a writer that waited for NATS would take seconds here.
        assert!(took < Duration::from_secs(2), "notifying took {took:?}");
        Ok(())
    }
}
