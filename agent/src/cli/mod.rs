//! The agent's command line: `agent enroll`, `agent run`, `agent status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::access::ssh_server::ServerSettings;
use crate::config::{self, AgentConfig};
use crate::identity::{device_key, enrollment_record};
use crate::link::enroll_exchange::{self, EnrollOptions};
use crate::link::forward::ForwardPolicy;
use crate::link::run::{self as link_run, LinkContext};
use crate::link::status::{self, LinkState};
use crate::telemetry::producer::{Producer, parse_rfc3339_ms};

pub mod app;
pub mod ota;
pub mod telemetry;

/// tether agent: links this board to a tether relay and serves remote shells through it.
#[derive(Debug, Parser)]
#[command(name = "agent", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: /etc/tether/agent.yaml].
    #[arg(long, global = true, env = "TETHER_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Agent subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register this device with a relay using an enrollment token.
    Enroll {
        /// Relay URL: ssh://HOST[:PORT] or ws(s)://HOST[:PORT]/v1/link.
        url: String,
        /// Enrollment token from `relay token create`.
        #[arg(long, env = "TETHER_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Device name [default: the host name].
        #[arg(long)]
        name: Option<String>,
        /// Enroll again although this device is enrolled already.
        #[arg(long)]
        force: bool,
        /// Refuse the relay unless its host key has this fingerprint (SHA256:…).
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Connect to the relay and stay connected, serving sessions, until stopped.
    Run,
    /// Show enrollment and link state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue telemetry for the relay, and show the outbox.
    #[command(subcommand)]
    Telemetry(TelemetryCommand),
    /// Applications from recipes: validate, deploy, list, start, stop, logs.
    #[command(subcommand)]
    App(crate::cli::app::AppCommand),
    /// The device key: rotate it.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write an ed25519 key pair for signing OS update bundles: NAME.key and NAME.pub.
    Keygen {
        /// Path and base name of the key files.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// OS update bundles: create, verify, inspect.
    #[command(subcommand)]
    Bundle(crate::cli::ota::BundleCommand),
    /// A/B OS updates on this board: install, status, check, commit, rollback.
    #[command(subcommand)]
    Ota(crate::cli::ota::OtaCommand),
    /// Queue an event (a notification with a level) for the relay.
    Notify {
        /// Severity.
        #[arg(long, default_value = "info", value_parser = ["info", "warning", "critical"])]
        level: String,
        /// Event topic.
        #[arg(long, default_value = "notification")]
        topic: String,
        /// Extra JSON data attached to the event.
        #[arg(long)]
        data: Option<String>,
        /// The message.
        message: String,
    },
    /// Serve SFTP on stdin/stdout (used by the embedded SSH server to drop privileges).
    #[command(hide = true)]
    SftpServer {
        /// Directory relative paths start from.
        #[arg(long)]
        home: PathBuf,
    },
}

/// `agent keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Replace the device key with a new one: the relay learns the new key over the link,
    /// the agent switches to it, and the relay retires the old one. A rotation cut short
    /// leaves a key the relay accepts.
    Rotate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the device key's fingerprint.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

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

/// Parses arguments, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::SftpServer { .. }));
    if touches_state(&cli.command) {
        // Everything the agent creates in its state directory (outbox, records, logs, staged
        // artifacts and downloads) is private, including files created without an explicit
        // mode; sessions and applications get the login umask back (account::prepare_child).
        tether_protocol::private_fs::restrict_umask();
    }
    // Both ring and aws-lc-rs may be compiled in through dependencies; pick one explicitly so
    // rustls never has to guess (it panics when it would have to).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // `agent app list | head -1`: the reader left, which is not our failure.
        Err(e) if tether_protocol::report::is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", tether_protocol::report::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Whether `command` creates files in the state directory. The others write files for the
/// person running them (bundles, public keys, files uploaded over sftp) and keep their umask.
fn touches_state(command: &Command) -> bool {
    !matches!(
        command,
        Command::Keygen { .. } | Command::Bundle(_) | Command::SftpServer { .. }
    )
}

fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a person watching: a log file or journal gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn load_config(cli: &Cli) -> Result<AgentConfig> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), false),
    };
    Ok(config::load_or_default(&path, explicit)?)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Enroll {
            url,
            token,
            name,
            force,
            fingerprint,
        } => {
            let config = load_config(&cli)?;
            let opts = EnrollOptions {
                url: url.clone(),
                token: token.clone(),
                name: name.clone(),
                force: *force,
                fingerprint: fingerprint.clone(),
            };
            let (record, status) = enroll_exchange::enroll(&config, &opts)
                .await
                .with_context(|| format!("enrolling with {url}"))?;
            outln!(
                "enrolled as {} ({}) in tenant {}; status {}",
                record.name,
                record.device_id,
                record.tenant,
                status
            )?;
            outln!("relay host key {} pinned", record.relay_fingerprint)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Rotate { json }) => {
            let config = load_config(&cli)?;
            let rotated = crate::link::key_rotation::rotate(&config)
                .await
                .context("rotating the device key")?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&rotated)?)?;
            } else {
                outln!(
                    "device key rotated: {} retired, {} in use",
                    rotated.old,
                    rotated.new
                )?;
                if !rotated.confirmed {
                    outln!("the relay switches to the new key at the agent's next login")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Show { json }) => {
            let config = load_config(&cli)?;
            let key = device_key::load(&config.state_dir).context("loading the device key")?;
            let fingerprint = device_key::fingerprint(&key);
            let path = device_key::key_path(&config.state_dir);
            if *json {
                outln!(
                    "{}",
                    serde_json::json!({ "fingerprint": fingerprint, "path": path })
                )?;
            } else {
                outln!("{fingerprint} {}", path.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let config = load_config(&cli)?;
            run_agent(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let config = load_config(&cli)?;
            show_status(&config, *json)
        }
        Command::Telemetry(TelemetryCommand::Send { batch: true, .. }) => {
            let config = load_config(&cli)?;
            crate::cli::telemetry::send_batch(&config)
        }
        Command::Telemetry(TelemetryCommand::Send {
            topic,
            value,
            ts,
            kind,
            batch: false,
        }) => {
            let config = load_config(&cli)?;
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
            let seq = crate::cli::telemetry::queue(&config, kind, topic, None, &payload, ts_ms)?;
            outln!("{seq}")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Telemetry(TelemetryCommand::Status { json }) => {
            let config = load_config(&cli)?;
            crate::cli::telemetry::show_status(&config, *json)
        }
        Command::Notify {
            level,
            topic,
            data,
            message,
        } => {
            let config = load_config(&cli)?;
            let data: Option<serde_json::Value> = match data {
                Some(d) => Some(
                    serde_json::from_str(d).with_context(|| format!("--data {d:?} is not JSON"))?,
                ),
                None => None,
            };
            let mut payload = serde_json::json!({ "message": message });
            if let Some(d) = data {
                payload["data"] = d;
            }
            let level = level.parse().map_err(anyhow::Error::msg)?;
            let seq = crate::cli::telemetry::queue(
                &config,
                tether_protocol::telemetry::Kind::Event,
                topic,
                Some(level),
                &payload,
                tether_protocol::clock::now_ms(),
            )?;
            outln!("{seq}")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => crate::cli::ota::keygen(out),
        Command::Bundle(cmd) => crate::cli::ota::bundle(cmd),
        Command::Ota(cmd) => {
            let config = load_config(&cli)?;
            crate::cli::ota::ota(&config, cmd)
        }
        Command::App(cmd) => {
            let config = load_config(&cli)?;
            crate::cli::app::run(&config, cmd).await
        }
        Command::SftpServer { home } => {
            crate::access::sftp::serve_stdio(home.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_agent(config: AgentConfig) -> Result<()> {
    warn_if_shared(&config.state_dir);
    let enrollment = enrollment_record::load(&config.state_dir)?;
    let key = device_key::load(&config.state_dir).context("loading the device key")?;
    let server = ServerSettings::new(config.shell.clone(), key.clone())
        .context("preparing the embedded SSH server (shell settings)")?;
    let policy = ForwardPolicy::new(&config.forward.allow);
    tracing::info!(
        "agent {} starting as {} ({}) for relay {}",
        crate::VERSION,
        enrollment.name,
        enrollment.device_id,
        enrollment.relay_url
    );
    let mut ctx = LinkContext {
        config,
        enrollment,
        key: Arc::new(key),
        server: Arc::new(server),
        policy: Arc::new(policy),
        supervisor: None,
    };
    let socket_path = ctx
        .config
        .telemetry
        .socket
        .clone()
        .unwrap_or_else(|| crate::telemetry::socket::default_path(&ctx.config.state_dir));
    let outbox_path = crate::telemetry::outbox::path(&ctx.config.state_dir);
    let outbox = crate::telemetry::outbox::Outbox::open(
        &outbox_path,
        crate::telemetry::upload::limits(&ctx.config.telemetry),
    )
    .with_context(|| format!("opening the outbox {}", outbox_path.display()))?;
    let producer = Producer::new(
        Arc::new(std::sync::Mutex::new(outbox)),
        ctx.config.telemetry.max_payload,
    );
    let socket = tokio::spawn(crate::telemetry::socket::serve(
        socket_path.clone(),
        ctx.config.telemetry.socket_mode_bits(),
        producer.clone(),
    ));
    let interval = ctx.config.telemetry.system_metrics_interval;
    if !interval.is_zero() {
        tokio::spawn(crate::telemetry::sysmetrics::run(
            producer.clone(),
            interval,
        ));
    }
    if !ctx.config.telemetry.journal_units.is_empty() {
        tokio::spawn(crate::telemetry::journal::follow(
            producer.clone(),
            ctx.config.telemetry.journal_units.clone(),
            ctx.config.state_dir.clone(),
        ));
    }
    let supervisor = crate::apps::supervisor::Supervisor::new(
        ctx.config.state_dir.clone(),
        ctx.config.apps.clone(),
        ctx.enrollment.device_id.clone(),
        Some(producer.clone()),
    )
    .context("starting the application supervisor (apps settings)")?;
    ctx.supervisor = Some(supervisor.clone());
    let recovering = supervisor.clone();
    tokio::spawn(async move {
        if let Err(e) = recovering.recover().await {
            tracing::error!("bringing components back: {e}");
        }
    });
    if ctx.config.ota.compatible.is_some() {
        // A boot after an update: commit it if healthy, or notice the fallback.
        let config = ctx.config.clone();
        tokio::task::spawn_blocking(move || match crate::ota::update::Ota::open(&config) {
            Ok(ota) => match ota.check_after_boot() {
                Ok(Some(outcome)) => tracing::warn!("OS update: {outcome}"),
                Ok(None) => {}
                Err(e) => tracing::error!("OS update check: {e}"),
            },
            Err(e) => tracing::error!("OS updates: {e}"),
        });
    }
    let control_path = crate::apps::control_socket::path(&ctx.config.state_dir);
    let control = tokio::spawn(crate::apps::control_socket::serve(
        control_path.clone(),
        supervisor.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tether_protocol::shutdown::stop_signal().await;
        tracing::info!("stopping");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stop_tx.send(true);
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let result = tokio::select! {
        r = link_run::run(ctx, stop_rx) => r.map_err(anyhow::Error::from),
        r = socket => match r {
            Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("telemetry socket {}", socket_path.display()))),
            _ => Err(anyhow::anyhow!("telemetry socket task ended")),
        },
        r = control => match r {
            Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("control socket {}", control_path.display()))),
            _ => Err(anyhow::anyhow!("control socket task ended")),
        },
    };
    supervisor.shutdown().await;
    let _ = std::fs::remove_file(&socket_path);
    let _ = std::fs::remove_file(&control_path);
    result
}

/// Logs a warning when group or others may list or write the state directory: the key and
/// outbox are private by their own modes, but others must not see or replace its entries. The
/// systemd unit's StateDirectoryMode= keeps it 0700; a directory made by hand may not be.
/// Search permission alone is fine: the supervisor adds it when applications run as apps.user.
fn warn_if_shared(state_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(state_dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o066 != 0 {
            tracing::warn!(
                "state directory {} has mode {mode:04o}; run `chmod 700 {}`",
                state_dir.display(),
                state_dir.display()
            );
        }
    }
}

/// What `agent status --json` prints.
#[derive(Debug, Serialize)]
struct StatusReport {
    enrolled: bool,
    device_id: Option<String>,
    name: Option<String>,
    tenant: Option<String>,
    relay_url: Option<String>,
    relay_fingerprint: Option<String>,
    device_fingerprint: Option<String>,
    link: LinkState,
    since: Option<String>,
    last_error: Option<String>,
}

fn show_status(config: &AgentConfig, json: bool) -> Result<ExitCode> {
    let record = match enrollment_record::load(&config.state_dir) {
        Ok(r) => Some(r),
        Err(enrollment_record::EnrollmentError::NotEnrolled(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let link = status::read(&config.state_dir);
    let device_fingerprint = device_key::load(&config.state_dir)
        .ok()
        .map(|k| device_key::fingerprint(&k));
    let report = StatusReport {
        enrolled: record.is_some(),
        device_id: record.as_ref().map(|r| r.device_id.clone()),
        name: record.as_ref().map(|r| r.name.clone()),
        tenant: record.as_ref().map(|r| r.tenant.clone()),
        relay_url: record.as_ref().map(|r| r.relay_url.clone()),
        relay_fingerprint: record.as_ref().map(|r| r.relay_fingerprint.clone()),
        device_fingerprint,
        link: link.state,
        since: (!link.since.is_empty()).then_some(link.since),
        last_error: link.last_error,
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        outln!(
            "enrolled:           {}",
            if report.enrolled { "yes" } else { "no" }
        )?;
        outln!("device id:          {}", dash(&report.device_id))?;
        outln!("name:               {}", dash(&report.name))?;
        outln!("tenant:             {}", dash(&report.tenant))?;
        outln!("relay:              {}", dash(&report.relay_url))?;
        outln!("relay host key:     {}", dash(&report.relay_fingerprint))?;
        outln!("device key:         {}", dash(&report.device_fingerprint))?;
        outln!(
            "link:               {} since {}",
            report.link,
            dash(&report.since)
        )?;
        if let Some(e) = &report.last_error {
            outln!("last error:         {e}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (unique argument ids, valid defaults, …) for every
    /// subcommand, which otherwise only fire when that subcommand is used.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
