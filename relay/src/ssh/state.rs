//! What the SSH front knows about one connection: who the peer turned out to be, the channels
//! and tasks it holds, and why the relay closed it. The handler and the connection's task
//! share it; the login sweep ([`super::evict`]) reads it through [`LiveLogin`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use russh::keys::PublicKey;
use russh::server::{self, Msg};
use russh::{Channel, ChannelId};

use crate::store::{Device, EngineerIdentity};

/// Who the client on a connection turned out to be.
#[derive(Clone)]
pub(super) enum Peer {
    /// Not authenticated yet.
    Unknown,
    /// A device enrolling with this key.
    Enrolling { key: PublicKey },
    /// A device holding its link.
    Device { device: Box<Device> },
    /// An engineer. `login` is the SSH user name: a device name for relay-terminated
    /// sessions, or anything for ProxyJump.
    Engineer {
        identities: Vec<EngineerIdentity>,
        login: String,
        fingerprint: String,
    },
}

/// An engineer login the relay holds, as [`super::Front::evict_engineers`] re-checks it.
pub(super) struct LiveLogin {
    /// The connection's state: its handle, and its identities (whose roles the check keeps
    /// current).
    pub(super) state: Arc<Mutex<ConnState>>,
    /// The key the engineer logged in with (a certificate's own key for certificate logins).
    pub(super) fingerprint: String,
    /// For a certificate login, the fingerprint of the CA that signed it.
    pub(super) ca: Option<String>,
    /// Where the engineer connected from, for the audit trail.
    pub(super) remote: SocketAddr,
}

/// Per-connection state shared between the handler and the connection's task.
pub(super) struct ConnState {
    /// Who the peer is, once it authenticated.
    pub(super) peer: Peer,
    /// A device's session channels, until its subsystem request says what each is for.
    pub(super) device_channels: HashMap<ChannelId, Channel<Msg>>,
    /// Set once a device announced its link (tcpip-forward): the connection task unregisters it.
    pub(super) linked_device: Option<String>,
    /// This connection's place among the handshakes in progress, given back once it
    /// authenticated.
    pub(super) handshake: Option<crate::limits::Permit<std::net::IpAddr>>,
    /// The connection's handle, to disconnect it with a message from within the handler.
    pub(super) handle: Option<server::Handle>,
    /// Channels open on this connection.
    pub(super) channels: Arc<crate::limits::ChannelCount>,
    /// The device's telemetry channel tasks: when the relay stops, the connection waits for
    /// them to acknowledge the batch they are committing before it says goodbye.
    pub(super) telemetry: Vec<tokio::task::JoinHandle<()>>,
    /// Whether an enrolling peer already opened its one enrollment channel.
    pub(super) enroll_channel_used: bool,
    /// Why the relay closed this engineer's connection, if it did: the end reason of the
    /// sessions it carried.
    pub(super) evicted: Option<String>,
}

/// Disconnects a connection with a message for its client, from a task of its own (the
/// handler must not wait on its own session loop).
pub(super) fn disconnect(handle: server::Handle, message: String) {
    tokio::spawn(async move {
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, message, "en".into())
            .await;
    });
}

/// Locks a connection's state (a poisoned lock is taken over rather than passed on as a
/// panic).
pub(super) fn lock(state: &Mutex<ConnState>) -> std::sync::MutexGuard<'_, ConnState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}
