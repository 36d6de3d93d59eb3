//! The relay's command line: `relay serve` and the admin commands that work on the store
//! (also while `serve` runs, since SQLite is shared safely between processes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::{self, RelayConfig};
use crate::store::{DeviceStatus, NewToken, Role, Store, TokenKind};

/// tether relay: device links, engineers' SSH sessions and the fleet API.
#[derive(Debug, Parser)]
#[command(name = "relay", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (YAML) [default: built-in defaults].
    #[arg(long, global = true, env = "TETHER_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (host key, store); overrides the configuration.
    #[arg(long, global = true)]
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
        #[arg(long)]
        ssh_listen: Option<SocketAddr>,
        /// HTTP listen address; overrides http.listen.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
    },
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
        /// Most records to print (the newest ones) [default: 20].
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
        /// Tenant name.
        name: String,
    },
    /// Set how many days of telemetry the tenant keeps (default 30).
    Retention {
        /// Tenant name.
        name: String,
        /// Days to keep.
        #[arg(long)]
        days: u32,
    },
    /// List tenants.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `relay token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token; prints only the secret (or JSON with --json).
    Create {
        /// Tenant the token belongs to.
        #[arg(long)]
        tenant: String,
        /// Lifetime, e.g. 24h, 30m [default: 24h for enrollment tokens, none for API tokens].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// How many devices may enroll with it [default: unlimited].
        #[arg(long)]
        uses: Option<u32>,
        /// Devices enrolled with it wait for `relay device accept`.
        #[arg(long)]
        require_accept: bool,
        /// An HTTP API bearer token instead of an enrollment token.
        #[arg(long)]
        api: bool,
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
        /// User name.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub).
        #[arg(long)]
        key: PathBuf,
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
}

/// Parses arguments, runs the command and maps the outcome to an exit code
/// (0 ok, 1 failure, 2 usage).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

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

fn open_store(config: &RelayConfig) -> Result<Store> {
    let path = config.store_path();
    Store::open(&path).with_context(|| format!("opening the store {}", path.display()))
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as aligned columns under a header.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn print_record(r: &crate::store::StoredRecord, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        let level = r
            .level
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        println!(
            "{} #{} {} {}{} {}",
            r.ts, r.seq, r.kind, r.topic, level, r.payload
        );
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
        print_record(r, json)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        for r in store.telemetry(&page_query(&d.id, topic, after))? {
            after = r.seq;
            print_record(&r, json)?;
        }
    }
}

fn run(cli: Cli) -> Result<()> {
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
            let store = Arc::new(open_store(&config)?);
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(crate::server::serve(config, store))
        }
        Command::Tenant(cmd) => {
            let store = open_store(&config)?;
            match cmd {
                TenantCommand::Add { name } => {
                    let t = store.add_tenant(&name)?;
                    println!("tenant {} created", t.name);
                }
                TenantCommand::Retention { name, days } => {
                    store.set_retention(&name, days)?;
                    println!("tenant {name} keeps {days} days of telemetry");
                }
                TenantCommand::List { json } => {
                    let tenants = store.tenants()?;
                    if json {
                        print_json(&tenants)?;
                    } else {
                        let rows = tenants
                            .iter()
                            .map(|t| vec![t.name.clone(), t.created_at.clone()])
                            .collect::<Vec<_>>();
                        print_table(&["NAME", "CREATED"], &rows);
                    }
                }
            }
            Ok(())
        }
        Command::Token(cmd) => {
            let store = open_store(&config)?;
            match cmd {
                TokenCommand::Create {
                    tenant,
                    ttl,
                    uses,
                    require_accept,
                    api,
                    json,
                } => {
                    let kind = if api {
                        TokenKind::Api
                    } else {
                        TokenKind::Enroll
                    };
                    // Enrollment tokens are handed around; by default they do not live forever.
                    let ttl = ttl.or(if api {
                        None
                    } else {
                        Some(std::time::Duration::from_secs(24 * 3600))
                    });
                    let token = store.create_token(NewToken {
                        tenant: &tenant,
                        kind,
                        ttl,
                        uses,
                        require_accept,
                    })?;
                    if json {
                        print_json(&token)?;
                    } else {
                        println!("{}", token.secret);
                    }
                }
                TokenCommand::List { tenant, json } => {
                    let tokens = store.tokens(tenant.as_deref())?;
                    if json {
                        print_json(&tokens)?;
                    } else {
                        let rows = tokens
                            .iter()
                            .map(|t| {
                                vec![
                                    t.id.clone(),
                                    t.tenant.clone(),
                                    format!("{:?}", t.kind).to_lowercase(),
                                    dash(&t.expires_at),
                                    t.uses_left
                                        .map(|u| u.to_string())
                                        .unwrap_or_else(|| "-".into()),
                                    if t.revoked {
                                        "revoked".into()
                                    } else {
                                        "active".into()
                                    },
                                ]
                            })
                            .collect::<Vec<_>>();
                        print_table(
                            &["ID", "TENANT", "KIND", "EXPIRES", "USES-LEFT", "STATE"],
                            &rows,
                        );
                    }
                }
                TokenCommand::Revoke { id } => {
                    store.revoke_token(&id)?;
                    println!("token {id} revoked");
                }
            }
            Ok(())
        }
        Command::User(cmd) => {
            let store = open_store(&config)?;
            match cmd {
                UserCommand::Add {
                    name,
                    tenant,
                    role,
                    key,
                } => {
                    let text = std::fs::read_to_string(&key)
                        .with_context(|| format!("reading the public key {}", key.display()))?;
                    let user = store
                        .add_user(&name, &tenant, role.into(), &text)
                        .with_context(|| format!("{}", key.display()))?;
                    println!(
                        "user {} added to tenant {} ({})",
                        user.name, user.tenant, user.fingerprint
                    );
                }
                UserCommand::List { json } => {
                    let users = store.users()?;
                    if json {
                        print_json(&users)?;
                    } else {
                        let rows = users
                            .iter()
                            .map(|u| {
                                vec![
                                    u.name.clone(),
                                    u.tenant.clone(),
                                    format!("{:?}", u.role).to_lowercase(),
                                    u.fingerprint.clone(),
                                ]
                            })
                            .collect::<Vec<_>>();
                        print_table(&["NAME", "TENANT", "ROLE", "KEY"], &rows);
                    }
                }
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
            tail(&store, &device, topic.as_deref(), limit, follow, json)
        }
        Command::Device(cmd) => {
            let store = open_store(&config)?;
            match cmd {
                DeviceCommand::List { tenant, json } => {
                    let devices = store.devices(tenant.as_deref())?;
                    if json {
                        print_json(&devices)?;
                    } else {
                        let rows = devices
                            .iter()
                            .map(|d| {
                                vec![
                                    d.id.clone(),
                                    d.name.clone(),
                                    d.tenant.clone(),
                                    d.status.to_string(),
                                    if d.online {
                                        "online".into()
                                    } else {
                                        "offline".into()
                                    },
                                    dash(if d.online {
                                        &d.last_connected
                                    } else {
                                        &d.last_disconnected
                                    }),
                                    dash(&d.remote_addr),
                                    dash(&d.agent_version),
                                ]
                            })
                            .collect::<Vec<_>>();
                        print_table(
                            &[
                                "ID", "NAME", "TENANT", "STATUS", "LINK", "SINCE", "ADDRESS",
                                "VERSION",
                            ],
                            &rows,
                        );
                    }
                }
                DeviceCommand::Show { id, json } => {
                    let d = store.resolve_device(&id)?;
                    if json {
                        print_json(&d)?;
                    } else {
                        println!("id:                {}", d.id);
                        println!("name:              {}", d.name);
                        println!("tenant:            {}", d.tenant);
                        println!("status:            {}", d.status);
                        println!(
                            "link:              {}",
                            if d.online { "online" } else { "offline" }
                        );
                        println!("last connected:    {}", dash(&d.last_connected));
                        println!("last disconnected: {}", dash(&d.last_disconnected));
                        println!("remote address:    {}", dash(&d.remote_addr));
                        println!("agent version:     {}", dash(&d.agent_version));
                        println!("key:               {}", d.fingerprint);
                        println!("enrolled:          {}", d.created_at);
                    }
                }
                DeviceCommand::Accept { id } => {
                    let d = store.resolve_device(&id)?;
                    store.set_device_status(&d.id, DeviceStatus::Accepted)?;
                    println!("device {} ({}) accepted", d.id, d.name);
                }
                DeviceCommand::Reject { id } => {
                    let d = store.resolve_device(&id)?;
                    store.set_device_status(&d.id, DeviceStatus::Rejected)?;
                    println!("device {} ({}) rejected", d.id, d.name);
                }
                DeviceCommand::Remove { id } => {
                    let d = store.resolve_device(&id)?;
                    store.remove_device(&d.id)?;
                    println!("device {} ({}) removed", d.id, d.name);
                }
            }
            Ok(())
        }
    }
}
