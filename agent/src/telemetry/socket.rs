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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, BufReader};

    type R = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn each_line_gets_its_answer_and_bad_lines_hurt_no_other() -> R {
        let dir = tempfile::tempdir()?;
        let limits = crate::telemetry::outbox::Limits {
            max_rows: 1000,
            max_bytes: 1 << 30,
        };
        let outbox = crate::telemetry::outbox::Outbox::open(&dir.path().join("outbox.db"), limits)?;
        let producer = Producer::new(Arc::new(Mutex::new(outbox)), 1024);
        let max_line = producer.max_line();
        let (client, server) = UnixStream::pair()?;
        let serving = tokio::spawn(serve_producer(server, producer));
        let (rd, mut wr) = client.into_split();

        let mut input = b"{\"topic\":\"t\",\"value\":1}\n\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * max_line));
        input.extend_from_slice(
            b"\n{\"topic\":\"t\",\"value\":\"\xff\"}\n{\"topic\":\"t\",\"value\":2}\n",
        );
        wr.write_all(&input).await?;
        wr.shutdown().await?;

        let mut answers = Vec::new();
        let mut lines = BufReader::new(rd).lines();
        while let Some(line) = lines.next_line().await? {
            answers.push(serde_json::from_str::<serde_json::Value>(&line)?);
        }
        serving.await??;
        // The blank line gets no answer; the others one each, in order.
        assert_eq!(answers.len(), 4, "{answers:?}");
        assert_eq!(answers[0]["seq"], 1);
        let long = answers[1]["error"].as_str().unwrap_or_default();
        assert_eq!(long, format!("line longer than {max_line} bytes"));
        assert_eq!(answers[2]["error"], "line is not UTF-8");
        assert_eq!(answers[3]["seq"], 2);
        Ok(())
    }
}
