//! Reserved names of the device link.
//!
//! The relay serves devices and engineers on one SSH port; the SSH user name of a device's
//! connection says what it is for. Device names can never collide with these because device
//! names may not start with `tether-`.

use thiserror::Error;

/// SSH user name an enrolled device logs in with to hold its link open.
pub const LINK_USER: &str = "tether-link";

/// SSH user name a device logs in with to enroll (its key is not yet known to the relay).
pub const ENROLL_USER: &str = "tether-enroll";

/// Session subsystem that carries one enrollment request and its answer.
pub const ENROLL_SUBSYSTEM: &str = "tether-enroll";

/// Subsystem a linked device requests to register its next key (see [`crate::rotate`]).
pub const KEYS_SUBSYSTEM: &str = "tether-keys";

/// Host name that earlier agents served with their embedded SSH server when a `forwarded-tcpip`
/// channel named it. Relay-terminated sessions now travel on a `session` channel from relay to
/// device, which no engineer request can produce; the relay still refuses forwards to this and
/// every other `tether-` host so that an older agent's embedded server stays out of reach.
pub const LEGACY_EMBEDDED_SSH_TARGET: &str = "tether-ssh";

/// Whether a forward target host is one of the link's reserved names, in any spelling a
/// resolver or an older agent might accept: any case, with trailing dots, in brackets, or with
/// surrounding white space.
pub fn is_reserved_host(host: &str) -> bool {
    let h = host
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    h.starts_with("tether-") || h == "tether"
}

/// Address the device announces with `tcpip-forward` once its link is ready for channels.
pub const LINK_FORWARD_ADDRESS: &str = "tether";

/// Port the device announces with [`LINK_FORWARD_ADDRESS`]: this value says that its embedded
/// SSH server is served on `session` channels the relay opens. Earlier agents announce 0 and
/// serve it on a `forwarded-tcpip` channel to [`LEGACY_EMBEDDED_SSH_TARGET`].
pub const LINK_SESSION_CHANNELS: u32 = 1;

/// Address an agent announces instead of [`LINK_FORWARD_ADDRESS`] (with the same
/// [`LINK_SESSION_CHANNELS`] port, so that relays from before read it as they always did) when
/// it also serves engineers' sessions straight on a link channel ([`crate::link_session`]).
pub const LINK_FORWARD_ADDRESS_SESSIONS: &str = "tether+sessions";

/// HTTP path of the WebSocket transport of the device link.
pub const WS_LINK_PATH: &str = "/v1/link";

/// Longest device name accepted.
pub const MAX_DEVICE_NAME: usize = 63;

/// Why a device name is not acceptable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    #[error("device name is empty")]
    Empty,
    /// The name is longer than [`MAX_DEVICE_NAME`].
    #[error("device name is longer than {MAX_DEVICE_NAME} characters")]
    TooLong,
    /// The name contains a character outside `[a-z0-9-_.]` or does not start with a letter or digit.
    #[error(
        "device name {0:?} must start with a lower-case letter or digit and contain only a-z, 0-9, '-', '_' and '.'"
    )]
    BadCharacter(String),
    /// The name starts with `tether-`, which is reserved for the link's own users.
    #[error("device name {0:?} starts with the reserved prefix 'tether-'")]
    Reserved(String),
}

/// Checks that `name` can be used as a device name (and so as an SSH user name and host name).
pub fn validate_device_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_DEVICE_NAME {
        return Err(NameError::TooLong);
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !rest_ok {
        return Err(NameError::BadCharacter(name.to_string()));
    }
    if name.starts_with("tether-") {
        return Err(NameError::Reserved(name.to_string()));
    }
    Ok(())
}

/// Turns an arbitrary host name into a valid device name (lower case, bad characters to '-').
pub fn sanitize_device_name(raw: &str) -> String {
    let mut out: String = raw
        .trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_DEVICE_NAME)
        .collect();
    while out.starts_with(['-', '_', '.']) {
        out.remove(0);
    }
    if out.is_empty() || out.starts_with("tether-") {
        out = format!("device-{out}");
        out.truncate(MAX_DEVICE_NAME);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(validate_device_name("board-1.lab_a"), Ok(()));
        assert_eq!(validate_device_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_device_name("-x"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_device_name("Board"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_device_name("a b"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_device_name("tether-link"),
            Err(NameError::Reserved(_))
        ));
        assert_eq!(
            validate_device_name(&"a".repeat(64)),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn reserved_hosts_in_any_spelling() {
        for h in [
            "tether-ssh",
            "TETHER-SSH",
            "tether-ssh.",
            "tether-ssh..",
            " tether-ssh",
            "[tether-ssh]",
            "Tether-Link",
            "tether",
        ] {
            assert!(is_reserved_host(h), "{h:?}");
        }
        for h in ["127.0.0.1", "localhost", "tethered", "my-tether-ssh", "::1"] {
            assert!(!is_reserved_host(h), "{h:?}");
        }
    }

    #[test]
    fn sanitized_names_validate() {
        for raw in ["My Board", "-x", "", "tether-link", "ÄÖ", &"z".repeat(100)] {
            let name = sanitize_device_name(raw);
            assert_eq!(validate_device_name(&name), Ok(()), "{raw:?} -> {name:?}");
        }
    }
}
