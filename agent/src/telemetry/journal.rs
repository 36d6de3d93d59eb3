//! Following the systemd journal of configured units into the outbox as log records.
//!
//! The agent runs `journalctl --follow --output=json` for the units in
//! `telemetry.journal_units` rather than linking libsystemd, so the agent binary stays static
//! and works on boards without systemd (where the option is simply left empty). The journal
//! cursor of the last queued entry is saved in the state directory after each append, so a
//! restarted agent continues where it stopped: an entry is queued at least once, and only an
//! agent killed between the append and the cursor write sees one entry twice.
//!
//! `journalctl` output is read in bounded memory ([`crate::telemetry::line_reader`]): an entry
//! longer than the payload limit plus room for its envelope cannot be parsed once cut, so its
//! start is queued as text on `journal/unknown`, marked `"truncated": true`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tether_protocol::clock::now_ms;
use tokio::process::Command;

use crate::telemetry::line_reader::LineReader;
use crate::telemetry::outbox::NewRecord;
use crate::telemetry::producer::{MAX_BATCH, Producer};

/// File in the state directory holding the cursor of the last queued journal entry.
pub const CURSOR_FILE: &str = "journal.cursor";

/// Longest wait before starting `journalctl` again after it failed.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The fields of a `journalctl --output=json` entry that the agent keeps.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "__CURSOR")]
    cursor: Option<String>,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime_us: Option<String>,
    #[serde(rename = "MESSAGE")]
    message: Option<serde_json::Value>,
    #[serde(rename = "PRIORITY")]
    priority: Option<String>,
    #[serde(rename = "_SYSTEMD_UNIT")]
    unit: Option<String>,
    #[serde(rename = "SYSLOG_IDENTIFIER")]
    identifier: Option<String>,
    #[serde(rename = "_PID")]
    pid: Option<String>,
}

/// One journal line turned into a log record and its cursor; `None` for lines that are not
/// journal entries (journalctl prints nothing else, but a board's journalctl may be odd).
fn parse_entry(line: &str, producer: &Producer) -> Option<(NewRecord, Option<String>)> {
    let entry: Entry = serde_json::from_str(line).ok()?;
    // MESSAGE is a string, or an array of bytes when it is not valid UTF-8.
    let message = match entry.message? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Array(bytes) => {
            let raw: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&raw).into_owned()
        }
        _ => return None,
    };
    let unit = entry
        .unit
        .clone()
        .or(entry.identifier.clone())
        .unwrap_or_else(|| "unknown".into());
    let mut fields = serde_json::Map::new();
    fields.insert("unit".into(), unit.clone().into());
    if let Some(p) = entry.priority.as_deref().and_then(|p| p.parse::<u8>().ok()) {
        fields.insert("priority".into(), p.into());
    }
    if let Some(pid) = entry.pid.as_deref().and_then(|p| p.parse::<u64>().ok()) {
        fields.insert("pid".into(), pid.into());
    }
    let ts_ms = entry
        .realtime_us
        .as_deref()
        .and_then(|t| t.parse::<i64>().ok())
        .map(|us| us / 1000)
        .unwrap_or_else(now_ms);
    let record = producer.log_record(&format!("journal/{unit}"), &fields, &message, false, ts_ms);
    Some((record, entry.cursor))
}

/// The log record of a journal line too long to read whole: its start as text, marked
/// truncated, on `journal/unknown` (the unit's name may be in the part that was cut).
fn cut_entry(start: &str, producer: &Producer) -> NewRecord {
    let mut fields = serde_json::Map::new();
    fields.insert("unit".into(), "unknown".into());
    producer.log_record("journal/unknown", &fields, start, true, now_ms())
}

/// The `journalctl` arguments: follow the units from after `cursor`, or from now.
fn arguments(units: &[String], cursor: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--follow".to_string(),
        "--output=json".to_string(),
        "--no-pager".to_string(),
    ];
    for unit in units {
        args.push(format!("--unit={unit}"));
    }
    match cursor {
        Some(c) => args.push(format!("--after-cursor={c}")),
        None => args.push("--lines=0".to_string()),
    }
    args
}

fn cursor_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CURSOR_FILE)
}

fn save_cursor(state_dir: &Path, cursor: &str) -> std::io::Result<()> {
    let path = cursor_path(state_dir);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, cursor)?;
    std::fs::rename(&tmp, &path)
}

/// Follows the journal of `units` until the agent stops, restarting `journalctl` with backoff
/// when it fails (for example on a board without a journal).
pub async fn follow(producer: Producer, units: Vec<String>, state_dir: PathBuf) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match follow_once(&producer, &units, &state_dir).await {
            Ok(()) => tracing::warn!("journalctl ended; starting it again"),
            Err(e) => tracing::warn!("following the journal of {units:?}: {e:#}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_once(
    producer: &Producer,
    units: &[String],
    state_dir: &Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let cursor = std::fs::read_to_string(cursor_path(state_dir))
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let mut child = Command::new("journalctl")
        .args(arguments(units, cursor.as_deref()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting journalctl")?;
    let stdout = child.stdout.take().context("journalctl has no stdout")?;
    let mut lines = LineReader::new(stdout, producer.max_line());
    loop {
        let mut batch = Vec::new();
        let mut last_cursor = None;
        let read = lines.next_batch(MAX_BATCH).await?;
        let eof = read.is_empty();
        for line in &read {
            if line.truncated {
                // Cut JSON does not parse: keep what there is, marked, so the entry is seen.
                tracing::warn!(
                    "journal entry longer than {} bytes; queued cut",
                    lines.max_line()
                );
                batch.push(cut_entry(&line.text(), producer));
            } else if let Some((record, cursor)) = parse_entry(line.text().trim_end(), producer) {
                batch.push(record);
                last_cursor = cursor.or(last_cursor);
            }
        }
        if !batch.is_empty() {
            producer.append(batch).await?;
        }
        if let Some(c) = last_cursor {
            save_cursor(state_dir, &c).context("saving the journal cursor")?;
        }
        if eof {
            let status = child.wait().await?;
            anyhow::bail!("journalctl exited with {status}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn entries_become_log_records() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let limits = crate::telemetry::outbox::Limits {
            max_rows: 100,
            max_bytes: 1 << 20,
        };
        let outbox = crate::telemetry::outbox::Outbox::open(&dir.path().join("o.db"), limits)?;
        let p = Producer::new(Arc::new(Mutex::new(outbox)), 1024);
        let line = r#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1767225600500123","MESSAGE":"started","PRIORITY":"6","_SYSTEMD_UNIT":"web.service","_PID":"42"}"#;
        let (r, cursor) = parse_entry(line, &p).ok_or("not parsed")?;
        assert_eq!(cursor.as_deref(), Some("s=1;i=2"));
        assert_eq!(r.topic, "journal/web.service");
        assert_eq!(r.ts_ms, 1_767_225_600_500);
        let payload: serde_json::Value = serde_json::from_str(&r.payload)?;
        assert_eq!(
            payload,
            serde_json::json!({"unit": "web.service", "priority": 6, "pid": 42, "line": "started"})
        );
        let bytes = r#"{"MESSAGE":[104,105,255],"SYSLOG_IDENTIFIER":"kernel"}"#;
        let (r, cursor) = parse_entry(bytes, &p).ok_or("not parsed")?;
        assert_eq!(cursor, None);
        assert_eq!(r.topic, "journal/kernel");
        assert!(r.payload.contains("hi\u{FFFD}"), "{}", r.payload);
        assert!(parse_entry("not json", &p).is_none());
        assert!(parse_entry(r#"{"MESSAGE":{"x":1}}"#, &p).is_none());
        assert_eq!(
            arguments(&["a.service".into()], None),
            [
                "--follow",
                "--output=json",
                "--no-pager",
                "--unit=a.service",
                "--lines=0"
            ]
        );
        assert!(arguments(&[], Some("c")).contains(&"--after-cursor=c".to_string()));
        Ok(())
    }

    #[test]
    fn a_cut_entry_is_kept_as_marked_text() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let limits = crate::telemetry::outbox::Limits {
            max_rows: 100,
            max_bytes: 1 << 20,
        };
        let outbox = crate::telemetry::outbox::Outbox::open(&dir.path().join("o.db"), limits)?;
        let p = Producer::new(Arc::new(Mutex::new(outbox)), 1024);
        let r = cut_entry(r#"{"__CURSOR":"s=1","MESSAGE":"aaaa"#, &p);
        assert_eq!(r.topic, "journal/unknown");
        let payload: serde_json::Value = serde_json::from_str(&r.payload)?;
        assert_eq!(payload["truncated"], true);
        assert_eq!(payload["line"], r#"{"__CURSOR":"s=1","MESSAGE":"aaaa"#);
        Ok(())
    }
}
