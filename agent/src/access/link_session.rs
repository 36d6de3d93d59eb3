//! Engineers' sessions served straight on a link channel ([`tether_protocol::link_session`]):
//! no SSH session inside it, so each keystroke and each block of a file crosses the agent
//! once, as link channel data, instead of being framed, parsed and handed between the tasks of
//! an embedded SSH session as well.
//!
//! The channel is drained from the start ([`Inbox`]): control frames become the channel
//! messages an SSH session would have carried (pty, environment, what to run, window changes,
//! signals), credit from the relay lets output go on. Input the engineer typed before the
//! process started is held (bounded) and given to it. Once it runs, the process is
//! [`super::session_process`]'s, exactly as under the embedded server, and its end goes back
//! as a [`Report`] frame.

use std::collections::VecDeque;
use std::sync::Arc;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Sig};
use tether_protocol::link_session::flow::{ControlTx, Credit, Inbox, SessionEnds};
use tether_protocol::link_session::{MAX_EARLY_INPUT, Report, Request, encode, signal_name};

use crate::access::pty::Size;
use crate::access::session_process::{
    self, ExitReport, Input, Program, SessionChannel, SessionSettings,
};

/// Most environment bytes (names and values) a session may pass before its program starts.
const MAX_ENV_BYTES: usize = 64 * 1024;

/// The engineer's side of a running link session: what the engineer typed before the start,
/// then the drained channel.
struct LinkInput {
    early: VecDeque<ChannelMsg>,
    inbox: Inbox<Msg>,
}

impl Input for LinkInput {
    async fn next(&mut self) -> Option<ChannelMsg> {
        match self.early.pop_front() {
            Some(msg) => Some(msg),
            None => self.inbox.next().await,
        }
    }
}

/// What a control frame from the relay means for the session: a channel message to act on,
/// or credit for output.
fn request_to_msg(request: Request, credit: &Credit) -> Option<ChannelMsg> {
    if let Request::Credit { bytes } = request {
        credit.give(bytes);
    }
    request.into_msg()
}

/// A link session reports its process's end as a [`Report`] frame.
struct LinkExit {
    control: Arc<ControlTx<Msg>>,
}

impl LinkExit {
    async fn send(&self, report: &Report) {
        match encode(report) {
            Ok(frame) => {
                self.control.send(frame).await;
            }
            Err(e) => tracing::warn!("link session: cannot encode {report:?}: {e}"),
        }
    }
}

impl ExitReport<Msg> for LinkExit {
    async fn exit_status(&self, _writer: &ChannelWriteHalf<Msg>, status: u32) {
        self.send(&Report::ExitStatus { status }).await
    }

    async fn exit_signal(&self, _writer: &ChannelWriteHalf<Msg>, signal: Sig, core_dumped: bool) {
        let report = Report::ExitSignal {
            name: signal_name(&signal),
            core_dumped,
        };
        self.send(&report).await
    }
}

/// Serves one link session channel until its process ended and was reported, or the relay
/// closed the channel. The relay authorised and records the session before opening it.
pub async fn serve(channel: Channel<Msg>, settings: Arc<SessionSettings>) {
    let SessionEnds {
        writer,
        control,
        credit,
        inbox,
    } = SessionEnds::open(channel, request_to_msg, Report::credit_frame);
    let mut input = LinkInput {
        early: VecDeque::new(),
        inbox,
    };
    let exit = LinkExit { control };
    let mut pty: Option<(String, Size)> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let (mut env_bytes, mut early_bytes) = (0usize, 0usize);
    let program = loop {
        let Some(msg) = input.inbox.next().await else {
            credit.close();
            let _ = writer.close().await;
            return;
        };
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                ..
            } => {
                let size = Size {
                    cols: col_width,
                    rows: row_height,
                    px_width: pix_width,
                    px_height: pix_height,
                };
                pty = Some((term, size));
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Some((_, size)) = pty.as_mut() {
                    *size = Size {
                        cols: col_width,
                        rows: row_height,
                        px_width: pix_width,
                        px_height: pix_height,
                    };
                }
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                env_bytes += variable_name.len() + variable_value.len();
                if env_bytes > MAX_ENV_BYTES {
                    tracing::info!(
                        "link session: environment over {MAX_ENV_BYTES} bytes, {variable_name} not passed"
                    );
                } else if settings.env_allowed(&variable_name) {
                    env.push((variable_name, variable_value));
                }
            }
            ChannelMsg::RequestShell { .. } => break Program::Shell,
            ChannelMsg::Exec { command, .. } => {
                break Program::Exec(String::from_utf8_lossy(&command).into_owned());
            }
            ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => break Program::Sftp,
            ChannelMsg::RequestSubsystem { name, .. } => {
                let shown: String = name.chars().take(64).collect();
                let why = format!("subsystem {shown:?} is not served");
                session_process::refuse(&writer, &exit, &why, 1).await;
                return;
            }
            ChannelMsg::Close => {
                credit.close();
                let _ = writer.close().await;
                return;
            }
            msg @ (ChannelMsg::Data { .. } | ChannelMsg::Eof) => {
                if let ChannelMsg::Data { data } = &msg {
                    early_bytes += data.len();
                }
                if early_bytes > MAX_EARLY_INPUT {
                    let why = format!(
                        "more than {MAX_EARLY_INPUT} bytes of input before the session started"
                    );
                    session_process::refuse(&writer, &exit, &why, 255).await;
                    return;
                }
                input.early.push_back(msg);
            }
            _ => {}
        }
    };
    let what = program.describe();
    tracing::info!("{what} on a link session");
    let channel = SessionChannel {
        input,
        writer,
        report: exit,
        credit: Some(credit.clone()),
    };
    if let Err(e) = session_process::run(channel, &settings, program, pty, env).await {
        tracing::info!("{what} ended with error: {e}");
    }
    credit.close();
}
