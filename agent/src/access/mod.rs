//! Remote access: the embedded SSH server ([`ssh_server`]) that serves engineers' shells, exec
//! with exit status, signals, environment and the sftp subsystem ([`sftp`]) on session
//! channels the relay opens over the link, with pseudo-terminals from [`pty`]. The link hands
//! each channel to [`ssh_server::serve`]; the unix account sessions run as is
//! [`crate::account`].

pub mod pty;
pub mod sftp;
pub mod ssh_server;
