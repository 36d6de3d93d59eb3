//! Signing manifests and verifying their signatures against a keyring (ed25519, strict).

use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};

use super::base64::{base64_decode, base64_encode};
use super::error::BundleError;
use super::keys::{Keyring, key_id};

/// One signature of the signature block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// The signing key's id ([`key_id`]).
    pub key_id: String,
    /// The ed25519 signature over the exact manifest bytes, base64 (standard alphabet, padded).
    pub signature: String,
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

/// Accepts `manifest` if a signature by a key of `keyring` verifies over its exact bytes;
/// signatures by unknown keys are skipped, so a bundle may carry old and new keys' signatures.
pub(super) fn verify_signatures(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::test_support::*;
    use crate::bundle::*;
    use std::io::Cursor;

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
}
