//! Producing telemetry on the board: the record line format shared by the producer socket and
//! `agent telemetry send --batch`, and the in-process [`Producer`] handle through which the
//! agent's own sources (system metrics, the journal follower, application output) queue records.
//!
//! A line is `{"topic": "…", "value": <JSON>}` with optional `"kind"` (`metric` by default,
//! `log` or `event`), `"level"` (events only: `info`, `warning`, `critical`) and `"ts"`
//! (RFC 3339; default: when the line was read).

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tether_protocol::clock::now_ms;
use tether_protocol::telemetry::{Kind, Level};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::telemetry::outbox::{NewRecord, Outbox, OutboxError};

/// Most records appended in one transaction by one producer.
pub const MAX_BATCH: usize = 4096;

/// Room for the envelope of a line (topic, kind, ts) beyond the payload limit.
pub const LINE_OVERHEAD: usize = 64 * 1024;

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

/// Why capturing a stream of log lines stopped.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// Reading the stream failed.
    #[error("reading the log stream: {0}")]
    Read(#[from] std::io::Error),
    /// The outbox refused the lines.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// A handle for queuing records from inside the agent; cheap to clone, shared by all sources.
#[derive(Clone)]
pub struct Producer {
    outbox: Arc<Mutex<Outbox>>,
    max_payload: usize,
}

impl Producer {
    /// A producer appending to `outbox`, refusing payloads larger than `max_payload` bytes.
    pub fn new(outbox: Arc<Mutex<Outbox>>, max_payload: usize) -> Self {
        Self {
            outbox,
            max_payload,
        }
    }

    /// The payload limit in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Appends records durably in one transaction (off the async threads); returns their
    /// sequence numbers once they are on disk.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<u64>, OutboxError> {
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || {
            outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&records)
        })
        .await
        .unwrap_or_else(|e| {
            Err(OutboxError::Corrupt {
                seq: 0,
                message: format!("append task failed: {e}"),
            })
        })
    }

    /// The log record for one line of text: `fields` plus `"line"`, truncated (and marked
    /// `"truncated": true`) when it would not fit the payload limit, because a log line that
    /// is too long should still be seen rather than lost.
    pub fn log_record(
        &self,
        topic: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
        line: &str,
        ts_ms: i64,
    ) -> NewRecord {
        let mut payload = fields.clone();
        payload.insert("line".into(), line.into());
        let mut text = serde_json::Value::Object(payload.clone()).to_string();
        if text.len() > self.max_payload {
            // JSON escaping can grow a line up to six times; cut until it fits.
            let mut keep = line.len().min(self.max_payload);
            while text.len() > self.max_payload && keep > 0 {
                keep = keep.saturating_sub((text.len() - self.max_payload).max(keep / 8).max(1));
                let cut = floor_char_boundary(line, keep);
                payload.insert("line".into(), line[..cut].into());
                payload.insert("truncated".into(), true.into());
                text = serde_json::Value::Object(payload.clone()).to_string();
            }
        }
        NewRecord {
            ts_ms,
            kind: Kind::Log,
            topic: topic.to_string(),
            level: None,
            payload: text,
        }
    }

    /// Queues every line of `reader` as a log record on `topic` until it ends; returns how
    /// many lines were queued. Lines that arrive together are appended in one transaction.
    /// This is how the application supervisor streams a step's stdout and stderr: pass e.g.
    /// topic `app/<name>` and fields `{"component": name, "stream": "stdout"}`. Invalid
    /// UTF-8 is replaced rather than refused, since programs print what they print.
    pub async fn capture_lines<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        topic: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64, CaptureError> {
        let max_line = self.max_payload + LINE_OVERHEAD;
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut total = 0u64;
        let mut buf = Vec::new();
        loop {
            let mut batch = Vec::new();
            let mut eof = false;
            while batch.len() < MAX_BATCH {
                buf.clear();
                let n = read_line_bounded(&mut reader, &mut buf, max_line).await?;
                if n == 0 {
                    eof = true;
                    break;
                }
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let text = String::from_utf8_lossy(&buf);
                batch.push(self.log_record(topic, fields, &text, now_ms()));
                if !reader.buffer().contains(&b'\n') {
                    break;
                }
            }
            if !batch.is_empty() {
                total += batch.len() as u64;
                self.append(batch).await?;
            }
            if eof {
                return Ok(total);
            }
        }
    }
}

/// Reads one line into `buf`, at most `max` bytes of it; the rest of a longer line is read
/// and discarded so the next call starts at the next line. Returns the bytes consumed.
async fn read_line_bounded<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(consumed);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take);
        consumed += take;
        if done {
            return Ok(consumed);
        }
    }
}

/// The largest index `<= i` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Result<(), Box<dyn std::error::Error>>;

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

    fn producer(dir: &tempfile::TempDir, max_payload: usize) -> Result<Producer, OutboxError> {
        let limits = crate::telemetry::outbox::Limits {
            max_rows: 1_000_000,
            max_bytes: 1 << 30,
        };
        let outbox = Outbox::open(&dir.path().join("outbox.db"), limits)?;
        Ok(Producer::new(Arc::new(Mutex::new(outbox)), max_payload))
    }

    #[tokio::test]
    async fn captured_lines_become_log_records() -> R {
        let dir = tempfile::tempdir()?;
        let p = producer(&dir, 200)?;
        let long = "é".repeat(500);
        let input = format!("hello\r\nsecond line\nbad \u{FFFD}utf8\n{long}\nlast without newline");
        let mut bytes = input.into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        let mut fields = serde_json::Map::new();
        fields.insert("component".into(), "com.example.web".into());
        fields.insert("stream".into(), "stdout".into());
        let n = p
            .capture_lines(&bytes[..], "app/com.example.web", &fields)
            .await?;
        assert_eq!(n, 5);
        let outbox = p.outbox.lock().unwrap_or_else(|e| e.into_inner());
        let records = outbox.batch_after(0, 100, 1 << 20)?;
        assert_eq!(records.len(), 5);
        assert!(
            records
                .iter()
                .all(|r| r.kind == Kind::Log && r.topic == "app/com.example.web")
        );
        assert_eq!(records[0].payload["line"], "hello");
        assert_eq!(records[0].payload["stream"], "stdout");
        assert_eq!(records[0].payload["component"], "com.example.web");
        assert_eq!(records[1].payload["line"], "second line");
        assert_eq!(records[3].payload["truncated"], true);
        assert!(records[3].payload.to_string().len() <= 200);
        let last = records[4].payload["line"].as_str().unwrap_or_default();
        assert!(last.starts_with("last without newline"), "{last}");
        Ok(())
    }
}
