//! `relay artifact …`: files stored for a tenant's devices to fetch.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::change::Change;
use super::output::{print_json, table};
use crate::config::RelayConfig;
use crate::store::Store;

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

/// The audit record of `cmd`, before it runs.
pub(super) fn describe(cmd: &ArtifactCommand) -> Change {
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

/// Runs a `relay artifact` command.
pub(super) fn run(
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
