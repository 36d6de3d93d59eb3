//! Property tests of the control channel's documents (`tether_protocol::fleet`): desired-state
//! documents and control frames decode from any bytes without panicking, every document the
//! encoder writes decodes unchanged (inside a frame too), a damaged encoding is refused or
//! decodes to a document the encoder writes again unchanged, and the strict documents refuse
//! fields they do not know.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=100000 cargo test -p tether-protocol --test fuzz_fleet`.

mod common;

use std::collections::BTreeMap;

use common::{fail, json_value, mutation};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tether_protocol::fleet::{
    Action, ActionKind, ActionResult, ActionStatus, ControlFrame, DeploymentStatus,
    DesiredComponent, DesiredOs, DesiredState, Disk, Interface, Inventory, ReportedComponent,
    ReportedState, is_sha256,
};
use tether_protocol::frame;

/// Cases per property: 256 keeps each property near a second in a debug build on a 2-core
/// machine (a reported state with inventory is the largest document), well under the 30 s
/// budget of a bounded run of the file.
const CASES: u32 = 256;

fn text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn sha256() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

fn desired_component() -> impl Strategy<Value = DesiredComponent> {
    (text(), sha256(), json_value()).prop_map(|(version, recipe_sha256, configuration)| {
        DesiredComponent {
            version,
            recipe_sha256,
            configuration,
        }
    })
}

fn desired_state() -> impl Strategy<Value = DesiredState> {
    (
        any::<u64>(),
        prop::option::of(text()),
        prop::collection::btree_map(text(), desired_component(), 0..3),
        prop::option::of((text(), sha256())),
        prop::option::of(prop::collection::vec(text(), 0..3)),
    )
        .prop_map(
            |(version, deployment_id, components, os, changes)| DesiredState {
                version,
                deployment_id,
                components,
                os: os.map(|(version, bundle_sha256)| DesiredOs {
                    version,
                    bundle_sha256,
                }),
                changes,
            },
        )
}

fn deployment_status() -> impl Strategy<Value = DeploymentStatus> {
    prop_oneof![
        Just(DeploymentStatus::Pending),
        Just(DeploymentStatus::Downloading),
        Just(DeploymentStatus::Installing),
        Just(DeploymentStatus::Succeeded),
        Just(DeploymentStatus::Failed),
        Just(DeploymentStatus::RolledBack),
    ]
}

fn reported_component() -> impl Strategy<Value = ReportedComponent> {
    (
        (text(), text(), text()),
        any::<u32>(),
        any::<u32>(),
        prop::option::of(text()),
        json_value(),
    )
        .prop_map(
            |((name, version, state), errors, restarts, last_error, configuration)| {
                ReportedComponent {
                    name,
                    version,
                    state,
                    errors,
                    restarts,
                    last_error,
                    configuration,
                }
            },
        )
}

fn inventory() -> impl Strategy<Value = Inventory> {
    let disk = (text(), text(), text(), any::<u64>(), any::<u64>()).prop_map(
        |(mount, device, fs, total_bytes, available_bytes)| Disk {
            mount,
            device,
            fs,
            total_bytes,
            available_bytes,
        },
    );
    let interface = (
        text(),
        prop::option::of(text()),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(|(name, mac, addresses)| Interface {
            name,
            mac,
            addresses,
        });
    (
        (text(), prop::option::of(text()), text()),
        (prop::option::of(text()), prop::option::of(text()), text()),
        any::<u64>(),
        prop::collection::vec(disk, 0..3),
        prop::collection::vec(interface, 0..3),
        text(),
    )
        .prop_map(
            |(
                (hostname, machine_id, kernel),
                (os, os_version, arch),
                memory_bytes,
                disks,
                interfaces,
                agent_version,
            )| Inventory {
                hostname,
                machine_id,
                kernel,
                os,
                os_version,
                arch,
                memory_bytes,
                disks,
                interfaces,
                agent_version,
            },
        )
}

fn reported_state() -> impl Strategy<Value = ReportedState> {
    (
        any::<u64>(),
        prop::option::of(text()),
        prop::option::of(deployment_status()),
        prop::option::of(text()),
        prop::collection::vec(reported_component(), 0..3),
        prop::option::of(inventory()),
        prop::option::of(text()),
    )
        .prop_map(
            |(version, deployment_id, status, message, components, inventory, os_version)| {
                ReportedState {
                    version,
                    deployment_id,
                    status,
                    message,
                    components,
                    inventory,
                    os_version,
                    failed: Vec::new(),
                }
            },
        )
}

fn action() -> impl Strategy<Value = Action> {
    let kind = prop_oneof![
        (text(), prop::option::of(any::<u64>())).prop_map(|(command, timeout_secs)| {
            ActionKind::Run {
                command,
                timeout_secs,
            }
        }),
        text().prop_map(|component| ActionKind::Restart { component }),
        Just(ActionKind::Reboot),
    ];
    (text(), kind).prop_map(|(id, action)| Action { id, action })
}

fn action_result() -> impl Strategy<Value = ActionResult> {
    let status = prop_oneof![
        Just(ActionStatus::Pending),
        Just(ActionStatus::Running),
        Just(ActionStatus::Succeeded),
        Just(ActionStatus::Failed),
        Just(ActionStatus::Expired),
    ];
    (
        text(),
        status,
        prop::option::of(any::<i32>()),
        text(),
        any::<bool>(),
        prop::option::of(text()),
    )
        .prop_map(
            |(id, status, exit_code, output, truncated, error)| ActionResult {
                id,
                status,
                exit_code,
                output,
                truncated,
                error,
            },
        )
}

/// Any control frame.
fn control_frame() -> impl Strategy<Value = ControlFrame> {
    prop_oneof![
        desired_state().prop_map(|state| ControlFrame::Desired { state }),
        reported_state().prop_map(|state| ControlFrame::Reported {
            state: Box::new(state)
        }),
        (text(), any::<u64>()).prop_map(|(sha256, offset)| ControlFrame::Fetch { sha256, offset }),
        (text(), any::<u64>(), "[A-Za-z0-9+/=]{0,16}", any::<bool>()).prop_map(
            |(sha256, offset, data, last)| ControlFrame::Chunk {
                sha256,
                offset,
                data,
                last
            }
        ),
        action().prop_map(|action| ControlFrame::Action { action }),
        action_result().prop_map(|result| ControlFrame::ActionResult { result }),
        (text(), text()).prop_map(|(sha256, message)| ControlFrame::FetchError { sha256, message }),
    ]
}

/// Decodes `bytes` as `T`; if that succeeds, the value encodes to JSON that decodes to the same
/// value again (what was accepted is something the encoder writes).
fn decode_is_consistent<T>(bytes: &[u8]) -> Result<Option<T>, TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(bytes) else {
        return Ok(None);
    };
    let again = serde_json::to_vec(&value).map_err(fail)?;
    let decoded: T = serde_json::from_slice(&again).map_err(fail)?;
    prop_assert_eq!(&decoded, &value);
    Ok(Some(value))
}

/// A JSON document with one more key, at the top level or in a nested object.
fn with_extra_key(mut doc: Value, depth: usize) -> Value {
    fn insert(v: &mut Value, depth: usize) -> bool {
        let Value::Object(map) = v else {
            return false;
        };
        if depth > 0 {
            for child in map.values_mut() {
                if insert(child, depth - 1) {
                    return true;
                }
            }
        }
        map.insert("surely_not_a_field".into(), Value::Bool(true));
        true
    }
    insert(&mut doc, depth);
    doc
}

proptest! {
    #![proptest_config(common::config(CASES))]

    /// Arbitrary bytes never panic the decoders; whatever they accept re-encodes consistently.
    #[test]
    fn arbitrary_bytes_decode_consistently(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        decode_is_consistent::<ControlFrame>(&bytes)?;
        decode_is_consistent::<DesiredState>(&bytes)?;
        decode_is_consistent::<ReportedState>(&bytes)?;
    }

    /// Arbitrary JSON (the likeliest shape of a confused or hostile peer's frames) never
    /// panics the decoders either.
    #[test]
    fn arbitrary_json_decodes_consistently(doc in json_value()) {
        let bytes = serde_json::to_vec(&doc).map_err(fail)?;
        decode_is_consistent::<ControlFrame>(&bytes)?;
        decode_is_consistent::<DesiredState>(&bytes)?;
        decode_is_consistent::<ReportedState>(&bytes)?;
    }

    /// Every control frame survives the frame encoder and reader unchanged.
    #[test]
    fn control_frames_round_trip(f in control_frame()) {
        let bytes = frame::encode(&f).map_err(fail)?;
        let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(fail)?;
        let got: Option<ControlFrame> = runtime.block_on(frame::read(&mut &bytes[..])).map_err(fail)?;
        prop_assert_eq!(got, Some(f));
    }

    /// Desired-state documents round-trip on their own too (the relay stores them as JSON).
    #[test]
    fn desired_states_round_trip(state in desired_state()) {
        let bytes = serde_json::to_vec(&state).map_err(fail)?;
        prop_assert_eq!(decode_is_consistent::<DesiredState>(&bytes)?, Some(state));
    }

    /// A damaged encoding is refused, or decodes to a frame the encoder writes again.
    #[test]
    fn damaged_control_frames_are_refused_or_consistent(f in control_frame(), m in mutation()) {
        let good = serde_json::to_vec(&f).map_err(fail)?;
        decode_is_consistent::<ControlFrame>(&m.apply(&good))?;
    }

    /// The strict documents refuse a field they do not know, wherever it is: a peer that
    /// speaks a newer protocol is told so rather than half understood.
    #[test]
    fn unknown_fields_are_refused(state in desired_state(), depth in 0usize..3) {
        let doc = serde_json::to_value(&state).map_err(fail)?;
        let extra = with_extra_key(doc.clone(), depth);
        if extra != doc {
            let bytes = serde_json::to_vec(&extra).map_err(fail)?;
            prop_assert!(serde_json::from_slice::<DesiredState>(&bytes).is_err(), "{extra}");
            let framed = serde_json::json!({"type": "desired", "state": extra});
            prop_assert!(serde_json::from_value::<ControlFrame>(framed).is_err());
        }
    }

    /// `is_sha256` accepts exactly 64 lowercase hex digits.
    #[test]
    fn is_sha256_accepts_exactly_lowercase_hex(s in prop_oneof![sha256(), "[0-9a-fA-F]{62,66}", ".{0,70}"]) {
        let expected = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        prop_assert_eq!(is_sha256(&s), expected);
    }
}

/// The components of a desired state are keyed by name; an empty map and a missing key are the
/// same document.
#[test]
fn missing_components_mean_none() -> Result<(), serde_json::Error> {
    let state: DesiredState = serde_json::from_str(r#"{"version":3}"#)?;
    assert_eq!(state.components, BTreeMap::new());
    assert_eq!(state.os, None);
    Ok(())
}
