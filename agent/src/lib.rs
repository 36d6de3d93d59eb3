//! The tether device agent.
//!
//! Layout:
//! - [`config`]: the agent's YAML configuration file.
//! - [`account`]: the unix account child processes run as, and starting them in their own session.
//! - [`identity`]: the device's ed25519 key pair.
//! - [`rotate`]: `agent keys rotate`: replacing the device key without losing the device.
//! - [`enrollment`]: what enrollment recorded (relay URL, device id, pinned relay host key).
//! - [`enroll`]: the enrollment exchange with the relay.
//! - [`transport`]: the byte stream under the link (TCP, WebSocket, HTTP CONNECT proxy).
//! - [`link`]: the long-lived SSH connection to the relay and the channels it brings in.
//! - [`outbox`]: telemetry, logs and events waiting in SQLite for the relay.
//! - [`producer`]: the record line format and the in-process handle that queues records.
//! - [`journal`]: the systemd journal of configured units, followed into the outbox.
//! - [`forward`]: device-local TCP targets that the relay may reach, and the policy that allows them.
//! - [`server`]: the embedded SSH server that serves shells, exec and sftp on link channels.
//! - [`pty`]: pseudo-terminals for interactive shells.
//! - [`sftp`]: the sftp subsystem.
//! - [`socket`]: the local producer socket (newline-delimited JSON).
//! - [`status`]: the link state file that `agent status` reads.
//! - [`sysmetrics`]: the built-in system metrics collector (CPU, memory, disks, network, load, uptime, temperature).
//! - [`telemetry_cli`]: `agent telemetry send|status` and `agent notify`, on the outbox file.
//! - [`upload`]: the outbox sent over the link and acknowledged by the relay.
//! - [`supervisor`]: applications from recipes: install, start, supervise, stop, roll back.
//! - [`component`]: a deployed component on disk: its files and its durable record.
//! - [`artifacts`]: fetching, checking (sha256) and unpacking a component's artifacts.
//! - [`reconcile`]: the relay's desired state applied on the device (control channel).
//! - [`actions`]: remote actions from the relay (run a command, restart a component, reboot).
//! - [`bootenv`]: the bootloader environment (U-Boot, GRUB, file) that selects the boot slot.
//! - [`inventory`]: what this device is (host, kernel, OS, memory, disks, interfaces).
//! - [`control`]: the local socket through which `agent app` reaches the supervisor.
//! - [`app_cli`]: `agent app …`.
//! - [`bundle_tool`]: `agent bundle keygen|create|verify|inspect`: signing keys, building and
//!   checking signed OS update bundles.
//! - [`download`]: resumable HTTP(S) downloads of update bundles.
//! - [`ota`]: A/B OS updates: install into the other slot, trial boot, commit or roll back.
//! - [`ota_cli`]: `agent keygen`, `agent bundle …`, `agent ota …`.
//! - [`cli`]: the command line.

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
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod identity;
pub mod link;
pub mod ota;
pub mod telemetry;

/// The agent's version, reported to the relay.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
