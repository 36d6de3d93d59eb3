//! The relay's command line: `relay serve` and the admin commands that work on the store
//! (also while `serve` runs, since SQLite is shared safely between processes).
//!
//! Exit codes: 0 success, 1 failure (`error: …` with the chain of causes on stderr), 2 usage
//! (clap's own). Commands print results on stdout and nothing else, so they compose in shell
//! scripts (`TOKEN=$(relay token create --tenant acme)`); `--json` prints the same data as JSON.

use std::borrow::Cow;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::{self, RelayConfig};
use crate::store::{
    ActionView, Device, DeviceStatus, EngineerKey, NewDeployment, NewToken, Role, Store, Target,
    TokenKind,
};
use tether_protocol::fleet::{ActionKind, Inventory, ReportedComponent};

/// Default lifetime of enrollment tokens: they are handed around, so they should not live
/// forever unless asked to.
const DEFAULT_ENROLL_TTL: Duration = Duration::from_secs(24 * 3600);

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
    Session(crate::session_cli::SessionCommand),
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
}

/// `relay action …`
#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// Queue an action for a device; it is sent when the device is connected. Prints the
    /// action id.
    #[command(group(ArgGroup::new("what").required(true).args(["run", "restart", "reboot"])))]
    Create {
        /// Device id, or a name unique across tenants.
        device: String,
        /// Run this shell command (`/bin/sh -c`, as the agent's application user).
        #[arg(long, value_name = "COMMAND")]
        run: Option<String>,
        /// Time limit of --run in seconds, 1-86400 [default: 300].
        #[arg(
            long,
            value_name = "SECS",
            requires = "run",
            conflicts_with_all = ["restart", "reboot"]
        )]
        timeout: Option<u64>,
        /// Restart this component (and its hard dependents).
        #[arg(long, value_name = "COMPONENT")]
        restart: Option<String>,
        /// Reboot the device.
        #[arg(long)]
        reboot: bool,
        /// Give up unless sent within this time, e.g. 1h, 30m [default: never].
        #[arg(long, value_parser = parse_expiry, value_name = "DURATION")]
        expires: Option<Duration>,
        /// Print the action as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List actions, newest first (at most 1000).
    List {
        /// Only this device's (id, or a name unique across tenants or within --tenant).
        #[arg(long)]
        device: Option<String>,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an action, its result and its output.
    Show {
        /// Action id (act_…).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// An action's lifetime: a duration of at least a second.
fn parse_expiry(text: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

/// `relay artifact …`
#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Store a file for a tenant; prints its sha256, for `uri: relay:sha256:<sha256>` in
    /// that tenant's recipes. Only that tenant's deployments may name it and only its devices
    /// fetch it: each tenant puts its own files, even the same bytes.
    Put {
        /// Tenant whose devices may fetch it (required).
        #[arg(long)]
        tenant: String,
        /// The file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List stored artifacts and their tenants.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `relay deploy …`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Deploy recipes to a device or to every accepted device with a tag; prints the
    /// deployment id.
    Create {
        /// Tenant of the devices.
        #[arg(long)]
        tenant: String,
        /// tag:TAG (every accepted device with the tag) or device:DEVICE (id or name).
        #[arg(long, value_name = "tag:TAG|device:DEVICE")]
        target: Target,
        /// Recipe files, one component each: `--recipe a.yaml b.yaml`, or the flag repeated.
        #[arg(
            long = "recipe",
            value_name = "FILE",
            num_args = 1..,
            required_unless_present_any = ["bundle", "remove"]
        )]
        recipes: Vec<PathBuf>,
        /// Directory holding the files the recipes name by bare file name (`uri: server.py`,
        /// as for `agent app deploy --artifacts`): each is checked against its sha256, stored
        /// as the tenant's artifact, and the recipe deployed names it on the relay, under the
        /// same file name on the device.
        #[arg(long, value_name = "DIR")]
        artifacts: Option<PathBuf>,
        /// Component to take off the devices (undeploy); repeatable. Only this deployment's
        /// outcome depends on it.
        #[arg(long = "remove", value_name = "COMPONENT")]
        remove: Vec<String>,
        /// Signed OS bundle (agent bundle create) the devices install (A/B update).
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// Configuration override: COMPONENT:KEY=VALUE for one component, KEY=VALUE for all.
        #[arg(long = "set", value_name = "[COMPONENT:]KEY=VALUE")]
        set: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show where a deployment stands on each of its devices.
    Status {
        /// Deployment id (dep_…).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List deployments.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `relay telemetry …`
#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// Print a device's stored records, oldest first.
    Tail {
        /// Device id or name.
        device: String,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Most records to print (the newest ones).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new records as they arrive.
        #[arg(long)]
        follow: bool,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// `relay tenant …`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Add {
        /// Tenant name: a-z, 0-9, '-', '_', '.', starting with a letter or digit.
        name: String,
    },
    /// Show, or with --days / --session-days set, how many days of telemetry (default 30)
    /// and of session recordings (default 90) the tenant keeps.
    Retention {
        /// Tenant name.
        name: String,
        /// Days of telemetry to keep.
        #[arg(long)]
        days: Option<u32>,
        /// Days of session recordings to keep.
        #[arg(long)]
        session_days: Option<u32>,
        /// Print the retention as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a tenant and everything it holds: devices (their links are dropped within
    /// seconds), telemetry, tokens, engineers (their sessions are closed), trusted CAs,
    /// deployments, actions, artifacts and session recordings. The audit trail stays. A
    /// tenant with devices needs --with-devices --yes; without --yes nothing is deleted and
    /// the command says what would be, exiting with 1.
    Remove {
        /// Tenant name.
        name: String,
        /// Also delete the tenant's devices and their data.
        #[arg(long)]
        with_devices: bool,
        /// Confirm deleting the devices and their data.
        #[arg(long, requires = "with_devices")]
        yes: bool,
    },
    /// List tenants.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Trust an SSH certificate authority: engineers with user certificates it signed log in
    /// without a registered key, named by the certificate's principals.
    TrustCa {
        /// Tenant name.
        name: String,
        /// The CA's public key file (OpenSSH format, e.g. ca.pub).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Role of engineers logging in with its certificates.
        #[arg(long, value_enum, default_value_t = RoleArg::Operator)]
        role: RoleArg,
        /// Accept only certificates with this principal (repeat for more) [default: any].
        #[arg(long = "principal", value_name = "NAME")]
        principals: Vec<String>,
    },
    /// Stop trusting an SSH certificate authority.
    UntrustCa {
        /// Tenant name.
        name: String,
        /// The CA's fingerprint (SHA256:…), as `relay tenant cas` shows it.
        #[arg(long)]
        fingerprint: String,
    },
    /// List trusted SSH certificate authorities.
    Cas {
        /// Only this tenant's.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `relay audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Entries, oldest first.
    List {
        /// Only entries at or after this time (RFC 3339, e.g. 2026-11-24T00:00:00Z or
        /// 2026-11-24T02:00:00+02:00).
        #[arg(long, value_parser = crate::timestamp::parse_rfc3339)]
        since: Option<std::time::SystemTime>,
        /// Only this tenant's entries.
        #[arg(long)]
        tenant: Option<String>,
        /// Most entries to print: the newest ones (still printed oldest first) unless
        /// --oldest.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print the oldest --limit entries instead of the newest.
        #[arg(long)]
        oldest: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `relay token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token; prints only the secret (or JSON with --json). The secret is shown once.
    Create {
        /// Tenant the token belongs to.
        #[arg(long)]
        tenant: String,
        /// Lifetime, e.g. 24h, 30m [default: 24h for enrollment tokens, none for API tokens].
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        ttl: Option<Duration>,
        /// How many devices may enroll with it [default: unlimited].
        #[arg(long, value_name = "N", conflicts_with = "api")]
        uses: Option<u32>,
        /// Devices enrolled with it wait for `relay device accept`.
        #[arg(long, conflicts_with = "api")]
        require_accept: bool,
        /// `agent enroll --force` with it may replace a same-named device that holds another
        /// key (a board whose storage was wiped); the replacement is audited as
        /// device.replace. Without it a name in use is refused.
        #[arg(long, conflicts_with_all = ["api", "require_accept"])]
        allow_replace: bool,
        /// An HTTP API bearer token instead of an enrollment token.
        #[arg(long)]
        api: bool,
        /// What an API token may do: viewer reads, operator also changes devices, deploys
        /// and runs actions.
        #[arg(long, value_enum, requires = "api", default_value_t = RoleArg::Operator)]
        role: RoleArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id (tok_…).
        id: String,
    },
    /// Change what an API token may do; takes effect with its next request.
    SetRole {
        /// Token id (tok_…) of an API token.
        id: String,
        /// The new role.
        #[arg(long, value_enum)]
        role: RoleArg,
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

/// `relay user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Register an engineer's public key with a tenant.
    Add {
        /// User name, unique in the tenant.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub).
        #[arg(long, value_name = "PUBKEY_FILE")]
        key: PathBuf,
    },
    /// Delete an engineer and its keys; its live sessions and forwards are closed within
    /// seconds. Its session recordings and audit entries stay.
    Remove {
        /// User name.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Refuse an engineer's logins and close its live sessions and forwards within seconds,
    /// keeping the account for `relay user enable`.
    Disable {
        /// User name.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Let a disabled engineer log in again.
    Enable {
        /// User name.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Change an engineer's role. Made a viewer, its open sessions and forwards are closed.
    SetRole {
        /// User name.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// The new role.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Register one more public key for an engineer.
    AddKey {
        /// User name.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// OpenSSH public key file.
        #[arg(long, value_name = "PUBKEY_FILE")]
        key: PathBuf,
    },
    /// Unregister one of an engineer's keys (not its last); sessions and forwards logged in
    /// with it are closed within seconds.
    RemoveKey {
        /// User name.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// The key's fingerprint (SHA256:…), as `relay user list` shows it.
        #[arg(long)]
        fingerprint: String,
    },
    /// List engineers.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `relay device …`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one device (id, or a name unique across tenants).
    Show {
        /// Device id or name.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Allow a pending or rejected device to connect.
    Accept {
        /// Device id or name.
        id: String,
    },
    /// Refuse a device; its live link is dropped within seconds.
    Reject {
        /// Device id or name.
        id: String,
    },
    /// Delete a device; its live link is dropped within seconds.
    Remove {
        /// Device id or name.
        id: String,
    },
    /// Add tags to a device (or remove them); prints its tags after.
    Tag {
        /// Device id or name.
        device: String,
        /// Tags: a-z, 0-9, '-', '_', '.', starting with a letter or digit.
        #[arg(required = true)]
        tags: Vec<String>,
        /// Remove the tags instead.
        #[arg(long)]
        remove: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a device's desired and reported state side by side.
    State {
        /// Device id or name.
        device: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Push configuration to one device; prints the new desired-state version
    /// (`configuration version N pushed to DEVICE`).
    Config {
        /// Device id or name.
        device: String,
        /// Configuration override (`null` removes one): COMPONENT:KEY=VALUE.
        #[arg(long = "set", value_name = "COMPONENT:KEY=VALUE", required = true)]
        set: Vec<String>,
        /// Print the new desired state as JSON.
        #[arg(long)]
        json: bool,
    },
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

/// Opens the store, creating it when there is none: for `serve` and `init` only.
fn create_store(config: &RelayConfig) -> Result<Store> {
    let path = config.store_path();
    Store::open(&path).with_context(|| format!("opening the store {}", path.display()))
}

/// Opens the existing store of an admin command. A missing one is an error naming the path:
/// creating it would answer a mistyped --data-dir with an empty fleet.
fn open_store(config: &RelayConfig) -> Result<Store> {
    let path = config.store_path();
    if !path.exists() {
        anyhow::bail!(
            "no store at {}; create one with `relay init` or start `relay serve` (check --data-dir, --config and store.path)",
            path.display()
        );
    }
    tracing::debug!("using the store {}", path.display());
    Store::open(&path).with_context(|| format!("opening the store {}", path.display()))
}

pub(crate) fn print_json<T: Serialize>(out: &mut dyn Write, value: &T) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Whether `c` must not reach a terminal as it is: a control character (C0, DEL, C1), a
/// Unicode line or paragraph separator, or a bidirectional override or isolate (which reorder
/// what is shown around them).
fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` fit for an operator's terminal: each character [`is_unsafe_for_terminal`] is shown
/// as a visible escape (`\n`, `\r`, `\t`, `\x1b`, `\x7f`, `\u{85}`, `\u{202e}`), so a string
/// a device or a user chose can neither move the cursor, recolour the screen nor forge lines
/// of a table. Every human (not `--json`) output of a string from the store goes through this
/// one function; JSON output stays exact.
pub(crate) fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_for_terminal) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_ascii() && is_unsafe_for_terminal(c) => {
                escaped.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if is_unsafe_for_terminal(c) => {
                escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Writes `label: value` lines with the values aligned after `width` columns, each value
/// escaped with [`escape_controls`].
fn print_fields(out: &mut dyn Write, width: usize, rows: &[(&str, String)]) -> Result<()> {
    for (label, value) in rows {
        writeln!(
            out,
            "{:<width$} {}",
            format!("{label}:"),
            escape_controls(value)
        )?;
    }
    Ok(())
}

/// Rows as aligned columns under a header; trailing blanks trimmed. Cells are escaped with
/// [`escape_controls`], so one cell is always one line.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape_controls(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let mut s = parts.join("  ").trim_end().to_string();
        s.push('\n');
        s
    };
    let mut text = line(&mut header.iter().copied());
    for row in &rows {
        text.push_str(&line(&mut row.iter().map(|c| c.as_ref())));
    }
    text
}

pub(crate) fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// When the relay last heard from the device: now if its link is up, else when it went down.
fn last_seen(d: &Device) -> String {
    if d.online {
        "now".into()
    } else {
        dash(&d.last_disconnected)
    }
}

fn device_rows(devices: &[Device]) -> Vec<Vec<String>> {
    devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.name.clone(),
                d.tenant.clone(),
                d.status.to_string(),
                if d.online { "yes" } else { "no" }.into(),
                last_seen(d),
                dash(&d.remote_addr),
                dash(&d.agent_version),
            ]
        })
        .collect()
}

const DEVICE_HEADER: &[&str] = &[
    "ID",
    "NAME",
    "TENANT",
    "STATUS",
    "ONLINE",
    "LAST-SEEN",
    "ADDRESS",
    "VERSION",
];

fn print_record(out: &mut dyn Write, r: &crate::store::StoredRecord, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, r)?;
        writeln!(out)?;
    } else {
        let level = r
            .level
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        let line = format!(
            "{} #{} {} {}{} {}",
            r.ts, r.seq, r.kind, r.topic, level, r.payload
        );
        writeln!(out, "{}", escape_controls(&line))?;
    }
    Ok(())
}

fn page_query<'a>(
    device_id: &'a str,
    topic: Option<&'a str>,
    after: u64,
) -> crate::store::TelemetryQuery<'a> {
    crate::store::TelemetryQuery {
        device_id,
        topic,
        after_seq: after,
        limit: 10_000,
        ..Default::default()
    }
}

fn tail(
    out: &mut dyn Write,
    store: &Store,
    device: &str,
    topic: Option<&str>,
    limit: usize,
    follow: bool,
    json: bool,
) -> Result<()> {
    let d = store.resolve_device(device)?;
    // The newest `limit` records: read everything after the start in pages, keep the tail.
    let mut after = 0u64;
    let mut last: std::collections::VecDeque<crate::store::StoredRecord> =
        std::collections::VecDeque::new();
    loop {
        let page = store.telemetry(&page_query(&d.id, topic, after))?;
        let Some(end) = page.last().map(|r| r.seq) else {
            break;
        };
        after = end;
        for r in page {
            last.push_back(r);
            if last.len() > limit {
                last.pop_front();
            }
        }
    }
    for r in &last {
        print_record(out, r, json)?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        for r in store.telemetry(&page_query(&d.id, topic, after))? {
            after = r.seq;
            print_record(out, &r, json)?;
        }
        // Whoever reads a follow wants each record when it arrives, not when a buffer fills.
        out.flush()?;
    }
}

/// Runs a parsed command, writing its results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Serve {
            ssh_listen,
            http_listen,
        } => {
            let mut config = config;
            if let Some(a) = ssh_listen {
                config.ssh.listen = a;
            }
            if let Some(a) = http_listen {
                config.http.listen = a;
            }
            let store = Arc::new(create_store(&config)?);
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(crate::server::serve(config, store))
        }
        Command::Backup { dir, json } => {
            let store = open_store(&config)?;
            // A copy of the whole store leaves the relay: that is worth a line in the trail.
            let shown = dir.display().to_string();
            let change = Change::new("store.backup", None, Some(&shown)).with("dir", &shown);
            let result = crate::backup::backup(&config, &store, &dir)
                .with_context(|| format!("backing up to {}", dir.display()))
                .and_then(|summary| {
                    if json {
                        print_json(out, &summary)
                    } else {
                        writeln!(
                            out,
                            "backup in {}: store {} bytes, host key {}, {} artifacts, {} recordings",
                            summary.dir.display(),
                            summary.store_bytes,
                            if summary.host_key {
                                "copied"
                            } else {
                                "none yet"
                            },
                            summary.artifacts,
                            summary.recordings
                        )
                        .map_err(anyhow::Error::from)
                    }
                });
            record(&store, change, result)
        }
        Command::Init => {
            let path = config.store_path();
            let existed = path.exists();
            create_store(&config)?;
            if existed {
                writeln!(out, "store {} exists already", path.display())?;
            } else {
                writeln!(out, "created the store {}", path.display())?;
            }
            Ok(())
        }
        Command::Tenant(cmd) => {
            let store = open_store(&config)?;
            let mut change = describe_tenant(&cmd);
            let result = tenant(out, &store, &config, cmd, &mut change);
            record(&store, change, result)
        }
        Command::Token(cmd) => {
            let store = open_store(&config)?;
            let mut change = describe_token(&cmd);
            let result = token(out, &store, cmd, &mut change);
            record(&store, change, result)
        }
        Command::User(cmd) => {
            let store = open_store(&config)?;
            let mut change = describe_user(&cmd);
            let result = user(out, &store, cmd, &mut change);
            record(&store, change, result)
        }
        Command::Device(cmd) => {
            let store = open_store(&config)?;
            let mut change = describe_device(&cmd);
            let result = device(out, &store, cmd, &mut change);
            record(&store, change, result)
        }
        Command::Artifact(cmd) => {
            let store = open_store(&config)?;
            let mut change = describe_artifact(&cmd);
            let result = artifact(out, &store, &config, cmd, &mut change);
            record(&store, change, result)
        }
        Command::Deploy(cmd) => {
            let store = open_store(&config)?;
            let change = describe_deploy(&cmd);
            let result = deploy(out, &store, &config, cmd);
            record(&store, change, result)
        }
        Command::Session(cmd) => {
            let store = open_store(&config)?;
            crate::session_cli::run(out, &store, &config, cmd)
        }
        Command::Action(cmd) => {
            let store = open_store(&config)?;
            let mut change = describe_action(&cmd);
            let result = action(out, &store, cmd, &mut change);
            record(&store, change, result)
        }
        Command::Audit(AuditCommand::List {
            since,
            tenant,
            limit,
            oldest,
            json,
        }) => {
            let store = open_store(&config)?;
            let entries = store.audit_entries(since, tenant.as_deref(), limit, oldest)?;
            if json {
                print_json(out, &entries)?;
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.at.clone(),
                            dash(&e.tenant),
                            e.actor.clone(),
                            e.action.clone(),
                            dash(&e.target),
                            dash(&e.source),
                        ]
                    })
                    .collect();
                out.write_all(
                    table(
                        &["AT", "TENANT", "ACTOR", "ACTION", "TARGET", "SOURCE"],
                        &rows,
                    )
                    .as_bytes(),
                )?;
            }
            Ok(())
        }
        Command::Telemetry(TelemetryCommand::Tail {
            device,
            topic,
            limit,
            follow,
            json,
        }) => {
            let store = open_store(&config)?;
            tail(out, &store, &device, topic.as_deref(), limit, follow, json)
        }
    }
}

/// The longest string an audit entry keeps of an argument: a name or path is far shorter,
/// and a megabyte of garbage in an argument must not become a megabyte in every listing.
const AUDIT_STRING_LIMIT: usize = 256;

/// `text` cut to [`AUDIT_STRING_LIMIT`] characters, with a visible marker when it was cut.
fn bounded(text: &str) -> String {
    if text.chars().count() <= AUDIT_STRING_LIMIT {
        return text.to_string();
    }
    let kept: String = text.chars().take(AUDIT_STRING_LIMIT).collect();
    format!("{kept}… ({} bytes)", text.len())
}

/// An admin change as the audit trail records it: its action, tenant and target, and a
/// detail of the fields the README's audit table documents. Built from the parsed arguments
/// before the command runs and completed by the command with what it learned (a token's id,
/// a device's tenant). It never holds a secret: token secrets are never arguments and are
/// never put here, and keys appear only as fingerprints.
struct Change {
    /// The audit action, e.g. `user.remove`; empty for a read, which is not recorded.
    action: &'static str,
    tenant: Option<String>,
    target: Option<String>,
    detail: serde_json::Map<String, serde_json::Value>,
}

impl Change {
    /// A change of `tenant` (a name as given) to `target`.
    fn new(action: &'static str, tenant: Option<&str>, target: Option<&str>) -> Change {
        Change {
            action,
            // A tenant that is not even a valid name is not a tenant's entry.
            tenant: tenant
                .filter(|t| crate::store::validate_name("tenant", t).is_ok())
                .map(str::to_string),
            target: target.map(bounded),
            detail: serde_json::Map::new(),
        }
    }

    /// A read: nothing to record.
    fn read() -> Change {
        Change::new("", None, None)
    }

    /// Adds a detail field; strings (also inside lists and objects) are bounded.
    fn with(mut self, key: &str, value: impl Serialize) -> Change {
        self.set(key, value);
        self
    }

    /// Sets a detail field.
    fn set(&mut self, key: &str, value: impl Serialize) {
        fn bound(v: serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::String(s) => serde_json::Value::String(bounded(&s)),
                serde_json::Value::Array(a) => a.into_iter().map(bound).collect(),
                serde_json::Value::Object(o) => {
                    serde_json::Value::Object(o.into_iter().map(|(k, v)| (k, bound(v))).collect())
                }
                other => other,
            }
        }
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.detail.insert(key.to_string(), bound(value));
    }

    /// The change concerns device `d`: its tenant, its id as the target, its name.
    fn device(&mut self, d: &Device) {
        self.tenant = Some(d.tenant.clone());
        self.target = Some(d.id.clone());
        self.set("device_id", &d.id);
        self.set("device_name", &d.name);
    }
}

/// Records an admin change (attempted or done: `ok`, and `error` when it failed) in the audit
/// trail as actor `admin`; reads are not recorded.
fn record(store: &Store, change: Change, result: Result<()>) -> Result<()> {
    if change.action.is_empty() {
        return result;
    }
    let mut detail = change.detail;
    detail.insert("ok".into(), result.is_ok().into());
    if let Err(e) = &result {
        detail.insert("error".into(), bounded(&format!("{e:#}")).into());
    }
    let entry = crate::store::NewAudit {
        tenant: change.tenant.as_deref(),
        actor: "admin",
        action: change.action,
        target: change.target.as_deref(),
        source: None,
        detail: serde_json::Value::Object(detail),
    };
    if let Err(e) = store.audit(entry) {
        tracing::error!("audit trail: {e}");
    }
    result
}

fn describe_tenant(cmd: &TenantCommand) -> Change {
    match cmd {
        TenantCommand::Add { name } => {
            Change::new("tenant.add", Some(name), Some(name)).with("name", name)
        }
        TenantCommand::Remove {
            name,
            with_devices,
            yes,
        } => Change::new("tenant.remove", Some(name), Some(name))
            .with("name", name)
            .with("with_devices", with_devices)
            .with("confirmed", yes),
        TenantCommand::Retention {
            name,
            days,
            session_days,
            ..
        } if days.is_some() || session_days.is_some() => {
            Change::new("tenant.retention", Some(name), Some(name))
                .with("days", days)
                .with("session_days", session_days)
        }
        TenantCommand::TrustCa {
            name,
            role,
            principals,
            ..
        } => Change::new("tenant.trust_ca", Some(name), None)
            .with("role", Role::from(*role))
            .with("principals", principals),
        TenantCommand::UntrustCa { name, fingerprint } => {
            Change::new("tenant.untrust_ca", Some(name), Some(fingerprint))
                .with("fingerprint", fingerprint)
        }
        TenantCommand::Retention { .. }
        | TenantCommand::List { .. }
        | TenantCommand::Cas { .. } => Change::read(),
    }
}

fn describe_token(cmd: &TokenCommand) -> Change {
    match cmd {
        TokenCommand::Create {
            tenant,
            ttl,
            uses,
            require_accept,
            allow_replace,
            api,
            role,
            ..
        } => {
            let c = Change::new("token.create", Some(tenant), None)
                .with("kind", if *api { "api" } else { "enroll" });
            if *api {
                c.with("role", Role::from(*role))
                    .with("ttl_seconds", ttl.map(|t| t.as_secs()))
            } else {
                c.with(
                    "ttl_seconds",
                    ttl.or(Some(DEFAULT_ENROLL_TTL)).map(|t| t.as_secs()),
                )
                .with("uses", uses)
                .with("require_accept", require_accept)
                .with("allow_replace", allow_replace)
            }
        }
        TokenCommand::Revoke { id } => Change::new("token.revoke", None, Some(id)).with("id", id),
        TokenCommand::SetRole { id, role } => Change::new("token.set_role", None, Some(id))
            .with("id", id)
            .with("role", Role::from(*role)),
        TokenCommand::List { .. } => Change::read(),
    }
}

fn describe_user(cmd: &UserCommand) -> Change {
    let user = |action, name: &String, tenant: &String| {
        Change::new(action, Some(tenant), Some(name)).with("name", name)
    };
    match cmd {
        UserCommand::Add {
            name, tenant, role, ..
        } => user("user.add", name, tenant).with("role", Role::from(*role)),
        UserCommand::Remove { name, tenant } => user("user.remove", name, tenant),
        UserCommand::Disable { name, tenant } => user("user.disable", name, tenant),
        UserCommand::Enable { name, tenant } => user("user.enable", name, tenant),
        UserCommand::SetRole { name, tenant, role } => {
            user("user.set_role", name, tenant).with("role", Role::from(*role))
        }
        UserCommand::AddKey { name, tenant, .. } => user("user.add_key", name, tenant),
        UserCommand::RemoveKey {
            name,
            tenant,
            fingerprint,
        } => user("user.remove_key", name, tenant).with("fingerprint", fingerprint),
        UserCommand::List { .. } => Change::read(),
    }
}

fn describe_device(cmd: &DeviceCommand) -> Change {
    let device = |action, id: &String| Change::new(action, None, Some(id));
    match cmd {
        DeviceCommand::Accept { id } => device("device.accept", id),
        DeviceCommand::Reject { id } => device("device.reject", id),
        DeviceCommand::Remove { id } => device("device.remove", id),
        DeviceCommand::Tag {
            device: id,
            tags,
            remove,
            ..
        } => device("device.tag", id).with(if *remove { "removed" } else { "added" }, tags),
        DeviceCommand::Config {
            device: id, set, ..
        } => device("device.config", id).with("set", set),
        DeviceCommand::List { .. } | DeviceCommand::Show { .. } | DeviceCommand::State { .. } => {
            Change::read()
        }
    }
}

fn describe_artifact(cmd: &ArtifactCommand) -> Change {
    match cmd {
        ArtifactCommand::Put { tenant, file, .. } => {
            Change::new("artifact.put", Some(tenant), None).with(
                "name",
                file.file_name().map(|n| n.to_string_lossy().into_owned()),
            )
        }
        ArtifactCommand::List { .. } => Change::read(),
    }
}

fn describe_deploy(cmd: &DeployCommand) -> Change {
    match cmd {
        DeployCommand::Create {
            tenant,
            target,
            recipes,
            bundle,
            set,
            ..
        } => {
            let target = match target {
                Target::Tag(t) => format!("tag:{t}"),
                Target::Device(d) => format!("device:{d}"),
            };
            let file = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned());
            Change::new("deploy.create", Some(tenant), Some(&target))
                .with("target", &target)
                .with("recipes", recipes.iter().map(file).collect::<Vec<_>>())
                .with("bundle", bundle.as_ref().and_then(file))
                .with("set", set)
        }
        DeployCommand::Status { .. } | DeployCommand::List { .. } => Change::read(),
    }
}

fn describe_action(cmd: &ActionCommand) -> Change {
    match cmd {
        ActionCommand::Create {
            device,
            run,
            timeout,
            restart,
            reboot,
            expires,
            ..
        } => {
            let kind = match (run, restart, reboot) {
                (Some(command), _, _) => serde_json::json!({
                    "kind": "run", "command": command, "timeout_secs": timeout,
                }),
                (None, Some(component), _) => {
                    serde_json::json!({ "kind": "restart", "component": component })
                }
                _ => serde_json::json!({ "kind": "reboot" }),
            };
            Change::new("action.create", None, Some(device))
                .with("action", kind)
                .with("expires_seconds", expires.map(|e| e.as_secs()))
        }
        ActionCommand::List { .. } | ActionCommand::Show { .. } => Change::read(),
    }
}

/// What removing a tenant deletes, for people: `2 devices, 40 telemetry records, …`.
fn describe_contents(c: &crate::store::TenantContents) -> String {
    let parts = [
        (c.devices, "device", "devices"),
        (c.telemetry, "telemetry record", "telemetry records"),
        (c.tokens, "token", "tokens"),
        (c.engineers, "engineer", "engineers"),
        (c.cas, "trusted CA", "trusted CAs"),
        (c.deployments, "deployment", "deployments"),
        (c.sessions, "session recording", "session recordings"),
        (c.artifacts, "artifact", "artifacts"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
        .collect();
    if text.is_empty() {
        "nothing but its name".into()
    } else {
        text.join(", ")
    }
}

fn tenant(
    out: &mut dyn Write,
    store: &Store,
    config: &RelayConfig,
    cmd: TenantCommand,
    change: &mut Change,
) -> Result<()> {
    match cmd {
        TenantCommand::Add { name } => {
            let t = store.add_tenant(&name)?;
            writeln!(out, "tenant {} created", t.name)?;
        }
        TenantCommand::Remove {
            name,
            with_devices,
            yes,
        } => {
            let contents = store.tenant_contents(&name)?;
            change.set("would_delete", &contents);
            if contents.devices > 0 && !with_devices {
                anyhow::bail!(
                    "tenant {name} still has {}; nothing was deleted. relay tenant remove {name} --with-devices --yes deletes it with {}",
                    describe_contents(&crate::store::TenantContents {
                        devices: contents.devices,
                        ..Default::default()
                    }),
                    describe_contents(&contents)
                );
            }
            if with_devices && !yes {
                anyhow::bail!(
                    "removing tenant {name} would delete {}; nothing was deleted: add --yes to confirm",
                    describe_contents(&contents)
                );
            }
            let removed = store.remove_tenant(&name, with_devices)?;
            change.detail.remove("would_delete");
            change.set("deleted", &removed.deleted);
            change.set("devices", &removed.device_ids);
            let sessions_dir = config.sessions_dir();
            for cast in &removed.cast_files {
                // Names come from the store, written by the recorder: plain file names.
                if !cast.contains('/') && !cast.starts_with('.') {
                    remove_file_if_there(&sessions_dir.join(cast));
                }
            }
            for sha in &removed.orphaned_artifacts {
                if let Some(path) = Store::artifact_path(&config.artifacts_dir(), sha) {
                    remove_file_if_there(&path);
                }
            }
            writeln!(
                out,
                "tenant {name} removed with {}",
                describe_contents(&removed.deleted)
            )?;
        }
        TenantCommand::Retention {
            name,
            days,
            session_days,
            json,
        } => {
            if let Some(days) = days {
                store.set_retention(&name, days)?;
                if !json {
                    writeln!(out, "tenant {name} keeps {days} days of telemetry")?;
                }
            }
            if let Some(days) = session_days {
                store.set_session_retention(&name, days)?;
                if !json {
                    writeln!(out, "tenant {name} keeps {days} days of session recordings")?;
                }
            }
            let changed = days.is_some() || session_days.is_some();
            if json || !changed {
                crate::store::validate_name("tenant", &name)?;
                let t = store
                    .tenant_by_name(&name)?
                    .with_context(|| format!("no tenant named {name:?}"))?;
                if json {
                    print_json(
                        out,
                        &serde_json::json!({
                            "tenant": t.name,
                            "days": t.retention_days,
                            "session_days": t.session_retention_days,
                        }),
                    )?;
                } else {
                    writeln!(
                        out,
                        "tenant {} keeps {} days of telemetry and {} days of session recordings",
                        t.name, t.retention_days, t.session_retention_days
                    )?;
                }
            }
        }
        TenantCommand::TrustCa {
            name,
            key,
            role,
            principals,
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading the CA key {}", key.display()))?;
            EngineerKey::parse(&text).with_context(|| key.display().to_string())?;
            let ca = store.trust_ca(&name, &text, role.into(), &principals)?;
            change.target = Some(ca.fingerprint.clone());
            change.set("fingerprint", &ca.fingerprint);
            writeln!(
                out,
                "tenant {name} trusts CA {} for {} ({})",
                ca.fingerprint,
                if ca.principals.is_empty() {
                    "any principal".to_string()
                } else {
                    format!("principals {}", ca.principals.join(", "))
                },
                ca.role
            )?;
        }
        TenantCommand::UntrustCa { name, fingerprint } => {
            store.untrust_ca(&name, &fingerprint)?;
            writeln!(out, "tenant {name} no longer trusts CA {fingerprint}")?;
        }
        TenantCommand::Cas { name, json } => {
            let cas = store.trusted_cas(name.as_deref())?;
            if json {
                print_json(out, &cas)?;
            } else {
                let rows: Vec<Vec<String>> = cas
                    .iter()
                    .map(|c| {
                        vec![
                            c.tenant.clone(),
                            c.fingerprint.clone(),
                            c.role.to_string(),
                            if c.principals.is_empty() {
                                "*".into()
                            } else {
                                c.principals.join(",")
                            },
                        ]
                    })
                    .collect();
                out.write_all(table(&["TENANT", "CA", "ROLE", "PRINCIPALS"], &rows).as_bytes())?;
            }
        }
        TenantCommand::List { json } => {
            let tenants = store.tenants()?;
            if json {
                print_json(out, &tenants)?;
            } else {
                let rows: Vec<Vec<String>> = tenants
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.created_at.clone(),
                            format!("{}d", t.retention_days),
                            format!("{}d", t.session_retention_days),
                        ]
                    })
                    .collect();
                out.write_all(
                    table(
                        &["NAME", "CREATED", "RETENTION", "SESSION RETENTION"],
                        &rows,
                    )
                    .as_bytes(),
                )?;
            }
        }
    }
    Ok(())
}

/// Deletes a file the store no longer refers to; a file already gone is fine, any other
/// failure is logged (the store change stands).
fn remove_file_if_there(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot delete {}: {e}", path.display()),
    }
}

fn token(out: &mut dyn Write, store: &Store, cmd: TokenCommand, change: &mut Change) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            tenant,
            ttl,
            uses,
            require_accept,
            allow_replace,
            api,
            role,
            json,
        } => {
            let (kind, ttl) = if api {
                (TokenKind::Api, ttl)
            } else {
                (TokenKind::Enroll, ttl.or(Some(DEFAULT_ENROLL_TTL)))
            };
            let token = store.create_token(NewToken {
                tenant: &tenant,
                kind,
                ttl,
                uses,
                require_accept,
                allow_replace,
                role: role.into(),
            })?;
            change.target = Some(token.id.clone());
            change.set("id", &token.id);
            if json {
                print_json(out, &token)?;
            } else {
                writeln!(out, "{}", token.secret)?;
            }
        }
        TokenCommand::List { tenant, json } => {
            let tokens = store.tokens(tenant.as_deref())?;
            if json {
                print_json(out, &tokens)?;
            } else {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.tenant.clone(),
                            match t.role {
                                Some(r) => format!("{} ({r})", t.kind),
                                None => t.kind.to_string(),
                            },
                            dash(&t.expires_at),
                            t.uses_left
                                .map(|u| u.to_string())
                                .unwrap_or_else(|| "-".into()),
                            if t.require_accept { "yes" } else { "no" }.into(),
                            if t.allow_replace { "yes" } else { "no" }.into(),
                            t.state.to_string(),
                        ]
                    })
                    .collect();
                let header = [
                    "ID",
                    "TENANT",
                    "KIND",
                    "EXPIRES",
                    "USES-LEFT",
                    "REQUIRE-ACCEPT",
                    "ALLOW-REPLACE",
                    "STATE",
                ];
                out.write_all(table(&header, &rows).as_bytes())?;
            }
        }
        TokenCommand::Revoke { id } => {
            change.tenant = store.token_tenant(&id)?;
            store.revoke_token(&id)?;
            writeln!(out, "token {id} revoked")?;
        }
        TokenCommand::SetRole { id, role } => {
            change.tenant = store.token_tenant(&id)?;
            let role = Role::from(role);
            store.set_token_role(&id, role)?;
            writeln!(out, "token {id} now has role {role}")?;
        }
    }
    Ok(())
}

/// The largest public key file read: a key line is well under 16 KiB (even RSA 16384 with a
/// long comment), and a file far larger is not a key.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads and checks an OpenSSH public key file; errors name the file.
fn read_public_key(path: &std::path::Path) -> Result<(String, EngineerKey)> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading the public key {}", path.display()))?
        .len();
    if size > MAX_KEY_FILE {
        anyhow::bail!(
            "{}: {size} bytes is too large for a public key file (at most {MAX_KEY_FILE})",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the public key {}", path.display()))?;
    let key = EngineerKey::parse(&text).with_context(|| path.display().to_string())?;
    Ok((text, key))
}

fn user(out: &mut dyn Write, store: &Store, cmd: UserCommand, change: &mut Change) -> Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            tenant,
            role,
            key,
        } => {
            // Checked here first so that a bad key is reported with its file name, while a
            // missing tenant or a taken name is not.
            let (text, parsed) = read_public_key(&key)?;
            change.set("fingerprint", &parsed.fingerprint);
            let user = store.add_user(&name, &tenant, role.into(), &text)?;
            writeln!(
                out,
                "user {} added to tenant {} as {} ({})",
                user.name, user.tenant, user.role, user.fingerprint
            )?;
        }
        UserCommand::Remove { name, tenant } => {
            let user = store.remove_user(&tenant, &name)?;
            change.set("role", user.role);
            change.set("fingerprints", &user.fingerprints);
            writeln!(out, "user {name} removed from tenant {tenant}")?;
        }
        UserCommand::Disable { name, tenant } => {
            let changed = store.set_user_disabled(&tenant, &name, true)?;
            change.set("changed", changed);
            writeln!(out, "user {name} of tenant {tenant} disabled")?;
        }
        UserCommand::Enable { name, tenant } => {
            let changed = store.set_user_disabled(&tenant, &name, false)?;
            change.set("changed", changed);
            writeln!(out, "user {name} of tenant {tenant} enabled")?;
        }
        UserCommand::SetRole { name, tenant, role } => {
            let role = Role::from(role);
            let previous = store.set_user_role(&tenant, &name, role)?;
            change.set("previous_role", previous);
            writeln!(out, "user {name} of tenant {tenant} now has role {role}")?;
        }
        UserCommand::AddKey { name, tenant, key } => {
            let (text, parsed) = read_public_key(&key)?;
            change.set("fingerprint", &parsed.fingerprint);
            let fingerprint = store.add_user_key(&tenant, &name, &text)?;
            writeln!(
                out,
                "user {name} of tenant {tenant} holds key {fingerprint}"
            )?;
        }
        UserCommand::RemoveKey {
            name,
            tenant,
            fingerprint,
        } => {
            store.remove_user_key(&tenant, &name, &fingerprint)?;
            writeln!(
                out,
                "user {name} of tenant {tenant} no longer holds key {fingerprint}"
            )?;
        }
        UserCommand::List { json } => {
            let users = store.users()?;
            if json {
                print_json(out, &users)?;
            } else {
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.tenant.clone(),
                            u.role.to_string(),
                            if u.disabled { "disabled" } else { "enabled" }.into(),
                            u.fingerprints.join(","),
                        ]
                    })
                    .collect();
                out.write_all(
                    table(&["NAME", "TENANT", "ROLE", "STATUS", "KEYS"], &rows).as_bytes(),
                )?;
            }
        }
    }
    Ok(())
}

fn device(
    out: &mut dyn Write,
    store: &Store,
    cmd: DeviceCommand,
    change: &mut Change,
) -> Result<()> {
    match cmd {
        DeviceCommand::List { tenant, json } => {
            let devices = store.devices(tenant.as_deref())?;
            if json {
                print_json(out, &devices)?;
            } else {
                out.write_all(table(DEVICE_HEADER, &device_rows(&devices)).as_bytes())?;
            }
        }
        DeviceCommand::Show { id, json } => {
            let d = store.resolve_device(&id)?;
            let tags = store.device_tags(&d.id)?;
            let reported = store.device_state(&d.id)?.reported;
            let inventory = reported.as_ref().and_then(|r| r.inventory.as_ref());
            let components = reported.as_ref().map_or(&[][..], |r| &r.components[..]);
            if json {
                /// The device with its tags, and what it last reported about itself.
                #[derive(Serialize)]
                struct Shown<'a> {
                    #[serde(flatten)]
                    device: &'a Device,
                    tags: &'a [String],
                    inventory: Option<&'a Inventory>,
                    components: &'a [ReportedComponent],
                }
                print_json(
                    out,
                    &Shown {
                        device: &d,
                        tags: &tags,
                        inventory,
                        components,
                    },
                )?;
            } else {
                let rows = [
                    ("id", d.id.clone()),
                    ("name", d.name.clone()),
                    ("tenant", d.tenant.clone()),
                    ("status", d.status.to_string()),
                    ("online", if d.online { "yes" } else { "no" }.into()),
                    ("last connected", dash(&d.last_connected)),
                    ("last disconnected", dash(&d.last_disconnected)),
                    ("remote address", dash(&d.remote_addr)),
                    ("agent version", dash(&d.agent_version)),
                    ("key", d.fingerprint.clone()),
                    ("enrolled", d.created_at.clone()),
                    ("tags", words(&tags)),
                ];
                print_fields(out, 18, &rows)?;
                if let Some(inventory) = inventory {
                    print_inventory(out, inventory)?;
                }
                if reported.is_some() {
                    print_components(out, components)?;
                }
            }
        }
        DeviceCommand::Accept { id } => {
            let d = store.resolve_device(&id)?;
            change.device(&d);
            store.set_device_status(&d.id, DeviceStatus::Accepted)?;
            writeln!(out, "device {} ({}) accepted", d.id, d.name)?;
        }
        DeviceCommand::Reject { id } => {
            let d = store.resolve_device(&id)?;
            change.device(&d);
            store.set_device_status(&d.id, DeviceStatus::Rejected)?;
            writeln!(out, "device {} ({}) rejected", d.id, d.name)?;
        }
        DeviceCommand::Remove { id } => {
            let d = store.resolve_device(&id)?;
            change.device(&d);
            store.remove_device(&d.id)?;
            writeln!(out, "device {} ({}) removed", d.id, d.name)?;
        }
        DeviceCommand::Tag {
            device,
            tags,
            remove,
            json,
        } => {
            let d = store.resolve_device(&device)?;
            change.device(&d);
            let after = if remove {
                store.set_tags(&d.id, &[], &tags)?
            } else {
                store.set_tags(&d.id, &tags, &[])?
            };
            if json {
                print_json(
                    out,
                    &serde_json::json!({ "device_id": d.id, "tags": after }),
                )?;
            } else {
                writeln!(out, "{}", words(&after))?;
            }
        }
        DeviceCommand::State { device, json } => {
            let d = store.resolve_device(&device)?;
            let state = store.device_state(&d.id)?;
            if json {
                print_json(out, &state)?;
            } else {
                print_device_state(out, &state)?;
            }
        }
        DeviceCommand::Config { device, set, json } => {
            let d = store.resolve_device(&device)?;
            change.device(&d);
            let overrides = crate::store::config_overrides(&set)?;
            let desired = store.push_config(&d.id, &overrides)?;
            change.set("version", desired.version);
            if json {
                print_json(out, &desired)?;
            } else {
                writeln!(
                    out,
                    "configuration version {} pushed to {}",
                    desired.version,
                    escape_controls(&d.name)
                )?;
            }
        }
    }
    Ok(())
}

/// A byte count for people: `512B`, `3.4K`, `29.5G` (powers of 1024, as `df -h`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// A list under a label, one item per line indented by two blanks; `-` beside the label when
/// it is empty.
fn print_list(out: &mut dyn Write, label: &str, items: &[String]) -> Result<()> {
    if items.is_empty() {
        writeln!(out, "{:<18} -", format!("{label}:"))?;
    } else {
        writeln!(out, "{label}:")?;
        for item in items {
            writeln!(out, "  {}", escape_controls(item))?;
        }
    }
    Ok(())
}

/// What a device reported about itself, for `relay device show`.
fn print_inventory(out: &mut dyn Write, inventory: &Inventory) -> Result<()> {
    let rows = [
        ("hostname", inventory.hostname.clone()),
        ("machine-id", dash(&inventory.machine_id)),
        ("kernel", inventory.kernel.clone()),
        ("os", dash(&inventory.os)),
        ("arch", inventory.arch.clone()),
        (
            "memory",
            format!("{} MiB", inventory.memory_bytes / (1024 * 1024)),
        ),
        ("agent", inventory.agent_version.clone()),
    ];
    print_fields(out, 18, &rows)?;
    let disks: Vec<String> = inventory
        .disks
        .iter()
        .map(|d| {
            format!(
                "{} {} {} {} {}",
                d.mount,
                d.device,
                d.fs,
                human_bytes(d.total_bytes),
                human_bytes(d.available_bytes)
            )
        })
        .collect();
    print_list(out, "disks", &disks)?;
    let interfaces: Vec<String> = inventory
        .interfaces
        .iter()
        .map(|i| {
            let addresses = if i.addresses.is_empty() {
                "-".to_string()
            } else {
                i.addresses.join(",")
            };
            format!("{} {} {addresses}", i.name, dash(&i.mac))
        })
        .collect();
    print_list(out, "interfaces", &interfaces)
}

/// The components a device reported, for `relay device show`.
fn print_components(out: &mut dyn Write, components: &[ReportedComponent]) -> Result<()> {
    let lines: Vec<String> = components
        .iter()
        .map(|c| format!("{} {} {}", c.name, c.version, c.state))
        .collect();
    print_list(out, "components", &lines)
}

/// Words separated by blanks, or `-` when there are none.
fn words(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(" ")
    }
}

/// `relay device state` in text: the versions and outcome, then the components side by side.
fn print_device_state(out: &mut dyn Write, state: &crate::store::DeviceState) -> Result<()> {
    let desired = state.desired.as_ref();
    let reported = state.reported.as_ref();
    let desired_version = match desired {
        Some(d) => match &d.deployment_id {
            Some(dep) => format!("{} (deployment {dep})", d.version),
            None => d.version.to_string(),
        },
        None => "-".into(),
    };
    let rows = [
        ("desired version", desired_version),
        (
            "reported version",
            reported.map_or_else(|| "-".into(), |r| r.version.to_string()),
        ),
        (
            "status",
            reported
                .and_then(|r| r.status)
                .map_or_else(|| "-".into(), |s| s.to_string()),
        ),
        ("message", dash(&reported.and_then(|r| r.message.clone()))),
        ("reported at", dash(&state.reported_at)),
    ];
    print_fields(out, 18, &rows)?;
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    if let Some(d) = desired {
        names.extend(d.components.keys().map(String::as_str));
    }
    if let Some(r) = reported {
        names.extend(r.components.iter().map(|c| c.name.as_str()));
    }
    let table_rows: Vec<Vec<String>> = names
        .into_iter()
        .map(|name| {
            let want = desired.and_then(|d| d.components.get(name));
            let have = reported.and_then(|r| r.components.iter().find(|c| c.name == name));
            let failed = reported.and_then(|r| {
                r.failed
                    .iter()
                    .find(|f| f.name == name && want.is_some_and(|w| w.version == f.version))
            });
            // Says how the two sides differ, so a component removed on the device by hand, or
            // one that failed, does not read as if it were running.
            let note = match (want, have, failed) {
                (_, _, Some(f)) => format!("failed: {}", f.error),
                (Some(_), None, None) if reported.is_some() => "not on the device".into(),
                (Some(w), Some(h), None) if w.version != h.version => {
                    "device runs another version".into()
                }
                (None, Some(_), None) => "not desired (deployed on the device)".into(),
                _ => "-".into(),
            };
            vec![
                name.to_string(),
                want.map_or_else(|| "-".into(), |c| c.version.clone()),
                have.map_or_else(|| "-".into(), |c| c.version.clone()),
                have.map_or_else(|| "-".into(), |c| c.state.clone()),
                note,
            ]
        })
        .collect();
    writeln!(out)?;
    out.write_all(
        table(
            &[
                "NAME",
                "DESIRED VERSION",
                "REPORTED VERSION",
                "STATE",
                "NOTE",
            ],
            &table_rows,
        )
        .as_bytes(),
    )?;
    Ok(())
}

fn artifact(
    out: &mut dyn Write,
    store: &Store,
    config: &RelayConfig,
    cmd: ArtifactCommand,
    change: &mut Change,
) -> Result<()> {
    match cmd {
        ArtifactCommand::Put { tenant, file, json } => {
            let data =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("{} is not a file name", file.display()))?;
            let info = store.put_artifact(&config.artifacts_dir(), &tenant, &name, &data)?;
            change.target = Some(info.sha256.clone());
            change.set("sha256", &info.sha256);
            change.set("size", data.len());
            if json {
                print_json(out, &info)?;
            } else {
                writeln!(out, "{}", info.sha256)?;
            }
        }
        ArtifactCommand::List { tenant, json } => {
            let artifacts = store.artifacts(tenant.as_deref())?;
            if json {
                print_json(out, &artifacts)?;
            } else {
                let rows: Vec<Vec<String>> = artifacts
                    .iter()
                    .map(|a| {
                        vec![
                            a.tenant.clone(),
                            a.sha256.clone(),
                            a.size.to_string(),
                            a.name.clone(),
                            a.created_at.clone(),
                        ]
                    })
                    .collect();
                out.write_all(
                    table(&["TENANT", "SHA256", "SIZE", "NAME", "CREATED"], &rows).as_bytes(),
                )?;
            }
        }
    }
    Ok(())
}

/// How many devices of a deployment are in each status, like `succeeded 2, pending 1`.
fn status_summary(view: &crate::store::DeploymentView) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for d in &view.devices {
        *counts.entry(d.status.to_string()).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn deploy(
    out: &mut dyn Write,
    store: &Store,
    config: &RelayConfig,
    cmd: DeployCommand,
) -> Result<()> {
    match cmd {
        DeployCommand::Create {
            tenant,
            target,
            recipes,
            artifacts,
            remove,
            bundle,
            set,
            json,
        } => {
            let os = match &bundle {
                Some(path) => {
                    let data = std::fs::read(path)
                        .with_context(|| format!("reading the bundle {}", path.display()))?;
                    // Signatures are the devices' to check against their keyrings; here the
                    // manifest only names the version.
                    let (manifest, _) =
                        tether_protocol::bundle::read_header_unverified(&mut &data[..])
                            .with_context(|| format!("reading the bundle {}", path.display()))?;
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "bundle".into());
                    let stored =
                        store.put_artifact(&config.artifacts_dir(), &tenant, &name, &data)?;
                    Some(tether_protocol::fleet::DesiredOs {
                        version: manifest.version,
                        bundle_sha256: stored.sha256,
                    })
                }
                None => None,
            };
            let mut texts = Vec::with_capacity(recipes.len());
            for path in &recipes {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the recipe {}", path.display()))?;
                texts.push((path.display().to_string(), text));
            }
            let files = match &artifacts {
                Some(dir) => crate::store::read_local_artifacts(dir, &texts)
                    .with_context(|| format!("--artifacts {}", dir.display()))?,
                None => Vec::new(),
            };
            let view = store.create_deployment(
                &config.artifacts_dir(),
                NewDeployment {
                    tenant: &tenant,
                    target,
                    recipes: texts,
                    set,
                    os,
                    artifacts: files,
                    remove,
                },
            )?;
            if json {
                print_json(out, &view)?;
            } else {
                writeln!(out, "{}", view.id)?;
            }
        }
        DeployCommand::Status { id, json } => {
            let view = store
                .deployment(&id, None)?
                .with_context(|| format!("no deployment named {id:?}"))?;
            if json {
                print_json(out, &view)?;
            } else {
                let components: Vec<String> = view
                    .components
                    .iter()
                    .map(|(name, c)| format!("{name} {}", c.version))
                    .collect();
                let rows = [
                    ("deployment", view.id.clone()),
                    ("tenant", view.tenant.clone()),
                    ("target", view.target.clone()),
                    ("created", view.created_at.clone()),
                    ("components", components.join(", ")),
                    ("removes", view.removed.join(", ")),
                ];
                let rows: Vec<(&str, String)> = rows
                    .into_iter()
                    .filter(|(k, v)| *k != "removes" || !v.is_empty())
                    .collect();
                print_fields(out, 12, &rows)?;
                let devices: Vec<Vec<String>> = view
                    .devices
                    .iter()
                    .map(|d| {
                        vec![
                            d.device_id.clone(),
                            d.device_name.clone(),
                            d.status.to_string(),
                            dash(&d.message),
                            d.updated_at.clone(),
                        ]
                    })
                    .collect();
                writeln!(out)?;
                out.write_all(
                    table(
                        &["DEVICE", "NAME", "STATUS", "MESSAGE", "UPDATED"],
                        &devices,
                    )
                    .as_bytes(),
                )?;
            }
        }
        DeployCommand::List { tenant, json } => {
            let views = store.deployments(tenant.as_deref())?;
            if json {
                print_json(out, &views)?;
            } else {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.id.clone(),
                            v.tenant.clone(),
                            v.target.clone(),
                            v.components
                                .keys()
                                .cloned()
                                .chain(v.removed.iter().map(|r| format!("-{r}")))
                                .collect::<Vec<_>>()
                                .join(","),
                            status_summary(v),
                            v.created_at.clone(),
                        ]
                    })
                    .collect();
                out.write_all(
                    table(
                        &["ID", "TENANT", "TARGET", "COMPONENTS", "DEVICES", "CREATED"],
                        &rows,
                    )
                    .as_bytes(),
                )?;
            }
        }
    }
    Ok(())
}

/// Most characters of the ACTION column of `relay action list`.
const ACTION_SUMMARY_CHARS: usize = 40;

/// An action in one short line: `run: df -h`, `restart: com.example.app`, `reboot`; a long
/// command is cut with `…`, and line breaks and tabs are shown as blanks.
fn action_summary(action: &ActionKind) -> String {
    let text = match action {
        ActionKind::Run { command, .. } => format!("run: {command}"),
        ActionKind::Restart { component } => format!("restart: {component}"),
        ActionKind::Reboot => "reboot".into(),
    };
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() <= ACTION_SUMMARY_CHARS {
        text
    } else {
        let mut cut: String = text.chars().take(ACTION_SUMMARY_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

fn exit_code(view: &ActionView) -> String {
    view.exit_code.map_or_else(|| "-".into(), |c| c.to_string())
}

/// `relay action show` in text: every field, then the output as the device sent it.
fn print_action(out: &mut dyn Write, view: &ActionView) -> Result<()> {
    let mut rows = vec![
        ("id", view.id.clone()),
        ("tenant", view.tenant.clone()),
        (
            "device",
            format!("{} ({})", view.device_name, view.device_id),
        ),
    ];
    match &view.action {
        ActionKind::Run {
            command,
            timeout_secs,
        } => {
            rows.push(("action", "run".into()));
            rows.push(("command", command.clone()));
            rows.push((
                "timeout",
                timeout_secs.map_or_else(|| "-".into(), |t| format!("{t}s")),
            ));
        }
        ActionKind::Restart { component } => {
            rows.push(("action", "restart".into()));
            rows.push(("component", component.clone()));
        }
        ActionKind::Reboot => rows.push(("action", "reboot".into())),
    }
    rows.extend([
        ("status", view.status.to_string()),
        ("exit code", exit_code(view)),
        ("error", dash(&view.error)),
        ("created", view.created_at.clone()),
        ("expires", dash(&view.expires_at)),
        ("sent", dash(&view.sent_at)),
        ("finished", dash(&view.finished_at)),
        (
            "truncated",
            if view.truncated { "yes" } else { "no" }.into(),
        ),
    ]);
    print_fields(out, 10, &rows)?;
    writeln!(out, "output:")?;
    if let Some(output) = &view.output {
        // Line by line, so the output keeps its lines while nothing in it reaches the
        // terminal as a control sequence.
        for line in output.lines() {
            writeln!(out, "{}", escape_controls(line))?;
        }
    }
    Ok(())
}

fn action(
    out: &mut dyn Write,
    store: &Store,
    cmd: ActionCommand,
    change: &mut Change,
) -> Result<()> {
    match cmd {
        ActionCommand::Create {
            device,
            run,
            timeout,
            restart,
            reboot,
            expires,
            json,
        } => {
            let kind = match (run, restart, reboot) {
                (Some(command), None, false) => ActionKind::Run {
                    command,
                    timeout_secs: timeout,
                },
                (None, Some(component), false) => ActionKind::Restart { component },
                (None, None, true) => ActionKind::Reboot,
                // clap's group allows exactly one.
                _ => anyhow::bail!("give exactly one of --run, --restart and --reboot"),
            };
            let view = store.create_action(None, &device, &kind, expires)?;
            change.tenant = Some(view.tenant.clone());
            change.target = Some(view.device_id.clone());
            change.set("id", &view.id);
            change.set("device_id", &view.device_id);
            change.set("device_name", &view.device_name);
            if json {
                print_json(out, &view)?;
            } else {
                writeln!(out, "{}", view.id)?;
            }
        }
        ActionCommand::List {
            device,
            tenant,
            json,
        } => {
            let views = store.actions(tenant.as_deref(), device.as_deref())?;
            if json {
                print_json(out, &views)?;
            } else {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.id.clone(),
                            v.device_name.clone(),
                            action_summary(&v.action),
                            v.status.to_string(),
                            exit_code(v),
                            v.created_at.clone(),
                        ]
                    })
                    .collect();
                out.write_all(
                    table(
                        &["ID", "DEVICE", "ACTION", "STATUS", "EXIT", "CREATED"],
                        &rows,
                    )
                    .as_bytes(),
                )?;
            }
        }
        ActionCommand::Show { id, json } => {
            let view = store
                .action(&id, None)?
                .with_context(|| format!("no action named {id:?}"))?;
            if json {
                print_json(out, &view)?;
            } else {
                print_action(out, &view)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ alice";

    /// Runs `relay --data-dir <dir> args…` on the store there (created first, as `relay init`
    /// would); returns stdout or the error as printed.
    fn relay(dir: &std::path::Path, args: &[&str]) -> Result<String, String> {
        Store::open(&dir.join("relay.db")).map_err(|e| e.to_string())?;
        let mut argv = vec!["relay", "--data-dir"];
        let dir = dir.display().to_string();
        argv.push(&dir);
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        run(cli, &mut out).map_err(|e| format!("{e:#}"))?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    #[test]
    fn the_command_line_is_consistent_and_everything_has_help() {
        Cli::command().debug_assert();
        let mut cmd = Cli::command();
        cmd.build();
        fn check(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{path} has no help");
                for arg in sub.get_arguments() {
                    assert!(
                        arg.get_help().is_some() || arg.get_id() == "help",
                        "{path} {} has no help",
                        arg.get_id()
                    );
                }
                check(sub, &path);
            }
        }
        check(&cmd, "relay");
    }

    #[test]
    fn usage_errors_are_exit_code_2() {
        for argv in [
            vec!["relay"],
            vec!["relay", "token", "create"],
            vec!["relay", "token", "create", "--tenant", "a", "--ttl", "soon"],
            vec![
                "relay", "token", "create", "--tenant", "a", "--api", "--uses", "2",
            ],
            vec![
                "relay", "user", "add", "u", "--tenant", "a", "--role", "boss", "--key", "k",
            ],
            vec!["relay", "serve", "--ssh-listen", "nowhere"],
        ] {
            let e = Cli::try_parse_from(&argv).err();
            assert_eq!(e.map(|e| e.exit_code()), Some(2), "{argv:?}");
        }
        let help = Cli::try_parse_from(["relay", "device", "--help"]).err();
        assert_eq!(help.map(|e| e.exit_code()), Some(0));
    }

    #[test]
    fn tables_are_aligned() {
        let rows = vec![
            vec!["a".to_string(), "long value".to_string(), "x".to_string()],
            vec!["longer".to_string(), "b".to_string(), String::new()],
        ];
        assert_eq!(
            table(&["ONE", "TWO", "THREE"], &rows),
            "ONE     TWO         THREE\na       long value  x\nlonger  b\n"
        );
    }

    #[test]
    fn control_characters_are_shown_as_escapes() {
        assert!(matches!(
            escape_controls("0.1.0 é ✓"),
            Cow::Borrowed("0.1.0 é ✓")
        ));
        assert_eq!(
            escape_controls("a\x1b[31mred\nfake row\r\tx\x00\x7f\u{9b}2J\u{85}\u{202e}z"),
            "a\\x1b[31mred\\nfake row\\r\\tx\\x00\\x7f\\u{9b}2J\\u{85}\\u{202e}z"
        );
        // One cell stays one line, and the columns stay aligned on what is shown.
        let rows = vec![
            vec!["a\nb".to_string(), "x".to_string()],
            vec!["\x1b".to_string(), "y".to_string()],
        ];
        assert_eq!(
            table(&["ONE", "TWO"], &rows),
            "ONE   TWO\na\\nb  x\n\\x1b  y\n"
        );
    }

    #[test]
    fn admin_commands_work_on_the_store() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        assert_eq!(
            relay(d, &["tenant", "add", "acme"])?,
            "tenant acme created\n"
        );
        assert_eq!(
            relay(d, &["tenant", "add", "acme"]).err().as_deref(),
            Some("tenant \"acme\" already exists")
        );
        let tenants: serde_json::Value =
            serde_json::from_str(&relay(d, &["tenant", "list", "--json"])?)?;
        assert_eq!(tenants[0]["name"], "acme");

        // `token create` prints the secret alone, so `TOKEN=$(relay token create …)` works.
        let secret = relay(d, &["token", "create", "--tenant", "acme", "--uses", "2"])?;
        assert!(
            secret.starts_with("tet_") && secret.trim_end().len() == 47,
            "{secret:?}"
        );
        assert_eq!(secret.lines().count(), 1);
        let created: serde_json::Value = serde_json::from_str(&relay(
            d,
            &["token", "create", "--tenant", "acme", "--api", "--json"],
        )?)?;
        assert_eq!(created["kind"], "api");
        assert!(created["expires_at"].is_null());
        assert_eq!(
            relay(d, &["token", "create", "--tenant", "nope"])
                .err()
                .as_deref(),
            Some("no tenant named \"nope\"")
        );
        let listed = relay(d, &["token", "list"])?;
        assert!(listed.starts_with("ID "), "{listed}");
        assert!(!listed.contains(secret.trim()), "token list shows a secret");
        let tokens: serde_json::Value =
            serde_json::from_str(&relay(d, &["token", "list", "--tenant", "acme", "--json"])?)?;
        assert_eq!(tokens[0]["uses_left"], 2);
        assert_eq!(tokens[0]["state"], "active");

        let key = d.join("alice.pub");
        std::fs::write(&key, format!("{KEY}\n"))?;
        let key_arg = key.display().to_string();
        let added = relay(
            d,
            &[
                "user", "add", "alice", "--tenant", "acme", "--role", "operator", "--key", &key_arg,
            ],
        )?;
        assert!(added.contains("as operator (SHA256:"), "{added}");
        std::fs::write(&key, "ssh-ed25519 garbage\n")?;
        let e = relay(
            d,
            &[
                "user", "add", "bob", "--tenant", "acme", "--role", "viewer", "--key", &key_arg,
            ],
        )
        .err()
        .unwrap_or_default();
        assert!(
            e.starts_with(&key_arg) && e.contains("not an OpenSSH public key"),
            "{e}"
        );
        std::fs::write(&key, KEY)?;
        assert_eq!(
            relay(
                d,
                &[
                    "user", "add", "bob", "--tenant", "nope", "--role", "viewer", "--key", &key_arg
                ],
            )
            .err()
            .as_deref(),
            Some("no tenant named \"nope\"")
        );
        let e = relay(
            d,
            &[
                "user",
                "add",
                "bob",
                "--tenant",
                "acme",
                "--role",
                "viewer",
                "--key",
                "/nonexistent.pub",
            ],
        )
        .err()
        .unwrap_or_default();
        assert!(e.contains("reading the public key /nonexistent.pub"), "{e}");
        let users = relay(d, &["user", "list"])?;
        assert!(
            users.contains("alice") && users.contains("operator"),
            "{users}"
        );

        assert_eq!(relay(d, &["device", "list", "--json"])?.trim(), "[]");
        assert_eq!(
            relay(d, &["device", "list"])?,
            format!("{}\n", DEVICE_HEADER.join("  "))
        );
        assert_eq!(
            relay(d, &["device", "show", "board1"]).err().as_deref(),
            Some("no device named \"board1\"")
        );
        assert_eq!(
            relay(d, &["device", "list", "--tenant", "nope"])
                .err()
                .as_deref(),
            Some("no tenant named \"nope\"")
        );
        Ok(())
    }

    #[test]
    fn device_commands_take_an_id_or_a_unique_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        relay(d, &["tenant", "add", "acme"])?;
        let secret = relay(
            d,
            &["token", "create", "--tenant", "acme", "--require-accept"],
        )?;
        let store = Store::open(&d.join("relay.db"))?;
        let device = store
            .redeem_enroll_token(
                secret.trim(),
                crate::store::DeviceEnrollment {
                    name: "board1".into(),
                    public_key_openssh: KEY.into(),
                    fingerprint: "SHA256:x".into(),
                    agent_version: "0.1.0".into(),
                    force: false,
                },
            )?
            .device;
        store.mark_online(&device.id, "192.0.2.1:4000", None)?;
        let list = relay(d, &["device", "list"])?;
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 2, "{list}");
        // Columns line up: every header starts where its value starts.
        for (header, value) in [
            ("STATUS", "pending"),
            ("ONLINE", "yes"),
            ("LAST-SEEN", "now"),
        ] {
            assert_eq!(lines[0].find(header), lines[1].find(value), "{list}");
        }
        assert!(lines[1].contains("192.0.2.1:4000") && lines[1].contains("0.1.0"));
        assert_eq!(
            relay(d, &["device", "accept", "board1"])?,
            format!("device {} (board1) accepted\n", device.id)
        );
        let shown: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "show", &device.id, "--json"])?)?;
        assert_eq!(shown["status"], "accepted");
        assert_eq!(shown["online"], true);
        let text = relay(d, &["device", "show", "board1"])?;
        assert!(text.contains("status:            accepted"), "{text}");
        relay(d, &["device", "reject", &device.id])?;
        assert_eq!(
            store.unwelcome_devices(std::slice::from_ref(&device.id))?,
            vec![device.id.clone()]
        );
        relay(d, &["device", "remove", "board1"])?;
        assert!(store.device(&device.id)?.is_none());
        Ok(())
    }

    #[test]
    fn fleet_commands_tag_store_deploy_and_configure() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        relay(d, &["tenant", "add", "acme"])?;
        let secret = relay(d, &["token", "create", "--tenant", "acme"])?;
        let store = Store::open(&d.join("relay.db"))?;
        let device = store
            .redeem_enroll_token(
                secret.trim(),
                crate::store::DeviceEnrollment {
                    name: "board1".into(),
                    public_key_openssh: KEY.into(),
                    fingerprint: "SHA256:x".into(),
                    agent_version: "0.1.0".into(),
                    force: false,
                },
            )?
            .device;
        assert_eq!(
            relay(d, &["device", "tag", "board1", "eu", "edge"])?,
            "edge eu\n"
        );
        assert_eq!(
            relay(d, &["device", "tag", "board1", "eu", "--remove"])?,
            "edge\n"
        );
        let shown: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "show", "board1", "--json"])?)?;
        assert_eq!(shown["tags"], serde_json::json!(["edge"]));
        assert_eq!(shown["name"], "board1");
        assert!(relay(d, &["device", "show", "board1"])?.contains("tags:              edge"));

        // An artifact, and a recipe that needs it.
        let file = d.join("tool.bin");
        std::fs::write(&file, b"tool")?;
        let file_arg = file.display().to_string();
        // Whose it is must be said: there is no default tenant for a file.
        let e = relay(d, &["artifact", "put", &file_arg])
            .err()
            .unwrap_or_default();
        assert!(e.contains("--tenant"), "{e}");
        let e = relay(d, &["artifact", "put", "--tenant", "nope", &file_arg])
            .err()
            .unwrap_or_default();
        assert!(e.contains("nope"), "{e}");
        let sha = relay(d, &["artifact", "put", "--tenant", "acme", &file_arg])?;
        let sha = sha.trim();
        assert!(tether_protocol::fleet::is_sha256(sha), "{sha}");
        assert_eq!(std::fs::read(d.join("artifacts").join(sha))?, b"tool");
        let listed = relay(d, &["artifact", "list", "--tenant", "acme"])?;
        assert!(
            listed.contains(sha) && listed.contains("tool.bin") && listed.contains("acme"),
            "{listed}"
        );
        let listed: serde_json::Value =
            serde_json::from_str(&relay(d, &["artifact", "list", "--json"])?)?;
        assert_eq!(listed[0]["tenant"], "acme");
        assert_eq!(listed[0]["sha256"], sha);
        let recipe = d.join("app.yaml");
        std::fs::write(
            &recipe,
            format!(
                "name: com.example.app\nversion: 1.0.0\nmanifests:\n  - platform: {{ os: linux }}\n    artifacts:\n      - uri: relay:sha256:{sha}\n        sha256: {sha}\n    lifecycle:\n      run:\n        script: sleep 1000\n"
            ),
        )?;
        let recipe_arg = recipe.display().to_string();
        let id = relay(
            d,
            &[
                "deploy",
                "create",
                "--tenant",
                "acme",
                "--target",
                "tag:edge",
                "--recipe",
                &recipe_arg,
                "--set",
                "com.example.app:port=9000",
            ],
        )?;
        let id = id.trim();
        assert!(id.starts_with("dep_"), "{id}");
        let status = relay(d, &["deploy", "status", id])?;
        assert!(
            status.contains("com.example.app 1.0.0") && status.contains("pending"),
            "{status}"
        );
        let view: serde_json::Value =
            serde_json::from_str(&relay(d, &["deploy", "status", id, "--json"])?)?;
        assert_eq!(view["devices"][0]["device_id"], device.id.as_str());
        let list = relay(d, &["deploy", "list", "--tenant", "acme"])?;
        assert!(list.contains(id) && list.contains("pending 1"), "{list}");
        let e = relay(d, &["deploy", "status", "dep_nope"])
            .err()
            .unwrap_or_default();
        assert!(e.contains("dep_nope"), "{e}");
        let e = relay(
            d,
            &[
                "deploy",
                "create",
                "--tenant",
                "acme",
                "--target",
                "tag:nobody",
                "--recipe",
                &recipe_arg,
            ],
        )
        .err()
        .unwrap_or_default();
        assert_eq!(e, "no device of tenant acme has tag nobody");

        // Desired and reported state side by side, then a configuration push.
        let state = relay(d, &["device", "state", "board1"])?;
        assert!(state.contains(&format!("1 (deployment {id})")), "{state}");
        assert!(
            state.contains("NAME             DESIRED VERSION  REPORTED VERSION  STATE"),
            "{state}"
        );
        assert!(
            state.contains("com.example.app  1.0.0            -"),
            "{state}"
        );
        assert_eq!(
            relay(
                d,
                &[
                    "device",
                    "config",
                    "board1",
                    "--set",
                    "com.example.app:port=9100"
                ]
            )?,
            "configuration version 2 pushed to board1\n"
        );
        let state: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "state", "board1", "--json"])?)?;
        assert_eq!(
            state["desired"]["components"]["com.example.app"]["configuration"],
            serde_json::json!({ "port": 9100 })
        );
        let e = relay(d, &["device", "config", "board1", "--set", "port=1"])
            .err()
            .unwrap_or_default();
        assert!(e.contains("port=1"), "{e}");
        // A malformed target is a usage error.
        let e = Cli::try_parse_from([
            "relay", "deploy", "create", "--tenant", "acme", "--target", "edge", "--recipe", "a",
        ])
        .err();
        assert_eq!(e.map(|e| e.exit_code()), Some(2));
        Ok(())
    }

    #[test]
    fn deploy_create_takes_several_recipes_after_one_flag_and_removals() -> TestResult {
        let recipes = |args: &[&str]| -> Result<(Vec<PathBuf>, Vec<String>), String> {
            let mut all = vec![
                "relay", "deploy", "create", "--tenant", "acme", "--target", "tag:edge",
            ];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
                Command::Deploy(DeployCommand::Create {
                    recipes, remove, ..
                }) => Ok((recipes, remove)),
                other => Err(format!("parsed as {other:?}")),
            }
        };
        let (r, _) = recipes(&["--recipe", "a.yaml", "b.yaml", "--set", "port=1"])?;
        assert_eq!(r, [PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]);
        let (r, _) = recipes(&["--recipe", "a.yaml", "--recipe", "b.yaml", "c.yaml"])?;
        assert_eq!(r.len(), 3);
        // Only removals: no recipe needed.
        let (r, remove) = recipes(&["--remove", "com.example.a", "--remove", "com.example.b"])?;
        assert!(r.is_empty());
        assert_eq!(remove, ["com.example.a", "com.example.b"]);
        assert!(recipes(&[]).is_err(), "nothing to deploy was accepted");
        Ok(())
    }

    #[test]
    fn action_commands_create_list_and_show() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        relay(d, &["tenant", "add", "acme"])?;
        let secret = relay(d, &["token", "create", "--tenant", "acme"])?;
        let store = Store::open(&d.join("relay.db"))?;
        let device = store
            .redeem_enroll_token(
                secret.trim(),
                crate::store::DeviceEnrollment {
                    name: "board1".into(),
                    public_key_openssh: KEY.into(),
                    fingerprint: "SHA256:x".into(),
                    agent_version: "0.1.0".into(),
                    force: false,
                },
            )?
            .device;
        let long = format!("echo {}", "a".repeat(60));
        let id = relay(
            d,
            &[
                "action",
                "create",
                "board1",
                "--run",
                &long,
                "--timeout",
                "30",
                "--expires",
                "1h",
            ],
        )?;
        let id = id.trim().to_string();
        assert!(id.starts_with("act_") && id.len() == 16, "{id}");
        let restart: serde_json::Value = serde_json::from_str(&relay(
            d,
            &[
                "action",
                "create",
                &device.id,
                "--restart",
                "com.example.app",
                "--json",
            ],
        )?)?;
        assert_eq!(restart["action"]["kind"], "restart");
        assert_eq!(restart["status"], "pending");
        relay(d, &["action", "create", "board1", "--reboot"])?;

        let list = relay(d, &["action", "list"])?;
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 4, "{list}");
        assert!(
            lines[0].starts_with("ID ")
                && lines[0].contains("DEVICE")
                && lines[0].contains("ACTION")
                && lines[0].contains("EXIT"),
            "{list}"
        );
        // Newest first; a long command is cut to 40 characters.
        assert!(lines[1].contains("reboot"), "{list}");
        assert!(lines[2].contains("restart: com.example.app"), "{list}");
        let summary: String = format!("run: {long}").chars().take(39).collect();
        assert!(lines[3].contains(&format!("{summary}…")), "{list}");
        assert_eq!(lines[2].find("pending"), lines[0].find("STATUS"), "{list}");
        let listed: serde_json::Value = serde_json::from_str(&relay(
            d,
            &[
                "action", "list", "--device", "board1", "--tenant", "acme", "--json",
            ],
        )?)?;
        assert_eq!(listed.as_array().map(Vec::len), Some(3));
        assert_eq!(
            relay(d, &["action", "list", "--tenant", "nope"])
                .err()
                .as_deref(),
            Some("no tenant named \"nope\"")
        );

        store.take_pending_actions(&device.id)?;
        store.record_action_result(
            &device.id,
            &tether_protocol::fleet::ActionResult {
                id: id.clone(),
                status: tether_protocol::fleet::ActionStatus::Failed,
                exit_code: Some(3),
                output: "line one\nline two".into(),
                truncated: false,
                error: None,
            },
        )?;
        let shown = relay(d, &["action", "show", &id])?;
        assert!(shown.contains(&format!("command:   {long}\n")), "{shown}");
        assert!(shown.contains("timeout:   30s\n"), "{shown}");
        assert!(shown.contains("status:    failed\n"), "{shown}");
        assert!(shown.contains("exit code: 3\n"), "{shown}");
        assert!(
            shown.ends_with("\noutput:\nline one\nline two\n"),
            "{shown}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&relay(d, &["action", "show", &id, "--json"])?)?;
        assert_eq!(json["exit_code"], 3);
        assert_eq!(json["device_name"], "board1");
        let e = relay(d, &["action", "show", "act_nope"])
            .err()
            .unwrap_or_default();
        assert!(e.contains("act_nope"), "{e}");
        let e = relay(d, &["action", "create", "board1", "--run", " "])
            .err()
            .unwrap_or_default();
        assert!(e.contains("command"), "{e}");

        // Exactly one of --run, --restart and --reboot; --timeout only with --run.
        for argv in [
            vec!["relay", "action", "create", "b"],
            vec!["relay", "action", "create", "b", "--reboot", "--run", "x"],
            vec![
                "relay",
                "action",
                "create",
                "b",
                "--reboot",
                "--timeout",
                "3",
            ],
            vec![
                "relay",
                "action",
                "create",
                "b",
                "--reboot",
                "--expires",
                "0s",
            ],
        ] {
            let e = Cli::try_parse_from(&argv).err();
            assert_eq!(e.map(|e| e.exit_code()), Some(2), "{argv:?}");
        }
        Ok(())
    }

    #[test]
    fn device_show_includes_the_reported_inventory_and_components() -> TestResult {
        use tether_protocol::fleet::{Disk, Interface, ReportedState};
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        relay(d, &["tenant", "add", "acme"])?;
        let secret = relay(d, &["token", "create", "--tenant", "acme"])?;
        let store = Store::open(&d.join("relay.db"))?;
        let device = store
            .redeem_enroll_token(
                secret.trim(),
                crate::store::DeviceEnrollment {
                    name: "board1".into(),
                    public_key_openssh: KEY.into(),
                    fingerprint: "SHA256:x".into(),
                    agent_version: "0.1.0".into(),
                    force: false,
                },
            )?
            .device;
        // Nothing reported yet: no inventory lines, and null / [] in JSON.
        let text = relay(d, &["device", "show", "board1"])?;
        assert!(
            !text.contains("hostname:") && !text.contains("components:"),
            "{text}"
        );
        let shown: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "show", "board1", "--json"])?)?;
        assert!(shown["inventory"].is_null(), "{shown}");
        assert_eq!(shown["components"], serde_json::json!([]));

        let inventory = Inventory {
            hostname: "board1.local".into(),
            machine_id: Some("0123abcd".into()),
            kernel: "6.1.0-18-arm64".into(),
            os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            os_version: Some("12".into()),
            arch: "aarch64".into(),
            memory_bytes: 4 * 1024 * 1024 * 1024,
            disks: vec![Disk {
                mount: "/".into(),
                device: "/dev/mmcblk0p2".into(),
                fs: "ext4".into(),
                total_bytes: 32 * 1024 * 1024 * 1024,
                available_bytes: 3 * 1024 * 1024 * 1024 / 2,
            }],
            interfaces: vec![
                Interface {
                    name: "eth0".into(),
                    mac: Some("dc:a6:32:01:02:03".into()),
                    addresses: vec!["192.168.1.20/24".into(), "fe80::1/64".into()],
                },
                Interface {
                    name: "wg0".into(),
                    mac: None,
                    addresses: vec![],
                },
            ],
            agent_version: "0.2.0".into(),
        };
        store.record_report(
            &device.id,
            &ReportedState {
                components: vec![ReportedComponent {
                    name: "com.example.app".into(),
                    version: "1.0.0".into(),
                    state: "running".into(),
                    errors: 0,
                    restarts: 0,
                    last_error: None,
                    configuration: serde_json::json!({}),
                }],
                inventory: Some(inventory.clone()),
                ..Default::default()
            },
        )?;
        let text = relay(d, &["device", "show", "board1"])?;
        for line in [
            "hostname:          board1.local\n",
            "machine-id:        0123abcd\n",
            "kernel:            6.1.0-18-arm64\n",
            "os:                Debian GNU/Linux 12 (bookworm)\n",
            "arch:              aarch64\n",
            "memory:            4096 MiB\n",
            "agent:             0.2.0\n",
            "disks:\n  / /dev/mmcblk0p2 ext4 32.0G 1.5G\n",
            "interfaces:\n  eth0 dc:a6:32:01:02:03 192.168.1.20/24,fe80::1/64\n  wg0 - -\n",
            "components:\n  com.example.app 1.0.0 running\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let shown: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "show", &device.id, "--json"])?)?;
        assert_eq!(shown["inventory"], serde_json::to_value(&inventory)?);
        assert_eq!(shown["components"][0]["name"], "com.example.app");
        assert_eq!(shown["tags"], serde_json::json!([]));
        assert_eq!(shown["name"], "board1");
        Ok(())
    }

    #[test]
    fn sizes_and_action_summaries_read_well() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(29 * 1024 * 1024 * 1024), "29.0G");
        assert_eq!(action_summary(&ActionKind::Reboot), "reboot");
        assert_eq!(
            action_summary(&ActionKind::Run {
                command: "a\nb".into(),
                timeout_secs: None
            }),
            "run: a b"
        );
        let long = action_summary(&ActionKind::Run {
            command: "é".repeat(50),
            timeout_secs: None,
        });
        assert_eq!(long.chars().count(), 40);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn a_config_file_is_read_and_data_dir_overrides_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("relay.yaml");
        std::fs::write(
            &file,
            format!("data_dir: {}/from-file\n", dir.path().display()),
        )?;
        let cfg = file.display().to_string();
        let cli = Cli::try_parse_from(["relay", "--config", &cfg, "tenant", "list"])?;
        assert_eq!(load_config(&cli)?.data_dir, dir.path().join("from-file"));
        let cli = Cli::try_parse_from([
            "relay",
            "tenant",
            "list",
            "--config",
            &cfg,
            "--data-dir",
            "/x",
        ])?;
        assert_eq!(
            load_config(&cli)?.store_path(),
            PathBuf::from("/x/relay.db")
        );
        std::fs::write(&file, "bogus: 1\n")?;
        let cli = Cli::try_parse_from(["relay", "--config", &cfg, "tenant", "list"])?;
        let e = format!(
            "{:#}",
            load_config(&cli).err().ok_or("bad config accepted")?
        );
        assert!(e.contains("relay.yaml") && e.contains("bogus"), "{e}");
        Ok(())
    }
}
