//! The device key rotation exchange.
//!
//! The agent logs in as [`crate::names::LINK_USER`] with its current key, opens a session
//! channel, requests the [`crate::names::KEYS_SUBSYSTEM`] subsystem, writes one
//! [`RotateRequest`] JSON line with its new public key and reads one [`RotateResponse`] line.
//! The relay then accepts both keys. The first login with the new key proves the device holds
//! it: the relay makes it the device's key and retires the old one. A rotation cut short at any
//! step therefore leaves the device with a key the relay accepts.

use serde::{Deserialize, Serialize};

/// Longest rotation message either side accepts, in bytes.
pub const MAX_ROTATE_MESSAGE: usize = 16 * 1024;

/// What the agent sends to register its next key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Wire convention version, [`crate::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The new public key, OpenSSH format.
    pub public_key: String,
}

/// The relay's answer to a [`RotateRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RotateResponse {
    /// The relay accepts the new key beside the old one until the device logs in with it.
    Registered {
        /// The new key's fingerprint as the relay computed it.
        fingerprint: String,
    },
    /// Refused; `message` says why.
    Refused {
        /// Human-readable reason.
        message: String,
    },
}
