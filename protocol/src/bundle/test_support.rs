//! Keys, manifests and bundles shared by the unit tests of the bundle modules.

use std::io::Cursor;

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::{
    BundleError, Compression, ImageEntry, Keyring, Manifest, copy_image, expect_end, read_header,
    sign_manifest, write_header,
};

/// What a test returns, so that it can use `?` instead of unwrapping.
pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A fixed signing key per `seed`, so that key ids are the same on every run.
pub(super) fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// `len` bytes of a pattern that differs per `seed`.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The uncompressed image entry of class `class` holding `data`.
pub(super) fn entry(class: &str, data: &[u8]) -> ImageEntry {
    ImageEntry {
        class: class.to_string(),
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
        stored_size: data.len() as u64,
        compression: Compression::None,
    }
}

/// A valid manifest (version 1.2.0, board `acme-board-rev2`) of `images`.
pub(super) fn manifest(images: Vec<ImageEntry>) -> Manifest {
    Manifest {
        format: 1,
        version: "1.2.0".to_string(),
        compatible: "acme-board-rev2".to_string(),
        created: "2024-05-01T12:00:00Z".to_string(),
        images,
    }
}

/// An uncompressed bundle of `manifest` with `payloads`, signed by `keys`.
pub(super) fn build_with(
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

/// A bundle of two images (rootfs, kernel) signed by `keys`, and the images.
pub(super) fn sample(keys: &[SigningKey]) -> Result<(Vec<u8>, Vec<Vec<u8>>), BundleError> {
    let rootfs = pattern(5000, 1);
    let kernel = pattern(1234, 7);
    let m = manifest(vec![entry("rootfs", &rootfs), entry("kernel", &kernel)]);
    let bundle = build_with(&m, &[&rootfs, &kernel], keys)?;
    Ok((bundle, vec![rootfs, kernel]))
}

/// A keyring of the public halves of `keys`.
pub(super) fn ring(keys: &[&SigningKey]) -> Keyring {
    Keyring::from_keys(keys.iter().map(|k| k.verifying_key()).collect())
}

/// Reads a whole bundle, checking every image.
pub(super) fn read_all(bundle: &[u8], keyring: &Keyring) -> Result<Vec<Vec<u8>>, BundleError> {
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
