//! Hardening: the agent's systemd unit parses and keeps its sandbox, the state of the agent and
//! of the relay is private to their user, a device key that others may read or write is refused
//! like OpenSSH refuses it, and a relay stopped with SIGTERM in the middle of a telemetry stream
//! loses and duplicates nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

/// The exposure `systemd-analyze security` gave the unit when its sandbox was last reviewed;
/// a change that loosens the sandbox must raise this figure on purpose.
const MAX_EXPOSURE: f64 = 6.2;

/// The relay unit's exposure as reviewed: it needs only its ports and data directory.
const MAX_RELAY_EXPOSURE: f64 = 1.5;

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Deploys the ticker application to board1 through the relay (its script stored as a relay
/// artifact, downloaded and staged by the agent) and waits until it has written its ticks.
/// Returns the sha256 of the script artifact.
fn deploy_ticker(relay: &Relay, agent: &Agent) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("tick.sh");
    std::fs::write(&script, "echo tick\n")?;
    let sha = relay
        .admin_ok(&[
            "artifact",
            "put",
            "--tenant",
            "acme",
            &script.display().to_string(),
        ])?
        .trim()
        .to_string();
    let recipe = dir.path().join("ticker.yaml");
    std::fs::write(&recipe, ticker(&sha))?;
    relay.admin_ok(&[
        "deploy",
        "create",
        "--tenant",
        "acme",
        "--target",
        "device:board1",
        "--recipe",
        &recipe.display().to_string(),
    ])?;
    let ticks = agent
        .dir
        .path()
        .join("state/apps/com.example.ticker/work/ticks");
    wait_until(Duration::from_secs(60), "the application runs", || {
        std::fs::read_to_string(&ticks).is_ok_and(|t| t.contains("tick"))
    })
    .with_context(|| tail_lines(&agent.log(), 40))?;
    Ok(sha)
}

#[test]
fn the_systemd_unit_verifies_and_keeps_its_sandbox() -> Result<()> {
    verify_unit(
        "tether-agent.service",
        "agent",
        "ExecStart=/usr/bin/agent run",
        MAX_EXPOSURE,
    )
}

#[test]
fn the_relays_systemd_unit_verifies_keeps_its_sandbox_and_raises_the_file_limit() -> Result<()> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bsp/systemd/tether-relay.service"),
    )?;
    ensure!(
        text.contains("LimitNOFILE=65536"),
        "the relay unit no longer raises the open-file limit for large fleets"
    );
    verify_unit(
        "tether-relay.service",
        "relay",
        "ExecStart=/usr/bin/relay serve",
        MAX_RELAY_EXPOSURE,
    )
}

/// Checks the shipped unit `name` with `systemd-analyze verify` (its `ExecStart=` pointed at
/// the binary `binary` just built) and its `security` exposure against `max_exposure`.
fn verify_unit(name: &str, binary: &str, exec_start: &str, max_exposure: f64) -> Result<()> {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed");
        return Ok(());
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bsp/systemd")
        .join(name);
    let text = std::fs::read_to_string(&source)?;
    ensure!(
        text.contains(exec_start),
        "{name} no longer says {exec_start}"
    );
    // verify checks that ExecStart= names an executable; point it at the binary just built.
    let dir = tempfile::tempdir()?;
    let unit = dir.path().join(name);
    let built = bin_dir()?.join(binary);
    std::fs::write(
        &unit,
        text.replace(&format!("/usr/bin/{binary}"), &built.display().to_string()),
    )?;

    let mut cmd = Command::new(&analyze);
    cmd.args(["verify", "--man=no"]).arg(&unit);
    let r = run_with_timeout(cmd, None, Duration::from_secs(60))?;
    // Unknown or misspelt settings are only warnings ("Unknown key name …, ignoring"), so any
    // message about the unit counts as a failure, not just the exit status.
    ensure!(
        r.status == Some(0) && !r.stderr.contains(name),
        "systemd-analyze verify ({:?}):\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );

    let mut cmd = Command::new(&analyze);
    cmd.args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit);
    let r = run_with_timeout(cmd, None, Duration::from_secs(60))?;
    let marker = format!("Overall exposure level for {name}:");
    let exposure = r
        .stdout
        .lines()
        .find_map(|l| l.split_once(marker.as_str()))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no exposure level in:\n{}{}", r.stdout, r.stderr))?;
    eprintln!("systemd-analyze security {name}: exposure {exposure}");
    ensure!(
        exposure <= max_exposure,
        "{name}'s exposure rose to {exposure} (reviewed: {max_exposure}):\n{}",
        r.stdout
    );
    Ok(())
}

/// Permission bits of `path` (not following a symbolic link).
fn mode_of(path: &Path) -> Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o777)
}

/// Every entry below `root` with its permission bits and whether it is a socket; `skip_below`
/// tells which directories' contents are not the program's own files.
fn walk(root: &Path, skip_below: &dyn Fn(&Path) -> bool) -> Result<Vec<(PathBuf, u32, bool)>> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        ensure!(out.len() < 100_000, "runaway walk below {}", root.display());
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            out.push((path.clone(), mode_of(&path)?, kind.is_socket()));
            if kind.is_dir() && !skip_below(&path) {
                todo.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The entries of `entries` that group or others may access, other than the sockets listed in
/// `sockets` with the mode they are documented to have.
fn too_open(entries: &[(PathBuf, u32, bool)], sockets: &[(&str, u32)]) -> Vec<String> {
    entries
        .iter()
        .filter(|(path, mode, is_socket)| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if *is_socket {
                !sockets.iter().any(|(n, m)| *n == name && *m == *mode)
            } else {
                mode & 0o077 != 0
            }
        })
        .map(|(path, mode, _)| format!("{} {mode:04o}", path.display()))
        .collect()
}

/// A recipe that runs a script stored on the relay, writing into its work directory.
fn ticker(sha: &str) -> String {
    format!(
        "name: com.example.ticker\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: relay:sha256:{sha}\n        sha256: {sha}\n    lifecycle:\n      run: |\n        while true; do sh {{artifacts:path}}/{sha} >> {{work:path}}/ticks; sleep 0.2; done\n"
    )
}

#[test]
fn state_of_agent_and_relay_is_private_to_their_user() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::with_extra_config("board1", &[], APPS)?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;

    // Telemetry through the CLI, an event, and a record through the producer socket.
    let r = agent.cmd(&["telemetry", "send", "t/cli", "1"])?;
    ensure!(r.status == Some(0), "telemetry send: {}", r.stderr);
    let r = agent.cmd(&["notify", "--level", "warning", "disk almost full"])?;
    ensure!(r.status == Some(0), "notify: {}", r.stderr);
    let socket = agent.socket_path();
    wait_until(Duration::from_secs(10), "producer socket", || {
        socket.exists()
    })?;
    let stream = UnixStream::connect(&socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&stream).write_all(b"{\"topic\":\"t/socket\",\"value\":2}\n")?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    ensure!(answer.contains("\"seq\""), "socket answered {answer:?}");

    // An application deployed from the relay: the artifact is stored by the relay, downloaded
    // and staged by the agent, and its output kept in the component's log.
    let sha = deploy_ticker(&relay, &agent)?;
    let state = agent.dir.path().join("state");
    let ticks = state.join("apps/com.example.ticker/work/ticks");
    agent.wait_drained(Duration::from_secs(30))?;

    // The agent's state directory, while it runs (sockets, -wal and -shm files exist).
    // Below an application's work directory live the application's own files, created with
    // the login umask sessions and steps get; the work directory itself is the agent's.
    let in_work = |p: &Path| p.file_name().is_some_and(|n| n == "work");
    let entries = walk(&state, &in_work)?;
    let names: BTreeSet<String> = entries
        .iter()
        .filter_map(|(p, _, _)| Some(p.strip_prefix(&state).ok()?.display().to_string()))
        .collect();
    for expected in [
        "device_ed25519",
        "enrollment.json",
        "outbox.db",
        "outbox.db-wal",
        "outbox.db-shm",
        "telemetry.sock",
        "control.sock",
        "apps/com.example.ticker/work",
    ] {
        ensure!(
            names.contains(expected),
            "{expected} not in the state directory: {names:?}"
        );
    }
    ensure!(
        names
            .iter()
            .any(|n| n.starts_with("apps/com.example.ticker/") && n.ends_with(&sha)),
        "no staged artifact in {names:?}"
    );
    ensure!(
        mode_of(&state)? == 0o700,
        "state dir {:04o}",
        mode_of(&state)?
    );
    // The producer socket is group-writable (telemetry.socket_mode, default 0660) so producers
    // in the agent's group can queue records; the control socket is for root's CLI only.
    let open = too_open(
        &entries,
        &[("telemetry.sock", 0o660), ("control.sock", 0o600)],
    );
    ensure!(open.is_empty(), "agent state open to others: {open:#?}");

    // The relay's data directory: store with -wal and -shm, host key, artifacts.
    let data = relay.data_dir();
    let entries = walk(&data, &|_| false)?;
    let names: BTreeSet<String> = entries
        .iter()
        .filter_map(|(p, _, _)| Some(p.strip_prefix(&data).ok()?.display().to_string()))
        .collect();
    for expected in [
        "relay.db",
        "relay.db-wal",
        "relay.db-shm",
        "ssh_host_ed25519_key",
        "artifacts",
    ] {
        ensure!(
            names.contains(expected),
            "{expected} not in the data directory: {names:?}"
        );
    }
    ensure!(
        names.contains(&format!("artifacts/{sha}")),
        "artifact not stored: {names:?}"
    );
    ensure!(mode_of(&data)? == 0o700, "data dir {:04o}", mode_of(&data)?);
    let open = too_open(&entries, &[]);
    ensure!(open.is_empty(), "relay data open to others: {open:#?}");

    // The applications' own files get the login umask, not the agent's.
    ensure!(
        mode_of(&ticks)? == 0o644,
        "the application's file has mode {:04o}",
        mode_of(&ticks)?
    );
    Ok(())
}

/// Runs `sh -c script` as `nobody`; returns whether it succeeded.
fn as_nobody(script: &str) -> Result<bool> {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "nobody", "--", "/bin/sh", "-c", script]);
    Ok(run_with_timeout(cmd, None, Duration::from_secs(20))?.status == Some(0))
}

#[test]
fn an_application_running_as_another_user_reaches_its_files_and_nothing_else() -> Result<()> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root || which("runuser").is_none() {
        eprintln!("skipped: needs root and runuser to run an application as nobody");
        return Ok(());
    }
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::with_extra_config("board1", &[], &format!("{APPS}  user: nobody\n"))?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    deploy_ticker(&relay, &agent)?;
    // The run step, as nobody, reads its artifact and writes into its work directory.
    let state = agent.dir.path().join("state");
    let ticks = state.join("apps/com.example.ticker/work/ticks");
    // The test's own temporary directory is 0700 root; let nobody reach the agent's state.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let st = state.display();
    ensure!(
        mode_of(&state)? == 0o711,
        "state dir {:04o}",
        mode_of(&state)?
    );
    ensure!(
        as_nobody(&format!("test -s {}", ticks.display()))?,
        "nobody cannot reach the application's work directory"
    );
    for secret in ["device_ed25519", "outbox.db", "enrollment.json"] {
        ensure!(
            !as_nobody(&format!("cat {st}/{secret} > /dev/null"))?,
            "nobody can read {secret}"
        );
    }
    ensure!(
        !as_nobody(&format!("ls {st}"))?,
        "nobody can list the state directory"
    );
    ensure!(
        !as_nobody(&format!(
            "cat {st}/apps/com.example.ticker/1.0.0/recipe.yaml"
        ))?,
        "nobody can read the agent's copy of the recipe"
    );
    Ok(())
}

#[test]
fn a_device_key_others_can_read_or_write_is_refused() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::new("board1", &[])?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    let key = agent.dir.path().join("state/device_ed25519");
    ensure!(mode_of(&key)? == 0o600, "new key {:04o}", mode_of(&key)?);
    for mode in [0o644, 0o604, 0o620] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode))?;
        let r = agent.cmd(&["run"])?;
        let expected = [
            "UNPROTECTED PRIVATE KEY FILE".to_string(),
            key.display().to_string(),
            format!("mode {mode:04o}"),
            format!("chmod 600 {}", key.display()),
        ];
        ensure!(
            r.status == Some(1) && expected.iter().all(|e| r.stderr.contains(e)),
            "agent run with a key of mode {mode:04o}: exit {:?}\n{}",
            r.status,
            r.stderr
        );
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    agent.start()?;
    agent.wait_online()?;
    Ok(())
}

/// Records per CLI invocation and per socket write: small, so many batches are in flight.
const CHUNK: usize = 25;

/// Queues records through the producer socket until `stop`; returns their sequence numbers.
fn produce_through_socket(agent: &Agent, stop: &AtomicBool) -> Result<Vec<u64>> {
    let path = agent.socket_path();
    wait_until(Duration::from_secs(10), "producer socket", || path.exists())?;
    let stream = UnixStream::connect(&path)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut seqs = Vec::new();
    let mut answer = String::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && seqs.len() < 200_000 {
        let start = seqs.len();
        let chunk: String = (start..start + CHUNK)
            .map(|i| format!("{{\"topic\":\"stream/socket\",\"value\":{{\"i\":{i}}}}}\n"))
            .collect();
        writer.write_all(chunk.as_bytes())?;
        for _ in 0..CHUNK {
            answer.clear();
            reader.read_line(&mut answer)?;
            let v: serde_json::Value = serde_json::from_str(&answer)
                .with_context(|| format!("socket answered {answer:?}"))?;
            seqs.push(v["seq"].as_u64().context(answer.clone())?);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(seqs)
}

/// Queues records with `agent telemetry send --batch` until `stop`; returns their sequence
/// numbers.
fn produce_through_cli(agent: &Agent, stop: &AtomicBool) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && seqs.len() < 200_000 {
        let start = seqs.len();
        let input: String = (start..start + CHUNK)
            .map(|i| format!("{{\"topic\":\"stream/cli\",\"value\":{{\"i\":{i}}}}}\n"))
            .collect();
        let mut cmd = Command::new(bin_dir()?.join("agent"));
        cmd.arg("--config")
            .arg(&agent.config)
            .args(["telemetry", "send", "--batch"]);
        let r = run_with_timeout(cmd, Some(input.as_bytes()), Duration::from_secs(60))?;
        ensure!(r.status == Some(0), "send --batch: {}", r.stderr);
        for l in r.stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(l)?;
            seqs.push(v["seq"].as_u64().context(l.to_string())?);
        }
    }
    Ok(seqs)
}

#[test]
fn a_relay_stopped_with_sigterm_mid_stream_keeps_every_record_once_over_tcp() -> Result<()> {
    sigterm_mid_stream(Transport::Tcp)
}

#[test]
fn a_relay_stopped_with_sigterm_mid_stream_keeps_every_record_once_over_websocket() -> Result<()> {
    sigterm_mid_stream(Transport::WebSocket)
}

/// An agent streams telemetry from two producers while the relay is stopped with SIGTERM and
/// restarted, four times; every record produced ends up stored exactly once.
fn sigterm_mid_stream(transport: Transport) -> Result<()> {
    const ROUNDS: usize = 4;
    let mut relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::with_extra_config(
        "board1",
        &[],
        "telemetry:\n  batch_records: 20\n  window: 4\n",
    )?;
    agent.enroll(&relay, transport, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    let device = agent.device_id()?;

    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (socket_seqs, cli_seqs, stops, duplicates) = std::thread::scope(|scope| -> Result<_> {
        let socket = scope.spawn(|| produce_through_socket(&agent, &stop));
        let cli = scope.spawn(|| produce_through_cli(&agent, &stop));
        let mut stops = Vec::new();
        let mut duplicates = 0u64;
        let result = (|| -> Result<()> {
            for round in 0..ROUNDS {
                // Let the restarted relay take the stream up again before the next SIGTERM.
                let before = agent.telemetry_status()?["acked_upto"]
                    .as_u64()
                    .unwrap_or(0);
                wait_until(Duration::from_secs(30), "acknowledgements flowing", || {
                    agent
                        .telemetry_status()
                        .is_ok_and(|s| s["acked_upto"].as_u64().unwrap_or(0) > before + 100)
                })
                .with_context(|| tail_lines(&relay.log(), 40))?;
                std::thread::sleep(Duration::from_millis(150 + 170 * round as u64));
                // What this relay instance saw resent: batches committed by the previous one
                // whose acknowledgement never reached the agent.
                duplicates += duplicates_seen(&relay)?;
                let queued = agent.queued()?;
                let (code, took) = relay.terminate(Duration::from_secs(10))?;
                eprintln!(
                    "{transport:?} round {round}: SIGTERM with {queued} records queued; relay exited {code:?} after {took:?}"
                );
                ensure!(code == Some(0), "relay exit status {code:?} on SIGTERM");
                stops.push((queued, took));
                std::thread::sleep(Duration::from_millis(200));
                relay.restart()?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        let socket = socket
            .join()
            .map_err(|_| anyhow::anyhow!("socket producer panicked"))?;
        let cli = cli
            .join()
            .map_err(|_| anyhow::anyhow!("CLI producer panicked"))?;
        result?;
        Ok((socket?, cli?, stops, duplicates))
    })?;
    agent.wait_drained(Duration::from_secs(60))?;
    let duplicates = duplicates + duplicates_seen(&relay)?;
    eprintln!(
        "{transport:?}: records resent after the SIGTERMs and skipped as duplicates: {duplicates}"
    );
    eprintln!(
        "{} records produced in {:?} ({} socket, {} CLI)",
        socket_seqs.len() + cli_seqs.len(),
        started.elapsed(),
        socket_seqs.len(),
        cli_seqs.len()
    );
    ensure!(
        stops.iter().any(|(queued, _)| *queued > 0),
        "no SIGTERM arrived with records in flight: {stops:?}"
    );

    let produced: BTreeSet<u64> = socket_seqs.iter().chain(&cli_seqs).copied().collect();
    ensure!(
        produced.len() == socket_seqs.len() + cli_seqs.len(),
        "the outbox handed out a sequence number twice"
    );
    let mut stored: BTreeMap<(String, u64), u32> = BTreeMap::new();
    for r in relay.stored_telemetry("board1")? {
        let seq = r["seq"].as_u64().context("record without seq")?;
        *stored.entry((device.clone(), seq)).or_default() += 1;
    }
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<u64> = produced
        .iter()
        .filter(|s| !stored.contains_key(&(device.clone(), **s)))
        .copied()
        .collect();
    ensure!(
        missing.is_empty(),
        "{} acknowledged records missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let extra: Vec<_> = stored
        .keys()
        .filter(|(_, s)| !produced.contains(s))
        .collect();
    ensure!(extra.is_empty(), "records nobody produced: {extra:?}");
    ensure!(agent.queued()? == 0, "the outbox is not empty");
    Ok(())
}

/// The relay's count of records resent by devices that it already held.
fn duplicates_seen(relay: &Relay) -> Result<u64> {
    let (code, body) = relay.http_get("/metrics", None)?;
    ensure!(code == 200, "GET /metrics: {code}");
    body.lines()
        .find_map(|l| l.strip_prefix("tether_telemetry_records_duplicate_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("no duplicate counter in:\n{body}"))
}

#[test]
fn a_request_in_progress_at_sigterm_is_answered_and_new_ones_are_refused() -> Result<()> {
    let mut relay = Relay::start()?;
    relay.tenant("acme")?;
    let agent = Agent::new("board1", &[])?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    let device = agent.device_id()?;
    let token = relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--api"])?
        .trim()
        .to_string();

    // A client that sends its request head and half its body, then stalls.
    let body = br#"{"add": ["drained"]}"#;
    let (first, rest) = body.split_at(body.len() / 2);
    let mut client = TcpStream::connect(("127.0.0.1", relay.http_port))?;
    client.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        client,
        "PUT /v1/devices/{device}/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    client.write_all(first)?;
    client.flush()?;
    std::thread::sleep(Duration::from_millis(300));

    let mut proc = relay.proc.take().context("relay not running")?;
    let st = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()?;
    ensure!(st.success(), "kill -TERM failed");
    // Stopping: the port no longer accepts connections, but the request in progress goes on.
    wait_until(Duration::from_secs(5), "HTTP port closed", || {
        TcpStream::connect(("127.0.0.1", relay.http_port)).is_err()
    })?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        proc.child.try_wait()?.is_none(),
        "the relay exited with a request in progress"
    );
    client.write_all(rest)?;
    let mut answer = String::new();
    client.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("drained"),
        "answer to the request in progress: {answer:?}\nrelay log:\n{}",
        tail_lines(&proc.log_text(), 20)
    );
    let exited = proc.terminate_status(Duration::from_secs(10));
    ensure!(
        exited.is_some_and(|s| s.code() == Some(0)),
        "relay exit after the drain: {exited:?}"
    );
    let shown = relay.device_json("board1")?;
    ensure!(
        shown.to_string().contains("drained"),
        "the answered change is not stored: {shown}"
    );
    Ok(())
}
