//! Change notification: whoever changes what a device should do says so, instead of every
//! device's control channel asking the store again and again.
//!
//! Two things a connected device must hear about at once are a new desired state (a deployment,
//! a removal, a configuration push) and a queued remote action (a new one, or one put back in
//! the queue). The store methods that write those record the device's change and, once the
//! change is committed, tell the relay's one [`Notifier`]; the device's control channel waits on
//! its own [`DeviceChanges`] and reads the store only when something did change. An idle device
//! costs the relay nothing, and the relay's cost does not grow with the number of connected
//! devices.
//!
//! Writes made by another process on the same store (the admin CLI) cannot reach this
//! process's notifier directly, so the backend records each change durably with the write that
//! made it, in the same transaction, and one relay-wide [`Watcher`] asks the backend a few times
//! a second for changes made through other handles ([`Backend::pick_up_changes`](super::Backend::pick_up_changes)). With SQLite
//! that asks `PRAGMA data_version` (which moves only when another connection committed) and
//! reads the new rows of `device_changes` only then; with PostgreSQL it reads the rows past
//! those it has seen. A relay of a cluster also forwards each change made through it to the
//! other relays over NATS ([`Notifier::forward_to`], `crate::cluster::notify`), which then
//! hear of it at once; their feed still picks it up, for a notification NATS lost. A
//! notification carries no data: the receiver reads the store, so one that is missed or
//! repeated costs at most a read, never a wrong state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::Store;

/// How often the watcher asks the backend for changes made by other processes: often enough
/// that an admin command reaches its device within about a second.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

type Channels = HashMap<String, watch::Sender<u64>>;

/// Where a change made through this handle is also told: the cluster's notification bus.
type Forward = Arc<dyn Fn(&str) + Send + Sync>;

/// The relay's in-process notifier: one channel per device somebody is waiting on.
#[derive(Clone, Default)]
pub struct Notifier {
    /// Only devices with a live [`DeviceChanges`] have an entry; notifying any other device
    /// is a map lookup that finds nothing.
    devices: Arc<Mutex<Channels>>,
    /// Set once by a relay of a cluster, so that other relays hear of its changes at once.
    forward: Arc<OnceLock<Forward>>,
    /// Signalled when who may stay connected changed (a device rejected, an engineer
    /// disabled, ...): the relay's eviction sweep waits on it.
    access: Arc<Notify>,
}

impl Notifier {
    /// A notifier nobody waits on yet.
    pub fn new() -> Notifier {
        Notifier::default()
    }

    fn lock(&self) -> MutexGuard<'_, Channels> {
        // The map stays consistent whatever panicked while holding it: entries are only
        // inserted or removed whole.
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts waiting for changes of `device_id`.
    ///
    /// A new subscription counts as changed, so its first [`DeviceChanges::changed`] returns
    /// at once: the subscriber reads the current state then, and nothing written between
    /// subscribing and that read is missed.
    pub fn subscribe(&self, device_id: &str) -> DeviceChanges {
        let mut devices = self.lock();
        let sender = devices
            .entry(device_id.to_string())
            .or_insert_with(|| watch::channel(0).0);
        let mut receiver = sender.subscribe();
        receiver.mark_changed();
        DeviceChanges {
            device_id: device_id.to_string(),
            receiver,
            notifier: self.clone(),
        }
    }

    /// Tells whoever waits on `device_id` that its desired state or its queue changed, and
    /// the forward, if one is set: the store calls this for the changes written through it.
    pub fn notify(&self, device_id: &str) {
        self.notify_local(device_id);
        if let Some(forward) = self.forward.get() {
            forward(device_id);
        }
    }

    /// Tells only this process's waiters: for changes heard of from elsewhere (the change
    /// feed, another relay), which must not be forwarded again.
    pub fn notify_local(&self, device_id: &str) {
        if let Some(sender) = self.lock().get(device_id) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Also tells `forward` of every change written through this handle from now on. Set
    /// once; returns false (and changes nothing) when a forward is already set.
    pub fn forward_to(&self, forward: impl Fn(&str) + Send + Sync + 'static) -> bool {
        self.forward.set(Arc::new(forward)).is_ok()
    }

    /// What [`Notifier::notify_access`] signals: the relay's eviction sweep waits on it.
    pub fn access_changes(&self) -> Arc<Notify> {
        self.access.clone()
    }

    /// Tells this process that who may stay connected changed: the store's feed calls this
    /// when the access generation moved, and the cluster's bus when another relay says so.
    pub fn notify_access(&self) {
        self.access.notify_one();
    }

    /// How many devices somebody waits on.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }
}

/// Changes of one device, for as long as this value lives.
pub struct DeviceChanges {
    device_id: String,
    receiver: watch::Receiver<u64>,
    notifier: Notifier,
}

impl DeviceChanges {
    /// Waits until the device's desired state or queue changed since the last call (returns at
    /// once the first time). Cancel-safe: a change that arrives while nobody waits is kept.
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            // The sender lives in the notifier's map as long as this receiver does, so this
            // does not happen; never returning beats waking the caller in a loop.
            std::future::pending::<()>().await;
        }
    }

    /// Whether a change arrived that [`DeviceChanges::changed`] has not returned for yet.
    pub fn has_changed(&self) -> bool {
        self.receiver.has_changed().unwrap_or(false)
    }

    /// Whether a change arrived since the last wait or take, marking it seen: the
    /// non-blocking form of [`DeviceChanges::changed`].
    pub fn take_change(&mut self) -> bool {
        let changed = self.has_changed();
        self.receiver.borrow_and_update();
        changed
    }
}

impl Drop for DeviceChanges {
    fn drop(&mut self) {
        let mut devices = self.notifier.lock();
        // This receiver still counts: it is the last one when the count is 1.
        if devices
            .get(&self.device_id)
            .is_some_and(|s| s.receiver_count() <= 1)
        {
            devices.remove(&self.device_id);
        }
    }
}

/// The relay-wide task that picks up changes made by other processes; stops when dropped.
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Starts watching `store` for changes made through other handles on it.
    pub fn spawn(store: Arc<Store>) -> Watcher {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.pick_up_changes()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!("watching the store for changes: {e}"),
                    Err(e) => tracing::error!("watching the store for changes: {e}"),
                }
            }
        });
        Watcher { task }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notification_reaches_its_device_only() {
        let n = Notifier::new();
        let mut a = n.subscribe("dev_a");
        let mut b = n.subscribe("dev_b");
        // Both start out changed: their first wait returns at once.
        a.changed().await;
        b.changed().await;
        assert!(!a.has_changed() && !b.has_changed());
        n.notify("dev_a");
        assert!(a.has_changed());
        assert!(!b.has_changed());
        a.changed().await;
        assert!(!a.has_changed());
        // A device nobody waits on costs nothing and keeps no entry.
        n.notify("dev_c");
        assert_eq!(n.watched(), 2);
    }

    #[tokio::test]
    async fn only_changes_made_here_are_forwarded() {
        let n = Notifier::new();
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let into = forwarded.clone();
        assert!(n.forward_to(move |d| {
            into.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(d.to_string())
        }));
        assert!(!n.forward_to(|_| {}), "a second forward must be refused");
        let mut a = n.subscribe("dev_a");
        a.changed().await;
        n.notify("dev_a");
        n.notify_local("dev_b");
        n.notify_local("dev_a");
        assert!(a.has_changed());
        assert_eq!(
            *forwarded.lock().unwrap_or_else(|p| p.into_inner()),
            ["dev_a"]
        );
    }

    #[tokio::test]
    async fn the_entry_goes_with_its_last_subscription() {
        let n = Notifier::new();
        let first = n.subscribe("dev_a");
        let mut second = n.subscribe("dev_a");
        drop(first);
        assert_eq!(n.watched(), 1);
        second.changed().await;
        n.notify("dev_a");
        assert!(second.has_changed());
        drop(second);
        assert_eq!(n.watched(), 0);
    }
}
