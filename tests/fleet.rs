//! Fleet desired state: deployments by tag to real agents through the relay, artifacts stored
//! on the relay (and fetched only by devices of the tenant that stored them), configuration
//! push, offline devices, and rollback of a failed deployment.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;

/// How long a deployment to the test boards may take to be final.
const DEPLOYED: Duration = Duration::from_secs(60);

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
    let board1 = apps_agent(&relay, "board1")?;
    let mut board2 = apps_agent(&relay, "board2")?;
    for b in ["board1", "board2"] {
        relay.admin_ok(&["device", "tag", b, "edge"])?;
    }
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("tick.sh");
    std::fs::write(&script, "echo \"$1 $(date +%s)\"\n")?;
    let sha = relay
        .admin_ok(&[
            "artifact",
            "put",
            "--tenant",
            "acme",
            script.to_str().unwrap_or_default(),
        ])?
        .trim()
        .to_string();
    ensure!(sha.len() == 64, "artifact put printed {sha:?}");
    let v1 = dir.path().join("ticker-1.yaml");
    std::fs::write(&v1, ticker("1.0.0", &sha, None))?;
    let id = deploy(&relay, "tag:edge", &["--recipe", path_str(&v1)])?;
    let view = wait_final(&relay, &id, DEPLOYED)?;
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
    let id2 = deploy(
        &relay,
        "tag:edge",
        &["--recipe", path_str(&v2), "--set", "label=two"],
    )?;
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
    let view = wait_final(&relay, &id2, DEPLOYED)?;
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
    let id3 = deploy(&relay, "tag:edge", &["--recipe", path_str(&bad)])?;
    let view = wait_final(&relay, &id3, DEPLOYED)?;
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
    let id4 = deploy(&relay, "tag:edge", &["--recipe", path_str(&v4)])?;
    let view = wait_final(&relay, &id4, DEPLOYED)?;
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

fn action(relay: &Relay, args: &[&str]) -> Result<String> {
    let mut all = vec!["action", "create"];
    all.extend_from_slice(args);
    Ok(relay.admin_ok(&all)?.trim().to_string())
}

fn action_done(relay: &Relay, id: &str) -> Result<serde_json::Value> {
    let mut last = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(30),
        &format!("action {id} done"),
        || {
            last = relay
                .admin_ok(&["action", "show", id, "--json"])
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            matches!(
                last["status"].as_str(),
                Some("succeeded" | "failed" | "expired")
            )
        },
    )
    .with_context(|| format!("last {last}"))?;
    Ok(last)
}

#[test]
fn remote_actions_run_queue_while_offline_and_the_inventory_is_reported() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let dir = tempfile::tempdir()?;
    let rebooted = dir.path().join("rebooted");
    let extra = format!("{APPS}  reboot_command: touch {}\n", rebooted.display());
    let mut agent = Agent::with_extra_config("board1", &[], &extra)?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;

    // Inventory arrives with the first report.
    let mut shown = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "inventory", || {
        shown = relay.device_json("board1").unwrap_or_default();
        shown["inventory"]["kernel"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    })?;
    let inv = &shown["inventory"];
    ensure!(
        inv["hostname"].as_str().is_some_and(|h| !h.is_empty())
            && inv["arch"] == std::env::consts::ARCH
            && inv["memory_bytes"].as_u64().is_some_and(|m| m > 0)
            && inv["agent_version"].is_string(),
        "{inv}"
    );
    let text = relay.admin_ok(&["device", "show", "board1"])?;
    ensure!(
        text.contains("kernel:") && text.contains("interfaces:"),
        "{text}"
    );

    // A command: exit code and both output streams come back.
    let id = action(
        &relay,
        &["board1", "--run", "echo to-out; echo to-err >&2; exit 3"],
    )?;
    let done = action_done(&relay, &id)?;
    ensure!(
        done["status"] == "failed"
            && done["exit_code"] == 3
            && done["output"]
                .as_str()
                .is_some_and(|o| o.contains("to-out") && o.contains("to-err")),
        "{done}"
    );
    let id = action(&relay, &["board1", "--run", "sleep 30", "--timeout", "1"])?;
    let done = action_done(&relay, &id)?;
    ensure!(
        done["status"] == "failed"
            && done["error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out")),
        "{done}"
    );
    let id = action(
        &relay,
        &["board1", "--run", "head -c 200000 /dev/zero | tr '\\000' x"],
    )?;
    let done = action_done(&relay, &id)?;
    ensure!(
        done["status"] == "succeeded"
            && done["truncated"] == true
            && done["output"].as_str().map(str::len) == Some(64 * 1024),
        "bounded output: status {} truncated {}",
        done["status"],
        done["truncated"]
    );
    let id = action(&relay, &["board1", "--restart", "com.example.nothing"])?;
    let done = action_done(&relay, &id)?;
    ensure!(
        done["status"] == "failed"
            && done["error"]
                .as_str()
                .is_some_and(|e| e.contains("com.example.nothing")),
        "{done}"
    );
    let id = action(&relay, &["board1", "--reboot"])?;
    ensure!(action_done(&relay, &id)?["status"] == "succeeded");
    wait_until(Duration::from_secs(10), "reboot command ran", || {
        rebooted.exists()
    })?;

    // While the device is offline actions wait; one that expires first is never run.
    agent
        .proc
        .take()
        .map(|mut p| p.terminate(Duration::from_secs(15)));
    let later = action(
        &relay,
        &["board1", "--run", "echo later", "--expires", "1h"],
    )?;
    let stale = action(
        &relay,
        &["board1", "--run", "echo stale", "--expires", "1s"],
    )?;
    let pending: serde_json::Value =
        serde_json::from_str(&relay.admin_ok(&["action", "show", &later, "--json"])?)?;
    ensure!(pending["status"] == "pending", "{pending}");
    std::thread::sleep(Duration::from_millis(1500));
    agent.start()?;
    let done = action_done(&relay, &later)?;
    ensure!(
        done["status"] == "succeeded" && done["output"] == "later\n",
        "{done}"
    );
    ensure!(action_done(&relay, &stale)?["status"] == "expired");
    let list = relay.admin_ok(&["action", "list", "--device", "board1"])?;
    ensure!(list.lines().count() >= 8, "{list}");
    Ok(())
}

#[test]
fn downloads_resume_across_cut_links_and_broken_components_are_reported() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    // The device reaches the relay through a proxy that cuts the link every 0.4–0.9 s.
    let proxy = ChaosProxy::start(
        relay.ssh_port,
        Duration::from_millis(400),
        Duration::from_millis(900),
        7,
    )?;
    let mut agent = Agent::with_extra_config("board1", &[], APPS)?;
    agent.enroll_via(&relay, &format!("ssh://127.0.0.1:{}", proxy.port), "acme")?;
    agent.start()?;
    agent.wait_online()?;
    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big.bin");
    std::fs::write(&big, pseudo_random(24 << 20, 99))?;
    let sha = relay
        .admin_ok(&[
            "artifact",
            "put",
            "--tenant",
            "acme",
            big.to_str().unwrap_or_default(),
        ])?
        .trim()
        .to_string();
    let recipe = dir.path().join("big.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: com.example.big\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: relay:sha256:{sha}\n        sha256: {sha}\n    lifecycle:\n      run: sha256sum {{artifacts:path}}/{sha} > {{work:path}}/sum; exec sleep 600\n"
        ),
    )?;
    proxy.set_cutting(true);
    let id = deploy(&relay, "device:board1", &["--recipe", path_str(&recipe)])?;
    let view = wait_final(&relay, &id, DEPLOYED).with_context(|| {
        let log = agent.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    })?;
    proxy.set_cutting(false);
    ensure!(statuses(&view) == ["board1=succeeded"], "{view}");
    ensure!(
        agent.log().contains("resuming the download of"),
        "the download never had to resume: {} cuts",
        proxy.cuts.load(std::sync::atomic::Ordering::SeqCst)
    );
    let sum =
        std::fs::read_to_string(agent.dir.path().join("state/apps/com.example.big/work/sum"))?;
    ensure!(
        sum.starts_with(&sha),
        "the artifact on the device is not the one stored: {sum}"
    );

    // A component that keeps crashing after it settled is reported broken at the relay, and
    // the next deployment still goes through.
    let crash = dir.path().join("crash.yaml");
    std::fs::write(
        &crash,
        "name: com.example.crasher\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: sleep 1.5; exit 4\n",
    )?;
    let id = deploy(&relay, "device:board1", &["--recipe", path_str(&crash)])?;
    wait_final(&relay, &id, DEPLOYED)?;
    let mut state = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "broken reported", || {
        state = relay
            .admin_ok(&["device", "state", "board1", "--json"])
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        state["reported"]["components"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["name"] == "com.example.crasher" && c["state"] == "broken")
        })
    })
    .with_context(|| format!("{state}"))?;
    let fixed = dir.path().join("fixed.yaml");
    std::fs::write(
        &fixed,
        "name: com.example.crasher\nversion: 1.0.1\nmanifests:\n  - lifecycle:\n      run: exec sleep 600\n",
    )?;
    let id = deploy(&relay, "device:board1", &["--recipe", path_str(&fixed)])?;
    let view = wait_final(&relay, &id, DEPLOYED)?;
    ensure!(statuses(&view) == ["board1=succeeded"], "{view}");
    Ok(())
}

#[test]
fn a_device_fetches_only_its_own_tenants_artifacts_even_by_digest() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    relay.tenant("globex")?;
    // Enrolled devices with no agent running: their own keys speak for them.
    let mine = Agent::new("board1", &[])?;
    mine.enroll(&relay, Transport::Tcp, "acme")?;
    let theirs = Agent::new("board-g", &[])?;
    theirs.enroll(&relay, Transport::Tcp, "globex")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("secret.bin");
    std::fs::write(&file, b"acme only, 24 bytes long")?;
    let file = file.to_str().unwrap_or_default();
    let put = |tenant: &str| -> Result<String> {
        Ok(relay
            .admin_ok(&["artifact", "put", "--tenant", tenant, file])?
            .trim()
            .to_string())
    };
    let sha = put("acme")?;
    const DATA: &str = "YWNtZSBvbmx5LCAyNCBieXRlcyBsb25n"; // base64 of the file

    // globex's device asking for acme's digest hears what a digest never stored gets.
    let missing = "0".repeat(64);
    let foreign = fetch_over_control(&relay, &theirs, &sha)?;
    let absent = fetch_over_control(&relay, &theirs, &missing)?;
    ensure!(
        foreign["type"] == "fetch_error" && foreign.get("data").is_none(),
        "globex's device was sent acme's artifact: {foreign}"
    );
    ensure!(
        absent["type"] == "fetch_error" && foreign["message"] == absent["message"],
        "acme's digest answered {foreign}, a missing one {absent}"
    );
    let listed = relay.admin_ok(&["artifact", "list", "--tenant", "globex"])?;
    ensure!(
        !listed.contains(&sha),
        "globex lists acme's artifact: {listed}"
    );

    // acme's own device is sent it, so the refusal above was about the tenant.
    let own = fetch_over_control(&relay, &mine, &sha)?;
    ensure!(
        own["type"] == "chunk" && own["data"] == DATA && own["last"] == true,
        "acme's device: {own}"
    );
    // globex putting the same bytes gets the same digest and then its device may fetch them.
    ensure!(put("globex")? == sha, "same bytes, another digest");
    let theirs_now = fetch_over_control(&relay, &theirs, &sha)?;
    ensure!(
        theirs_now["type"] == "chunk" && theirs_now["data"] == DATA,
        "globex's device after globex put it: {theirs_now}"
    );
    Ok(())
}
