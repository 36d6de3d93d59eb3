//! Relays of a cluster: one PostgreSQL store, presence on NATS. A board moves between relays
//! when the one it holds dies, the presence map follows within its 15 s lifetime, a device
//! rejected through any relay loses its link wherever it is, and NATS going away and coming
//! back costs the boards nothing.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

/// Device change notifications a relay received from another relay or an admin command.
const DEVICE_NOTES_RECEIVED: &str =
    r#"tether_cluster_notifications_total{kind="device",outcome="received"}"#;

/// Access change notifications a relay received.
const ACCESS_NOTES_RECEIVED: &str =
    r#"tether_cluster_notifications_total{kind="access",outcome="received"}"#;

/// A relay of the cluster: PostgreSQL store `db`, NATS `nats`, name `id`, with a peer port.
fn relay(db: &str, nats: &Nats, id: &str) -> Result<Relay> {
    Relay::start_with_config(&format!(
        "store:\n  url: {db}\ncluster:\n  nats: {}\n  relay_id: {id}\n  peer_listen: 127.0.0.1:{}\n",
        nats.url(),
        free_port()?
    ))
}

/// A board of `acme` linked to one of `relays`, knowing them all; returns it and the index of
/// the relay that holds it.
fn board(relays: &[Relay], allow: &[String]) -> Result<(Agent, usize)> {
    let mut agent = Agent::new("board1", allow)?;
    let r = agent.enroll(&relays[0], Transport::Tcp, "acme")?;
    ensure!(r.status == Some(0), "enroll: {}", r.stderr);
    let others: Vec<String> = relays[1..].iter().map(|r| r.url(Transport::Tcp)).collect();
    agent.add_relay_urls(&others)?;
    agent.start()?;
    agent.wait_online()?;
    wait_until(Duration::from_secs(15), "a holder of board1", || {
        holder(&relays[0], "board1").is_ok_and(|h| h.is_some())
    })?;
    let id = holder(&relays[0], "board1")?.context("no holder")?;
    let at = id
        .strip_prefix('r')
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1))
        .context("unknown holder")?;
    Ok((agent, at))
}

/// The relay the presence map names for device `name`, as `relay cluster status` says.
fn holder(via: &Relay, name: &str) -> Result<Option<String>> {
    let out = via.admin_ok(&["cluster", "status", "--json"])?;
    let lines: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    Ok(lines
        .iter()
        .find(|l| l["device"] == name)
        .and_then(|l| l["relay"].as_str().map(str::to_string)))
}

/// Copies `data` to board1 with scp through SSH port `port` and checks it arrived byte for
/// byte; returns the local work directory, the board's directory and the file there.
fn scp_to_board(
    engineer: &Engineer,
    port: &str,
    data: &[u8],
) -> Result<(tempfile::TempDir, tempfile::TempDir, std::path::PathBuf)> {
    let work = tempfile::tempdir()?;
    let up = work.path().join("up");
    std::fs::write(&up, data)?;
    let board_dir = tempfile::tempdir()?;
    let there = board_dir.path().join("f");
    let r = engineer.scp(&[
        "-P",
        port,
        &up.display().to_string(),
        &format!("board1@127.0.0.1:{}", there.display()),
    ])?;
    ensure!(r.status == Some(0), "scp up: {}", r.stderr);
    ensure!(
        std::fs::read(&there)? == data,
        "the copy on the board differs"
    );
    Ok((work, board_dir, there))
}

fn wait_holder(via: &Relay, name: &str, want: Option<&str>, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = None;
    wait_until(
        within,
        &format!("presence of {name} to be {want:?}"),
        || {
            last = holder(via, name).ok().flatten();
            last.as_deref() == want
        },
    )
    .with_context(|| format!("presence still says {last:?}"))?;
    Ok(start.elapsed())
}

#[test]
fn boards_move_between_relays_and_presence_follows() -> Result<()> {
    let pg = Postgres::start()?;
    let db = pg.create_database("cluster")?;
    let mut nats = Nats::start()?;
    let mut relays = [relay(&db, &nats, "r1")?, relay(&db, &nats, "r2")?];
    relays[0].tenant("acme")?;
    // Made through one relay, known to every relay: they share the store.
    let engineer = relays[0].engineer("alice", "acme", "admin")?;
    let mut agent = Agent::new("board1", &[])?;
    let r = agent.enroll(&relays[0], Transport::Tcp, "acme")?;
    ensure!(r.status == Some(0), "enroll: {}", r.stderr);
    agent.add_relay_urls(&[relays[1].url(Transport::Tcp)])?;
    agent.start()?;
    agent.wait_online()?;
    let ids = ["r1", "r2"];
    let mut seen = String::new();
    wait_until(Duration::from_secs(15), "a holder of board1", || {
        let h = holder(&relays[1], "board1");
        seen = format!("{h:?}");
        h.is_ok_and(|h| h.is_some())
    })
    .with_context(|| {
        format!(
            "relay cluster status: {seen}\n{}\n{}",
            relays[0].log(),
            relays[1].log()
        )
    })?;
    let first = holder(&relays[1], "board1")?.context("no holder")?;
    let mut held = ids
        .iter()
        .position(|i| *i == first)
        .context("unknown holder")?;
    let mut other = 1 - held;
    let r = engineer.exec_on(&relays[held], "board1", "echo held")?;
    ensure!(r.stdout == "held\n", "{r:?}");

    // An action queued through the relay that does not hold the board reaches it through the
    // shared store's change feed, and its result reads the same through every relay.
    let queued = Instant::now();
    let id = relays[other].admin_ok(&["action", "create", "board1", "--run", "echo across"])?;
    let id = id.trim().to_string();
    let mut done = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "the action to finish", || {
        done = relays[held]
            .admin_ok(&["action", "show", &id, "--json"])
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        done["status"] == "succeeded"
    })
    .with_context(|| format!("action {id}: {done}"))?;
    println!(
        "action through the other relay done after {:?}",
        queued.elapsed()
    );
    ensure!(
        done["output"]
            .as_str()
            .is_some_and(|o| o.contains("across")),
        "{done}"
    );
    let other_view: serde_json::Value =
        serde_json::from_str(&relays[other].admin_ok(&["action", "show", &id, "--json"])?)?;
    ensure!(other_view == done, "{other_view} vs {done}");
    // It travelled as a notification, not only through the store's feed.
    ensure!(
        relays[held].metric(DEVICE_NOTES_RECEIVED)? >= Some(1.0),
        "the holder heard of no device change:\n{}",
        relays[held].log()
    );

    // Whoever can publish on NATS is trusted with presence, but what it says is bounded and
    // parsed: garbage, a megabyte-long device id and unknown fields only count as malformed
    // or change nothing, and the relay goes on serving.
    let huge = format!(
        "{{\"origin\":\"x\",\"device\":\"{}\"}}",
        "d".repeat(900_000)
    );
    nats.publish_raw(
        "tether.notify.device",
        &[
            b"not json".to_vec(),
            huge.into_bytes(),
            br#"{"origin":"x"}"#.to_vec(),
            br#"{"origin":"x","device":"board1","extra":[1,2,3]}"#.to_vec(),
        ],
    )?;
    nats.publish_raw("tether.notify.access", &[vec![0xff; 4096]])?;
    let malformed = r#"tether_cluster_notifications_total{kind="device",outcome="malformed"}"#;
    wait_until(
        Duration::from_secs(10),
        "the malformed notes to be counted",
        || relays[held].metric(malformed).is_ok_and(|n| n >= Some(3.0)),
    )?;
    let r = engineer.exec_on(&relays[held], "board1", "echo still")?;
    ensure!(r.stdout == "still\n", "{r:?}");

    // A flood on the subjects the relays listen to, while the holder is stopped (SIGSTOP) so
    // that nothing drains its queues: what waits for it is bounded (NATS's own limit on what
    // it holds for a slow consumer, then the client's per-subscription capacity), not the
    // hundreds of megabytes sent, and one of the relays serves the board after.
    let pid = relays[held].pid().context("relay not running")?;
    let (rss_before, _) = memory_kib(pid)?;
    let big = format!(
        "{{\"origin\":\"x\",\"device\":\"{}\"}}",
        "d".repeat(900_000)
    )
    .into_bytes();
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGSTOP)?;
    let flood = (|| {
        for _ in 0..3 {
            nats.publish_raw("tether.notify.device", &vec![big.clone(); 100])?;
        }
        nats.publish_raw(
            "tether.notify.access",
            &vec![br#"{"origin":"x"}"#.to_vec(); 20_000],
        )
    })();
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGCONT)?;
    flood?;
    std::thread::sleep(Duration::from_secs(3));
    let (rss_after, _) = memory_kib(pid)?;
    println!("relay RSS {rss_before} KiB before a 270 MB flood of notes, {rss_after} KiB after");
    ensure!(
        rss_after < rss_before + 128 * 1024,
        "a flood of notes grew the relay from {rss_before} KiB to {rss_after} KiB"
    );
    // The board may have moved to the other relay while its holder was stopped: either way
    // one of them holds it and serves it.
    let mut now = None;
    wait_until(
        Duration::from_secs(30),
        "a holder of board1 after the flood",
        || {
            now = holder(&relays[other], "board1").ok().flatten();
            now.is_some()
        },
    )?;
    held = ids
        .iter()
        .position(|i| Some(*i) == now.as_deref())
        .context("unknown holder")?;
    other = 1 - held;
    let r = engineer.exec_on(&relays[held], "board1", "echo after the flood")?;
    ensure!(r.stdout == "after the flood\n", "{r:?}");

    // NATS goes away: the boards stay reachable through the relay that holds them, and the
    // relays say what is missing; when it is back, presence is written again by itself.
    let at = held;
    nats.stop();
    let r = engineer.exec_on(&relays[at], "board1", "echo without nats")?;
    ensure!(r.stdout == "without nats\n", "{r:?}");
    wait_until(
        Duration::from_secs(20),
        "the relay to report NATS gone",
        || relays[at].log().contains("NATS is unreachable"),
    )?;
    nats.start_again()?;
    wait_holder(&relays[0], "board1", Some(ids[at]), Duration::from_secs(30))?;

    // The holder dies without a word: its entry goes within the map's lifetime, and the
    // board, reconnecting, is held by the other relay.
    relays[held].kill();
    let moved = wait_holder(
        &relays[other],
        "board1",
        Some(ids[other]),
        Duration::from_secs(60),
    )?;
    println!(
        "board1 held by {} {:?} after {} was killed",
        ids[other], moved, ids[held]
    );
    let r = engineer.exec_on(&relays[other], "board1", "echo moved")?;
    ensure!(r.stdout == "moved\n", "{r:?}");

    // The dead relay comes back; a reject through it drops the link the other relay holds,
    // told by the admin command's announcement rather than found by the next sweep.
    relays[held].restart()?;
    let heard = relays[other].metric(ACCESS_NOTES_RECEIVED)?.unwrap_or(0.0);
    let r = relays[held].admin(&["device", "reject", "board1"])?;
    ensure!(r.status == Some(0), "reject: {}", r.stderr);
    wait_holder(&relays[held], "board1", None, Duration::from_secs(20))?;
    ensure!(
        relays[other].metric(ACCESS_NOTES_RECEIVED)? > Some(heard),
        "the holder heard of no access change"
    );

    Ok(())
}

#[test]
fn an_engineer_on_any_relay_reaches_a_board_held_by_another() -> Result<()> {
    let pg = Postgres::start()?;
    let db = pg.create_database("peers")?;
    let nats = Nats::start()?;
    let mut relays = [relay(&db, &nats, "r1")?, relay(&db, &nats, "r2")?];
    relays[0].tenant("acme")?;
    let engineer = relays[0].engineer("alice", "acme", "admin")?;
    let echo = echo_server()?;
    let sshd = Sshd::start(&engineer.key.with_extension("pub"))?;
    let (_agent, held) = board(
        &relays,
        &[
            format!("127.0.0.1:{echo}"),
            format!("127.0.0.1:{}", sshd.port),
        ],
    )?;
    let via = 1 - held;
    let port = relays[via].ssh_port.to_string();

    // -J to the board's own sshd, end to end, through the relay that does not hold it.
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let cmd = engineer.ssh_cmd(&[
        "-J",
        &format!("alice@127.0.0.1:{port}"),
        "-p",
        &sshd.port.to_string(),
        &format!("{user}@board1"),
        "echo via-sshd",
    ]);
    let r = run_with_timeout(cmd, None, Duration::from_secs(60))?;
    ensure!(
        r.stdout == "via-sshd\n",
        "ProxyJump through the other relay: {r:?}"
    );

    // exec: output, stdin and exit status through the other relay.
    let r = engineer.exec_input_on(&relays[via], "board1", "cat; exit 3", Some(b"typed"))?;
    ensure!(r.status == Some(3) && r.stdout == "typed", "{r:?}");

    // A pty shell: a terminal, its size and its resize, through the other relay.
    let t = Tmux::new(
        &format!(
            "ssh -F {} -p {port} -tt board1@127.0.0.1",
            engineer.ssh_config.display()
        ),
        100,
        30,
    )?;
    t.send(&["echo tty=$(tty); stty size", "Enter"])?;
    t.wait_for("30 100")?;
    ensure!(t.screen().contains("tty=/dev/pts/"), "{}", t.screen());
    t.tmux(&["resize-window", "-t", "0", "-x", "120", "-y", "40"])?;
    std::thread::sleep(Duration::from_millis(300));
    t.send(&["clear; stty size", "Enter"])?;
    t.wait_for("40 120")?;
    t.send(&["exit", "Enter"])?;
    drop(t);

    // scp both ways, byte for byte.
    let data = pseudo_random(64 << 20, 9);
    let (work, _board_dir, there) = scp_to_board(&engineer, &port, &data)?;
    let down = work.path().join("down");
    let r = engineer.scp(&[
        "-P",
        &port,
        &format!("board1@127.0.0.1:{}", there.display()),
        &down.display().to_string(),
    ])?;
    ensure!(r.status == Some(0), "scp down: {}", r.stderr);
    ensure!(std::fs::read(&down)? == data, "the copy back differs");

    // -L to a service on the board's side.
    let local = free_port()?;
    let mut cmd = engineer.ssh_cmd(&[
        "-p",
        &port,
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("127.0.0.1:{local}:127.0.0.1:{echo}"),
        "board1@127.0.0.1",
    ]);
    cmd.stdin(std::process::Stdio::null());
    let mut forward = KillOnDrop(cmd.spawn()?);
    wait_for_port(local)?;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let payload = pseudo_random(200_000, 4);
    let mut writer = conn.try_clone()?;
    let sent = payload.clone();
    let w = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &sent));
    let mut got = vec![0u8; payload.len()];
    std::io::Read::read_exact(&mut conn, &mut got)?;
    let _ = w.join();
    ensure!(got == payload, "forwarded bytes differ");
    let _ = forward.0.kill();

    // The holder dies: a session carried through it ends instead of hanging, and the board,
    // back on the surviving relay, is reached there.
    let mut live = engineer.ssh_cmd(&["-p", &port, "board1@127.0.0.1", "cat"]);
    live.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut live = KillOnDrop(live.spawn()?);
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        live.0.try_wait()?.is_none(),
        "the carried session ended before its relay died"
    );
    relays[held].kill();
    let ended = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "the carried session to end",
        || live.0.try_wait().is_ok_and(|s| s.is_some()),
    )?;
    println!(
        "session through the dead relay ended after {:?}",
        ended.elapsed()
    );
    wait_holder(
        &relays[via],
        "board1",
        Some(["r1", "r2"][via]),
        Duration::from_secs(60),
    )?;
    let r = engineer.exec_on(&relays[via], "board1", "echo here")?;
    ensure!(r.stdout == "here\n", "{r:?}");
    Ok(())
}

/// haproxy running `bsp/cluster/haproxy.cfg` with the relays' loopback ports in place of
/// `relay-N.internal`; returns it and its SSH and HTTP ports.
fn balancer(relays: &[Relay], dir: &std::path::Path) -> Result<(KillOnDrop, u16, u16)> {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bsp/cluster/haproxy.cfg"
    ))?;
    let (ssh, http) = (free_port()?, free_port()?);
    let mut cfg = shipped
        .replace("bind :2222", &format!("bind 127.0.0.1:{ssh}"))
        .replace("bind :8080", &format!("bind 127.0.0.1:{http}"));
    for (i, r) in relays.iter().enumerate() {
        let host = format!("relay-{}.internal", i + 1);
        cfg = cfg
            .replace(
                &format!("{host}:2222"),
                &format!("127.0.0.1:{}", r.ssh_port),
            )
            .replace(
                &format!("{host}:8080"),
                &format!("127.0.0.1:{}", r.http_port),
            );
    }
    ensure!(
        !cfg.contains(".internal"),
        "a relay of the shipped file is left: {cfg}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let check = std::process::Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&path)
        .output()
        .context("running haproxy (Debian package haproxy)")?;
    ensure!(
        check.status.success(),
        "haproxy refuses the shipped configuration: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let guard = KillOnDrop(child);
    wait_for_port(ssh)?;
    wait_for_port(http)?;
    Ok((guard, ssh, http))
}

#[test]
fn three_relays_behind_haproxy_serve_boards_and_engineers_through_its_ports_only() -> Result<()> {
    let pg = Postgres::start()?;
    let db = pg.create_database("balanced")?;
    let nats = Nats::start()?;
    let mut relays = [
        relay(&db, &nats, "r1")?,
        relay(&db, &nats, "r2")?,
        relay(&db, &nats, "r3")?,
    ];
    let dir = tempfile::tempdir()?;
    let (_haproxy, lb_ssh, lb_http) = balancer(&relays, dir.path())?;
    relays[0].tenant("acme")?;
    let engineer = relays[0].engineer("alice", "acme", "admin")?;
    let lb = Relay {
        dir: tempfile::tempdir()?,
        ssh_port: lb_ssh,
        http_port: lb_http,
        proc: None,
    };
    // One board over SSH, one over WebSocket, both through the balancer only.
    let mut boards = Vec::new();
    for (name, url) in [
        ("tcp-board", format!("ssh://127.0.0.1:{lb_ssh}")),
        ("ws-board", format!("ws://127.0.0.1:{lb_http}/v1/link")),
    ] {
        let mut agent = Agent::with_extra_config(name, &[], APPS)?;
        agent.enroll_via(&relays[0], &url, "acme")?;
        agent.start()?;
        agent.wait_online()?;
        boards.push(agent);
    }
    for name in ["tcp-board", "ws-board"] {
        let r = engineer.exec_on(&lb, name, "echo balanced")?;
        ensure!(r.stdout == "balanced\n", "{name} through haproxy: {r:?}");
    }
    // An action through relay 3 reaches the boards wherever they are.
    let id = relays[2].admin_ok(&["action", "create", "tcp-board", "--run", "echo r3"])?;
    let id = id.trim().to_string();
    wait_until(
        Duration::from_secs(30),
        "the action through relay 3",
        || {
            relays[0]
                .admin_ok(&["action", "show", &id, "--json"])
                .is_ok_and(|t| t.contains("\"succeeded\""))
        },
    )?;

    // A deployment created through a relay that does not hold the board, with an artifact
    // stored through that relay (on its disk and in the store), reaches the board; its status
    // reads the same through every relay.
    let id = holder(&relays[0], "tcp-board")?.context("no holder")?;
    let at = ["r1", "r2", "r3"]
        .iter()
        .position(|r| *r == id)
        .context("holder")?;
    let deployer = &relays[(at + 1) % 3];
    let blob = dir.path().join("blob.bin");
    std::fs::write(&blob, pseudo_random(3 << 20, 5))?;
    let put = deployer.admin_ok(&[
        "artifact",
        "put",
        "--tenant",
        "acme",
        path_str(&blob),
        "--json",
    ])?;
    let put: serde_json::Value = serde_json::from_str(&put)?;
    let sha = put["sha256"].as_str().context("sha256")?.to_string();
    let recipe = dir.path().join("sum.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: com.example.sum\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: relay:sha256:{sha}\n        sha256: {sha}\n    lifecycle:\n      run: sha256sum {{artifacts:path}}/{sha} > {{work:path}}/sum; exec sleep 600\n"
        ),
    )?;
    let deployment_id = deploy(
        deployer,
        "device:tcp-board",
        &["--recipe", path_str(&recipe)],
    )?;
    let view = wait_final(&relays[at], &deployment_id, Duration::from_secs(90))?;
    ensure!(statuses(&view) == ["tcp-board=succeeded"], "{view}");
    for r in &relays {
        let seen = deployment(r, &deployment_id)?;
        ensure!(statuses(&seen) == statuses(&view), "{seen} vs {view}");
    }
    let sum = std::fs::read_to_string(
        boards[0]
            .dir
            .path()
            .join("state/apps/com.example.sum/work/sum"),
    )?;
    ensure!(sum.starts_with(&sha), "the board got other bytes: {sum}");

    // The relay holding the SSH board dies: the board comes back through the balancer on
    // another relay, and the engineer reaches it through the balancer again.
    let id = holder(&relays[1], "tcp-board")?.context("no holder")?;
    let at = ["r1", "r2", "r3"]
        .iter()
        .position(|r| *r == id)
        .context("holder")?;
    relays[at].kill();
    let watcher = (at + 1) % 3;
    let back = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "tcp-board on another relay",
        || holder(&relays[watcher], "tcp-board").is_ok_and(|h| h.is_some_and(|h| h != id)),
    )?;
    println!("tcp-board back on another relay after {:?}", back.elapsed());
    let mut last = None;
    wait_until(Duration::from_secs(30), "a session through haproxy", || {
        let r = engineer.exec_on(&lb, "tcp-board", "echo again");
        let ok = r.as_ref().is_ok_and(|r| r.stdout == "again\n");
        last = Some(r.map(|r| r.stderr));
        ok
    })
    .with_context(|| format!("{last:?}"))?;
    Ok(())
}

#[test]
fn telemetry_is_stored_exactly_once_when_its_relay_dies_mid_upload() -> Result<()> {
    const RECORDS: usize = 100_000;
    let pg = Postgres::start()?;
    let db = pg.create_database("telemetry")?;
    let nats = Nats::start()?;
    let mut relays = [relay(&db, &nats, "r1")?, relay(&db, &nats, "r2")?];
    relays[0].tenant("acme")?;
    let (agent, held) = board(&relays, &[])?;
    let input: String = (0..RECORDS)
        .map(|i| format!("{{\"topic\":\"sensors/t\",\"value\":{{\"i\":{i}}}}}\n"))
        .collect();
    let mut cmd = std::process::Command::new(bin_dir()?.join("agent"));
    cmd.arg("--config")
        .arg(&agent.config)
        .args(["telemetry", "send", "--batch"]);
    let r = run_with_timeout(cmd, Some(input.as_bytes()), Duration::from_secs(300))?;
    ensure!(r.status == Some(0), "send --batch: {}", r.stderr);
    // The holder dies while the board is still uploading.
    let stored_before: u64 = pg
        .psql(&db, "SELECT count(*) FROM telemetry")?
        .trim()
        .parse()?;
    relays[held].kill();
    println!("relay killed with {stored_before} of {RECORDS} records stored");
    let start = Instant::now();
    let mut stored = 0u64;
    wait_until(Duration::from_secs(240), "every record stored", || {
        stored = pg
            .psql(&db, "SELECT count(*) FROM telemetry")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        stored >= RECORDS as u64
    })
    .with_context(|| format!("{stored} of {RECORDS} stored"))?;
    println!("all stored {:?} after the kill", start.elapsed());
    agent.wait_drained(Duration::from_secs(60))?;
    let counts = pg.psql(
        &db,
        "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM telemetry",
    )?;
    let status = agent.telemetry_status()?;
    let last = status["last_seq"].as_u64().context("last_seq")?;
    let first = last + 1 - RECORDS as u64;
    ensure!(
        counts.trim() == format!("{RECORDS}|{RECORDS}|{first}|{last}"),
        "stored rows (count, distinct, min, max): {counts}"
    );
    Ok(())
}

#[test]
fn a_relay_killed_for_good_leaves_no_board_online_and_no_session_open() -> Result<()> {
    let pg = Postgres::start()?;
    let db = pg.create_database("cluster")?;
    let nats = Nats::start()?;
    let mut relays = [relay(&db, &nats, "r1")?, relay(&db, &nats, "r2")?];
    relays[0].tenant("acme")?;
    let engineer = relays[0].engineer("alice", "acme", "admin")?;
    let (mut agent, held) = board(&relays, &[])?;
    let other = 1 - held;
    // A session through the holder that is still open when everything dies.
    let mut ssh = engineer.ssh_cmd(&[
        "-p",
        &relays[held].ssh_port.to_string(),
        "board1@127.0.0.1",
        "sleep 600",
    ]);
    ssh.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ssh = KillOnDrop(ssh.spawn()?);
    let open_session = |via: &Relay| -> Result<Option<serde_json::Value>> {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&via.admin_ok(&["session", "list", "--json"])?)?;
        Ok(list.into_iter().find(|s| s["device"] == "board1"))
    };
    wait_until(
        Duration::from_secs(20),
        "the session to be recorded",
        || open_session(&relays[other]).is_ok_and(|s| s.is_some()),
    )?;

    // The board and its relay die at once: nobody records the link's or the session's end.
    // The relay goes first, so that it cannot see the link drop and record it.
    ensure!(relays[other].device_json("board1")?["online"] == true);
    relays[held].kill();
    agent.kill();

    // Nobody deletes the dead relay's presence entry: it lapses within the map's lifetime.
    let gone = wait_holder(&relays[other], "board1", None, Duration::from_secs(25))?;
    println!("a dead relay's presence entry lapsed after {gone:?}");

    // The surviving relay notices the silence and releases what the dead one held.
    let start = Instant::now();
    let mut last = serde_json::Value::Null;
    wait_until(Duration::from_secs(60), "board1 to read offline", || {
        last = relays[other].device_json("board1").unwrap_or_default();
        last["online"] == false
    })
    .with_context(|| format!("{last}\n{}", relays[other].log()))?;
    println!(
        "a dead relay's board read offline after {:?}",
        start.elapsed()
    );
    let session = open_session(&relays[other])?.context("the session is gone")?;
    ensure!(session["end_reason"] == "interrupted", "{session}");
    ensure!(
        relays[other].log().contains("were silent"),
        "{}",
        relays[other].log()
    );
    Ok(())
}

#[test]
fn an_engineer_who_stops_reading_stalls_nobody_and_grows_no_relay() -> Result<()> {
    let pg = Postgres::start()?;
    let db = pg.create_database("cluster")?;
    let nats = Nats::start()?;
    let relays = [relay(&db, &nats, "r1")?, relay(&db, &nats, "r2")?];
    relays[0].tenant("acme")?;
    let engineer = relays[0].engineer("alice", "acme", "admin")?;
    let (_agent, held) = board(&relays, &[])?;
    let other = 1 - held;
    let port = relays[other].ssh_port.to_string();
    let rss =
        |r: &Relay| -> Result<u64> { Ok(memory_kib(r.pid().context("relay not running")?)?.0) };
    let before = [rss(&relays[0])?, rss(&relays[1])?];

    // An endless stream from the board to an engineer who never reads it: the ssh client's
    // stdout pipe fills, and every hop (client, relay, peer stream, holder, link, board) must
    // stop at its window instead of buffering.
    let mut flood = engineer.ssh_cmd(&["-p", &port, "board1@127.0.0.1", "cat /dev/zero"]);
    flood
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut flood = KillOnDrop(flood.spawn()?);
    std::thread::sleep(Duration::from_secs(5));

    // Meanwhile another session through the same relays and the same link is served.
    for i in 0..3 {
        let r = engineer.exec_on(&relays[other], "board1", &format!("echo beside {i}"))?;
        ensure!(r.stdout == format!("beside {i}\n"), "{r:?}");
    }
    scp_to_board(&engineer, &port, &pseudo_random(8 << 20, 3))
        .context("scp beside the stalled stream")?;

    // The stalled stream is still held (not dropped to save memory) and cost no relay more
    // than its windows.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        flood.0.try_wait()?.is_none(),
        "the stalled session was ended"
    );
    let after = [rss(&relays[0])?, rss(&relays[1])?];
    println!("relay RSS with a stalled engineer: {before:?} -> {after:?} KiB");
    for i in 0..2 {
        ensure!(
            after[i] < before[i] + 48 * 1024,
            "relay {} grew from {} to {} KiB while an engineer did not read",
            i + 1,
            before[i],
            after[i]
        );
    }
    drop(flood);
    Ok(())
}

/// The presence map trusts a link entry only while its relay lives and only for that relay's
/// current run: entries forged on NATS for a relay that does not exist, or for an earlier run
/// of a live one, or too large, are not listed; and a relay that dies and comes back under the
/// same name disowns the links of its earlier run at once, though its own entry lives again.
#[test]
fn presence_lists_only_links_of_live_relays_in_their_current_run() -> Result<()> {
    let pg = Postgres::start()?;
    let db = pg.create_database("presence")?;
    let nats = Nats::start()?;
    let mut relays = [relay(&db, &nats, "r1")?];
    relays[0].tenant("acme")?;
    let (mut agent, _) = board(&relays, &[])?;
    let entries = |via: &Relay| -> Result<Vec<serde_json::Value>> {
        Ok(serde_json::from_str(
            &via.admin_ok(&["cluster", "status", "--json"])?,
        )?)
    };

    nats.publish_raw(
        "$KV.tether-links.device.ghost1",
        &[br#"{"relay":"nobody","generation":99999999999999999,"at_ms":0}"#.to_vec()],
    )?;
    nats.publish_raw(
        "$KV.tether-links.device.ghost2",
        &[br#"{"relay":"r1","generation":1,"at_ms":0}"#.to_vec()],
    )?;
    nats.publish_raw(
        "$KV.tether-links.device.ghost3",
        &[format!(
            r#"{{"relay":"r1","generation":99999999999999999,"at_ms":0,"peer":"{}"}}"#,
            "p".repeat(4096)
        )
        .into_bytes()],
    )?;
    let listed = entries(&relays[0])?;
    ensure!(
        listed.len() == 1 && listed[0]["device"] == "board1" && listed[0]["relay"] == "r1",
        "{listed:?}"
    );

    // The relay and its board die; the relay comes back under its name before its entry
    // would lapse. Nobody deletes board1's entry, yet it is not listed: its link is of the
    // relay's earlier run.
    relays[0].kill();
    agent.kill();
    relays[0].restart()?;
    wait_holder(&relays[0], "board1", None, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(holder(&relays[0], "board1")?.is_none());
    Ok(())
}
