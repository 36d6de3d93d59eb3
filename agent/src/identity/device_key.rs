//! The device's identity: an ed25519 key pair generated on the device that never leaves it.
//!
//! The same key authenticates the device's link to the relay and serves as the host key of the
//! embedded SSH server.

use std::path::{Path, PathBuf};

use russh::keys::PrivateKey;
pub use tether_protocol::keyfile::{KeyFileError as IdentityError, fingerprint};

/// File name of the device key inside the state directory.
pub const KEY_FILE: &str = "device_ed25519";

/// Path of the device key in `state_dir`.
pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_FILE)
}

/// Loads the device key, refusing a file that group or others can read.
pub fn load(state_dir: &Path) -> Result<PrivateKey, IdentityError> {
    tether_protocol::keyfile::load(&key_path(state_dir))
}

/// Loads the device key, generating it (mode 0600) first if there is none.
pub fn load_or_create(state_dir: &Path) -> Result<(PrivateKey, bool), IdentityError> {
    tether_protocol::keyfile::load_or_create(&key_path(state_dir))
}
