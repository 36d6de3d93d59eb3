//! Streaming one image of a bundle out of it, for installing it into a slot and for checking a
//! bundle: decompressing when it is compressed, hashing the uncompressed bytes, and checking
//! size and SHA-256 before anything may be made bootable.
//!
//! Both the OTA install and `agent bundle verify` go through here, so a bundle verifies exactly
//! when it installs.

use std::io::{self, Read, Write};

use tether_protocol::bundle::{
    self, BundleError, Compression, ImageEntry, PayloadReader, ZSTD_WINDOW_LOG_MAX,
};

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
    let what = what.into();
    move |source| BundleError::Io { what, source }
}

/// Like [`bundle::copy_image`], for any compression: streams one image's payload from `r` into
/// `out`, decompressing zstd (window at most [`ZSTD_WINDOW_LOG_MAX`], so memory stays bounded
/// whatever the image size), hashing the uncompressed bytes and checking size and SHA-256.
/// Returns the number of uncompressed bytes written; nothing may be made bootable unless Ok.
pub fn copy_image_any<R: Read, W: Write>(
    r: &mut R,
    entry: &ImageEntry,
    out: &mut W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, BundleError> {
    match entry.compression {
        Compression::None => bundle::copy_image(r, entry, out, progress),
        Compression::Zstd => {
            let mut payload = PayloadReader::new(r, entry);
            let result = decompress_copy(&mut payload, entry, out, progress);
            payload.finish(result)
        }
    }
}

fn decompress_copy<R: Read, W: Write>(
    payload: &mut R,
    entry: &ImageEntry,
    out: &mut W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, BundleError> {
    let what = || format!("image {}: starting zstd", entry.class);
    let mut decoder = zstd::stream::read::Decoder::new(payload).map_err(io_err(what()))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(io_err(what()))?;
    bundle::hash_copy(
        &mut decoder,
        entry.size,
        &entry.sha256,
        &entry.class,
        out,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Cursor;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn hostile_zstd_payloads_are_refused() -> TestResult {
        // A zstd frame wanting a larger window than allowed, and garbage, are errors.
        let data = vec![7u8; 4 << 20];
        let mut big_window = Vec::new();
        {
            let mut enc = zstd::stream::write::Encoder::new(&mut big_window, 3)?;
            enc.window_log(24)?;
            enc.write_all(&data)?;
            enc.finish()?;
        }
        let entry = ImageEntry {
            class: "rootfs".to_string(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
            stored_size: big_window.len() as u64,
            compression: Compression::Zstd,
        };
        let err = copy_image_any(
            &mut Cursor::new(&big_window),
            &entry,
            &mut io::sink(),
            &mut |_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("image rootfs"), "{err}");

        let garbage = vec![0xabu8; 1000];
        let entry = ImageEntry {
            stored_size: garbage.len() as u64,
            ..entry
        };
        let err = copy_image_any(
            &mut Cursor::new(&garbage),
            &entry,
            &mut io::sink(),
            &mut |_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("image rootfs"), "{err}");

        // A zip bomb: far more output than the manifest's size stops at the size.
        let mut bomb = Vec::new();
        {
            let mut enc = zstd::stream::write::Encoder::new(&mut bomb, 3)?;
            enc.window_log(ZSTD_WINDOW_LOG_MAX)?;
            enc.write_all(&data)?;
            enc.finish()?;
        }
        let entry = ImageEntry {
            size: 1000,
            stored_size: bomb.len() as u64,
            ..entry
        };
        let mut out = Vec::new();
        let err = copy_image_any(&mut Cursor::new(&bomb), &entry, &mut out, &mut |_| {}).err();
        assert!(
            matches!(err, Some(BundleError::SizeMismatch { .. })),
            "{err:?}"
        );
        assert!(out.len() <= 1000);
        Ok(())
    }
}
