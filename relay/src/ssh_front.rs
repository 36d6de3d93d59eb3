//! The relay's SSH port. One port serves three kinds of client, told apart by SSH user name
//! and key:
//!
//! - devices holding their link open ([`LINK_USER`], device key known to the store);
//! - devices enrolling ([`ENROLL_USER`], any key, a token in the enrollment subsystem);
//! - engineers with stock OpenSSH (any other user name, a key registered to an engineer):
//!   `ssh DEVICE@relay` is proxied to the device's embedded SSH server, `-L` forwards reach
//!   device-local addresses, and `ssh -J relay DEVICE` (a `direct-tcpip` channel to host
//!   DEVICE) reaches the device's own sshd end to end.
//!
//! Enrollment and key rotation requests are served by [`crate::device_requests`].
//!
//! Unknown devices and devices of other tenants get the same answer, so an engineer cannot
//! probe which device names exist elsewhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{HashAlg, PublicKey};
use russh::server::ChannelOpenHandle;
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tether_protocol::fleet::CONTROL_SUBSYSTEM;
use tether_protocol::names::{ENROLL_SUBSYSTEM, ENROLL_USER, KEYS_SUBSYSTEM, LINK_USER};
use tether_protocol::shutdown::stopped;
use tether_protocol::telemetry::TELEMETRY_SUBSYSTEM;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::proxy;
use crate::registry::{LiveLink, Registry};
use crate::store::blocking::with_store;
use crate::store::{Device, DeviceStatus, EngineerIdentity, Store};

/// How long a stopping relay waits for a device's telemetry channel to acknowledge the batch
/// it is committing. A commit takes milliseconds; a stuck store must not hold the stop up.
const TELEMETRY_DRAIN: Duration = Duration::from_secs(2);

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
    next_conn: AtomicU64,
    /// Engineer logins held now, by connection id: re-checked against the store every few
    /// seconds ([`Front::evict_engineers`]).
    engineers: Mutex<HashMap<u64, LiveLogin>>,
    /// Turns true when the relay shuts down, so every connection is told goodbye.
    shutdown: watch::Receiver<bool>,
}

/// Who the client on a connection turned out to be.
#[derive(Clone)]
enum Peer {
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

/// An engineer login the relay holds, as [`Front::evict_engineers`] re-checks it.
struct LiveLogin {
    /// The connection's state: its handle, and its identities (whose roles the check keeps
    /// current).
    state: Arc<Mutex<ConnState>>,
    /// The key the engineer logged in with (a certificate's own key for certificate logins).
    fingerprint: String,
    /// For a certificate login, the fingerprint of the CA that signed it.
    ca: Option<String>,
    /// Where the engineer connected from, for the audit trail.
    remote: SocketAddr,
}

/// Per-connection state shared between the handler and the connection's task.
struct ConnState {
    peer: Peer,
    /// A device's session channels, until its subsystem request says what each is for.
    device_channels: HashMap<ChannelId, Channel<Msg>>,
    /// Set once a device announced its link (tcpip-forward): the connection task unregisters it.
    linked_device: Option<String>,
    /// This connection's place among the handshakes in progress, given back once it
    /// authenticated.
    handshake: Option<crate::limits::Permit<std::net::IpAddr>>,
    /// The connection's handle, to disconnect it with a message from within the handler.
    handle: Option<server::Handle>,
    /// Channels open on this connection.
    channels: Arc<crate::limits::ChannelCount>,
    /// The device's telemetry channel tasks: when the relay stops, the connection waits for
    /// them to acknowledge the batch they are committing before it says goodbye.
    telemetry: Vec<tokio::task::JoinHandle<()>>,
    /// Whether an enrolling peer already opened its one enrollment channel.
    enroll_channel_used: bool,
    /// Why the relay closed this engineer's connection, if it did: the end reason of the
    /// sessions it carried.
    evicted: Option<String>,
}

/// The russh handler of one SSH connection.
struct Conn {
    front: Arc<Front>,
    conn_id: u64,
    remote: SocketAddr,
    transport: &'static str,
    state: Arc<Mutex<ConnState>>,
}

impl Front {
    /// Creates the SSH front.
    pub fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        config: Arc<server::Config>,
        sink: Arc<dyn crate::sink::Sink>,
        metrics: Arc<crate::metrics::Metrics>,
        relay_config: &crate::config::RelayConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            config,
            sink,
            metrics,
            artifacts_dir: relay_config.artifacts_dir(),
            sessions_dir: relay_config.sessions_dir(),
            sessions: relay_config.sessions.clone(),
            limits: crate::limits::Limits::new(relay_config.limits.clone()),
            active_sessions: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            next_conn: AtomicU64::new(1),
            engineers: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Serves one SSH connection (from TCP or from a WebSocket) until it ends.
    pub async fn serve<S>(self: Arc<Self>, stream: S, remote: SocketAddr, transport: &'static str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let handshake = match self
            .limits
            .new_connection(remote.ip())
            .and_then(|()| self.limits.handshake(remote.ip()))
        {
            Ok(p) => p,
            Err(hit) => {
                // Refused before the key exchange, which is the expensive part a flood is
                // after; RFC 4253 lets a server send text lines before its version line.
                tracing::warn!("{transport} connection from {remote} refused: {hit}");
                let mut stream = stream;
                let line = format!("tether: {hit}\r\n");
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    use tokio::io::AsyncWriteExt;
                    let _ = stream.write_all(line.as_bytes()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
                return;
            }
        };
        let state = Arc::new(Mutex::new(ConnState {
            peer: Peer::Unknown,
            device_channels: HashMap::new(),
            linked_device: None,
            handshake: Some(handshake),
            handle: None,
            channels: Arc::default(),
            telemetry: Vec::new(),
            enroll_channel_used: false,
            evicted: None,
        }));
        let handler = Conn {
            front: self.clone(),
            conn_id,
            remote,
            transport,
            state: state.clone(),
        };
        // The version exchange happens inside run_stream; bound it so half-open connections
        // and clients that never speak cannot pile up.
        let login_grace = self.limits.config.login_grace;
        let running = match tokio::time::timeout(
            login_grace,
            server::run_stream(
                self.config.clone(),
                crate::metrics::Counted::new(
                    stream,
                    self.metrics.bytes(transport, "in"),
                    self.metrics.bytes(transport, "out"),
                ),
                handler,
            ),
        )
        .await
        {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => {
                tracing::debug!("{transport} connection from {remote}: {e:?}");
                return;
            }
            Err(_) => {
                tracing::info!("{transport} connection from {remote}: no SSH version line in time");
                return;
            }
        };
        let handle = running.handle();
        lock(&state).handle = Some(handle.clone());
        if let Some(hit) = self.limits.auth_refused(remote.ip()) {
            tracing::info!("{transport} connection from {remote} refused: {hit}");
            disconnect(handle, hit.0);
            let _ = tokio::time::timeout(Duration::from_secs(2), running).await;
            return;
        }
        let grace_state = state.clone();
        let grace_handle = handle.clone();
        let grace = tokio::spawn(async move {
            tokio::time::sleep(login_grace).await;
            // An enrolling peer has proven nothing but that it holds some key; its request
            // takes milliseconds, so one still connected after the grace is squatting.
            let unauthenticated = matches!(
                lock(&grace_state).peer,
                Peer::Unknown | Peer::Enrolling { .. }
            );
            if unauthenticated {
                tracing::info!("{remote}: authentication not completed in time, disconnecting");
                let _ = grace_handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "login grace time exceeded".into(),
                        "en".into(),
                    )
                    .await;
            }
        });
        let mut shutdown = self.shutdown.clone();
        let mut running = running;
        let result = tokio::select! {
            r = &mut running => r,
            _ = stopped(&mut shutdown) => {
                // Telemetry channels stop reading at once; let them acknowledge the batch they
                // are committing. The session keeps running meanwhile, so the ack goes out.
                let channels = std::mem::take(&mut lock(&state).telemetry);
                let drained = tokio::time::timeout(
                    TELEMETRY_DRAIN,
                    futures_util::future::join_all(channels),
                );
                tokio::select! {
                    r = &mut running => r,
                    _ = drained => {
                        let _ = handle
                            .disconnect(russh::Disconnect::ByApplication, "relay shutting down".into(), "en".into())
                            .await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                        Ok(())
                    }
                }
            }
        };
        grace.abort();
        self.live_logins().remove(&conn_id);
        if let Err(e) = result {
            tracing::debug!("{transport} connection from {remote} ended: {e:?}");
        }
        let linked = lock(&state).linked_device.take();
        if let Some(device_id) = linked
            && self.registry.remove(&device_id, conn_id)
        {
            tracing::info!("device {device_id} offline ({remote} via {transport})");
            let id = device_id.clone();
            if let Some(Err(e)) = with_store(&self.store, move |s| s.mark_offline(&id))
                .await
                .ok()
            {
                tracing::error!("cannot record device {device_id} offline: {e}");
            }
        }
    }

    fn live_logins(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveLogin>> {
        self.engineers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connections of engineers removed or disabled since they logged in, of keys
    /// no longer registered to them and of certificates whose CA their tenant no longer
    /// trusts (admin commands change the store from another process; this is how the serving
    /// relay notices). Roles follow the store: an engineer made a viewer loses its sessions
    /// and forwards. One store query covers every live login.
    pub async fn evict_engineers(&self) {
        struct Held {
            conn_id: u64,
            state: Arc<Mutex<ConnState>>,
            fingerprint: String,
            ca: Option<String>,
            remote: SocketAddr,
            identities: Vec<EngineerIdentity>,
        }
        let held: Vec<Held> = self
            .live_logins()
            .iter()
            .filter_map(|(id, l)| match &lock(&l.state).peer {
                Peer::Engineer { identities, .. } => Some(Held {
                    conn_id: *id,
                    state: l.state.clone(),
                    fingerprint: l.fingerprint.clone(),
                    ca: l.ca.clone(),
                    remote: l.remote,
                    identities: identities.clone(),
                }),
                _ => None,
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let keys: Vec<String> = held
            .iter()
            .filter(|h| h.ca.is_none())
            .map(|h| h.fingerprint.clone())
            .collect();
        let cas: Vec<String> = held.iter().filter_map(|h| h.ca.clone()).collect();
        let users: Vec<(i64, String)> = held
            .iter()
            .filter(|h| h.ca.is_none())
            .flat_map(|h| h.identities.iter().map(|i| (i.tenant_id, i.user.clone())))
            .collect();
        let Some(Ok(grants)) = with_store(&self.store, move |s| {
            s.live_engineer_grants(&keys, &cas, &users)
        })
        .await
        .ok() else {
            return;
        };
        for h in held {
            let mut gone: Option<(EngineerIdentity, String)> = None;
            let mut current = Vec::with_capacity(h.identities.len());
            for identity in &h.identities {
                let role = match &h.ca {
                    None => {
                        let row = grants.engineers.iter().find(|e| {
                            e.fingerprint == h.fingerprint
                                && e.tenant_id == identity.tenant_id
                                && e.user == identity.user
                        });
                        match row {
                            Some(e) if e.disabled => Err(format!(
                                "engineer {} of tenant {} was disabled",
                                identity.user, identity.tenant
                            )),
                            Some(e) => Ok(e.role),
                            None if grants
                                .existing
                                .iter()
                                .any(|(t, u)| *t == identity.tenant_id && *u == identity.user) =>
                            {
                                Err(format!(
                                    "the key {} of engineer {} of tenant {} was removed",
                                    h.fingerprint, identity.user, identity.tenant
                                ))
                            }
                            None => Err(format!(
                                "engineer {} of tenant {} was removed",
                                identity.user, identity.tenant
                            )),
                        }
                    }
                    Some(ca) => {
                        let trust = grants.trusted.iter().find(|t| {
                            &t.fingerprint == ca
                                && t.tenant_id == identity.tenant_id
                                && (t.principals.is_empty()
                                    || t.principals.contains(&identity.user))
                        });
                        match trust {
                            Some(t) => Ok(t.role),
                            None => Err(format!(
                                "tenant {} no longer trusts the CA {ca} that signed the certificate of engineer {}",
                                identity.tenant, identity.user
                            )),
                        }
                    }
                };
                match role {
                    Ok(role) if role.may_open_sessions() || !identity.role.may_open_sessions() => {
                        current.push(EngineerIdentity {
                            role,
                            ..identity.clone()
                        });
                    }
                    Ok(role) => {
                        gone = Some((
                            identity.clone(),
                            format!(
                                "engineer {} of tenant {} is now a {role} and may not hold sessions or forwards",
                                identity.user, identity.tenant
                            ),
                        ));
                    }
                    Err(why) => gone = Some((identity.clone(), why)),
                }
            }
            let Some((identity, why)) = gone else {
                if let Peer::Engineer { identities, .. } = &mut lock(&h.state).peer {
                    *identities = current;
                }
                continue;
            };
            let handle = {
                let mut st = lock(&h.state);
                st.evicted = Some(why.clone());
                st.handle.clone()
            };
            self.live_logins().remove(&h.conn_id);
            tracing::info!("closing connection {} of an engineer: {why}", h.conn_id);
            audit_event(
                self.store.clone(),
                Some(identity.tenant.clone()),
                format!("engineer:{}", identity.user),
                "engineer.disconnect",
                None,
                h.remote.to_string(),
                serde_json::json!({ "reason": why, "fingerprint": h.fingerprint, "ca": h.ca }),
            )
            .await;
            if let Some(handle) = handle {
                disconnect(handle, format!("{why}; the relay closed this connection"));
            }
        }
    }

    /// Drops the links of devices that were rejected or removed since they connected.
    pub async fn evict_unwelcome(&self) {
        let ids = self.registry.device_ids();
        if ids.is_empty() {
            return;
        }
        let Some(Ok(unwelcome)) = with_store(&self.store, move |s| s.unwelcome_devices(&ids))
            .await
            .ok()
        else {
            return;
        };
        for id in unwelcome {
            if let Some(link) = self.registry.take(&id) {
                tracing::info!("dropping link of device {id}: no longer accepted");
                let _ = link
                    .handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "device is no longer accepted".into(),
                        "en".into(),
                    )
                    .await;
            }
        }
    }
}

/// Disconnects a connection with a message for its client, from a task of its own (the
/// handler must not wait on its own session loop).
fn disconnect(handle: server::Handle, message: String) {
    tokio::spawn(async move {
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, message, "en".into())
            .await;
    });
}

fn lock(state: &Mutex<ConnState>) -> std::sync::MutexGuard<'_, ConnState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Agent version from an SSH version line like `SSH-2.0-tether-agent_0.1.0`.
fn agent_version(sshid: &[u8]) -> Option<String> {
    let id = String::from_utf8_lossy(sshid);
    id.trim()
        .strip_prefix("SSH-2.0-tether-agent_")
        .map(|v| v.chars().take(64).collect())
}

impl Conn {
    fn peer(&self) -> Peer {
        lock(&self.state).peer.clone()
    }

    /// Resolves a device for an engineer: the same `None` for unknown devices and devices of
    /// other tenants. The identity returned is the engineer's in the device's own tenant: one
    /// key may be registered to engineers of several tenants, and each tenant's records must
    /// name its own engineer.
    async fn engineer_device(
        &self,
        identities: &[EngineerIdentity],
        name: &str,
    ) -> Option<(Device, EngineerIdentity)> {
        let tenants: Vec<i64> = identities.iter().map(|i| i.tenant_id).collect();
        let name = name.to_string();
        let device = with_store(&self.front.store, move |s| s.find_device(&tenants, &name))
            .await
            .ok()?
            .map_err(|e| tracing::error!("device lookup failed: {e}"))
            .ok()??;
        if device.status != DeviceStatus::Accepted {
            return None;
        }
        let identity = identities
            .iter()
            .find(|i| i.tenant_id == device.tenant_id)?
            .clone();
        Some((device, identity))
    }

    /// Why a login names no device the engineer may use, when the device is in one of the
    /// engineer's own tenants but not accepted yet: that tenant's engineers may know it waits
    /// for an operator. For anyone else it stays `None`, so another tenant hears exactly the
    /// answer for a device that does not exist.
    async fn pending_device_hint(
        &self,
        identities: &[EngineerIdentity],
        name: &str,
    ) -> Option<String> {
        let tenants: Vec<i64> = identities.iter().map(|i| i.tenant_id).collect();
        let key = name.to_string();
        let device = with_store(&self.front.store, move |s| s.find_device(&tenants, &key))
            .await
            .ok()?
            .ok()??;
        let own = identities.iter().any(|i| i.tenant_id == device.tenant_id);
        (own && device.status == DeviceStatus::Pending).then(|| {
            format!(
                "device {} is pending acceptance (relay device accept {})",
                device.name, device.id
            )
        })
    }

    /// Audits an engineer's login in the tenants it concerns, under each tenant's own
    /// engineer name: the tenant of the device the login names, or, when it names none (a
    /// ProxyJump login), every tenant the key belongs to. No tenant's trail learns of another
    /// tenant's device.
    async fn audit_engineer_login(
        &self,
        identities: &[EngineerIdentity],
        login: &str,
        detail: serde_json::Value,
    ) {
        let targets: Vec<EngineerIdentity> = match self.engineer_device(identities, login).await {
            Some((_, identity)) => vec![identity],
            None => identities.to_vec(),
        };
        for identity in targets {
            audit_event(
                self.front.store.clone(),
                Some(identity.tenant.clone()),
                format!("engineer:{}", identity.user),
                "auth.success",
                None,
                self.remote.to_string(),
                detail.clone(),
            )
            .await;
        }
    }
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self
            .lookup_key(user, offer.public_key, false)
            .await
            .is_some()
        {
            return Ok(Auth::Accept);
        }
        // A certificate is offered by its inner key, which no one registered: when some tenant
        // trusts a CA, let the client prove the key and decide on the certificate (or refuse
        // the plain key) once it is signed for.
        let engineer_login = user != LINK_USER && user != ENROLL_USER;
        if engineer_login
            && with_store(&self.front.store, |s| s.any_trusted_ca())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false)
        {
            return Ok(Auth::Accept);
        }
        let fp = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        self.auth_failed(user, &fp).await;
        Ok(reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        if let Some(hit) = self.front.limits.auth_refused(self.remote.ip()) {
            self.disconnect_with(hit.0);
            return Ok(reject());
        }
        match self.lookup_key(user, key.public_key, true).await {
            Some(peer) => {
                tracing::info!(
                    "{}: authenticated {} as {user:?} with {fp} via {}",
                    self.remote,
                    match &peer {
                        Peer::Device { .. } => "device",
                        Peer::Enrolling { .. } => "enrolling device",
                        _ => "engineer",
                    },
                    self.transport
                );
                let audited = match &peer {
                    Peer::Device { device } => {
                        Some((Some(device.tenant.clone()), format!("device:{}", device.id)))
                    }
                    // A key that names the enrollment user proves nothing yet: the enrollment
                    // result is audited instead, and the connection keeps its place among the
                    // handshakes in progress until the login grace closes it.
                    Peer::Enrolling { .. } | Peer::Unknown | Peer::Engineer { .. } => None,
                };
                let engineer = match &peer {
                    Peer::Engineer { identities, .. } => Some(identities.clone()),
                    _ => None,
                };
                if engineer.is_some() {
                    self.hold_login(fp.clone(), None);
                }
                {
                    let mut st = lock(&self.state);
                    if !matches!(peer, Peer::Enrolling { .. }) {
                        st.handshake = None;
                    }
                    st.peer = peer;
                }
                if let Some((tenant, actor)) = audited {
                    self.audit(tenant, actor, "auth.success", user, &fp).await;
                }
                if let Some(identities) = engineer {
                    let detail = serde_json::json!({
                        "user": user,
                        "fingerprint": fp,
                        "transport": self.transport,
                    });
                    self.audit_engineer_login(&identities, user, detail).await;
                }
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(
                    "{}: refused key {fp} for user {user:?} via {}",
                    self.remote,
                    self.transport
                );
                self.auth_failed(user, &fp).await;
                Ok(reject())
            }
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let fp = certificate
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        if let Some(hit) = self.front.limits.auth_refused(self.remote.ip()) {
            self.disconnect_with(hit.0);
            return Ok(reject());
        }
        if user == LINK_USER || user == ENROLL_USER {
            self.auth_failed(user, &fp).await;
            return Ok(reject());
        }
        let ca = certificate
            .signature_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let trusts = with_store(&self.front.store, move |s| s.cas_by_fingerprint(&ca))
            .await
            .ok()
            .and_then(|r| r.map_err(|e| tracing::error!("CA lookup failed: {e}")).ok())
            .unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match crate::certauth::check(certificate, &trusts, self.remote.ip(), now) {
            Ok(granted) => {
                let first = granted.identities.first().cloned();
                tracing::info!(
                    "{}: authenticated engineer {:?} with certificate {:?} (serial {}, CA {}) as {user:?} via {}",
                    self.remote,
                    first.as_ref().map(|i| i.user.as_str()),
                    certificate.key_id(),
                    certificate.serial(),
                    granted.ca,
                    self.transport
                );
                let identities = granted.identities.clone();
                self.hold_login(fp.clone(), Some(granted.ca.clone()));
                {
                    let mut st = lock(&self.state);
                    st.peer = Peer::Engineer {
                        identities: granted.identities,
                        login: user.to_string(),
                        fingerprint: fp.clone(),
                    };
                    st.handshake = None;
                }
                let detail = serde_json::json!({
                    "user": user,
                    "fingerprint": fp,
                    "transport": self.transport,
                    "certificate": {
                        "key_id": certificate.key_id(),
                        "serial": certificate.serial(),
                        "ca": granted.ca,
                        "principals": certificate.valid_principals(),
                    },
                });
                self.audit_engineer_login(&identities, user, detail).await;
                Ok(Auth::Accept)
            }
            Err(why) => {
                tracing::info!(
                    "{}: refused certificate {:?} for user {user:?}: {why}",
                    self.remote,
                    certificate.key_id()
                );
                let detail = serde_json::json!({
                    "user": user,
                    "fingerprint": fp,
                    "transport": self.transport,
                    "certificate": { "key_id": certificate.key_id(), "serial": certificate.serial() },
                    "reason": why,
                });
                audit_event(
                    self.front.store.clone(),
                    None,
                    format!("login:{user}"),
                    "auth.failure",
                    None,
                    self.remote.to_string(),
                    detail,
                )
                .await;
                if let Some(hit) = self.front.limits.auth_failed(self.remote.ip()) {
                    self.disconnect_with(hit.0);
                }
                Ok(reject())
            }
        }
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Peer::Device { device } = self.peer() else {
            return Ok(false);
        };
        tracing::debug!("device {} announced {address}", device.id);
        let device_key = match PublicKey::from_openssh(&device.public_key) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(
                    "device {} has an unreadable key in the store: {e}",
                    device.id
                );
                return Ok(false);
            }
        };
        let session_channels = *port == tether_protocol::names::LINK_SESSION_CHANNELS;
        if !session_channels {
            tracing::info!(
                "device {} runs an agent that predates session channels; reaching its embedded server the legacy way",
                device.id
            );
        }
        let link = LiveLink {
            conn_id: self.conn_id,
            handle: session.handle(),
            device_key,
            session_channels,
        };
        if let Some(old) = self.front.registry.insert(&device.id, link) {
            tracing::info!(
                "device {} reconnected; closing its previous link",
                device.id
            );
            tokio::spawn(async move {
                let _ = old
                    .handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "replaced by a newer link".into(),
                        "en".into(),
                    )
                    .await;
            });
        }
        lock(&self.state).linked_device = Some(device.id.clone());
        let version = agent_version(session.remote_sshid());
        let id = device.id.clone();
        let remote = self.remote.to_string();
        if let Some(Err(e)) = with_store(&self.front.store, move |s| {
            s.mark_online(&id, &remote, version.as_deref())
        })
        .await
        .ok()
        {
            tracing::error!("cannot record device {} online: {e}", device.id);
        }
        tracing::info!(
            "device {} ({}) online from {} via {}",
            device.id,
            device.name,
            self.remote,
            self.transport
        );
        *port = 1;
        Ok(true)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.peer() {
            Peer::Enrolling { key } => {
                // One enrollment per connection: a key that proved nothing gets no more.
                let first = !std::mem::replace(&mut lock(&self.state).enroll_channel_used, true);
                if !first {
                    reply
                        .reject(ChannelOpenFailure::AdministrativelyProhibited)
                        .await;
                    return Ok(());
                }
                reply.accept().await;
                let front = self.front.clone();
                let remote = self.remote;
                tokio::spawn(crate::device_requests::enroll_channel(
                    front, channel, key, remote,
                ));
            }
            Peer::Engineer {
                identities,
                login,
                fingerprint,
            } => {
                reply.accept().await;
                let channel_permit = match self.open_channel() {
                    Ok(p) => p,
                    Err(hit) => {
                        tokio::spawn(async move { proxy::refuse_session(channel, &hit.0).await });
                        return Ok(());
                    }
                };
                let front_handle = session.handle();
                let resolved = self.engineer_device(&identities, &login).await;
                let pending = match resolved {
                    Some(_) => None,
                    None => self.pending_device_hint(&identities, &login).await,
                };
                let registry = self.front.registry.clone();
                let front = self.front.clone();
                let remote = self.remote;
                let conn_state = self.state.clone();
                tokio::spawn(async move {
                    let Some((device, identity)) = resolved else {
                        if let Some(pending) = pending {
                            proxy::refuse_session(channel, &pending).await;
                            return;
                        }
                        let names: Vec<&str> = identities.iter().map(|i| i.user.as_str()).collect();
                        let hint = if names.contains(&login.as_str()) {
                            "; log in as DEVICE@relay to open a shell on a device".to_string()
                        } else {
                            String::new()
                        };
                        proxy::refuse_session(channel, &format!("no such device: {login}{hint}"))
                            .await;
                        return;
                    };
                    let engineer = identity.user.clone();
                    if !identity.role.may_open_sessions() {
                        audit_event(
                            front.store.clone(),
                            Some(device.tenant.clone()),
                            format!("engineer:{engineer}"),
                            "session.refused",
                            Some(device.id.clone()),
                            remote.to_string(),
                            serde_json::json!({ "reason": "role viewer", "fingerprint": fingerprint }),
                        )
                        .await;
                        proxy::refuse_session(
                            channel,
                            &format!(
                                "permission denied: role viewer cannot open sessions on {}",
                                device.name
                            ),
                        )
                        .await;
                        return;
                    }
                    let Some(link) = registry.get(&device.id) else {
                        let seen = device
                            .last_disconnected
                            .clone()
                            .unwrap_or_else(|| "never".into());
                        proxy::refuse_session(
                            channel,
                            &format!("device {} is offline (last seen {seen})", device.name),
                        )
                        .await;
                        return;
                    };
                    let places = match front.limits.session(&device.id, &device.name, &engineer) {
                        Ok(p) => p,
                        Err(hit) => {
                            tracing::info!("session refused: {hit}");
                            proxy::refuse_session(channel, &hit.0).await;
                            return;
                        }
                    };
                    tracing::info!(
                        "session: engineer {engineer} ({fingerprint}) on device {} from {remote}",
                        device.id
                    );
                    match proxy::open_device_session(&link, &engineer, remote).await {
                        Ok(dev) => {
                            carry_session(
                                front,
                                channel,
                                front_handle,
                                dev,
                                device,
                                engineer,
                                fingerprint,
                                remote,
                                conn_state,
                            )
                            .await;
                            drop((places, channel_permit));
                        }
                        Err(e) => {
                            tracing::warn!("session to device {} failed: {e}", device.id);
                            proxy::refuse_session(
                                channel,
                                &format!("cannot reach device {}: {e}", device.name),
                            )
                            .await;
                        }
                    }
                });
            }
            // A device's only session channel is its telemetry upload.
            Peer::Device { .. } => {
                reply.accept().await;
                let id = channel.id();
                lock(&self.state).device_channels.insert(id, channel);
            }
            Peer::Unknown => {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Peer::Engineer {
            identities,
            login,
            fingerprint,
        } = self.peer()
        else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // `ssh -L … DEVICE@relay`: the device is the login and the target is device-local.
        // `ssh -J relay DEVICE`: the target host names the device; its sshd listens locally.
        let (device, target_host) = match self.engineer_device(&identities, &login).await {
            Some(found) => (Some(found), host_to_connect.to_string()),
            None => (
                self.engineer_device(&identities, host_to_connect).await,
                "127.0.0.1".to_string(),
            ),
        };
        let Some((device, identity)) = device else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let engineer = format!("engineer:{}", identity.user);
        if !identity.role.may_open_sessions() {
            tracing::info!(
                "forward refused: viewer {fingerprint} on device {}",
                device.id
            );
            audit_event(
                self.front.store.clone(),
                Some(device.tenant.clone()),
                engineer.clone(),
                "forward.refused",
                Some(device.id.clone()),
                self.remote.to_string(),
                serde_json::json!({
                    "to": format!("{target_host}:{port_to_connect}"),
                    "reason": "role viewer",
                    "fingerprint": fingerprint,
                }),
            )
            .await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        if tether_protocol::names::is_reserved_host(&target_host) {
            // Only the relay reaches the device's embedded server, on a channel of its own; a
            // forward naming a link-reserved host is an attempt to reach it unrecorded (an
            // older agent would serve it).
            tracing::warn!(
                "forward refused: {fingerprint} named the reserved host {target_host:?} on device {}",
                device.id
            );
            audit_event(
                self.front.store.clone(),
                Some(device.tenant.clone()),
                engineer.clone(),
                "forward.refused",
                Some(device.id.clone()),
                self.remote.to_string(),
                serde_json::json!({
                    "to": format!("{target_host}:{port_to_connect}"),
                    "error": "reserved host",
                }),
            )
            .await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Some(link) = self.front.registry.get(&device.id) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let channel_permit = match self.open_channel() {
            Ok(p) => p,
            Err(hit) => {
                // A channel-open failure carries only a code: OpenSSH prints "open failed:
                // resource shortage"; the relay's log names the limit.
                tracing::info!("forward refused for {}: {hit}", self.remote);
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                return Ok(());
            }
        };
        tracing::info!(
            "forward: {fingerprint} to {target_host}:{port_to_connect} on device {}",
            device.id
        );
        let originator = (originator_address.to_string(), originator_port);
        let store = self.front.store.clone();
        let source = self.remote.to_string();
        // Open the device side in a task: the device may take a while to dial its target, and
        // this engineer's other channels must keep moving meanwhile.
        tokio::spawn(async move {
            let event = |action: &'static str, detail: serde_json::Value| {
                audit_event(
                    store.clone(),
                    Some(device.tenant.clone()),
                    engineer.clone(),
                    action,
                    Some(device.id.clone()),
                    source.clone(),
                    detail,
                )
            };
            let to = format!("{target_host}:{port_to_connect}");
            match link
                .handle
                .channel_open_forwarded_tcpip(
                    target_host.clone(),
                    port_to_connect,
                    originator.0,
                    originator.1,
                )
                .await
            {
                Ok(device_channel) => {
                    reply.accept().await;
                    event("forward.open", serde_json::json!({ "to": to })).await;
                    let started = std::time::Instant::now();
                    let mut a = channel.into_stream();
                    let mut b = device_channel.into_stream();
                    let (sent, received) = tokio::io::copy_bidirectional(&mut a, &mut b)
                        .await
                        .unwrap_or((0, 0));
                    drop(channel_permit);
                    event(
                        "forward.close",
                        serde_json::json!({
                            "to": to,
                            "seconds": started.elapsed().as_secs(),
                            "bytes_in": sent,
                            "bytes_out": received,
                        }),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::info!(
                        "device {} refused forward to {target_host}:{port_to_connect}: {e}",
                        device.id
                    );
                    event(
                        "forward.refused",
                        serde_json::json!({ "to": to, "error": e.to_string() }),
                    )
                    .await;
                    reply
                        .reject(ChannelOpenFailure::AdministrativelyProhibited)
                        .await;
                }
            }
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_engineer_request(channel, session)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_engineer_request(channel, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_engineer_request(channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_engineer_request(channel, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match self.peer() {
            Peer::Enrolling { .. } => name == ENROLL_SUBSYSTEM,
            Peer::Engineer { .. } => name == "sftp",
            Peer::Device { device } => {
                let taken = lock(&self.state).device_channels.remove(&channel);
                match (taken, name) {
                    (Some(ch), TELEMETRY_SUBSYSTEM) => {
                        let task = tokio::spawn(crate::channels::telemetry::serve(
                            ch.into_stream(),
                            device.id.clone(),
                            device.tenant_id,
                            self.front.sink.clone(),
                            self.front.metrics.clone(),
                            self.front.shutdown.clone(),
                        ));
                        let mut state = lock(&self.state);
                        state.telemetry.retain(|t| !t.is_finished());
                        state.telemetry.push(task);
                        true
                    }
                    (Some(ch), KEYS_SUBSYSTEM) => {
                        tokio::spawn(crate::device_requests::keys_channel(
                            self.front.clone(),
                            ch,
                            device.clone(),
                            self.remote,
                        ));
                        true
                    }
                    (Some(ch), CONTROL_SUBSYSTEM) => {
                        // An agent that announced session channels is of the release that
                        // also reads the changes of a desired state.
                        let features = crate::channels::control::AgentFeatures {
                            desired_changes: self
                                .front
                                .registry
                                .get(&device.id)
                                .is_some_and(|l| l.session_channels),
                        };
                        tokio::spawn(crate::channels::control::serve(
                            ch.into_stream(),
                            device.id.clone(),
                            self.front.store.clone(),
                            self.front.artifacts_dir.clone(),
                            features,
                        ));
                        true
                    }
                    _ => false,
                }
            }
            Peer::Unknown => false,
        };
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

/// Carries one engineer session to the device, recorded, with its audit entries; returns when
/// the session is over and its record complete.
#[allow(clippy::too_many_arguments)]
async fn carry_session(
    front: Arc<Front>,
    channel: Channel<Msg>,
    front_handle: server::Handle,
    dev: proxy::DeviceSession,
    device: Device,
    engineer: String,
    fingerprint: String,
    remote: SocketAddr,
    conn_state: Arc<Mutex<ConnState>>,
) {
    let active = SessionGuard::new(&front.active_sessions);
    let source = remote.to_string();
    let opened = {
        let (device_id, device_name) = (device.id.clone(), device.name.clone());
        let (engineer, fingerprint, source) =
            (engineer.clone(), fingerprint.clone(), source.clone());
        let tenant_id = device.tenant_id;
        with_store(&front.store, move |s| {
            s.open_session(crate::store::NewSession {
                tenant_id,
                device_id: &device_id,
                device_name: &device_name,
                engineer: &engineer,
                fingerprint: &fingerprint,
                source: &source,
            })
        })
        .await
        .ok()
    };
    let id = match opened {
        Some(Ok(id)) => id,
        other => {
            // An unrecorded session is not carried: every session can be replayed or it
            // does not happen.
            if let Some(Err(e)) = other {
                tracing::error!("cannot record a session on {}: {e}", device.id);
            }
            proxy::refuse_session(channel, "the relay cannot record this session right now").await;
            return;
        }
    };
    let actor = format!("engineer:{engineer}");
    let event = |action: &'static str, detail: serde_json::Value| {
        audit_event(
            front.store.clone(),
            Some(device.tenant.clone()),
            actor.clone(),
            action,
            Some(device.id.clone()),
            source.clone(),
            detail,
        )
    };
    event(
        "session.open",
        serde_json::json!({ "session": id, "fingerprint": fingerprint }),
    )
    .await;
    let recording = crate::recording::Recording::new(
        front.store.clone(),
        id.clone(),
        &front.sessions_dir,
        front.sessions.record_input,
        format!("{engineer}@{}", device.name),
    );
    let started = std::time::Instant::now();
    let flusher = {
        let recording = recording.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                recording.flush();
            }
        })
    };
    let idle = Some(front.limits.config.session_idle_timeout);
    let ended = proxy::relay_session(channel, front_handle, dev, recording.clone(), idle).await;
    let evicted = lock(&conn_state).evicted.clone();
    let reason = if *front.shutdown.borrow() {
        "relay stopped".to_string()
    } else if let Some(why) = evicted {
        format!("closed by the relay: {why}")
    } else {
        match ended {
            proxy::Ended::Device => "exited",
            proxy::Ended::Engineer => "closed by engineer",
            proxy::Ended::Idle => "idle timeout",
        }
        .to_string()
    };
    flusher.abort();
    let end = recording.finish(&reason).await;
    event(
        "session.close",
        serde_json::json!({
            "session": id,
            "seconds": started.elapsed().as_secs(),
            "kind": end.kind,
            "command": end.command,
            "reason": reason,
            "exit_status": end.exit_status,
            "bytes_in": end.bytes_in,
            "bytes_out": end.bytes_out,
        }),
    )
    .await;
    drop(active);
}

/// Counts a running session for as long as it lives.
struct SessionGuard(Arc<std::sync::atomic::AtomicUsize>);

impl SessionGuard {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Appends an event to the audit trail from a connection's task (a failure is logged).
pub(crate) async fn audit_event(
    store: Arc<Store>,
    tenant: Option<String>,
    actor: String,
    action: &'static str,
    target: Option<String>,
    source: String,
    detail: serde_json::Value,
) {
    let written = with_store(&store, move |s| {
        s.audit(crate::store::NewAudit {
            tenant: tenant.as_deref(),
            actor: &actor,
            action,
            target: target.as_deref(),
            source: Some(&source),
            detail,
        })
    })
    .await
    .ok();
    if let Some(Err(e)) = written {
        tracing::error!("audit trail: {e}");
    }
}

impl Conn {
    /// Registers this connection's engineer login for [`Front::evict_engineers`].
    fn hold_login(&self, fingerprint: String, ca: Option<String>) {
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

    /// Records a failed authentication (audit trail, per-source count); a source that failed
    /// too often is disconnected with the reason. A key of a disabled engineer is recorded
    /// with that reason, in the engineer's tenant.
    async fn auth_failed(&self, user: &str, fingerprint: &str) {
        let disabled = if user == LINK_USER || user == ENROLL_USER {
            Vec::new()
        } else {
            let fp = fingerprint.to_string();
            with_store(&self.front.store, move |s| s.disabled_engineers(&fp))
                .await
                .ok()
                .and_then(|r| {
                    r.map_err(|e| tracing::error!("engineer lookup failed: {e}"))
                        .ok()
                })
                .unwrap_or_default()
        };
        let mut detail = serde_json::json!({
            "user": user,
            "fingerprint": fingerprint,
            "transport": self.transport,
        });
        let mut tenant = None;
        if let Some((t, name)) = disabled.first() {
            detail["reason"] = format!("engineer {name} of tenant {t} is disabled").into();
            tenant = Some(t.clone());
        }
        audit_event(
            self.front.store.clone(),
            tenant,
            format!("login:{user}"),
            "auth.failure",
            None,
            self.remote.to_string(),
            detail,
        )
        .await;
        if let Some(hit) = self.front.limits.auth_failed(self.remote.ip()) {
            tracing::warn!("{}: {hit}", self.remote);
            self.disconnect_with(hit.0);
        }
    }

    /// A device logged in with its registered next key, which replaced `old`: records it and
    /// drops the link still held with the old key, so the agent comes back with the new one.
    async fn key_rotated(&self, device: &Device, old: &str) {
        tracing::info!(
            "device {} rotated its key: {old} retired, {} in use",
            device.id,
            device.fingerprint
        );
        audit_event(
            self.front.store.clone(),
            Some(device.tenant.clone()),
            format!("device:{}", device.id),
            "device.key.rotate",
            Some(device.id.clone()),
            self.remote.to_string(),
            serde_json::json!({ "retired": old, "fingerprint": device.fingerprint }),
        )
        .await;
        // Its connection's own cleanup then unregisters it and records the device offline.
        if let Some(link) = self.front.registry.get(&device.id)
            && link.device_key.fingerprint(HashAlg::Sha256).to_string() == old
        {
            disconnect(link.handle, "device key rotated".into());
        }
    }

    /// Disconnects this connection with `message` for the client.
    fn disconnect_with(&self, message: String) {
        if let Some(handle) = lock(&self.state).handle.clone() {
            disconnect(handle, message);
        }
    }

    /// A place for one more channel on this connection.
    fn open_channel(&self) -> Result<crate::limits::Permit<()>, crate::limits::LimitHit> {
        let channels = lock(&self.state).channels.clone();
        channels.open(self.front.limits.config.channels_per_connection)
    }

    /// Appends an authentication event to the audit trail (failures to log are logged).
    async fn audit(
        &self,
        tenant: Option<String>,
        actor: String,
        action: &'static str,
        user: &str,
        fingerprint: &str,
    ) {
        let detail = serde_json::json!({
            "user": user,
            "fingerprint": fingerprint,
            "transport": self.transport,
        });
        audit_event(
            self.front.store.clone(),
            tenant,
            actor,
            action,
            None,
            self.remote.to_string(),
            detail,
        )
        .await;
    }

    /// Looks up who `key` belongs to for SSH user `user`. Only a `verified` key (the client
    /// signed with it) completes a device's key rotation: an offer proves nothing.
    async fn lookup_key(&self, user: &str, key: &PublicKey, verified: bool) -> Option<Peer> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        match user {
            ENROLL_USER => Some(Peer::Enrolling { key: key.clone() }),
            LINK_USER if !verified => {
                let device = with_store(&self.front.store, move |s| s.device_by_fingerprint(&fp))
                    .await
                    .ok()?
                    .map_err(|e| tracing::error!("device key lookup failed: {e}"))
                    .ok()??;
                (device.status == DeviceStatus::Accepted).then(|| Peer::Device {
                    device: Box::new(device),
                })
            }
            LINK_USER => {
                let login = with_store(&self.front.store, move |s| s.device_login(&fp))
                    .await
                    .ok()?
                    .map_err(|e| tracing::error!("device key lookup failed: {e}"))
                    .ok()??;
                let device = login.device;
                if let Some(old) = login.rotated_from {
                    self.key_rotated(&device, &old).await;
                }
                (device.status == DeviceStatus::Accepted).then(|| Peer::Device {
                    device: Box::new(device),
                })
            }
            login => {
                let lookup_fp = fp.clone();
                let identities = with_store(&self.front.store, move |s| {
                    s.engineer_identities(&lookup_fp)
                })
                .await
                .ok()?
                .map_err(|e| tracing::error!("engineer key lookup failed: {e}"))
                .ok()?;
                (!identities.is_empty()).then(|| Peer::Engineer {
                    identities,
                    login: login.to_string(),
                    fingerprint: fp,
                })
            }
        }
    }

    /// Session requests from engineers are answered at once (the device side follows the
    /// same order); answering later would confuse OpenSSH, which pipelines its requests.
    fn answer_engineer_request(
        &self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        if matches!(self.peer(), Peer::Engineer { .. }) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

/// Only public keys are accepted; saying so up front spares clients futile password prompts.
fn reject() -> Auth {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    Auth::Reject {
        proceed_with_methods: Some(methods),
        partial_success: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_version_comes_from_the_ssh_id() {
        assert_eq!(
            agent_version(b"SSH-2.0-tether-agent_1.2.3\r\n").as_deref(),
            Some("1.2.3")
        );
        assert_eq!(agent_version(b"SSH-2.0-OpenSSH_9.2"), None);
    }
}
