//! Why a bundle or a key was refused, and how values from a bundle are cut short when an error
//! message quotes them.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::{FORMAT_VERSION, MAX_MANIFEST_LEN, MAX_SIGNATURES_LEN};

/// Why a bundle (or a key) was refused.
#[derive(Debug, Error)]
pub enum BundleError {
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The bundle ends before its end.
    #[error("truncated bundle: {0}")]
    Truncated(String),
    /// The data does not start with [`MAGIC`](super::MAGIC).
    #[error("not a tether bundle (bad magic)")]
    BadMagic,
    /// The bundle is of a format version this build does not know.
    #[error("unsupported bundle format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    /// The manifest length is above [`MAX_MANIFEST_LEN`].
    #[error("manifest too large: {0} bytes (limit {MAX_MANIFEST_LEN})")]
    ManifestTooLarge(u32),
    /// The signature block length is above [`MAX_SIGNATURES_LEN`].
    #[error("signature block too large: {0} bytes (limit {MAX_SIGNATURES_LEN})")]
    SignaturesTooLarge(u32),
    /// The manifest is not the expected JSON, or a value in it is out of bounds.
    #[error("malformed manifest: {0}")]
    MalformedManifest(String),
    /// The signature block is not the expected JSON.
    #[error("malformed signature block: {0}")]
    MalformedSignatures(String),
    /// No signature in the bundle is by a key of the keyring.
    #[error("no signature by a trusted key (bundle signed by: {})", list_ids(.present))]
    NoTrustedSignature {
        /// The key ids of the signatures the bundle carries.
        present: Vec<String>,
    },
    /// A signature by a trusted key does not verify (and none other does).
    #[error("invalid signature by key {key_id}")]
    InvalidSignature {
        /// The key id.
        key_id: String,
    },
    /// Two images have the same class.
    #[error("malformed manifest: duplicate image class {0:?}")]
    DuplicateClass(String),
    /// An image class is not `[a-z0-9_-]+`.
    #[error("bad image class {0:?}: must be 1 to 64 of a-z, 0-9, '_' and '-'")]
    BadClass(String),
    /// An image hash is not 64 lowercase hex digits.
    #[error("image {class}: bad sha256 {value:?} (64 lowercase hex digits expected)")]
    BadSha256 {
        /// The image class.
        class: String,
        /// The value found.
        value: String,
    },
    /// The manifest version is not semver.
    #[error("bad version {version:?}: {message}")]
    BadVersion {
        /// The value found.
        version: String,
        /// What the semver parser said.
        message: String,
    },
    /// An image's payload ended before `stored_size` bytes.
    #[error("truncated bundle: image {class} ended after {got} of {expected} bytes")]
    TruncatedImage {
        /// The image class.
        class: String,
        /// The payload bytes read.
        got: u64,
        /// The payload bytes expected (`stored_size`).
        expected: u64,
    },
    /// An image is not of the size the manifest says.
    #[error("image {class}: size mismatch: manifest says {expected} bytes, payload has {actual}")]
    SizeMismatch {
        /// The image class.
        class: String,
        /// The size in the manifest.
        expected: u64,
        /// What the payload holds ("more", or a number).
        actual: String,
    },
    /// An image's hash is not the one in the manifest.
    #[error("image {class}: sha256 mismatch (manifest {expected}, payload {actual})")]
    Sha256Mismatch {
        /// The image class.
        class: String,
        /// The hash in the manifest.
        expected: String,
        /// The hash of the payload.
        actual: String,
    },
    /// Compressed data ends before the payload does.
    #[error("image {class}: {unused} bytes of the payload follow the compressed data")]
    UnusedPayload {
        /// The image class.
        class: String,
        /// How many payload bytes were not used.
        unused: u64,
    },
    /// Data follows the last image.
    #[error("data after the last image (the bundle is longer than its manifest says)")]
    TrailingData,
    /// Something this code path cannot do (a compression it does not handle).
    #[error("{0}")]
    Unsupported(String),
    /// A key file or keyring is unusable.
    #[error("{path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Anything else wrong with a request (creating a bundle).
    #[error("{0}")]
    Invalid(String),
}

fn list_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_string()
    } else {
        ids.join(", ")
    }
}

/// The first 40 characters of a value quoted in an error message.
pub(super) fn truncate_for_message(text: &str) -> String {
    text.chars().take(40).collect()
}
