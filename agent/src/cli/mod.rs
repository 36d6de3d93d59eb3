//! The command line: parses the arguments, runs one command and maps its outcome to an exit
//! code. One module per command group; `agent run` itself is [`crate::daemon`].
//!
//! - [`device`]: `agent enroll`, `agent status`, `agent keys …`.
//! - [`telemetry`]: `agent telemetry send|status`, `agent notify`.
//! - [`app`]: `agent app …`.
//! - [`ota`]: `agent keygen`, `agent bundle …`, `agent ota …`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{self, AgentConfig};
use crate::link::enroll_exchange::EnrollOptions;

pub mod app;
pub mod device;
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
    Telemetry(telemetry::TelemetryCommand),
    /// Applications from recipes: validate, deploy, list, start, stop, logs.
    #[command(subcommand)]
    App(app::AppCommand),
    /// The device key: rotate it.
    #[command(subcommand)]
    Keys(device::KeysCommand),
    /// Write an ed25519 key pair for signing OS update bundles: NAME.key and NAME.pub.
    Keygen {
        /// Path and base name of the key files.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// OS update bundles: create, verify, inspect.
    #[command(subcommand)]
    Bundle(ota::BundleCommand),
    /// A/B OS updates on this board: install, status, check, commit, rollback.
    #[command(subcommand)]
    Ota(ota::OtaCommand),
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
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: tether_protocol::cli_docs::Shell,
    },
    /// Write the man pages (agent.1 and one per subcommand) into DIR.
    Man {
        /// Directory for the pages, created if missing (e.g. /usr/share/man/man1).
        dir: PathBuf,
    },
    /// Serve SFTP on stdin/stdout (used by the embedded SSH server to drop privileges).
    #[command(hide = true)]
    SftpServer {
        /// Directory relative paths start from.
        #[arg(long)]
        home: PathBuf,
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
    // The agent's provider is ring. aws-lc-rs is compiled in too when the agent is built
    // together with the relay (the workspace's tests); pick one explicitly so rustls never has
    // to guess (it panics when it would have to).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The sftp child serves one client, one request at a time: a single-threaded runtime
    // spares it the wake-ups between worker threads on every request.
    let runtime = if matches!(cli.command, Command::SftpServer { .. }) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
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
        Command::Keygen { .. }
            | Command::Bundle(_)
            | Command::SftpServer { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
    )
}

fn init_logging(quiet: bool) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if quiet {
        LevelFilter::WARN
    } else {
        LevelFilter::INFO
    };
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), default);
    // Colour codes only for a person watching: a log file or journal gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

/// The log filter `RUST_LOG` asks for (`info`, `debug,russh=warn`, `tether_agent::link=trace`:
/// a default level and levels per module), else `default` for everything. These are `Targets`,
/// not an `EnvFilter`: the agent does without the regular-expression engine that span and field
/// filters would need.
fn log_filter(
    rust_log: Option<&str>,
    default: tracing_subscriber::filter::LevelFilter,
) -> tracing_subscriber::filter::Targets {
    match rust_log.filter(|v| !v.trim().is_empty()).map(str::parse) {
        Some(Ok(targets)) => targets,
        Some(Err(e)) => {
            eprintln!("warning: ignoring RUST_LOG: {e}");
            tracing_subscriber::filter::Targets::new().with_default(default)
        }
        None => tracing_subscriber::filter::Targets::new().with_default(default),
    }
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
            let opts = EnrollOptions {
                url: url.clone(),
                token: token.clone(),
                name: name.clone(),
                force: *force,
                fingerprint: fingerprint.clone(),
            };
            device::enroll(&load_config(&cli)?, &opts).await
        }
        Command::Keys(cmd) => device::keys(&load_config(&cli)?, cmd).await,
        Command::Run => {
            crate::daemon::run(load_config(&cli)?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => device::show_status(&load_config(&cli)?, *json),
        Command::Telemetry(cmd) => telemetry::telemetry(&load_config(&cli)?, cmd),
        Command::Notify {
            level,
            topic,
            data,
            message,
        } => telemetry::notify(&load_config(&cli)?, level, topic, data.as_deref(), message),
        Command::Keygen { out } => ota::keygen(out),
        Command::Bundle(cmd) => ota::bundle(cmd),
        Command::Ota(cmd) => ota::ota(&load_config(&cli)?, cmd),
        Command::App(cmd) => app::run(&load_config(&cli)?, cmd).await,
        Command::SftpServer { home } => {
            crate::access::sftp::serve_stdio(home.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let stdout = std::io::stdout();
            tether_protocol::cli_docs::write_completions(
                Cli::command(),
                *shell,
                &mut stdout.lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            let stdout = std::io::stdout();
            tether_protocol::cli_docs::man_command(Cli::command(), dir, &mut stdout.lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
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

    #[test]
    fn rust_log_sets_a_default_level_and_levels_per_module() {
        use tracing_subscriber::filter::LevelFilter;
        let f = log_filter(Some("info,russh=warn"), LevelFilter::ERROR);
        assert!(f.would_enable("tether_agent::link", &tracing::Level::INFO));
        assert!(!f.would_enable("russh::client", &tracing::Level::INFO));
        assert!(f.would_enable("russh::client", &tracing::Level::WARN));

        let f = log_filter(Some("tether_agent::link=trace"), LevelFilter::INFO);
        assert!(f.would_enable("tether_agent::link::run", &tracing::Level::TRACE));
        assert!(!f.would_enable("tether_agent::apps", &tracing::Level::ERROR));
    }

    #[test]
    fn without_a_usable_rust_log_the_default_level_applies() {
        use tracing_subscriber::filter::LevelFilter;
        for rust_log in [None, Some(""), Some("link=loud")] {
            let f = log_filter(rust_log, LevelFilter::WARN);
            assert!(
                f.would_enable("tether_agent", &tracing::Level::WARN),
                "{rust_log:?}"
            );
            assert!(
                !f.would_enable("tether_agent", &tracing::Level::INFO),
                "{rust_log:?}"
            );
        }
    }
}
