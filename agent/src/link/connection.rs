//! The device link: one long-lived SSH connection from the agent to the relay.
//!
//! The agent is the SSH client. It authenticates as [`LINK_USER`] with the device key, checks
//! the relay's host key against the one pinned at enrollment, and announces itself with a
//! `tcpip-forward` request. From then on the relay opens channels towards the device: a
//! `session` channel is served by the embedded SSH server, a `forwarded-tcpip` channel is an
//! engineer's forward and is dialled only if the forward policy allows its target. No name an
//! engineer can put in a forward reaches the embedded server: an engineer's request can only
//! ever become a `forwarded-tcpip` channel, and those are never served by it. Every other
//! channel type is refused. Keepalives keep NAT mappings and
//! load-balancer idle timers from closing an idle link; any failure leads to a reconnect after a
//! jittered, capped exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use russh::client::ChannelOpenHandle;
use russh::client::{self, Msg, Session};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure, Preferred, SshId, cipher};
use tether_protocol::names::{LINK_FORWARD_ADDRESS, LINK_SESSION_CHANNELS, LINK_USER};
use tether_protocol::telemetry::TELEMETRY_SUBSYSTEM;
use thiserror::Error;
use tokio::sync::watch;

use crate::config::{AgentConfig, LinkConfig};
use crate::identity::enrollment_record::Enrollment;
use crate::link::forward::{self, ForwardPolicy};
use crate::access::ssh_server::{self, ServerSettings};
use crate::link::status::{self, LinkState};
use crate::link::transport::{self, RelayUrl, TransportError};

/// Why one link attempt ended.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The relay could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The SSH layer failed.
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    /// The relay presented a different host key than the one pinned at enrollment.
    #[error(
        "relay host key mismatch: pinned {pinned}, relay presented {presented}; re-enroll with --force if the relay's key really changed"
    )]
    HostKeyMismatch {
        /// Fingerprint pinned at enrollment.
        pinned: String,
        /// Fingerprint the relay showed.
        presented: String,
    },
    /// At enrollment, the relay's host key is not the one `--fingerprint` named: either the
    /// fingerprint was mistyped or something else answers at the relay's address.
    #[error(
        "the relay presented host key {presented}, not the {expected} given with --fingerprint; check the fingerprint (the relay logs its host key when it starts) and the relay URL"
    )]
    FingerprintMismatch {
        /// Fingerprint given with `--fingerprint`.
        expected: String,
        /// Fingerprint the relay showed.
        presented: String,
    },
    /// The relay refused the device key.
    #[error(
        "the relay refused this device's key (device removed, rejected or still pending acceptance)"
    )]
    Refused,
    /// The pinned host key in the enrollment record cannot be parsed.
    #[error("enrollment record holds an unreadable relay host key: {0}")]
    BadPinnedKey(String),
    /// The SSH handshake did not finish in time.
    #[error("ssh handshake with the relay timed out")]
    Timeout,
    /// A request/answer exchange on a subsystem went wrong.
    #[error("{0}")]
    Exchange(String),
}

/// Client-side SSH configuration shared by the link and enrollment.
pub fn ssh_client_config(link: &LinkConfig) -> client::Config {
    let preferred = Preferred {
        // aes256-gcm is markedly faster than chacha20-poly1305 where AES instructions exist,
        // and the link carries every byte of every session of the device.
        cipher: std::borrow::Cow::Owned(vec![
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
        ]),
        ..Preferred::default()
    };
    client::Config {
        client_id: SshId::Standard(format!("SSH-2.0-tether-agent_{}", crate::VERSION).into()),
        keepalive_interval: Some(link.keepalive_interval),
        keepalive_max: link.keepalive_max as usize,
        inactivity_timeout: None,
        preferred,
        nodelay: true,
        // Inner SSH packets of up to 32 KiB plus framing then fit one link packet instead of two.
        maximum_packet_size: 65535,
        ..Default::default()
    }
}

/// What the relay's host key must be.
pub struct HostKeyCheck {
    /// The pinned key; `None` accepts any key (enrollment without `--fingerprint`).
    pub pinned: Option<PublicKey>,
    /// A fingerprint the key must have (enrollment with `--fingerprint`).
    pub expected_fingerprint: Option<String>,
}

impl HostKeyCheck {
    /// Returns the presented key if it is acceptable, else a mismatch naming both fingerprints:
    /// [`LinkError::HostKeyMismatch`] against the pinned key, [`LinkError::FingerprintMismatch`]
    /// against the fingerprint given at enrollment.
    fn verify(&self, presented: &PublicKeyOrCertificate) -> Result<PublicKey, LinkError> {
        let key = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::new(cert.public_key().clone(), "")
            }
        };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        if let Some(pinned) = &self.pinned
            && pinned.key_data() != key.key_data()
        {
            return Err(LinkError::HostKeyMismatch {
                pinned: pinned.fingerprint(HashAlg::Sha256).to_string(),
                presented: fp,
            });
        }
        if let Some(expected) = &self.expected_fingerprint
            && expected.trim() != fp
        {
            return Err(LinkError::FingerprintMismatch {
                expected: expected.trim().to_string(),
                presented: fp,
            });
        }
        Ok(key)
    }
}

/// Everything the link needs, loaded once by `agent run`.
pub struct LinkContext {
    /// Agent configuration.
    pub config: AgentConfig,
    /// Enrollment record (relay URL, pinned host key).
    pub enrollment: Enrollment,
    /// The device key.
    pub key: Arc<PrivateKey>,
    /// Settings of the embedded SSH server.
    pub server: Arc<ServerSettings>,
    /// Which device-local targets may be reached.
    pub policy: Arc<ForwardPolicy>,
    /// The application supervisor, which the relay's desired state drives.
    pub supervisor: Option<crate::apps::supervisor::Supervisor>,
}

/// The russh client handler of the link.
struct LinkHandler {
    host_key: HostKeyCheck,
    /// Hands the accepted host key to [`open`] (enrollment pins it).
    seen: Option<tokio::sync::oneshot::Sender<PublicKey>>,
    server: Arc<ServerSettings>,
    policy: Arc<ForwardPolicy>,
}

impl client::Handler for LinkHandler {
    type Error = LinkError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = self.host_key.verify(server_public_key)?;
        if let Some(tx) = self.seen.take() {
            let _ = tx.send(key);
        }
        Ok(true)
    }

    /// The relay's own path to the embedded SSH server: only the relay can open a `session`
    /// channel towards the device, and it does so only for a relay-terminated session that it
    /// records and audits.
    async fn server_channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let settings = self.server.clone();
        tokio::spawn(async move {
            if let Err(e) = ssh_server::serve(channel.into_stream(), settings).await {
                tracing::info!("embedded ssh session ended with error: {e}");
            }
        });
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::warn!("refused direct-tcpip channel to {host_to_connect}:{port_to_connect}");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::warn!("refused streamlocal channel to {socket_path:?}");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(
            "forward to {connected_address}:{connected_port} from {originator_address}:{originator_port}"
        );
        if !self.policy.allows(connected_address, connected_port) {
            tracing::warn!(
                "refused forward to {connected_address}:{connected_port}: not in forward.allow"
            );
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let host = connected_address.to_string();
        // Dial in a task: a slow target must not stall the link's other channels.
        tokio::spawn(async move {
            match forward::connect(&host, connected_port).await {
                Ok(mut tcp) => {
                    reply.accept().await;
                    let mut stream = channel.into_stream();
                    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
                        tracing::debug!("forward to {host}:{connected_port} ended: {e}");
                    }
                }
                Err(e) => {
                    tracing::info!("forward to {host}:{connected_port} failed: {e}");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }
}

/// Opens an authenticated SSH connection to the relay as `user`.
///
/// Returns the handle and the host key the relay presented.
pub async fn open(
    relay: &RelayUrl,
    link: &LinkConfig,
    key: Arc<PrivateKey>,
    user: &str,
    host_key: HostKeyCheck,
    server: Arc<ServerSettings>,
    policy: Arc<ForwardPolicy>,
) -> Result<
    (
        client::Handle<impl client::Handler<Error = LinkError>>,
        Option<PublicKey>,
    ),
    LinkError,
> {
    let stream = transport::connect(relay, link.connect_timeout).await?;
    let config = Arc::new(ssh_client_config(link));
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let handler = LinkHandler {
        host_key,
        seen: Some(seen_tx),
        server,
        policy,
    };
    let handshake = async {
        let mut handle = client::connect_stream(config, stream, handler).await?;
        let auth = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
            .await?;
        if !auth.success() {
            return Err(LinkError::Refused);
        }
        Ok(handle)
    };
    let handle = tokio::time::timeout(link.connect_timeout, handshake)
        .await
        .map_err(|_| LinkError::Timeout)??;
    let seen = seen_rx.await.ok();
    Ok((handle, seen))
}

/// Sends one JSON line on a new session channel for `subsystem` and returns the one line the
/// relay answers (at most `max` bytes, within `timeout`).
pub async fn exchange_line<H: client::Handler>(
    handle: &client::Handle<H>,
    subsystem: &str,
    request: &impl serde::Serialize,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, LinkError> {
    let mut line = serde_json::to_vec(request).map_err(|e| LinkError::Exchange(e.to_string()))?;
    line.push(b'\n');
    let mut channel = handle.channel_open_session().await?;
    channel.request_subsystem(true, subsystem).await?;
    channel.data(&line[..]).await?;
    channel.eof().await?;
    let mut answer = Vec::new();
    let exchange = async {
        while let Some(msg) = channel.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } => {
                    answer.extend_from_slice(&data);
                    if answer.len() > max {
                        return Err(LinkError::Exchange("answer too long".into()));
                    }
                    if answer.contains(&b'\n') {
                        break;
                    }
                }
                russh::ChannelMsg::Failure => {
                    return Err(LinkError::Exchange(format!(
                        "the relay does not offer {subsystem} on this port"
                    )));
                }
                russh::ChannelMsg::Eof | russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| LinkError::Exchange("no answer from the relay in time".into()))??;
    Ok(answer)
}

/// Holds the link open until `shutdown` turns true, reconnecting after every failure.
pub async fn run(
    mut ctx: LinkContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let relay = RelayUrl::parse(&ctx.enrollment.relay_url)?;
    let pinned = PublicKey::from_openssh(&ctx.enrollment.relay_host_key)
        .map_err(|e| LinkError::BadPinnedKey(e.to_string()))?;
    let state_dir = ctx.config.state_dir.clone();
    let link_cfg = ctx.config.link.clone();
    let mut backoff = Backoff::new(link_cfg.backoff_initial, link_cfg.backoff_max);
    loop {
        if *shutdown.borrow() {
            break;
        }
        status::publish(&state_dir, LinkState::Connecting, None);
        reload_key(&mut ctx);
        let attempt = open(
            &relay,
            &link_cfg,
            ctx.key.clone(),
            LINK_USER,
            HostKeyCheck {
                pinned: Some(pinned.clone()),
                expected_fingerprint: None,
            },
            ctx.server.clone(),
            ctx.policy.clone(),
        );
        let attempt = tokio::select! {
            r = attempt => r,
            _ = shutdown.changed() => break,
        };
        let error = match attempt {
            Ok((mut handle, _)) => match handle
                .tcpip_forward(LINK_FORWARD_ADDRESS, LINK_SESSION_CHANNELS)
                .await
            {
                Ok(_) => {
                    tracing::info!("link to {} is up", relay.authority());
                    status::publish(&state_dir, LinkState::Online, None);
                    notify(&[sd_notify::NotifyState::Status("link online")]);
                    backoff.reset();
                    let (uploader, mut telemetry_requests) = start_upload(&ctx);
                    let controller = start_control(&handle, &ctx).await;
                    let ended = loop {
                        tokio::select! {
                            r = &mut handle => break r.err().map(|e| e.to_string()),
                            // The uploader asks for a telemetry channel when it starts and
                            // whenever the relay closed its last one.
                            Some(reply) = telemetry_requests.recv() => {
                                let _ = reply.send(open_telemetry(&handle).await);
                            }
                            _ = shutdown.changed() => {
                                let _ = handle
                                    .disconnect(russh::Disconnect::ByApplication, "agent stopping", "en")
                                    .await;
                                uploader.abort();
                                status::publish(&state_dir, LinkState::Stopped, None);
                                return Ok(());
                            }
                        }
                    };
                    uploader.abort();
                    if let Some(c) = controller {
                        c.abort();
                    }
                    let msg = ended.unwrap_or_else(|| "relay closed the link".to_string());
                    tracing::warn!("link to {} lost: {msg}", relay.authority());
                    msg
                }
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            "link to {} failed: {error}; retrying in {:.1}s",
            relay.authority(),
            delay.as_secs_f64()
        );
        status::publish(&state_dir, LinkState::Offline, Some(error));
        notify(&[sd_notify::NotifyState::Status("link offline, retrying")]);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
    }
    status::publish(&state_dir, LinkState::Stopped, None);
    Ok(())
}

/// Picks up a device key that `agent keys rotate` replaced on disk since the last attempt (the
/// relay retires the old key once the new one has logged in). The embedded server's host key
/// is the device key, so it follows.
fn reload_key(ctx: &mut LinkContext) {
    let key = match crate::identity::device_key::load(&ctx.config.state_dir) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("cannot reload the device key, keeping the one in use: {e}");
            return;
        }
    };
    if key.public_key().key_data() == ctx.key.public_key().key_data() {
        return;
    }
    match ServerSettings::new(ctx.config.shell.clone(), key.clone()) {
        Ok(server) => {
            tracing::info!(
                "device key changed on disk: now {}",
                crate::identity::device_key::fingerprint(&key)
            );
            ctx.key = Arc::new(key);
            ctx.server = Arc::new(server);
        }
        Err(e) => tracing::warn!("cannot use the new device key: {e}"),
    }
}

/// Opens the control channel and starts following the relay's desired state on it. Like
/// telemetry, a failure here is logged and leaves the link up.
async fn start_control<H: client::Handler>(
    handle: &client::Handle<H>,
    ctx: &LinkContext,
) -> Option<tokio::task::JoinHandle<()>> {
    let supervisor = ctx.supervisor.clone()?;
    let channel = match handle.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot open the control channel: {e}");
            return None;
        }
    };
    if let Err(e) = channel
        .request_subsystem(false, tether_protocol::fleet::CONTROL_SUBSYSTEM)
        .await
    {
        tracing::warn!("cannot start the control channel: {e}");
        return None;
    }
    let config = ctx.config.clone();
    Some(tokio::spawn(async move {
        if let Err(e) = crate::fleet::reconcile::run(channel, supervisor, config).await {
            tracing::info!("control channel stopped: {e}");
        }
    }))
}

/// Starts uploading the outbox over telemetry channels of this link; the link's task opens
/// them (see [`open_telemetry`]) on the returned receiver's requests. A failure of telemetry is
/// logged and leaves the link up: remote access matters more than telemetry.
fn start_upload(
    ctx: &LinkContext,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<crate::telemetry::upload::ChannelReply>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let path = crate::telemetry::outbox::path(&ctx.config.state_dir);
    let cfg = ctx.config.telemetry.clone();
    (tokio::spawn(crate::telemetry::upload::supervise(tx, path, cfg)), rx)
}

/// Opens a session channel and starts the telemetry subsystem on it.
async fn open_telemetry<H: client::Handler>(handle: &client::Handle<H>) -> Option<Channel<Msg>> {
    let channel = match handle.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot open the telemetry channel: {e}");
            return None;
        }
    };
    if let Err(e) = channel.request_subsystem(false, TELEMETRY_SUBSYSTEM).await {
        tracing::warn!("cannot start telemetry upload: {e}");
        return None;
    }
    Some(channel)
}

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// Capped exponential backoff with full jitter, so a relay restart is not met by every
/// device of a fleet at the same instant.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The next delay: uniform in [current/2, current], then doubles `current` up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.current.min(self.max);
        self.current = (self.current * 2).min(self.max);
        let low = cap / 2;
        let span = cap.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(rand::thread_rng().gen_range(0..=span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(8)));
        assert!(delays[7] >= Duration::from_secs(4));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
