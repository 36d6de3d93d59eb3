//! The relay's SSH host key, generated into the data directory on first start.
//!
//! Devices pin this key at enrollment, so it must survive restarts and must never be
//! silently replaced.
//!
//! Relays of a cluster share one store and present one host key, kept in the store
//! ([`crate::store::Backend::cluster_host_key`]): a board pinned the key of whichever relay
//! enrolled it and must accept every other relay it fails over to. One shared key rather than
//! a cluster CA the agents would pin: every board enrolled before the cluster existed keeps
//! working unchanged, and adding a relay needs no change on any board. The first relay on a
//! new store stores its own key (`relay store copy` stores the copied relay's), and every
//! later relay presents that one; its own file stays untouched.

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

/// The key this relay presents: the cluster's when the store keeps one, else `own` (the file
/// in the data directory).
pub fn cluster_or_own(
    store: &crate::store::Store,
    own: PrivateKey,
) -> Result<PrivateKey, ClusterKeyError> {
    let text = own
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| ClusterKeyError::Key(e.to_string()))?;
    let Some(stored) = store.cluster_host_key(&text)? else {
        return Ok(own);
    };
    let key = PrivateKey::from_openssh(&stored)
        .map_err(|e| ClusterKeyError::Key(format!("the cluster's host key in the store: {e}")))?;
    if key.public_key() != own.public_key() {
        tracing::info!(
            "presenting the cluster's host key {} (this relay's own {} stays unused)",
            fingerprint(&key),
            fingerprint(&own)
        );
    }
    Ok(key)
}

/// Why the cluster's host key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClusterKeyError {
    /// The store could not be read or written.
    #[error("the cluster host key: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A key could not be encoded or decoded.
    #[error("{0}")]
    Key(String),
}
