//! The link loop of `agent run`: holds the connection to the relay open, reconnecting after
//! every failure, and starts the device's channels to the relay on each connection.
//!
//! Once connected, the agent announces itself with a `tcpip-forward` request, so the relay can
//! open channels towards it ([`crate::link::connection`] serves them), and opens its own: the
//! telemetry upload and the control channel that carries the desired state. Keepalives keep
//! NAT mappings and load-balancer idle timers from closing an idle link; any failure leads to
//! a reconnect after a jittered, capped exponential backoff. Every state change is published
//! for `agent status` ([`crate::link::status`]).

use std::sync::Arc;

use russh::Channel;
use russh::client::{self, Msg};
use russh::keys::{PrivateKey, PublicKey};
use tether_protocol::names::{
    LINK_FORWARD_ADDRESS, LINK_FORWARD_ADDRESS_SESSIONS, LINK_SESSION_CHANNELS, LINK_USER,
};
use tether_protocol::telemetry::TELEMETRY_SUBSYSTEM;
use tokio::sync::watch;

use crate::access::ssh_server::ServerSettings;
use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::identity::enrollment_record::Enrollment;
use crate::link::connection::{self, HostKeyCheck, LinkError};
use crate::link::forward::ForwardPolicy;
use crate::link::relay_choice::{self, RelayChoice};
use crate::link::status::{self, LinkState};
use crate::link::transport::RelayUrl;

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

/// Holds the link open until `shutdown` turns true, reconnecting after every failure.
pub async fn run(
    mut ctx: LinkContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    // Every URL is checked before the first attempt: a typo in the configuration is an error
    // at start, not a relay that is never tried.
    let mut relays = Vec::new();
    for url in relay_choice::candidates(&ctx.enrollment.relay_url, &ctx.config.link.relay_urls) {
        relays.push(RelayUrl::parse(&url)?);
    }
    // There is always the enrolled URL.
    let Some(mut choice) = RelayChoice::new(relays, rand::random::<u32>() as usize) else {
        return Ok(());
    };
    let pinned = PublicKey::from_openssh(&ctx.enrollment.relay_host_key)
        .map_err(|e| LinkError::BadPinnedKey(e.to_string()))?;
    let state_dir = ctx.config.state_dir.clone();
    let link_cfg = ctx.config.link.clone();
    // The address says whether this agent serves sessions straight on link channels.
    let announce = if link_cfg.channel_sessions {
        LINK_FORWARD_ADDRESS_SESSIONS
    } else {
        LINK_FORWARD_ADDRESS
    };
    let mut backoff = Backoff::new(link_cfg.backoff_initial, link_cfg.backoff_max);
    loop {
        if *shutdown.borrow() {
            break;
        }
        status::publish(&state_dir, LinkState::Connecting, None);
        reload_key(&mut ctx);
        let relay = choice.current().clone();
        let attempt = connection::open(
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
        let mut linked = false;
        let attempt = tokio::select! {
            r = attempt => r,
            _ = shutdown.changed() => break,
        };
        let error = match attempt {
            Ok((mut handle, _)) => {
                match handle.tcpip_forward(announce, LINK_SESSION_CHANNELS).await {
                    Ok(_) => {
                        linked = true;
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
                }
            }
            Err(e) => e.to_string(),
        };
        // A link that came up and dropped is tried again first; one that never came up hands
        // over to the next relay.
        if !linked {
            choice.failed();
        }
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
    (
        tokio::spawn(crate::telemetry::upload::supervise(tx, path, cfg)),
        rx,
    )
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
