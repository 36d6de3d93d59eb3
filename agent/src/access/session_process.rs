//! A session's process: the shell, command or sftp server an engineer's session runs, on a
//! pseudo-terminal or on pipes, fed with the engineer's input (data, EOF, window changes,
//! signals) and reporting its output and how it ended.
//!
//! Both ways a session reaches the agent use it: the embedded SSH server
//! ([`super::ssh_server`]) and sessions straight on a link channel ([`super::link_session`]).
//! They differ only in where input comes from ([`Input`]) and how the end is reported
//! ([`ExitReport`]); output is channel data (stdout) and extended data 1 (stderr) on both.
//! Closing the channel or losing the link hangs up the session's process group.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use tether_protocol::link_session::flow::{Credit, MAX_PIECE};

use crate::access::pty::{self, AsyncMaster, Size};
use crate::account::{Account, AccountError, prepare_child};
use crate::config::ShellConfig;

/// Default PATH of sessions.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a hung-up session has to exit before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// After a pty session's process exits, how long to wait for output still in the pty.
const PTY_DRAIN: Duration = Duration::from_millis(500);

/// The account and shell settings every session runs with.
pub struct SessionSettings {
    shell: ShellConfig,
    account: Account,
}

impl SessionSettings {
    /// Resolves the session user (`shell.user`) once.
    pub fn new(shell: ShellConfig) -> Result<Self, AccountError> {
        let account = Account::resolve(shell.user.as_deref(), shell.shell.clone(), "shell.user")?;
        Ok(Self { shell, account })
    }

    /// The unix user sessions run as.
    pub fn user(&self) -> &str {
        &self.account.name
    }

    /// Whether an engineer may pass the environment variable `name` (`shell.accept_env`).
    pub fn env_allowed(&self, name: &str) -> bool {
        self.shell
            .accept_env
            .iter()
            .any(|pat| match pat.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pat == name,
            })
    }
}

/// What to run on a session channel.
#[derive(Debug)]
pub enum Program {
    /// The user's login shell.
    Shell,
    /// A command line, run by the user's shell.
    Exec(String),
    /// The sftp server.
    Sftp,
}

impl Program {
    /// How the log names it.
    pub fn describe(&self) -> String {
        match self {
            Program::Shell => "shell".to_string(),
            Program::Exec(cmd) => format!("exec {cmd:?}"),
            Program::Sftp => "sftp".to_string(),
        }
    }
}

/// Where the engineer's input comes from, as channel messages: data, EOF, window changes,
/// signals and close; everything else is ignored.
pub trait Input: Send + 'static {
    /// The next message; `None` once the channel is gone.
    fn next(&mut self) -> impl Future<Output = Option<ChannelMsg>> + Send;
}

impl Input for ChannelReadHalf {
    fn next(&mut self) -> impl Future<Output = Option<ChannelMsg>> + Send {
        self.wait()
    }
}

/// How a session tells its peer the way its process ended, on the channel `writer` writes to.
pub trait ExitReport<S>: Send + Sync + 'static
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    /// The process exited with `status`.
    fn exit_status(
        &self,
        writer: &ChannelWriteHalf<S>,
        status: u32,
    ) -> impl Future<Output = ()> + Send;

    /// The process was killed by `signal`.
    fn exit_signal(
        &self,
        writer: &ChannelWriteHalf<S>,
        signal: Sig,
        core_dumped: bool,
    ) -> impl Future<Output = ()> + Send;
}

/// One session's channel: input, output and the end report.
pub struct SessionChannel<S, I, R>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    /// Engineer to process.
    pub input: I,
    /// Process to engineer.
    pub writer: Arc<ChannelWriteHalf<S>>,
    /// How the end is told.
    pub report: R,
    /// What output may still be sent, where the peer grants it ([`Credit`]); `None` where the
    /// channel's own window holds output back.
    pub credit: Option<Credit>,
}

/// Sends output piece by piece, each once the peer has credited it; `false` once the channel
/// or the session is gone.
async fn send_output<W>(out: &mut W, credit: &Option<Credit>, mut data: &[u8]) -> bool
where
    W: tokio::io::AsyncWrite + Unpin,
{
    while !data.is_empty() {
        let n = data.len().min(MAX_PIECE);
        if let Some(credit) = credit
            && !credit.take(n).await
        {
            return false;
        }
        if out.write_all(&data[..n]).await.is_err() {
            return false;
        }
        data = &data[n..];
    }
    true
}

/// Copies a pipe of the process to the channel until it ends.
async fn pump_pipe<P, W>(mut pipe: P, mut out: W, credit: Option<Credit>)
where
    P: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; MAX_PIECE];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !send_output(&mut out, &credit, &buf[..n]).await {
                    break;
                }
            }
        }
    }
    let _ = out.flush().await;
}

/// Builds the command for `program` with the login environment of the session user.
fn command(
    settings: &SessionSettings,
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
async fn finish<S, R>(
    writer: &ChannelWriteHalf<S>,
    report: &R,
    status: std::io::Result<std::process::ExitStatus>,
) where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    R: ExitReport<S>,
{
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(st) => {
            if let Some(code) = st.code() {
                report.exit_status(writer, code as u32).await;
            } else if let Some(sig) = st.signal() {
                report
                    .exit_signal(writer, sig_of(sig), st.core_dumped())
                    .await;
            }
        }
        Err(e) => {
            tracing::warn!("waiting for session process failed: {e}");
            report.exit_status(writer, 255).await;
        }
    }
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

/// Runs `program` for one session until it ends and its end is reported: on a pty when the
/// engineer asked for one (never for sftp), else on pipes.
pub async fn run<S, I, R>(
    channel: SessionChannel<S, I, R>,
    settings: &SessionSettings,
    program: Program,
    pty: Option<(String, Size)>,
    env: Vec<(String, String)>,
) -> std::io::Result<()>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    I: Input,
    R: ExitReport<S>,
{
    match pty {
        Some((term, size)) if !matches!(program, Program::Sftp) => {
            run_on_pty(channel, settings, program, &term, size, &env).await
        }
        _ => run_with_pipes(channel, settings, program, &env).await,
    }
}

async fn spawn_error<S, R>(writer: &ChannelWriteHalf<S>, report: &R, e: &std::io::Error)
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    R: ExitReport<S>,
{
    refuse(writer, report, &format!("cannot start session: {e}"), 127).await;
}

/// Ends a session that cannot run with a message on stderr and `status`, as sshd would.
pub async fn refuse<S, R>(writer: &ChannelWriteHalf<S>, report: &R, message: &str, status: u32)
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    R: ExitReport<S>,
{
    let text = format!("tether: {message}\r\n");
    let _ = writer.extended_data_bytes(1, text.into_bytes()).await;
    report.exit_status(writer, status).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

async fn run_with_pipes<S, I, R>(
    channel: SessionChannel<S, I, R>,
    settings: &SessionSettings,
    program: Program,
    env: &[(String, String)],
) -> std::io::Result<()>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    I: Input,
    R: ExitReport<S>,
{
    let SessionChannel {
        input,
        writer,
        report,
        credit,
    } = channel;
    let mut cmd = command(settings, &program, None, env);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare_child(&mut cmd, &settings.account, false);
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            spawn_error(&writer, &report, &e).await;
            return Err(e);
        }
    };
    let pgid = child_pgid(&child);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("child pipes missing"));
    };
    let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input = tokio::spawn(pump_input(
        input,
        Target::Pipe(Some(stdin)),
        pgid,
        exited.clone(),
    ));

    let out_task = tokio::spawn(pump_pipe(stdout, writer.make_writer(), credit.clone()));
    let err_task = tokio::spawn(pump_pipe(stderr, writer.make_writer_ext(Some(1)), credit));
    let status = child.wait().await;
    exited.store(true, std::sync::atomic::Ordering::SeqCst);
    // Like sshd, report the exit only after all output has been sent.
    let _ = out_task.await;
    let _ = err_task.await;
    finish(&writer, &report, status).await;
    input.abort();
    Ok(())
}

async fn run_on_pty<S, I, R>(
    channel: SessionChannel<S, I, R>,
    settings: &SessionSettings,
    program: Program,
    term: &str,
    size: Size,
    env: &[(String, String)],
) -> std::io::Result<()>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    I: Input,
    R: ExitReport<S>,
{
    let SessionChannel {
        input,
        writer,
        report,
        credit,
    } = channel;
    let pty = match pty::open(size) {
        Ok(p) => p,
        Err(e) => {
            spawn_error(&writer, &report, &e).await;
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
            spawn_error(&writer, &report, &e).await;
            return Err(e);
        }
    };
    let pgid = child_pgid(&child);
    let master = Arc::new(AsyncMaster::new(pty.master)?);
    let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input = tokio::spawn(pump_input(
        input,
        Target::Pty(master.clone()),
        pgid,
        exited.clone(),
    ));

    let mut out_w = writer.make_writer();
    let out_master = master.clone();
    let mut output = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_PIECE];
        loop {
            match out_master.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send_output(&mut out_w, &credit, &buf[..n]).await {
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
    finish(&writer, &report, status).await;
    input.abort();
    Ok(())
}

fn child_pgid(child: &Child) -> Pid {
    // The child called setsid, so its pid is its process group id.
    Pid::from_raw(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0))
}

/// Where engineer input goes.
enum Target {
    Pipe(Option<tokio::process::ChildStdin>),
    Pty(Arc<AsyncMaster>),
}

/// Engineer → process: data, EOF, window changes and signals; hangs up the process group if
/// the engineer goes away before the process exits.
async fn pump_input<I: Input>(
    mut reader: I,
    mut input: Target,
    pgid: Pid,
    exited: Arc<std::sync::atomic::AtomicBool>,
) {
    while let Some(msg) = reader.next().await {
        match msg {
            ChannelMsg::Data { data } => match &mut input {
                Target::Pipe(stdin) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&data).await.is_err()
                    {
                        *stdin = None;
                    }
                }
                Target::Pty(master) => {
                    if master.write_all(&data).await.is_err() {
                        break;
                    }
                }
            },
            ChannelMsg::Eof => {
                if let Target::Pipe(stdin) = &mut input {
                    *stdin = None;
                }
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Target::Pty(master) = &input {
                    let size = Size::new(col_width, row_height, pix_width, pix_height);
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
