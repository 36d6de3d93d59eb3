//! The record line format of local producers: one JSON object per line, as the producer socket
//! reads it and `agent telemetry send --batch` reads it from stdin.
//!
//! A line is `{"topic": "…", "value": <JSON>}` with optional `"kind"` (`metric` by default,
//! `log` or `event`), `"level"` (events only: `info`, `warning`, `critical`) and `"ts"`
//! (RFC 3339; default: when the line was read).

use serde::Deserialize;
use tether_protocol::clock::now_ms;
use tether_protocol::telemetry::{Kind, Level};

use crate::telemetry::outbox::NewRecord;

/// Room for the envelope of a line (topic, kind, ts) beyond the payload limit.
pub const LINE_OVERHEAD: usize = 64 * 1024;

/// The longest producer line accepted with payloads of at most `max_payload` bytes.
pub fn max_line(max_payload: usize) -> usize {
    max_payload + LINE_OVERHEAD
}

/// One producer line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default = "default_kind")]
    kind: Kind,
    topic: String,
    value: serde_json::Value,
    #[serde(default)]
    level: Option<Level>,
    #[serde(default)]
    ts: Option<String>,
}

fn default_kind() -> Kind {
    Kind::Metric
}

/// Parses an RFC 3339 time into milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("ts {text:?} is not an RFC 3339 time ({e})"))?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("ts {text:?} is before 1970"))?;
    i64::try_from(since.as_millis()).map_err(|_| format!("ts {text:?} is too far in the future"))
}

/// Checks the payload against the configured limit; the error names the limit's key.
pub fn check_payload(payload: &str, max_payload: usize) -> Result<(), String> {
    if payload.len() > max_payload {
        return Err(format!(
            "payload of {} bytes exceeds telemetry.max_payload ({max_payload} bytes)",
            payload.len()
        ));
    }
    Ok(())
}

/// Parses and checks one producer line into a record; the error says what is wrong with it.
pub fn parse_line(text: &str, max_payload: usize) -> Result<NewRecord, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("malformed record: {e}"))?;
    if line.topic.is_empty() {
        return Err("empty topic".into());
    }
    match (line.kind, line.level) {
        (Kind::Event, None) => {
            return Err("an event needs a level (info, warning or critical)".into());
        }
        (Kind::Metric | Kind::Log, Some(_)) => return Err("only events have a level".into()),
        _ => {}
    }
    let ts_ms = match &line.ts {
        Some(t) => parse_rfc3339_ms(t)?,
        None => now_ms(),
    };
    let payload = line.value.to_string();
    check_payload(&payload, max_payload)?;
    Ok(NewRecord {
        ts_ms,
        kind: line.kind,
        topic: line.topic,
        level: line.level,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked() {
        assert!(parse_line(r#"{"topic":"t","value":1}"#, 100).is_ok());
        let e = parse_line(r#"{"topic":"t","value":1,"kind":"blob"}"#, 100)
            .err()
            .unwrap_or_default();
        assert!(e.contains("blob"), "{e}");
        let e = parse_line(r#"{"kind":"event","topic":"t","value":1}"#, 100)
            .err()
            .unwrap_or_default();
        assert!(e.contains("level"), "{e}");
        let e = parse_line(r#"{"topic":"t","value":"xxxxxxxxxxxxxxxx"}"#, 10)
            .err()
            .unwrap_or_default();
        assert!(e.contains("max_payload"), "{e}");
        let e = parse_line("{not json", 100).err().unwrap_or_default();
        assert!(e.contains("malformed"), "{e}");
        let r = parse_line(
            r#"{"topic":"t","value":1,"ts":"2026-01-01T00:00:00.5Z"}"#,
            100,
        );
        assert_eq!(r.map(|r| r.ts_ms).ok(), Some(1_767_225_600_500));
    }
}
