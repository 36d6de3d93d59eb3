//! Property tests of OS update bundles (`tether_protocol::bundle`): the header reader returns a
//! manifest or an error for any bytes and never panics; every bundle the writer makes reads
//! back with its manifest and images; a damaged bundle is refused unless it still carries the
//! very manifest and images that were signed; public key lines parse only as the keys they
//! name.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=20000 cargo test -p tether-protocol --test fuzz_bundle`.

mod common;

use std::io::Cursor;

use common::{fail, mutation};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tether_protocol::bundle::{
    self, BundleError, Compression, ImageEntry, Keyring, MAGIC, MAX_MANIFEST_LEN, Manifest,
};

/// Cases per property: 128. Each case signs and verifies ed25519 signatures, which take
/// milliseconds in a debug build; 128 cases keep the slowest property (the full round trip)
/// near 3 s on a 2-core machine and the file well under the 30 s budget of a bounded run.
const CASES: u32 = 128;

/// A bundle as the writer makes it, with what went into it.
#[derive(Debug, Clone)]
struct Sample {
    manifest: Manifest,
    images: Vec<Vec<u8>>,
    key: SigningKey,
    bytes: Vec<u8>,
}

fn manifest_fields() -> impl Strategy<Value = (String, String, String)> {
    (
        (
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
            "(-rc\\.[0-9])?(\\+[a-z0-9]{1,4})?",
        )
            .prop_map(|(major, minor, patch, rest)| format!("{major}.{minor}.{patch}{rest}")),
        "[!-~]{1,40}",
        // Seconds between 1970 and 9999, written as RFC 3339 UTC.
        (0u64..253_402_300_799).prop_map(|secs| {
            humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .to_string()
        }),
    )
}

/// Any bundle of one to three uncompressed images, signed by one key.
fn sample() -> impl Strategy<Value = Sample> {
    (
        manifest_fields(),
        prop::collection::btree_map(
            "[a-z0-9_-]{1,12}",
            prop::collection::vec(any::<u8>(), 0..64),
            1..4,
        ),
        any::<[u8; 32]>(),
    )
        .prop_filter_map(
            "writable",
            |((version, compatible, created), images, seed)| {
                let key = SigningKey::from_bytes(&seed);
                let entries = images
                    .iter()
                    .map(|(class, data)| ImageEntry {
                        class: class.clone(),
                        size: data.len() as u64,
                        sha256: hex::encode(Sha256::digest(data)),
                        stored_size: data.len() as u64,
                        compression: Compression::None,
                    })
                    .collect();
                let manifest = Manifest {
                    format: 1,
                    version,
                    compatible,
                    created,
                    images: entries,
                };
                let manifest_bytes = manifest.to_bytes().ok()?;
                let signature = bundle::sign_manifest(&manifest_bytes, &key).ok()?;
                let mut bytes = Vec::new();
                bundle::write_header(&mut bytes, &manifest_bytes, &[signature]).ok()?;
                let images: Vec<Vec<u8>> = images.into_values().collect();
                for data in &images {
                    bytes.extend_from_slice(data);
                }
                Some(Sample {
                    manifest,
                    images,
                    key,
                    bytes,
                })
            },
        )
}

/// Reads a whole bundle as the installer does: verified header, each image checked, nothing
/// after the last.
fn read_all(bytes: &[u8], keyring: &Keyring) -> Result<(Manifest, Vec<Vec<u8>>), BundleError> {
    let mut r = Cursor::new(bytes);
    let manifest = bundle::read_header(&mut r, keyring)?;
    let mut images = Vec::new();
    for entry in &manifest.images {
        let mut out = Vec::new();
        bundle::copy_image(&mut r, entry, &mut out, &mut |_| {})?;
        images.push(out);
    }
    bundle::expect_end(&mut r)?;
    Ok((manifest, images))
}

/// Bytes that start like a bundle header (magic, then lengths that may fit), so that the reader
/// gets to the manifest and signature parsers.
fn header_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec(any::<u8>(), 0..80),
        any::<bool>(),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(manifest, sigs, right_lengths, junk_len)| {
            let mut out = MAGIC.to_vec();
            let len = |n: usize| match (right_lengths, junk_len) {
                (false, Some(j)) => j,
                _ => n as u32,
            };
            out.extend_from_slice(&len(manifest.len()).to_be_bytes());
            out.extend_from_slice(&manifest);
            out.extend_from_slice(&len(sigs.len()).to_be_bytes());
            out.extend_from_slice(&sigs);
            out
        })
}

/// What the unverified reader makes of `bytes` is an error, or a manifest that passes every
/// check of the format, read from within the length limit.
fn check_unverified(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((manifest, _)) = bundle::read_header_unverified(&mut Cursor::new(bytes)) {
        manifest.validate().map_err(fail)?;
        let len = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        prop_assert!(len <= MAX_MANIFEST_LEN);
    }
    Ok(())
}

proptest! {
    #![proptest_config(common::config(CASES))]

    /// Arbitrary bytes are refused without a panic (they almost never carry the magic).
    #[test]
    fn arbitrary_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        check_unverified(&bytes)?;
        prop_assert!(bundle::read_header(&mut Cursor::new(&bytes), &Keyring::default()).is_err());
    }

    /// Bytes with the magic and plausible lengths reach the manifest and signature parsers
    /// and are refused, or accepted only as a valid manifest.
    #[test]
    fn header_like_bytes_are_refused_or_valid(bytes in header_like_bytes()) {
        check_unverified(&bytes)?;
    }

    /// Every bundle the writer makes reads back, verified, with its manifest and images.
    #[test]
    fn bundles_round_trip(s in sample()) {
        let keyring = Keyring::from_keys(vec![s.key.verifying_key()]);
        let (manifest, images) = read_all(&s.bytes, &keyring).map_err(fail)?;
        prop_assert_eq!(&manifest, &s.manifest);
        prop_assert_eq!(&images, &s.images);
        let (unverified, signatures) =
            bundle::read_header_unverified(&mut Cursor::new(&s.bytes)).map_err(fail)?;
        prop_assert_eq!(unverified, s.manifest);
        prop_assert_eq!(signatures.len(), 1);
    }

    /// A damaged bundle is refused, unless what it still yields is exactly what was signed.
    #[test]
    fn damaged_bundles_are_refused_or_intact(s in sample(), m in mutation()) {
        let keyring = Keyring::from_keys(vec![s.key.verifying_key()]);
        let bad = m.apply(&s.bytes);
        check_unverified(&bad)?;
        if let Ok((manifest, images)) = read_all(&bad, &keyring) {
            prop_assert_eq!(manifest, s.manifest);
            prop_assert_eq!(images, s.images);
        }
    }

    /// A bundle is never accepted on a keyring without its signer.
    #[test]
    fn bundles_need_a_trusted_signer(s in sample(), other in any::<[u8; 32]>()) {
        let other = SigningKey::from_bytes(&other);
        prop_assume!(other.verifying_key() != s.key.verifying_key());
        let keyring = Keyring::from_keys(vec![other.verifying_key()]);
        let err = read_all(&s.bytes, &keyring).err();
        prop_assert!(matches!(err, Some(BundleError::NoTrustedSignature { .. })), "{err:?}");
    }

    /// A public key line parses back to its key, whatever the whitespace and comment around it.
    #[test]
    fn public_key_lines_round_trip(
        seed in any::<[u8; 32]>(),
        lead in "[ \t]{0,3}",
        gap in "[ \t]{1,3}",
        comment in prop::option::of("[!-~]{1,12}"),
    ) {
        let key = SigningKey::from_bytes(&seed).verifying_key();
        let line = bundle::public_key_line(&key);
        prop_assert_eq!(bundle::parse_public_key(&line).map_err(fail)?, key);
        let mut words: Vec<String> = line.split(' ').map(str::to_owned).collect();
        words.truncate(2);
        words.extend(comment);
        let spaced = format!("{lead}{}", words.join(&gap));
        prop_assert_eq!(bundle::parse_public_key(&spaced).map_err(fail)?, key);
    }

    /// Arbitrary text, and key lines with a damaged key, never panic the key parser; what it
    /// accepts prints as a line that parses to the same key.
    #[test]
    fn public_key_parser_refuses_or_is_consistent(
        text in ".{0,80}",
        seed in any::<[u8; 32]>(),
        at in any::<usize>(),
        with in any::<char>(),
    ) {
        let line = bundle::public_key_line(&SigningKey::from_bytes(&seed).verifying_key());
        let mut chars: Vec<char> = line.chars().collect();
        let at = at % chars.len();
        chars[at] = with;
        let damaged: String = chars.into_iter().collect();
        for candidate in [text, damaged] {
            if let Ok(key) = bundle::parse_public_key(&candidate) {
                let again = bundle::public_key_line(&key);
                prop_assert_eq!(bundle::parse_public_key(&again).map_err(fail)?, key);
            }
        }
    }

    /// A keyring file of arbitrary text loads as keys or an error naming the file.
    #[test]
    fn keyring_files_load_or_name_the_file(text in ".{0,120}") {
        let dir = tempfile::tempdir().map_err(fail)?;
        let path = dir.path().join("ring.pub");
        std::fs::write(&path, &text).map_err(fail)?;
        match Keyring::load(&path) {
            Ok(ring) => prop_assert!(!ring.is_empty()),
            Err(e) => prop_assert!(e.to_string().contains("ring.pub"), "{e}"),
        }
    }
}
