//! The tether relay: it authenticates devices and engineers, carries engineers' sessions and
//! forwards to devices over the links the devices opened, keeps desired and reported state per
//! device, and commits telemetry to its sink. Every durable fact lives in the store.
//!
//! Layout, one folder per subsystem:
//! - [`ssh`]: the SSH port: device links, enrollment and key rotation, engineers' sessions and
//!   forwards, authentication (keys and certificates) and the proxy to a device's embedded SSH
//!   server. Start at [`ssh::Front`].
//! - [`channels`]: the channels a device opens over its link: telemetry and control.
//! - [`http`]: the HTTP port: the WebSocket link, the JSON API (one module per resource),
//!   `/metrics`, TLS.
//! - [`store`]: every durable fact (tenants, tokens, engineers, devices, telemetry, sessions,
//!   audit trail) behind one backend-neutral interface ([`store::Backend`]), SQLite first;
//!   [`store::notify`] tells control channels of changes; [`store::blocking`] runs store calls
//!   from async code.
//! - [`recording`]: recording engineers' sessions (asciicast, exec commands, sftp file
//!   operations).
//! - [`cli`]: the command line, one module per command group; `main.rs` only calls
//!   [`cli::main`].
//!
//! And the modules they share:
//! - [`server`]: `relay serve`, which starts the ports and the housekeeping between them.
//! - [`policy`]: what each role may do.
//! - [`config`]: the relay's YAML configuration file and the paths of its data directory.
//! - [`registry`]: the device links that are up right now on this relay.
//! - [`link_forward`]: the device end of a forward on a link, credited where the agent can.
//! - [`sink`]: where telemetry is committed (embedded SQLite by default).
//! - [`limits`]: abuse limits (failed logins, handshakes, sessions, channels, idle sessions).
//! - [`metrics`]: Prometheus metrics.
//! - [`cluster`]: presence of device links across a cluster of relays, on NATS.
//! - [`hostkey`]: the relay's SSH host key.
//! - [`backup`]: a consistent copy of the data directory.
//! - [`timestamp`]: RFC 3339 times of query parameters and options, parsed and normalised.

#![forbid(unsafe_code)]

pub mod backup;
pub mod channels;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod hostkey;
pub mod http;
pub mod limits;
pub mod link_forward;
pub mod metrics;
pub mod open_files;
pub mod policy;
pub mod publickey_only;
pub mod recording;
pub mod registry;
pub mod server;
pub mod sink;
pub mod ssh;
pub mod store;
pub mod timestamp;

/// The relay's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
