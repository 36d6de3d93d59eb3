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
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::keys::PrivateKey;
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet, Preferred, Sig, cipher, mac};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::access::pty::{self, AsyncMaster, Size};
use crate::account::{Account, AccountError, prepare_child};
use crate::config::ShellConfig;

/// Default PATH of sessions.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a hung-up session has to exit before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// After a pty session's process exits, how long to wait for output still in the pty.
const PTY_DRAIN: Duration = Duration::from_millis(500);

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

/// Settings shared by all sessions of the embedded server.
pub struct ServerSettings {
    shell: ShellConfig,
    account: Account,
    config: Arc<server::Config>,
}

impl ServerSettings {
    /// Resolves the session user once and prepares the SSH settings.
    pub fn new(shell: ShellConfig, host_key: PrivateKey) -> Result<Self, ServerError> {
        let account = Account::resolve(shell.user.as_deref(), shell.shell.clone(), "shell.user")?;
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
            shell,
            account,
            config: Arc::new(config),
        })
    }

    /// The unix user sessions run as.
    pub fn user(&self) -> &str {
        &self.account.name
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

/// What a session channel has asked for before its program starts.
#[derive(Default)]
struct Pending {
    channel: Option<Channel<Msg>>,
    pty: Option<(String, Size)>,
    env: Vec<(String, String)>,
}

struct Handler {
    settings: Arc<ServerSettings>,
    channels: HashMap<ChannelId, Pending>,
    engineer: String,
}

/// What to run on a session channel.
enum Program {
    Shell,
    Exec(String),
    Sftp,
}

impl Handler {
    fn env_allowed(&self, name: &str) -> bool {
        self.settings
            .shell
            .accept_env
            .iter()
            .any(|pat| match pat.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pat == name,
            })
    }

    /// Starts `program` on `channel_id`, answering the request.
    fn start(
        &mut self,
        channel_id: ChannelId,
        program: Program,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(pending) = self.channels.get_mut(&channel_id) else {
            return session.channel_failure(channel_id);
        };
        let Some(channel) = pending.channel.take() else {
            // A second shell/exec on one channel is a protocol error; sshd refuses it too.
            return session.channel_failure(channel_id);
        };
        let pty = pending.pty.clone();
        let env = std::mem::take(&mut pending.env);
        let settings = self.settings.clone();
        let handle = session.handle();
        let what = match &program {
            Program::Shell => "shell".to_string(),
            Program::Exec(cmd) => format!("exec {cmd:?}"),
            Program::Sftp => "sftp".to_string(),
        };
        tracing::info!("{} for engineer {}", what, self.engineer);
        session.channel_success(channel_id)?;
        tokio::spawn(async move {
            if let Err(e) = run_program(channel, handle, settings, program, pty, env).await {
                tracing::info!("{what} ended with error: {e}");
            }
        });
        Ok(())
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
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(
            channel.id(),
            Pending {
                channel: Some(channel),
                ..Pending::default()
            },
        );
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
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(p) if p.channel.is_some() => {
                let size = Size {
                    cols: col_width,
                    rows: row_height,
                    px_width: pix_width,
                    px_height: pix_height,
                };
                p.pty = Some((term.to_string(), size));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self.env_allowed(name);
        match self.channels.get_mut(&channel) {
            Some(p) if allowed && p.channel.is_some() => {
                p.env.push((name.to_string(), value.to_string()));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(self.start(channel, Program::Shell, session)?)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        Ok(self.start(channel, Program::Exec(command), session)?)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            Ok(self.start(channel, Program::Sftp, session)?)
        } else {
            Ok(session.channel_failure(channel)?)
        }
    }
}

/// Builds the command for `program` with the login environment of the session user.
fn command(
    settings: &ServerSettings,
    program: &Program,
    term: Option<&str>,
    env: &[(String, String)],
) -> Command {
    let account = &settings.account;
    let shell_name = account
        .shell
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    let mut cmd = match program {
        Program::Shell => {
            let mut c = Command::new(&account.shell);
            // A leading '-' in argv[0] makes the shell a login shell, as sshd does.
            c.arg0(format!("-{shell_name}"));
            c
        }
        Program::Exec(line) => {
            let mut c = Command::new(&account.shell);
            c.arg0(&shell_name).arg("-c").arg(line);
            c
        }
        Program::Sftp => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
            let mut c = Command::new(exe);
            c.arg("sftp-server").arg("--home").arg(&account.home);
            c
        }
    };
    cmd.env_clear()
        .current_dir(&account.home)
        .env("HOME", &account.home)
        .env("USER", &account.name)
        .env("LOGNAME", &account.name)
        .env("SHELL", &account.shell)
        .env("PATH", DEFAULT_PATH);
    if let Some(term) = term {
        cmd.env("TERM", term);
    }
    for (k, v) in &settings.shell.env {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(false);
    cmd
}

/// The wire name of a signal for `exit-signal`.
fn sig_of(signal: i32) -> Sig {
    match Signal::try_from(signal) {
        Ok(Signal::SIGABRT) => Sig::ABRT,
        Ok(Signal::SIGALRM) => Sig::ALRM,
        Ok(Signal::SIGFPE) => Sig::FPE,
        Ok(Signal::SIGHUP) => Sig::HUP,
        Ok(Signal::SIGILL) => Sig::ILL,
        Ok(Signal::SIGINT) => Sig::INT,
        Ok(Signal::SIGKILL) => Sig::KILL,
        Ok(Signal::SIGPIPE) => Sig::PIPE,
        Ok(Signal::SIGQUIT) => Sig::QUIT,
        Ok(Signal::SIGSEGV) => Sig::SEGV,
        Ok(Signal::SIGTERM) => Sig::TERM,
        Ok(Signal::SIGUSR1) => Sig::USR1,
        Ok(other) => Sig::Custom(other.as_str().trim_start_matches("SIG").to_string()),
        Err(_) => Sig::Custom(format!("SIG{signal}")),
    }
}

/// The signal an engineer asked to deliver.
fn signal_of(sig: &Sig) -> Option<Signal> {
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => Signal::SIGUSR2,
            "CONT" => Signal::SIGCONT,
            "STOP" => Signal::SIGSTOP,
            "TSTP" => Signal::SIGTSTP,
            "WINCH" => Signal::SIGWINCH,
            _ => return None,
        },
    })
}

/// Hangs up a session's process group, killing it if it does not exit in time.
fn hang_up(pgid: Pid) {
    let _ = killpg(pgid, Signal::SIGHUP);
    let _ = killpg(pgid, Signal::SIGCONT);
    tokio::spawn(async move {
        tokio::time::sleep(HANGUP_GRACE).await;
        let _ = killpg(pgid, Signal::SIGKILL);
    });
}

/// Reports how the process ended, then EOF and close.
async fn finish(
    writer: &russh::ChannelWriteHalf<Msg>,
    handle: &server::Handle,
    id: ChannelId,
    status: std::io::Result<std::process::ExitStatus>,
) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(st) => {
            if let Some(code) = st.code() {
                let _ = writer.exit_status(code as u32).await;
            } else if let Some(sig) = st.signal() {
                let _ = handle
                    .exit_signal_request(
                        id,
                        sig_of(sig),
                        st.core_dumped(),
                        String::new(),
                        "en".into(),
                    )
                    .await;
            }
        }
        Err(e) => {
            tracing::warn!("waiting for session process failed: {e}");
            let _ = writer.exit_status(255).await;
        }
    }
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

async fn run_program(
    channel: Channel<Msg>,
    handle: server::Handle,
    settings: Arc<ServerSettings>,
    program: Program,
    pty: Option<(String, Size)>,
    env: Vec<(String, String)>,
) -> std::io::Result<()> {
    match pty {
        Some((term, size)) if !matches!(program, Program::Sftp) => {
            run_on_pty(channel, handle, &settings, program, &term, size, &env).await
        }
        _ => run_with_pipes(channel, handle, &settings, program, &env).await,
    }
}

async fn spawn_error(channel: Channel<Msg>, e: &std::io::Error) {
    let _ = channel
        .extended_data(
            1,
            format!("tether: cannot start session: {e}\r\n").as_bytes(),
        )
        .await;
    let _ = channel.exit_status(127).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

async fn run_with_pipes(
    channel: Channel<Msg>,
    handle: server::Handle,
    settings: &ServerSettings,
    program: Program,
    env: &[(String, String)],
) -> std::io::Result<()> {
    let mut cmd = command(settings, &program, None, env);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare_child(&mut cmd, &settings.account, false);
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            spawn_error(channel, &e).await;
            return Err(e);
        }
    };
    let pgid = child_pgid(&child);
    let (Some(stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("child pipes missing"));
    };
    let id = channel.id();
    let (reader, writer) = channel.split();
    let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input = tokio::spawn(pump_input(
        reader,
        Input::Pipe(Some(stdin)),
        pgid,
        exited.clone(),
    ));

    let mut out_w = writer.make_writer();
    let mut err_w = writer.make_writer_ext(Some(1));
    let out_task = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut stdout, &mut out_w).await;
        let _ = out_w.flush().await;
    });
    let err_task = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut stderr, &mut err_w).await;
        let _ = err_w.flush().await;
    });
    let status = child.wait().await;
    exited.store(true, std::sync::atomic::Ordering::SeqCst);
    // Like sshd, report the exit only after all output has been sent.
    let _ = out_task.await;
    let _ = err_task.await;
    finish(&writer, &handle, id, status).await;
    input.abort();
    Ok(())
}

async fn run_on_pty(
    channel: Channel<Msg>,
    handle: server::Handle,
    settings: &ServerSettings,
    program: Program,
    term: &str,
    size: Size,
    env: &[(String, String)],
) -> std::io::Result<()> {
    let pty = match pty::open(size) {
        Ok(p) => p,
        Err(e) => {
            spawn_error(channel, &e).await;
            return Err(e);
        }
    };
    let mut cmd = command(settings, &program, Some(term), env);
    let slave: OwnedFd = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    prepare_child(&mut cmd, &settings.account, true);
    let spawned = cmd.spawn();
    // The command holds the parent's copies of the slave; they must close, or reading the
    // master never reports the end of the session.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            spawn_error(channel, &e).await;
            return Err(e);
        }
    };
    let pgid = child_pgid(&child);
    let master = Arc::new(AsyncMaster::new(pty.master)?);
    let id = channel.id();
    let (reader, writer) = channel.split();
    let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input = tokio::spawn(pump_input(
        reader,
        Input::Pty(master.clone()),
        pgid,
        exited.clone(),
    ));

    let mut out_w = writer.make_writer();
    let out_master = master.clone();
    let mut output = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match out_master.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = out_w.flush().await;
    });
    let status = child.wait().await;
    exited.store(true, std::sync::atomic::Ordering::SeqCst);
    // Output still in the pty is sent; a background job holding the terminal open does not
    // keep the session alive (sshd behaves the same).
    if tokio::time::timeout(PTY_DRAIN, &mut output).await.is_err() {
        output.abort();
    }
    finish(&writer, &handle, id, status).await;
    input.abort();
    Ok(())
}

fn child_pgid(child: &Child) -> Pid {
    // The child called setsid, so its pid is its process group id.
    Pid::from_raw(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0))
}

/// Where engineer input goes.
enum Input {
    Pipe(Option<tokio::process::ChildStdin>),
    Pty(Arc<AsyncMaster>),
}

/// Engineer → process: data, EOF, window changes and signals; hangs up the process group if
/// the engineer goes away before the process exits.
async fn pump_input(
    mut reader: russh::ChannelReadHalf,
    mut input: Input,
    pgid: Pid,
    exited: Arc<std::sync::atomic::AtomicBool>,
) {
    while let Some(msg) = reader.wait().await {
        match msg {
            ChannelMsg::Data { data } => match &mut input {
                Input::Pipe(stdin) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&data).await.is_err()
                    {
                        *stdin = None;
                    }
                }
                Input::Pty(master) => {
                    if master.write_all(&data).await.is_err() {
                        break;
                    }
                }
            },
            ChannelMsg::Eof => {
                if let Input::Pipe(stdin) = &mut input {
                    *stdin = None;
                }
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Input::Pty(master) = &input {
                    let size = Size {
                        cols: col_width,
                        rows: row_height,
                        px_width: pix_width,
                        px_height: pix_height,
                    };
                    if let Err(e) = master.resize(size) {
                        tracing::debug!("resize failed: {e}");
                    }
                }
            }
            ChannelMsg::Signal { signal } => {
                if let Some(sig) = signal_of(&signal)
                    && !exited.load(std::sync::atomic::Ordering::SeqCst)
                {
                    let _ = killpg(pgid, sig);
                }
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    if !exited.load(std::sync::atomic::Ordering::SeqCst) && pgid.as_raw() > 0 {
        hang_up(pgid);
    }
}
