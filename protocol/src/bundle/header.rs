//! The bundle header: magic, manifest and signature block, written by bundle tools and read with
//! hard size limits checked before anything is allocated, signatures checked before the
//! manifest is parsed.

use std::io::{self, Read, Write};

use super::error::{BundleError, truncate_for_message};
use super::keys::{Keyring, is_key_id};
use super::manifest::Manifest;
use super::sign::{SignatureEntry, verify_signatures};
use super::{FORMAT_VERSION, MAGIC, MAX_MANIFEST_LEN, MAX_SIGNATURES_LEN};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::test_support::*;
    use crate::bundle::*;
    use std::io::{self, Cursor};

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
}
