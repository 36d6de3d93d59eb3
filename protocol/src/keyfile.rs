//! ed25519 key files: the device key on the agent, the host key on the relay.
//!
//! Both are generated on first use, written atomically with mode 0600 (a power cut never
//! leaves a truncated key, and the secret is never briefly readable by others), and refused
//! when group or others can read or write them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};
use thiserror::Error;

/// Why a key file could not be loaded or created.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file exists but is not an OpenSSH private key.
    #[error("{path}: not a usable OpenSSH private key: {message}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Group or others may read or write the key file: the key may have been copied or
    /// replaced, so it is not used (OpenSSH refuses such a key the same way).
    #[error(
        "UNPROTECTED PRIVATE KEY FILE {path}: its mode {mode:04o} lets group or others read or \
         write it, so the key is not used; run `chmod 600 {path}` (and re-enroll with a new key \
         if someone else may have copied it)"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Key generation failed.
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// Loads a private key, refusing a file that group or others can read or write.
pub fn load(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io)?;
    PrivateKey::from_openssh(text.as_bytes()).map_err(|e| KeyFileError::BadKey {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Loads the key at `path`, generating an ed25519 key there first if there is none.
/// The flag tells whether the key was just created.
pub fn load_or_create(path: &Path) -> Result<(PrivateKey, bool), KeyFileError> {
    if path.exists() {
        return load(path).map(|k| (k, false));
    }
    generate(path).map(|k| (k, true))
}

/// Generates an ed25519 key and writes it to `path` atomically with mode 0600, replacing any
/// key there (the file holds the old key or the new one, never a mix, even across a power cut).
pub fn generate(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private_fs::create_dir(dir).map_err(io)?;
    }
    let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| KeyFileError::Generate(e.to_string()))?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyFileError::Generate(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    sync_parent(path).map_err(io)?;
    Ok(key)
}

/// Moves the key file `from` to `to` atomically and durably.
pub fn replace(from: &Path, to: &Path) -> Result<(), KeyFileError> {
    fs::rename(from, to).map_err(|source| KeyFileError::Io {
        path: to.to_path_buf(),
        source,
    })?;
    sync_parent(to).map_err(|source| KeyFileError::Io {
        path: to.to_path_buf(),
        source,
    })
}

/// Makes a rename in `path`'s directory durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The SHA-256 fingerprint of a key's public half, as OpenSSH prints it (`SHA256:…`).
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_is_private_and_reloads() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("k");
        let (key, created) = load_or_create(&path)?;
        assert!(created);
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let (again, created) = load_or_create(&path)?;
        assert!(!created);
        assert_eq!(fingerprint(&key), fingerprint(&again));
        Ok(())
    }

    #[test]
    fn readable_key_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("k");
        load_or_create(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        let err = load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("UNPROTECTED PRIVATE KEY FILE"), "{err}");
        assert!(err.contains("mode 0644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        // Writable by group is as bad: the key could have been replaced.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o620))?;
        assert!(matches!(
            load(&path),
            Err(KeyFileError::TooOpen { mode: 0o620, .. })
        ));
        fs::write(&path, "garbage")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        assert!(matches!(load(&path), Err(KeyFileError::BadKey { .. })));
        Ok(())
    }
}
