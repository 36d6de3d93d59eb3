//! The agent's command line: `agent enroll`, `agent run`, `agent status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{self, AgentConfig};
use crate::enroll::{self, EnrollOptions};
use crate::forward::ForwardPolicy;
use crate::link::{self, LinkContext};
use crate::producer::{
    LINE_OVERHEAD, MAX_BATCH, Producer, check_payload, parse_line, parse_rfc3339_ms,
};
use crate::server::ServerSettings;
use crate::status::{self, LinkState};
use crate::{enrollment, identity};

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
        /// Value: a number or any JSON.
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
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
            let (record, status) = enroll::enroll(&config, &opts)
                .await
                .with_context(|| format!("enrolling with {url}"))?;
            println!(
                "enrolled as {} ({}) in tenant {}; status {}",
                record.name, record.device_id, record.tenant, status
            );
            println!("relay host key {} pinned", record.relay_fingerprint);
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
            send_batch(&config)
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
            let payload: serde_json::Value = serde_json::from_str(value)
                .with_context(|| format!("VALUE {value:?} is neither a number nor JSON"))?;
            let ts_ms = match ts {
                Some(t) => parse_rfc3339_ms(t).map_err(|e| anyhow::anyhow!("--{e}"))?,
                None => crate::outbox::now_ms(),
            };
            let kind = kind.parse().map_err(anyhow::Error::msg)?;
            let seq = queue(&config, kind, topic, None, &payload, ts_ms)?;
            println!("{seq}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Telemetry(TelemetryCommand::Status { json }) => {
            let config = load_config(&cli)?;
            show_telemetry_status(&config, *json)
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
            let seq = queue(
                &config,
                tether_protocol::telemetry::Kind::Event,
                topic,
                Some(level),
                &payload,
                crate::outbox::now_ms(),
            )?;
            println!("{seq}");
            Ok(ExitCode::SUCCESS)
        }
        Command::SftpServer { home } => {
            crate::sftp::serve_stdio(home.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_agent(config: AgentConfig) -> Result<()> {
    let enrollment = enrollment::load(&config.state_dir)?;
    let key = identity::load(&config.state_dir).context("loading the device key")?;
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
    let ctx = LinkContext {
        config,
        enrollment,
        key: Arc::new(key),
        server: Arc::new(server),
        policy: Arc::new(policy),
    };
    let socket_path = ctx
        .config
        .telemetry
        .socket
        .clone()
        .unwrap_or_else(|| crate::socket::default_path(&ctx.config.state_dir));
    let outbox_path = crate::outbox::path(&ctx.config.state_dir);
    let outbox =
        crate::outbox::Outbox::open(&outbox_path, crate::upload::limits(&ctx.config.telemetry))
            .with_context(|| format!("opening the outbox {}", outbox_path.display()))?;
    let producer = Producer::new(
        Arc::new(std::sync::Mutex::new(outbox)),
        ctx.config.telemetry.max_payload,
    );
    let socket = tokio::spawn(crate::socket::serve(
        socket_path.clone(),
        ctx.config.telemetry.socket_mode_bits(),
        producer.clone(),
    ));
    let interval = ctx.config.telemetry.system_metrics_interval;
    if !interval.is_zero() {
        tokio::spawn(collect_system_metrics(producer.clone(), interval));
    }
    if !ctx.config.telemetry.journal_units.is_empty() {
        tokio::spawn(crate::journal::follow(
            producer.clone(),
            ctx.config.telemetry.journal_units.clone(),
            ctx.config.state_dir.clone(),
        ));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tether_protocol::shutdown::stop_signal().await;
        tracing::info!("stopping");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stop_tx.send(true);
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let result = tokio::select! {
        r = link::run(ctx, stop_rx) => r.map_err(anyhow::Error::from),
        r = socket => match r {
            Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("telemetry socket {}", socket_path.display()))),
            _ => Err(anyhow::anyhow!("telemetry socket task ended")),
        },
    };
    let _ = std::fs::remove_file(&socket_path);
    result
}

/// Samples system metrics every `interval` into the outbox, for as long as the agent runs.
async fn collect_system_metrics(producer: Producer, interval: std::time::Duration) {
    let mut collector = Some(crate::sysmetrics::Collector::new());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(mut c) = collector.take() else {
            return;
        };
        // statvfs on a hung network mount blocks; keep it off the async threads.
        let Ok((c, samples)) = tokio::task::spawn_blocking(move || {
            let samples = c.sample();
            (c, samples)
        })
        .await
        else {
            tracing::error!("system metrics collector failed; stopping it");
            return;
        };
        collector = Some(c);
        let now = crate::outbox::now_ms();
        let records = samples
            .into_iter()
            .map(|s| crate::outbox::NewRecord {
                ts_ms: now,
                kind: tether_protocol::telemetry::Kind::Metric,
                topic: s.topic,
                level: None,
                payload: s.value.to_string(),
            })
            .collect::<Vec<_>>();
        if let Err(e) = producer.append(records).await {
            tracing::warn!("queuing system metrics: {e}");
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
    let record = match enrollment::load(&config.state_dir) {
        Ok(r) => Some(r),
        Err(enrollment::EnrollmentError::NotEnrolled(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let link = status::read(&config.state_dir);
    let device_fingerprint = identity::load(&config.state_dir)
        .ok()
        .map(|k| identity::fingerprint(&k));
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
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!(
            "enrolled:           {}",
            if report.enrolled { "yes" } else { "no" }
        );
        println!("device id:          {}", dash(&report.device_id));
        println!("name:               {}", dash(&report.name));
        println!("tenant:             {}", dash(&report.tenant));
        println!("relay:              {}", dash(&report.relay_url));
        println!("relay host key:     {}", dash(&report.relay_fingerprint));
        println!("device key:         {}", dash(&report.device_fingerprint));
        println!(
            "link:               {} since {}",
            report.link,
            dash(&report.since)
        );
        if let Some(e) = &report.last_error {
            println!("last error:         {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends one record to the outbox durably and returns its sequence number.
fn queue(
    config: &AgentConfig,
    kind: tether_protocol::telemetry::Kind,
    topic: &str,
    level: Option<tether_protocol::telemetry::Level>,
    payload: &serde_json::Value,
    ts_ms: i64,
) -> Result<u64> {
    if topic.is_empty() {
        anyhow::bail!("the topic is empty");
    }
    let text = payload.to_string();
    check_payload(&text, config.telemetry.max_payload).map_err(anyhow::Error::msg)?;
    let mut outbox = open_outbox(config)?;
    let record = crate::outbox::NewRecord {
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
fn open_outbox(config: &AgentConfig) -> Result<crate::outbox::Outbox> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let path = crate::outbox::path(&config.state_dir);
    crate::outbox::Outbox::open(&path, crate::upload::limits(&config.telemetry))
        .with_context(|| format!("opening the outbox {}", path.display()))
}

/// `agent telemetry send --batch`: stdin lines in groups of up to [`MAX_BATCH`], each group
/// one transaction, one answer line per input line.
fn send_batch(config: &AgentConfig) -> Result<ExitCode> {
    use std::io::{BufRead, Read, Write};
    let mut outbox = open_outbox(config)?;
    let max_payload = config.telemetry.max_payload;
    let max_line = max_payload + LINE_OVERHEAD;
    let mut input = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut line_no, mut refused) = (0usize, 0usize);
    let mut line = String::new();
    loop {
        let mut parsed: Vec<(usize, Result<crate::outbox::NewRecord, String>)> = Vec::new();
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
                let mut rest = Vec::new();
                input
                    .read_until(b'\n', &mut rest)
                    .context("reading stdin")?;
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

fn show_telemetry_status(config: &AgentConfig, json: bool) -> Result<ExitCode> {
    let path = crate::outbox::path(&config.state_dir);
    // A read must not create state: no outbox yet means nothing was ever queued.
    let st = if path.exists() {
        crate::outbox::Outbox::open(&path, crate::upload::limits(&config.telemetry))
            .with_context(|| format!("opening the outbox {}", path.display()))?
            .status()?
    } else {
        crate::outbox::OutboxStatus::default()
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    let ago = |ms: Option<i64>| {
        ms.map(|m| {
            let secs = (crate::outbox::now_ms() - m).max(0) / 1000;
            format!("{secs}s ago")
        })
        .unwrap_or_else(|| "-".into())
    };
    println!("queued records:     {}", st.queued_rows);
    println!("queued bytes:       {}", st.queued_bytes);
    println!("oldest queued:      {}", ago(st.oldest_ts_ms));
    println!("upload rate:        {:.0} records/s", st.upload_rate);
    println!("dropped (total):    {}", st.dropped_total);
    println!("acknowledged up to: {}", st.acked_upto);
    println!("last acknowledged:  {}", ago(st.last_ack_ms));
    println!("last sequence:      {}", st.last_seq);
    Ok(ExitCode::SUCCESS)
}
