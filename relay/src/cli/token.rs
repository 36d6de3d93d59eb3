//! `relay token …`: enrollment tokens for devices and API tokens for the HTTP API.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use super::RoleArg;
use super::change::Change;
use super::output::{dash, print_json, table};
use crate::store::{NewToken, Role, Store, TokenKind};

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

/// The audit record of `cmd`, before it runs.
pub(super) fn describe(cmd: &TokenCommand) -> Change {
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

/// Runs a `relay token` command.
pub(super) fn run(
    out: &mut dyn Write,
    store: &Store,
    cmd: TokenCommand,
    change: &mut Change,
) -> Result<()> {
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

/// Default lifetime of enrollment tokens: they are handed around, so they should not live
/// forever unless asked to.
const DEFAULT_ENROLL_TTL: Duration = Duration::from_secs(24 * 3600);
