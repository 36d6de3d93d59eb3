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

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::telemetry::outbox::NewRecord;
use crate::telemetry::producer::{LINE_OVERHEAD, MAX_BATCH, Producer, parse_line};

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
    let mut reader = BufReader::with_capacity(256 * 1024, rd);
    // A line may be at most the payload limit plus room for the envelope.
    let max_line = producer.max_payload() + LINE_OVERHEAD;
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
                parsed.push(parse_line(line.trim_end(), producer.max_payload()));
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
