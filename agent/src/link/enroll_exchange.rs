//! Enrollment: registering this device's key with a relay under an operator's token.
//!
//! See [`tether_protocol::enroll`] for the exchange. The relay's host key is pinned from this
//! first contact (trust on first use, like OpenSSH's known_hosts) unless the operator passes
//! the fingerprint to expect, in which case the token is never sent to any other relay.

use std::path::Path;
use std::sync::Arc;

use russh::keys::HashAlg;
use tether_protocol::enroll::{EnrollRequest, EnrollResponse, MAX_ENROLL_MESSAGE};
use tether_protocol::names::{
    ENROLL_SUBSYSTEM, ENROLL_USER, sanitize_device_name, validate_device_name,
};
use thiserror::Error;

use crate::access::ssh_server::ServerSettings;
use crate::config::AgentConfig;
use crate::identity::device_key::{self, IdentityError};
use crate::identity::enrollment_record::{self, Enrollment, EnrollmentError};
use crate::link::connection::{self, HostKeyCheck, LinkError};
use crate::link::forward::ForwardPolicy;
use crate::link::transport::{RelayUrl, TransportError};

/// What `agent enroll` was asked to do.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Relay URL.
    pub url: String,
    /// Enrollment token.
    pub token: String,
    /// Device name; defaults to the host name.
    pub name: Option<String>,
    /// Re-enroll even though this device is enrolled already.
    pub force: bool,
    /// Fingerprint the relay's host key must have.
    pub fingerprint: Option<String>,
}

/// Why enrollment failed.
#[derive(Debug, Error)]
pub enum EnrollError {
    /// The device is enrolled already.
    #[error(
        "this device is already enrolled as {name:?} ({device_id}) with {relay}; use --force to enroll again"
    )]
    AlreadyEnrolled {
        /// Current name.
        name: String,
        /// Current id.
        device_id: String,
        /// Current relay URL.
        relay: String,
    },
    /// Bad URL or unreachable relay.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Device key problem.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Enrollment record problem.
    #[error(transparent)]
    Record(#[from] EnrollmentError),
    /// The SSH connection failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The requested name is not a valid device name.
    #[error("--name: {0}")]
    Name(#[from] tether_protocol::names::NameError),
    /// The relay refused the enrollment.
    #[error("the relay refused enrollment: {0}")]
    Refused(String),
    /// The relay answered something unexpected.
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
}

/// The device name to ask for: `--name`, else the sanitized host name.
fn device_name(requested: Option<&str>) -> Result<String, EnrollError> {
    match requested {
        Some(name) => {
            validate_device_name(name)?;
            Ok(name.to_string())
        }
        None => {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "device".to_string());
            Ok(sanitize_device_name(&host))
        }
    }
}

/// Enrolls this device and records the result in the state directory.
///
/// Returns the record and the device status the relay reported (`accepted` or `pending`).
pub async fn enroll(
    config: &AgentConfig,
    opts: &EnrollOptions,
) -> Result<(Enrollment, String), EnrollError> {
    let state_dir: &Path = &config.state_dir;
    if !opts.force
        && let Ok(existing) = enrollment_record::load(state_dir)
    {
        return Err(EnrollError::AlreadyEnrolled {
            name: existing.name,
            device_id: existing.device_id,
            relay: existing.relay_url,
        });
    }
    let relay = RelayUrl::parse(&opts.url)?;
    let name = device_name(opts.name.as_deref())?;
    let (key, created) = device_key::load_or_create(state_dir)?;
    if created {
        tracing::info!("generated device key {}", device_key::fingerprint(&key));
    }
    let key = Arc::new(key);
    // Enrollment never serves sessions, but the handler type is shared with the link.
    let server = Arc::new(
        ServerSettings::new(config.shell.clone(), (*key).clone())
            .map_err(|e| EnrollError::Protocol(e.to_string()))?,
    );
    let check = HostKeyCheck {
        pinned: None,
        expected_fingerprint: opts.fingerprint.clone(),
    };
    let (handle, seen) = connection::open(
        &relay,
        &config.link,
        key,
        ENROLL_USER,
        check,
        server,
        Arc::new(ForwardPolicy::default()),
    )
    .await?;
    let host_key = seen.ok_or_else(|| EnrollError::Protocol("no host key seen".into()))?;

    let request = EnrollRequest {
        protocol: tether_protocol::PROTOCOL_VERSION,
        token: opts.token.clone(),
        name,
        agent_version: crate::VERSION.to_string(),
        force: opts.force,
    };
    let answer = connection::exchange_line(
        &handle,
        ENROLL_SUBSYSTEM,
        &request,
        MAX_ENROLL_MESSAGE,
        config.link.connect_timeout,
    )
    .await?;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "enrolled", "en")
        .await;

    let text = String::from_utf8_lossy(&answer);
    let response: EnrollResponse = serde_json::from_str(text.trim())
        .map_err(|e| EnrollError::Protocol(format!("{e} in {:?}", text.trim())))?;
    match response {
        EnrollResponse::Refused { message } => Err(EnrollError::Refused(message)),
        EnrollResponse::Enrolled {
            device_id,
            name,
            tenant,
            status,
        } => {
            let record = Enrollment {
                relay_url: opts.url.clone(),
                device_id,
                name,
                tenant,
                relay_host_key: host_key
                    .to_openssh()
                    .map_err(|e| EnrollError::Protocol(e.to_string()))?,
                relay_fingerprint: host_key.fingerprint(HashAlg::Sha256).to_string(),
                enrolled_at: tether_protocol::clock::now_rfc3339(),
            };
            enrollment_record::store(state_dir, &record)?;
            Ok((record, status))
        }
    }
}
