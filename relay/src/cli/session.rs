//! `relay session …`: engineers' recorded sessions, read from the store and the recordings
//! directory.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::output::{dash, escape_controls, print_json, table};
use crate::config::RelayConfig;
use crate::recording::cast;
use crate::store::{SessionQuery, Store};

/// `relay session …`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Recorded sessions, newest first.
    List {
        /// Only sessions on this device (id or name).
        #[arg(long)]
        device: Option<String>,
        /// Only this engineer's sessions.
        #[arg(long)]
        user: Option<String>,
        /// Only this tenant's sessions.
        #[arg(long)]
        tenant: Option<String>,
        /// Most sessions to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One session's record: what it was, how it ended, its file operations.
    Show {
        /// Session id (`ses_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a terminal session's recording in this terminal.
    Play {
        /// Session id (`ses_…`).
        id: String,
        /// Playback speed (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Shorten pauses longer than this (seconds), as `asciinema play -i`.
        #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
        max_pause: f64,
    },
}

/// Runs a `relay session` command.
pub(super) fn run(
    out: &mut dyn Write,
    store: &Store,
    config: &RelayConfig,
    cmd: SessionCommand,
) -> Result<()> {
    match cmd {
        SessionCommand::List {
            device,
            user,
            tenant,
            limit,
            json,
        } => {
            let device_id = match device {
                Some(d) => Some(store.resolve_device(&d)?.id),
                None => None,
            };
            let tenant_id = match tenant {
                Some(t) => Some(
                    store
                        .tenant_by_name(&t)?
                        .with_context(|| format!("no tenant named {t:?}"))?
                        .id,
                ),
                None => None,
            };
            let sessions = store.sessions(&SessionQuery {
                tenant_id,
                device_id,
                engineer: user,
                limit,
            })?;
            if json {
                return print_json(out, &sessions);
            }
            let rows: Vec<Vec<String>> = sessions
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.started_at.clone(),
                        s.engineer.clone(),
                        s.device.clone(),
                        what(s.kind.as_deref(), s.command.as_deref()),
                        s.exit_status
                            .map(|c| c.to_string())
                            .or_else(|| s.exit_signal.clone())
                            .unwrap_or_else(|| "-".into()),
                        dash(&s.end_reason.clone().or_else(|| Some("open".into()))),
                    ]
                })
                .collect();
            out.write_all(
                table(
                    &["ID", "STARTED", "ENGINEER", "DEVICE", "WHAT", "EXIT", "END"],
                    &rows,
                )
                .as_bytes(),
            )?;
            Ok(())
        }
        SessionCommand::Show { id, json } => {
            let (s, _) = store.session(&id, None)?;
            if json {
                return print_json(out, &s);
            }
            let mut lines = vec![
                format!("session   {}", s.id),
                format!("tenant    {}", s.tenant),
                format!("device    {} ({})", s.device, s.device_id),
                format!(
                    "engineer  {} ({}) from {}",
                    s.engineer, s.fingerprint, s.source
                ),
                format!(
                    "what      {}",
                    what(s.kind.as_deref(), s.command.as_deref())
                ),
                format!("started   {}", s.started_at),
                format!("ended     {} ({})", dash(&s.ended_at), dash(&s.end_reason)),
            ];
            if let Some(c) = s.exit_status {
                lines.push(format!("exit      {c}"));
            }
            if let Some(sig) = &s.exit_signal {
                lines.push(format!("signal    {sig}"));
            }
            lines.push(format!("bytes     {} in, {} out", s.bytes_in, s.bytes_out));
            lines.push(format!(
                "recorded  {}",
                if s.recorded { "yes" } else { "no" }
            ));
            for f in s.files.as_array().into_iter().flatten() {
                lines.push(format!(
                    "file      {} {}{} ({} bytes)",
                    f["op"].as_str().unwrap_or("?"),
                    f["path"].as_str().unwrap_or("?"),
                    f["to"]
                        .as_str()
                        .map(|t| format!(" -> {t}"))
                        .unwrap_or_default(),
                    f["bytes"].as_u64().unwrap_or(0)
                ));
            }
            // Commands and paths are the engineer's, signals the device's: one line each.
            for line in lines {
                writeln!(out, "{}", escape_controls(&line))?;
            }
            Ok(())
        }
        SessionCommand::Play {
            id,
            speed,
            max_pause,
        } => {
            if !(speed.is_finite() && speed > 0.0) {
                bail!("--speed must be a positive number, not {speed}");
            }
            if !(max_pause.is_finite() && max_pause >= 0.0) {
                bail!("--max-pause must be zero or more seconds, not {max_pause}");
            }
            let (s, cast_file) = store.session(&id, None)?;
            let Some(name) = cast_file else {
                bail!(
                    "session {id} has no terminal recording ({}); `relay session show {id}` shows its record",
                    what(s.kind.as_deref(), s.command.as_deref())
                );
            };
            let path = config.sessions_dir().join(name);
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening the recording {}", path.display()))?;
            let (_, events) = cast::read(std::io::BufReader::new(file))
                .with_context(|| format!("reading {}", path.display()))?;
            cast::play(&events, out, speed, Duration::from_secs_f64(max_pause))?;
            Ok(())
        }
    }
}

/// A session's kind for people: `shell`, `exec: CMD`, `sftp`.
fn what(kind: Option<&str>, command: Option<&str>) -> String {
    match (kind, command) {
        (Some("exec"), Some(c)) => format!("exec: {c}"),
        (Some(k), _) => k.to_string(),
        (None, _) => "-".into(),
    }
}
