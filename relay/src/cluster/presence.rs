//! The presence map: which relay holds which device's link, in two JetStream key-value buckets.
//!
//! - [`LINKS`] maps `device.<id>` to its holder: the relay and the link's generation. The holder
//!   writes the entry once, when the link comes up, and deletes it when the link ends if the entry
//!   is still its own (same relay and generation, and the revision it read), so a stale holder's
//!   delete never removes the entry of the relay the device moved to. Entries do not expire.
//! - [`RELAYS`] holds one entry per live relay, `relay.<hex id>`, with the first generation of
//!   this run of the relay (`boot`). Each relay writes its own every [`REFRESH`]; the bucket keeps
//!   a value [`PRESENCE_TTL`] (its `max_age`: nats-server 2.9 has no per-key TTL).
//!
//! A link entry counts only while its relay's entry lives and the link is of the relay's current
//! run (generation after `boot`): the links of a relay that died, or restarted, drop out of the
//! map within [`PRESENCE_TTL`] without anybody noticing the death and without any relay writing
//! anything per link while links are idle. Readers delete such dead entries as they meet them.
//! A relay's entry written while its own had lapsed or been lost (NATS restarted: the buckets
//! live in its memory) makes it write every link entry it holds again first.
//!
//! A link coming up is also announced on `tether.link.<device id>`. A relay that still holds a
//! link to that device (a half-open connection through a NAT that forgot it) drops it at once
//! instead of waiting for its keepalives to fail: the newest link wins, across relays as within
//! one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ClusterError;
use crate::registry::Registry;

/// The bucket of link entries, one per device whose link a relay holds.
pub const LINKS: &str = "tether-links";

/// The bucket of relay entries, one per live relay.
pub const RELAYS: &str = "tether-relays";

/// How long a relay's entry lives without a refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);

/// How often a relay writes its own entry again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Link entries kept at most (a device each): NATS keeps them in memory, and whoever may
/// publish on NATS could otherwise fill it. About 200 bytes each.
const MAX_LINK_ENTRIES: i64 = 2_000_000;

/// Relay entries kept at most.
const MAX_RELAY_ENTRIES: i64 = 10_000;

/// Link entries written at once when a relay writes all of its entries again.
const REWRITE_CONCURRENCY: usize = 256;

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
    /// When the link came up, or the holder last wrote the entry again (ms since the Unix
    /// epoch).
    pub at_ms: u64,
    /// Where other relays reach the holder's peer port (`cluster.advertise`), if it has one.
    #[serde(default)]
    pub peer: Option<String>,
}

/// A live relay's entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct RelayEntry {
    /// The first generation of this run of the relay: links of an earlier run are dead.
    boot: u64,
    /// When the relay last wrote the entry (ms since the Unix epoch).
    at_ms: u64,
}

/// The two buckets, once NATS answered.
#[derive(Clone)]
struct Buckets {
    links: kv::Store,
    relays: kv::Store,
}

/// One relay's side of the presence map.
pub struct Presence {
    relay_id: String,
    /// This relay's peer address, written into its entries.
    advertise: Option<String>,
    /// The cluster's host key, with which this relay logs in on the others' peer ports.
    cluster_key: Arc<russh::keys::PrivateKey>,
    client: async_nats::Client,
    /// The buckets, once NATS answered; `None` before.
    buckets: watch::Receiver<Option<Buckets>>,
    /// The links this relay holds: device id to (connection id, generation).
    held: Mutex<HashMap<String, (u64, u64)>>,
    /// Generations of this run are greater.
    boot: u64,
    last_generation: AtomicU64,
    /// A link entry could not be written: the next refresh writes them all again.
    rewrite: AtomicBool,
}

fn now_ms() -> u64 {
    u64::try_from(tether_protocol::clock::now_ms()).unwrap_or(0)
}

fn key(device_id: &str) -> String {
    format!("device.{device_id}")
}

/// The key of a relay's entry: hex, since relay ids may hold ':' that keys may not.
fn relay_key(relay_id: &str) -> String {
    format!("relay.{}", hex::encode(relay_id))
}

fn nats_error(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

impl Presence {
    /// Connects to NATS at `url` as relay `relay_id` and starts the background work: creating
    /// the buckets (retried until NATS answers), keeping this relay's entry alive, and dropping
    /// links that another relay took over from `registry`. Returns at once, also while NATS is
    /// away.
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
        let (buckets_tx, buckets) = watch::channel(None);
        let boot = now_ms() << 12;
        let presence = Arc::new(Presence {
            relay_id: relay_id.to_string(),
            advertise,
            cluster_key,
            client,
            buckets,
            held: Mutex::new(HashMap::new()),
            boot,
            last_generation: AtomicU64::new(boot),
            rewrite: AtomicBool::new(false),
        });
        tokio::spawn(refresh(Arc::downgrade(&presence), buckets_tx));
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

    fn buckets(&self) -> Option<Buckets> {
        self.buckets.borrow().clone()
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
            if !me.write(&device, body).await {
                me.rewrite.store(true, Ordering::SeqCst);
            }
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
            let Some(buckets) = me.buckets() else {
                return;
            };
            let key = key(&device);
            let Ok(Some(entry)) = buckets.links.entry(&key).await else {
                return;
            };
            let ours = serde_json::from_slice::<Holder>(&entry.value)
                .is_ok_and(|h| h.relay == me.relay_id && h.generation == generation);
            if ours
                && let Err(e) = buckets
                    .links
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await
            {
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
        let Some(buckets) = self.buckets() else {
            return false;
        };
        match buckets.links.put(key(device), body.into()).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("writing the presence of {device}: {e}");
                false
            }
        }
    }

    /// Writes the entry of every link this relay holds again; tells whether all were written.
    async fn write_all(&self) -> bool {
        let held: Vec<(String, u64)> = self
            .held()
            .iter()
            .map(|(d, (_, g))| (d.clone(), *g))
            .collect();
        let count = held.len();
        let written = futures_util::stream::iter(held)
            .map(|(device, generation)| async move {
                match serde_json::to_vec(&self.entry(generation)) {
                    Ok(body) => self.write(&device, body).await,
                    Err(_) => false,
                }
            })
            .buffer_unordered(REWRITE_CONCURRENCY)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        tracing::debug!("wrote the presence of {written} of {count} held links");
        written == count
    }

    /// The relay that holds `device_id`'s link, by the map; `None` when no live relay does.
    pub async fn holder(&self, device_id: &str) -> Result<Option<Holder>, ClusterError> {
        let buckets = self
            .buckets()
            .ok_or_else(|| ClusterError::Nats("the presence buckets are not open yet".into()))?;
        live_holder(&buckets, &key(device_id), &mut HashMap::new(), true).await
    }
}

/// The live holder of link entry `key`: the entry, if its relay's entry lives and the link is
/// of that relay's current run. Relays already looked up are in `relays`. A dead entry is
/// deleted when `clean` (unless it was written again meanwhile).
async fn live_holder(
    buckets: &Buckets,
    key: &str,
    relays: &mut HashMap<String, Option<RelayEntry>>,
    clean: bool,
) -> Result<Option<Holder>, ClusterError> {
    let Some(entry) = buckets.links.entry(key).await.map_err(nats_error)? else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let holder: Holder = parse(key, &entry.value)?;
    let relay = match relays.get(&holder.relay) {
        Some(r) => r.clone(),
        None => {
            let rkey = relay_key(&holder.relay);
            let r = match buckets.relays.get(&rkey).await.map_err(nats_error)? {
                Some(value) => Some(parse::<RelayEntry>(&rkey, &value)?),
                None => None,
            };
            relays.insert(holder.relay.clone(), r.clone());
            r
        }
    };
    if relay.is_some_and(|r| holder.generation > r.boot) {
        return Ok(Some(holder));
    }
    if clean
        && let Err(e) = buckets
            .links
            .delete_expect_revision(key, Some(entry.revision))
            .await
    {
        tracing::debug!("deleting the dead presence entry {key}: {e}");
    }
    Ok(None)
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Entry {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// The stream behind a key-value bucket, as a key-value bucket's stream is laid out (one value
/// per key, deletes as markers, direct gets). Buckets are made from their streams rather than
/// with `create_key_value`, which first reads the account's JetStream limits in a form that
/// nats-server 2.9 (Debian 12's) does not answer in.
fn bucket_stream(
    bucket: &str,
    description: &str,
    max_age: Duration,
    max_messages: i64,
) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_messages,
        max_age,
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

/// Opens both buckets, creating them if needed (the same configuration makes this idempotent).
async fn open_buckets(client: &async_nats::Client) -> Option<Buckets> {
    let js = async_nats::jetstream::new(client.clone());
    let opened = async {
        js.get_or_create_stream(bucket_stream(
            LINKS,
            "which tether relay holds which device's link",
            Duration::ZERO,
            MAX_LINK_ENTRIES,
        ))
        .await
        .map_err(nats_error)?;
        js.get_or_create_stream(bucket_stream(
            RELAYS,
            "the live tether relays of a cluster",
            PRESENCE_TTL,
            MAX_RELAY_ENTRIES,
        ))
        .await
        .map_err(nats_error)?;
        Ok::<_, ClusterError>(Buckets {
            links: js.get_key_value(LINKS).await.map_err(nats_error)?,
            relays: js.get_key_value(RELAYS).await.map_err(nats_error)?,
        })
    };
    match opened.await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::debug!("opening the presence buckets: {e}");
            None
        }
    }
}

/// Keeps the buckets open and this relay's entry alive, writing it again each [`REFRESH`] for
/// as long as the presence lives: one write per relay, however many links it holds. The entry
/// is updated at the revision this relay last wrote; when that fails (the entry lapsed while
/// the relay was stalled, or NATS lost the buckets), every link entry this relay holds is
/// written again before the relay's entry, and the buckets are opened again if NATS needs it.
async fn refresh(presence: std::sync::Weak<Presence>, buckets_tx: watch::Sender<Option<Buckets>>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let Some(p) = presence.upgrade() else {
            return;
        };
        if let Some(b) = open_buckets(&p.client).await {
            buckets_tx.send_replace(Some(b));
            break;
        }
        drop(p);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(REFRESH);
    }
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The revision of this relay's entry as last written; `None` until then.
    let mut revision: Option<u64> = None;
    loop {
        tick.tick().await;
        let Some(p) = presence.upgrade() else {
            return;
        };
        let Some(buckets) = p.buckets() else {
            continue;
        };
        let rkey = relay_key(&p.relay_id);
        let Ok(body) = serde_json::to_vec(&RelayEntry {
            boot: p.boot,
            at_ms: now_ms(),
        }) else {
            continue;
        };
        let rewrite = p.rewrite.swap(false, Ordering::SeqCst);
        if !rewrite && let Some(r) = revision {
            match buckets.relays.update(&rkey, body.clone().into(), r).await {
                Ok(r) => {
                    revision = Some(r);
                    continue;
                }
                Err(e) => tracing::debug!("refreshing this relay's presence: {e}"),
            }
        }
        // First write, a lapsed or lost entry, or a link entry not written: write all.
        if revision.is_some()
            && let Some(b) = open_buckets(&p.client).await
        {
            buckets_tx.send_replace(Some(b));
        }
        let Some(buckets) = p.buckets() else {
            continue;
        };
        if !p.write_all().await {
            p.rewrite.store(true, Ordering::SeqCst);
        }
        match buckets.relays.put(&rkey, body.into()).await {
            Ok(r) => revision = Some(r),
            Err(e) => {
                tracing::debug!("writing this relay's presence: {e}");
                revision = None;
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

/// Every live entry of the presence map, by device id (for `relay cluster status`). Reads
/// only: dead entries are left to the relays to delete.
pub async fn all(url: &str) -> Result<Vec<(String, Holder)>, ClusterError> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(nats_error)?;
    let buckets = open_buckets(&client)
        .await
        .ok_or_else(|| ClusterError::Nats("the presence buckets cannot be opened".into()))?;
    let mut keys = buckets.links.keys().await.map_err(nats_error)?;
    let mut relays = HashMap::new();
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(nats_error)?;
        if let Some(h) = live_holder(&buckets, &k, &mut relays, false).await? {
            out.push((k.strip_prefix("device.").unwrap_or(&k).to_string(), h));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
