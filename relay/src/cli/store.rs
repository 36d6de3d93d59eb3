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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `relay store …`.
pub(super) fn run(out: &mut dyn Write, cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Copy { from, to, json } => {
            let Location::Sqlite(path) = Location::parse(&from, 1).context("--from")? else {
                bail!("--from must name a SQLite store (sqlite:PATH)");
            };
            let to = Location::parse(&to, 2).context("--to")?;
            let Location::Postgres { url, .. } = &to else {
                bail!("--to must name a PostgreSQL database (postgres://HOST/DATABASE)");
            };
            let dest = PgStore::open(url, 2).with_context(|| format!("opening {to}"))?;
            // The admin CLI's actor, as every command it records.
            let summary = dest
                .import_sqlite(&path, "admin")
                .with_context(|| format!("copying {} into {to}", path.display()))?;
            if json {
                return print_json(out, &summary);
            }
            let total: u64 = summary.rows.values().sum();
            writeln!(out, "copied {total} rows from {} into {to}:", path.display())?;
            for (table, n) in &summary.rows {
                writeln!(out, "  {table:<20} {n}")?;
            }
            Ok(())
        }
    }
}
