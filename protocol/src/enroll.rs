//! The enrollment exchange.
//!
//! The agent logs in as [`crate::names::ENROLL_USER`] with its new device key (the relay
//! accepts any key for that user, because the token, not the key, is the credential), opens a
//! session channel, requests the [`crate::names::ENROLL_SUBSYSTEM`] subsystem, writes one
//! [`EnrollRequest`] as a JSON line and reads one [`EnrollResponse`] JSON line. The relay
//! registers the key it saw during authentication, so a device can only enroll a key it holds.

use serde::{Deserialize, Serialize};

/// Longest enrollment message either side accepts, in bytes.
pub const MAX_ENROLL_MESSAGE: usize = 64 * 1024;

/// What the agent sends to enroll.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Wire convention version, [`crate::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The enrollment token minted by an operator.
    pub token: String,
    /// The device name the agent asks for.
    pub name: String,
    /// The agent's version, for inventory.
    pub agent_version: String,
    /// Replace an existing device of the same name in the tenant (re-enrollment with a new key).
    #[serde(default)]
    pub force: bool,
}

/// The relay's answer to an [`EnrollRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum EnrollResponse {
    /// The device is registered.
    Enrolled {
        /// Stable device id assigned by the relay.
        device_id: String,
        /// The device's name within its tenant.
        name: String,
        /// Name of the tenant the token belongs to.
        tenant: String,
        /// `accepted`, or `pending` when an operator must accept the device first.
        status: String,
    },
    /// Enrollment was refused; `message` says why in words fit for the operator.
    Refused {
        /// Human-readable reason.
        message: String,
    },
}

/// Parses an enrollment request as the relay receives it: the first line of at most
/// [`MAX_ENROLL_MESSAGE`] bytes, one [`EnrollRequest`] in JSON, speaking
/// [`crate::PROTOCOL_VERSION`] and asking for a valid device name. The error is worded for the
/// operator and goes back to the agent in [`EnrollResponse::Refused`].
///
/// The name is refused when it is not valid, because it identifies the device; the agent
/// version is only descriptive, so one longer than [`crate::fleet::MAX_REPORTED_SHORT`] bytes
/// is cut to it (ending with [`crate::fleet::TRUNCATED_MARKER`]) rather than refused.
pub fn parse_request(buf: &[u8]) -> Result<EnrollRequest, String> {
    if buf.len() > MAX_ENROLL_MESSAGE {
        return Err("enrollment request too long".into());
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut request: EnrollRequest =
        serde_json::from_slice(line).map_err(|e| format!("malformed enrollment request: {e}"))?;
    if request.protocol != crate::PROTOCOL_VERSION {
        return Err(format!(
            "agent speaks link protocol {}, relay speaks {}",
            request.protocol,
            crate::PROTOCOL_VERSION
        ));
    }
    crate::names::validate_device_name(&request.name).map_err(|e| e.to_string())?;
    crate::fleet::truncate_reported(&mut request.agent_version, crate::fleet::MAX_REPORTED_SHORT);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_requests_are_checked() {
        let ok = br#"{"protocol":1,"token":"t","name":"b1","agent_version":"0.1.0"}
"#;
        assert!(parse_request(ok).is_ok());
        let bad_json = b"{not json\n";
        assert!(parse_request(bad_json).is_err_and(|e| e.contains("malformed")));
        let bad_name = br#"{"protocol":1,"token":"t","name":"Bad Name","agent_version":"0"}"#;
        assert!(parse_request(bad_name).is_err_and(|e| e.contains("Bad Name")));
        let future = br#"{"protocol":99,"token":"t","name":"b1","agent_version":"0"}"#;
        assert!(parse_request(future).is_err_and(|e| e.contains("protocol 99")));
        let unknown = br#"{"protocol":1,"token":"t","name":"b1","agent_version":"0","x":1}"#;
        assert!(parse_request(unknown).is_err());
        assert!(parse_request(&vec![b'a'; MAX_ENROLL_MESSAGE + 1]).is_err());
    }

    #[test]
    fn a_long_agent_version_is_cut_not_refused() -> Result<(), String> {
        let version = r"\u001b[31m".repeat(5000);
        let line =
            format!(r#"{{"protocol":1,"token":"t","name":"b1","agent_version":"{version}"}}"#);
        let request = parse_request(line.as_bytes())?;
        assert!(request.agent_version.len() <= crate::fleet::MAX_REPORTED_SHORT);
        assert!(request.agent_version.starts_with("\u{1b}[31m"));
        assert!(
            request
                .agent_version
                .ends_with(crate::fleet::TRUNCATED_MARKER)
        );
        Ok(())
    }
}
