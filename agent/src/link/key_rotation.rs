//! `agent keys rotate`: replaces the device key without losing the device's place at the
//! relay (see [`tether_protocol::rotate`] for the exchange).
//!
//! The steps are ordered so that stopping after any of them leaves a key the relay accepts on
//! disk: the new key is written beside the old one; the relay learns it and then accepts both;
//! the new key replaces the old file atomically; a login with the new key makes the relay
//! retire the old one (and drop the link still using it, so the running agent reconnects with
//! the new key, which it reloads before every connection attempt).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::PrivateKey;
use serde::Serialize;
use tether_protocol::keyfile;
use tether_protocol::names::{KEYS_SUBSYSTEM, LINK_USER};
use tether_protocol::rotate::{MAX_ROTATE_MESSAGE, RotateRequest, RotateResponse};
use thiserror::Error;

use crate::access::ssh_server::ServerSettings;
use crate::config::AgentConfig;
use crate::identity::device_key::{self, IdentityError};
use crate::identity::enrollment_record::{self, EnrollmentError};
use crate::link::connection::{self, HostKeyCheck, LinkError};
use crate::link::forward::ForwardPolicy;
use crate::link::transport::{RelayUrl, TransportError};

/// Why a rotation failed.
#[derive(Debug, Error)]
pub enum RotateError {
    /// The device is not enrolled.
    #[error(transparent)]
    Record(#[from] EnrollmentError),
    /// A key file could not be read or written.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Bad relay URL or relay unreachable.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The SSH connection failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The relay refused the new key.
    #[error("the relay refused the new key: {0}")]
    Refused(String),
    /// The relay answered something unexpected.
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
}

/// The outcome of a rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    /// Fingerprint of the retired key.
    pub old: String,
    /// Fingerprint of the key now in use.
    pub new: String,
    /// Whether the relay has already switched (false: it switches at the next login, which
    /// the running agent makes by itself).
    pub confirmed: bool,
}

/// Where the next key waits until the relay knows it.
fn next_key_path(state_dir: &Path) -> PathBuf {
    device_key::key_path(state_dir).with_extension("next")
}

/// Logs in to the relay as the device with `key`.
async fn login(
    config: &AgentConfig,
    relay: &RelayUrl,
    pinned: &russh::keys::PublicKey,
    key: PrivateKey,
) -> Result<russh::client::Handle<impl russh::client::Handler<Error = LinkError>>, RotateError> {
    let server = Arc::new(
        ServerSettings::new(config.shell.clone(), key.clone())
            .map_err(|e| RotateError::Protocol(e.to_string()))?,
    );
    let (handle, _) = connection::open(
        relay,
        &config.link,
        Arc::new(key),
        LINK_USER,
        HostKeyCheck {
            pinned: Some(pinned.clone()),
            expected_fingerprint: None,
        },
        server,
        // This connection never announces a link, so the relay opens nothing towards it.
        Arc::new(ForwardPolicy::default()),
    )
    .await?;
    Ok(handle)
}

/// Rotates the device key.
pub async fn rotate(config: &AgentConfig) -> Result<Rotated, RotateError> {
    let state_dir = &config.state_dir;
    let record = enrollment_record::load(state_dir)?;
    let relay = RelayUrl::parse(&record.relay_url)?;
    let pinned = russh::keys::PublicKey::from_openssh(&record.relay_host_key)
        .map_err(|e| LinkError::BadPinnedKey(e.to_string()))?;
    let old = device_key::load(state_dir)?;
    let next_path = next_key_path(state_dir);
    let next = keyfile::generate(&next_path)?;
    let new_fp = device_key::fingerprint(&next);
    let public_key = next
        .public_key()
        .to_openssh()
        .map_err(|e| RotateError::Protocol(e.to_string()))?;

    let handle = login(config, &relay, &pinned, old.clone()).await?;
    let answer = connection::exchange_line(
        &handle,
        KEYS_SUBSYSTEM,
        &RotateRequest {
            protocol: tether_protocol::PROTOCOL_VERSION,
            public_key,
        },
        MAX_ROTATE_MESSAGE,
        config.link.connect_timeout,
    )
    .await?;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "key registered", "en")
        .await;
    let text = String::from_utf8_lossy(&answer);
    match serde_json::from_str::<RotateResponse>(text.trim())
        .map_err(|e| RotateError::Protocol(format!("{e} in {:?}", text.trim())))?
    {
        RotateResponse::Refused { message } => {
            let _ = std::fs::remove_file(&next_path);
            return Err(RotateError::Refused(message));
        }
        RotateResponse::Registered { fingerprint } if fingerprint != new_fp => {
            return Err(RotateError::Protocol(format!(
                "the relay registered {fingerprint}, not {new_fp}"
            )));
        }
        RotateResponse::Registered { .. } => {}
    }
    keyfile::replace(&next_path, &device_key::key_path(state_dir))?;
    tracing::info!("device key {new_fp} in place; the relay accepts it beside the old one");

    let confirmed = match login(config, &relay, &pinned, next).await {
        Ok(handle) => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "key rotated", "en")
                .await;
            true
        }
        Err(e) => {
            tracing::warn!(
                "the new key is in place but the relay could not be told yet ({e}); it switches at the agent's next login"
            );
            false
        }
    };
    Ok(Rotated {
        old: device_key::fingerprint(&old),
        new: new_fp,
        confirmed,
    })
}
