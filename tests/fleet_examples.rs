//! Fleet deployments that compose, on a real relay and agent: every shipped example recipe
//! deployed from the relay with `--artifacts`, deployments whose outcome is only their own,
//! undeploy with `--remove`, a component removed on the device shown as such, and
//! `--artifacts` refusing files outside its directory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;

#[test]
fn every_shipped_example_deploys_from_the_relay_and_runs() -> Result<()> {
    let (relay, agent) = apps_setup("board1")?;
    let port = free_port()?;
    let tmp = tempfile::tempdir()?;
    let value_file = tmp.path().join("pair-value");
    // Each example directory, its recipes deployed in one deployment with `--recipe a b`
    // and `--artifacts` the directory, exactly as the README says.
    let mut examples: Vec<PathBuf> = std::fs::read_dir(recipes_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    examples.sort();
    let mut names = Vec::new();
    for dir in &examples {
        let mut yamls: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        yamls.sort();
        let example = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let mut args = vec!["--recipe"];
        args.extend(yamls.iter().map(|p| path_str(p)));
        args.extend(["--artifacts", path_str(dir)]);
        let set: Vec<String> = match example {
            "hello-http" => vec![format!("port={port}")],
            "periodic-job" => vec!["interval=1".into()],
            "pair" => vec![format!(
                "com.example.pair.store:file={}",
                value_file.display()
            )],
            _ => Vec::new(),
        };
        for s in &set {
            args.extend(["--set", s.as_str()]);
        }
        let id = deploy(&relay, "device:board1", &args)?;
        let (status, message) = deployment_outcome(&relay, &agent, &id)?;
        ensure!(
            status == "succeeded",
            "example {example}: {status}: {message}\nagent log:\n{}",
            tail_lines(&agent.log(), 40)
        );
        let view: serde_json::Value =
            serde_json::from_str(&relay.admin_ok(&["deploy", "status", &id, "--json"])?)?;
        let components: Vec<String> = view["components"]
            .as_object()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        ensure!(components.len() == yamls.len(), "{example}: {view}");
        names.extend(components);
    }
    ensure!(examples.len() >= 3, "examples found: {examples:?}");

    // Each answers or works as its recipe says.
    let mut answer = String::new();
    wait_until(Duration::from_secs(20), "hello-http answers", || {
        answer = http_body(port).unwrap_or_default();
        answer == "hello from tether"
    })
    .with_context(|| format!("last answer {answer:?}"))?;
    let ticks = agent
        .dir
        .path()
        .join("state/apps/com.example.periodic-job/work/ticks");
    wait_until(Duration::from_secs(20), "periodic-job ticks", || {
        std::fs::read_to_string(&ticks).is_ok_and(|t| t.lines().count() >= 2)
    })?;
    let ticked = std::fs::read_to_string(&ticks)?;
    ensure!(ticked.starts_with("tick 1 "), "{ticked}");
    wait_until(
        Duration::from_secs(20),
        "the reporter reads the store",
        || {
            app_ok(&agent, &["logs", "com.example.pair.reporter"]).is_ok_and(|l| {
                l.lines()
                    .any(|l| l.contains("value: ") && !l.contains("none"))
            })
        },
    )?;
    ensure!(value_file.exists(), "the store did not write its file");
    // The relay artifact kept its file name on the device.
    let server = agent
        .dir
        .path()
        .join("state/apps/com.example.hello-http/1.0.0/artifacts/server.py");
    ensure!(server.is_file(), "{} missing", server.display());
    let mut state = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "all reported running", || {
        state = device_state(&relay, "board1").unwrap_or_default();
        names
            .iter()
            .all(|n| reported(&state, n)["state"] == "running")
    })
    .with_context(|| format!("{state}"))?;
    // The stored recipe names the artifact on the relay, by digest and name.
    let sha = &state["desired"]["components"]["com.example.hello-http"]["recipe_sha256"];
    let stored = std::fs::read_to_string(
        relay
            .data_dir()
            .join("artifacts")
            .join(sha.as_str().unwrap_or_default()),
    )?;
    ensure!(
        stored.contains(
            "relay:sha256:2f22479346f77a3454cb3f2ef88b942ac4ca2b2380b78ecd4368289f1af02029/server.py"
        ),
        "{stored}"
    );

    // Stop and show speak of one state, also for a fleet component, and the relay hears it.
    let out = app_ok(&agent, &["stop", "com.example.periodic-job"])?;
    ensure!(
        out.trim() == "com.example.periodic-job 1.0.0: stopped",
        "{out}"
    );
    let shown: serde_json::Value = serde_json::from_str(&app_ok(
        &agent,
        &["show", "com.example.periodic-job", "--json"],
    )?)?;
    ensure!(
        shown["state"] == "stopped" && shown["desired"] == "stopped",
        "{shown}"
    );
    wait_until(Duration::from_secs(20), "stopped reported", || {
        device_state(&relay, "board1")
            .is_ok_and(|s| reported(&s, "com.example.periodic-job")["state"] == "stopped")
    })?;
    Ok(())
}

fn sleeper(name: &str, version: &str) -> String {
    format!(
        "name: {name}\nversion: {version}\nmanifests:\n  - lifecycle:\n      run: exec sleep 600\n"
    )
}

#[test]
fn deployments_compose_remove_and_show_local_removals() -> Result<()> {
    let (relay, agent) = apps_setup("board1")?;
    let dir = tempfile::tempdir()?;
    let a = write_file(dir.path(), "a.yaml", &sleeper("com.example.a", "1.0.0"))?;
    let bad = write_file(
        dir.path(),
        "bad.yaml",
        "name: com.example.bad\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: exit 3\n",
    )?;
    let c = write_file(dir.path(), "c.yaml", &sleeper("com.example.c", "1.0.0"))?;
    let d = write_file(dir.path(), "d.yaml", &sleeper("com.example.d", "1.0.0"))?;

    let id = deploy(&relay, "device:board1", &["--recipe", path_str(&a)])?;
    ensure!(deployment_outcome(&relay, &agent, &id)?.0 == "succeeded");
    let id = deploy(&relay, "device:board1", &["--recipe", path_str(&bad)])?;
    let (status, message) = deployment_outcome(&relay, &agent, &id)?;
    ensure!(
        status == "rolled-back" && message.contains("exited with status 3"),
        "{status}: {message}"
    );
    // An unrelated deployment after it is judged on its own component alone.
    let id = deploy(&relay, "device:board1", &["--recipe", path_str(&c)])?;
    let (status, message) = deployment_outcome(&relay, &agent, &id)?;
    ensure!(status == "succeeded", "{status}: {message}");
    let mut state = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "c running, bad failed", || {
        state = device_state(&relay, "board1").unwrap_or_default();
        reported(&state, "com.example.c")["state"] == "running"
            && state["reported"]["failed"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["name"] == "com.example.bad"))
    })
    .with_context(|| format!("{state}"))?;
    ensure!(
        reported(&state, "com.example.bad").is_null()
            && state["desired"]["components"]["com.example.bad"].is_object(),
        "{state}"
    );
    let text = relay.admin_ok(&["device", "state", "board1"])?;
    let bad_line = text
        .lines()
        .find(|l| l.starts_with("com.example.bad"))
        .unwrap_or_default();
    ensure!(
        bad_line.contains("failed: ") && bad_line.contains("exited with status 3"),
        "{text}"
    );

    // --remove undeploys: the agent stops and deletes it, and neither side lists it after.
    let id = deploy(
        &relay,
        "device:board1",
        &["--remove", "com.example.c", "--remove", "com.example.bad"],
    )?;
    let (status, message) = deployment_outcome(&relay, &agent, &id)?;
    ensure!(status == "succeeded", "{status}: {message}");
    wait_until(Duration::from_secs(20), "c gone on both sides", || {
        device_state(&relay, "board1").is_ok_and(|s| {
            reported(&s, "com.example.c").is_null()
                && s["desired"]["components"]["com.example.c"].is_null()
                && s["desired"]["components"]["com.example.bad"].is_null()
                && s["reported"]["failed"].is_null()
        })
    })?;
    let list = app_ok(&agent, &["list"])?;
    ensure!(!list.contains("com.example.c"), "{list}");
    ensure!(
        !agent.dir.path().join("state/apps/com.example.c").exists(),
        "its files are still there"
    );
    let status_text = relay.admin_ok(&["deploy", "status", &id])?;
    ensure!(
        status_text.contains("removes:") && status_text.contains("com.example.bad, com.example.c"),
        "{status_text}"
    );
    // Removing what no device has is refused by name.
    let r = relay.admin(&[
        "deploy",
        "create",
        "--tenant",
        "acme",
        "--target",
        "device:board1",
        "--remove",
        "com.example.nothing",
    ])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("com.example.nothing"),
        "{:?} {}",
        r.status,
        r.stderr
    );

    // Removed on the device by hand: the relay shows it desired but not on the device, and an
    // unrelated deployment does not put it back behind the operator's back.
    app_ok(&agent, &["remove", "com.example.a"])?;
    wait_until(Duration::from_secs(20), "a no longer reported", || {
        device_state(&relay, "board1").is_ok_and(|s| {
            reported(&s, "com.example.a").is_null()
                && s["desired"]["components"]["com.example.a"]["version"] == "1.0.0"
        })
    })?;
    let text = relay.admin_ok(&["device", "state", "board1"])?;
    let a_line = text
        .lines()
        .find(|l| l.starts_with("com.example.a"))
        .unwrap_or_default();
    ensure!(a_line.contains("not on the device"), "{text}");
    let id = deploy(&relay, "device:board1", &["--recipe", path_str(&d)])?;
    ensure!(deployment_outcome(&relay, &agent, &id)?.0 == "succeeded");
    ensure!(
        !app_ok(&agent, &["list"])?.contains("com.example.a"),
        "an unrelated deployment reinstalled a"
    );
    // Deploying it again by name brings it back.
    let id = deploy(&relay, "device:board1", &["--recipe", path_str(&a)])?;
    ensure!(deployment_outcome(&relay, &agent, &id)?.0 == "succeeded");
    ensure!(app_ok(&agent, &["list"])?.contains("com.example.a"));
    Ok(())
}

#[test]
fn artifacts_dir_refuses_files_outside_it_naming_artifact_and_recipe() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let board = Agent::new("board1", &[])?;
    board.enroll(&relay, Transport::Tcp, "acme")?;
    let dir = tempfile::tempdir()?;
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir(&artifacts)?;
    let passwd = std::fs::read("/etc/passwd")?;
    let passwd_sha = {
        let out = std::process::Command::new("sha256sum")
            .arg("/etc/passwd")
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    ensure!(passwd_sha.len() == 64 && !passwd.is_empty());
    let with_uri = |uri: &str| {
        format!(
            "name: com.example.evil\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: \"{uri}\"\n        sha256: {passwd_sha}\n    lifecycle:\n      run: cat {{artifacts:path}}/*\n"
        )
    };
    let try_deploy = |recipe: &Path| -> Result<Run> {
        relay.admin(&[
            "deploy",
            "create",
            "--tenant",
            "acme",
            "--target",
            "device:board1",
            "--recipe",
            path_str(recipe),
            "--artifacts",
            path_str(&artifacts),
        ])
    };
    for (file, uri) in [
        ("dotdot.yaml", "../../etc/passwd"),
        ("absolute.yaml", "/etc/passwd"),
    ] {
        let recipe = write_file(dir.path(), file, &with_uri(uri))?;
        let r = try_deploy(&recipe)?;
        ensure!(
            r.status == Some(1)
                && r.stderr.contains(file)
                && r.stderr.contains(uri)
                && r.stderr.contains("manifests[0].artifacts[0].uri"),
            "{uri}: {:?} {}",
            r.status,
            r.stderr
        );
    }
    // A bare name that is a symbolic link out of the directory, even with the right digest.
    std::os::unix::fs::symlink("/etc/passwd", artifacts.join("passwd"))?;
    let recipe = write_file(dir.path(), "link.yaml", &with_uri("passwd"))?;
    let r = try_deploy(&recipe)?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("link.yaml")
            && r.stderr.contains("artifact passwd")
            && r.stderr.contains("leads out of"),
        "{:?} {}",
        r.status,
        r.stderr
    );
    // A file whose content is not what the recipe says.
    std::fs::write(artifacts.join("tool"), b"not passwd")?;
    let recipe = write_file(dir.path(), "mismatch.yaml", &with_uri("tool"))?;
    let r = try_deploy(&recipe)?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("mismatch.yaml")
            && r.stderr.contains("artifact tool")
            && r.stderr.contains(&passwd_sha),
        "{:?} {}",
        r.status,
        r.stderr
    );
    // Without --artifacts a bare name the tenant never stored says how to supply it.
    let r = relay.admin(&[
        "deploy",
        "create",
        "--tenant",
        "acme",
        "--target",
        "device:board1",
        "--recipe",
        path_str(&recipe),
    ])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("--artifacts DIR"),
        "{:?} {}",
        r.status,
        r.stderr
    );
    // Nothing was deployed and nothing of /etc/passwd was stored.
    let listed = relay.admin_ok(&["artifact", "list"])?;
    ensure!(!listed.contains(&passwd_sha), "{listed}");
    ensure!(relay.admin_ok(&["deploy", "list"])?.lines().count() <= 1);
    Ok(())
}
