//! One authenticated SSH connection from the agent to the relay, and the channels the relay
//! opens on it.
//!
//! The agent is the SSH client. It authenticates with the device key, checks the relay's host
//! key against the one pinned at enrollment (or, at enrollment, against `--fingerprint`), and
//! serves what the relay opens towards the device: a `direct-streamlocal` channel to
//! `tether-session` is an engineer's session carried on it directly; one to
//! `tether-forward/PORT/HOST` is an engineer's forward carried against credit, and a
//! `forwarded-tcpip` channel one carried plain (relays before credited forwards), both dialled
//! only if the forward policy allows the target; a `session` channel is served by the embedded
//! SSH server. No name an engineer can put in a forward reaches a session: an engineer's
//! request only ever becomes a forward channel (`forwarded-tcpip`, or a path that always
//! starts with `tether-forward/`), and those are only ever dialled. Every other channel type
//! is refused.
//!
//! The link loop ([`crate::link::run`]) and the enrollment and key rotation exchanges all
//! connect through [`open`].

use std::sync::Arc;
use std::time::Duration;

use russh::client::ChannelOpenHandle;
use russh::client::{self, Msg, Session};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure, Preferred, SshId, cipher};
use thiserror::Error;

use crate::access::link_session;
use crate::access::ssh_server::{self, ServerSettings};
use crate::config::LinkConfig;
use crate::link::forward::{self, ForwardPolicy};
use crate::link::transport::{self, RelayUrl, TransportError};
use tether_protocol::link_session::flow::{SessionEnds, bridge, credit_only};
use tether_protocol::link_session::{LINK_SESSION_PATH, Report, Request, parse_forward_path};

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

/// The SSH keepalive interval of a link to `relay` when the configuration leaves it unset.
///
/// Each round trip wakes the relay once per board, so an idle fleet's relay CPU is set by this
/// interval; the kernel's TCP keepalive (`link.tcp_keepalive`) notices a dead path sooner
/// without waking anyone. WebSocket links usually cross an HTTP proxy or load balancer that
/// drops a connection silent for 60 s, which the kernel's probes do not count as traffic.
pub fn default_keepalive(relay: &RelayUrl) -> Duration {
    match relay {
        RelayUrl::Ssh { .. } => Duration::from_secs(120),
        RelayUrl::WebSocket { .. } => Duration::from_secs(30),
    }
}

/// Client-side SSH configuration shared by the link and enrollment, for a link to `relay`.
pub fn ssh_client_config(link: &LinkConfig, relay: &RelayUrl) -> client::Config {
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
        keepalive_interval: Some(
            link.keepalive_interval
                .unwrap_or_else(|| default_keepalive(relay)),
        ),
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

    /// An engineer's session carried straight on this channel ([`link_session`]), or a
    /// credited forward: like the `session` channel, only the relay can open them.
    async fn server_channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if socket_path == LINK_SESSION_PATH {
            reply.accept().await;
            tokio::spawn(link_session::serve(channel, self.server.session().clone()));
        } else if let Some((host, port)) = parse_forward_path(socket_path) {
            self.forward(channel, host, port, reply, true).await;
        } else {
            tracing::warn!("refused direct-streamlocal channel to {socket_path:?}");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        }
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
        self.forward(channel, connected_address, connected_port, reply, false)
            .await;
        Ok(())
    }
}

impl LinkHandler {
    /// An engineer's forward to `host:port` on the device: dialled only if the forward policy
    /// allows it, then carried plain (`forwarded-tcpip`) or against credit (a credited
    /// forward, [`tether_protocol::link_session::flow::bridge`]).
    async fn forward(
        &self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        reply: ChannelOpenHandle,
        credited: bool,
    ) {
        if !self.policy.allows(host, port) {
            tracing::warn!("refused forward to {host}:{port}: not in forward.allow");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
        let host = host.to_string();
        // Dial in a task: a slow target must not stall the link's other channels.
        tokio::spawn(async move {
            match forward::connect(&host, port).await {
                Ok(mut tcp) => {
                    reply.accept().await;
                    if credited {
                        let ends = SessionEnds::open(
                            channel,
                            credit_only::<Request>,
                            Report::credit_frame,
                        );
                        bridge(ends, tcp).await;
                        return;
                    }
                    let mut stream = channel.into_stream();
                    if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
                        &mut stream,
                        &mut tcp,
                        forward::COPY_BUFFER,
                        forward::COPY_BUFFER,
                    )
                    .await
                    {
                        tracing::debug!("forward to {host}:{port} ended: {e}");
                    }
                }
                Err(e) => {
                    tracing::info!("forward to {host}:{port} failed: {e}");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
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
    let stream = transport::connect(
        relay,
        link.connect_timeout,
        link.bind_address,
        link.tcp_keepalive,
    )
    .await?;
    let config = Arc::new(ssh_client_config(link, relay));
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
