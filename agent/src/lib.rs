//! The tether device agent: the `agent` binary's library.
//!
//! Layout, one folder per subsystem (each `mod.rs` says what it owns and where to start):
//! - [`identity`]: who this device is: its key pair and the record enrollment left.
//! - [`link`]: the SSH connection to the relay over its transports, the link loop of
//!   `agent run`, the link status, device-local forwards, and the enrollment and key rotation
//!   exchanges.
//! - [`access`]: the embedded SSH server that serves shells, exec and sftp on link channels.
//! - [`telemetry`]: the outbox and everything that fills it (producer socket, journal, system
//!   metrics, application output) or empties it (upload to the relay).
//! - [`apps`]: applications from recipes: the supervisor, component records, artifacts, and the
//!   local control socket of `agent app`.
//! - [`fleet`]: the relay's desired state applied on the device, remote actions, inventory.
//! - [`ota`]: A/B OS updates: install, trial boot, commit, rollback; bundle downloads and
//!   tooling; the bootloader environment.
//! - [`cli`]: the command line, one module per command group.
//! - [`daemon`]: the process wiring of `agent run`.
//!
//! [`code_pages`] gives back, once `agent run` has started, the code pages only start-up ran.
//!
//! Shared by several subsystems, below all of them: [`config`] (the configuration file),
//! [`account`] (the unix account child processes run as), [`backoff`] (retry pacing) and
//! [`atomic_file`] (state files replaced atomically). Wall-clock time comes from
//! `tether_protocol::clock`.

// `unsafe` is confined to the modules that call libc for what nix does not wrap safely (the
// pty's controlling terminal, switching accounts in a forked child, `madvise` on the agent's
// own code in `code_pages`); each block there says why it is sound.
#![deny(unsafe_code)]

/// `println!` that returns the write's error instead of panicking: a command whose reader left
/// (`agent app list | head -1`) then ends quietly with 0 (see `cli::main`) rather than with a
/// panic on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub mod access;
pub mod account;
pub mod apps;
pub mod atomic_file;
pub mod backoff;
pub mod cli;
pub mod code_pages;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod identity;
pub mod link;
pub mod ota;
pub mod telemetry;

/// The agent's version, reported to the relay.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
