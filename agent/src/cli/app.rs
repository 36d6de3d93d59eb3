//! `agent app …`: validate recipes locally, and drive the supervisor inside `agent run`
//! through the control socket.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tether_protocol::fleet::TRUNCATED_MARKER;
use tether_protocol::recipe;

use crate::apps::component::Layout;
use crate::apps::control_socket::{self, Request};
use crate::apps::supervisor::ComponentStatus;
use crate::config::AgentConfig;

/// `agent app …`
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Check a recipe (syntax, keys, values, placeholders, a manifest for this board); prints a
    /// summary, exits 1 naming file, line and key on the first problem.
    Validate {
        /// Recipe file (YAML).
        recipe: PathBuf,
        /// Print the parsed recipe as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install and start a recipe on this board (replacing the deployed version; a version
    /// that fails to install or stay up rolls back to the previous one).
    #[command(after_help = "Examples:\n  \
        agent app deploy recipes/hello-http/recipe.yaml --artifacts recipes/hello-http\n  \
        agent app deploy hello.yaml --set port=9000 --set message='\"hi\"'")]
    Deploy {
        /// Recipe file (YAML).
        recipe: PathBuf,
        /// Directory holding artifacts the recipe names by bare file name.
        #[arg(long, value_name = "DIR")]
        artifacts: Option<PathBuf>,
        /// Configuration override, KEY=VALUE (KEY a JSON pointer or dotted path; VALUE JSON,
        /// else a string). Repeatable.
        #[arg(long, value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deployed components and their states.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One component: state, version, pid, restarts, errors, effective configuration.
    Show {
        /// Component name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a component (also one that is broken).
    Start {
        /// Component name.
        name: String,
    },
    /// Stop a component; it stays stopped across restarts of the agent.
    Stop {
        /// Component name.
        name: String,
    },
    /// Restart a component and the components that depend on it.
    Restart {
        /// Component name.
        name: String,
    },
    /// Stop and delete a component.
    Remove {
        /// Component name.
        name: String,
    },
    /// Output of a component's steps.
    Logs {
        /// Component name.
        name: String,
        /// Keep printing new output.
        #[arg(long, short)]
        follow: bool,
        /// Print one JSON object per line: {"ts", "step", "stream", "line"}.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `agent app` command.
pub async fn run(config: &AgentConfig, cmd: &AppCommand) -> Result<ExitCode> {
    match cmd {
        AppCommand::Validate { recipe: path, json } => validate(path, *json),
        AppCommand::Deploy {
            recipe: path,
            artifacts,
            set,
            json,
        } => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            // Fail early, with the same message, rather than after a round trip.
            recipe::parse(&text, path)?;
            let origin = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            let artifacts = match artifacts {
                Some(d) => Some(
                    std::fs::canonicalize(d)
                        .with_context(|| format!("--artifacts {}", d.display()))?,
                ),
                None => None,
            };
            let status: ComponentStatus = ask(
                config,
                &Request::Deploy {
                    recipe: text,
                    origin,
                    artifacts,
                    set: set.clone(),
                },
            )
            .await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&status)?)?;
            } else {
                outln!(
                    "deployed {} {}: {}",
                    status.name,
                    status.version,
                    status.state
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AppCommand::List { json } => {
            let list: Vec<ComponentStatus> = ask(config, &Request::List).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                print_table(&list)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AppCommand::Show { name, json } => {
            let s: ComponentStatus = ask(config, &Request::Show { name: name.clone() }).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&s)?)?;
            } else {
                let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                outln!("name:           {}", s.name)?;
                outln!("version:        {}", s.version)?;
                outln!("state:          {}", s.state)?;
                outln!("desired:        {}", s.desired)?;
                outln!("pid:            {}", dash(s.pid.map(|p| p.to_string())))?;
                outln!("restarts:       {}", s.restarts)?;
                outln!("errors:         {}", s.errors)?;
                outln!("last error:     {}", dash(s.last_error.clone()))?;
                outln!("previous:       {}", dash(s.previous_version.clone()))?;
                outln!(
                    "configuration:  {}",
                    serde_json::to_string_pretty(&s.configuration)?
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AppCommand::Start { name } => {
            let s: ComponentStatus = ask(config, &Request::Start { name: name.clone() }).await?;
            outln!("{} {}: {}", s.name, s.version, s.state)?;
            Ok(ExitCode::SUCCESS)
        }
        AppCommand::Stop { name } => {
            let s: ComponentStatus = ask(config, &Request::Stop { name: name.clone() }).await?;
            outln!("{} {}: {}", s.name, s.version, s.state)?;
            Ok(ExitCode::SUCCESS)
        }
        AppCommand::Restart { name } => {
            let s: ComponentStatus = ask(config, &Request::Restart { name: name.clone() }).await?;
            outln!("{} {}: {}", s.name, s.version, s.state)?;
            Ok(ExitCode::SUCCESS)
        }
        AppCommand::Remove { name } => {
            let _: serde_json::Value = ask(config, &Request::Remove { name: name.clone() }).await?;
            outln!("removed {name}")?;
            Ok(ExitCode::SUCCESS)
        }
        AppCommand::Logs { name, follow, json } => logs(config, name, *follow, *json).await,
    }
}

fn validate(path: &Path, json: bool) -> Result<ExitCode> {
    let r = recipe::load(path)?;
    let manifest = r.manifest_for(std::env::consts::OS, std::env::consts::ARCH)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let l = &manifest.lifecycle;
    let steps: Vec<&str> = [
        ("install", l.install.is_some()),
        ("startup", l.startup.is_some()),
        ("run", l.run.is_some()),
        ("shutdown", l.shutdown.is_some()),
        ("recover", l.recover.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, present)| present.then_some(n))
    .collect();
    outln!("{}: valid", path.display())?;
    outln!("component:     {} {}", r.name, r.version)?;
    outln!("artifacts:     {}", manifest.artifacts.len())?;
    outln!("steps:         {}", steps.join(", "))?;
    if !r.dependencies.is_empty() {
        let deps: Vec<String> = r
            .dependencies
            .iter()
            .map(|(n, d)| format!("{n} {}", d.version))
            .collect();
        outln!("dependencies:  {}", deps.join(", "))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn ask<T: serde::de::DeserializeOwned>(config: &AgentConfig, request: &Request) -> Result<T> {
    let answer = control_socket::request(&config.state_dir, request).await?;
    if !answer.ok {
        bail!("{}", answer.error.unwrap_or_else(|| "failed".into()));
    }
    Ok(serde_json::from_value(answer.result)?)
}

fn print_table(list: &[ComponentStatus]) -> Result<()> {
    outln!(
        "{:<32} {:<12} {:<10} {:>8} {:>8}",
        "NAME",
        "VERSION",
        "STATE",
        "PID",
        "RESTARTS"
    )?;
    for s in list {
        outln!(
            "{:<32} {:<12} {:<10} {:>8} {:>8}",
            s.name,
            s.version,
            s.state.to_string(),
            s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            s.restarts
        )?;
    }
    Ok(())
}

/// One line of a component's output log as `--json` prints it. The supervisor writes
/// `TS STEP/STREAM: LINE`, a line it cut ending with [`TRUNCATED_MARKER`] (printed as
/// `"truncated": true`, as in the line's log record); a line not of that form keeps its text in
/// `line` alone.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
struct LogLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a str>,
    line: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

fn parse_log_line(text: &str) -> LogLine<'_> {
    let parsed = text.split_once(' ').and_then(|(ts, rest)| {
        let (source, line) = rest.split_once(": ")?;
        let (step, stream) = source.split_once('/')?;
        let (line, truncated) = match line.strip_suffix(TRUNCATED_MARKER) {
            Some(start) => (start, true),
            None => (line, false),
        };
        (!step.is_empty() && !stream.is_empty() && !source.contains(' ')).then_some(LogLine {
            ts: Some(ts),
            step: Some(step),
            stream: Some(stream),
            line,
            truncated,
        })
    });
    parsed.unwrap_or(LogLine {
        ts: None,
        step: None,
        stream: None,
        line: text,
        truncated: false,
    })
}

/// Writes log bytes as they are, or with `json` each complete line as a JSON object. Returns
/// how many bytes were used: with `json` a last line without its newline waits for the next
/// round.
fn write_log(out: &mut dyn Write, data: &[u8], json: bool) -> Result<usize> {
    if !json {
        out.write_all(data)?;
        return Ok(data.len());
    }
    let used = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for raw in data[..used].split(|b| *b == b'\n') {
        if raw.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(raw);
        serde_json::to_writer(&mut *out, &parse_log_line(&text))?;
        writeln!(out)?;
    }
    Ok(used)
}

/// Prints the component's output log (the older file first), then follows it.
async fn logs(config: &AgentConfig, name: &str, follow: bool, json: bool) -> Result<ExitCode> {
    let layout = Layout::new(&config.state_dir, name);
    if !layout.root.exists() {
        bail!("no component named {name:?} is deployed");
    }
    let old = std::fs::read(layout.old_log()).unwrap_or_default();
    write_log(&mut std::io::stdout().lock(), &old, json)?;
    let mut offset = 0u64;
    let printed = |offset: &mut u64| -> Result<()> {
        let mut out = std::io::stdout().lock();
        let data = std::fs::read(layout.log()).unwrap_or_default();
        if (data.len() as u64) < *offset {
            // Rotated: the rest of the old file is already gone; start the new one.
            *offset = 0;
        }
        let start = usize::try_from(*offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let used = write_log(&mut out, &data[start..], json)?;
        out.flush()?;
        *offset = (start + used) as u64;
        Ok(())
    };
    printed(&mut offset)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        printed(&mut offset)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_become_json_objects_and_partial_lines_wait() {
        let data = "2026-01-01T00:00:00Z run/stdout: hello: world\nnot a log line\n2026-01-01T00:00:02Z run/stderr: xxx…[truncated]\n2026-01-01T00:00:01Z run/std";
        let data = data.as_bytes();
        let mut out = Vec::new();
        let used = write_log(&mut out, data, true).expect("write to a Vec");
        assert_eq!(&data[used..], b"2026-01-01T00:00:01Z run/std");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(
            lines,
            vec![
                serde_json::json!({
                    "ts": "2026-01-01T00:00:00Z",
                    "step": "run",
                    "stream": "stdout",
                    "line": "hello: world",
                }),
                serde_json::json!({ "line": "not a log line" }),
                serde_json::json!({
                    "ts": "2026-01-01T00:00:02Z",
                    "step": "run",
                    "stream": "stderr",
                    "line": "xxx",
                    "truncated": true,
                }),
            ]
        );
    }
}
