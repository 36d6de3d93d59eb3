//! Signed OS update bundles: the byte format, parsing, signature verification and the streaming
//! reader of image payloads.
//!
//! A bundle is a fixed header, a JSON manifest signed with one or more ed25519 keys, and the
//! image payloads back to back in manifest order (`bsp/BUNDLE.md` has the format byte by byte).
//! Everything is read from any [`Read`](std::io::Read) in one forward pass with bounded memory, so a bundle can
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
//!
//! Layout: `manifest` (what a bundle installs), `keys` (key ids, key lines, the keyring),
//! `sign` (signatures), `header` (writing and reading the header), `payload` (streaming the
//! images), `base64` and `error`.

mod base64;
mod error;
mod header;
mod keys;
mod manifest;
mod payload;
mod sign;
#[cfg(test)]
mod test_support;

pub use error::BundleError;
pub use header::{read_header, read_header_unverified, write_header};
pub use keys::{Keyring, key_id, parse_public_key, public_key_line};
pub use manifest::{
    Compression, ImageEntry, Manifest, validate_class, validate_compatible, validate_version,
};
pub use payload::{PayloadReader, copy_image, expect_end, hash_copy, skip_image};
pub use sign::{SignatureEntry, sign_manifest};

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
