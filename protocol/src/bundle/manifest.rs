//! The manifest: what a bundle installs (version, compatible hardware, images with sizes and
//! hashes), its canonical bytes (the ones signed) and the rules serde does not check.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::FORMAT_VERSION;
use super::error::{BundleError, truncate_for_message};

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
    /// The payload is zstd frames (window at most [`ZSTD_WINDOW_LOG_MAX`](super::ZSTD_WINDOW_LOG_MAX)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::test_support::*;
    use crate::bundle::*;
    use std::io::Cursor;

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
}
