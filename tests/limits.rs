//! Abuse limits, each triggered against a real relay with its message checked: failed logins
//! per source (SSH and API), sessions per device and per engineer, channels per connection,
//! idle sessions, and a flood of connections on both ports that leaves an established
//! session responsive. Floods and refused sources use other loopback addresses (127.0.0.2,
//! 127.0.0.3) so the engineer on 127.0.0.1 is not the one limited.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;

/// A relay with `limits` (YAML under `limits:`), tenant acme, engineer alice and online
/// agents named `devices`.
fn setup(limits: &str, devices: &[&str]) -> Result<(Relay, Engineer, Vec<Agent>)> {
    let relay = Relay::start_with_config(&format!("limits:\n{limits}"))?;
    relay.tenant("acme")?;
    let alice = relay.engineer("alice", "acme", "admin")?;
    let mut agents = Vec::new();
    for name in devices {
        let mut agent = Agent::new(name, &[])?;
        agent.enroll(&relay, Transport::Tcp, "acme")?;
        agent.start()?;
        agent.wait_online()?;
        agents.push(agent);
    }
    Ok((relay, alice, agents))
}

/// ssh with `key` only, from local address `bind`.
fn ssh_from(relay: &Relay, key: &std::path::Path, bind: &str, command: &str) -> Result<Run> {
    let mut c = ssh_with_key(relay, key, &["-b", bind], "board1@127.0.0.1");
    c.arg(command);
    run_with_timeout(c, None, Duration::from_secs(30))
}

fn new_key(dir: &std::path::Path, name: &str) -> Result<std::path::PathBuf> {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    ensure!(st.success(), "ssh-keygen");
    Ok(key)
}

/// Kills background ssh clients when the test ends, however it ends.
struct Clients(Vec<Child>);

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sessions the relay has open now.
fn open_sessions(relay: &Relay) -> usize {
    relay
        .admin_ok(&["session", "list", "--json"])
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.as_array().cloned())
        .map(|a| a.iter().filter(|s| s["ended_at"].is_null()).count())
        .unwrap_or(0)
}

#[test]
fn failed_logins_refuse_their_source_with_a_message_and_no_one_else() -> Result<()> {
    let (relay, alice, _agents) = setup("  auth_failures_per_source: 3\n", &["board1"])?;
    let dir = tempfile::tempdir()?;
    let stranger = new_key(dir.path(), "stranger")?;
    for i in 0..3 {
        let r = ssh_from(&relay, &stranger, "127.0.0.2", "true")?;
        ensure!(r.status == Some(255), "attempt {i} got in: {}", r.stderr);
    }
    // Refused now, even with a valid key, and told why.
    let r = ssh_from(&relay, &alice.key, "127.0.0.2", "true")?;
    ensure!(
        r.status == Some(255)
            && r.stderr
                .contains("too many failed authentications from 127.0.0.2")
            && r.stderr.contains("limits.auth_failures_per_source"),
        "{:?} {}",
        r.status,
        r.stderr
    );
    // Another source is not affected.
    let r = ssh_from(&relay, &alice.key, "127.0.0.1", "echo in")?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == "in",
        "{}",
        r.stderr
    );

    // Bad API tokens count the same way.
    let token = relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--api"])?
        .trim()
        .to_string();
    for _ in 0..3 {
        let (code, _) = relay.http_get("/v1/devices", Some("not-a-token"))?;
        ensure!(code == 401, "bad token: {code}");
    }
    let (code, body) = relay.http_get("/v1/devices", Some(&token))?;
    ensure!(
        code == 429 && body.contains("limits.auth_failures_per_source"),
        "{code} {body}"
    );
    ensure!(
        relay.log().contains("too many failed authentications"),
        "the relay's log does not say"
    );
    Ok(())
}

#[test]
fn sessions_per_device_and_per_engineer_are_bounded() -> Result<()> {
    let (relay, alice, _agents) = setup(
        "  sessions_per_device: 2\n  sessions_per_engineer: 3\n",
        &["board1", "board2"],
    )?;
    let bob = relay.engineer("bob", "acme", "operator")?;
    let hold = |who: &Engineer, device: &str| -> Result<Child> {
        Ok(who
            .ssh_cmd(&[
                "-p",
                &who.ssh_port.to_string(),
                &format!("{device}@127.0.0.1"),
                "echo held; sleep 30",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    };
    let mut clients = Clients(Vec::new());
    clients.0.push(hold(&alice, "board1")?);
    clients.0.push(hold(&alice, "board1")?);
    wait_until(Duration::from_secs(15), "two open sessions", || {
        open_sessions(&relay) == 2
    })?;
    let r = bob.exec("board1", "true")?;
    ensure!(
        r.status == Some(255)
            && r.stderr
                .contains("device board1 has 2 sessions open (limits.sessions_per_device)"),
        "{:?} {}",
        r.status,
        r.stderr
    );
    clients.0.push(hold(&alice, "board2")?);
    wait_until(Duration::from_secs(15), "three open sessions", || {
        open_sessions(&relay) == 3
    })?;
    let r = alice.exec("board2", "true")?;
    ensure!(
        r.status == Some(255)
            && r.stderr
                .contains("engineer alice has 3 sessions open (limits.sessions_per_engineer)"),
        "{:?} {}",
        r.status,
        r.stderr
    );
    // Places come back when sessions end.
    drop(clients);
    wait_until(Duration::from_secs(15), "sessions to close", || {
        open_sessions(&relay) == 0
    })?;
    let r = bob.exec("board1", "echo back")?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == "back",
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn channels_per_connection_and_idle_sessions_are_bounded() -> Result<()> {
    let (relay, alice, _agents) = setup(
        "  channels_per_connection: 2\n  session_idle_timeout: 2s\n",
        &["board1"],
    )?;
    // One connection (an OpenSSH control master) carrying several sessions.
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("mux");
    let sock_s = sock.display().to_string();
    let port = alice.ssh_port.to_string();
    let mut clients = Clients(Vec::new());
    clients.0.push(
        alice
            .ssh_cmd(&["-p", &port, "-M", "-S", &sock_s, "-N", "board1@127.0.0.1"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_until(Duration::from_secs(15), "the control socket", || {
        sock.exists()
    })?;
    // Sessions that keep talking, so the idle timeout leaves them alone.
    let chatty = "while true; do echo x; sleep 0.5; done";
    for _ in 0..2 {
        clients.0.push(
            alice
                .ssh_cmd(&["-p", &port, "-S", &sock_s, "board1@127.0.0.1", chatty])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    wait_until(Duration::from_secs(15), "two open sessions", || {
        open_sessions(&relay) == 2
    })?;
    let third = run_with_timeout(
        alice.ssh_cmd(&["-p", &port, "-S", &sock_s, "board1@127.0.0.1", "true"]),
        None,
        Duration::from_secs(20),
    )?;
    ensure!(
        third.status == Some(255)
            && third.stderr.contains(
                "2 channels are open on this connection (limits.channels_per_connection)"
            ),
        "{:?} {}",
        third.status,
        third.stderr
    );
    // The chatty sessions outlived several idle timeouts.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        open_sessions(&relay) == 2,
        "a session with traffic was closed as idle"
    );
    drop(clients);

    // A silent session is closed after the idle timeout, with the reason on its stderr.
    let r = alice.exec("board1", "sleep 30; echo woke")?;
    ensure!(
        !r.stdout.contains("woke")
            && r.stderr.contains("session idle for 2s")
            && r.stderr.contains("limits.session_idle_timeout"),
        "{:?} {} {}",
        r.status,
        r.stdout,
        r.stderr
    );
    wait_until(Duration::from_secs(10), "the idle session's record", || {
        relay
            .admin_ok(&["session", "list", "--json"])
            .is_ok_and(|t| t.contains("idle timeout"))
    })?;
    Ok(())
}

/// A TCP connection to 127.0.0.1:`port` from local address `from`.
fn connect_from(from: [u8; 4], port: u16) -> Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)).into(),
        Duration::from_secs(5),
    )?;
    Ok(socket.into())
}

/// The first bytes a flood connection got back within a short wait.
fn first_bytes(s: &mut TcpStream) -> String {
    first_bytes_within(s, Duration::from_millis(200))
}

/// The first bytes a connection got back within `wait`.
fn first_bytes_within(s: &mut TcpStream, wait: Duration) -> String {
    let _ = s.set_read_timeout(Some(wait));
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

#[test]
fn a_flood_of_connections_leaves_established_sessions_responsive() -> Result<()> {
    let (relay, alice, _agents) = setup(
        // The rate of new connections is bounded too; this test is about how many are held.
        "  max_handshakes_per_source: 20\n  max_http_connections_per_source: 20\n  \
         handshake_rate_per_source: 0\n",
        &["board1"],
    )?;
    // An established interactive session: cat echoes each line back.
    let mut cat = alice
        .ssh_cmd(&["-p", &alice.ssh_port.to_string(), "board1@127.0.0.1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = cat.stdin.take().context("stdin")?;
    let stdout = cat.stdout.take().context("stdout")?;
    let clients = Clients(vec![cat]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let echo = |stdin: &mut std::process::ChildStdin, text: &str| -> Result<()> {
        writeln!(stdin, "{text}")?;
        stdin.flush()?;
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("no echo of {text} within 10 s"))?;
        ensure!(got == text, "echo {got:?} for {text:?}");
        Ok(())
    };
    echo(&mut stdin, "before")?;

    // The flood: connections that never say anything, on both ports, from 127.0.0.2.
    let mut ssh_flood = Vec::new();
    let mut http_flood = Vec::new();
    for _ in 0..150 {
        ssh_flood.push(connect_from([127, 0, 0, 2], relay.ssh_port)?);
        http_flood.push(connect_from([127, 0, 0, 2], relay.http_port)?);
    }
    echo(&mut stdin, "during")?;
    let r = alice.exec("board1", "echo new")?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == "new",
        "a new login during the flood: {}",
        r.stderr
    );
    let (code, _) = relay.http_get("/healthz", None)?;
    ensure!(code == 200, "healthz during the flood: {code}");

    let ssh_refused = ssh_flood
        .iter_mut()
        .map(first_bytes)
        .filter(|b| b.contains("too many logins in progress from 127.0.0.2"))
        .count();
    let http_refused = http_flood
        .iter_mut()
        .map(first_bytes)
        .filter(|b| b.starts_with("HTTP/1.1 503") && b.contains("max_http_connections_per_source"))
        .count();
    ensure!(
        ssh_refused >= 130,
        "only {ssh_refused} of 150 SSH connections refused"
    );
    ensure!(
        http_refused >= 130,
        "only {http_refused} of 150 HTTP connections refused"
    );
    drop(ssh_flood);
    drop(http_flood);
    echo(&mut stdin, "after")?;
    drop(stdin);
    drop(clients);
    Ok(())
}

#[test]
fn authentication_tries_and_the_total_bounds_are_enforced() -> Result<()> {
    let (relay, alice, _agents) = setup(
        "  max_auth_tries: 3\n  max_handshakes: 5\n  max_handshakes_per_source: 0\n  \
         handshake_wait: 1s\n  max_http_connections: 5\n  max_http_connections_per_source: 0\n  \
         handshake_rate_per_source: 0\n",
        &["board1"],
    )?;
    // One connection offering four unknown keys: cut off after the third attempt (OpenSSH's
    // "none" probe counts as one), with russh's words, which OpenSSH prints.
    let dir = tempfile::tempdir()?;
    let keys: Vec<_> = (0..4)
        .map(|i| new_key(dir.path(), &format!("k{i}")))
        .collect::<Result<_>>()?;
    let mut extra: Vec<String> = Vec::new();
    for k in &keys[1..] {
        extra.push("-i".into());
        extra.push(k.display().to_string());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut c = ssh_with_key(&relay, &keys[0], &extra, "board1@127.0.0.1");
    c.arg("true");
    let r = run_with_timeout(c, None, Duration::from_secs(30))?;
    ensure!(
        r.status == Some(255) && r.stderr.contains("Too many authentication"),
        "{:?} {}",
        r.status,
        r.stderr
    );

    // A connection over max_handshakes waits for a place (limits.handshake_wait) and is
    // served as soon as one is given back.
    let mut holders = (0..5)
        .map(|_| connect_from([127, 0, 0, 3], relay.ssh_port))
        .collect::<Result<Vec<_>>>()?;
    for h in holders.iter_mut() {
        let banner = first_bytes_within(h, Duration::from_secs(5));
        ensure!(banner.starts_with("SSH-2.0-"), "a holder got {banner:?}");
    }
    let mut waiting = connect_from([127, 0, 0, 3], relay.ssh_port)?;
    ensure!(
        first_bytes(&mut waiting).is_empty(),
        "the sixth connection must wait, not be answered or refused"
    );
    drop(holders.pop());
    let banner = first_bytes_within(&mut waiting, Duration::from_secs(5));
    ensure!(
        banner.starts_with("SSH-2.0-"),
        "the waiting connection got {banner:?} once a place was free"
    );
    drop(waiting);
    drop(holders);

    // The bounds on all sources together, hit from 127.0.0.3 alone: 5 hold places, 5 wait
    // (as many as there are places) and are refused after the wait, the rest at once.
    let mut ssh_flood = Vec::new();
    let mut http_flood = Vec::new();
    for _ in 0..12 {
        ssh_flood.push(connect_from([127, 0, 0, 3], relay.ssh_port)?);
        http_flood.push(connect_from([127, 0, 0, 3], relay.http_port)?);
    }
    let ssh_refused = ssh_flood
        .iter_mut()
        .map(|s| first_bytes_within(s, Duration::from_secs(3)))
        .filter(|b| b.contains("logins in progress (limits.max_handshakes)"))
        .count();
    let http_refused = http_flood
        .iter_mut()
        .map(first_bytes)
        .filter(|b| b.contains("HTTP connections open (limits.max_http_connections)"))
        .count();
    ensure!(
        ssh_refused >= 7,
        "{ssh_refused} of 12 SSH connections refused"
    );
    ensure!(
        http_refused >= 7,
        "{http_refused} of 12 HTTP connections refused"
    );
    // The places come back once the flood is gone.
    drop(ssh_flood);
    drop(http_flood);
    wait_until(Duration::from_secs(15), "a login after the flood", || {
        alice
            .exec("board1", "true")
            .is_ok_and(|r| r.status == Some(0))
    })?;
    Ok(())
}
