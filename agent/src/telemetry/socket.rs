//! The local producer socket: newline-delimited JSON records in, one answer line per record out.
//!
//! A line is `{"topic": "…", "value": <JSON>}` with optional `"kind"` (`metric` by default,
//! `log` or `event`), `"level"` (events: `info`, `warning`, `critical`) and `"ts"` (RFC 3339;
//! default: when the agent read the line). The answer is `{"seq": N}` once the record is
//! durable in the outbox, or `{"error": "…"}` naming what was wrong; a bad line never affects
//! other lines or other producers: a line that is not UTF-8, or longer than the payload limit
//! plus room for its envelope, is answered with an error (the rest of an over-long line is read
//! and dropped, never held in memory). Lines that arrive together are appended in one
//! transaction, which is what makes high rates possible.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use crate::telemetry::line_reader::LineReader;
use crate::telemetry::outbox::NewRecord;
use crate::telemetry::producer::{MAX_BATCH, Producer};
use crate::telemetry::record_line::parse_line;

/// Binds the socket (replacing a stale one) with permissions `mode` and serves producers.
///
/// The socket is created under the agent's umask (owner only) and then given `mode`
/// (`telemetry.socket_mode`, 0660 by default), which only ever widens it: producers in the
/// agent's group may connect; nobody else may.
pub async fn serve(path: PathBuf, mode: u32, producer: Producer) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    tracing::info!("telemetry socket at {}", path.display());
    loop {
        let (stream, _) = listener.accept().await?;
        let producer = producer.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_producer(stream, producer).await {
                tracing::debug!("telemetry producer: {e}");
            }
        });
    }
}

async fn serve_producer(stream: UnixStream, producer: Producer) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    // A line may be at most the payload limit plus room for the envelope.
    let mut reader = LineReader::with_capacity(256 * 1024, rd, producer.max_line());
    loop {
        // What has already arrived (up to MAX_BATCH lines) goes into one transaction.
        let lines = reader.next_batch(MAX_BATCH).await?;
        let mut parsed: Vec<Result<NewRecord, String>> = Vec::new();
        for line in &lines {
            if line.truncated {
                parsed.push(Err(format!("line longer than {} bytes", reader.max_line())));
                continue;
            }
            match std::str::from_utf8(&line.bytes) {
                Ok(text) if text.trim().is_empty() => {}
                Ok(text) => parsed.push(parse_line(text.trim_end(), producer.max_payload())),
                Err(_) => parsed.push(Err("line is not UTF-8".into())),
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        if parsed.is_empty() {
            continue;
        }
        let good: Vec<NewRecord> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let seqs = if good.is_empty() {
            Ok(Vec::new())
        } else {
            producer.append(good).await
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
