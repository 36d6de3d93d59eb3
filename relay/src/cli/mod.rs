//! The relay's command line: `relay serve` and the admin commands that work on the store
//! (also while `serve` runs, since SQLite is shared safely between processes).
//!
//! Exit codes: 0 success, 1 failure (`error: …` with the chain of causes on stderr), 2 usage
//! (clap's own). Commands print results on stdout and nothing else, so they compose in shell
//! scripts (`TOKEN=$(relay token create --tenant acme)`); `--json` prints the same data as JSON.
//!
//! Layout: this module holds the clap definitions shared by every command and the dispatch;
//! each command group has its module with its own subcommands ([`tenant`], [`token`],
//! [`user`], [`device`], [`artifact`], [`deploy`], [`action`], [`telemetry`], [`audit`],
//! [`session`]), `serve` and `backup` wire up `relay serve|init` and `relay backup`,
//! `output` holds how results are printed and `change` how admin changes are audited.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::{self, RelayConfig};
use crate::store::{Role, Store};

pub mod action;
mod announce;
pub mod artifact;
pub mod audit;
mod backup;
mod change;
pub mod cluster;
pub mod deploy;
pub mod device;
mod output;
mod serve;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod token;
pub mod user;

use action::ActionCommand;
use artifact::ArtifactCommand;
use audit::AuditCommand;
use change::record;
use deploy::DeployCommand;
use device::DeviceCommand;
use session::SessionCommand;
use telemetry::TelemetryCommand;
use tenant::TenantCommand;
use token::TokenCommand;
use user::UserCommand;

/// tether relay: device links, engineers' SSH sessions and the fleet API.
#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    propagate_version = true,
    after_help = "Examples:\n  \
        relay --config /etc/tether/relay.yaml init\n  \
        relay --config /etc/tether/relay.yaml serve\n  \
        relay tenant add acme\n  \
        TOKEN=$(relay token create --tenant acme --ttl 24h --uses 10)\n  \
        relay user add alice --tenant acme --role operator --key alice.pub\n  \
        relay user disable alice --tenant acme\n  \
        relay tenant trust-ca acme --key ca.pub --role operator\n  \
        relay device list --tenant acme\n  \
        relay device tag board1 edge\n  \
        relay artifact put --tenant acme dist/app.tar.gz\n  \
        relay deploy create --tenant acme --target tag:edge --recipe app.yaml --set port=9000\n  \
        relay deploy status dep_0123456789ab\n  \
        relay action create board1 --run 'df -h' --timeout 30 --expires 1h\n  \
        relay action show act_0123456789ab\n  \
        relay session list --device board1\n  \
        relay session play ses_0123456789abcdef"
)]
pub struct Cli {
    /// Configuration file (YAML) [default: built-in defaults].
    #[arg(long, global = true, env = "TETHER_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (host key, store); overrides data_dir of the configuration.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Relay subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: SSH port, HTTP port, WebSocket link.
    Serve {
        /// SSH listen address; overrides ssh.listen.
        #[arg(long, value_name = "ADDR")]
        ssh_listen: Option<SocketAddr>,
        /// HTTP listen address; overrides http.listen.
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
    },
    /// Create the store (and its data directory) if there is none; `serve` does too. The
    /// other commands only open an existing store, so a mistyped --data-dir is an error
    /// rather than an empty fleet.
    Init,
    /// The append-only audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Engineers' recorded sessions: list, show, replay.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage enrollment and API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage engineers.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Read devices' telemetry, logs and events.
    #[command(subcommand)]
    Telemetry(TelemetryCommand),
    /// Store files (component artifacts) for devices to fetch.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Deploy components from recipes to devices.
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// Run commands, restart components and reboot devices remotely.
    #[command(subcommand)]
    Action(ActionCommand),
    /// Copy the store (a consistent snapshot, also while `relay serve` runs), the host key,
    /// artifacts and recordings into a new directory, which is itself a data directory:
    /// restore by starting `relay serve --data-dir DIR` on it.
    Backup {
        /// New or empty directory to write the backup into.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The cluster of relays: which relay holds which device.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Move the store to another backend.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: tether_protocol::cli_docs::Shell,
    },
    /// Write the man pages (relay.1 and one per subcommand) into DIR.
    Man {
        /// Directory for the pages, created if missing (e.g. /usr/share/man/man1).
        dir: PathBuf,
    },
}

/// Engineer roles on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Everything.
    Admin,
    /// Shells, forwards, device operations.
    Operator,
    /// Read only.
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Operator => Role::Operator,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

/// Parses arguments, runs the command and maps the outcome to an exit code
/// (0 ok, 1 failure, 2 usage).
pub fn main() -> ExitCode {
    // On a usage error clap prints it and exits with 2; --help and --version exit with 0.
    let cli = Cli::parse();
    // The data directory holds the store (device and engineer keys, token hashes, telemetry),
    // the host key and artifacts: whatever the relay or an admin command creates there without
    // an explicit mode must still be private to the relay's user.
    tether_protocol::private_fs::restrict_umask();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person watching: a log file or journal gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let stdout = std::io::stdout();
    match run(cli, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        // `relay device list | head -1`: the reader left, which is not our failure.
        Err(e) if tether_protocol::report::is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", tether_protocol::report::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The configuration: the file if one was given, else the defaults; then `--data-dir`.
fn load_config(cli: &Cli) -> Result<RelayConfig> {
    let mut config = match &cli.config {
        Some(path) => config::load(path)?,
        None => RelayConfig::default(),
    };
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    Ok(config)
}

/// Opens the existing store of an admin command. A missing one is an error naming the path:
/// creating it would answer a mistyped --data-dir with an empty fleet.
fn open_store(config: &RelayConfig) -> Result<Store> {
    let location = config.store_location()?;
    if !location.exists() {
        anyhow::bail!(
            "no store at {location}; create one with `relay init` or start `relay serve` (check --data-dir, --config and store.path)"
        );
    }
    tracing::debug!("using the store {location}");
    Store::connect(&location).with_context(|| format!("opening the store {location}"))
}

/// Runs an admin command that may change the store: records it in the audit trail and
/// announces its changes to the cluster's relays, if there is a cluster.
fn admin_change(
    config: &RelayConfig,
    run: impl FnOnce(&Store) -> (change::Change, Result<()>),
) -> Result<()> {
    let store = open_store(config)?;
    let announcer = announce::Announcer::install(config, &store);
    let (change, result) = run(&store);
    let access = change.is_change() && result.is_ok();
    let result = record(&store, change, result);
    announcer.finish(access);
    result
}

/// Runs a parsed command, writing its results to `out`. A command that changes the store is
/// recorded in the audit trail, whether it succeeded or not.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // Generated from the definitions alone: they need no configuration and no store.
    match &cli.command {
        Command::Completions { shell } => {
            return Ok(tether_protocol::cli_docs::write_completions(
                Cli::command(),
                *shell,
                out,
            )?);
        }
        Command::Man { dir } => {
            return Ok(tether_protocol::cli_docs::man_command(
                Cli::command(),
                dir,
                out,
            )?);
        }
        _ => {}
    }
    let config = load_config(&cli)?;
    match cli.command {
        Command::Serve {
            ssh_listen,
            http_listen,
        } => serve::serve(config, ssh_listen, http_listen),
        Command::Init => serve::init(out, &config),
        Command::Store(cmd) => store::run(out, cmd),
        Command::Cluster(cmd) => {
            let store = open_store(&config)?;
            cluster::run(out, &store, &config, cmd)
        }
        // Answered above, before the configuration is read.
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
        Command::Backup { dir, json } => {
            let store = open_store(&config)?;
            backup::run(out, &store, &config, &dir, json)
        }
        Command::Tenant(cmd) => admin_change(&config, |store| {
            let mut change = tenant::describe(&cmd);
            let result = tenant::run(out, store, &config, cmd, &mut change);
            (change, result)
        }),
        Command::Token(cmd) => admin_change(&config, |store| {
            let mut change = token::describe(&cmd);
            let result = token::run(out, store, cmd, &mut change);
            (change, result)
        }),
        Command::User(cmd) => admin_change(&config, |store| {
            let mut change = user::describe(&cmd);
            let result = user::run(out, store, cmd, &mut change);
            (change, result)
        }),
        Command::Device(cmd) => admin_change(&config, |store| {
            let mut change = device::describe(&cmd);
            let result = device::run(out, store, cmd, &mut change);
            (change, result)
        }),
        Command::Artifact(cmd) => admin_change(&config, |store| {
            let mut change = artifact::describe(&cmd);
            let result = artifact::run(out, store, &config, cmd, &mut change);
            (change, result)
        }),
        Command::Deploy(cmd) => admin_change(&config, |store| {
            let change = deploy::describe(&cmd);
            let result = deploy::run(out, store, &config, cmd);
            (change, result)
        }),
        Command::Session(cmd) => {
            let store = open_store(&config)?;
            session::run(out, &store, &config, cmd)
        }
        Command::Action(cmd) => admin_change(&config, |store| {
            let mut change = action::describe(&cmd);
            let result = action::run(out, store, cmd, &mut change);
            (change, result)
        }),
        Command::Audit(cmd) => {
            let store = open_store(&config)?;
            audit::run(out, &store, cmd)
        }
        Command::Telemetry(cmd) => {
            let store = open_store(&config)?;
            telemetry::run(out, &store, cmd)
        }
    }
}

#[cfg(test)]
mod tests;
