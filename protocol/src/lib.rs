//! Wire types and conventions shared by the tether agent and relay.
//!
//! Layout:
//! - [`names`]: the reserved SSH user names, subsystem names and channel targets that give the
//!   device link its meaning, and the rules for device names.
//! - [`enroll`]: the JSON messages of the enrollment exchange.
//! - [`keyfile`]: ed25519 private key files (device key, relay host key).
//! - [`ws`]: the SSH byte stream carried in WebSocket binary messages.

pub mod enroll;
pub mod keyfile;
pub mod names;
pub mod ws;

/// Version of the agent/relay wire conventions; bumped on incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
