//! An application that prints without end of line cannot grow the agent: its output is read
//! in bounded memory, the over-long line keeps its start, and both its log record and its
//! line in the output log say it was cut.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::*;

/// What the application prints: 200 MiB and no newline.
const PRINTED: u64 = 200 << 20;

/// How much the agent's peak resident memory may grow while the application prints: far
/// below what holding the line would take, far above what reading it in bounded pieces does.
const MAX_GROWTH_KIB: u64 = 32 << 10;

/// The telemetry payload limit (the default), which a log record stays within.
const MAX_PAYLOAD: usize = 256 << 10;

fn app_ok(agent: &Agent, args: &[&str]) -> Result<String> {
    let mut all = vec!["app"];
    all.extend_from_slice(args);
    let r = agent.cmd(&all)?;
    ensure!(
        r.status == Some(0),
        "agent app {args:?} failed ({:?}): {}{}\nagent log:\n{}",
        r.status,
        r.stdout,
        r.stderr,
        tail_lines(&agent.log(), 40)
    );
    Ok(r.stdout)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temporary path")
}

#[test]
fn an_endless_line_leaves_the_agent_flat_and_is_marked_truncated() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::with_extra_config("board1", &[], APPS)?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    wait_until(Duration::from_secs(10), "control socket", || {
        agent.dir.path().join("state/control.sock").exists()
    })?;
    let pid = agent
        .proc
        .as_ref()
        .map(|p| p.child.id())
        .context("the agent is not running")?;

    let dir = tempfile::tempdir()?;
    let recipe = dir.path().join("chatty.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: com.example.chatty\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run:\n        script: |\n          head -c {PRINTED} /dev/zero | tr '\\0' x\n"
        ),
    )?;
    let (rss_before, peak_before) = memory_kib(pid)?;
    app_ok(&agent, &["deploy", path_str(&recipe)?])?;
    wait_until(
        Duration::from_secs(120),
        "the app to finish printing",
        || {
            app_ok(&agent, &["show", "com.example.chatty", "--json"])
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .is_some_and(|s| s["state"] == "finished")
        },
    )?;

    // The line reaches the relay as one log record: its start, within the payload limit,
    // marked truncated.
    let mut records = Vec::new();
    wait_until(
        Duration::from_secs(60),
        "the app's log record at the relay",
        || {
            records = relay
                .stored_telemetry("board1")
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r["topic"] == "app/com.example.chatty")
                .collect();
            !records.is_empty()
        },
    )?;
    // The whole line went through the agent by now: it must not have held it.
    let (rss_after, peak_after) = memory_kib(pid)?;
    eprintln!(
        "agent VmRSS {rss_before} -> {rss_after} KiB, VmHWM {peak_before} -> {peak_after} KiB"
    );
    ensure!(
        peak_after.saturating_sub(peak_before) < MAX_GROWTH_KIB
            && rss_after.saturating_sub(rss_before) < MAX_GROWTH_KIB,
        "the agent grew while the app printed {} MiB: VmRSS {rss_before} -> {rss_after} KiB, \
         VmHWM {peak_before} -> {peak_after} KiB",
        PRINTED >> 20
    );

    ensure!(records.len() == 1, "{} records: {records:?}", records.len());
    let payload = &records[0]["payload"];
    let line = payload["line"].as_str().unwrap_or_default();
    ensure!(
        payload["truncated"] == true
            && payload["stream"] == "stdout"
            && !line.is_empty()
            && line.bytes().all(|b| b == b'x')
            && line.len() <= MAX_PAYLOAD,
        "record: truncated {} stream {} line of {} bytes",
        payload["truncated"],
        payload["stream"],
        line.len()
    );

    // The output log holds the same start, marked.
    let logs = app_ok(&agent, &["logs", "com.example.chatty", "--json"])?;
    let logged: Vec<serde_json::Value> = logs
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    match logged.as_slice() {
        [only] if only["truncated"] == true && only["stream"] == "stdout" => {}
        other => bail!(
            "output log: {:?}",
            other
                .iter()
                .map(|l| (l["truncated"].clone(), l["line"].as_str().map(str::len)))
                .collect::<Vec<_>>()
        ),
    }

    Ok(())
}
