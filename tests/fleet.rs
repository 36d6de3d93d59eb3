//! Fleet desired state: deployments by tag to real agents through the relay, artifacts stored
//! on the relay, configuration push, offline devices, and rollback of a failed deployment.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;

const APPS: &str = "apps:\n  backoff_initial: 100ms\n  backoff_max: 400ms\n  stable_after: 2s\n  settle_time: 1s\n  stop_timeout: 2s\n";

fn agent_for(relay: &Relay, name: &str) -> Result<Agent> {
    let mut agent = Agent::with_extra_config(name, &[], APPS)?;
    agent.enroll(relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    Ok(agent)
}

fn deploy(relay: &Relay, target: &str, recipe: &Path, set: &[&str]) -> Result<String> {
    let mut args = vec![
        "deploy",
        "create",
        "--tenant",
        "acme",
        "--target",
        target,
        "--recipe",
        recipe.to_str().unwrap_or_default(),
    ];
    for s in set {
        args.push("--set");
        args.push(s);
    }
    Ok(relay.admin_ok(&args)?.trim().to_string())
}

fn deployment(relay: &Relay, id: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &relay.admin_ok(&["deploy", "status", id, "--json"])?,
    )?)
}

/// Waits until every device of deployment `id` has a final status; returns the view.
fn wait_final(relay: &Relay, id: &str) -> Result<serde_json::Value> {
    let mut last = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(60),
        &format!("deployment {id} done"),
        || {
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
        },
    )
    .with_context(|| format!("last status {last}"))?;
    Ok(last)
}

fn statuses(view: &serde_json::Value) -> Vec<String> {
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

fn ticker(version: &str, script_sha: &str, exit_code: Option<u8>) -> String {
    let run = match exit_code {
        Some(code) => format!("exit {code}"),
        // Artifacts stored on the relay are kept under their digest.
        None => format!(
            "while true; do sh {{artifacts:path}}/{script_sha} \"$LABEL\" >> {{work:path}}/ticks; sleep 0.2; done"
        ),
    };
    format!(
        "name: com.example.ticker\nversion: {version}\nconfiguration:\n  label: tick\nmanifests:\n  - artifacts:\n      - uri: relay:sha256:{script_sha}\n        sha256: {script_sha}\n    lifecycle:\n      setenv:\n        LABEL: \"{{configuration:/label}}\"\n      run: |\n        {run}\n"
    )
}

fn ticks(agent: &Agent) -> String {
    std::fs::read_to_string(
        agent
            .dir
            .path()
            .join("state/apps/com.example.ticker/work/ticks"),
    )
    .unwrap_or_default()
}

#[test]
fn deployments_by_tag_reach_every_device_with_artifacts_from_the_relay() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let board1 = agent_for(&relay, "board1")?;
    let mut board2 = agent_for(&relay, "board2")?;
    for b in ["board1", "board2"] {
        relay.admin_ok(&["device", "tag", b, "edge"])?;
    }
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("tick.sh");
    std::fs::write(&script, "echo \"$1 $(date +%s)\"\n")?;
    let sha = relay
        .admin_ok(&["artifact", "put", script.to_str().unwrap_or_default()])?
        .trim()
        .to_string();
    ensure!(sha.len() == 64, "artifact put printed {sha:?}");
    let v1 = dir.path().join("ticker-1.yaml");
    std::fs::write(&v1, ticker("1.0.0", &sha, None))?;
    let id = deploy(&relay, "tag:edge", &v1, &[])?;
    let view = wait_final(&relay, &id)?;
    ensure!(
        statuses(&view) == ["board1=succeeded", "board2=succeeded"],
        "{view}"
    );
    for b in [&board1, &board2] {
        wait_until(Duration::from_secs(10), "ticks", || {
            ticks(b).contains("tick ")
        })?;
    }
    let state: serde_json::Value =
        serde_json::from_str(&relay.admin_ok(&["device", "state", "board1", "--json"])?)?;
    ensure!(
        state["desired"]["components"]["com.example.ticker"]["version"] == "1.0.0"
            && state["reported"]["components"][0]["state"] == "running",
        "{state}"
    );

    // Configuration pushed to one device restarts its component with the new value.
    relay.admin_ok(&[
        "device",
        "config",
        "board1",
        "--set",
        "com.example.ticker:label=pushed",
    ])?;
    wait_until(Duration::from_secs(30), "pushed label in use", || {
        ticks(&board1)
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("pushed "))
    })?;
    ensure!(
        !ticks(&board2).contains("pushed"),
        "board2 got board1's configuration"
    );

    // A deployment to a device that is offline waits for it.
    board2
        .proc
        .take()
        .map(|mut p| p.terminate(Duration::from_secs(15)));
    wait_until(Duration::from_secs(20), "board2 offline", || {
        relay
            .device_json("board2")
            .is_ok_and(|d| d["online"] == false)
    })?;
    let v2 = dir.path().join("ticker-2.yaml");
    std::fs::write(&v2, ticker("2.0.0", &sha, None))?;
    let id2 = deploy(&relay, "tag:edge", &v2, &["label=two"])?;
    wait_until(Duration::from_secs(30), "board1 on 2.0.0", || {
        deployment(&relay, &id2)
            .is_ok_and(|v| statuses(&v).contains(&"board1=succeeded".to_string()))
    })?;
    let view = deployment(&relay, &id2)?;
    ensure!(
        statuses(&view).contains(&"board2=pending".to_string()),
        "offline device not pending: {view}"
    );
    board2.start()?;
    let view = wait_final(&relay, &id2)?;
    ensure!(
        statuses(&view) == ["board1=succeeded", "board2=succeeded"],
        "{view}"
    );
    wait_until(Duration::from_secs(20), "board2 ticks two", || {
        ticks(&board2)
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("two "))
    })?;

    // A version that fails rolls back to the previous one on every device, and says why.
    let bad = dir.path().join("ticker-3.yaml");
    std::fs::write(&bad, ticker("3.0.0", &sha, Some(9)))?;
    let id3 = deploy(&relay, "tag:edge", &bad, &[])?;
    let view = wait_final(&relay, &id3)?;
    ensure!(
        statuses(&view) == ["board1=rolled-back", "board2=rolled-back"],
        "{view}"
    );
    ensure!(
        view["devices"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exited with status 9")),
        "{view}"
    );
    let mut state = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(20),
        "2.0.0 reported running again",
        || {
            state = relay
                .admin_ok(&["device", "state", "board2", "--json"])
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let comp = &state["reported"]["components"][0];
            comp["version"] == "2.0.0" && comp["state"] == "running"
        },
    )
    .with_context(|| format!("after rollback: {state}"))?;
    ensure!(
        state["reported"]["status"] == "rolled-back"
            && state["desired"]["components"]["com.example.ticker"]["version"] == "3.0.0",
        "desired and reported side by side: {state}"
    );
    // And the next good deployment goes through.
    let v4 = dir.path().join("ticker-4.yaml");
    std::fs::write(&v4, ticker("4.0.0", &sha, None))?;
    let id4 = deploy(&relay, "tag:edge", &v4, &[])?;
    let view = wait_final(&relay, &id4)?;
    ensure!(
        statuses(&view) == ["board1=succeeded", "board2=succeeded"],
        "{view}"
    );
    Ok(())
}

#[test]
fn a_deployment_naming_a_missing_artifact_is_refused() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let dir = tempfile::tempdir()?;
    let missing = "ab".repeat(32);
    let recipe = dir.path().join("r.yaml");
    std::fs::write(&recipe, ticker("1.0.0", &missing, None))?;
    let r = relay.admin(&[
        "deploy",
        "create",
        "--tenant",
        "acme",
        "--target",
        "tag:edge",
        "--recipe",
        recipe.to_str().unwrap_or_default(),
    ])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains(&missing),
        "{:?} {}",
        r.status,
        r.stderr
    );
    Ok(())
}
