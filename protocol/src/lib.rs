//! Wire types and conventions shared by the tether agent and relay.
//!
//! Layout:
//! - [`names`]: the reserved SSH user names, subsystem names and channel targets that give the
//!   device link its meaning, and the rules for device names.
//! - [`bundle`]: signed OS update bundles: format, signature verification, streaming image reader.
//! - [`cli_docs`]: shell completions and man pages generated from the clap definitions.
//! - [`clock`]: the wall clock both programs stamp records and files with.
//! - [`config_file`]: YAML configuration files with errors that name file, line and key.
//! - [`enroll`]: the JSON messages of the enrollment exchange.
//! - [`fleet`]: desired and reported state, the control channel, artifact downloads.
//! - [`frame`]: length-prefixed versioned JSON frames (telemetry and control channels).
//! - [`keyfile`]: ed25519 private key files (device key, relay host key).
//! - [`link_session`]: engineers' sessions carried straight on a link channel, and their
//!   control frames.
//! - [`private_fs`]: the private umask and owner-only directories and files for keys and state.
//! - [`report`]: printing an error chain once, and telling a closed stdout from a failure.
//! - [`rotate`]: the JSON messages of device key rotation.
//! - [`recipe`]: application recipes (artifacts, lifecycle steps, placeholders, dependencies).
//! - [`shutdown`]: the stop signals both programs obey.
//! - [`tcp_keepalive`]: the kernel keepalive both ends arm on a link's socket.
//! - [`telemetry`]: telemetry records and the frames of the telemetry channel.
//! - [`ws`]: the SSH byte stream carried in WebSocket binary messages.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod cli_docs;
pub mod clock;
pub mod config_file;
pub mod enroll;
pub mod fleet;
pub mod frame;
pub mod keyfile;
pub mod link_session;
pub mod names;
pub mod private_fs;
pub mod recipe;
pub mod report;
pub mod rotate;
pub mod shutdown;
pub mod tcp_keepalive;
pub mod telemetry;
pub mod ws;

/// Version of the agent/relay wire conventions; bumped on incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
