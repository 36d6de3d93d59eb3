//! Remote access.
pub mod pty;
pub mod sftp;
pub mod ssh_server;
