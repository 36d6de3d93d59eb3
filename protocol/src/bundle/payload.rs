//! The image payloads after the header: each streamed through SHA-256 with a bounded buffer,
//! refused when short, long or not the hash the manifest says, and nothing after the last.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::COPY_BUFFER_LEN;
use super::error::BundleError;
use super::manifest::{Compression, ImageEntry};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::test_support::*;
    use std::io::{self, Cursor};

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
}
