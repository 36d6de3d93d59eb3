//! Why an OTA operation failed.

use tether_protocol::bundle::BundleError;
use thiserror::Error;

use crate::ota::bootenv::BootEnvError;

/// Why an OTA operation failed.
#[derive(Debug, Error)]
pub enum OtaError {
    /// OTA is not configured.
    #[error("OS updates are off: set ota.compatible and ota.slots in the agent configuration")]
    NotConfigured,
    /// The bundle is not acceptable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The boot environment failed.
    #[error(transparent)]
    BootEnv(#[from] BootEnvError),
    /// The bundle is for another board.
    #[error("bundle is for {found:?}, this board is {expected:?} (ota.compatible)")]
    Incompatible {
        /// The bundle's compatible string.
        found: String,
        /// This board's.
        expected: String,
    },
    /// The bundle would downgrade.
    #[error("bundle version {bundle} is lower than the running {running}; use --allow-downgrade")]
    Downgrade {
        /// The bundle's version.
        bundle: String,
        /// The running version.
        running: String,
    },
    /// The running version is unknown, so the bundle cannot be checked against it.
    #[error(
        "the running OS version is unknown (slot {slot} has no version recorded: the agent did not \
         install it, and ota.factory_version is not set), so bundle version {bundle} cannot be \
         checked for a downgrade; if {bundle} is right for this board, install it with \
         `agent ota install --allow-downgrade`, or set ota.factory_version to the version the \
         board was flashed with (deployments from the relay need one of the two in the agent \
         configuration: ota.factory_version, or ota.allow_downgrade: true)"
    )]
    UnknownVersion {
        /// The bundle's version.
        bundle: String,
        /// The running slot.
        slot: String,
    },
    /// The running slot cannot be determined.
    #[error("cannot tell which slot is running: {0}")]
    Booted(String),
    /// No slot can take an image.
    #[error("{0}")]
    Slot(String),
    /// Reading, writing or syncing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Maps an I/O error to [`OtaError::Io`], saying what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OtaError {
    let what = what.into();
    move |source| OtaError::Io { what, source }
}
