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

use std::sync::Arc;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Sig};
use tether_protocol::link_session::flow::{ControlTx, Credit, Inbox, SessionEnds};
use tether_protocol::link_session::{Report, Request, encode, signal_name};

use crate::access::session_process::{self, ExitReport, Input, SessionChannel, SessionSettings};
use crate::access::session_request::{EarlyThen, PreStart, Step, read_requests};

impl Input for Inbox<Msg> {
    async fn next(&mut self) -> Option<ChannelMsg> {
        Inbox::next(self).await
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
        mut inbox,
    } = SessionEnds::open(channel, request_to_msg, Report::credit_frame);
    let exit = LinkExit { control };
    let (asked, step) = read_requests(&mut inbox, |name| settings.env_allowed(name)).await;
    let program = match step {
        Step::Start(program) => program,
        Step::Refuse { why, status } => {
            session_process::refuse(&writer, &exit, &why, status).await;
            return;
        }
        Step::Closed | Step::More => {
            credit.close();
            let _ = writer.close().await;
            return;
        }
    };
    let PreStart {
        pty, env, early, ..
    } = asked;
    let input = EarlyThen { early, rest: inbox };
    let what = program.describe();
    tracing::info!("{what} on a link session");
    let channel = SessionChannel {
        input,
        writer,
        report: exit,
        credit: Some(credit.clone()),
    };
    if let Err(e) = session_process::run(channel, &settings, program, pty, env.into_vars()).await {
        tracing::info!("{what} ended with error: {e}");
    }
    credit.close();
}
