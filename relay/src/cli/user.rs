//! `relay user …`: engineers, their roles and their keys.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::RoleArg;
use super::change::Change;
use super::output::{print_json, table};
use crate::store::{EngineerKey, Role, Store};

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

/// The audit record of `cmd`, before it runs.
pub(super) fn describe(cmd: &UserCommand) -> Change {
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

/// Runs a `relay user` command.
pub(super) fn run(
    out: &mut dyn Write,
    store: &Store,
    cmd: UserCommand,
    change: &mut Change,
) -> Result<()> {
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
