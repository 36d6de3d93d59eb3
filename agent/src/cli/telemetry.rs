//! The producer and status commands of `agent telemetry` and `agent notify`: they work on the
//! outbox file directly (SQLite is safe to share with the running agent), so producing works
//! whether or not `agent run` is up.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use tether_protocol::telemetry::{Kind, Level};

use crate::config::AgentConfig;
use crate::telemetry::producer::MAX_BATCH;
use crate::telemetry::record_line::{check_payload, max_line, parse_line, parse_rfc3339_ms};

/// `agent telemetry …`
#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// Queue one measurement (or log line) durably; prints its sequence number. With --batch,
    /// queue newline-delimited JSON records from stdin (the producer socket's line format).
    #[command(after_help = "Examples:\n  \
        agent telemetry send sensors/temperature 21.5\n  \
        agent telemetry send sensors/door '{\"open\":true}' --ts 2026-01-31T12:00:00.250Z\n  \
        printf '{\"topic\":\"t\",\"value\":1}\\n' | agent telemetry send --batch")]
    Send {
        /// Topic, e.g. sensors/temperature.
        #[arg(required_unless_present = "batch")]
        topic: Option<String>,
        /// Value: a number or any JSON; with --kind log, text that is not JSON is sent as a
        /// string (`hello` is `"hello"`).
        #[arg(required_unless_present = "batch")]
        value: Option<String>,
        /// Measurement time (RFC 3339) [default: now].
        #[arg(long, conflicts_with = "batch")]
        ts: Option<String>,
        /// Record kind.
        #[arg(long, default_value = "metric", value_parser = ["metric", "log"])]
        kind: String,
        /// Read records from stdin, one JSON object per line ({"topic": …, "value": …} with
        /// optional "kind", "level", "ts"); prints one answer per line, {"seq": N} or
        /// {"error": …}; exits 1 if any line was refused.
        #[arg(long, conflicts_with_all = ["topic", "value"])]
        batch: bool,
    },
    /// Show the outbox: queued records and bytes, oldest age, drops, last acknowledgement.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `agent telemetry send|status`.
pub fn telemetry(config: &AgentConfig, cmd: &TelemetryCommand) -> Result<ExitCode> {
    match cmd {
        TelemetryCommand::Send { batch: true, .. } => send_batch(config),
        TelemetryCommand::Send {
            topic,
            value,
            ts,
            kind,
            batch: false,
        } => {
            let (Some(topic), Some(value)) = (topic, value) else {
                anyhow::bail!("TOPIC and VALUE are required without --batch");
            };
            // A log line is text: asking for JSON quotes around it only trips people up.
            let payload: serde_json::Value = match serde_json::from_str(value) {
                Ok(v) => v,
                Err(_) if kind == "log" => serde_json::Value::String(value.clone()),
                Err(e) => {
                    return Err(anyhow::anyhow!(e).context(format!(
                        "VALUE {value:?} is neither a number nor JSON (quote text as '\"text\"', or send it with --kind log)"
                    )));
                }
            };
            let ts_ms = match ts {
                Some(t) => parse_rfc3339_ms(t).map_err(|e| anyhow::anyhow!("--{e}"))?,
                None => tether_protocol::clock::now_ms(),
            };
            let kind = kind.parse().map_err(anyhow::Error::msg)?;
            let seq = queue(config, kind, topic, None, &payload, ts_ms)?;
            outln!("{seq}")?;
            Ok(ExitCode::SUCCESS)
        }
        TelemetryCommand::Status { json } => show_status(config, *json),
    }
}

/// `agent notify`: queues an event with a level, a message and optional JSON data.
pub fn notify(
    config: &AgentConfig,
    level: &str,
    topic: &str,
    data: Option<&str>,
    message: &str,
) -> Result<ExitCode> {
    let data: Option<serde_json::Value> = match data {
        Some(d) => {
            Some(serde_json::from_str(d).with_context(|| format!("--data {d:?} is not JSON"))?)
        }
        None => None,
    };
    let mut payload = serde_json::json!({ "message": message });
    if let Some(d) = data {
        payload["data"] = d;
    }
    let level: Level = level.parse().map_err(anyhow::Error::msg)?;
    let seq = queue(
        config,
        Kind::Event,
        topic,
        Some(level),
        &payload,
        tether_protocol::clock::now_ms(),
    )?;
    outln!("{seq}")?;
    Ok(ExitCode::SUCCESS)
}

/// Appends one record to the outbox durably and returns its sequence number.
pub fn queue(
    config: &AgentConfig,
    kind: Kind,
    topic: &str,
    level: Option<Level>,
    payload: &serde_json::Value,
    ts_ms: i64,
) -> Result<u64> {
    if topic.is_empty() {
        anyhow::bail!("the topic is empty");
    }
    let text = payload.to_string();
    check_payload(&text, config.telemetry.max_payload).map_err(anyhow::Error::msg)?;
    let mut outbox = open_outbox(config)?;
    let record = crate::telemetry::outbox::NewRecord {
        ts_ms,
        kind,
        topic: topic.to_string(),
        level,
        payload: text,
    };
    let seqs = outbox.append(&[record])?;
    seqs.first()
        .copied()
        .context("the outbox assigned no sequence number")
}

/// Opens the outbox for a producer command, creating the state directory if needed.
fn open_outbox(config: &AgentConfig) -> Result<crate::telemetry::outbox::Outbox> {
    tether_protocol::private_fs::create_dir(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let path = crate::telemetry::outbox::path(&config.state_dir);
    crate::telemetry::outbox::Outbox::open(
        &path,
        crate::telemetry::outbox::Limits::from_config(&config.telemetry),
    )
    .with_context(|| format!("opening the outbox {}", path.display()))
}

/// `agent telemetry send --batch`: stdin lines in groups of up to [`MAX_BATCH`], each group
/// one transaction, one answer line per input line.
fn send_batch(config: &AgentConfig) -> Result<ExitCode> {
    use std::io::{BufRead, Read, Write};
    let mut outbox = open_outbox(config)?;
    let max_payload = config.telemetry.max_payload;
    let max_line = max_line(max_payload);
    let mut input = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut line_no, mut refused) = (0usize, 0usize);
    let mut line = String::new();
    loop {
        let mut parsed: Vec<(usize, Result<crate::telemetry::outbox::NewRecord, String>)> =
            Vec::new();
        let mut eof = false;
        while parsed.len() < MAX_BATCH {
            line.clear();
            let n = (&mut input)
                .take(max_line as u64 + 1)
                .read_line(&mut line)
                .context("reading stdin")?;
            if n == 0 {
                eof = true;
                break;
            }
            line_no += 1;
            if line.len() > max_line && !line.ends_with('\n') {
                skip_line(&mut input).context("reading stdin")?;
                parsed.push((line_no, Err(format!("line longer than {max_line} bytes"))));
            } else if !line.trim().is_empty() {
                parsed.push((line_no, parse_line(line.trim_end(), max_payload)));
            }
        }
        let good: Vec<_> = parsed
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok().cloned())
            .collect();
        let mut seqs = outbox.append(&good)?.into_iter();
        for (n, p) in &parsed {
            let answer = match p {
                Ok(_) => match seqs.next() {
                    Some(seq) => serde_json::json!({ "seq": seq }),
                    None => anyhow::bail!("the outbox assigned too few sequence numbers"),
                },
                Err(e) => {
                    refused += 1;
                    eprintln!("error: stdin line {n}: {e}");
                    serde_json::json!({ "error": format!("line {n}: {e}") })
                }
            };
            writeln!(out, "{answer}")?;
        }
        if eof {
            break;
        }
    }
    out.flush()?;
    if refused > 0 {
        eprintln!("error: {refused} of {line_no} lines refused");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and drops the rest of a line, holding no more of it than the read buffer.
fn skip_line(input: &mut impl std::io::BufRead) -> std::io::Result<()> {
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                input.consume(n);
            }
        }
    }
}

/// `agent telemetry status`: reads the outbox without creating one.
fn show_status(config: &AgentConfig, json: bool) -> Result<ExitCode> {
    let path = crate::telemetry::outbox::path(&config.state_dir);
    // A read must not create state: no outbox yet means nothing was ever queued.
    let st = if path.exists() {
        crate::telemetry::outbox::Outbox::open(
            &path,
            crate::telemetry::outbox::Limits::from_config(&config.telemetry),
        )
        .with_context(|| format!("opening the outbox {}", path.display()))?
        .status()?
    } else {
        crate::telemetry::outbox::OutboxStatus::default()
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&st)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ago = |ms: Option<i64>| {
        ms.map(|m| {
            let secs = (tether_protocol::clock::now_ms() - m).max(0) / 1000;
            format!("{secs}s ago")
        })
        .unwrap_or_else(|| "-".into())
    };
    outln!("queued records:     {}", st.queued_rows)?;
    outln!("queued bytes:       {}", st.queued_bytes)?;
    outln!("oldest queued:      {}", ago(st.oldest_ts_ms))?;
    outln!("upload rate:        {:.0} records/s", st.upload_rate)?;
    outln!("dropped (total):    {}", st.dropped_total)?;
    outln!("acknowledged up to: {}", st.acked_upto)?;
    outln!("last acknowledged:  {}", ago(st.last_ack_ms))?;
    outln!("last sequence:      {}", st.last_seq)?;
    Ok(ExitCode::SUCCESS)
}
