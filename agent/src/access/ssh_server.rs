//! The embedded SSH server: shells, commands and sftp for engineers, served on channels that
//! the relay opens over the device link. The device listens on no port.
//!
//! The connection arrives over the device's own authenticated, encrypted link, so the server
//! accepts the relay's `none` authentication (the user name it sends is the engineer's, for the
//! log) and allows the `none` cipher. Everything else behaves like OpenSSH's sshd from a stock
//! client's point of view: pty shells with resize and signals, commands with stdin, stdout,
//! stderr and exit status (or exit signal), environment passing, and the sftp subsystem.
//! Closing the channel or losing the connection hangs up the session's process group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{self, Auth, Msg, Session};
use russh::{
    Channel, ChannelId, ChannelWriteHalf, MethodKind, MethodSet, Preferred, Sig, cipher, mac,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::access::session_process::{self, ExitReport, SessionChannel, SessionSettings};
use crate::access::session_request::{EarlyThen, PreStart, Step, read_requests};
use crate::account::AccountError;
use crate::config::ShellConfig;

/// Why the embedded server could not start or serve.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The session user cannot be used.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The SSH layer failed.
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
}

/// Settings shared by all sessions of the embedded server and of link sessions.
pub struct ServerSettings {
    session: Arc<SessionSettings>,
    config: Arc<server::Config>,
}

impl ServerSettings {
    /// Resolves the session user once and prepares the SSH settings.
    pub fn new(shell: ShellConfig, host_key: PrivateKey) -> Result<Self, ServerError> {
        let session = Arc::new(SessionSettings::new(shell)?);
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::None);
        methods.push(MethodKind::PublicKey);
        let config = server::Config {
            methods,
            keys: vec![host_key],
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            preferred: Preferred {
                // The relay negotiates `none` inside the link, which is already encrypted and
                // authenticated end to end between relay and device.
                cipher: std::borrow::Cow::Owned(vec![
                    cipher::NONE,
                    cipher::AES_256_GCM,
                    cipher::CHACHA20_POLY1305,
                ]),
                mac: std::borrow::Cow::Owned(vec![mac::NONE, mac::HMAC_SHA256]),
                ..Preferred::default()
            },
            ..Default::default()
        };
        Ok(Self {
            session,
            config: Arc::new(config),
        })
    }

    /// The unix user sessions run as.
    pub fn user(&self) -> &str {
        self.session.user()
    }

    /// What every session runs with, whichever way it arrived.
    pub fn session(&self) -> &Arc<SessionSettings> {
        &self.session
    }
}

/// Serves one SSH connection on `stream` until the client disconnects.
pub async fn serve<S>(stream: S, settings: Arc<ServerSettings>) -> Result<(), ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = Handler {
        settings: settings.clone(),
        channels: HashMap::new(),
        engineer: String::new(),
    };
    let running = server::run_stream(settings.config.clone(), stream, handler).await?;
    running.await
}

struct Handler {
    settings: Arc<ServerSettings>,
    /// The session channels open, and whether each has started its program.
    channels: HashMap<ChannelId, bool>,
    engineer: String,
}

/// The embedded server reports a process's end as SSH does: `exit-status` or `exit-signal`.
struct SshExit {
    handle: server::Handle,
}

impl ExitReport<Msg> for SshExit {
    async fn exit_status(&self, writer: &ChannelWriteHalf<Msg>, status: u32) {
        let _ = writer.exit_status(status).await;
    }

    async fn exit_signal(&self, writer: &ChannelWriteHalf<Msg>, signal: Sig, core_dumped: bool) {
        let _ = self
            .handle
            .exit_signal_request(writer.id(), signal, core_dumped, String::new(), "en".into())
            .await;
    }
}

impl Handler {
    /// Answers a request to run a program: the channel's own task reads the same request from
    /// the channel and starts it ([`serve_channel`]).
    fn start(&mut self, channel_id: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
        match self.channels.get_mut(&channel_id) {
            Some(started) if !*started => {
                *started = true;
                session.channel_success(channel_id)
            }
            // A second shell/exec on one channel is a protocol error; sshd refuses it too.
            _ => session.channel_failure(channel_id),
        }
    }

    /// Answers a request that only counts before the program starts.
    fn answer_before_start(
        &self,
        channel_id: ChannelId,
        ok: bool,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        match self.channels.get(&channel_id) {
            Some(false) if ok => session.channel_success(channel_id),
            _ => session.channel_failure(channel_id),
        }
    }
}

/// Serves one session channel of the embedded server: reads its requests from the moment it
/// opens (so that no flood of them fills the channel's queue and stalls the connection), then
/// runs its program.
async fn serve_channel(
    channel: Channel<Msg>,
    settings: Arc<SessionSettings>,
    report: SshExit,
    engineer: String,
) {
    let (mut input, writer) = channel.split();
    let (asked, step) = read_requests(&mut input, |name| settings.env_allowed(name)).await;
    let program = match step {
        Step::Start(program) => program,
        Step::Refuse { why, status } => {
            session_process::refuse(&writer, &report, &why, status).await;
            return;
        }
        Step::Closed | Step::More => {
            let _ = writer.close().await;
            return;
        }
    };
    let PreStart {
        pty, env, early, ..
    } = asked;
    let what = program.describe();
    tracing::info!("{what} for engineer {engineer}");
    let channel = SessionChannel {
        input: EarlyThen { early, rest: input },
        writer: Arc::new(writer),
        report,
        credit: None,
    };
    if let Err(e) = session_process::run(channel, &settings, program, pty, env.into_vars()).await {
        tracing::info!("{what} ended with error: {e}");
    }
}

impl server::Handler for Handler {
    type Error = ServerError;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.engineer = user.to_string();
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.engineer = user.to_string();
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), false);
        let report = SshExit {
            handle: session.handle(),
        };
        tokio::spawn(serve_channel(
            channel,
            self.settings.session.clone(),
            report,
            self.engineer.clone(),
        ));
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
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
        Ok(self.answer_before_start(channel, true, session)?)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The answer says whether `shell.accept_env` allows the name; the channel's task also
        // holds the environment to its bounds (`session_request::RequestedEnv`).
        let allowed = self.settings.session.env_allowed(name);
        Ok(self.answer_before_start(channel, allowed, session)?)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(self.start(channel, session)?)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(self.start(channel, session)?)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            Ok(self.start(channel, session)?)
        } else {
            Ok(session.channel_failure(channel)?)
        }
    }
}
