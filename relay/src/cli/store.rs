//! `relay store copy`: moving a relay's whole store to another backend (today: from the
//! embedded SQLite file into the PostgreSQL database of a cluster).

use std::io::Write;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::output::print_json;
use crate::store::Location;
use crate::store::postgres::PgStore;

/// `relay store …`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy everything (tenants, tokens, engineers, devices and their keys, fleet state,
    /// actions, sessions, the audit trail, telemetry) from a SQLite store into a new, empty
    /// PostgreSQL database, ids included, so no board re-enrolls and no token changes. Stop
    /// the relay that writes the SQLite file first: what it writes later is not copied.
    Copy {
        /// The store to copy: `sqlite:PATH`.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The database to fill: `postgres://USER@HOST:PORT/DATABASE` (empty; its schema is
        /// created).
        #[arg(long, value_name = "URL")]
        to: String,
        /// The host key the boards pinned, which every relay on the database is to present;
        /// default: the one in the SQLite file's directory (its data directory).
        #[arg(long, value_name = "PATH")]
        host_key: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What `relay store copy --json` prints.
#[derive(serde::Serialize)]
struct Copied {
    /// Rows copied, by table.
    rows: std::collections::BTreeMap<String, u64>,
    /// Fingerprint of the host key every relay on the database presents.
    host_key: String,
}

/// Runs `relay store …`.
pub(super) fn run(out: &mut dyn Write, cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Copy {
            from,
            to,
            host_key,
            json,
        } => {
            let Location::Sqlite(path) = Location::parse(&from, 1).context("--from")? else {
                bail!("--from must name a SQLite store (sqlite:PATH)");
            };
            let to = Location::parse(&to, 2).context("--to")?;
            let Location::Postgres { url, .. } = &to else {
                bail!("--to must name a PostgreSQL database (postgres://HOST/DATABASE)");
            };
            let key_path = host_key.unwrap_or_else(|| {
                crate::hostkey::path(path.parent().unwrap_or(std::path::Path::new(".")))
            });
            let key = tether_protocol::keyfile::load(&key_path).with_context(|| {
                format!(
                    "reading the host key the boards pinned, {} (name it with --host-key)",
                    key_path.display()
                )
            })?;
            let dest = PgStore::open(url, 2).with_context(|| format!("opening {to}"))?;
            // The admin CLI's actor, as every command it records.
            let key_text = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .context("encoding the host key")?;
            let summary = dest
                .import_sqlite(&path, &key_text, "admin")
                .with_context(|| format!("copying {} into {to}", path.display()))?;
            let store = crate::store::Store::new(Box::new(dest));
            let presented =
                crate::hostkey::cluster_or_own(&store, key).context("storing the host key")?;
            let copied = Copied {
                rows: summary.rows,
                host_key: crate::hostkey::fingerprint(&presented),
            };
            if json {
                return print_json(out, &copied);
            }
            let total: u64 = copied.rows.values().sum();
            writeln!(
                out,
                "copied {total} rows from {} into {to}:",
                path.display()
            )?;
            for (table, n) in &copied.rows {
                writeln!(out, "  {table:<20} {n}")?;
            }
            writeln!(out, "host key {}", copied.host_key)?;
            Ok(())
        }
    }
}
