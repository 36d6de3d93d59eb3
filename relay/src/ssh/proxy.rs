//! Relay-terminated engineer sessions: one engineer session channel carried to the device.
//!
//! For each session channel the relay opens a channel towards the device over its link and
//! relays every request, byte, EOF, exit status and signal between the two. An agent that
//! serves link sessions gets a `direct-streamlocal` channel that is the session itself
//! ([`tether_protocol::link_session`]: data as data, requests and the exit as control frames).
//! Otherwise, and for a device whose link another relay of the cluster holds (a byte stream
//! through that relay), the relay runs an SSH client to the agent's embedded SSH server
//! (verifying the device key as host key, and negotiating the `none` cipher because the link
//! around it is already encrypted and authenticated) and opens one session channel there.
//! Each direction is pumped by its own task, so flow control holding up one direction never
//! stalls the other.

use std::sync::Arc;

use russh::client;
use russh::keys::{PublicKey, PublicKeyOrCertificate};
use russh::server;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Preferred, cipher, mac};
use tether_protocol::link_session::flow::{ControlTx, Credit, Inbox, MAX_PIECE, SessionEnds};
use tether_protocol::link_session::{self as wire, LINK_SESSION_PATH, Report, Request};

use crate::recording::Recording;
use thiserror::Error;

/// Why a session could not be carried to the device.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The SSH layer failed.
    #[error("{0}")]
    Ssh(#[from] russh::Error),
    /// The device did not accept the inner connection.
    #[error("the device refused the session")]
    Refused,
    /// The relay holding the device's link could not be reached.
    #[error("through its relay: {0}")]
    Cluster(String),
}

/// SSH client settings for the inner connection to a device's embedded server.
fn inner_config() -> Arc<client::Config> {
    let preferred = Preferred {
        // Inside the link, which is encrypted and authenticated end to end between relay and
        // device, a second layer of encryption would only halve throughput.
        cipher: std::borrow::Cow::Owned(vec![cipher::NONE, cipher::AES_256_GCM]),
        mac: std::borrow::Cow::Owned(vec![mac::NONE, mac::HMAC_SHA256]),
        ..Preferred::default()
    };
    Arc::new(client::Config {
        preferred,
        inactivity_timeout: None,
        ..Default::default()
    })
}

/// Client handler of the inner connection: accepts only the device's own key.
struct InnerHandler {
    device_key: PublicKey,
}

impl client::Handler for InnerHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.device_key.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// An open session on the device.
pub struct DeviceSession(Carrier);

/// How a session reaches the device's process.
enum Carrier {
    /// A session channel of an SSH connection to the embedded server.
    Embedded {
        /// Keeps the inner SSH connection alive for as long as the session runs.
        connection: client::Handle<InnerHandler>,
        /// The session channel on the device.
        channel: Channel<client::Msg>,
    },
    /// A link session: the link channel is the session.
    Link(Channel<server::Msg>),
}

/// Opens a session on the device through its link: a link session where the agent serves
/// them, else a session on its embedded SSH server.
pub async fn open_device_session(
    link: &crate::registry::LiveLink,
    engineer: &str,
    originator: std::net::SocketAddr,
) -> Result<DeviceSession, ProxyError> {
    if link.link_sessions {
        // Like a `session` channel, this is a request only the relay can make.
        let channel = link
            .handle
            .channel_open_direct_streamlocal(LINK_SESSION_PATH)
            .await?;
        return Ok(DeviceSession(Carrier::Link(channel)));
    }
    // A `session` channel from relay to device is a request only the relay can make: an
    // engineer's forward always becomes `forwarded-tcpip`, which the agent never serves with
    // its embedded server.
    let link_channel = if link.session_channels {
        link.handle.channel_open_session().await?
    } else {
        // An agent from before session channels. The relay refuses engineers' forwards to
        // this name, so only this path reaches its embedded server.
        link.handle
            .channel_open_forwarded_tcpip(
                tether_protocol::names::LEGACY_EMBEDDED_SSH_TARGET,
                0,
                originator.ip().to_string(),
                u32::from(originator.port()),
            )
            .await?
    };
    session_over(
        link_channel.into_stream(),
        link.device_key.clone(),
        engineer,
    )
    .await
}

/// Opens a session on a device's embedded SSH server over `stream`: a channel on the device's
/// link, or a stream through the relay of the cluster that holds it
/// ([`crate::cluster::peer`]). `device_key` is the device's key, which its embedded server
/// presents as its host key.
pub async fn session_over<S>(
    stream: S,
    device_key: PublicKey,
    engineer: &str,
) -> Result<DeviceSession, ProxyError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut connection =
        client::connect_stream(inner_config(), stream, InnerHandler { device_key }).await?;
    if !connection.authenticate_none(engineer).await?.success() {
        return Err(ProxyError::Refused);
    }
    let channel = connection.channel_open_session().await?;
    Ok(DeviceSession(Carrier::Embedded {
        connection,
        channel,
    }))
}

/// The device end of a session, for the engineer's requests and bytes.
enum DeviceTx {
    Embedded(ChannelWriteHalf<client::Msg>),
    Link {
        tx: Arc<ChannelWriteHalf<server::Msg>>,
        control: Arc<ControlTx<server::Msg>>,
        /// What input the agent has room for.
        credit: Credit,
    },
}

/// Why a message could not be carried to the device.
enum SendError {
    /// The channel is gone.
    Closed,
    /// The engineer asked for something that cannot be carried; the text says what.
    Refused(String),
}

impl From<russh::Error> for SendError {
    fn from(_: russh::Error) -> Self {
        SendError::Closed
    }
}

impl DeviceTx {
    /// Carries one message of the engineer's channel to the device.
    async fn send(&self, msg: ChannelMsg) -> Result<(), SendError> {
        match self {
            DeviceTx::Embedded(tx) => Self::send_ssh(tx, msg).await,
            DeviceTx::Link {
                tx,
                control,
                credit,
            } => Self::send_link(tx, control, credit, msg).await,
        }
    }

    async fn close(&self) {
        let _ = match self {
            DeviceTx::Embedded(tx) => tx.close().await,
            DeviceTx::Link { tx, credit, .. } => {
                credit.close();
                tx.close().await
            }
        };
    }

    async fn send_ssh(
        tx: &ChannelWriteHalf<client::Msg>,
        msg: ChannelMsg,
    ) -> Result<(), SendError> {
        match msg {
            ChannelMsg::Data { data } => tx.data_bytes(data).await?,
            ChannelMsg::Eof => tx.eof().await?,
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                tx.request_pty(
                    false,
                    &term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    &terminal_modes,
                )
                .await?
            }
            ChannelMsg::RequestShell { .. } => tx.request_shell(false).await?,
            ChannelMsg::Exec { command, .. } => tx.exec(false, command).await?,
            ChannelMsg::RequestSubsystem { name, .. } => tx.request_subsystem(false, name).await?,
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => tx.set_env(false, variable_name, variable_value).await?,
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                tx.window_change(col_width, row_height, pix_width, pix_height)
                    .await?
            }
            ChannelMsg::Signal { signal } => tx.signal(signal).await?,
            _ => {}
        }
        Ok(())
    }

    async fn send_link(
        tx: &ChannelWriteHalf<server::Msg>,
        control: &ControlTx<server::Msg>,
        credit: &Credit,
        msg: ChannelMsg,
    ) -> Result<(), SendError> {
        let request = match msg {
            ChannelMsg::Data { data } => {
                let mut at = 0;
                while at < data.len() {
                    let end = data.len().min(at + MAX_PIECE);
                    if !credit.take(end - at).await {
                        return Err(SendError::Closed);
                    }
                    tx.data_bytes(data.slice(at..end)).await?;
                    at = end;
                }
                return Ok(());
            }
            ChannelMsg::Eof => return Ok(tx.eof().await?),
            other => match Request::from_msg(other) {
                Some(request) => request,
                None => return Ok(()),
            },
        };
        let frame = wire::encode(&request).map_err(|_| {
            SendError::Refused(format!(
                "request too long for the device (the limit is {} KiB)",
                wire::MAX_CONTROL_FRAME / 1024
            ))
        })?;
        if control.send(frame).await {
            Ok(())
        } else {
            Err(SendError::Closed)
        }
    }
}

/// The device end of a session, for its output and its end. A link session's channel is
/// drained at once ([`Inbox`]), its control frames becoming the `exit-status` and
/// `exit-signal` an SSH session would have sent and the credit for the engineer's input.
enum DeviceRx {
    Embedded(ChannelReadHalf),
    Link(Inbox<server::Msg>),
}

impl DeviceRx {
    async fn next(&mut self) -> Option<ChannelMsg> {
        match self {
            DeviceRx::Embedded(rx) => rx.wait().await,
            DeviceRx::Link(inbox) => inbox.next().await,
        }
    }
}

/// What a control frame from the device means for the session.
fn report_to_msg(report: Report, credit: &Credit) -> Option<ChannelMsg> {
    match report {
        Report::ExitStatus { status } => Some(ChannelMsg::ExitStatus {
            exit_status: status,
        }),
        Report::ExitSignal { name, core_dumped } => Some(ChannelMsg::ExitSignal {
            signal_name: wire::signal_from_name(&name),
            core_dumped,
            error_message: String::new(),
            lang_tag: "en".into(),
        }),
        Report::Credit { bytes } => {
            credit.give(bytes);
            None
        }
        Report::Unknown => None,
    }
}

/// Which side ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The device closed the channel: its process ended.
    Device,
    /// The engineer's side closed or vanished first.
    Engineer,
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// When a session last carried data, as milliseconds since it started.
struct Activity {
    start: tokio::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `limit`.
    async fn idle_for(&self, limit: std::time::Duration) {
        loop {
            let last = std::time::Duration::from_millis(
                self.last_ms.load(std::sync::atomic::Ordering::Relaxed),
            );
            let idle = self.start.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// Relays everything between the engineer's session channel and the device session until
/// either side closes or nothing moves for `idle_timeout`, reporting each request and byte to
/// `recording`. `front` is the engineer connection's handle (for exit signals).
pub async fn relay_session(
    engineer: Channel<server::Msg>,
    front: server::Handle,
    device: DeviceSession,
    recording: Arc<Recording>,
    idle_timeout: Option<std::time::Duration>,
) -> Ended {
    let engineer_id = engineer.id();
    let (mut engineer_rx, engineer_tx) = engineer.split();
    let (connection, mut device_rx, device_tx) = match device.0 {
        Carrier::Embedded {
            connection,
            channel,
        } => {
            let (rx, tx) = channel.split();
            (
                Some(connection),
                DeviceRx::Embedded(rx),
                DeviceTx::Embedded(tx),
            )
        }
        Carrier::Link(channel) => {
            let SessionEnds {
                writer,
                control,
                credit,
                inbox,
            } = SessionEnds::open(channel, report_to_msg, Request::credit_frame);
            let tx = DeviceTx::Link {
                tx: writer,
                control,
                credit,
            };
            (None, DeviceRx::Link(inbox), tx)
        }
    };
    let rec_up = recording.clone();
    let rec_down = recording.clone();
    let activity = Arc::new(Activity {
        start: tokio::time::Instant::now(),
        last_ms: std::sync::atomic::AtomicU64::new(0),
    });
    let (act_up, act_down) = (activity.clone(), activity.clone());
    // The engineer's client closes its channel as soon as it has the exit status, often
    // before the device's own close arrives: a session whose process reported how it ended
    // ended on the device, whichever close is seen first.
    let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exited_down = exited.clone();
    let idle_front = front.clone();
    let refuse_front = front.clone();

    let upstream = async move {
        while let Some(msg) = engineer_rx.wait().await {
            match &msg {
                ChannelMsg::Data { data } => {
                    act_up.touch();
                    rec_up.input(data);
                }
                ChannelMsg::Close => break,
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    ..
                } => rec_up.pty(term, *col_width, *row_height),
                ChannelMsg::RequestShell { .. } => rec_up.shell(),
                ChannelMsg::Exec { command, .. } => rec_up.exec(command),
                ChannelMsg::RequestSubsystem { name, .. } => rec_up.subsystem(name),
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } => rec_up.resize(*col_width, *row_height),
                _ => {}
            }
            match device_tx.send(msg).await {
                Ok(()) => {}
                Err(SendError::Closed) => break,
                Err(SendError::Refused(why)) => {
                    let text = format!("tether: {why}\r\n");
                    let _ = refuse_front
                        .extended_data(engineer_id, 1, text.into_bytes())
                        .await;
                    let _ = refuse_front.exit_status_request(engineer_id, 255).await;
                    let _ = refuse_front.eof(engineer_id).await;
                    let _ = refuse_front.close(engineer_id).await;
                    break;
                }
            }
        }
        device_tx.close().await;
    };

    let downstream = async move {
        while let Some(msg) = device_rx.next().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    act_down.touch();
                    rec_down.output(&data);
                    engineer_tx.data_bytes(data).await.is_ok()
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    act_down.touch();
                    rec_down.output(&data);
                    engineer_tx.extended_data_bytes(ext, data).await.is_ok()
                }
                ChannelMsg::Eof => engineer_tx.eof().await.is_ok(),
                ChannelMsg::ExitStatus { exit_status } => {
                    rec_down.exit_status(exit_status);
                    exited_down.store(true, std::sync::atomic::Ordering::Relaxed);
                    engineer_tx.exit_status(exit_status).await.is_ok()
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    rec_down.exit_signal(&format!("{signal_name:?}"));
                    exited_down.store(true, std::sync::atomic::Ordering::Relaxed);
                    front
                        .exit_signal_request(
                            engineer_id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await
                        .is_ok()
                }
                ChannelMsg::Close => break,
                _ => true,
            };
            if !sent {
                break;
            }
        }
        let _ = engineer_tx.close().await;
    };

    let mut up = tokio::spawn(upstream);
    let mut down = tokio::spawn(downstream);
    // The session is over when the device side closes (the process ended) or the engineer went
    // away; either way both channels get closed by their pump. The other side gets a moment
    // to see the close; a device that never answers must not keep the session open forever.
    let grace = std::time::Duration::from_secs(5);
    let idle = async {
        match idle_timeout.filter(|t| !t.is_zero()) {
            Some(limit) => activity.idle_for(limit).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        _ = idle => {
            if let Some(limit) = idle_timeout {
                let text = format!(
                    "\r\ntether: session idle for {}, closing it (limits.session_idle_timeout)\r\n",
                    humantime::format_duration(limit)
                );
                recording.output(text.as_bytes());
                let _ = idle_front
                    .extended_data(engineer_id, 1, text.into_bytes())
                    .await;
            }
            let _ = idle_front.close(engineer_id).await;
            if tokio::time::timeout(grace, &mut up).await.is_err() {
                up.abort();
            }
            down.abort();
            Ended::Idle
        }
        _ = &mut down => {
            if tokio::time::timeout(grace, &mut up).await.is_err() {
                up.abort();
            }
            Ended::Device
        }
        _ = &mut up => {
            if tokio::time::timeout(grace, &mut down).await.is_err() {
                down.abort();
            }
            if exited.load(std::sync::atomic::Ordering::Relaxed) {
                Ended::Device
            } else {
                Ended::Engineer
            }
        }
    };
    if let Some(connection) = connection {
        let _ = connection
            .disconnect(russh::Disconnect::ByApplication, "session ended", "en")
            .await;
    }
    ended
}

/// Writes an error line to the engineer's terminal and ends the session with status 255, as
/// OpenSSH does when it cannot run anything.
pub async fn refuse_session(channel: Channel<server::Msg>, message: &str) {
    let text = format!("tether: {message}\r\n");
    let _ = channel.extended_data(1, text.as_bytes()).await;
    let _ = channel.exit_status(255).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}
