//! Signed OS update bundles: the byte format, parsing, signature verification and the streaming
//! reader of image payloads.
//!
//! A bundle is a fixed header, a JSON manifest signed with one or more ed25519 keys, and the
//! image payloads back to back in manifest order (`bsp/BUNDLE.md` has the format byte by byte).
//! Everything is read from any [`Read`] in one forward pass with bounded memory, so a bundle can
//! be installed straight from a download or a pipe:
//!
//! 1. [`read_header`] checks the magic, reads the manifest and signature block (both with hard
//!    size limits checked before anything is allocated), accepts the manifest only if a key of
//!    the [`Keyring`] signed its exact bytes, and validates it.
//! 2. [`copy_image`] (or [`skip_image`]) is called for each image in manifest order; it streams
//!    the payload through SHA-256 and fails on a short payload, a wrong size or a wrong hash.
//!    Nothing the installer writes may be made bootable before it returns `Ok`.
//! 3. [`expect_end`] confirms nothing follows the last image.
//!
//! Compressed (zstd) payloads are decompressed by the agent, which owns the zstd bindings: it
//! wraps a [`PayloadReader`] in a decoder and hands it to [`hash_copy`].

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The first 16 bytes of every bundle: a 12-byte tag, three reserved zero bytes and the format
/// version.
pub const MAGIC: [u8; 16] = *b"TETHERBUNDLE\0\0\0\x01";

/// The bundle format version this module reads and writes (the last byte of [`MAGIC`], and the
/// manifest's `format` field).
pub const FORMAT_VERSION: u8 = 1;

/// The largest manifest accepted, in bytes.
pub const MAX_MANIFEST_LEN: u32 = 1 << 20;

/// The largest signature block accepted, in bytes.
pub const MAX_SIGNATURES_LEN: u32 = 64 << 10;

/// The largest zstd window (log2 of bytes) a compressed payload may use: 1 MiB, which bounds the
/// decoder's memory whatever the image size. Writers must set it, readers must enforce it.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 20;

/// The compression level `agent bundle create` uses for zstd payloads.
pub const ZSTD_LEVEL: i32 = 3;

/// The first word of a public key line (`tether-ed25519 <base64 key> [comment]`).
pub const PUBLIC_KEY_TAG: &str = "tether-ed25519";

/// The size of the buffer payloads are streamed through.
pub const COPY_BUFFER_LEN: usize = 64 << 10;

/// What the manifest says about a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The manifest format; 1.
    pub format: u32,
    /// The version of the OS the bundle installs (semver).
    pub version: String,
    /// The hardware the bundle is built for; a device installs only bundles naming its own.
    pub compatible: String,
    /// When the bundle was built (RFC 3339, UTC).
    pub created: String,
    /// The images, in payload order.
    pub images: Vec<ImageEntry>,
}

/// One image of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// What the image is for (`rootfs`, `kernel`, `bootloader`, …): `[a-z0-9_-]+`, unique.
    pub class: String,
    /// The size of the image itself (after decompression), in bytes.
    pub size: u64,
    /// SHA-256 of the image itself (after decompression), lowercase hex.
    pub sha256: String,
    /// The number of payload bytes the image occupies in the bundle.
    pub stored_size: u64,
    /// How the payload is compressed.
    pub compression: Compression,
}

/// How an image payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// The payload is the image.
    None,
    /// The payload is zstd frames (window at most [`ZSTD_WINDOW_LOG_MAX`]).
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        })
    }
}

/// One signature of the signature block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// The signing key's id ([`key_id`]).
    pub key_id: String,
    /// The ed25519 signature over the exact manifest bytes, base64 (standard alphabet, padded).
    pub signature: String,
}

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
    /// The data does not start with [`MAGIC`].
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

/// The id of a public key: hex of the first 8 bytes of SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// A public key as one line of a `.pub` file: `tether-ed25519 <base64 key> <key id>`.
pub fn public_key_line(key: &VerifyingKey) -> String {
    format!(
        "{PUBLIC_KEY_TAG} {} {}",
        base64_encode(key.as_bytes()),
        key_id(key)
    )
}

/// Parses a public key line: `tether-ed25519 <base64 key> [comment]`.
pub fn parse_public_key(line: &str) -> Result<VerifyingKey, String> {
    let mut words = line.split_whitespace();
    match words.next() {
        Some(PUBLIC_KEY_TAG) => {}
        Some(other) => {
            return Err(format!(
                "expected `{PUBLIC_KEY_TAG} <base64 key>`, found {:?}",
                truncate_for_message(other)
            ));
        }
        None => return Err("empty key line".to_string()),
    }
    let encoded = words
        .next()
        .ok_or_else(|| format!("`{PUBLIC_KEY_TAG}` without a key"))?;
    let bytes = base64_decode(encoded).ok_or("the key is not valid base64")?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("an ed25519 key is 32 bytes, not {}", b.len()))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not an ed25519 public key")?;
    if key.is_weak() {
        return Err("weak ed25519 key refused".to_string());
    }
    Ok(key)
}

fn truncate_for_message(text: &str) -> String {
    text.chars().take(40).collect()
}

/// A set of trusted public keys (ed25519), e.g. loaded from a keyring directory of `*.pub` files
/// each holding `tether-ed25519 <base64 key> [comment]` on one line, or a single such file.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<(String, VerifyingKey)>,
}

impl Keyring {
    /// Loads the keys of a keyring directory (every `*.pub` file in it) or of a single key file.
    /// In a file, blank lines and lines starting with `#` are ignored and every other line is a
    /// key. A keyring without any key is an error.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let key_err = |path: &Path, message: String| BundleError::Key {
            path: path.to_path_buf(),
            message,
        };
        let meta = fs::metadata(path).map_err(|e| key_err(path, e.to_string()))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            for entry in fs::read_dir(path).map_err(|e| key_err(path, e.to_string()))? {
                let entry = entry.map_err(|e| key_err(path, e.to_string()))?;
                let file = entry.path();
                if file.extension().is_some_and(|e| e == "pub") && file.is_file() {
                    files.push(file);
                }
            }
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut keys = Vec::new();
        for file in &files {
            let text = fs::read_to_string(file).map_err(|e| key_err(file, e.to_string()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = parse_public_key(line)
                    .map_err(|m| key_err(file, format!("line {}: {m}", n + 1)))?;
                keys.push(key);
            }
        }
        let ring = Keyring::from_keys(keys);
        if ring.is_empty() {
            let message = if meta.is_dir() {
                "no keys in the keyring (no `*.pub` file holding a key)"
            } else {
                "no key in the file"
            };
            return Err(key_err(path, message.to_string()));
        }
        Ok(ring)
    }

    /// A keyring of the given keys (duplicates dropped).
    pub fn from_keys(keys: Vec<VerifyingKey>) -> Self {
        let mut ring = Keyring::default();
        for key in keys {
            if !ring.keys.iter().any(|(_, k)| *k == key) {
                ring.keys.push((key_id(&key), key));
            }
        }
        ring
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The ids of the keys, in load order.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    fn with_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        self.keys
            .iter()
            .filter(move |(kid, _)| kid == id)
            .map(|(_, k)| k)
    }
}

impl Manifest {
    /// The canonical bytes of the manifest, the ones that are signed: compact JSON, fields in
    /// declaration order.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        serde_json::to_vec(self).map_err(|e| BundleError::Invalid(format!("manifest: {e}")))
    }

    /// Checks every rule of the format that serde does not: format 1, semver version, a sane
    /// `compatible`, an RFC 3339 UTC `created`, at least one image, valid and unique classes,
    /// well-formed hashes, and `stored_size == size` for uncompressed images.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.format != u32::from(FORMAT_VERSION) {
            return Err(BundleError::MalformedManifest(format!(
                "unsupported manifest format {} (expected {FORMAT_VERSION})",
                self.format
            )));
        }
        validate_version(&self.version)?;
        validate_compatible(&self.compatible)?;
        if humantime::parse_rfc3339(&self.created).is_err() {
            return Err(BundleError::MalformedManifest(format!(
                "created {:?} is not an RFC 3339 UTC time (like 2024-05-01T12:00:00Z)",
                truncate_for_message(&self.created)
            )));
        }
        if self.images.is_empty() {
            return Err(BundleError::MalformedManifest("no images".to_string()));
        }
        let mut classes = HashSet::new();
        for image in &self.images {
            validate_class(&image.class)?;
            if !classes.insert(image.class.as_str()) {
                return Err(BundleError::DuplicateClass(image.class.clone()));
            }
            if !is_sha256_hex(&image.sha256) {
                return Err(BundleError::BadSha256 {
                    class: image.class.clone(),
                    value: truncate_for_message(&image.sha256),
                });
            }
            if image.compression == Compression::None && image.stored_size != image.size {
                return Err(BundleError::MalformedManifest(format!(
                    "image {}: uncompressed but stored_size {} differs from size {}",
                    image.class, image.stored_size, image.size
                )));
            }
        }
        Ok(())
    }
}

/// Checks that a version is semver (`1.2.0`, `2.0.0-rc.1`).
pub fn validate_version(version: &str) -> Result<(), BundleError> {
    semver::Version::parse(version)
        .map(|_| ())
        .map_err(|e| BundleError::BadVersion {
            version: truncate_for_message(version),
            message: e.to_string(),
        })
}

/// Checks a `compatible` string: 1 to 128 printable ASCII characters without spaces.
pub fn validate_compatible(compatible: &str) -> Result<(), BundleError> {
    if compatible.is_empty()
        || compatible.len() > 128
        || !compatible.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(BundleError::MalformedManifest(format!(
            "compatible {:?} must be 1 to 128 printable ASCII characters without spaces",
            truncate_for_message(compatible)
        )));
    }
    Ok(())
}

/// Checks an image class: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
pub fn validate_class(class: &str) -> Result<(), BundleError> {
    if class.is_empty()
        || class.len() > 64
        || !class
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(BundleError::BadClass(truncate_for_message(class)));
    }
    Ok(())
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_key_id(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Signs manifest bytes with a key.
pub fn sign_manifest(
    manifest_bytes: &[u8],
    key: &SigningKey,
) -> Result<SignatureEntry, BundleError> {
    let signature: Signature = key
        .try_sign(manifest_bytes)
        .map_err(|e| BundleError::Invalid(format!("signing failed: {e}")))?;
    Ok(SignatureEntry {
        key_id: key_id(&key.verifying_key()),
        signature: base64_encode(&signature.to_bytes()),
    })
}

/// Writes the header (magic, manifest, signature block), after which the payloads follow.
/// Refuses a manifest or signature block above the limits readers enforce.
pub fn write_header<W: Write>(
    w: &mut W,
    manifest_bytes: &[u8],
    signatures: &[SignatureEntry],
) -> Result<(), BundleError> {
    let sig_bytes = serde_json::to_vec(signatures)
        .map_err(|e| BundleError::Invalid(format!("signature block: {e}")))?;
    let manifest_len = u32::try_from(manifest_bytes.len())
        .ok()
        .filter(|&n| n <= MAX_MANIFEST_LEN)
        .ok_or(BundleError::ManifestTooLarge(u32::MAX))?;
    let sig_len = u32::try_from(sig_bytes.len())
        .ok()
        .filter(|&n| n <= MAX_SIGNATURES_LEN)
        .ok_or(BundleError::SignaturesTooLarge(u32::MAX))?;
    let io = |source| BundleError::Io {
        what: "writing the bundle header".to_string(),
        source,
    };
    w.write_all(&MAGIC).map_err(io)?;
    w.write_all(&manifest_len.to_be_bytes()).map_err(io)?;
    w.write_all(manifest_bytes).map_err(io)?;
    w.write_all(&sig_len.to_be_bytes()).map_err(io)?;
    w.write_all(&sig_bytes).map_err(io)?;
    Ok(())
}

/// The raw header: the manifest bytes as signed, and the signature entries.
struct RawHeader {
    manifest: Vec<u8>,
    signatures: Vec<SignatureEntry>,
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            BundleError::Truncated(format!("ended inside the {what}"))
        } else {
            BundleError::Io {
                what: format!("reading the {what}"),
                source,
            }
        }
    })
}

fn read_u32<R: Read>(r: &mut R, what: &str) -> Result<u32, BundleError> {
    let mut buf = [0u8; 4];
    read_exact_or(r, &mut buf, what)?;
    Ok(u32::from_be_bytes(buf))
}

fn read_raw_header<R: Read>(r: &mut R) -> Result<RawHeader, BundleError> {
    let mut magic = [0u8; 16];
    read_exact_or(r, &mut magic, "header")?;
    if magic[..15] != MAGIC[..15] {
        return Err(BundleError::BadMagic);
    }
    if magic[15] != FORMAT_VERSION {
        return Err(BundleError::UnsupportedVersion(u32::from(magic[15])));
    }
    let manifest_len = read_u32(r, "manifest length")?;
    if manifest_len > MAX_MANIFEST_LEN {
        return Err(BundleError::ManifestTooLarge(manifest_len));
    }
    let mut manifest = vec![0u8; manifest_len as usize];
    read_exact_or(r, &mut manifest, "manifest")?;
    let sig_len = read_u32(r, "signature block length")?;
    if sig_len > MAX_SIGNATURES_LEN {
        return Err(BundleError::SignaturesTooLarge(sig_len));
    }
    let mut sig_bytes = vec![0u8; sig_len as usize];
    read_exact_or(r, &mut sig_bytes, "signature block")?;
    let signatures: Vec<SignatureEntry> = serde_json::from_slice(&sig_bytes)
        .map_err(|e| BundleError::MalformedSignatures(e.to_string()))?;
    for entry in &signatures {
        if !is_key_id(&entry.key_id) {
            return Err(BundleError::MalformedSignatures(format!(
                "key id {:?} is not 16 lowercase hex digits",
                truncate_for_message(&entry.key_id)
            )));
        }
    }
    Ok(RawHeader {
        manifest,
        signatures,
    })
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| BundleError::MalformedManifest(e.to_string()))?;
    let manifest: Manifest =
        serde_json::from_str(text).map_err(|e| BundleError::MalformedManifest(e.to_string()))?;
    manifest.validate()?;
    Ok(manifest)
}

fn verify_signatures(
    manifest: &[u8],
    signatures: &[SignatureEntry],
    keyring: &Keyring,
) -> Result<(), BundleError> {
    let mut invalid = None;
    for entry in signatures {
        let mut keys = keyring.with_id(&entry.key_id).peekable();
        if keys.peek().is_none() {
            continue;
        }
        let signature =
            base64_decode(&entry.signature).and_then(|bytes| Signature::from_slice(&bytes).ok());
        if let Some(signature) = signature {
            for key in keys {
                if key.verify_strict(manifest, &signature).is_ok() {
                    return Ok(());
                }
            }
        }
        invalid.get_or_insert_with(|| entry.key_id.clone());
    }
    match invalid {
        Some(key_id) => Err(BundleError::InvalidSignature { key_id }),
        None => Err(BundleError::NoTrustedSignature {
            present: signatures.iter().map(|s| s.key_id.clone()).collect(),
        }),
    }
}

/// Reads and checks the header, manifest and signatures from `r` (any Read), leaving `r`
/// positioned at the first payload byte. The manifest is accepted only if at least one signature
/// by a key in `keyring` verifies over the exact manifest bytes; unknown key ids are skipped
/// (key rotation: a bundle may carry signatures by old and new keys). Signatures are checked
/// before the manifest is parsed.
pub fn read_header<R: Read>(r: &mut R, keyring: &Keyring) -> Result<Manifest, BundleError> {
    let raw = read_raw_header(r)?;
    verify_signatures(&raw.manifest, &raw.signatures, keyring)?;
    parse_manifest(&raw.manifest)
}

/// Like [`read_header`] but without verifying signatures (for inspect); also returns the
/// signature entries.
pub fn read_header_unverified<R: Read>(
    r: &mut R,
) -> Result<(Manifest, Vec<SignatureEntry>), BundleError> {
    let raw = read_raw_header(r)?;
    let manifest = parse_manifest(&raw.manifest)?;
    Ok((manifest, raw.signatures))
}

/// The payload of one image: reads at most `stored_size` bytes from the bundle and remembers
/// whether the bundle ended before that.
pub struct PayloadReader<'a, R: Read> {
    inner: &'a mut R,
    class: String,
    stored_size: u64,
    remaining: u64,
    ended_early: bool,
}

impl<'a, R: Read> PayloadReader<'a, R> {
    /// The payload of `entry`, `r` being positioned at its first byte.
    pub fn new(r: &'a mut R, entry: &ImageEntry) -> Self {
        PayloadReader {
            inner: r,
            class: entry.class.clone(),
            stored_size: entry.stored_size,
            remaining: entry.stored_size,
            ended_early: false,
        }
    }

    /// The payload bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.stored_size - self.remaining
    }

    /// Turns the outcome of reading the payload into the final one: a bundle that ended inside
    /// the payload is reported as truncated whatever the reader of the payload said, and a
    /// payload whose bytes were not all used is refused (the next image would be misread).
    pub fn finish(self, result: Result<u64, BundleError>) -> Result<u64, BundleError> {
        if self.ended_early {
            return Err(BundleError::TruncatedImage {
                class: self.class,
                got: self.stored_size - self.remaining,
                expected: self.stored_size,
            });
        }
        let written = result?;
        if self.remaining > 0 {
            return Err(BundleError::UnusedPayload {
                class: self.class,
                unused: self.remaining,
            });
        }
        Ok(written)
    }
}

impl<R: Read> Read for PayloadReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.ended_early = true;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Copies an image from `src` (its uncompressed bytes) to `out` through a bounded buffer,
/// hashing it; fails as soon as it is longer than `expected_size`, and at the end if it is
/// shorter or its SHA-256 is not `expected_sha256`. `progress` is called with the number of
/// bytes written so far. Returns the number of bytes written.
pub fn hash_copy<R: Read, W: Write>(
    src: &mut R,
    expected_size: u64,
    expected_sha256: &str,
    class: &str,
    out: &mut W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, BundleError> {
    let mut buf = vec![0u8; COPY_BUFFER_LEN];
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(BundleError::Io {
                    what: format!("reading image {class}"),
                    source,
                });
            }
        };
        if written.saturating_add(n as u64) > expected_size {
            return Err(BundleError::SizeMismatch {
                class: class.to_string(),
                expected: expected_size,
                actual: "more".to_string(),
            });
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        out.write_all(chunk).map_err(|source| BundleError::Io {
            what: format!("writing image {class}"),
            source,
        })?;
        written += n as u64;
        progress(written);
    }
    if written != expected_size {
        return Err(BundleError::SizeMismatch {
            class: class.to_string(),
            expected: expected_size,
            actual: written.to_string(),
        });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != expected_sha256 {
        return Err(BundleError::Sha256Mismatch {
            class: class.to_string(),
            expected: expected_sha256.to_string(),
            actual,
        });
    }
    out.flush().map_err(|source| BundleError::Io {
        what: format!("writing image {class}"),
        source,
    })?;
    Ok(written)
}

/// Streams one image's payload from `r` (positioned at it) into `out`, hashing it, with a
/// bounded buffer ([`COPY_BUFFER_LEN`]) whatever the image size. Fails if the payload ends early,
/// if the size differs from the manifest, or if the SHA-256 differs. `progress` is called with
/// the bytes written so far. Returns the number of bytes written. The caller is responsible for
/// not making anything bootable unless this returns Ok.
///
/// Handles [`Compression::None`] only; a zstd image is refused with
/// [`BundleError::Unsupported`] before anything is read (the agent's `copy_image_any` handles
/// both).
pub fn copy_image<R: Read, W: Write>(
    r: &mut R,
    entry: &ImageEntry,
    out: &mut W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, BundleError> {
    if entry.compression != Compression::None {
        return Err(BundleError::Unsupported(format!(
            "image {}: {} compression is not handled here",
            entry.class, entry.compression
        )));
    }
    let mut payload = PayloadReader::new(r, entry);
    let result = hash_copy(
        &mut payload,
        entry.size,
        &entry.sha256,
        &entry.class,
        out,
        progress,
    );
    payload.finish(result)
}

/// Skips one image's payload (to reach the next), without checking it.
pub fn skip_image<R: Read>(r: &mut R, entry: &ImageEntry) -> Result<(), BundleError> {
    let mut payload = PayloadReader::new(r, entry);
    let result = io::copy(&mut payload, &mut io::sink()).map_err(|source| BundleError::Io {
        what: format!("reading image {}", entry.class),
        source,
    });
    payload.finish(result).map(|_| ())
}

/// Checks that `r` has nothing left (after the last image).
pub fn expect_end<R: Read>(r: &mut R) -> Result<(), BundleError> {
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(BundleError::TrailingData),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(BundleError::Io {
                    what: "reading the end of the bundle".to_string(),
                    source,
                });
            }
        }
    }
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64, standard alphabet, padded.
fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(
                    BASE64_ALPHABET[(n >> (18 - 6 * i)) as usize & 63],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_value(c: u8) -> Option<u32> {
    BASE64_ALPHABET
        .iter()
        .position(|&a| a == c)
        .map(|p| p as u32)
}

/// Decodes strict base64 (standard alphabet, padded, canonical); `None` if it is not.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let groups = bytes.len() / 4;
    if groups * 4 != bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(groups * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != groups) {
            return None;
        }
        let mut n: u32 = 0;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | base64_value(c)?;
        }
        n <<= 6 * pad as u32;
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    // Only the canonical encoding is accepted (no stray bits in the last group).
    (base64_encode(&out) == text).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn entry(class: &str, data: &[u8]) -> ImageEntry {
        ImageEntry {
            class: class.to_string(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            stored_size: data.len() as u64,
            compression: Compression::None,
        }
    }

    fn manifest(images: Vec<ImageEntry>) -> Manifest {
        Manifest {
            format: 1,
            version: "1.2.0".to_string(),
            compatible: "acme-board-rev2".to_string(),
            created: "2024-05-01T12:00:00Z".to_string(),
            images,
        }
    }

    /// An uncompressed bundle of `images`, signed by `keys`; also the manifest length.
    fn build_with(
        manifest: &Manifest,
        payloads: &[&[u8]],
        keys: &[SigningKey],
    ) -> Result<Vec<u8>, BundleError> {
        let bytes = manifest.to_bytes()?;
        let sigs = keys
            .iter()
            .map(|k| sign_manifest(&bytes, k))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        write_header(&mut out, &bytes, &sigs)?;
        for p in payloads {
            out.extend_from_slice(p);
        }
        Ok(out)
    }

    fn sample(keys: &[SigningKey]) -> Result<(Vec<u8>, Vec<Vec<u8>>), BundleError> {
        let rootfs = pattern(5000, 1);
        let kernel = pattern(1234, 7);
        let m = manifest(vec![entry("rootfs", &rootfs), entry("kernel", &kernel)]);
        let bundle = build_with(&m, &[&rootfs, &kernel], keys)?;
        Ok((bundle, vec![rootfs, kernel]))
    }

    fn ring(keys: &[&SigningKey]) -> Keyring {
        Keyring::from_keys(keys.iter().map(|k| k.verifying_key()).collect())
    }

    /// Reads a whole bundle, checking every image.
    fn read_all(bundle: &[u8], keyring: &Keyring) -> Result<Vec<Vec<u8>>, BundleError> {
        let mut r = Cursor::new(bundle);
        let m = read_header(&mut r, keyring)?;
        let mut images = Vec::new();
        for image in &m.images {
            let mut out = Vec::new();
            copy_image(&mut r, image, &mut out, &mut |_| {})?;
            images.push(out);
        }
        expect_end(&mut r)?;
        Ok(images)
    }

    #[test]
    fn bundle_round_trip() -> TestResult {
        let key = signing_key(1);
        let (bundle, images) = sample(std::slice::from_ref(&key))?;
        assert_eq!(read_all(&bundle, &ring(&[&key]))?, images);

        let mut r = Cursor::new(&bundle);
        let (m, sigs) = read_header_unverified(&mut r)?;
        assert_eq!(m.images.len(), 2);
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0].key_id, key_id(&key.verifying_key()));
        skip_image(&mut r, &m.images[0])?;
        let mut seen = 0;
        let n = copy_image(&mut r, &m.images[1], &mut io::sink(), &mut |p| seen = p)?;
        assert_eq!((n, seen), (1234, 1234));
        expect_end(&mut r)?;
        Ok(())
    }

    #[test]
    fn bundle_magic_starts_the_file() -> TestResult {
        let key = signing_key(1);
        let (bundle, _) = sample(std::slice::from_ref(&key))?;
        assert_eq!(&bundle[..16], b"TETHERBUNDLE\0\0\0\x01");
        assert_eq!(u32::from_be_bytes(bundle[16..20].try_into()?) as usize, {
            let m = read_header(&mut Cursor::new(&bundle), &ring(&[&key]))?;
            m.to_bytes()?.len()
        });
        Ok(())
    }

    #[test]
    fn bundle_spec_example_layout() -> TestResult {
        // The example at the end of bsp/BUNDLE.md.
        let key = signing_key(1);
        let m = manifest(vec![entry("rootfs", b"abc")]);
        let bundle = build_with(&m, &[b"abc"], std::slice::from_ref(&key))?;
        assert_eq!(&bundle[16..20], &[0, 0, 0, 0xf6]);
        assert_eq!(&bundle[0x10a..0x10e], &[0, 0, 0, 0x86]);
        assert_eq!(&bundle[0x194..], b"abc");
        assert_eq!(bundle.len(), 0x197);
        assert!(bundle[20..0x10a].starts_with(b"{\"format\":1,\"version\":\"1.2.0\""));
        Ok(())
    }

    #[test]
    fn bundle_wrong_magic_refused() -> TestResult {
        let key = signing_key(1);
        let (mut bundle, _) = sample(std::slice::from_ref(&key))?;
        bundle[0] = b'X';
        let err = read_all(&bundle, &ring(&[&key])).err();
        assert!(matches!(err, Some(BundleError::BadMagic)), "{err:?}");
        let err = read_header_unverified(&mut Cursor::new(b"garbage garbage garbage")).err();
        assert!(matches!(err, Some(BundleError::BadMagic)), "{err:?}");
        Ok(())
    }

    #[test]
    fn bundle_format_version_2_unsupported() -> TestResult {
        let key = signing_key(1);
        let (mut bundle, _) = sample(std::slice::from_ref(&key))?;
        bundle[15] = 2;
        let err = read_all(&bundle, &ring(&[&key])).err();
        assert!(
            matches!(err, Some(BundleError::UnsupportedVersion(2))),
            "{err:?}"
        );
        assert!(
            err.map(|e| e.to_string())
                .unwrap_or_default()
                .contains("unsupported bundle format version 2")
        );
        Ok(())
    }

    #[test]
    fn bundle_oversized_lengths_refused_before_allocating() {
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = read_header(&mut Cursor::new(&header), &Keyring::default()).err();
        assert!(
            matches!(err, Some(BundleError::ManifestTooLarge(u32::MAX))),
            "{err:?}"
        );

        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&2u32.to_be_bytes());
        header.extend_from_slice(b"{}");
        header.extend_from_slice(&(MAX_SIGNATURES_LEN + 1).to_be_bytes());
        let err = read_header_unverified(&mut Cursor::new(&header)).err();
        assert!(
            matches!(err, Some(BundleError::SignaturesTooLarge(_))),
            "{err:?}"
        );
    }

    #[test]
    fn bundle_tampered_manifest_fails_signature() -> TestResult {
        let key = signing_key(1);
        let (bundle, _) = sample(std::slice::from_ref(&key))?;
        let kid = key_id(&key.verifying_key());
        // Every byte of the manifest: a flipped bit is caught by the signature before parsing.
        let len = u32::from_be_bytes(bundle[16..20].try_into()?) as usize;
        for i in 20..20 + len {
            let mut bad = bundle.clone();
            bad[i] ^= 0x01;
            match read_all(&bad, &ring(&[&key])) {
                Err(BundleError::InvalidSignature { key_id }) => assert_eq!(key_id, kid),
                other => panic!("byte {i}: {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn bundle_tampered_payload_sha256_mismatch() -> TestResult {
        let key = signing_key(1);
        let (mut bundle, _) = sample(std::slice::from_ref(&key))?;
        let last = bundle.len() - 1;
        bundle[last] ^= 0xff;
        let err = read_all(&bundle, &ring(&[&key])).err();
        let text = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            matches!(err, Some(BundleError::Sha256Mismatch { ref class, .. }) if class == "kernel"),
            "{err:?}"
        );
        assert!(text.contains("image kernel: sha256 mismatch"), "{text}");
        Ok(())
    }

    #[test]
    fn bundle_unknown_key_lists_ids() -> TestResult {
        let key = signing_key(1);
        let other = signing_key(2);
        let (bundle, _) = sample(std::slice::from_ref(&key))?;
        let err = read_all(&bundle, &ring(&[&other])).err();
        let text = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            matches!(err, Some(BundleError::NoTrustedSignature { .. })),
            "{err:?}"
        );
        assert!(text.contains("no signature by a trusted key"), "{text}");
        assert!(text.contains(&key_id(&key.verifying_key())), "{text}");
        Ok(())
    }

    #[test]
    fn bundle_key_rotation_old_and_new() -> TestResult {
        let old = signing_key(1);
        let new = signing_key(2);
        let (bundle, images) = sample(&[old.clone(), new.clone()])?;
        assert_eq!(read_all(&bundle, &ring(&[&new]))?, images);
        assert_eq!(read_all(&bundle, &ring(&[&old]))?, images);
        Ok(())
    }

    #[test]
    fn bundle_bad_signature_by_trusted_key_named() -> TestResult {
        let key = signing_key(1);
        let m = manifest(vec![entry("rootfs", b"abc")]);
        let bytes = m.to_bytes()?;
        let mut sig = sign_manifest(&bytes, &key)?;
        // A signature by another key, labelled with the trusted key's id.
        sig.signature = sign_manifest(&bytes, &signing_key(9))?.signature;
        let mut bundle = Vec::new();
        write_header(&mut bundle, &bytes, &[sig])?;
        bundle.extend_from_slice(b"abc");
        let err = read_all(&bundle, &ring(&[&key])).err();
        assert!(
            matches!(err, Some(BundleError::InvalidSignature { .. })),
            "{err:?}"
        );
        // Garbage base64 too.
        let sig = SignatureEntry {
            key_id: key_id(&key.verifying_key()),
            signature: "!!!".to_string(),
        };
        let mut bundle = Vec::new();
        write_header(&mut bundle, &bytes, &[sig])?;
        let err = read_header(&mut Cursor::new(&bundle), &ring(&[&key])).err();
        assert!(
            matches!(err, Some(BundleError::InvalidSignature { .. })),
            "{err:?}"
        );
        // No signature at all.
        let mut bundle = Vec::new();
        write_header(&mut bundle, &bytes, &[])?;
        let err = read_header(&mut Cursor::new(&bundle), &ring(&[&key])).err();
        assert!(
            err.map(|e| e.to_string())
                .unwrap_or_default()
                .contains("bundle signed by: none")
        );
        Ok(())
    }

    #[test]
    fn bundle_truncated_anywhere_errors() -> TestResult {
        let key = signing_key(1);
        let (bundle, _) = sample(std::slice::from_ref(&key))?;
        let keyring = ring(&[&key]);
        // Every cut inside the header (cheap: nothing is verified), then every 97th byte of the
        // payloads and the last one (each of those verifies the signature first).
        let mut r = Cursor::new(&bundle);
        read_header(&mut r, &keyring)?;
        let header_len = r.position() as usize;
        let cuts = (0..header_len)
            .chain((header_len..bundle.len()).step_by(97))
            .chain([bundle.len() - 1]);
        for len in cuts {
            let err = read_all(&bundle[..len], &keyring);
            assert!(err.is_err(), "accepted a bundle cut at {len}");
        }
        // Inside a payload the message says which image and how far it got.
        let cut = bundle.len() - 1000;
        let text = read_all(&bundle[..cut], &keyring)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            text,
            "truncated bundle: image kernel ended after 234 of 1234 bytes"
        );
        Ok(())
    }

    #[test]
    fn bundle_trailing_data_refused() -> TestResult {
        let key = signing_key(1);
        let (mut bundle, _) = sample(std::slice::from_ref(&key))?;
        bundle.push(0);
        let err = read_all(&bundle, &ring(&[&key])).err();
        assert!(matches!(err, Some(BundleError::TrailingData)), "{err:?}");
        Ok(())
    }

    #[test]
    fn bundle_bad_manifests_refused() -> TestResult {
        let key = signing_key(1);
        let keyring = ring(&[&key]);
        let signed = |bytes: &[u8]| -> Result<Vec<u8>, BundleError> {
            let sig = sign_manifest(bytes, &key)?;
            let mut out = Vec::new();
            write_header(&mut out, bytes, &[sig])?;
            Ok(out)
        };
        let check = |bytes: &[u8], want: &str| -> TestResult {
            let bundle = signed(bytes)?;
            let text = read_header(&mut Cursor::new(&bundle), &keyring)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(text.contains(want), "{want:?} not in {text:?}");
            Ok(())
        };
        check(b"", "malformed manifest")?;
        check(b"\xff\xfe", "malformed manifest")?;
        check(b"[[[[[[[[[[[[[[[[[[[[[[", "malformed manifest")?;
        check(&[b'['; 100_000], "malformed manifest")?;
        check(b"{\"format\":1}", "malformed manifest: missing field")?;

        let good = manifest(vec![entry("rootfs", b"abc")]);
        let mut v = serde_json::to_value(&good)?;
        v["extra"] = serde_json::json!(1);
        check(&serde_json::to_vec(&v)?, "unknown field `extra`")?;

        let mut m = good.clone();
        m.format = 2;
        check(&m.to_bytes()?, "unsupported manifest format 2")?;
        let mut m = good.clone();
        m.version = "1.2".to_string();
        check(&m.to_bytes()?, "bad version \"1.2\"")?;
        let mut m = good.clone();
        m.created = "yesterday".to_string();
        check(&m.to_bytes()?, "is not an RFC 3339")?;
        let mut m = good.clone();
        m.images.push(entry("rootfs", b"def"));
        check(&m.to_bytes()?, "duplicate image class \"rootfs\"")?;
        let mut m = good.clone();
        m.images[0].class = "Root FS".to_string();
        check(&m.to_bytes()?, "bad image class \"Root FS\"")?;
        let mut m = good.clone();
        m.images[0].sha256 = "ABC".to_string();
        check(&m.to_bytes()?, "image rootfs: bad sha256")?;
        let mut m = good.clone();
        m.images[0].stored_size = 1 << 40;
        check(&m.to_bytes()?, "uncompressed but stored_size")?;
        let mut m = good.clone();
        m.images.clear();
        check(&m.to_bytes()?, "no images")?;
        let mut m = good.clone();
        m.compatible = "two words".to_string();
        check(&m.to_bytes()?, "compatible")?;
        Ok(())
    }

    #[test]
    fn bundle_malformed_signature_block_refused() -> TestResult {
        let bytes = manifest(vec![entry("rootfs", b"abc")]).to_bytes()?;
        for block in [
            &b"not json"[..],
            b"{}",
            b"[{\"key_id\":\"x\",\"signature\":\"\"}]",
            b"[{\"key_id\":\"0011223344556677\",\"signature\":\"\",\"more\":1}]",
        ] {
            let mut bundle = MAGIC.to_vec();
            bundle.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            bundle.extend_from_slice(&bytes);
            bundle.extend_from_slice(&(block.len() as u32).to_be_bytes());
            bundle.extend_from_slice(block);
            let err = read_header_unverified(&mut Cursor::new(&bundle)).err();
            assert!(
                matches!(err, Some(BundleError::MalformedSignatures(_))),
                "{err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn bundle_copy_image_refuses_zstd_and_wrong_sizes() -> TestResult {
        let mut e = entry("rootfs", b"abc");
        e.compression = Compression::Zstd;
        let err = copy_image(&mut Cursor::new(b"abc"), &e, &mut io::sink(), &mut |_| {}).err();
        assert!(matches!(err, Some(BundleError::Unsupported(_))), "{err:?}");

        let e = entry("rootfs", b"abc");
        let err = hash_copy(
            &mut Cursor::new(b"abcd"),
            3,
            &e.sha256,
            "rootfs",
            &mut io::sink(),
            &mut |_| {},
        )
        .err();
        assert!(
            matches!(err, Some(BundleError::SizeMismatch { .. })),
            "{err:?}"
        );
        let err = hash_copy(
            &mut Cursor::new(b"ab"),
            3,
            &e.sha256,
            "rootfs",
            &mut io::sink(),
            &mut |_| {},
        )
        .err();
        assert!(
            matches!(err, Some(BundleError::SizeMismatch { .. })),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn bundle_keyring_loads_directory_and_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let a = signing_key(1).verifying_key();
        let b = signing_key(2).verifying_key();
        fs::write(
            dir.path().join("a.pub"),
            format!("{}\n", public_key_line(&a)),
        )?;
        fs::write(
            dir.path().join("b.pub"),
            format!(
                "# rotated in 2024\n{PUBLIC_KEY_TAG} {}\n",
                base64_encode(b.as_bytes())
            ),
        )?;
        fs::write(dir.path().join("notes.txt"), "not a key")?;
        let keyring = Keyring::load(dir.path())?;
        assert_eq!(keyring.len(), 2);
        assert_eq!(keyring.key_ids(), vec![key_id(&a), key_id(&b)]);
        let single = Keyring::load(&dir.path().join("a.pub"))?;
        assert_eq!(single.len(), 1);

        fs::write(dir.path().join("c.pub"), "ssh-ed25519 AAAA")?;
        let err = Keyring::load(dir.path()).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("c.pub: line 1")),
            "{err:?}"
        );
        fs::write(dir.path().join("c.pub"), format!("{PUBLIC_KEY_TAG} AAAA"))?;
        assert!(Keyring::load(dir.path()).is_err());

        let empty = tempfile::tempdir()?;
        assert!(Keyring::load(empty.path()).is_err());
        assert!(Keyring::load(&empty.path().join("missing")).is_err());
        Ok(())
    }

    #[test]
    fn bundle_key_id_is_16_hex() {
        let id = key_id(&signing_key(1).verifying_key());
        assert!(is_key_id(&id), "{id}");
    }

    #[test]
    fn bundle_base64_strict() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let text = base64_encode(data);
            assert_eq!(base64_decode(&text).as_deref(), Some(data));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        for bad in ["Zm8", "Zm9=", "Z===", "Zm=8", "Zm8=Zm8=", "Zm8\n", "Zm-_"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }
}
