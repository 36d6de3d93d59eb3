//! Remote access: engineers' shells, exec with exit status, signals, environment and the sftp
//! subsystem ([`sftp`]) on channels the relay opens over the link. A session arrives either
//! straight on a link channel ([`link_session`]) or through the embedded SSH server
//! ([`ssh_server`], for relays that reach the device through another relay of a cluster, and
//! for relays from before link sessions); either way its process is
//! [`session_process`]'s, on a pseudo-terminal from [`pty`] or on pipes. The unix account
//! sessions run as is [`crate::account`].

pub mod link_session;
pub mod pty;
pub mod session_process;
pub mod session_request;
pub mod sftp;
pub mod ssh_server;
