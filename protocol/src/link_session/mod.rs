//! Link sessions: an engineer's shell, command or sftp carried straight on one channel of the
//! device link, with no SSH session inside it.
//!
//! The relay opens a `direct-streamlocal@openssh.com` channel to [`LINK_SESSION_PATH`] towards
//! the device (only the relay can: an engineer's forward always becomes `forwarded-tcpip`).
//! Terminal bytes travel as channel data both ways, the process's stderr as extended data of
//! type 1, and EOF and close are the channel's own. What SSH sends as channel requests travels
//! as frames ([`crate::frame`]) in the extended data of type [`CONTROL_EXT`], because the link's
//! client (the agent) cannot receive requests like `pty-req` from its server: relay to device
//! the [`Request`]s (pty, environment, what to run, window changes, signals), device to relay
//! the [`Report`] of how the process ended.
//!
//! SSH's own window does not hold a sender back here: russh grants window as packets arrive,
//! and a channel whose reader is slow (an engineer who does not read, a process that does not
//! read its stdin) would fill its queue and stall the whole link. So each side drains the
//! channel at once and holds what it read, and the other sends only as much as it was credited
//! ([`flow`]): at most [`flow::INITIAL_CREDIT`] unconsumed bytes per direction.
//!
//! Compared with an SSH session inside the channel this saves, per packet and per side, the
//! inner session's framing, parsing and task hand-offs, and per session its key exchange and
//! its memory. Agents say they serve link sessions by announcing
//! [`crate::names::LINK_FORWARD_ADDRESS_SESSIONS`]; others keep the embedded SSH server.

use russh::{ChannelMsg, Sig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::frame::{self, FRAME_VERSION, FrameError};

pub mod flow;

/// The socket path a link session channel names; the agent serves no other.
pub const LINK_SESSION_PATH: &str = "tether-session";

/// What a credited forward's `direct-streamlocal` path starts with: `tether-forward/PORT/HOST`.
/// Such a channel is a port forward to `HOST:PORT` on the device (allowed by its forward
/// policy like any other) whose data flows against credit ([`flow::bridge`]), so that an
/// engineer who stops reading cannot hold up the link.
pub const FORWARD_PATH_PREFIX: &str = "tether-forward/";

/// The path of a credited forward to `host:port`.
pub fn forward_path(host: &str, port: u32) -> String {
    format!("{FORWARD_PATH_PREFIX}{port}/{host}")
}

/// The target of a credited forward's path; `None` if it is not one.
pub fn parse_forward_path(path: &str) -> Option<(&str, u32)> {
    let rest = path.strip_prefix(FORWARD_PATH_PREFIX)?;
    let (port, host) = rest.split_once('/')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// Extended-data type of the control frames (`"teth"`; SSH defines only 1, stderr).
pub const CONTROL_EXT: u32 = 0x7465_7468;

/// Extended-data type of the process's standard error, as in SSH.
pub const STDERR_EXT: u32 = 1;

/// Largest control frame accepted, version byte and body included. A command line or an
/// environment value longer than this is refused by the relay before it is sent.
pub const MAX_CONTROL_FRAME: usize = 256 * 1024;

/// Longest early input (typed before the process starts) the agent holds.
pub const MAX_EARLY_INPUT: usize = 64 * 1024;

/// Relay to device: what the engineer's client asked of its session channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Allocate a terminal of this type and size (before the program starts).
    Pty {
        /// `TERM` of the client.
        term: String,
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
        /// Width in pixels.
        px_width: u32,
        /// Height in pixels.
        px_height: u32,
    },
    /// One environment variable (before the program starts; the agent filters by
    /// `shell.accept_env`).
    Env {
        /// Variable name.
        name: String,
        /// Its value.
        value: String,
    },
    /// Start the login shell.
    Shell,
    /// Start a command with the user's shell.
    Exec {
        /// The command line.
        command: String,
    },
    /// Start a subsystem (only `sftp` is served).
    Subsystem {
        /// Subsystem name.
        name: String,
    },
    /// The terminal was resized.
    WindowChange {
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
        /// Width in pixels.
        px_width: u32,
        /// Height in pixels.
        px_height: u32,
    },
    /// Deliver a signal to the session's processes.
    Signal {
        /// Signal name without `SIG`, as in SSH (`INT`, `TERM`, …).
        name: String,
    },
    /// The relay passed on this many more bytes of output (see [`flow`]).
    Credit {
        /// Bytes of data and stderr.
        bytes: u64,
    },
    /// A request a later relay may send; an agent that does not know it ignores it.
    #[serde(other)]
    Unknown,
}

/// A control frame of either direction, as far as credit goes.
pub trait CreditFrame {
    /// The credit this frame gives, if it is a credit frame.
    fn credit(&self) -> Option<u64>;
}

impl CreditFrame for Request {
    fn credit(&self) -> Option<u64> {
        match self {
            Request::Credit { bytes } => Some(*bytes),
            _ => None,
        }
    }
}

impl CreditFrame for Report {
    fn credit(&self) -> Option<u64> {
        match self {
            Report::Credit { bytes } => Some(*bytes),
            _ => None,
        }
    }
}

impl Request {
    /// The encoded frame that returns `bytes` of credit to the agent.
    pub fn credit_frame(bytes: u64) -> Option<Vec<u8>> {
        encode(&Request::Credit { bytes }).ok()
    }

    /// The channel message an SSH session would have carried for this request; `None` for
    /// what is not one (credit, an unknown request).
    pub fn into_msg(self) -> Option<ChannelMsg> {
        Some(match self {
            Request::Pty {
                term,
                cols,
                rows,
                px_width,
                px_height,
            } => ChannelMsg::RequestPty {
                want_reply: false,
                term,
                col_width: cols,
                row_height: rows,
                pix_width: px_width,
                pix_height: px_height,
                terminal_modes: Vec::new(),
            },
            Request::Env { name, value } => ChannelMsg::SetEnv {
                want_reply: false,
                variable_name: name,
                variable_value: value,
            },
            Request::Shell => ChannelMsg::RequestShell { want_reply: false },
            Request::Exec { command } => ChannelMsg::Exec {
                want_reply: false,
                command: command.into_bytes(),
            },
            Request::Subsystem { name } => ChannelMsg::RequestSubsystem {
                want_reply: false,
                name,
            },
            Request::WindowChange {
                cols,
                rows,
                px_width,
                px_height,
            } => ChannelMsg::WindowChange {
                col_width: cols,
                row_height: rows,
                pix_width: px_width,
                pix_height: px_height,
            },
            Request::Signal { name } => ChannelMsg::Signal {
                signal: signal_from_name(&name),
            },
            Request::Credit { .. } | Request::Unknown => return None,
        })
    }

    /// The request that carries an engineer's channel message to the device; `None` for
    /// messages that are not requests (data and EOF travel as themselves; the rest is not
    /// carried). A command that is not UTF-8 is carried with replacement characters, as the
    /// embedded server runs it.
    pub fn from_msg(msg: ChannelMsg) -> Option<Request> {
        Some(match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                ..
            } => Request::Pty {
                term,
                cols: col_width,
                rows: row_height,
                px_width: pix_width,
                px_height: pix_height,
            },
            ChannelMsg::RequestShell { .. } => Request::Shell,
            ChannelMsg::Exec { command, .. } => Request::Exec {
                command: String::from_utf8_lossy(&command).into_owned(),
            },
            ChannelMsg::RequestSubsystem { name, .. } => Request::Subsystem { name },
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => Request::Env {
                name: variable_name,
                value: variable_value,
            },
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => Request::WindowChange {
                cols: col_width,
                rows: row_height,
                px_width: pix_width,
                px_height: pix_height,
            },
            ChannelMsg::Signal { signal } => Request::Signal {
                name: signal_name(&signal),
            },
            _ => return None,
        })
    }
}

/// Device to relay: how the session's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Report {
    /// It exited with this status.
    ExitStatus {
        /// The exit status.
        status: u32,
    },
    /// It was killed by a signal.
    ExitSignal {
        /// Signal name without `SIG`.
        name: String,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// The agent passed on this many more bytes of input (see [`flow`]).
    Credit {
        /// Bytes of data.
        bytes: u64,
    },
    /// A report a later agent may send; a relay that does not know it ignores it.
    #[serde(other)]
    Unknown,
}

impl Report {
    /// The encoded frame that returns `bytes` of credit to the relay.
    pub fn credit_frame(bytes: u64) -> Option<Vec<u8>> {
        encode(&Report::Credit { bytes }).ok()
    }
}

/// Encodes a control frame (length, version, JSON), refusing one above [`MAX_CONTROL_FRAME`].
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let bytes = frame::encode(message)?;
    if bytes.len() - 4 > MAX_CONTROL_FRAME {
        return Err(FrameError::Length(bytes.len() - 4));
    }
    Ok(bytes)
}

/// Reassembles control frames from extended-data chunks, which SSH may split or join
/// anywhere. It holds at most one frame's bytes ([`MAX_CONTROL_FRAME`] and its length).
#[derive(Debug, Default)]
pub struct ControlReader {
    buf: Vec<u8>,
}

impl ControlReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one chunk and returns every frame it completed, in order. An error (a length out
    /// of range, another version, a body that is not a `T`) means the peer is broken or
    /// hostile: the session should end.
    pub fn push<T: DeserializeOwned>(&mut self, mut chunk: &[u8]) -> Result<Vec<T>, FrameError> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            // Take only what completes the length, then only what completes the frame, so the
            // buffer never holds more than one frame whatever the chunks are.
            let want = match self.frame_len()? {
                None => 4 - self.buf.len(),
                Some(len) => 4 + len - self.buf.len(),
            };
            let take = want.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if let Some(len) = self.frame_len()?
                && self.buf.len() == 4 + len
            {
                let body = &self.buf[4..];
                if body[0] != FRAME_VERSION {
                    return Err(FrameError::Version(body[0]));
                }
                out.push(serde_json::from_slice(&body[1..])?);
                self.buf.clear();
            }
        }
        Ok(out)
    }

    /// The length of the frame being read, once its 4 bytes are in.
    fn frame_len(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_CONTROL_FRAME {
            return Err(FrameError::Length(len));
        }
        Ok(Some(len))
    }
}

/// The SSH name of a signal, without `SIG`.
pub fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name,
    }
    .to_string()
}

/// The signal an SSH name stands for; unknown names stay [`Sig::Custom`].
pub fn signal_from_name(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(messages: &[Request]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|m| encode(m).unwrap_or_default())
            .collect()
    }

    #[test]
    fn frames_come_back_whatever_the_chunks() {
        let sent = vec![
            Request::Pty {
                term: "xterm".into(),
                cols: 80,
                rows: 24,
                px_width: 0,
                px_height: 0,
            },
            Request::Env {
                name: "LANG".into(),
                value: "C.UTF-8".into(),
            },
            Request::Exec {
                command: "echo \u{e9}; exit 3".into(),
            },
        ];
        let bytes = frames(&sent);
        for size in [1, 2, 3, 5, 7, 64, bytes.len()] {
            let mut reader = ControlReader::new();
            let mut got = Vec::new();
            for chunk in bytes.chunks(size) {
                got.extend(reader.push::<Request>(chunk).unwrap_or_default());
            }
            assert_eq!(got, sent, "chunks of {size}");
        }
    }

    #[test]
    fn a_hostile_length_is_refused_before_anything_is_held() {
        let mut reader = ControlReader::new();
        let len = (MAX_CONTROL_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            reader.push::<Request>(&len),
            Err(FrameError::Length(_))
        ));
        let mut reader = ControlReader::new();
        assert!(matches!(
            reader.push::<Request>(&[0, 0, 0, 0]),
            Err(FrameError::Length(0))
        ));
        // A frame of the largest size is held until complete and never more than that.
        let mut reader = ControlReader::new();
        let mut big = (MAX_CONTROL_FRAME as u32).to_be_bytes().to_vec();
        big.extend(std::iter::repeat_n(b'x', 1024 * 1024));
        assert!(reader.push::<Request>(&big).is_err());
        assert!(reader.buf.len() <= 4 + MAX_CONTROL_FRAME);
    }

    #[test]
    fn garbage_and_other_versions_are_errors_not_panics() {
        let mut reader = ControlReader::new();
        assert!(matches!(
            reader.push::<Request>(&[0, 0, 0, 3, 1, b'{', b'}']),
            Err(FrameError::Body(_))
        ));
        let mut reader = ControlReader::new();
        assert!(matches!(
            reader.push::<Request>(&[0, 0, 0, 3, 9, b'{', b'}']),
            Err(FrameError::Version(9))
        ));
    }

    #[test]
    fn an_unknown_request_is_not_an_error() {
        let bytes =
            frame::encode(&serde_json::json!({ "op": "x11-req", "screen": 0 })).unwrap_or_default();
        let mut reader = ControlReader::new();
        assert_eq!(
            reader.push::<Request>(&bytes).unwrap_or_default(),
            vec![Request::Unknown]
        );
    }

    #[test]
    fn an_oversized_command_is_refused_when_encoded() {
        let long = Request::Exec {
            command: "x".repeat(MAX_CONTROL_FRAME),
        };
        assert!(matches!(encode(&long), Err(FrameError::Length(_))));
    }

    #[test]
    fn forward_paths_round_trip_and_nothing_else_parses() {
        for (host, port) in [("127.0.0.1", 22), ("::1", 8080), ("db.local", 5432)] {
            assert_eq!(
                parse_forward_path(&forward_path(host, port)),
                Some((host, port))
            );
        }
        for path in [
            "tether-session",
            "tether-forward/",
            "tether-forward/22",
            "tether-forward/22/",
            "tether-forward/x/host",
            "tether-forward/99999999999/host",
            "/tether-forward/22/host",
        ] {
            assert_eq!(parse_forward_path(path), None, "{path}");
        }
    }

    #[test]
    fn requests_and_channel_messages_translate_both_ways() {
        let requests = vec![
            Request::Pty {
                term: "xterm".into(),
                cols: 80,
                rows: 24,
                px_width: 1,
                px_height: 2,
            },
            Request::Env {
                name: "LANG".into(),
                value: "C".into(),
            },
            Request::Shell,
            Request::Exec {
                command: "id".into(),
            },
            Request::Subsystem {
                name: "sftp".into(),
            },
            Request::WindowChange {
                cols: 120,
                rows: 40,
                px_width: 0,
                px_height: 0,
            },
            Request::Signal { name: "INT".into() },
        ];
        for request in requests {
            let msg = request.clone().into_msg();
            assert_eq!(msg.and_then(Request::from_msg), Some(request));
        }
        assert!(Request::Credit { bytes: 1 }.into_msg().is_none());
        assert!(Request::from_msg(ChannelMsg::Eof).is_none());
    }

    #[test]
    fn signal_names_round_trip() {
        for name in ["INT", "TERM", "KILL", "WINCH"] {
            assert_eq!(signal_name(&signal_from_name(name)), name);
        }
        assert!(matches!(signal_from_name("INT"), Sig::INT));
    }
}
