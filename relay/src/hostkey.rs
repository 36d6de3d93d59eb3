//! The relay's SSH host key, generated into the data directory on first start.
//!
//! Devices pin this key at enrollment, so it must survive restarts and must never be
//! silently replaced.

use std::path::{Path, PathBuf};

use russh::keys::PrivateKey;
pub use tether_protocol::keyfile::{KeyFileError, fingerprint};

/// File name of the host key in the data directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Path of the host key in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(HOST_KEY_FILE)
}

/// Loads the host key, generating it on first start.
pub fn load_or_create(data_dir: &Path) -> Result<PrivateKey, KeyFileError> {
    let (key, created) = tether_protocol::keyfile::load_or_create(&path(data_dir))?;
    if created {
        tracing::info!("generated relay host key {}", fingerprint(&key));
    }
    Ok(key)
}
