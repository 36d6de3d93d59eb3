//! Tenant isolation: with credentials of tenant globex, every HTTP endpoint and every SSH path
//! (shell, exec, sftp, scp, -L forward, -J jump, a device's control channel) aimed at tenant
//! acme's device, deployment, action, session or artifact gets nothing, and the same answer as
//! for something that does not exist.
//! One key registered in both tenants is each tenant's own engineer there. API token roles: a
//! viewer token reads and may not change anything.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;

fn api_token(relay: &Relay, tenant: &str, role: &str) -> Result<String> {
    Ok(relay
        .admin_ok(&[
            "token", "create", "--tenant", tenant, "--api", "--role", role,
        ])?
        .trim()
        .to_string())
}

#[test]
fn another_tenants_credentials_reach_nothing() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let relay = &s.relay;
    relay.tenant("globex")?;
    let gary = relay.engineer("gary", "globex", "admin")?;
    let mut theirs = Agent::new("board-g", &[])?;
    theirs.enroll(relay, Transport::Tcp, "globex")?;
    theirs.start()?;
    theirs.wait_online()?;

    // acme's things: a device, a session, an action, a deployment, audit entries.
    let acme = api_token(relay, "acme", "operator")?;
    let globex = api_token(relay, "globex", "admin")?;
    let device_id = s.agent.device_id()?;
    let r = s.engineer.exec("board1", "echo mine")?;
    ensure!(r.status == Some(0), "{}", r.stderr);
    let (code, body) = relay.http(
        "POST",
        "/v1/devices/board1/actions",
        Some(&acme),
        Some(r#"{"kind": "run", "command": "true"}"#),
    )?;
    ensure!(code == 201, "{code} {body}");
    let action: Value = serde_json::from_str(&body)?;
    let action_id = action["id"].as_str().context("action id")?.to_string();
    let recipe = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/periodic-job/recipe.yaml"),
    )?;
    let deploy = serde_json::json!({
        "target": "device:board1",
        "recipes": [{ "name": "recipe.yaml", "text": recipe }],
    })
    .to_string();
    let (code, body) = relay.http("POST", "/v1/deployments", Some(&acme), Some(&deploy))?;
    ensure!(code == 201, "deploy: {code} {body}");
    let deployment: Value = serde_json::from_str(&body)?;
    let deployment_id = deployment["id"]
        .as_str()
        .context("deployment id")?
        .to_string();
    let session_id = wait_for_session(relay)?;
    let files = tempfile::tempdir()?;
    let file = files.path().join("acme-tool.bin");
    std::fs::write(&file, b"acme's tool")?;
    let artifact = relay
        .admin_ok(&[
            "artifact",
            "put",
            "--tenant",
            "acme",
            file.to_str().context("path")?,
        ])?
        .trim()
        .to_string();

    // Every endpoint, with globex's token, by acme's device name and id.
    for device in ["board1", device_id.as_str()] {
        for (method, path, body) in [
            ("GET", format!("/v1/devices/{device}"), None),
            ("GET", format!("/v1/devices/{device}/telemetry"), None),
            ("GET", format!("/v1/devices/{device}/events"), None),
            ("GET", format!("/v1/devices/{device}/logs"), None),
            ("GET", format!("/v1/devices/{device}/state"), None),
            ("GET", format!("/v1/devices/{device}/tags"), None),
            ("GET", format!("/v1/devices/{device}/actions"), None),
            (
                "PUT",
                format!("/v1/devices/{device}/config"),
                Some(r#"{"x": {"a": 1}}"#),
            ),
            (
                "PUT",
                format!("/v1/devices/{device}/tags"),
                Some(r#"{"add": ["x"]}"#),
            ),
            (
                "POST",
                format!("/v1/devices/{device}/actions"),
                Some(r#"{"kind": "run", "command": "id"}"#),
            ),
            ("GET", format!("/v1/sessions?device={device}"), None),
        ] {
            let (code, answer) = relay.http(method, &path, Some(&globex), body)?;
            let (missing_code, missing) = relay.http(
                method,
                &path.replace(device, "no-such-device"),
                Some(&globex),
                body,
            )?;
            ensure!(
                code == 404,
                "{method} {path} with globex's token: {code} {answer}"
            );
            ensure!(
                missing_code == 404
                    && answer.replace(device, "X") == missing.replace("no-such-device", "X"),
                "{method} {path}: answered {answer} but {missing} for a device that does not exist"
            );
        }
    }
    let deploy_theirs = deploy.replace("device:board1", &format!("device:{device_id}"));
    for body in [deploy.as_str(), deploy_theirs.as_str()] {
        let (code, answer) = relay.http("POST", "/v1/deployments", Some(&globex), Some(body))?;
        ensure!(code == 404, "deploy to acme's device: {code} {answer}");
    }
    // acme's artifact by its digest: a globex recipe naming it is refused as one naming a
    // digest never stored, and a globex device asking for it hears what a missing one gets.
    let never_stored = "0".repeat(64);
    let needs = |sha: &str| {
        serde_json::json!({
            "target": "device:board-g",
            "recipes": [{
                "name": "leak.yaml",
                "text": format!(
                    "name: com.example.leak\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: relay:sha256:{sha}\n        sha256: {sha}\n    lifecycle:\n      run: sleep 600\n"
                ),
            }],
        })
        .to_string()
    };
    let (code, answer) = relay.http(
        "POST",
        "/v1/deployments",
        Some(&globex),
        Some(&needs(&artifact)),
    )?;
    let (missing_code, missing) = relay.http(
        "POST",
        "/v1/deployments",
        Some(&globex),
        Some(&needs(&never_stored)),
    )?;
    ensure!(
        code == 400
            && missing_code == 400
            && answer.replace(&artifact, "X") == missing.replace(&never_stored, "X"),
        "deploying acme's artifact: {code} {answer}; a missing one: {missing_code} {missing}"
    );
    let spy = Agent::new("board-g2", &[])?;
    spy.enroll(relay, Transport::Tcp, "globex")?;
    let foreign = fetch_over_control(relay, &spy, &artifact)?;
    let absent = fetch_over_control(relay, &spy, &never_stored)?;
    ensure!(
        foreign["type"] == "fetch_error"
            && absent["type"] == "fetch_error"
            && foreign["message"] == absent["message"],
        "fetching acme's artifact: {foreign}; a missing one: {absent}"
    );
    for path in [
        format!("/v1/actions/{action_id}"),
        format!("/v1/deployments/{deployment_id}"),
        format!("/v1/sessions/{session_id}"),
        format!("/v1/sessions/{session_id}/cast"),
    ] {
        let (code, answer) = relay.http("GET", &path, Some(&globex), None)?;
        ensure!(
            code == 404,
            "GET {path} with globex's token: {code} {answer}"
        );
    }
    for path in [
        "/v1/devices",
        "/v1/deployments",
        "/v1/sessions",
        "/v1/audit",
    ] {
        let (code, answer) = relay.http("GET", path, Some(&globex), None)?;
        ensure!(code == 200, "{path}: {code} {answer}");
        for secret in [
            "board1",
            device_id.as_str(),
            &deployment_id,
            &session_id,
            "alice",
        ] {
            ensure!(
                !answer.contains(secret),
                "{path} shows globex {secret}: {answer}"
            );
        }
    }
    // acme's own token sees them, so the checks above could have found them.
    let (code, answer) = relay.http("GET", "/v1/sessions", Some(&acme), None)?;
    ensure!(
        code == 200 && answer.contains(&session_id),
        "{code} {answer}"
    );

    // Every SSH path, with globex's engineer, by acme's device name and id.
    let dir = tempfile::tempdir()?;
    let port = gary.ssh_port.to_string();
    for device in ["board1", device_id.as_str()] {
        let r = gary.exec(device, "echo leaked")?;
        ensure!(
            r.status == Some(255) && !r.stdout.contains("leaked"),
            "exec on acme's {device}: {:?} {}",
            r.status,
            r.stdout
        );
        let unknown = gary.exec("no-such-device", "echo leaked")?;
        ensure!(
            r.stderr.replace(device, "X") == unknown.stderr.replace("no-such-device", "X"),
            "exec on {device} answered {:?}, on a missing device {:?}",
            r.stderr,
            unknown.stderr
        );
        let shell = run_with_timeout(
            gary.ssh_cmd(&["-p", &port, "-tt", &format!("{device}@127.0.0.1")]),
            Some(b"echo leaked\nexit\n"),
            Duration::from_secs(20),
        )?;
        ensure!(
            shell.status == Some(255) && !shell.stdout.contains("leaked"),
            "shell on {device}"
        );
        let r = gary.sftp_batch(device, "ls /\n")?;
        ensure!(r.status != Some(0), "sftp to {device}: {}", r.stdout);
        let local = dir.path().join("f");
        std::fs::write(&local, b"x")?;
        let r = gary.scp(&[
            local.to_str().context("path")?,
            &format!("{device}@127.0.0.1:/tmp/leaked-{}", std::process::id()),
        ])?;
        ensure!(r.status != Some(0), "scp to {device}");
        // -W asks for a direct-tcpip channel, as -L and -J do.
        for (login, target) in [
            (device.to_string(), "127.0.0.1:22".to_string()),
            ("gary".to_string(), format!("{device}:22")),
        ] {
            let r = run_with_timeout(
                gary.ssh_cmd(&["-p", &port, "-W", &target, &format!("{login}@127.0.0.1")]),
                Some(b""),
                Duration::from_secs(20),
            )?;
            ensure!(
                r.status == Some(255),
                "direct-tcpip {login} -> {target}: {:?} {}",
                r.status,
                r.stdout
            );
        }
    }
    // globex reaches its own device, so the refusals above are about the tenant.
    let r = gary.exec("board-g", "echo theirs")?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == "theirs",
        "{}",
        r.stderr
    );

    // One key, two tenants: acme's alice's key registered for globex too, as gwen. On
    // globex's device it is gwen, in globex's records only; acme learns nothing of it.
    let pubkey = format!("{}.pub", s.engineer.key.display());
    relay.admin_ok(&[
        "user", "add", "gwen", "--tenant", "globex", "--role", "operator", "--key", &pubkey,
    ])?;
    let r = s.engineer.exec("board-g", "echo as-gwen")?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == "as-gwen",
        "the shared key on globex's device: {:?} {}",
        r.status,
        r.stderr
    );
    wait_until(Duration::from_secs(10), "gwen's session closed", || {
        relay
            .http("GET", "/v1/sessions", Some(&globex), None)
            .is_ok_and(|(_, b)| b.contains("as-gwen") && b.contains("\"ended_at\":\""))
    })?;
    let (_, theirs) = relay.http("GET", "/v1/sessions", Some(&globex), None)?;
    let sessions: Value = serde_json::from_str(&theirs)?;
    ensure!(
        sessions.as_array().is_some_and(|a| a
            .iter()
            .any(|x| x["engineer"] == "gwen" && x["command"] == "echo as-gwen")),
        "globex's session of the shared key: {theirs}"
    );
    for path in ["/v1/sessions", "/v1/audit"] {
        let (_, ours) = relay.http("GET", path, Some(&acme), None)?;
        ensure!(
            !ours.contains("board-g") && !ours.contains("gwen") && !ours.contains("as-gwen"),
            "acme's {path} learns of globex: {ours}"
        );
        let (_, theirs) = relay.http("GET", path, Some(&globex), None)?;
        ensure!(
            !theirs.contains("engineer:alice") && !theirs.contains("\"alice\""),
            "globex's {path} names acme's engineer: {theirs}"
        );
    }
    Ok(())
}

/// Waits for the engineer's exec to be recorded and returns its session id.
fn wait_for_session(relay: &Relay) -> Result<String> {
    let mut id = String::new();
    wait_until(Duration::from_secs(10), "a recorded session", || {
        let Ok(text) = relay.admin_ok(&["session", "list", "--json"]) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            return false;
        };
        match v[0]["id"].as_str() {
            Some(s) => {
                id = s.to_string();
                true
            }
            None => false,
        }
    })?;
    Ok(id)
}

#[test]
fn a_viewer_token_reads_and_changes_nothing() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let viewer = api_token(&s.relay, "acme", "viewer")?;
    let (code, body) = s.relay.http("GET", "/v1/devices", Some(&viewer), None)?;
    ensure!(code == 200 && body.contains("board1"), "{code} {body}");
    for (method, path, body) in [
        ("PUT", "/v1/devices/board1/config", r#"{"x": {"a": 1}}"#),
        ("PUT", "/v1/devices/board1/tags", r#"{"add": ["x"]}"#),
        (
            "POST",
            "/v1/devices/board1/actions",
            r#"{"kind": "run", "command": "id"}"#,
        ),
        (
            "POST",
            "/v1/deployments",
            r#"{"target": "device:board1", "recipes": []}"#,
        ),
    ] {
        let (code, answer) = s.relay.http(method, path, Some(&viewer), Some(body))?;
        ensure!(
            code == 403 && answer.contains("role viewer"),
            "{method} {path} with a viewer token: {code} {answer}"
        );
    }
    let (_, tags) = s
        .relay
        .http("GET", "/v1/devices/board1/tags", Some(&viewer), None)?;
    ensure!(!tags.contains("\"x\""), "a viewer changed tags: {tags}");
    // An operator token may, and the change is audited under the token's id (never its
    // secret), which `token list` shows with its role.
    let operator = api_token(&s.relay, "acme", "operator")?;
    let (code, answer) = s.relay.http(
        "PUT",
        "/v1/devices/board1/tags",
        Some(&operator),
        Some(r#"{"add": ["edge"]}"#),
    )?;
    ensure!(code == 200 && answer.contains("edge"), "{code} {answer}");
    let trail = s.relay.admin_ok(&["audit", "list", "--json"])?;
    ensure!(
        trail.contains("\"actor\": \"api:tok_") && trail.contains("device.tag"),
        "{trail}"
    );
    ensure!(
        !trail.contains(&operator),
        "the audit trail holds a token secret"
    );
    let tokens = s.relay.admin_ok(&["token", "list", "--json"])?;
    ensure!(
        tokens.contains("\"role\": \"viewer\"") && !tokens.contains(&viewer),
        "{tokens}"
    );
    Ok(())
}
