//! A component's artifacts: fetched into its version directory, checked against the recipe's
//! sha256 before anything uses them, and unpacked when the recipe asks.
//!
//! A file is copied to a temporary name while it is hashed and renamed into place only when
//! the digest matches, so a mismatching or half-copied artifact never sits where a lifecycle
//! step would find it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tether_protocol::recipe::{Artifact, ArtifactUri, Unarchive};
use thiserror::Error;

/// Why an artifact could not be made ready.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// Reading the source or writing the copy failed.
    #[error("artifact {uri}: {source}")]
    Io {
        /// The artifact's URI.
        uri: String,
        /// The error.
        source: std::io::Error,
    },
    /// The content does not have the digest the recipe names.
    #[error("artifact {uri}: sha256 mismatch: the recipe says {expected}, the file has {actual}")]
    Digest {
        /// The artifact's URI.
        uri: String,
        /// The recipe's digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// This kind of source cannot be fetched here.
    #[error("artifact {uri}: {message}")]
    Unsupported {
        /// The artifact's URI.
        uri: String,
        /// Why.
        message: String,
    },
    /// The archive could not be unpacked.
    #[error("artifact {uri}: unpacking: {message}")]
    Unpack {
        /// The artifact's URI.
        uri: String,
        /// What failed.
        message: String,
    },
}

/// How an artifact's URI reads in messages.
pub fn describe(uri: &ArtifactUri) -> String {
    match uri {
        ArtifactUri::Https(u) => u.clone(),
        ArtifactUri::File(p) => format!("file://{}", p.display()),
        ArtifactUri::Relay { .. } => uri.to_string(),
        ArtifactUri::Local(n) => n.clone(),
    }
}

/// Where to find artifacts that are not fetched over the network.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Directory holding artifacts named by bare file name (`agent app deploy --artifacts`).
    pub local_dir: Option<PathBuf>,
    /// Directory of artifacts already fetched from the relay, named by sha256.
    pub relay_cache: Option<PathBuf>,
}

/// Copies `artifact` into `dir` under its file name, checking its digest; returns the path.
/// An artifact already in place with the right digest is kept (a restart does not copy again).
pub fn fetch(artifact: &Artifact, sources: &Sources, dir: &Path) -> Result<PathBuf, ArtifactError> {
    let uri = describe(&artifact.uri);
    let io = |source| ArtifactError::Io {
        uri: uri.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let dest = dir.join(artifact.file_name());
    if dest.exists() && digest_of(&dest).map_err(io)? == artifact.sha256 {
        return Ok(dest);
    }
    let source_path = match &artifact.uri {
        ArtifactUri::File(p) => p.clone(),
        ArtifactUri::Local(name) => match &sources.local_dir {
            Some(d) => d.join(name),
            None => {
                return Err(ArtifactError::Unsupported {
                    uri,
                    message: "a bare file name needs --artifacts DIR".into(),
                });
            }
        },
        ArtifactUri::Relay { sha256: digest, .. } => match &sources.relay_cache {
            Some(d) => d.join(digest),
            None => {
                return Err(ArtifactError::Unsupported {
                    uri,
                    message:
                        "artifacts stored on the relay arrive with a deployment from the relay"
                            .into(),
                });
            }
        },
        ArtifactUri::Https(_) => {
            return Err(ArtifactError::Unsupported {
                uri,
                message: "https downloads are not supported yet; store the artifact on the relay (relay artifact put) or deploy locally with --artifacts".into(),
            });
        }
    };
    let mut input = std::fs::File::open(&source_path).map_err(io)?;
    copy_checked(&mut input, &dest, &artifact.sha256, &uri)?;
    if let Some(mode) = artifact.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(dest)
}

/// Streams `input` to `dest` through a temporary file, renaming only if the sha256 matches.
pub fn copy_checked(
    input: &mut dyn Read,
    dest: &Path,
    expected: &str,
    uri: &str,
) -> Result<(), ArtifactError> {
    let io = |source| ArtifactError::Io {
        uri: uri.to_string(),
        source,
    };
    let tmp = dest.with_extension("partial");
    let mut out = std::fs::File::create(&tmp).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io)?;
    }
    out.sync_all().map_err(io)?;
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        let _ = std::fs::remove_file(&tmp);
        return Err(ArtifactError::Digest {
            uri: uri.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    std::fs::rename(&tmp, dest).map_err(io)
}

/// The sha256 of a file, lowercase hex.
pub fn digest_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Unpacks `file` into `into` (replacing what an earlier attempt left there). Entries that
/// would land outside `into` are refused by the archive readers.
pub fn unpack(file: &Path, kind: Unarchive, into: &Path, uri: &str) -> Result<(), ArtifactError> {
    let fail = |message: String| ArtifactError::Unpack {
        uri: uri.to_string(),
        message,
    };
    if into.exists() {
        std::fs::remove_dir_all(into).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::create_dir_all(into).map_err(|e| fail(e.to_string()))?;
    let f = std::fs::File::open(file).map_err(|e| fail(e.to_string()))?;
    match kind {
        Unarchive::TarGz => {
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
            archive.set_preserve_permissions(true);
            archive.unpack(into).map_err(|e| fail(e.to_string()))
        }
        Unarchive::Zip => {
            let mut archive = zip::ZipArchive::new(f).map_err(|e| fail(e.to_string()))?;
            archive.extract(into).map_err(|e| fail(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatching_copy_never_lands() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("a.bin");
        let good = hex::encode(Sha256::digest(b"hello"));
        copy_checked(&mut &b"hello"[..], &dest, &good, "x")?;
        assert_eq!(std::fs::read(&dest)?, b"hello");
        let other = dir.path().join("b.bin");
        let err = copy_checked(&mut &b"tampered"[..], &other, &good, "x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert!(!other.exists());
        assert!(!other.with_extension("partial").exists());
        Ok(())
    }
}
