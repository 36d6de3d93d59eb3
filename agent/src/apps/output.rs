//! A step's stdout and stderr: copied to the component's output log (for `agent app logs`)
//! and, as log records on `app/<name>`, to the outbox.
//!
//! Output is read in bounded memory ([`LineReader`]): a line longer than the payload limit
//! plus room for its envelope keeps its start and the rest is dropped as it arrives, so a
//! program printing without newlines cannot grow the agent. A cut line is marked the way the
//! agent marks cut text elsewhere: its log record carries `"truncated": true`, its line in the
//! output log ends with [`TRUNCATED_MARKER`].

use std::io::Write;
use std::sync::Arc;

use tether_protocol::clock::{now_ms, now_rfc3339};
use tether_protocol::fleet::TRUNCATED_MARKER;
use tokio::io::AsyncRead;

use crate::apps::component::Layout;
use crate::config::TelemetryConfig;
use crate::telemetry::line_reader::{Line, LineReader};
use crate::telemetry::producer::Producer;
use crate::telemetry::record_line;

/// Most lines queued in one outbox transaction from one stream.
const MAX_BATCH: usize = 1024;

/// Where a step's output goes.
pub struct Sink {
    /// The component's files (its output log is there).
    pub layout: Layout,
    /// Bytes of the output log before it is rotated (`apps.log_bytes`).
    pub log_bytes: u64,
    /// The outbox handle; `None` keeps output in the log only.
    pub producer: Option<Producer>,
}

/// The longest line kept whole: what fits a log record, or with no outbox what would with
/// the default payload limit.
fn line_limit(producer: Option<&Producer>) -> usize {
    producer.map_or_else(
        || record_line::max_line(TelemetryConfig::default().max_payload),
        Producer::max_line,
    )
}

/// Copies one stream of a step (`stream` is `stdout` or `stderr`) until it ends; a read error
/// ends it too, as the pipe is then of no more use.
pub async fn capture(
    pipe: impl AsyncRead + Unpin,
    sink: Arc<Sink>,
    name: String,
    step: &'static str,
    stream: &'static str,
) {
    let mut reader = LineReader::new(pipe, line_limit(sink.producer.as_ref()));
    let topic = format!("app/{name}");
    let mut fields = serde_json::Map::new();
    fields.insert("component".into(), name.clone().into());
    fields.insert("step".into(), step.into());
    fields.insert("stream".into(), stream.into());
    loop {
        let lines = match reader.next_batch(MAX_BATCH).await {
            Ok(lines) if !lines.is_empty() => lines,
            _ => return,
        };
        let ts = now_ms();
        append_log(&sink, step, stream, &lines);
        if let Some(producer) = &sink.producer {
            let records = lines
                .iter()
                .map(|l| producer.log_record(&topic, &fields, &l.text(), l.truncated, ts))
                .collect();
            if let Err(e) = producer.append(records).await {
                tracing::warn!("component {name}: queuing output: {e}");
            }
        }
    }
}

/// The output log's line for `line`: `TS STEP/STREAM: TEXT`, a cut line ending with
/// [`TRUNCATED_MARKER`].
fn log_line(ts: &str, step: &str, stream: &str, line: &Line) -> String {
    let marker = if line.truncated { TRUNCATED_MARKER } else { "" };
    format!("{ts} {step}/{stream}: {}{marker}\n", line.text())
}

/// Appends lines to the component's output log, rotating it at `sink.log_bytes`.
fn append_log(sink: &Sink, step: &str, stream: &str, lines: &[Line]) {
    let path = sink.layout.log();
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > sink.log_bytes) {
        let _ = std::fs::rename(&path, sink.layout.old_log());
    }
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    else {
        return;
    };
    let ts = now_rfc3339();
    let mut text = String::new();
    for l in lines {
        text.push_str(&log_line(&ts, step, stream, l));
    }
    let _ = f.write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type R = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn output_goes_to_the_log_and_the_outbox_and_a_long_line_is_cut() -> R {
        let dir = tempfile::tempdir()?;
        let layout = Layout::new(dir.path(), "com.example.web");
        std::fs::create_dir_all(&layout.root)?;
        let limits = crate::telemetry::outbox::Limits {
            max_rows: 1000,
            max_bytes: 1 << 30,
        };
        let outbox = Arc::new(Mutex::new(crate::telemetry::outbox::Outbox::open(
            &dir.path().join("outbox.db"),
            limits,
        )?));
        let producer = Producer::new(outbox.clone(), 1024);
        let sink = Arc::new(Sink {
            layout: layout.clone(),
            log_bytes: 1 << 20,
            producer: Some(producer.clone()),
        });
        let mut input = b"hello\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10 * producer.max_line()));
        capture(&input[..], sink, "com.example.web".into(), "run", "stdout").await;

        let log = std::fs::read_to_string(layout.log())?;
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{}", &log[..200.min(log.len())]);
        assert!(lines[0].ends_with(" run/stdout: hello"), "{}", lines[0]);
        assert!(lines[1].ends_with(TRUNCATED_MARKER));
        assert!(lines[1].len() < producer.max_line() + 100);

        let records = outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .batch_after(0, 10, 1 << 20)?;
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].topic, "app/com.example.web");
        assert_eq!(records[0].payload["line"], "hello");
        assert_eq!(records[0].payload["step"], "run");
        assert!(records[0].payload.get("truncated").is_none());
        assert_eq!(records[1].payload["truncated"], true);
        assert!(records[1].payload.to_string().len() <= 1024);
        Ok(())
    }
}
