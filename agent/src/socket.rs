//! The local producer socket: newline-delimited JSON records in, one answer line per record out.
//!
//! A line is `{"topic": "…", "value": <JSON>}` with optional `"kind"` (`metric` by default,
//! `log` or `event`), `"level"` (events: `info`, `warning`, `critical`) and `"ts"` (RFC 3339;
//! default: when the agent read the line). The answer is `{"seq": N}` once the record is
//! durable in the outbox, or `{"error": "…"}` naming what was wrong; a bad line never affects
//! other lines or other producers. Lines that arrive together are appended in one transaction,
//! which is what makes high rates possible.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tether_protocol::telemetry::{Kind, Level};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::TelemetryConfig;
use crate::outbox::{NewRecord, Outbox, OutboxError, now_ms};

/// Most lines appended in one transaction.
const MAX_BATCH: usize = 4096;

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

/// Parses and checks one line into a record.
fn parse_line(text: &str, max_payload: usize) -> Result<NewRecord, String> {
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
        Some(t) => {
            let time = humantime::parse_rfc3339_weak(t).map_err(|e| format!("ts {t:?}: {e}"))?;
            let since = time
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("ts {t:?} is before 1970"))?;
            since.as_millis() as i64
        }
        None => now_ms(),
    };
    let payload = line.value.to_string();
    if payload.len() > max_payload {
        return Err(format!(
            "payload of {} bytes exceeds telemetry.max_payload ({max_payload} bytes)",
            payload.len()
        ));
    }
    Ok(NewRecord {
        ts_ms,
        kind: line.kind,
        topic: line.topic,
        level: line.level,
        payload,
    })
}

/// Binds the socket (replacing a stale one) with permissions `mode` and serves producers.
pub async fn serve(
    path: PathBuf,
    mode: u32,
    outbox: Arc<Mutex<Outbox>>,
    cfg: TelemetryConfig,
) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    tracing::info!("telemetry socket at {}", path.display());
    loop {
        let (stream, _) = listener.accept().await?;
        let (outbox, cfg) = (outbox.clone(), cfg.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_producer(stream, outbox, cfg).await {
                tracing::debug!("telemetry producer: {e}");
            }
        });
    }
}

async fn append(
    outbox: &Arc<Mutex<Outbox>>,
    records: Vec<NewRecord>,
) -> Result<Vec<u64>, OutboxError> {
    let outbox = outbox.clone();
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

async fn serve_producer(
    stream: UnixStream,
    outbox: Arc<Mutex<Outbox>>,
    cfg: TelemetryConfig,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::with_capacity(256 * 1024, rd);
    // A line may be at most the payload limit plus room for the envelope.
    let max_line = cfg.max_payload + 64 * 1024;
    let mut line = String::new();
    loop {
        // Gather what has already arrived (up to MAX_BATCH lines) into one transaction.
        let mut parsed: Vec<Result<NewRecord, String>> = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(max_line as u64 + 1)
                .read_line(&mut line)
                .await?;
            if n == 0 {
                break;
            }
            if line.len() > max_line && !line.ends_with('\n') {
                // Skip the rest of an over-long line so the next one parses.
                let mut rest = Vec::new();
                reader.read_until(b'\n', &mut rest).await?;
                parsed.push(Err(format!("line longer than {max_line} bytes")));
            } else if !line.trim().is_empty() {
                parsed.push(parse_line(line.trim_end(), cfg.max_payload));
            }
            if parsed.len() >= MAX_BATCH || !reader.buffer().contains(&b'\n') {
                break;
            }
        }
        if parsed.is_empty() {
            return Ok(());
        }
        let good: Vec<NewRecord> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let seqs = if good.is_empty() {
            Ok(Vec::new())
        } else {
            append(&outbox, good).await
        };
        let mut out = String::new();
        let mut next_seq = seqs.as_ref().ok().map(|s| s.iter());
        for p in &parsed {
            let answer = match (p, &seqs, next_seq.as_mut()) {
                (Err(e), _, _) => serde_json::json!({ "error": e }),
                (Ok(_), Ok(_), Some(it)) => match it.next() {
                    Some(seq) => serde_json::json!({ "seq": seq }),
                    None => serde_json::json!({ "error": "internal: missing sequence number" }),
                },
                (Ok(_), Err(e), _) => serde_json::json!({ "error": e.to_string() }),
                (Ok(_), Ok(_), None) => {
                    serde_json::json!({ "error": "internal: missing sequence number" })
                }
            };
            out.push_str(&answer.to_string());
            out.push('\n');
        }
        wr.write_all(out.as_bytes()).await?;
    }
}

/// Default socket path in `state_dir`.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("telemetry.sock")
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
