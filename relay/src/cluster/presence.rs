//! The presence map: which relay holds which device's link, in a JetStream key-value bucket.
//!
//! The holder writes `device.<id>` when the link comes up and every [`REFRESH`] while it holds
//! it; the bucket keeps a value [`PRESENCE_TTL`] (its `max_age`: nats-server 2.9 has no per-key
//! TTL), so the devices of a relay that died drop out of the map within that time, with nobody
//! having to notice the death. Each link has a generation, unique across relays and growing
//! with time: a holder deletes its entry when its link ends only if the entry is still its own
//! (same relay and generation, and the revision it read), so a stale holder's delete never
//! removes the entry of the relay the device moved to.
//!
//! A link coming up is also announced on `tether.link.<device id>`. A relay that still holds a
//! link to that device (a half-open connection through a NAT that forgot it) drops it at once
//! instead of waiting for its keepalives to fail: the newest link wins, across relays as within
//! one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ClusterError;
use crate::registry::Registry;

/// The bucket of the presence map.
pub const BUCKET: &str = "tether-presence";

/// How long a presence entry lives without a refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);

/// How often a holder writes its entries again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Messages one subscription of this relay queues at most before NATS's client drops more.
const SUBSCRIPTION_CAPACITY: usize = 1024;

/// The subject prefix of link announcements.
const LINK_SUBJECT: &str = "tether.link";

/// What the map says of a device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// The relay holding the link.
    pub relay: String,
    /// The link's generation.
    pub generation: u64,
    /// When the holder last wrote the entry (ms since the Unix epoch).
    pub at_ms: u64,
    /// Where other relays reach the holder's peer port (`cluster.advertise`), if it has one.
    #[serde(default)]
    pub peer: Option<String>,
}

/// One relay's side of the presence map.
pub struct Presence {
    relay_id: String,
    /// This relay's peer address, written into its entries.
    advertise: Option<String>,
    /// The cluster's host key, with which this relay logs in on the others' peer ports.
    cluster_key: Arc<russh::keys::PrivateKey>,
    client: async_nats::Client,
    /// The bucket, once NATS answered; `None` before.
    kv: watch::Receiver<Option<kv::Store>>,
    /// The links this relay holds: device id to (connection id, generation).
    held: Mutex<HashMap<String, (u64, u64)>>,
    last_generation: AtomicU64,
}

fn now_ms() -> u64 {
    u64::try_from(tether_protocol::clock::now_ms()).unwrap_or(0)
}

fn key(device_id: &str) -> String {
    format!("device.{device_id}")
}

fn nats_error(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

impl Presence {
    /// Connects to NATS at `url` as relay `relay_id` and starts the background work: creating
    /// the bucket (retried until NATS answers), refreshing held entries, and dropping links
    /// that another relay took over from `registry`. Returns at once, also while NATS is away.
    pub async fn start(
        url: &str,
        relay_id: &str,
        advertise: Option<String>,
        cluster_key: Arc<russh::keys::PrivateKey>,
        registry: Arc<Registry>,
    ) -> Result<Arc<Presence>, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("tether-relay {relay_id}"))
            // Messages waiting per subscription (announcements, notifications): all of them
            // hints that may be lost, so a flood beyond this is dropped instead of queued.
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => tracing::warn!(
                        "NATS is unreachable: this relay serves the boards it holds and the API; cross-relay presence and takeover are unavailable until it is back"
                    ),
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    other => tracing::debug!("NATS: {other}"),
                }
            })
            .connect(url)
            .await
            .map_err(nats_error)?;
        let (kv_tx, kv) = watch::channel(None);
        let presence = Arc::new(Presence {
            relay_id: relay_id.to_string(),
            advertise,
            cluster_key,
            client,
            kv,
            held: Mutex::new(HashMap::new()),
            last_generation: AtomicU64::new(0),
        });
        tokio::spawn(refresh(Arc::downgrade(&presence), kv_tx));
        tokio::spawn(take_over(presence.clone(), registry));
        Ok(presence)
    }

    /// This relay's id.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// The NATS connection, shared with the change notifications.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        // Entries are inserted and removed whole: a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A generation later than any this relay handed out and, by its clock, than any other
    /// relay's of an earlier millisecond.
    fn next_generation(&self) -> u64 {
        let candidate = now_ms() << 12;
        let mut last = self.last_generation.load(Ordering::SeqCst);
        loop {
            let next = candidate.max(last + 1);
            match self.last_generation.compare_exchange(
                last,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Records that this relay holds `device_id`'s link, connection `conn_id`: writes the
    /// entry and announces the link, in the background.
    pub fn link_up(self: &Arc<Self>, device_id: &str, conn_id: u64) {
        let generation = self.next_generation();
        self.held()
            .insert(device_id.to_string(), (conn_id, generation));
        let me = self.clone();
        let device = device_id.to_string();
        tokio::spawn(async move {
            let holder = me.entry(generation);
            let Ok(body) = serde_json::to_vec(&holder) else {
                return;
            };
            if let Err(e) = me
                .client
                .publish(format!("{LINK_SUBJECT}.{device}"), body.clone().into())
                .await
            {
                tracing::debug!("announcing the link of {device}: {e}");
            }
            let _ = me.write(&device, body).await;
        });
    }

    /// Records that connection `conn_id`'s link of `device_id` ended: its entry is deleted if
    /// it is still this link's.
    pub fn link_down(self: &Arc<Self>, device_id: &str, conn_id: u64) {
        let generation = {
            let mut held = self.held();
            match held.get(device_id) {
                Some((c, g)) if *c == conn_id => {
                    let g = *g;
                    held.remove(device_id);
                    g
                }
                _ => return,
            }
        };
        let me = self.clone();
        let device = device_id.to_string();
        tokio::spawn(async move {
            let Some(kv) = me.kv.borrow().clone() else {
                return;
            };
            let key = key(&device);
            let Ok(Some(entry)) = kv.entry(&key).await else {
                return;
            };
            let ours = serde_json::from_slice::<Holder>(&entry.value)
                .is_ok_and(|h| h.relay == me.relay_id && h.generation == generation);
            if ours && let Err(e) = kv.delete_expect_revision(&key, Some(entry.revision)).await {
                // Another relay wrote the entry meanwhile: it is theirs now.
                tracing::debug!("presence of {device} changed hands: {e}");
            }
        });
    }

    /// This relay's entry for a link of `generation`.
    fn entry(&self, generation: u64) -> Holder {
        Holder {
            relay: self.relay_id.clone(),
            generation,
            at_ms: now_ms(),
            peer: self.advertise.clone(),
        }
    }

    /// A stream to `target` through the relay that holds the device's link, when another
    /// relay with a peer port does; `Ok(None)` when no relay holds it (or only this one).
    pub async fn open_remote(
        &self,
        target: &super::peer::Target,
        originator: std::net::SocketAddr,
    ) -> Result<Option<super::peer::PeerStream>, ClusterError> {
        let Some(holder) = self.holder(target.device_id()).await? else {
            return Ok(None);
        };
        let Some(addr) = holder.peer.filter(|_| holder.relay != self.relay_id) else {
            return Ok(None);
        };
        super::peer::open(&addr, self.cluster_key.clone(), target, originator)
            .await
            .map(Some)
            .map_err(ClusterError::from)
    }

    /// Writes `device`'s entry; tells whether it was written.
    async fn write(&self, device: &str, body: Vec<u8>) -> bool {
        let Some(kv) = self.kv.borrow().clone() else {
            return false;
        };
        match kv.put(key(device), body.into()).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("writing the presence of {device}: {e}");
                false
            }
        }
    }

    /// The relay that holds `device_id`'s link, by the map; `None` when no relay does.
    pub async fn holder(&self, device_id: &str) -> Result<Option<Holder>, ClusterError> {
        let kv = self
            .kv
            .borrow()
            .clone()
            .ok_or_else(|| ClusterError::Nats("the presence bucket is not open yet".into()))?;
        read(&kv, &key(device_id)).await
    }
}

async fn read(kv: &kv::Store, key: &str) -> Result<Option<Holder>, ClusterError> {
    let Some(value) = kv.get(key).await.map_err(nats_error)? else {
        return Ok(None);
    };
    serde_json::from_slice(&value)
        .map(Some)
        .map_err(|e| ClusterError::Entry {
            key: key.to_string(),
            reason: e.to_string(),
        })
}

/// The stream behind the presence bucket, as a key-value bucket's stream is laid out (one
/// value per key, deletes as markers, direct gets). The bucket is made from its stream rather
/// than with `create_key_value`, which first reads the account's JetStream limits in a form
/// that nats-server 2.9 (Debian 12's) does not answer in.
fn bucket_stream() -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: format!("KV_{BUCKET}"),
        description: Some("which tether relay holds which device's link".into()),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: PRESENCE_TTL,
        // A value is one small JSON object.
        max_message_size: 1024,
        storage: stream::StorageType::Memory,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// Opens the bucket, creating it if needed (the same configuration makes this idempotent).
async fn open_bucket(client: &async_nats::Client) -> Option<kv::Store> {
    let js = async_nats::jetstream::new(client.clone());
    let opened = async {
        js.get_or_create_stream(bucket_stream())
            .await
            .map_err(nats_error)?;
        js.get_key_value(BUCKET).await.map_err(nats_error)
    };
    match opened.await {
        Ok(kv) => Some(kv),
        Err(e) => {
            tracing::debug!("opening the presence bucket: {e}");
            None
        }
    }
}

/// Keeps the bucket open and writes every held entry again each [`REFRESH`], for as long as
/// the presence lives. A write that fails (NATS away, or back without the bucket: it lives in
/// NATS's memory) opens the bucket again at the next tick, so presence recovers by itself.
async fn refresh(presence: std::sync::Weak<Presence>, kv_tx: watch::Sender<Option<kv::Store>>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let Some(p) = presence.upgrade() else {
            return;
        };
        if let Some(kv) = open_bucket(&p.client).await {
            kv_tx.send_replace(Some(kv));
            break;
        }
        drop(p);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(REFRESH);
    }
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        tick.tick().await;
        let Some(p) = presence.upgrade() else {
            return;
        };
        if failed && let Some(kv) = open_bucket(&p.client).await {
            kv_tx.send_replace(Some(kv));
        }
        let held: Vec<(String, u64)> = p.held().iter().map(|(d, (_, g))| (d.clone(), *g)).collect();
        failed = false;
        for (device, generation) in held {
            let holder = p.entry(generation);
            if let Ok(body) = serde_json::to_vec(&holder) {
                failed |= !p.write(&device, body).await;
            }
        }
    }
}

/// Drops this relay's link of every device that linked to another relay since.
async fn take_over(presence: Arc<Presence>, registry: Arc<Registry>) {
    let mut delay = Duration::from_millis(200);
    let mut links = loop {
        match presence.client.subscribe(format!("{LINK_SUBJECT}.*")).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!("subscribing to link announcements: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    while let Some(message) = links.next().await {
        let Some(device) = message
            .subject
            .as_str()
            .strip_prefix(LINK_SUBJECT)
            .and_then(|s| s.strip_prefix('.'))
        else {
            continue;
        };
        let Ok(holder) = serde_json::from_slice::<Holder>(&message.payload) else {
            continue;
        };
        if holder.relay == presence.relay_id {
            continue;
        }
        let Some((conn_id, generation)) = presence.held().get(device).copied() else {
            continue;
        };
        if generation >= holder.generation {
            // An announcement older than this relay's own link: the device came back here.
            continue;
        }
        // Out of the registry first: the closing connection then leaves the device's online
        // flag to the relay that holds it now.
        let Some(link) = registry.get(device).filter(|l| l.conn_id == conn_id) else {
            continue;
        };
        presence.held().remove(device);
        registry.remove(device, conn_id);
        tracing::info!(
            "device {device} linked to relay {}; dropping this relay's stale link",
            holder.relay
        );
        let _ = link
            .handle
            .disconnect(
                russh::Disconnect::ByApplication,
                format!("the device linked to relay {}", holder.relay),
                "en".into(),
            )
            .await;
    }
}

/// Every entry of the presence map, by device id (for `relay cluster status`).
pub async fn all(url: &str) -> Result<Vec<(String, Holder)>, ClusterError> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(nats_error)?;
    let kv = open_bucket(&client)
        .await
        .ok_or_else(|| ClusterError::Nats("the presence bucket cannot be opened".into()))?;
    let mut keys = kv.keys().await.map_err(nats_error)?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(nats_error)?;
        if let Some(h) = read(&kv, &k).await? {
            out.push((k.strip_prefix("device.").unwrap_or(&k).to_string(), h));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
