//! The command lines as scripts and people use them: a mistyped data directory is an error,
//! a reader that leaves early is no failure, logs in files carry no colour codes, each cause
//! of an error is printed once, and the messages of common mistakes say what is wrong.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

/// Runs `cmd` with its stdout a pipe whose reading end is closed before the command writes:
/// `cmd | head -c 10` where head has already left. Returns the exit code and stderr.
fn with_closed_stdout(mut cmd: Command) -> Result<(Option<i32>, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    drop(child.stdout.take());
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{cmd:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn relay_cmd(data_dir: &Path, args: &[&str]) -> Result<Run> {
    let mut cmd = Command::new(bin_dir()?.join("relay"));
    cmd.arg("--data-dir").arg(data_dir).args(args);
    run_with_timeout(cmd, None, Duration::from_secs(30))
}

#[test]
fn admin_commands_refuse_a_missing_store_and_relay_init_creates_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("tether-relya");
    for args in [
        &["tenant", "list"][..],
        &["device", "list", "--json"],
        &["tenant", "add", "acme"],
        &["audit", "list"],
    ] {
        let r = relay_cmd(&missing, args)?;
        let store = missing.join("relay.db");
        ensure!(
            r.status == Some(1)
                && r.stdout.is_empty()
                && r.stderr
                    .contains(&format!("no store at {}", store.display()))
                && r.stderr.contains("relay init"),
            "relay {args:?} on a missing store: {:?} {} {}",
            r.status,
            r.stdout,
            r.stderr
        );
        ensure!(!missing.exists(), "relay {args:?} created {missing:?}");
    }
    // An existing but empty directory stays empty too.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    let r = relay_cmd(&empty, &["tenant", "list"])?;
    ensure!(r.status == Some(1), "{:?} {}", r.status, r.stderr);
    ensure!(
        std::fs::read_dir(&empty)?.next().is_none(),
        "tenant list wrote into an empty directory"
    );

    let r = relay_cmd(&missing, &["init"])?;
    ensure!(r.status == Some(0), "relay init: {}", r.stderr);
    ensure!(
        missing.join("relay.db").is_file() && r.stdout.contains("created the store"),
        "relay init printed {:?}",
        r.stdout
    );
    let r = relay_cmd(&missing, &["init"])?;
    ensure!(
        r.status == Some(0) && r.stdout.contains("exists already"),
        "second relay init: {:?} {} {}",
        r.status,
        r.stdout,
        r.stderr
    );
    let r = relay_cmd(&missing, &["tenant", "add", "acme"])?;
    ensure!(r.status == Some(0), "tenant add after init: {}", r.stderr);
    let r = relay_cmd(&missing, &["tenant", "list", "--json"])?;
    ensure!(
        r.status == Some(0) && r.stdout.contains("acme"),
        "{:?} {} {}",
        r.status,
        r.stdout,
        r.stderr
    );
    Ok(())
}

#[test]
fn an_error_names_each_cause_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("no-such.yaml");
    let mut relay = Command::new(bin_dir()?.join("relay"));
    relay.arg("--config").arg(&config).args(["tenant", "list"]);
    let mut agent = Command::new(bin_dir()?.join("agent"));
    agent.arg("--config").arg(&config).args(["status"]);
    for cmd in [relay, agent] {
        let what = format!("{cmd:?}");
        let r = run_with_timeout(cmd, None, Duration::from_secs(30))?;
        ensure!(r.status == Some(1), "{what}: {:?} {}", r.status, r.stderr);
        ensure!(
            r.stderr.contains(&config.display().to_string())
                && r.stderr.matches("os error 2").count() == 1
                && r.stderr.lines().count() == 1,
            "{what} printed {:?}",
            r.stderr
        );
    }
    Ok(())
}

#[test]
fn a_closed_stdout_ends_read_commands_quietly_and_log_files_have_no_colour() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    s.relay.tenant("globex")?;
    let mut cmd = Command::new(bin_dir()?.join("relay"));
    cmd.arg("--data-dir")
        .arg(s.relay.data_dir())
        .args(["device", "list", "--json"]);
    let (code, stderr) = with_closed_stdout(cmd)?;
    ensure!(
        code == Some(0) && stderr.is_empty(),
        "relay device list --json | head: {code:?} {stderr:?}"
    );
    let mut cmd = Command::new(bin_dir()?.join("relay"));
    cmd.arg("--data-dir")
        .arg(s.relay.data_dir())
        .args(["tenant", "list", "--json"]);
    let (code, stderr) = with_closed_stdout(cmd)?;
    ensure!(
        code == Some(0) && stderr.is_empty(),
        "relay tenant list --json | head: {code:?} {stderr:?}"
    );
    for args in [&["status", "--json"][..], &["status"], &["keys", "show"]] {
        let mut cmd = Command::new(bin_dir()?.join("agent"));
        cmd.arg("--config").arg(&s.agent.config).args(args);
        let (code, stderr) = with_closed_stdout(cmd)?;
        ensure!(
            code == Some(0) && stderr.is_empty(),
            "agent {args:?} | head: {code:?} {stderr:?}"
        );
    }

    // Both programs log to files here (the harness redirects stderr): plain text only.
    let relay_log = s.relay.log();
    let agent_log = s.agent.log();
    ensure!(
        relay_log.contains("INFO") && agent_log.contains("INFO"),
        "nothing logged: {relay_log:?} {agent_log:?}"
    );
    ensure!(
        !relay_log.contains('\x1b'),
        "relay log has escape codes: {relay_log:?}"
    );
    ensure!(
        !agent_log.contains('\x1b'),
        "agent log has escape codes: {agent_log:?}"
    );
    Ok(())
}

#[test]
fn device_config_says_what_it_pushed_and_app_logs_print_json() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::with_extra_config("board1", &[], APPS)?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/periodic-job/recipe.yaml");
    relay.admin_ok(&[
        "deploy",
        "create",
        "--tenant",
        "acme",
        "--target",
        "device:board1",
        "--recipe",
        recipe.to_str().context("recipe path")?,
        "--set",
        "interval=0.2",
    ])?;
    let before: serde_json::Value =
        serde_json::from_str(&relay.admin_ok(&["device", "state", "board1", "--json"])?)?;
    let version = before["desired"]["version"]
        .as_u64()
        .context("desired version")?;
    let out = relay.admin_ok(&[
        "device",
        "config",
        "board1",
        "--set",
        "com.example.periodic-job:label=pushed",
    ])?;
    ensure!(
        out == format!("configuration version {} pushed to board1\n", version + 1),
        "device config printed {out:?}"
    );

    // The component runs on the board; its output log reads as one JSON object a line.
    let name = "com.example.periodic-job";
    let mut last = String::new();
    wait_until(Duration::from_secs(30), "a tick in the JSON log", || {
        let Ok(r) = agent.cmd(&["app", "logs", name, "--json"]) else {
            return false;
        };
        last = format!("{:?} {} {}", r.status, r.stdout, r.stderr);
        r.status == Some(0)
            && r.stdout.lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["step"] == "run"
                        && v["stream"] == "stdout"
                        && v["line"].as_str().is_some_and(|t| t.contains(" on "))
                })
            })
    })
    .with_context(|| format!("last answer: {last}\nagent log:\n{}", agent.log()))?;
    let r = agent.cmd(&["app", "logs", name, "--json"])?;
    for line in r.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("agent app logs --json printed {line:?}"))?;
        ensure!(v["line"].is_string(), "{line}");
    }
    Ok(())
}

#[test]
fn api_limits_above_the_maximum_are_refused_naming_the_parameter() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let token = s
        .relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--api"])?
        .trim()
        .to_string();
    for path in [
        "/v1/devices/board1/telemetry",
        "/v1/devices/board1/events",
        "/v1/devices/board1/logs",
        "/v1/sessions",
        "/v1/audit",
    ] {
        let (code, body) = s.relay.http(
            "GET",
            &format!("{path}?limit=100000000"),
            Some(&token),
            None,
        )?;
        ensure!(
            code == 400 && body.contains("limit") && body.contains("10000"),
            "{path}?limit=100000000: {code} {body}"
        );
        let (code, body) =
            s.relay
                .http("GET", &format!("{path}?limit=10000"), Some(&token), None)?;
        ensure!(code == 200, "{path}?limit=10000: {code} {body}");
    }
    Ok(())
}

#[test]
fn a_wrong_fingerprint_at_enrollment_is_named_as_such() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let agent = Agent::new("board1", &[])?;
    let token = relay.enroll_token("acme")?;
    let r = agent.cmd(&[
        "enroll",
        &relay.url(Transport::Tcp),
        "--token",
        &token,
        "--fingerprint",
        "SHA256:wrong",
    ])?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("the relay presented host key SHA256:")
            && r.stderr
                .contains("not the SHA256:wrong given with --fingerprint")
            && !r.stderr.contains("pinned")
            && !r.stderr.contains("--force"),
        "enroll with a wrong fingerprint: {:?} {}",
        r.status,
        r.stderr
    );
    ensure!(
        agent.status()?["enrolled"] == false,
        "enrolled despite the mismatch"
    );
    Ok(())
}

#[test]
fn an_untrusted_wss_certificate_reads_as_advice() -> Result<()> {
    let (relay, _cert) = Relay::start_tls()?;
    relay.tenant("acme")?;
    let agent = Agent::new("board1", &[])?;
    let token = relay.enroll_token("acme")?;
    let url = format!("wss://127.0.0.1:{}/v1/link", relay.http_port);
    let r = agent.cmd_with_env(&["enroll", &url, "--token", &token], &[("HTTPS_PROXY", "")])?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains(&url)
            && r.stderr.contains("TLS certificate")
            && r.stderr.contains("SSL_CERT_FILE")
            && !r.stderr.contains("UnknownIssuer")
            && !r.stderr.contains("OtherError"),
        "enroll against a self-signed certificate: {:?} {}",
        r.status,
        r.stderr
    );

    // openssl's default self-signed certificate is a CA (CA:TRUE), which rustls never takes
    // as a server's own: the message says so instead of `Other(OtherError(CaUsedAsEndEntity))`.
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(st.success(), "openssl failed");
    let ca_relay = Relay::start_with_config(&format!(
        "http:\n  tls:\n    cert: {}\n    key: {}\n",
        cert.display(),
        key.display()
    ))?;
    ca_relay.tenant("acme")?;
    let token = ca_relay.enroll_token("acme")?;
    let url = format!("wss://127.0.0.1:{}/v1/link", ca_relay.http_port);
    let cert_file = cert.display().to_string();
    let r = agent.cmd_with_env(
        &["enroll", &url, "--token", &token],
        &[("HTTPS_PROXY", ""), ("SSL_CERT_FILE", cert_file.as_str())],
    )?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains(&url)
            && r.stderr.contains("CA:TRUE")
            && !r.stderr.contains("OtherError"),
        "enroll against a CA certificate: {:?} {}",
        r.status,
        r.stderr
    );
    Ok(())
}

#[test]
fn a_pending_device_is_named_to_its_own_tenant_only() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    relay.tenant("globex")?;
    let alice = relay.engineer("alice", "acme", "admin")?;
    let gary = relay.engineer("gary", "globex", "admin")?;
    let token = relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--require-accept"])?
        .trim()
        .to_string();
    let agent = Agent::new("board1", &[])?;
    let r = agent.cmd(&[
        "enroll",
        &relay.url(Transport::Tcp),
        "--token",
        &token,
        "--name",
        "board1",
    ])?;
    ensure!(r.status == Some(0), "enroll: {}", r.stderr);
    let id = agent.device_id()?;

    let own = alice.exec("board1", "echo ok")?;
    ensure!(
        own.status == Some(255)
            && own.stdout.is_empty()
            && own.stderr.contains(&format!(
                "device board1 is pending acceptance (relay device accept {id})"
            )),
        "acme's engineer on its pending device: {:?} {}",
        own.status,
        own.stderr
    );
    // Another tenant learns nothing: by name or id, the answer of a device that does not exist.
    let missing = gary.exec("no-such-board", "echo ok")?;
    ensure!(
        missing.stderr.contains("no such device"),
        "{:?}",
        missing.stderr
    );
    for device in ["board1", id.as_str()] {
        let theirs = gary.exec(device, "echo ok")?;
        ensure!(
            theirs.status == missing.status
                && theirs.stdout.is_empty()
                && theirs.stderr.replace(device, "X")
                    == missing.stderr.replace("no-such-board", "X"),
            "globex's engineer on acme's pending {device}: {:?} vs {:?}",
            theirs.stderr,
            missing.stderr
        );
    }
    Ok(())
}
