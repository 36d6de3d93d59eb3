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
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet};
use tether_protocol::enroll::{EnrollRequest, EnrollResponse, MAX_ENROLL_MESSAGE};
use tether_protocol::fleet::CONTROL_SUBSYSTEM;
use tether_protocol::names::{ENROLL_SUBSYSTEM, ENROLL_USER, LINK_USER};
use tether_protocol::telemetry::TELEMETRY_SUBSYSTEM;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::proxy;
use crate::registry::{LiveLink, Registry};
use crate::store::{Device, DeviceEnrollment, DeviceStatus, EngineerIdentity, Role, Store};

/// How long a client may take from connecting to finishing authentication.
pub const LOGIN_GRACE: Duration = Duration::from_secs(30);

/// How long a stopping relay waits for a device's telemetry channel to acknowledge the batch
/// it is committing. A commit takes milliseconds; a stuck store must not hold the stop up.
const TELEMETRY_DRAIN: Duration = Duration::from_secs(2);

/// Runs a blocking store call off the async threads.
pub async fn with_store<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Option<T> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!("store task failed: {e}");
            None
        }
    }
}

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
    /// Source of connection ids.
    next_conn: AtomicU64,
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

/// Per-connection state shared between the handler and the connection's task.
struct ConnState {
    peer: Peer,
    /// A device's session channels, until its subsystem request says what each is for.
    device_channels: HashMap<ChannelId, Channel<Msg>>,
    /// Set once a device announced its link (tcpip-forward): the connection task unregisters it.
    linked_device: Option<String>,
    /// The device's telemetry channel tasks: when the relay stops, the connection waits for
    /// them to acknowledge the batch they are committing before it says goodbye.
    telemetry: Vec<tokio::task::JoinHandle<()>>,
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
        artifacts_dir: std::path::PathBuf,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            config,
            sink,
            metrics,
            artifacts_dir,
            next_conn: AtomicU64::new(1),
            shutdown,
        })
    }

    /// Serves one SSH connection (from TCP or from a WebSocket) until it ends.
    pub async fn serve<S>(self: Arc<Self>, stream: S, remote: SocketAddr, transport: &'static str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(Mutex::new(ConnState {
            peer: Peer::Unknown,
            device_channels: HashMap::new(),
            linked_device: None,
            telemetry: Vec::new(),
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
        let running = match tokio::time::timeout(
            LOGIN_GRACE,
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
        let grace_state = state.clone();
        let grace_handle = handle.clone();
        let grace = tokio::spawn(async move {
            tokio::time::sleep(LOGIN_GRACE).await;
            let unauthenticated = matches!(lock(&grace_state).peer, Peer::Unknown);
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
        if let Err(e) = result {
            tracing::debug!("{transport} connection from {remote} ended: {e:?}");
        }
        let linked = lock(&state).linked_device.take();
        if let Some(device_id) = linked
            && self.registry.remove(&device_id, conn_id)
        {
            tracing::info!("device {device_id} offline ({remote} via {transport})");
            let id = device_id.clone();
            if let Some(Err(e)) = with_store(&self.store, move |s| s.mark_offline(&id)).await {
                tracing::error!("cannot record device {device_id} offline: {e}");
            }
        }
    }

    /// Drops the links of devices that were rejected or removed since they connected.
    pub async fn evict_unwelcome(&self) {
        let ids = self.registry.device_ids();
        if ids.is_empty() {
            return;
        }
        let Some(Ok(unwelcome)) = with_store(&self.store, move |s| s.unwelcome_devices(&ids)).await
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

/// Resolves once `rx` says the relay is stopping (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
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

    fn set_peer(&self, peer: Peer) {
        lock(&self.state).peer = peer;
    }

    /// Resolves a device for an engineer: the same `None` for unknown devices and devices of
    /// other tenants.
    async fn engineer_device(
        &self,
        identities: &[EngineerIdentity],
        name: &str,
    ) -> Option<(Device, Role)> {
        let tenants: Vec<i64> = identities.iter().map(|i| i.tenant_id).collect();
        let name = name.to_string();
        let device = with_store(&self.front.store, move |s| s.find_device(&tenants, &name))
            .await?
            .map_err(|e| tracing::error!("device lookup failed: {e}"))
            .ok()??;
        if device.status != DeviceStatus::Accepted {
            return None;
        }
        let role = identities
            .iter()
            .find(|i| i.tenant_id == device.tenant_id)?
            .role;
        Some((device, role))
    }
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let known = self.lookup_key(user, offer.public_key).await.is_some();
        if !known {
            let fp = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
            self.audit(None, format!("login:{user}"), "auth.failure", user, &fp)
                .await;
        }
        Ok(if known { Auth::Accept } else { reject() })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        match self.lookup_key(user, key.public_key).await {
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
                let (actor, tenant) = match &peer {
                    Peer::Device { device } => {
                        (format!("device:{}", device.id), Some(device.tenant.clone()))
                    }
                    Peer::Enrolling { .. } => ("enrolling device".to_string(), None),
                    Peer::Engineer { identities, .. } => (
                        format!(
                            "engineer:{}",
                            identities.first().map(|i| i.user.as_str()).unwrap_or("?")
                        ),
                        identities.first().map(|i| i.tenant.clone()),
                    ),
                    Peer::Unknown => ("unknown".to_string(), None),
                };
                self.set_peer(peer);
                self.audit(tenant, actor, "auth.success", user, &fp).await;
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(
                    "{}: refused key {fp} for user {user:?} via {}",
                    self.remote,
                    self.transport
                );
                self.audit(None, format!("login:{user}"), "auth.failure", user, &fp)
                    .await;
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
        let link = LiveLink {
            conn_id: self.conn_id,
            handle: session.handle(),
            device_key,
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
                reply.accept().await;
                let front = self.front.clone();
                let remote = self.remote;
                tokio::spawn(enroll_channel(front, channel, key, remote));
            }
            Peer::Engineer {
                identities,
                login,
                fingerprint,
            } => {
                reply.accept().await;
                let front_handle = session.handle();
                let resolved = self.engineer_device(&identities, &login).await;
                let registry = self.front.registry.clone();
                let store = self.front.store.clone();
                let remote = self.remote;
                tokio::spawn(async move {
                    let engineer = identities
                        .first()
                        .map(|i| i.user.clone())
                        .unwrap_or_default();
                    let Some((device, role)) = resolved else {
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
                    if role == Role::Viewer {
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
                    tracing::info!(
                        "session: engineer {engineer} ({fingerprint}) on device {} from {remote}",
                        device.id
                    );
                    let actor = format!("engineer:{engineer}");
                    let event = |action: &'static str, detail: serde_json::Value| {
                        audit_event(
                            store.clone(),
                            Some(device.tenant.clone()),
                            actor.clone(),
                            action,
                            Some(device.id.clone()),
                            remote.to_string(),
                            detail,
                        )
                    };
                    match proxy::open_device_session(
                        &link.handle,
                        link.device_key.clone(),
                        &engineer,
                        remote,
                    )
                    .await
                    {
                        Ok(dev) => {
                            event(
                                "session.open",
                                serde_json::json!({ "fingerprint": fingerprint }),
                            )
                            .await;
                            let started = std::time::Instant::now();
                            proxy::relay_session(channel, front_handle, dev).await;
                            event(
                                "session.close",
                                serde_json::json!({ "seconds": started.elapsed().as_secs() }),
                            )
                            .await;
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
        let Some((device, role)) = device else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        if role == Role::Viewer {
            tracing::info!(
                "forward refused: viewer {fingerprint} on device {}",
                device.id
            );
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Some(link) = self.front.registry.get(&device.id) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        tracing::info!(
            "forward: {fingerprint} to {target_host}:{port_to_connect} on device {}",
            device.id
        );
        let originator = (originator_address.to_string(), originator_port);
        // Open the device side in a task: the device may take a while to dial its target, and
        // this engineer's other channels must keep moving meanwhile.
        tokio::spawn(async move {
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
                    let mut a = channel.into_stream();
                    let mut b = device_channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                Err(e) => {
                    tracing::info!(
                        "device {} refused forward to {target_host}:{port_to_connect}: {e}",
                        device.id
                    );
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
                        let task = tokio::spawn(crate::telemetry::serve(
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
                    (Some(ch), CONTROL_SUBSYSTEM) => {
                        tokio::spawn(crate::control::serve(
                            ch.into_stream(),
                            device.id.clone(),
                            self.front.store.clone(),
                            self.front.artifacts_dir.clone(),
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

/// Appends an event to the audit trail from a connection's task (a failure is logged).
async fn audit_event(
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
    .await;
    if let Some(Err(e)) = written {
        tracing::error!("audit trail: {e}");
    }
}

impl Conn {
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

    /// Looks up who `key` belongs to for SSH user `user`.
    async fn lookup_key(&self, user: &str, key: &PublicKey) -> Option<Peer> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        match user {
            ENROLL_USER => Some(Peer::Enrolling { key: key.clone() }),
            LINK_USER => {
                let device = with_store(&self.front.store, move |s| s.device_by_fingerprint(&fp))
                    .await?
                    .map_err(|e| tracing::error!("device key lookup failed: {e}"))
                    .ok()??;
                (device.status == DeviceStatus::Accepted).then(|| Peer::Device {
                    device: Box::new(device),
                })
            }
            login => {
                let lookup_fp = fp.clone();
                let identities = with_store(&self.front.store, move |s| {
                    s.engineer_identities(&lookup_fp)
                })
                .await?
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

/// Serves the enrollment subsystem on a session channel: one JSON request line, one JSON
/// answer line.
async fn enroll_channel(
    front: Arc<Front>,
    mut channel: Channel<Msg>,
    key: PublicKey,
    remote: SocketAddr,
) {
    let mut buf = Vec::new();
    let read = async {
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    buf.extend_from_slice(&data);
                    if buf.contains(&b'\n') || buf.len() > MAX_ENROLL_MESSAGE {
                        break;
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    if tokio::time::timeout(LOGIN_GRACE, read).await.is_err() {
        let _ = channel.close().await;
        return;
    }
    let response = match parse_enroll_request(&buf) {
        Err(message) => EnrollResponse::Refused { message },
        Ok(request) => redeem(&front, request, &key, remote).await,
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_default();
    line.push(b'\n');
    let _ = channel.data(&line[..]).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

fn parse_enroll_request(buf: &[u8]) -> Result<EnrollRequest, String> {
    if buf.len() > MAX_ENROLL_MESSAGE {
        return Err("enrollment request too long".into());
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let request: EnrollRequest =
        serde_json::from_slice(line).map_err(|e| format!("malformed enrollment request: {e}"))?;
    if request.protocol != tether_protocol::PROTOCOL_VERSION {
        return Err(format!(
            "agent speaks link protocol {}, relay speaks {}",
            request.protocol,
            tether_protocol::PROTOCOL_VERSION
        ));
    }
    tether_protocol::names::validate_device_name(&request.name).map_err(|e| e.to_string())?;
    Ok(request)
}

async fn redeem(
    front: &Arc<Front>,
    request: EnrollRequest,
    key: &PublicKey,
    remote: SocketAddr,
) -> EnrollResponse {
    let public_key_openssh = match key.to_openssh() {
        Ok(k) => k,
        Err(e) => {
            return EnrollResponse::Refused {
                message: format!("unusable device key: {e}"),
            };
        }
    };
    let enrollment = DeviceEnrollment {
        name: request.name.clone(),
        public_key_openssh,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        agent_version: request.agent_version.clone(),
        force: request.force,
    };
    let token = request.token;
    match with_store(&front.store, move |s| {
        s.redeem_enroll_token(&token, enrollment)
    })
    .await
    {
        Some(Ok(enrolled)) => {
            tracing::info!(
                "enrolled device {} ({}) in tenant {} from {remote}",
                enrolled.device.id,
                enrolled.device.name,
                enrolled.tenant_name
            );
            EnrollResponse::Enrolled {
                device_id: enrolled.device.id.clone(),
                name: enrolled.device.name.clone(),
                tenant: enrolled.tenant_name.clone(),
                status: enrolled.device.status.to_string(),
            }
        }
        Some(Err(e)) => {
            tracing::info!("enrollment from {remote} refused: {e}");
            EnrollResponse::Refused {
                message: e.to_string(),
            }
        }
        None => EnrollResponse::Refused {
            message: "internal error".into(),
        },
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

    #[test]
    fn enroll_requests_are_checked() {
        let ok = br#"{"protocol":1,"token":"t","name":"b1","agent_version":"0.1.0"}
"#;
        assert!(parse_enroll_request(ok).is_ok());
        let bad_json = b"{not json\n";
        assert!(parse_enroll_request(bad_json).is_err_and(|e| e.contains("malformed")));
        let bad_name = br#"{"protocol":1,"token":"t","name":"Bad Name","agent_version":"0"}"#;
        assert!(parse_enroll_request(bad_name).is_err_and(|e| e.contains("Bad Name")));
        let future = br#"{"protocol":99,"token":"t","name":"b1","agent_version":"0"}"#;
        assert!(parse_enroll_request(future).is_err_and(|e| e.contains("protocol 99")));
        let unknown = br#"{"protocol":1,"token":"t","name":"b1","agent_version":"0","x":1}"#;
        assert!(parse_enroll_request(unknown).is_err());
        assert!(parse_enroll_request(&vec![b'a'; MAX_ENROLL_MESSAGE + 1]).is_err());
    }
}
