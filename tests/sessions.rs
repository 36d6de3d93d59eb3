//! Session recording: every relay-terminated session is recorded. A terminal session replays
//! to exactly what the engineer saw (by `relay session play`, and by asciinema itself when
//! installed), resizes are in the recording, an engineer who vanishes still leaves a complete,
//! closed record, execs are recorded as command and exit status, sftp/scp as file operations,
//! and recordings are tenant-scoped in the API and expire with the tenant's retention.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;

/// The relay's sessions, newest first.
fn sessions(relay: &Relay) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&relay.admin_ok(&["session", "list", "--json"])?)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Waits until `n` sessions exist and all have ended.
fn ended_sessions(relay: &Relay, n: usize) -> Result<Vec<Value>> {
    wait_until(Duration::from_secs(15), "sessions to end", || {
        sessions(relay).is_ok_and(|s| s.len() == n && s.iter().all(|s| !s["ended_at"].is_null()))
    })
    .with_context(|| format!("sessions: {:?}", sessions(relay)))?;
    sessions(relay)
}

/// The cast file of a session (header and events).
fn cast_lines(relay: &Relay, id: &str) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(relay.data_dir().join("sessions").join(format!("{id}.cast")))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("cast line {l:?}")))
        .collect()
}

#[test]
fn a_terminal_session_replays_to_exactly_what_the_engineer_saw() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    // -tt with a pipe for stdin: a remote pty, and ssh's stdout is exactly the channel's data.
    let cmd = s.engineer.ssh_cmd(&[
        "-p",
        &s.engineer.ssh_port.to_string(),
        "-tt",
        "board1@127.0.0.1",
    ]);
    let seen = run_with_timeout(
        cmd,
        Some(b"echo rec-$((6*7)) \xe2\x82\xac\nexit 0\n"),
        Duration::from_secs(30),
    )?;
    ensure!(seen.status == Some(0), "ssh: {}", seen.stderr);
    ensure!(seen.stdout.contains("rec-42 \u{20ac}"), "{}", seen.stdout);

    let all = ended_sessions(&s.relay, 1)?;
    let rec = &all[0];
    ensure!(
        rec["kind"] == "shell"
            && rec["engineer"] == "alice"
            && rec["device"] == "board1"
            && rec["tenant"] == "acme"
            && rec["recorded"] == true
            && rec["exit_status"] == 0
            && rec["end_reason"] == "exited",
        "{rec:#}"
    );
    ensure!(
        rec["bytes_out"].as_u64() == Some(seen.stdout.len() as u64),
        "bytes_out {} vs {} seen",
        rec["bytes_out"],
        seen.stdout.len()
    );
    let id = rec["id"].as_str().context("session id")?.to_string();

    let played = s.relay.admin(&[
        "session",
        "play",
        &id,
        "--speed",
        "1000",
        "--max-pause",
        "0",
    ])?;
    ensure!(played.status == Some(0), "play: {}", played.stderr);
    ensure!(
        played.stdout == seen.stdout,
        "replay differs:\n{:?}\nvs seen\n{:?}",
        played.stdout,
        seen.stdout
    );

    // The file is asciicast v2 with output events only (input is not recorded by default).
    let lines = cast_lines(&s.relay, &id)?;
    ensure!(lines[0]["version"] == 2, "{}", lines[0]);
    ensure!(
        lines[1..].iter().all(|e| e[1] == "o"),
        "non-output events: {lines:?}"
    );
    if Command::new("asciinema").arg("--version").output().is_ok() {
        let path = s
            .relay
            .data_dir()
            .join("sessions")
            .join(format!("{id}.cast"));
        let mut cat = Command::new("asciinema");
        cat.arg("cat").arg(&path);
        let r = run_with_timeout(cat, None, Duration::from_secs(30))?;
        ensure!(r.status == Some(0), "asciinema cat: {}", r.stderr);
        ensure!(
            r.stdout == seen.stdout,
            "asciinema reads something else: {:?}",
            r.stdout
        );
    } else {
        eprintln!("asciinema not installed: checked with relay session play only");
    }

    // The API serves the same file to the tenant, and nothing to another tenant.
    let token = s
        .relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--api"])?
        .trim()
        .to_string();
    let (code, body) = s
        .relay
        .http_get(&format!("/v1/sessions/{id}/cast"), Some(&token))?;
    ensure!(code == 200, "{code} {body}");
    let first: Value = serde_json::from_str(body.lines().next().unwrap_or_default())?;
    ensure!(first["version"] == 2, "{body}");
    let (code, body) = s.relay.http_get("/v1/sessions", Some(&token))?;
    ensure!(code == 200 && body.contains(&id), "{code} {body}");
    s.relay.tenant("globex")?;
    let other = s
        .relay
        .admin_ok(&["token", "create", "--tenant", "globex", "--api"])?
        .trim()
        .to_string();
    let (code, body) = s.relay.http_get("/v1/sessions", Some(&other))?;
    ensure!(code == 200 && body.trim() == "[]", "{code} {body}");
    for path in [
        format!("/v1/sessions/{id}"),
        format!("/v1/sessions/{id}/cast"),
    ] {
        let (code, body) = s.relay.http_get(&path, Some(&other))?;
        ensure!(code == 404, "{path} for another tenant: {code} {body}");
    }

    // Retention: a session older than the tenant keeps is deleted with its recording at the
    // next sweep (one runs at every relay start).
    let mut relay = s.relay;
    relay.admin_ok(&["tenant", "retention", "acme", "--session-days", "1"])?;
    {
        let db = rusqlite::Connection::open(relay.data_dir().join("relay.db"))?;
        db.execute(
            "UPDATE sessions SET started_ms = started_ms - 2 * 86400000",
            [],
        )?;
    }
    relay.restart()?;
    wait_until(Duration::from_secs(10), "the session to expire", || {
        sessions(&relay).is_ok_and(|s| s.is_empty())
    })?;
    ensure!(
        !relay
            .data_dir()
            .join("sessions")
            .join(format!("{id}.cast"))
            .exists(),
        "the recording outlived its session"
    );
    Ok(())
}

#[test]
fn resizes_are_recorded_and_a_vanished_engineer_leaves_a_closed_record() -> Result<()> {
    if !Tmux::available() {
        eprintln!("skipping: tmux not installed");
        return Ok(());
    }
    let s = Setup::new(Transport::WebSocket)?;
    let ssh = format!(
        "exec ssh -F {} -p {} -tt board1@127.0.0.1",
        s.engineer.ssh_config.display(),
        s.engineer.ssh_port
    );
    let t = Tmux::new(&ssh, 90, 25)?;
    t.send(&["stty size", "Enter"])?;
    t.wait_for("25 90")?;
    t.tmux(&["resize-window", "-t", "0", "-x", "100", "-y", "30"])?;
    std::thread::sleep(Duration::from_millis(300));
    t.send(&["clear; stty size; echo before-$((6*7))", "Enter"])?;
    t.wait_for("before-42")?;
    // The engineer's machine goes away: the ssh client dies without a goodbye.
    let pid = t.tmux(&["display-message", "-p", "-t", "0", "#{pane_pid}"])?;
    let st = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
    ensure!(st.success(), "kill ssh {pid}");

    let all = ended_sessions(&s.relay, 1)?;
    let rec = &all[0];
    ensure!(
        rec["end_reason"] == "closed by engineer" && rec["kind"] == "shell",
        "{rec:#}"
    );
    ensure!(rec["width"] == 90 && rec["height"] == 25, "{rec:#}");
    let id = rec["id"].as_str().context("id")?;
    let lines = cast_lines(&s.relay, id)?;
    ensure!(
        lines[0]["width"] == 90 && lines[0]["height"] == 25,
        "{}",
        lines[0]
    );
    ensure!(
        lines.iter().any(|e| e[1] == "r" && e[2] == "100x30"),
        "no resize event in {lines:?}"
    );
    let output: String = lines[1..]
        .iter()
        .filter(|e| e[1] == "o")
        .filter_map(|e| e[2].as_str())
        .collect();
    ensure!(
        output.contains("30 100") && output.contains("before-42"),
        "{output:?}"
    );
    let trail = s.relay.admin_ok(&["audit", "list", "--json"])?;
    ensure!(
        trail.contains("session.close") && trail.contains(id),
        "{trail}"
    );
    Ok(())
}

#[test]
fn execs_and_file_transfers_are_recorded() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let r = s.engineer.exec("board1", "echo hi; exit 3")?;
    ensure!(r.status == Some(3), "{}", r.stderr);
    let all = ended_sessions(&s.relay, 1)?;
    ensure!(
        all[0]["kind"] == "exec"
            && all[0]["command"] == "echo hi; exit 3"
            && all[0]["exit_status"] == 3
            && all[0]["bytes_out"] == 3
            && all[0]["recorded"] == false,
        "{:#}",
        all[0]
    );

    let dir = tempfile::tempdir()?;
    let local = dir.path().join("payload.bin");
    std::fs::write(&local, pseudo_random(200_000, 7))?;
    let remote = dir.path().join("on-device.bin");
    let back = dir.path().join("back.bin");
    let batch = format!(
        "put {} {}\nget {} {}\nrename {} {}.moved\n",
        local.display(),
        remote.display(),
        remote.display(),
        back.display(),
        remote.display(),
        remote.display()
    );
    let r = s.engineer.sftp_batch("board1", &batch)?;
    ensure!(r.status == Some(0), "sftp: {}", r.stderr);
    // OpenSSH's scp speaks sftp too.
    let r = s.engineer.scp(&[
        local.to_str().context("path")?,
        &format!("board1@127.0.0.1:{}/scp.bin", dir.path().display()),
    ])?;
    ensure!(r.status == Some(0), "scp: {}", r.stderr);

    let all = ended_sessions(&s.relay, 3)?;
    let sftp: Vec<&Value> = all.iter().filter(|s| s["kind"] == "sftp").collect();
    ensure!(sftp.len() == 2, "{all:#?}");
    let files: Vec<Value> = sftp
        .iter()
        .flat_map(|s| s["files"].as_array().cloned().unwrap_or_default())
        .collect();
    let has = |op: &str, path: String, bytes: u64| {
        files
            .iter()
            .any(|f| f["op"] == op && f["path"] == path.as_str() && f["bytes"] == bytes)
    };
    ensure!(
        has("upload", remote.display().to_string(), 200_000),
        "{files:#?}"
    );
    ensure!(
        has("download", remote.display().to_string(), 200_000),
        "{files:#?}"
    );
    ensure!(
        has(
            "upload",
            format!("{}/scp.bin", dir.path().display()),
            200_000
        ),
        "{files:#?}"
    );
    ensure!(
        files.iter().any(|f| f["op"] == "rename"
            && f["to"] == format!("{}.moved", remote.display()).as_str()
            && f["ok"] == true),
        "{files:#?}"
    );
    let shown = s
        .relay
        .admin_ok(&["session", "show", sftp[0]["id"].as_str().context("id")?])?;
    ensure!(shown.contains("file "), "{shown}");
    // Filters.
    let v: Value = serde_json::from_str(&s.relay.admin_ok(&[
        "session", "list", "--device", "board1", "--user", "alice", "--json",
    ])?)?;
    ensure!(v.as_array().map(Vec::len) == Some(3), "{v}");
    let v: Value = serde_json::from_str(
        &s.relay
            .admin_ok(&["session", "list", "--user", "nobody", "--json"])?,
    )?;
    ensure!(v.as_array().map(Vec::len) == Some(0), "{v}");
    let r = s
        .relay
        .admin(&["session", "play", all[2]["id"].as_str().context("id")?])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("no terminal recording"),
        "{}",
        r.stderr
    );
    Ok(())
}
