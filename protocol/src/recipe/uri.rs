//! Where an artifact comes from: the URI forms a recipe may write (`https://`, `file://`,
//! `relay:sha256:…`, a bare file name), how each is checked, and the file name it is stored
//! under on the device.

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

use super::error::show;

/// Where an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactUri {
    /// Downloaded from this `https://` URL (the whole URL).
    Https(String),
    /// Copied from this absolute path on the device (`file:///…`).
    File(PathBuf),
    /// Fetched from the relay's artifact store by its sha256: `relay:sha256:<hex>`, stored on
    /// the device under the digest, or `relay:sha256:<hex>/<name>`, stored under `name` (what
    /// `relay deploy create --artifacts` writes for a bare file name, so that
    /// `{artifacts:path}/<name>` is the same file locally and from the relay).
    Relay {
        /// The digest, 64 lowercase hex digits.
        sha256: String,
        /// The file name on the device, if not the digest.
        name: Option<String>,
    },
    /// A bare file name, resolved against the `--artifacts` directory at deploy time.
    Local(String),
}

impl fmt::Display for ArtifactUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactUri::Https(url) => f.write_str(url),
            ArtifactUri::File(path) => write!(f, "file://{}", path.display()),
            ArtifactUri::Relay { sha256, name: None } => write!(f, "relay:sha256:{sha256}"),
            ArtifactUri::Relay {
                sha256,
                name: Some(name),
            } => write!(f, "relay:sha256:{sha256}/{name}"),
            ArtifactUri::Local(name) => f.write_str(name),
        }
    }
}

impl Serialize for ArtifactUri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Whether `s` is a sha256 as recipes write it: 64 lowercase hex digits.
pub(super) fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why `s` is not a sha256, for an error message.
pub(super) fn sha256_problem(s: &str) -> String {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("`{s}` must be written in lowercase hex")
    } else {
        format!(
            "`{}` is not a sha256: expected 64 lowercase hex digits, got {} characters",
            show(s),
            s.chars().count()
        )
    }
}

/// The last path segment of an `https://` URL (without query or fragment).
pub(super) fn https_file_name(url: &str) -> &str {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    match rest.find('/') {
        Some(slash) => rest[slash..].rsplit('/').next().unwrap_or(""),
        None => "",
    }
}

fn check_file_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{what} does not end in a file name"));
    }
    if name.chars().any(|ch| ch.is_control() || ch == '\\') {
        return Err(format!(
            "{what} has control characters or '\\' in its file name"
        ));
    }
    Ok(())
}

/// Parses and checks an artifact URI; the error says what is wrong with it.
pub(super) fn parse_uri(uri: &str) -> Result<ArtifactUri, String> {
    let shown = show(uri);
    if uri.is_empty() {
        return Err("the URI is empty".to_owned());
    }
    if uri.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(format!(
            "`{shown}` contains whitespace or control characters"
        ));
    }
    if let Some(rest) = uri.strip_prefix("https://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return Err(format!("`{shown}` has no host"));
        }
        check_file_name(https_file_name(uri), &format!("`{shown}`"))?;
        return Ok(ArtifactUri::Https(uri.to_owned()));
    }
    if uri.starts_with("http://") {
        return Err(format!(
            "`{shown}`: plain http is not allowed; use https://"
        ));
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!(
                "`{shown}`: file URIs take an absolute path, like file:///opt/app.tar.gz"
            ));
        }
        let path = PathBuf::from(rest);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if rest.ends_with('/') {
            return Err(format!("`{shown}` does not end in a file name"));
        }
        check_file_name(&name, &format!("`{shown}`"))?;
        return Ok(ArtifactUri::File(path));
    }
    if let Some(rest) = uri.strip_prefix("relay:sha256:") {
        let (hash, name) = match rest.split_once('/') {
            Some((hash, name)) => (hash, Some(name)),
            None => (rest, None),
        };
        if !is_sha256(hash) {
            return Err(format!("`{shown}`: {}", sha256_problem(hash)));
        }
        if let Some(name) = name {
            if name.contains('/') {
                return Err(format!(
                    "`{shown}`: the name after the digest is a bare file name (no '/')"
                ));
            }
            check_file_name(name, &format!("`{shown}`"))?;
        }
        return Ok(ArtifactUri::Relay {
            sha256: hash.to_owned(),
            name: name.map(str::to_owned),
        });
    }
    // A scheme: a letter, then letters, digits, '+', '-', '.', then ':'.
    if let Some(colon) = uri.find(':') {
        let scheme = &uri[..colon];
        let looks_like_scheme = scheme
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-' | '.'));
        if looks_like_scheme {
            return Err(format!(
                "`{shown}`: unsupported URI scheme `{}`; use https://, file://, \
                 relay:sha256:<hex> or a bare file name",
                show(scheme)
            ));
        }
    }
    if uri.contains('/') {
        return Err(format!(
            "`{shown}`: a local artifact is a bare file name (no '/'), found in the --artifacts directory"
        ));
    }
    check_file_name(uri, &format!("`{shown}`"))?;
    Ok(ArtifactUri::Local(uri.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::test_support::*;
    use crate::recipe::*;
    use std::path::Path;

    #[test]
    fn rejects_bad_uri() -> TestResult {
        for (uri, why) in [
            ("http://example.com/a.bin", "plain http"),
            ("s3://bucket/a.bin", "unsupported URI scheme `s3`"),
            ("file://relative/a.bin", "absolute path"),
            ("file:///opt/", "file name"),
            ("https://example.com/", "file name"),
            ("https:///a.bin", "no host"),
            ("dist/a.bin", "bare file name"),
            ("..", "file name"),
            ("relay:sha256:abc", "not a sha256"),
            ("relay:sha256:abc/a.bin", "not a sha256"),
            (format!("relay:sha256:{SHA}/..").as_str(), "file name"),
            (format!("relay:sha256:{SHA}/").as_str(), "file name"),
            (format!("relay:sha256:{SHA}/x/y").as_str(), "bare file name"),
        ] {
            let e = fails(&with_artifact(&format!(
                "{{uri: \"{uri}\", sha256: {SHA}}}"
            )))?;
            assert_contains(&e, &["manifests[0].artifacts[0].uri: ", why])?;
        }
        let other = "0".repeat(64);
        let e = fails(&with_artifact(&format!(
            "{{uri: \"relay:sha256:{other}\", sha256: {SHA}}}"
        )))?;
        assert_contains(&e, &["artifacts[0].uri", "but sha256 is"])?;
        let e = fails(&format!(
            "name: com.a\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - {{uri: a.bin, sha256: {SHA}}}\n      - {{uri: \"https://x.org/a.bin\", sha256: {SHA}}}\n"
        ))?;
        assert_contains(&e, &["manifests[0].artifacts[1].uri", "names must differ"])
    }

    #[test]
    fn a_relay_artifact_may_keep_a_file_name() -> TestResult {
        let r = ok(&with_artifact(&format!(
            "{{uri: \"relay:sha256:{SHA}/server.py\", sha256: {SHA}}}"
        )))?;
        let a = &r.manifests[0].artifacts[0];
        assert_eq!(
            a.uri,
            ArtifactUri::Relay {
                sha256: SHA.into(),
                name: Some("server.py".into())
            }
        );
        assert_eq!(a.file_name(), "server.py");
        assert_eq!(a.uri.to_string(), format!("relay:sha256:{SHA}/server.py"));
        // Written back as text, it reads the same.
        assert_eq!(parse(&to_text(&r)?, Path::new("again.yaml"))?, r);
        Ok(())
    }
}
