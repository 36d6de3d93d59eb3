//! Property tests of the enrollment exchange (`tether_protocol::enroll`) and of the device
//! names it carries (`tether_protocol::names`): any bytes an unauthenticated client sends are
//! a request or a refusal, never a panic; an accepted request speaks this protocol and asks for
//! a valid name; valid requests and responses round-trip; the name rules are exactly the
//! documented ones, and sanitizing any host name yields a valid name.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=100000 cargo test -p tether-protocol --test fuzz_enroll`.

mod common;

use common::{fail, json_value, mutation};
use proptest::prelude::*;
use tether_protocol::PROTOCOL_VERSION;
use tether_protocol::enroll::{self, EnrollRequest, EnrollResponse, MAX_ENROLL_MESSAGE};
use tether_protocol::names::{
    MAX_DEVICE_NAME, NameError, sanitize_device_name, validate_device_name,
};

/// Cases per property: 1024. A case is one small JSON line, so each property takes well under
/// a second in a debug build on a 2-core machine, and the file stays far below the 30 s budget
/// of a bounded run.
const CASES: u32 = 1024;

/// Names that follow the rules (and sometimes start like the reserved prefix without taking it).
fn valid_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9._-]{0,62}",
        "tether[a-z0-9._]{0,8}",
        "[a-z0-9]{1,5}-tether-[a-z]{0,4}",
    ]
    .prop_filter("not reserved", |n| !n.starts_with("tether-"))
}

fn request() -> impl Strategy<Value = EnrollRequest> {
    (".{0,24}", valid_name(), ".{0,12}", any::<bool>()).prop_map(
        |(token, name, agent_version, force)| EnrollRequest {
            protocol: PROTOCOL_VERSION,
            token,
            name,
            agent_version,
            force,
        },
    )
}

fn response() -> impl Strategy<Value = EnrollResponse> {
    prop_oneof![
        (".{0,12}", valid_name(), ".{0,12}", ".{0,8}").prop_map(
            |(device_id, name, tenant, status)| EnrollResponse::Enrolled {
                device_id,
                name,
                tenant,
                status,
            }
        ),
        ".{0,40}".prop_map(|message| EnrollResponse::Refused { message }),
    ]
}

/// The documented rule, written independently of the implementation.
fn follows_the_rules(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    !name.is_empty()
        && name.len() <= MAX_DEVICE_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(allowed)
        && !name.starts_with("tether-")
}

/// What the relay accepted from `bytes` speaks this protocol, names a valid device, and is
/// exactly what the first line of `bytes` holds.
fn check_request(bytes: &[u8]) -> Result<(), TestCaseError> {
    match enroll::parse_request(bytes) {
        Ok(request) => {
            prop_assert_eq!(request.protocol, PROTOCOL_VERSION);
            prop_assert_eq!(validate_device_name(&request.name), Ok(()));
            prop_assert!(bytes.len() <= MAX_ENROLL_MESSAGE);
            let line = serde_json::to_vec(&request).map_err(fail)?;
            prop_assert_eq!(enroll::parse_request(&line).map_err(fail)?, request);
        }
        Err(message) => prop_assert!(!message.is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(common::config(CASES))]

    /// Arbitrary bytes are a request or a refusal.
    #[test]
    fn arbitrary_bytes_are_checked(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        check_request(&bytes)?;
        let _ = serde_json::from_slice::<EnrollResponse>(&bytes);
    }

    /// Arbitrary JSON objects with the request's keys are a request or a refusal.
    #[test]
    fn request_shaped_json_is_checked(
        protocol in prop_oneof![Just(serde_json::json!(PROTOCOL_VERSION)), json_value()],
        name in prop_oneof![valid_name().prop_map(serde_json::Value::from), json_value()],
        token in json_value(),
        extra in prop::option::of(json_value()),
    ) {
        let mut doc = serde_json::json!({
            "protocol": protocol, "token": token, "name": name, "agent_version": "1",
        });
        if let (Some(extra), Some(map)) = (extra, doc.as_object_mut()) {
            map.insert("extra".into(), extra);
        }
        check_request(&serde_json::to_vec(&doc).map_err(fail)?)?;
    }

    /// A valid request, as the agent writes it (one JSON line), is accepted unchanged,
    /// whatever follows the line.
    #[test]
    fn requests_round_trip(r in request(), after in prop::collection::vec(any::<u8>(), 0..16)) {
        let mut line = serde_json::to_vec(&r).map_err(fail)?;
        line.push(b'\n');
        line.extend_from_slice(&after);
        prop_assert_eq!(enroll::parse_request(&line).map_err(fail)?, r);
    }

    /// A damaged request is refused or accepted only as a valid request.
    #[test]
    fn damaged_requests_are_checked(r in request(), m in mutation()) {
        let line = serde_json::to_vec(&r).map_err(fail)?;
        check_request(&m.apply(&line))?;
    }

    /// Responses round-trip, and a damaged one decodes, if at all, to one that round-trips.
    #[test]
    fn responses_round_trip(r in response(), m in mutation()) {
        let line = serde_json::to_vec(&r).map_err(fail)?;
        prop_assert_eq!(serde_json::from_slice::<EnrollResponse>(&line).map_err(fail)?, r);
        if let Ok(decoded) = serde_json::from_slice::<EnrollResponse>(&m.apply(&line)) {
            let again = serde_json::to_vec(&decoded).map_err(fail)?;
            prop_assert_eq!(serde_json::from_slice::<EnrollResponse>(&again).map_err(fail)?, decoded);
        }
    }

    /// The validator accepts exactly the names the documented rule allows, and says why not.
    #[test]
    fn device_names_follow_the_rules(name in prop_oneof![valid_name(), ".{0,70}", "[a-zA-Z0-9._ -]{0,70}"]) {
        match validate_device_name(&name) {
            Ok(()) => prop_assert!(follows_the_rules(&name), "{name:?} accepted"),
            Err(e) => {
                prop_assert!(!follows_the_rules(&name), "{name:?} refused: {e}");
                let expected_kind = match &e {
                    NameError::Empty => name.is_empty(),
                    NameError::TooLong => name.len() > MAX_DEVICE_NAME,
                    NameError::BadCharacter(n) | NameError::Reserved(n) => *n == name,
                };
                prop_assert!(expected_kind, "{name:?}: {e:?}");
            }
        }
    }

    /// Any host name sanitizes to a valid device name, and a valid name is left as it is.
    #[test]
    fn sanitized_names_are_valid(raw in prop_oneof![".{0,80}", valid_name()]) {
        let name = sanitize_device_name(&raw);
        prop_assert_eq!(validate_device_name(&name), Ok(()), "{:?} -> {:?}", raw, name);
        if follows_the_rules(&raw) {
            prop_assert_eq!(name, raw);
        }
    }
}
