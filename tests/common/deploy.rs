//! Applications and deployments: agents with fast supervision, recipes deployed on the board
//! (`agent app …`) or from the relay (`relay deploy …`), and waits for the states they lead to.
//! Deployments from the relay are of tenant `acme`, the tenant every setup of the harness
//! creates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::agent::Agent;
use super::process::{Run, wait_until};
use super::relay::{Relay, Transport};

/// Fast supervision timings (the `apps:` section of an agent's configuration), so the tests do
/// not wait for production defaults.
pub const APPS: &str = "apps:\n  backoff_initial: 100ms\n  backoff_max: 400ms\n  stable_after: 2s\n  settle_time: 1s\n  stop_timeout: 2s\n";

/// The example recipes shipped in `recipes/`.
pub fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

/// A path as a command-line argument (the tests' temporary paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Writes `text` (a recipe, usually) to `dir/file` and returns its path.
pub fn write_file(dir: &Path, file: &str, text: &str) -> Result<PathBuf> {
    let p = dir.join(file);
    std::fs::write(&p, text)?;
    Ok(p)
}

/// An agent named `name` with fast supervision, enrolled over TCP in tenant `acme` of `relay`,
/// running and online, its control socket (which `agent app …` talks to) in place.
pub fn apps_agent(relay: &Relay, name: &str) -> Result<Agent> {
    let mut agent = Agent::with_extra_config(name, &[], APPS)?;
    agent.enroll(relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    wait_until(Duration::from_secs(10), "control socket", || {
        agent.dir.path().join("state/control.sock").exists()
    })?;
    Ok(agent)
}

/// A relay with tenant `acme` and one [`apps_agent`] named `name`.
pub fn apps_setup(name: &str) -> Result<(Relay, Agent)> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let agent = apps_agent(&relay, name)?;
    Ok((relay, agent))
}

/// `agent app ARGS…` on the board.
pub fn app(agent: &Agent, args: &[&str]) -> Result<Run> {
    let mut all = vec!["app"];
    all.extend_from_slice(args);
    agent.cmd(&all)
}

/// `agent app ARGS…`, which must succeed; its stdout.
pub fn app_ok(agent: &Agent, args: &[&str]) -> Result<String> {
    let r = app(agent, args)?;
    ensure!(
        r.status == Some(0),
        "agent app {args:?} failed ({:?}): {}{}\nagent log:\n{}",
        r.status,
        r.stdout,
        r.stderr,
        agent.log()
    );
    Ok(r.stdout)
}

/// `agent app show NAME --json`: the component as the board runs it.
pub fn app_show(agent: &Agent, name: &str) -> Result<Value> {
    Ok(serde_json::from_str(&app_ok(
        agent,
        &["show", name, "--json"],
    )?)?)
}

/// `relay deploy create --tenant acme --target TARGET ARGS…`; the deployment id.
pub fn deploy(relay: &Relay, target: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["deploy", "create", "--tenant", "acme", "--target", target];
    all.extend_from_slice(args);
    Ok(relay.admin_ok(&all)?.trim().to_string())
}

/// `relay deploy status ID --json`: the deployment and the status of each of its devices.
pub fn deployment(relay: &Relay, id: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        &relay.admin_ok(&["deploy", "status", id, "--json"])?,
    )?)
}

/// Waits (at most `timeout`) until every device of deployment `id` has a final status
/// (succeeded, failed or rolled back); returns the deployment as [`deployment`] shows it.
pub fn wait_final(relay: &Relay, id: &str, timeout: Duration) -> Result<Value> {
    let mut last = Value::Null;
    wait_until(timeout, &format!("deployment {id} done"), || {
        last = deployment(relay, id).unwrap_or_default();
        last["devices"].as_array().is_some_and(|d| {
            !d.is_empty()
                && d.iter().all(|x| {
                    matches!(
                        x["status"].as_str(),
                        Some("succeeded" | "failed" | "rolled-back")
                    )
                })
        })
    })
    .with_context(|| format!("last status {last}"))?;
    Ok(last)
}

/// Waits (at most `timeout`) until deployment `id` is `status` on its first device; returns
/// the deployment. The error shows the last status seen.
pub fn wait_deployment_status(
    relay: &Relay,
    id: &str,
    status: &str,
    timeout: Duration,
) -> Result<Value> {
    let mut last = Value::Null;
    wait_until(timeout, &format!("deployment {id} {status}"), || {
        last = deployment(relay, id).unwrap_or_default();
        last["devices"][0]["status"] == status
    })
    .with_context(|| format!("last status {last}"))?;
    Ok(last)
}

/// `relay device state DEVICE --json`: what the relay wants of the device and what it last
/// reported.
pub fn device_state(relay: &Relay, device: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        &relay.admin_ok(&["device", "state", device, "--json"])?,
    )?)
}

/// The component `name` in a [`device_state`] as the device last reported it (`Null` when it
/// reports no such component).
pub fn reported(state: &Value, name: &str) -> Value {
    state["reported"]["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or_default()
}

/// Waits (90 s at most) until deployment `id` is final, for a deployment to `agent` alone;
/// returns its status and message on that device. The error shows the agent's log.
pub fn deployment_outcome(relay: &Relay, agent: &Agent, id: &str) -> Result<(String, String)> {
    let view = wait_final(relay, id, Duration::from_secs(90))
        .with_context(|| format!("agent log:\n{}", agent.log()))?;
    let device = &view["devices"][0];
    Ok((
        device["status"].as_str().unwrap_or_default().to_string(),
        device["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// `device=status` for each device of a deployment as [`deployment`] shows it, in its order.
pub fn statuses(view: &Value) -> Vec<String> {
    view["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| {
                    format!(
                        "{}={}",
                        x["device_name"].as_str().unwrap_or(""),
                        x["status"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
