//! What an engineer asks of a session before its program starts: a terminal, environment
//! variables, what to run, and (on a link session) input typed before the start. All of it
//! comes from the network, so each part is held within a bound; what passes a bound is
//! dropped or ends the session, never held.

use std::collections::VecDeque;

use russh::ChannelMsg;
use tether_protocol::link_session::MAX_EARLY_INPUT;

use crate::access::pty::Size;
use crate::access::session_process::{Input, Program};

/// Most environment bytes (names and values) a session's program is given.
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Most environment variables a session's program is given.
pub const MAX_ENV_VARS: usize = 256;
/// Most pieces of input held before a session's program starts, whatever their size: a peer
/// sending a byte at a time holds this many small messages, not 64 Ki of them.
pub const MAX_EARLY_PIECES: usize = 1024;

/// The environment variables asked for and allowed, within [`MAX_ENV_BYTES`] and
/// [`MAX_ENV_VARS`]. A variable past either bound is dropped (and logged), as one that
/// `shell.accept_env` does not allow is: the session still runs, as OpenSSH's does.
#[derive(Debug, Default)]
pub struct RequestedEnv {
    vars: Vec<(String, String)>,
    bytes: usize,
}

impl RequestedEnv {
    /// Takes `name=value` if `allowed` says the name may be passed and the bounds leave room;
    /// tells whether it was taken.
    pub fn offer(&mut self, name: &str, value: &str, allowed: impl Fn(&str) -> bool) -> bool {
        if !allowed(name) {
            return false;
        }
        let bytes = self.bytes + name.len() + value.len();
        if bytes > MAX_ENV_BYTES || self.vars.len() >= MAX_ENV_VARS {
            let shown: String = name.chars().take(64).collect();
            tracing::info!(
                "session: environment over {MAX_ENV_VARS} variables or {MAX_ENV_BYTES} bytes, \
                 {shown} not passed"
            );
            return false;
        }
        self.bytes = bytes;
        self.vars.push((name.to_string(), value.to_string()));
        true
    }

    /// The variables taken, in the order they came.
    pub fn into_vars(self) -> Vec<(String, String)> {
        self.vars
    }
}

/// What one message before the start means for a link session.
#[derive(Debug)]
pub enum Step {
    /// Nothing to do yet: wait for the next message.
    More,
    /// Run this program now.
    Start(Program),
    /// Refuse the session with this reason and exit status.
    Refuse {
        /// Why, as the engineer reads it.
        why: String,
        /// The exit status reported.
        status: u32,
    },
    /// The relay closed the channel before anything ran.
    Closed,
}

/// A link session's requests gathered message by message until its program starts.
#[derive(Debug, Default)]
pub struct PreStart {
    /// The terminal asked for, with its latest size.
    pub pty: Option<(String, Size)>,
    /// The environment asked for and allowed.
    pub env: RequestedEnv,
    /// Input (data and EOF) that came before the start, given to the program first.
    pub early: VecDeque<ChannelMsg>,
    early_bytes: usize,
}

impl PreStart {
    /// Takes one message from the relay; `env_allowed` is `shell.accept_env`.
    pub fn take(&mut self, msg: ChannelMsg, env_allowed: impl Fn(&str) -> bool) -> Step {
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                ..
            } => {
                let size = Size::new(col_width, row_height, pix_width, pix_height);
                self.pty = Some((term, size));
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Some((_, size)) = self.pty.as_mut() {
                    *size = Size::new(col_width, row_height, pix_width, pix_height);
                }
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                self.env.offer(&variable_name, &variable_value, env_allowed);
            }
            ChannelMsg::RequestShell { .. } => return Step::Start(Program::Shell),
            ChannelMsg::Exec { command, .. } => {
                let command = String::from_utf8_lossy(&command).into_owned();
                return Step::Start(Program::Exec(command));
            }
            ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => {
                return Step::Start(Program::Sftp);
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                let shown: String = name.chars().take(64).collect();
                return Step::Refuse {
                    why: format!("subsystem {shown:?} is not served"),
                    status: 1,
                };
            }
            ChannelMsg::Close => return Step::Closed,
            msg @ (ChannelMsg::Data { .. } | ChannelMsg::Eof) => {
                if let ChannelMsg::Data { data } = &msg {
                    self.early_bytes += data.len();
                }
                if self.early_bytes > MAX_EARLY_INPUT || self.early.len() >= MAX_EARLY_PIECES {
                    return Step::Refuse {
                        why: format!(
                            "more than {MAX_EARLY_INPUT} bytes or {MAX_EARLY_PIECES} pieces of \
                             input before the session started"
                        ),
                        status: 255,
                    };
                }
                self.early.push_back(msg);
            }
            _ => {}
        }
        Step::More
    }
}

/// Reads `input` until the session's program is known (or it is refused, or the channel is
/// gone), so that requests never pile up unread in the channel's queue: the requests
/// gathered, and the step that ended the reading ([`Step::Start`], [`Step::Refuse`] or
/// [`Step::Closed`]).
pub async fn read_requests<I: Input>(
    input: &mut I,
    env_allowed: impl Fn(&str) -> bool,
) -> (PreStart, Step) {
    let mut asked = PreStart::default();
    loop {
        let Some(msg) = input.next().await else {
            return (asked, Step::Closed);
        };
        match asked.take(msg, &env_allowed) {
            Step::More => {}
            step => return (asked, step),
        }
    }
}

/// A session's input once its program started: what came before the start, then the rest of
/// the channel.
pub struct EarlyThen<I> {
    /// Input that came before the start, in order.
    pub early: VecDeque<ChannelMsg>,
    /// The channel, read once `early` is empty.
    pub rest: I,
}

impl<I: Input> Input for EarlyThen<I> {
    async fn next(&mut self) -> Option<ChannelMsg> {
        match self.early.pop_front() {
            Some(msg) => Some(msg),
            None => self.rest.next().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> ChannelMsg {
        ChannelMsg::Data {
            data: vec![b'x'; n].into(),
        }
    }

    fn set_env(name: &str, value: &str) -> ChannelMsg {
        ChannelMsg::SetEnv {
            want_reply: false,
            variable_name: name.to_string(),
            variable_value: value.to_string(),
        }
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn input_before_the_start_is_held_up_to_the_bound_and_refused_past_it() {
        let mut p = PreStart::default();
        for _ in 0..MAX_EARLY_INPUT / 1024 {
            assert!(matches!(p.take(data(1024), all), Step::More));
        }
        assert!(matches!(p.take(ChannelMsg::Eof, all), Step::More));
        assert_eq!(p.early.len(), MAX_EARLY_INPUT / 1024 + 1);
        match p.take(data(1), all) {
            Step::Refuse { why, status } => {
                assert_eq!(status, 255);
                assert!(why.contains("65536 bytes or 1024 pieces"), "{why}");
            }
            other => panic!("one byte past the bound: {other:?}"),
        }
        // Nothing past the bound was held.
        assert_eq!(p.early.len(), MAX_EARLY_INPUT / 1024 + 1);
    }

    #[test]
    fn input_one_byte_at_a_time_holds_a_bounded_number_of_pieces() {
        let mut p = PreStart::default();
        let held = (0..100_000)
            .take_while(|_| matches!(p.take(data(1), all), Step::More))
            .count();
        assert_eq!(held, MAX_EARLY_PIECES);
        assert_eq!(p.early.len(), MAX_EARLY_PIECES);
    }

    #[test]
    fn one_oversized_piece_is_refused_without_being_held() {
        let mut p = PreStart::default();
        assert!(matches!(
            p.take(data(MAX_EARLY_INPUT + 1), all),
            Step::Refuse { status: 255, .. }
        ));
        assert!(p.early.is_empty());
    }

    #[test]
    fn environment_stops_at_its_byte_bound() {
        let mut p = PreStart::default();
        let value = "v".repeat(1000);
        for i in 0..200 {
            p.take(set_env(&format!("LC_{i}"), &value), all);
        }
        let vars = p.env.into_vars();
        let bytes: usize = vars.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(bytes <= MAX_ENV_BYTES, "{bytes}");
        // Every variable that fits was taken, in order.
        assert_eq!(vars.len(), MAX_ENV_BYTES / 1005);
        assert_eq!(vars[0].0, "LC_0");
    }

    #[test]
    fn environment_stops_at_its_count_bound_even_for_empty_variables() {
        let mut env = RequestedEnv::default();
        let taken = (0..100_000).filter(|_| env.offer("", "", all)).count();
        assert_eq!(taken, MAX_ENV_VARS);
        assert_eq!(env.into_vars().len(), MAX_ENV_VARS);
    }

    #[test]
    fn a_variable_not_allowed_is_never_taken() {
        let mut p = PreStart::default();
        p.take(set_env("LD_PRELOAD", "/tmp/x.so"), |n| n.starts_with("LC_"));
        p.take(set_env("LC_ALL", "C"), |n| n.starts_with("LC_"));
        assert_eq!(
            p.env.into_vars(),
            vec![("LC_ALL".to_string(), "C".to_string())]
        );
    }

    #[test]
    fn a_window_change_resizes_only_a_terminal_asked_for() {
        let mut p = PreStart::default();
        let resize = |c| ChannelMsg::WindowChange {
            col_width: c,
            row_height: 24,
            pix_width: 0,
            pix_height: 0,
        };
        p.take(resize(100), all);
        assert!(p.pty.is_none());
        p.take(
            ChannelMsg::RequestPty {
                want_reply: false,
                term: "xterm".into(),
                col_width: 80,
                row_height: 24,
                pix_width: 0,
                pix_height: 0,
                terminal_modes: vec![],
            },
            all,
        );
        p.take(resize(132), all);
        assert_eq!(
            p.pty.map(|(t, s)| (t, s.cols)),
            Some(("xterm".to_string(), 132))
        );
    }

    #[test]
    fn what_to_run_and_what_is_refused() {
        let mut p = PreStart::default();
        let exec = ChannelMsg::Exec {
            want_reply: false,
            command: b"echo \xff".to_vec(),
        };
        assert!(matches!(p.take(exec, all), Step::Start(Program::Exec(c)) if c == "echo \u{fffd}"));
        let sub = |name: &str| ChannelMsg::RequestSubsystem {
            want_reply: false,
            name: name.to_string(),
        };
        assert!(matches!(
            p.take(sub("sftp"), all),
            Step::Start(Program::Sftp)
        ));
        let long = "s".repeat(1_000_000);
        match p.take(sub(&long), all) {
            Step::Refuse { why, status: 1 } => assert!(why.len() < 100, "{}", why.len()),
            other => panic!("unknown subsystem: {other:?}"),
        }
        assert!(matches!(p.take(ChannelMsg::Close, all), Step::Closed));
    }
}
