//! What the SSH front shares between connections ([`Front`]), and the handler of one
//! connection (`Conn`) with the helpers every part of it uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use russh::server;
use tokio::sync::watch;

use super::state::{ConnState, LiveLogin, Peer, disconnect, lock};
use crate::registry::Registry;
use crate::store::Store;

/// Everything the SSH front shares between connections.
pub struct Front {
    /// The durable store.
    pub store: Arc<Store>,
    /// Live device links.
    pub registry: Arc<Registry>,
    /// russh server settings (host key, keepalives).
    pub config: Arc<server::Config>,
    /// Where devices' telemetry is committed.
    pub sink: Arc<dyn crate::sink::Sink>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where recipes and artifacts are stored, for devices that fetch them.
    pub artifacts_dir: std::path::PathBuf,
    /// Where session recordings go.
    pub sessions_dir: std::path::PathBuf,
    /// Session settings.
    pub sessions: crate::config::SessionsConfig,
    /// Abuse limits and what is held against them.
    pub limits: Arc<crate::limits::Limits>,
    /// Engineers' sessions being carried now; shutdown waits for their records to be written.
    pub active_sessions: Arc<std::sync::atomic::AtomicUsize>,
    /// Source of connection ids.
    pub(super) next_conn: AtomicU64,
    /// Engineer logins held now, by connection id: re-checked against the store every few
    /// seconds ([`Front::evict_engineers`]).
    engineers: Mutex<HashMap<u64, LiveLogin>>,
    /// Turns true when the relay shuts down, so every connection is told goodbye.
    pub(super) shutdown: watch::Receiver<bool>,
    /// This relay's side of the cluster's presence map, when it is one of a cluster.
    pub presence: Option<Arc<crate::cluster::Presence>>,
    /// Woken when who may connect changed (the store's access generation moved, or another
    /// relay said so): the eviction sweep runs then, and only then but for a slow backstop.
    pub access_changed: Arc<tokio::sync::Notify>,
}

/// The russh handler of one SSH connection.
pub(super) struct Conn {
    /// What all connections share.
    pub(super) front: Arc<Front>,
    /// This connection's id, as the registry and the live logins know it.
    pub(super) conn_id: u64,
    /// Where the client connected from (as a trusted proxy reports it, for WebSocket links).
    pub(super) remote: SocketAddr,
    /// `tcp` or `websocket`, for logs and the audit trail.
    pub(super) transport: &'static str,
    /// State shared with the connection's task.
    pub(super) state: Arc<Mutex<ConnState>>,
}

impl Front {
    /// Creates the SSH front.
    pub fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        config: Arc<server::Config>,
        sink: Arc<dyn crate::sink::Sink>,
        relay_config: &crate::config::RelayConfig,
        shutdown: watch::Receiver<bool>,
        presence: Option<Arc<crate::cluster::Presence>>,
    ) -> Arc<Self> {
        let access_changed = store.notifier().access_changes();
        Arc::new(Self {
            store,
            registry,
            config,
            sink,
            metrics: crate::metrics::Metrics::new(),
            artifacts_dir: relay_config.artifacts_dir(),
            sessions_dir: relay_config.sessions_dir(),
            sessions: relay_config.sessions.clone(),
            limits: crate::limits::Limits::new(relay_config.limits.clone()),
            active_sessions: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            next_conn: AtomicU64::new(1),
            engineers: Mutex::new(HashMap::new()),
            shutdown,
            presence,
            access_changed,
        })
    }

    /// The engineer logins held now, by connection id.
    pub(super) fn live_logins(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveLogin>> {
        self.engineers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Conn {
    /// Who the peer is (a copy: the state is not held across awaits).
    pub(super) fn peer(&self) -> Peer {
        lock(&self.state).peer.clone()
    }

    /// Registers this connection's engineer login for [`Front::evict_engineers`].
    pub(super) fn hold_login(&self, fingerprint: String, ca: Option<String>) {
        self.front.live_logins().insert(
            self.conn_id,
            LiveLogin {
                state: self.state.clone(),
                fingerprint,
                ca,
                remote: self.remote,
            },
        );
    }

    /// Disconnects this connection with `message` for the client.
    pub(super) fn disconnect_with(&self, message: String) {
        if let Some(handle) = lock(&self.state).handle.clone() {
            disconnect(handle, message);
        }
    }

    /// A place for one more channel on this connection.
    pub(super) fn open_channel(
        &self,
    ) -> Result<crate::limits::Permit<()>, crate::limits::LimitHit> {
        let channels = lock(&self.state).channels.clone();
        channels.open(self.front.limits.config.channels_per_connection)
    }
}
