//! Public keys: their ids, their one-line text form, and the keyring of trusted keys a device
//! loads from a directory of `*.pub` files or from one file.

use std::fs;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use super::PUBLIC_KEY_TAG;
use super::base64::{base64_decode, base64_encode};
use super::error::{BundleError, truncate_for_message};

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

    /// The keys whose id is `id` (two keys may share an id).
    pub(super) fn with_id<'a>(
        &'a self,
        id: &'a str,
    ) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        self.keys
            .iter()
            .filter(move |(kid, _)| kid == id)
            .map(|(_, k)| k)
    }
}

/// Whether `text` has the form of a key id ([`key_id`]): 16 lowercase hex digits.
pub(super) fn is_key_id(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::test_support::*;
    use std::fs;

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
}
