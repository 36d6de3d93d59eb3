//! `relay action …`: remote actions (run a command, restart a component, reboot) queued for a
//! device, and their results.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgGroup, Subcommand};
use tether_protocol::fleet::ActionKind;

use super::change::Change;
use super::output::{dash, escape_controls, print_fields, print_json, table};
use crate::store::{ActionView, Store};

/// `relay action …`
#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// Queue an action for a device; it is sent when the device is connected. Prints the
    /// action id.
    #[command(group(ArgGroup::new("what").required(true).args(["run", "restart", "reboot"])))]
    Create {
        /// Device id, or a name unique across tenants.
        device: String,
        /// Run this shell command (`/bin/sh -c`, as the agent's application user).
        #[arg(long, value_name = "COMMAND")]
        run: Option<String>,
        /// Time limit of --run in seconds, 1-86400 [default: 300].
        #[arg(
            long,
            value_name = "SECS",
            requires = "run",
            conflicts_with_all = ["restart", "reboot"]
        )]
        timeout: Option<u64>,
        /// Restart this component (and its hard dependents).
        #[arg(long, value_name = "COMPONENT")]
        restart: Option<String>,
        /// Reboot the device.
        #[arg(long)]
        reboot: bool,
        /// Give up unless sent within this time, e.g. 1h, 30m [default: never].
        #[arg(long, value_parser = parse_expiry, value_name = "DURATION")]
        expires: Option<Duration>,
        /// Print the action as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List actions, newest first (at most 1000).
    List {
        /// Only this device's (id, or a name unique across tenants or within --tenant).
        #[arg(long)]
        device: Option<String>,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an action, its result and its output.
    Show {
        /// Action id (act_…).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The audit record of `cmd`, before it runs.
pub(super) fn describe(cmd: &ActionCommand) -> Change {
    match cmd {
        ActionCommand::Create {
            device,
            run,
            timeout,
            restart,
            reboot,
            expires,
            ..
        } => {
            let kind = match (run, restart, reboot) {
                (Some(command), _, _) => serde_json::json!({
                    "kind": "run", "command": command, "timeout_secs": timeout,
                }),
                (None, Some(component), _) => {
                    serde_json::json!({ "kind": "restart", "component": component })
                }
                _ => serde_json::json!({ "kind": "reboot" }),
            };
            Change::new("action.create", None, Some(device))
                .with("action", kind)
                .with("expires_seconds", expires.map(|e| e.as_secs()))
        }
        ActionCommand::List { .. } | ActionCommand::Show { .. } => Change::read(),
    }
}

/// Runs a `relay action` command.
pub(super) fn run(
    out: &mut dyn Write,
    store: &Store,
    cmd: ActionCommand,
    change: &mut Change,
) -> Result<()> {
    match cmd {
        ActionCommand::Create {
            device,
            run,
            timeout,
            restart,
            reboot,
            expires,
            json,
        } => {
            let kind = match (run, restart, reboot) {
                (Some(command), None, false) => ActionKind::Run {
                    command,
                    timeout_secs: timeout,
                },
                (None, Some(component), false) => ActionKind::Restart { component },
                (None, None, true) => ActionKind::Reboot,
                // clap's group allows exactly one.
                _ => anyhow::bail!("give exactly one of --run, --restart and --reboot"),
            };
            let view = store.create_action(None, &device, &kind, expires)?;
            change.tenant = Some(view.tenant.clone());
            change.target = Some(view.device_id.clone());
            change.set("id", &view.id);
            change.set("device_id", &view.device_id);
            change.set("device_name", &view.device_name);
            if json {
                print_json(out, &view)?;
            } else {
                writeln!(out, "{}", view.id)?;
            }
        }
        ActionCommand::List {
            device,
            tenant,
            json,
        } => {
            let views = store.actions(tenant.as_deref(), device.as_deref())?;
            if json {
                print_json(out, &views)?;
            } else {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.id.clone(),
                            v.device_name.clone(),
                            action_summary(&v.action),
                            v.status.to_string(),
                            exit_code(v),
                            v.created_at.clone(),
                        ]
                    })
                    .collect();
                out.write_all(
                    table(
                        &["ID", "DEVICE", "ACTION", "STATUS", "EXIT", "CREATED"],
                        &rows,
                    )
                    .as_bytes(),
                )?;
            }
        }
        ActionCommand::Show { id, json } => {
            let view = store
                .action(&id, None)?
                .with_context(|| format!("no action named {id:?}"))?;
            if json {
                print_json(out, &view)?;
            } else {
                print_action(out, &view)?;
            }
        }
    }
    Ok(())
}

/// An action's lifetime: a duration of at least a second.
fn parse_expiry(text: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

/// Most characters of the ACTION column of `relay action list`.
const ACTION_SUMMARY_CHARS: usize = 40;

/// An action in one short line: `run: df -h`, `restart: com.example.app`, `reboot`; a long
/// command is cut with `…`, and line breaks and tabs are shown as blanks.
fn action_summary(action: &ActionKind) -> String {
    let text = match action {
        ActionKind::Run { command, .. } => format!("run: {command}"),
        ActionKind::Restart { component } => format!("restart: {component}"),
        ActionKind::Reboot => "reboot".into(),
    };
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() <= ACTION_SUMMARY_CHARS {
        text
    } else {
        let mut cut: String = text.chars().take(ACTION_SUMMARY_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

fn exit_code(view: &ActionView) -> String {
    view.exit_code.map_or_else(|| "-".into(), |c| c.to_string())
}

/// `relay action show` in text: every field, then the output as the device sent it.
fn print_action(out: &mut dyn Write, view: &ActionView) -> Result<()> {
    let mut rows = vec![
        ("id", view.id.clone()),
        ("tenant", view.tenant.clone()),
        (
            "device",
            format!("{} ({})", view.device_name, view.device_id),
        ),
    ];
    match &view.action {
        ActionKind::Run {
            command,
            timeout_secs,
        } => {
            rows.push(("action", "run".into()));
            rows.push(("command", command.clone()));
            rows.push((
                "timeout",
                timeout_secs.map_or_else(|| "-".into(), |t| format!("{t}s")),
            ));
        }
        ActionKind::Restart { component } => {
            rows.push(("action", "restart".into()));
            rows.push(("component", component.clone()));
        }
        ActionKind::Reboot => rows.push(("action", "reboot".into())),
    }
    rows.extend([
        ("status", view.status.to_string()),
        ("exit code", exit_code(view)),
        ("error", dash(&view.error)),
        ("created", view.created_at.clone()),
        ("expires", dash(&view.expires_at)),
        ("sent", dash(&view.sent_at)),
        ("finished", dash(&view.finished_at)),
        (
            "truncated",
            if view.truncated { "yes" } else { "no" }.into(),
        ),
    ]);
    print_fields(out, 10, &rows)?;
    writeln!(out, "output:")?;
    if let Some(output) = &view.output {
        // Line by line, so the output keeps its lines while nothing in it reaches the
        // terminal as a control sequence.
        for line in output.lines() {
            writeln!(out, "{}", escape_controls(line))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Cli;
    use super::super::tests::{TestResult, enrolled_board, relay};
    use super::*;
    use clap::Parser;

    #[test]
    fn action_commands_create_list_and_show() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let (store, device) = enrolled_board(d, &[])?;
        let long = format!("echo {}", "a".repeat(60));
        let id = relay(
            d,
            &[
                "action",
                "create",
                "board1",
                "--run",
                &long,
                "--timeout",
                "30",
                "--expires",
                "1h",
            ],
        )?;
        let id = id.trim().to_string();
        assert!(id.starts_with("act_") && id.len() == 16, "{id}");
        let restart: serde_json::Value = serde_json::from_str(&relay(
            d,
            &[
                "action",
                "create",
                &device.id,
                "--restart",
                "com.example.app",
                "--json",
            ],
        )?)?;
        assert_eq!(restart["action"]["kind"], "restart");
        assert_eq!(restart["status"], "pending");
        relay(d, &["action", "create", "board1", "--reboot"])?;

        let list = relay(d, &["action", "list"])?;
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 4, "{list}");
        assert!(
            lines[0].starts_with("ID ")
                && lines[0].contains("DEVICE")
                && lines[0].contains("ACTION")
                && lines[0].contains("EXIT"),
            "{list}"
        );
        // Newest first; a long command is cut to 40 characters.
        assert!(lines[1].contains("reboot"), "{list}");
        assert!(lines[2].contains("restart: com.example.app"), "{list}");
        let summary: String = format!("run: {long}").chars().take(39).collect();
        assert!(lines[3].contains(&format!("{summary}…")), "{list}");
        assert_eq!(lines[2].find("pending"), lines[0].find("STATUS"), "{list}");
        let listed: serde_json::Value = serde_json::from_str(&relay(
            d,
            &[
                "action", "list", "--device", "board1", "--tenant", "acme", "--json",
            ],
        )?)?;
        assert_eq!(listed.as_array().map(Vec::len), Some(3));
        assert_eq!(
            relay(d, &["action", "list", "--tenant", "nope"])
                .err()
                .as_deref(),
            Some("no tenant named \"nope\"")
        );

        store.take_pending_actions(&device.id)?;
        store.record_action_result(
            &device.id,
            &tether_protocol::fleet::ActionResult {
                id: id.clone(),
                status: tether_protocol::fleet::ActionStatus::Failed,
                exit_code: Some(3),
                output: "line one\nline two".into(),
                truncated: false,
                error: None,
            },
        )?;
        let shown = relay(d, &["action", "show", &id])?;
        assert!(shown.contains(&format!("command:   {long}\n")), "{shown}");
        assert!(shown.contains("timeout:   30s\n"), "{shown}");
        assert!(shown.contains("status:    failed\n"), "{shown}");
        assert!(shown.contains("exit code: 3\n"), "{shown}");
        assert!(
            shown.ends_with("\noutput:\nline one\nline two\n"),
            "{shown}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&relay(d, &["action", "show", &id, "--json"])?)?;
        assert_eq!(json["exit_code"], 3);
        assert_eq!(json["device_name"], "board1");
        let e = relay(d, &["action", "show", "act_nope"])
            .err()
            .unwrap_or_default();
        assert!(e.contains("act_nope"), "{e}");
        let e = relay(d, &["action", "create", "board1", "--run", " "])
            .err()
            .unwrap_or_default();
        assert!(e.contains("command"), "{e}");

        // Exactly one of --run, --restart and --reboot; --timeout only with --run.
        for argv in [
            vec!["relay", "action", "create", "b"],
            vec!["relay", "action", "create", "b", "--reboot", "--run", "x"],
            vec![
                "relay",
                "action",
                "create",
                "b",
                "--reboot",
                "--timeout",
                "3",
            ],
            vec![
                "relay",
                "action",
                "create",
                "b",
                "--reboot",
                "--expires",
                "0s",
            ],
        ] {
            let e = Cli::try_parse_from(&argv).err();
            assert_eq!(e.map(|e| e.exit_code()), Some(2), "{argv:?}");
        }
        Ok(())
    }

    #[test]
    fn action_summaries_read_well() {
        assert_eq!(action_summary(&ActionKind::Reboot), "reboot");
        assert_eq!(
            action_summary(&ActionKind::Run {
                command: "a\nb".into(),
                timeout_secs: None
            }),
            "run: a b"
        );
        let long = action_summary(&ActionKind::Run {
            command: "é".repeat(50),
            timeout_secs: None,
        });
        assert_eq!(long.chars().count(), 40);
        assert!(long.ends_with('…'));
    }
}
