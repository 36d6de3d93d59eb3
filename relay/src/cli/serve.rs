//! `relay serve` and `relay init`: the two commands that create the store when there is none
//! (every other command only opens an existing one).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::RelayConfig;
use crate::store::{Location, Store};

/// Runs `relay serve` until SIGTERM or SIGINT, with the listen addresses given on the command
/// line in place of the configured ones.
pub(super) fn serve(
    mut config: RelayConfig,
    ssh_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
) -> Result<()> {
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

/// Runs `relay init`.
pub(super) fn init(out: &mut dyn Write, config: &RelayConfig) -> Result<()> {
    let location = config.store_location()?;
    let existed = location.exists();
    create_store(config)?;
    match location {
        Location::Postgres { .. } => writeln!(out, "the store {location} is up to date")?,
        Location::Sqlite(_) if existed => writeln!(out, "store {location} exists already")?,
        Location::Sqlite(_) => writeln!(out, "created the store {location}")?,
    }
    Ok(())
}

/// Opens the store, creating a SQLite file when there is none: for `serve` and `init` only.
fn create_store(config: &RelayConfig) -> Result<Store> {
    let location = config.store_location()?;
    Store::connect(&location).with_context(|| format!("opening the store {location}"))
}
