//! Bad input and faults: wrong tokens, rejected devices, bad config, unreachable or restarted
//! relays, garbage on the ports. Each gets a clear error and the store stays consistent.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::*;

#[test]
fn bad_tokens_are_refused_clearly() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let a = Agent::new("board1", &[])?;
    let url = relay.url(Transport::Tcp);

    let r = a.cmd(&[
        "enroll",
        &url,
        "--token",
        "tet_not-a-real-token",
        "--name",
        "board1",
    ])?;
    ensure!(r.status == Some(1), "wrong token exit {:?}", r.status);
    ensure!(
        r.stderr.contains("refused enrollment") && r.stderr.to_lowercase().contains("token"),
        "wrong token: {}",
        r.stderr
    );

    let expiring = relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--ttl", "1s"])?
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let r = a.cmd(&["enroll", &url, "--token", &expiring, "--name", "board1"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("expired"),
        "expired token: {}",
        r.stderr
    );

    let once = relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--uses", "1"])?
        .trim()
        .to_string();
    let r = a.cmd(&["enroll", &url, "--token", &once, "--name", "board1"])?;
    ensure!(r.status == Some(0), "single-use token: {}", r.stderr);
    let b = Agent::new("board2", &[])?;
    let r = b.cmd(&["enroll", &url, "--token", &once, "--name", "board2"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("used"),
        "used-up token: {}",
        r.stderr
    );

    // Nothing half-done was left in the store: exactly the one device.
    let list: serde_json::Value =
        serde_json::from_str(&relay.admin_ok(&["device", "list", "--json"])?)?;
    ensure!(
        list.as_array().map(Vec::len) == Some(1),
        "devices after refusals: {list}"
    );

    // A name already used by another device of the tenant is refused.
    let c = Agent::new("board1", &[])?;
    let token = relay.enroll_token("acme")?;
    let r = c.cmd(&["enroll", &url, "--token", &token, "--name", "board1"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("board1"),
        "duplicate name: {}",
        r.stderr
    );
    Ok(())
}

#[test]
fn rejected_and_removed_devices_lose_their_link() -> Result<()> {
    for action in ["reject", "remove"] {
        let mut s = Setup::new(Transport::Tcp)?;
        let id = s.agent.device_id()?;
        s.relay.admin_ok(&["device", action, &id])?;
        let started = Instant::now();
        wait_until(Duration::from_secs(10), "link dropped", || {
            s.agent
                .status()
                .map(|st| st["link"] != "online")
                .unwrap_or(false)
        })?;
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{action}: link dropped after {:?}",
            started.elapsed()
        );
        // The agent keeps trying, and the relay keeps refusing.
        std::thread::sleep(Duration::from_secs(2));
        ensure!(
            s.agent.status()?["link"] != "online",
            "{action}ed device came back online"
        );
        ensure!(
            s.agent.log().contains("refused this device's key"),
            "{action}: agent log:\n{}",
            s.agent.log()
        );
        let r = s.engineer.exec("board1", "echo hi")?;
        ensure!(
            r.status == Some(255) && r.stdout.is_empty(),
            "{action}ed device still reachable"
        );
        if action == "reject" {
            // Accepting it again lets it back in.
            s.relay.admin_ok(&["device", "accept", &id])?;
            s.agent.wait_online()?;
            let r = s.engineer.exec("board1", "echo back")?;
            ensure!(
                r.stdout == "back\n",
                "after accept: {} {}",
                r.stdout,
                r.stderr
            );
        }
        if let Some(mut p) = s.agent.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }
    Ok(())
}

#[test]
fn malformed_agent_config_names_file_line_and_key() -> Result<()> {
    let a = Agent::new("board1", &[])?;
    std::fs::write(
        &a.config,
        "state_dir: /tmp/x\nlink:\n  keepalive_interval: 5s\n  bogus_key: 1\n",
    )?;
    let r = a.cmd(&["status"])?;
    ensure!(r.status == Some(1), "exit {:?}", r.status);
    let config = a.config.display().to_string();
    ensure!(
        r.stderr.contains(&config) && r.stderr.contains("bogus_key") && r.stderr.contains('4'),
        "{}",
        r.stderr
    );
    std::fs::write(&a.config, "link:\n  keepalive_interval: soon\n")?;
    let r = a.cmd(&["status"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("keepalive_interval"),
        "{}",
        r.stderr
    );
    // Usage errors exit 2.
    let r = a.cmd(&["enroll"])?;
    ensure!(r.status == Some(2), "usage error exit {:?}", r.status);
    Ok(())
}

#[test]
fn unreachable_relay_is_reported_and_retried() -> Result<()> {
    let port = free_port()?;
    let a = Agent::new("board1", &[])?;
    let started = Instant::now();
    let r = a.cmd(&[
        "enroll",
        &format!("ssh://127.0.0.1:{port}"),
        "--token",
        "tet_x",
        "--name",
        "b",
    ])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        r.stderr
    );
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    // An enrolled agent whose relay is gone keeps retrying, one log line per attempt.
    let mut s = Setup::new(Transport::Tcp)?;
    s.relay.stop()?;
    wait_until(
        Duration::from_secs(15),
        "two failed attempts logged",
        || s.agent.log().matches("retrying in").count() >= 2,
    )?;
    ensure!(
        s.agent.status()?["link"] != "online",
        "link online without a relay"
    );
    Ok(())
}

fn relay_restart(transport: Transport) -> Result<()> {
    let mut s = Setup::new(transport)?;
    let id = s.agent.device_id()?;
    let mut cmd = s.engineer.ssh_cmd(&[
        "-p",
        &s.engineer.ssh_port.to_string(),
        "board1@127.0.0.1",
        "echo started; sleep 60",
    ]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut session = cmd.spawn()?;
    let mut out = session
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut first = [0u8; 8];
    out.read_exact(&mut first)?;
    ensure!(&first == b"started\n", "session did not start");
    s.relay.stop()?;
    // The engineer's ssh ends promptly instead of hanging.
    let started = Instant::now();
    let status = loop {
        if let Some(st) = session.try_wait()? {
            break st;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "engineer ssh hung after relay stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(!status.success(), "session reported success");
    let dev = s.relay.device_json(&id)?;
    ensure!(
        dev["online"] == false,
        "device still online in the store after relay stop: {dev}"
    );
    s.relay.restart()?;
    s.agent.wait_online()?;
    let r = s.engineer.exec("board1", "echo again")?;
    ensure!(
        r.stdout == "again\n",
        "after restart: {:?} {}",
        r.status,
        r.stderr
    );
    Ok(())
}

#[test]
fn relay_restart_over_tcp() -> Result<()> {
    relay_restart(Transport::Tcp)
}

#[test]
fn relay_restart_over_websocket() -> Result<()> {
    relay_restart(Transport::WebSocket)
}

#[test]
fn garbage_and_half_open_connections_do_not_disturb_others() -> Result<()> {
    let s = Setup::new(Transport::WebSocket)?;
    let mut idle = Vec::new();
    for port in [s.relay.ssh_port, s.relay.http_port] {
        // Connections that never say anything.
        for _ in 0..20 {
            idle.push(TcpStream::connect(("127.0.0.1", port))?);
        }
        // Connections that send garbage.
        for seed in 0..10u64 {
            let mut c = TcpStream::connect(("127.0.0.1", port))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            let _ = c.write_all(&pseudo_random(4096, seed + 1));
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf);
        }
    }
    // A garbage WebSocket upgrade and a text message on the link.
    let mut c = TcpStream::connect(("127.0.0.1", s.relay.http_port))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        c,
        "GET /v1/link HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )?;
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    ensure!(
        resp.starts_with("HTTP/1.1 400"),
        "bad upgrade answered {resp:?}"
    );

    let r = s.engineer.exec("board1", "echo still-fine")?;
    ensure!(
        r.stdout == "still-fine\n",
        "exec after garbage: {:?} {}",
        r.status,
        r.stderr
    );
    let (code, _) = s.relay.http_get("/healthz", None)?;
    ensure!(code == 200, "healthz {code}");
    ensure!(s.agent.status()?["link"] == "online", "agent link dropped");
    drop(idle);
    Ok(())
}

#[test]
fn a_relay_with_another_host_key_is_refused() -> Result<()> {
    let mut s = Setup::new(Transport::Tcp)?;
    s.relay.stop()?;
    // A relay that lost its host key (or an impostor at the same address) gets a new one.
    std::fs::remove_file(s.relay.data_dir().join("ssh_host_ed25519_key"))?;
    s.relay.restart()?;
    wait_until(Duration::from_secs(15), "host key mismatch logged", || {
        s.agent.log().contains("relay host key mismatch")
    })?;
    ensure!(
        s.agent.status()?["link"] != "online",
        "agent linked to a relay with another host key"
    );
    Ok(())
}

#[test]
fn devices_from_a_require_accept_token_wait_for_acceptance() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let token = relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--require-accept"])?
        .trim()
        .to_string();
    let mut a = Agent::new("board1", &[])?;
    let r = a.cmd(&[
        "enroll",
        &relay.url(Transport::Tcp),
        "--token",
        &token,
        "--name",
        "board1",
    ])?;
    ensure!(
        r.status == Some(0) && r.stdout.contains("pending"),
        "enroll: {} {}",
        r.stdout,
        r.stderr
    );
    a.start()?;
    wait_until(Duration::from_secs(10), "refused link attempt", || {
        a.log().contains("refused this device's key")
    })?;
    let id = a.device_id()?;
    ensure!(
        relay.device_json(&id)?["status"] == "pending",
        "device not pending"
    );
    relay.admin_ok(&["device", "accept", &id])?;
    a.wait_online()?;
    Ok(())
}

/// The kernel timer of each established TCP socket whose local (`local`) or remote port is
/// `port`, keyed by the socket's two addresses: `(kind, seconds)` as `/proc/net/tcp` shows them
/// (kind 2 is the keepalive timer, 1 a retransmission or loss probe pending, 0 none).
fn tcp_timers(port: u16, local: bool) -> Result<BTreeMap<(String, String), (u8, f64)>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let mut timers = BTreeMap::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(l), Some(r), Some(state), Some(timer)) = (f.get(1), f.get(2), f.get(3), f.get(5))
        else {
            continue;
        };
        let port_of = |a: &str| {
            a.split(':')
                .nth(1)
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let ours = if local { port_of(l) } else { port_of(r) };
        if *state != "01" || ours != Some(port) {
            continue;
        }
        let (kind, when) = timer.split_once(':').unwrap_or(("0", "0"));
        let kind = u8::from_str_radix(kind, 16).unwrap_or(0);
        let ticks = u64::from_str_radix(when, 16).unwrap_or(0);
        // /proc/net/tcp counts in USER_HZ, 100 per second on Linux.
        timers.insert((l.to_string(), r.to_string()), (kind, ticks as f64 / 100.0));
    }
    Ok(timers)
}

/// An idle link is watched by the kernel on both ends (TCP keepalive, `link.tcp_keepalive` and
/// `ssh.tcp_keepalive`, 60 s by default), so that a dead path or a powered-off board is noticed
/// without the SSH keepalive having to wake either process often; over WebSocket the relay's
/// HTTP port arms it likewise.
///
/// A socket that has just sent data shows its retransmission timer instead of the keepalive
/// until the peer's ACK arrives (right after the link comes up the agent reports its state), so
/// each socket is sampled until it has shown a keepalive timer, for at most 10 s; a socket
/// without `SO_KEEPALIVE` never shows one.
#[test]
fn idle_links_are_watched_by_the_kernel_on_both_ends() -> Result<()> {
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let s = Setup::new(transport)?;
        let port = match transport {
            Transport::Tcp => s.relay.ssh_port,
            Transport::WebSocket => s.relay.http_port,
        };
        for (side, local) in [("relay", true), ("agent", false)] {
            let mut watched = BTreeMap::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            let last = loop {
                let last = tcp_timers(port, local)?;
                for (socket, (kind, secs)) in &last {
                    if *kind == 2 && *secs > 0.0 && *secs <= 60.0 {
                        watched.insert(socket.clone(), *secs);
                    }
                }
                let all = !last.is_empty() && last.keys().all(|k| watched.contains_key(k));
                if all || Instant::now() >= deadline {
                    break last;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            ensure!(
                !last.is_empty(),
                "{transport:?}: no established link on port {port}"
            );
            let unwatched: Vec<_> = last
                .iter()
                .filter(|(k, _)| !watched.contains_key(*k))
                .collect();
            ensure!(
                unwatched.is_empty(),
                "{transport:?}: the {side}'s end of the link showed no kernel keepalive within 60 s in 10 s of sampling: {unwatched:?}"
            );
        }
    }
    Ok(())
}
