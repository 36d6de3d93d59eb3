//! Property tests of key files (`tether_protocol::keyfile`): a key file of any contents loads
//! as a key or an error naming the file, never a panic; a damaged key file is refused or still
//! holds the same key, so a device's identity never changes silently.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=20000 cargo test -p tether-protocol --test fuzz_keyfile`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{fail, mutation};
use proptest::prelude::*;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use tether_protocol::keyfile::{self, KeyFileError};

/// Cases per property: 256. A case writes and reads one small file and parses one key, a few
/// milliseconds in a debug build, so each property takes a second or two on a 2-core machine
/// and the file stays well under the 30 s budget of a bounded run.
const CASES: u32 = 256;

/// The OpenSSH text of the ed25519 key with this seed (what `load_or_create` writes).
fn key_text(seed: [u8; 32]) -> Result<(PrivateKey, String), TestCaseError> {
    let key = PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        "tether",
    )
    .map_err(fail)?;
    let text = key.to_openssh(LineEnding::LF).map_err(fail)?.to_string();
    Ok((key, text))
}

/// Writes `bytes` as a private (0600) key file and loads it.
fn load(dir: &Path, bytes: &[u8]) -> Result<Result<PrivateKey, KeyFileError>, TestCaseError> {
    let path = dir.join("device_key");
    std::fs::write(&path, bytes).map_err(fail)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(keyfile::load(&path))
}

proptest! {
    #![proptest_config(common::config(CASES))]

    /// Any contents load as a key or as an error that names the file.
    #[test]
    fn arbitrary_contents_are_refused_by_name(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().map_err(fail)?;
        if let Err(e) = load(dir.path(), &bytes)? {
            prop_assert!(e.to_string().contains("device_key"), "{e}");
        }
    }

    /// A key file as written loads as its key.
    #[test]
    fn key_files_round_trip(seed in any::<[u8; 32]>()) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let (key, text) = key_text(seed)?;
        let loaded = load(dir.path(), text.as_bytes())?.map_err(fail)?;
        prop_assert_eq!(keyfile::fingerprint(&loaded), keyfile::fingerprint(&key));
        prop_assert_eq!(loaded.to_bytes().map_err(fail)?, key.to_bytes().map_err(fail)?);
    }

    /// A damaged key file is refused, or still holds the same key pair.
    #[test]
    fn damaged_key_files_are_refused_or_the_same_key(seed in any::<[u8; 32]>(), m in mutation()) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let (key, text) = key_text(seed)?;
        if let Ok(loaded) = load(dir.path(), &m.apply(text.as_bytes()))? {
            prop_assert_eq!(keyfile::fingerprint(&loaded), keyfile::fingerprint(&key));
            prop_assert_eq!(loaded.key_data(), key.key_data());
        }
    }
}
