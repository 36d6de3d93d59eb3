//! Enrollment, device state, access control and the JSON API.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::*;

fn enroll_status_and_device_state(transport: Transport) -> Result<()> {
    let mut s = Setup::new(transport)?;
    let status = s.agent.status()?;
    ensure!(
        status["enrolled"] == true && status["link"] == "online",
        "status {status}"
    );
    ensure!(
        status["tenant"] == "acme" && status["name"] == "board1",
        "status {status}"
    );
    let fp = status["relay_fingerprint"].as_str().unwrap_or_default();
    ensure!(fp.starts_with("SHA256:"), "relay fingerprint {fp:?}");
    ensure!(
        s.relay.log().contains(fp.trim_start_matches("SHA256:")),
        "relay log does not show its host key {fp}"
    );

    // The device key is private to the device.
    let key = s.agent.dir.path().join("state/device_ed25519");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions()) & 0o777;
    ensure!(mode == 0o600, "device key mode {mode:o}");

    let id = s.agent.device_id()?;
    let dev = s.relay.device_json(&id)?;
    ensure!(dev["online"] == true, "device {dev}");
    ensure!(dev["status"] == "accepted", "device {dev}");
    ensure!(
        dev["agent_version"].as_str().is_some_and(|v| !v.is_empty()),
        "device {dev}"
    );
    ensure!(
        dev["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1")),
        "device {dev}"
    );
    ensure!(dev["last_connected"].is_string(), "device {dev}");
    let list = s.relay.admin_ok(&["device", "list", "--json"])?;
    let list: serde_json::Value = serde_json::from_str(&list)?;
    ensure!(
        list.as_array().is_some_and(|a| a.len() == 1),
        "device list {list}"
    );

    // Re-enrolling an enrolled device needs --force.
    let token = s.relay.enroll_token("acme")?;
    let r = s.agent.cmd(&[
        "enroll",
        &s.relay.url(transport),
        "--token",
        &token,
        "--name",
        "board1",
    ])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("already enrolled"),
        "re-enroll: {:?} {}",
        r.status,
        r.stderr
    );

    // Stopping the agent marks the device offline with a last-disconnected time.
    if let Some(mut p) = s.agent.proc.take() {
        ensure!(
            p.terminate(Duration::from_secs(10)),
            "agent did not stop on SIGTERM"
        );
    }
    wait_until(Duration::from_secs(15), "device offline", || {
        s.relay
            .device_json(&id)
            .map(|d| d["online"] == false && d["last_disconnected"].is_string())
            .unwrap_or(false)
    })?;
    Ok(())
}

#[test]
fn enroll_status_and_device_state_over_tcp() -> Result<()> {
    enroll_status_and_device_state(Transport::Tcp)
}

#[test]
fn enroll_status_and_device_state_over_websocket() -> Result<()> {
    enroll_status_and_device_state(Transport::WebSocket)
}

#[test]
fn access_control_roles_tenants_and_offline_devices() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    relay.tenant("globex")?;
    let admin = relay.engineer("alice", "acme", "admin")?;
    let viewer = relay.engineer("victor", "acme", "viewer")?;
    let other = relay.engineer("olga", "globex", "admin")?;
    let mut a = Agent::new("board1", &["127.0.0.1:*".to_string()])?;
    a.enroll(&relay, Transport::Tcp, "acme")?;
    a.start()?;
    a.wait_online()?;
    let offline = Agent::new("board2", &[])?;
    offline.enroll(&relay, Transport::Tcp, "acme")?;

    let r = admin.exec("board1", "echo ok")?;
    ensure!(
        r.status == Some(0) && r.stdout == "ok\n",
        "admin exec: {:?} {}",
        r.status,
        r.stderr
    );

    // A viewer may not open sessions.
    let r = viewer.exec("board1", "echo ok")?;
    ensure!(
        r.status == Some(255) && r.stdout.is_empty(),
        "viewer exec: {:?} {}",
        r.status,
        r.stdout
    );
    ensure!(
        r.stderr.contains("permission denied"),
        "viewer stderr {:?}",
        r.stderr
    );

    // Another tenant's device looks exactly like a device that does not exist.
    let theirs = other.exec("board1", "echo ok")?;
    let missing = other.exec("no-such-board", "echo ok")?;
    ensure!(
        theirs.status == Some(255) && theirs.stdout.is_empty(),
        "cross-tenant exec ran: {}",
        theirs.stdout
    );
    ensure!(
        theirs.stderr.replace("board1", "X") == missing.stderr.replace("no-such-board", "X"),
        "answers differ: {:?} vs {:?}",
        theirs.stderr,
        missing.stderr
    );
    ensure!(
        missing.stderr.contains("no such device"),
        "stderr {:?}",
        missing.stderr
    );

    // An enrolled but offline device answers at once, clearly.
    let started = Instant::now();
    let r = admin.exec("board2", "echo ok")?;
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "offline answer took {:?}",
        started.elapsed()
    );
    ensure!(
        r.status == Some(255) && r.stderr.contains("offline"),
        "offline: {:?} {}",
        r.status,
        r.stderr
    );

    // Viewers and other tenants cannot forward either.
    for (who, device) in [(&viewer, "board1"), (&other, "board1")] {
        let local = free_port()?;
        let cmd = who.ssh_cmd(&[
            "-p",
            &who.ssh_port.to_string(),
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &format!("127.0.0.1:{local}:127.0.0.1:{}", relay.http_port),
            &format!("{device}@127.0.0.1"),
            &format!("exec 3<>/dev/tcp/127.0.0.1/{local} && echo connected"),
        ]);
        let r = run_with_timeout(cmd, None, Duration::from_secs(30))?;
        ensure!(
            !r.stdout.contains("connected"),
            "{} could use a forward",
            who.name
        );
    }

    // An engineer key nobody registered is refused at authentication.
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("stranger");
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    // A config of its own, so no registered key is offered alongside.
    let cmd = std::process::Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(&key)
        .args([
            "-p",
            &relay.ssh_port.to_string(),
            "board1@127.0.0.1",
            "true",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&cmd.stderr);
    ensure!(
        cmd.status.code() == Some(255) && stderr.contains("Permission denied"),
        "stranger: {stderr}"
    );
    Ok(())
}

#[test]
fn http_api_lists_tenant_devices_with_a_bearer_token() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    s.relay.tenant("globex")?;
    let token = s
        .relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--api"])?
        .trim()
        .to_string();
    let other = s
        .relay
        .admin_ok(&["token", "create", "--tenant", "globex", "--api"])?
        .trim()
        .to_string();
    let (code, _) = s.relay.http_get("/v1/devices", None)?;
    ensure!(code == 401, "no token gave {code}");
    let (code, _) = s.relay.http_get("/v1/devices", Some("tet_wrong"))?;
    ensure!(code == 401, "bad token gave {code}");
    let (code, body) = s.relay.http_get("/v1/devices", Some(&token))?;
    ensure!(code == 200, "list gave {code}: {body}");
    let list: serde_json::Value = serde_json::from_str(&body)?;
    let first = &list
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_default();
    ensure!(
        first["name"] == "board1" && first["online"] == true,
        "list {list}"
    );
    let id = s.agent.device_id()?;
    let (code, body) = s
        .relay
        .http_get(&format!("/v1/devices/{id}"), Some(&token))?;
    ensure!(
        code == 200 && body.contains(&id),
        "show gave {code}: {body}"
    );
    let (code, _) = s
        .relay
        .http_get(&format!("/v1/devices/{id}"), Some(&other))?;
    let (code_missing, _) = s
        .relay
        .http_get("/v1/devices/dev_0000000000000000", Some(&other))?;
    ensure!(
        code == 404 && code_missing == 404,
        "cross-tenant show gave {code}, missing {code_missing}"
    );
    let (code, body) = s.relay.http_get("/v1/devices", Some(&other))?;
    ensure!(
        code == 200 && body.trim() == "[]",
        "other tenant sees {body}"
    );
    // The token's secret is not stored in clear.
    let db = std::fs::read(s.relay.data_dir().join("relay.db"))?;
    ensure!(
        !db.windows(token.len()).any(|w| w == token.as_bytes()),
        "API token stored in clear"
    );
    Ok(())
}

/// A minimal HTTP CONNECT proxy on a free port; counts the tunnels it opened.
fn connect_proxy() -> Result<(u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().take(32) {
            let Ok(client) = client else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut reader = BufReader::new(client.try_clone()?);
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let target = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                        break;
                    }
                }
                let upstream = std::net::TcpStream::connect(&target)?;
                seen.fetch_add(1, Ordering::SeqCst);
                let mut c = client;
                c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
                let mut c2 = c.try_clone()?;
                let mut u2 = upstream.try_clone()?;
                let mut u = upstream;
                let t = std::thread::spawn(move || std::io::copy(&mut u2, &mut c2));
                let _ = std::io::copy(&mut reader, &mut u);
                let _ = u.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
                Ok(())
            });
        }
    });
    Ok((port, count))
}

#[test]
fn wss_link_through_an_https_proxy() -> Result<()> {
    let (relay, cert) = Relay::start_tls()?;
    relay.tenant("acme")?;
    let engineer = relay.engineer("alice", "acme", "admin")?;
    let (proxy_port, tunnels) = connect_proxy()?;
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let cert = cert.display().to_string();
    let env = [
        ("SSL_CERT_FILE", cert.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("NO_PROXY", ""),
    ];
    let url = format!("wss://127.0.0.1:{}/v1/link", relay.http_port);
    let mut agent = Agent::new("board1", &[])?;

    // Without trusting the relay's certificate, enrollment fails on TLS, before any token is sent.
    let token = relay.enroll_token("acme")?;
    let r = agent.cmd_with_env(
        &["enroll", &url, "--token", &token, "--name", "board1"],
        &[("HTTPS_PROXY", proxy.as_str())],
    )?;
    ensure!(
        r.status == Some(1),
        "enroll against an untrusted certificate: {:?} {}",
        r.status,
        r.stderr
    );

    let r = agent.cmd_with_env(
        &["enroll", &url, "--token", &token, "--name", "board1"],
        &env,
    )?;
    ensure!(r.status == Some(0), "wss enroll: {}", r.stderr);
    agent.start_with_env(&env)?;
    agent.wait_online()?;
    ensure!(
        tunnels.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "the proxy was not used for every connection"
    );
    let r = engineer.exec("board1", "echo over-wss")?;
    ensure!(
        r.stdout == "over-wss\n",
        "exec over wss: {:?} {}",
        r.status,
        r.stderr
    );
    Ok(())
}

#[test]
fn agent_run_notifies_systemd_readiness_and_stops_on_sigterm() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::new("board1", &[])?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    let sock_path = agent.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    let path = sock_path.display().to_string();
    agent.start_with_env(&[("NOTIFY_SOCKET", path.as_str())])?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    ensure!(msg.contains("READY=1"), "first notification was {msg:?}");
    agent.wait_online()?;
    let mut p = agent
        .proc
        .take()
        .ok_or_else(|| anyhow::anyhow!("no agent process"))?;
    ensure!(
        p.terminate(Duration::from_secs(10)),
        "agent did not stop on SIGTERM"
    );
    let mut saw_stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            saw_stopping = true;
            break;
        }
    }
    ensure!(saw_stopping, "no STOPPING=1 notification");
    ensure!(
        agent.status()?["link"] == "stopped",
        "status after stop: {}",
        agent.status()?
    );
    Ok(())
}

/// A stand-in for a TLS-terminating reverse proxy: forwards one HTTP connection at a time to
/// `upstream`, adding `X-Forwarded-For: <client>` to the request head.
fn forwarding_proxy(upstream: u16, client: &'static str) -> Result<u16> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(16) {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut reader = BufReader::new(conn.try_clone()?);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                head.push_str(&format!("X-Forwarded-For: {client}\r\n\r\n"));
                let mut up = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
                up.write_all(head.as_bytes())?;
                let mut up_read = up.try_clone()?;
                let mut down = conn;
                let t = std::thread::spawn(move || std::io::copy(&mut up_read, &mut down));
                let _ = std::io::copy(&mut reader, &mut up);
                let _ = up.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
                Ok(())
            });
        }
    });
    Ok(port)
}

#[test]
fn behind_a_reverse_proxy_the_forwarded_address_is_recorded() -> Result<()> {
    let relay = Relay::start_with_config("http:\n  trust_forwarded_for: true\n")?;
    relay.tenant("acme")?;
    let proxy = forwarding_proxy(relay.http_port, "203.0.113.7")?;
    let mut agent = Agent::new("board1", &[])?;
    let token = relay.enroll_token("acme")?;
    let url = format!("ws://127.0.0.1:{proxy}/v1/link");
    let r = agent.cmd(&["enroll", &url, "--token", &token, "--name", "board1"])?;
    ensure!(r.status == Some(0), "enroll via proxy: {}", r.stderr);
    agent.start()?;
    agent.wait_online()?;
    let dev = relay.device_json(&agent.device_id()?)?;
    let addr = dev["remote_addr"].as_str().unwrap_or_default();
    ensure!(addr.starts_with("203.0.113.7"), "recorded address {addr:?}");
    Ok(())
}
