//! `relay tenant …`: tenants, their retention, their removal with everything they hold, and
//! the SSH certificate authorities they trust.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::RoleArg;
use super::change::Change;
use super::output::{print_json, table};
use crate::config::RelayConfig;
use crate::store::{EngineerKey, Role, Store};

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

/// The audit record of `cmd`, before it runs.
pub(super) fn describe(cmd: &TenantCommand) -> Change {
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

/// Runs a `relay tenant` command.
pub(super) fn run(
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

/// Deletes a file the store no longer refers to; a file already gone is fine, any other
/// failure is logged (the store change stands).
fn remove_file_if_there(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot delete {}: {e}", path.display()),
    }
}
