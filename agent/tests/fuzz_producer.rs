//! Property tests of the telemetry producer line format
//! (`tether_agent::telemetry::record_line`), which any local process may write to the producer
//! socket: any line is a record or an error saying what is wrong, never a panic; an accepted
//! record keeps the rules (a topic, a level exactly for events, a payload within the limit);
//! every valid line gives the record it describes, its timestamp to the millisecond.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=100000 cargo test -p tether-agent --test fuzz_producer`.

mod common;

use common::fail;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use tether_agent::telemetry::record_line::{parse_line, parse_rfc3339_ms};
use tether_protocol::telemetry::{Kind, Level};

/// Cases per property: 1024. A case parses one short JSON line, microseconds in a debug build,
/// so each property takes well under a second on a 2-core machine and the file stays far
/// below the 30 s budget of a bounded run.
const CASES: u32 = 1024;

/// The payload limit the lines are checked against.
const MAX_PAYLOAD: usize = 256;

fn config() -> ProptestConfig {
    common::config(CASES)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Metric), Just(Kind::Log), Just(Kind::Event)]
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::Info),
        Just(Level::Warning),
        Just(Level::Critical)
    ]
}

/// Checks a line the parser accepted against the rules.
fn check(line: &str) -> Result<(), TestCaseError> {
    match parse_line(line, MAX_PAYLOAD) {
        Ok(record) => {
            prop_assert!(!record.topic.is_empty());
            prop_assert_eq!(record.level.is_some(), record.kind == Kind::Event);
            prop_assert!(record.payload.len() <= MAX_PAYLOAD);
            let payload: Value = serde_json::from_str(&record.payload).map_err(fail)?;
            let doc: Value = serde_json::from_str(line).map_err(fail)?;
            prop_assert_eq!(Some(&payload), doc.get("value"));
        }
        Err(message) => prop_assert!(!message.is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any text is a record or an error.
    #[test]
    fn arbitrary_lines_are_checked(line in ".{0,100}") {
        check(&line)?;
    }

    /// JSON objects with the line's keys, of any values, are a record or an error.
    #[test]
    fn line_shaped_json_is_checked(
        kind in prop_oneof![Just(json!("metric")), Just(json!("event")), json_value()],
        topic in prop_oneof![Just(json!("cpu")), json_value()],
        value in json_value(),
        level in prop::option::of(prop_oneof![Just(json!("info")), json_value()]),
        ts in prop::option::of(prop_oneof![
            Just(json!("2024-05-01T12:00:00Z")),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?"
                .prop_map(Value::String),
            json_value(),
        ]),
    ) {
        let mut line = json!({"kind": kind, "topic": topic, "value": value});
        if let Some(map) = line.as_object_mut() {
            if let Some(level) = level {
                map.insert("level".into(), level);
            }
            if let Some(ts) = ts {
                map.insert("ts".into(), ts);
            }
        }
        check(&line.to_string())?;
    }

    /// Every valid line gives the record it describes.
    #[test]
    fn valid_lines_give_their_record(
        kind in kind(),
        level in level(),
        topic in "[a-z./_-]{1,16}",
        value in json_value(),
        ms in 0i64..253_402_300_799_999,
    ) {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
        let ts = humantime::format_rfc3339_millis(time).to_string();
        let mut line = json!({"kind": kind.as_str(), "topic": topic, "value": value, "ts": ts});
        if kind == Kind::Event
            && let Some(map) = line.as_object_mut()
        {
            map.insert("level".into(), json!(level.as_str()));
        }
        let text = line.to_string();
        match parse_line(&text, MAX_PAYLOAD) {
            Ok(record) => {
                prop_assert_eq!(record.kind, kind);
                prop_assert_eq!(record.topic, topic);
                prop_assert_eq!(record.level, (kind == Kind::Event).then_some(level));
                prop_assert_eq!(record.ts_ms, ms);
                let payload: Value = serde_json::from_str(&record.payload).map_err(fail)?;
                prop_assert_eq!(payload, value);
            }
            Err(e) => {
                // The only refusal a valid line may get is the payload limit.
                prop_assert!(value.to_string().len() > MAX_PAYLOAD, "{e}: {text}");
            }
        }
    }

    /// Any text as a timestamp is a time or an error; RFC 3339 times read to the millisecond.
    #[test]
    fn timestamps_are_read_to_the_millisecond(text in ".{0,40}", ms in 0i64..253_402_300_799_999) {
        let _ = parse_rfc3339_ms(&text);
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
        let ts = humantime::format_rfc3339_millis(time).to_string();
        prop_assert_eq!(parse_rfc3339_ms(&ts).map_err(fail)?, ms);
    }
}
