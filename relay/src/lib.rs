//! The tether relay.
//!
//! Layout:
//! - [`config`]: the relay's YAML configuration file.
//! - [`store`]: every durable fact (tenants, tokens, users, devices) in SQLite.
//! - [`hostkey`]: the relay's SSH host key.
//! - [`registry`]: the device links that are up right now on this relay.
//! - [`certauth`]: engineers' OpenSSH user certificates, checked against tenants' trusted CAs.
//! - [`ssh_front`]: the SSH port: device links, enrollment and engineers' sessions.
//! - [`device_requests`]: the enrollment and key rotation subsystems of the SSH port.
//! - [`proxy`]: carrying an engineer's session channel to the device's embedded SSH server.
//! - [`recording`]: recording engineers' sessions (asciicast, exec commands, sftp file operations).
//! - [`http`]: the HTTP port: the WebSocket link, the JSON API and TLS.
//! - [`metrics`]: Prometheus metrics.
//! - [`limits`]: abuse limits (failed logins, handshakes, sessions, channels, idle sessions).
//! - [`api`]: the JSON API routes.
//! - [`sink`]: where telemetry is committed (embedded SQLite by default).
//! - [`telemetry`]: the relay end of a device's telemetry channel.
//! - [`control`]: the relay end of a device's control channel (desired and reported state, downloads).
//! - [`server`]: `relay serve`, which starts all of the above.
//! - [`session_cli`]: `relay session list|show|play`.
//! - [`cli`]: the command line, including the admin commands that work on the store.
//! - [`timestamp`]: RFC 3339 times of query parameters and options, parsed and normalised.

pub mod backup;
pub mod channels;
pub mod cli;
pub mod config;
pub mod hostkey;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod recording;
pub mod registry;
pub mod server;
pub mod sink;
pub mod ssh;
pub mod store;
pub mod timestamp;

/// The relay's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
