//! `relay audit …`: the append-only audit trail.

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;

use super::output::{dash, print_json, table};
use crate::store::Store;

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

/// Runs a `relay audit` command.
pub(super) fn run(out: &mut dyn Write, store: &Store, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::List {
            since,
            tenant,
            limit,
            oldest,
            json,
        } => {
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
    }
}
