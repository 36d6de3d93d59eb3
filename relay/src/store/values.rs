//! Values every backend forms the same way: timestamps, random ids, secret hashes, and the
//! rule for names.

use std::time::{Duration, UNIX_EPOCH};

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::StoreError;

/// Current time as RFC 3339 UTC.
pub fn now() -> String {
    tether_protocol::clock::now_rfc3339()
}

pub(crate) fn unix_now() -> i64 {
    tether_protocol::clock::now_ms() / 1000
}

pub(crate) fn rfc3339_from_unix(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    tether_protocol::clock::rfc3339_seconds(t)
}

/// When something with lifetime `ttl` made now expires, in Unix seconds; `None` never does.
/// Whole seconds are enough for a lifetime and keep the column a plain integer.
pub(crate) fn expires_after(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| unix_now().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)))
}

pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Checks a tenant or user name: `[a-z0-9][a-z0-9-_.]*`, at most 63 characters.
pub fn validate_name(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        return Ok(());
    }
    // A name of a megabyte is reported by its start and length, not echoed whole.
    let shown = if name.chars().count() > 64 {
        let start: String = name.chars().take(32).collect();
        format!("{start:?}… ({} bytes)", name.len())
    } else {
        format!("{name:?}")
    };
    Err(StoreError::Invalid(format!(
        "{what} name {shown} must be 1-63 characters of a-z, 0-9, '-', '_', '.' starting with a letter or digit"
    )))
}
