//! The device links that are up on this relay right now.
//!
//! Only live connection handles live here; everything durable (online flag, timestamps) is in
//! the store. A device that reconnects while its old link still looks alive (a NAT dropped the
//! old one silently) replaces it: the newest link wins and the old one is disconnected.

use std::collections::HashMap;
use std::sync::Mutex;

use russh::server::Handle;

/// One live device link.
#[derive(Clone)]
pub struct LiveLink {
    /// Identifies the SSH connection, so a late cleanup of an old link cannot remove a newer one.
    pub conn_id: u64,
    /// Handle of the device's SSH connection, used to open channels towards the device.
    pub handle: Handle,
    /// The device's public key, which is also the host key of its embedded SSH server.
    pub device_key: russh::keys::PublicKey,
    /// Whether the agent serves its embedded SSH server on relay-opened `session` channels
    /// (it announced [`tether_protocol::names::LINK_SESSION_CHANNELS`]); earlier agents are
    /// reached on a `forwarded-tcpip` channel to the legacy name.
    pub session_channels: bool,
    /// Whether the agent serves engineers' sessions straight on a link channel (it announced
    /// [`tether_protocol::names::LINK_FORWARD_ADDRESS_SESSIONS`]), with no SSH session inside.
    pub link_sessions: bool,
}

/// Live device links by device id.
#[derive(Default)]
pub struct Registry {
    links: Mutex<HashMap<String, LiveLink>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveLink>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is safe to keep using.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a link, returning the link it replaced.
    pub fn insert(&self, device_id: &str, link: LiveLink) -> Option<LiveLink> {
        self.lock().insert(device_id.to_string(), link)
    }

    /// Removes the link of `device_id` if it is still connection `conn_id`; tells whether it was.
    pub fn remove(&self, device_id: &str, conn_id: u64) -> bool {
        let mut links = self.lock();
        if links.get(device_id).is_some_and(|l| l.conn_id == conn_id) {
            links.remove(device_id);
            true
        } else {
            false
        }
    }

    /// Removes the link of `device_id` whatever connection it is.
    pub fn take(&self, device_id: &str) -> Option<LiveLink> {
        self.lock().remove(device_id)
    }

    /// The live link of a device.
    pub fn get(&self, device_id: &str) -> Option<LiveLink> {
        self.lock().get(device_id).cloned()
    }

    /// Ids of all devices with a live link.
    pub fn device_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Number of live links.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no device is linked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
