//! The in-process handle through which the agent's own sources (system metrics, the journal
//! follower, application output) queue records in the outbox, and the log record one line of
//! output becomes.

use std::sync::{Arc, Mutex};

use tether_protocol::telemetry::Kind;

use crate::telemetry::outbox::{NewRecord, Outbox, OutboxError};
use crate::telemetry::record_line;

/// Most records appended in one transaction by one producer.
pub const MAX_BATCH: usize = 4096;

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

    /// The longest line worth reading for a record: the payload limit plus room for the
    /// envelope, as for a producer line ([`record_line::max_line`]).
    pub fn max_line(&self) -> usize {
        record_line::max_line(self.max_payload)
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

    /// The log record for one line of text: `fields` plus `"line"`, marked `"truncated": true`
    /// when the line was already cut where it was read (`truncated`) or is cut here to fit the
    /// payload limit, because a log line that is too long should still be seen rather than
    /// lost.
    pub fn log_record(
        &self,
        topic: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
        line: &str,
        truncated: bool,
        ts_ms: i64,
    ) -> NewRecord {
        let mut payload = fields.clone();
        payload.insert("line".into(), line.into());
        if truncated {
            payload.insert("truncated".into(), true.into());
        }
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

    fn producer(dir: &tempfile::TempDir, max_payload: usize) -> Result<Producer, OutboxError> {
        let limits = crate::telemetry::outbox::Limits {
            max_rows: 1_000_000,
            max_bytes: 1 << 30,
        };
        let outbox = Outbox::open(&dir.path().join("outbox.db"), limits)?;
        Ok(Producer::new(Arc::new(Mutex::new(outbox)), max_payload))
    }

    fn fields() -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("component".into(), "com.example.web".into());
        fields.insert("stream".into(), "stdout".into());
        fields
    }

    #[test]
    fn a_log_record_is_the_fields_and_the_line() -> R {
        let dir = tempfile::tempdir()?;
        let p = producer(&dir, 200)?;
        let r = p.log_record("app/com.example.web", &fields(), "hello", false, 7);
        assert_eq!(
            (r.kind, r.topic.as_str(), r.ts_ms),
            (Kind::Log, "app/com.example.web", 7)
        );
        let payload: serde_json::Value = serde_json::from_str(&r.payload)?;
        assert_eq!(
            payload,
            serde_json::json!({"component": "com.example.web", "stream": "stdout", "line": "hello"})
        );
        Ok(())
    }

    #[test]
    fn a_line_too_long_for_the_payload_is_cut_and_marked() -> R {
        let dir = tempfile::tempdir()?;
        let p = producer(&dir, 200)?;
        // Multi-byte characters and characters JSON escapes six-fold: the cut stays on a
        // character boundary and the escaped payload within the limit.
        for long in ["é".repeat(500), "\u{1}".repeat(500)] {
            let r = p.log_record("t", &fields(), &long, false, 0);
            assert!(r.payload.len() <= 200, "{}", r.payload.len());
            let payload: serde_json::Value = serde_json::from_str(&r.payload)?;
            assert_eq!(payload["truncated"], true);
            let kept = payload["line"].as_str().unwrap_or_default();
            assert!(long.starts_with(kept), "{kept}");
        }
        Ok(())
    }

    #[test]
    fn a_line_cut_where_it_was_read_is_marked_even_when_it_fits() -> R {
        let dir = tempfile::tempdir()?;
        let p = producer(&dir, 200)?;
        let r = p.log_record("t", &fields(), "the start of a long line", true, 0);
        let payload: serde_json::Value = serde_json::from_str(&r.payload)?;
        assert_eq!(payload["truncated"], true);
        assert_eq!(payload["line"], "the start of a long line");
        Ok(())
    }
}
