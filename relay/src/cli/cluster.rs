//! `relay cluster …`: the cluster as NATS sees it.

use std::io::Write;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::Serialize;

use super::output::print_json;
use crate::config::RelayConfig;
use crate::store::Store;

/// `relay cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Which relay holds which device's link, from the presence map (entries of relays that
    /// died drop out within 15 s).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One line of `relay cluster status`.
#[derive(Serialize)]
struct Line {
    device_id: String,
    /// The device's name, when the store still has it.
    device: Option<String>,
    tenant: Option<String>,
    relay: String,
    /// Seconds since the holder wrote the entry: when the link came up, or when the holder
    /// wrote all of its entries again after NATS had lost them.
    age_secs: u64,
}

/// Runs `relay cluster …`.
pub(super) fn run(
    out: &mut dyn Write,
    store: &Store,
    config: &RelayConfig,
    cmd: ClusterCommand,
) -> Result<()> {
    let ClusterCommand::Status { json } = cmd;
    let Some(url) = &config.cluster.nats else {
        bail!("this relay is not one of a cluster (cluster.nats is not set)");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let entries = runtime
        .block_on(crate::cluster::presence::all(url))
        .with_context(|| format!("reading the presence map from {url}"))?;
    let now_ms = u64::try_from(tether_protocol::clock::now_ms()).unwrap_or(0);
    let mut lines = Vec::new();
    for (device_id, holder) in entries {
        let device = store.device(&device_id)?;
        let line = Line {
            device: device.as_ref().map(|d| d.name.clone()),
            tenant: device.map(|d| d.tenant),
            device_id,
            relay: holder.relay,
            age_secs: now_ms.saturating_sub(holder.at_ms) / 1000,
        };
        lines.push(line);
    }
    if json {
        return print_json(out, &lines);
    }
    for line in &lines {
        {
            writeln!(
                out,
                "{:<24} {:<16} {:<24} {}s ago",
                line.device.as_deref().unwrap_or(&line.device_id),
                line.tenant.as_deref().unwrap_or("-"),
                line.relay,
                line.age_secs
            )?;
        }
    }
    Ok(())
}
