//! What a device or a caller sends that it should not: strings built to forge rows in an
//! operator's terminal (escape sequences, line breaks, 60 KB of them), time parameters that
//! are not times or are times in another RFC 3339 form than the store writes, and session
//! requests far longer than a command line.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;

/// Most bytes the relay keeps of a short reported string, and what ends a cut one (as
/// `tether_protocol::fleet` says).
const MAX_REPORTED_SHORT: usize = 256;
const TRUNCATED_MARKER: &str = "…[truncated]";

/// A string that clears the screen, homes the cursor, prints a forged device row and goes on
/// for 60 KB of `filler`.
fn forged(what: &str, filler: &str) -> String {
    let mut s = format!(
        "9.9.9\u{1b}[2J\u{1b}[H\r\nFAKE-{what} dev_000000000000 board9 acme accepted yes now\n\u{9b}31m\u{7f}"
    );
    while s.len() < 60_000 {
        s.push_str(filler);
    }
    s
}

/// `s` as the relay stores it: its first bytes (a char boundary: `forged` is ASCII there)
/// and the marker, within the limit.
fn bounded(s: &str) -> String {
    format!(
        "{}{TRUNCATED_MARKER}",
        &s[..MAX_REPORTED_SHORT - TRUNCATED_MARKER.len()]
    )
}

/// A fresh ed25519 key in `dir`.
fn keygen(dir: &Path) -> Result<PathBuf> {
    let key = dir.join("device_ed25519");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    ensure!(st.success(), "ssh-keygen failed");
    Ok(key)
}

/// The stock OpenSSH client on `key`, on subsystem `subsystem` as `user`, sending `input`.
fn subsystem(relay: &Relay, key: &Path, user: &str, subsystem: &str, input: &[u8]) -> Result<Run> {
    let mut cmd = ssh_with_key(relay, key, &["-s"], &format!("{user}@127.0.0.1"));
    cmd.arg(subsystem);
    run_with_timeout(cmd, Some(input), Duration::from_secs(30))
}

/// Whether `text` holds a character that would act on a terminal rather than show.
fn has_raw_control(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn forged_versions_and_inventory_are_bounded_and_print_as_one_escaped_row() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let token = relay.enroll_token("acme")?;
    let dir = tempfile::tempdir()?;
    let key = keygen(dir.path())?;

    // Enrollment with a 60 KB agent version, by hand: the real agent would never send one.
    // (Plain filler: an enrollment request is at most 64 KiB of JSON.)
    let version = forged("ENROLL", "A");
    let request = serde_json::json!({
        "protocol": 1, "token": token, "name": "board1", "agent_version": version,
    });
    let r = subsystem(
        &relay,
        &key,
        "tether-enroll",
        "tether-enroll",
        format!("{request}\n").as_bytes(),
    )?;
    ensure!(
        r.stdout.contains("\"enrolled\""),
        "enrollment: {} {}",
        r.stdout,
        r.stderr
    );

    // A report over the control channel on the device's key, with forged inventory strings
    // and a forged component state.
    let agent_version = forged("REPORT", "A\u{1b}[1A\n");
    let hostname = forged("HOST", "A\u{1b}[1A\n");
    let state = "running\u{1b}[0m\nFAKE-COMPONENT x 1 running";
    let frame_body = serde_json::json!({
        "type": "reported",
        "state": {
            "version": 0,
            "status": null,
            "components": [{
                "name": "app", "version": "1.0", "state": state, "errors": 0, "restarts": 0,
            }],
            "inventory": {
                "hostname": hostname, "kernel": "6.1\u{1b}]0;owned\u{7}", "arch": "x86_64",
                "memory_bytes": 1_048_576, "agent_version": agent_version,
            },
        },
    })
    .to_string();
    let mut frame = ((frame_body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(frame_body.as_bytes());
    let r = subsystem(&relay, &key, "tether-link", "tether-control", &frame)?;
    ensure!(r.status.is_some(), "ssh did not end: {}", r.stderr);
    wait_until(Duration::from_secs(10), "the report is stored", || {
        relay
            .device_json("board1")
            .is_ok_and(|d| !d["inventory"].is_null())
    })
    .with_context(|| relay.log())?;
    ensure!(
        relay.log().contains("inventory.agent_version"),
        "the cut is not logged: {}",
        tail_lines(&relay.log(), 20)
    );

    // JSON: the exact values, bounded.
    let list: serde_json::Value =
        serde_json::from_str(&relay.admin_ok(&["device", "list", "--json"])?)?;
    ensure!(
        list[0]["agent_version"] == bounded(&version).as_str(),
        "stored enrollment version: {}",
        list[0]["agent_version"]
    );
    let shown = relay.device_json("board1")?;
    ensure!(shown["agent_version"] == bounded(&version).as_str());
    ensure!(
        shown["inventory"]["agent_version"] == bounded(&agent_version).as_str(),
        "stored inventory version: {}",
        shown["inventory"]["agent_version"]
    );
    ensure!(shown["inventory"]["hostname"] == bounded(&hostname).as_str());
    ensure!(
        shown["components"][0]["state"] == state,
        "a short state is kept whole"
    );

    // Text: one row, nothing raw, the forgery visible as escapes.
    let table = relay.admin_ok(&["device", "list"])?;
    ensure!(
        !has_raw_control(&table),
        "raw control characters: {table:?}"
    );
    let lines: Vec<&str> = table.lines().collect();
    ensure!(lines.len() == 2, "header and one row expected: {table:?}");
    ensure!(
        lines[1].starts_with("dev_") && lines[1].contains(r"9.9.9\x1b[2J\x1b[H\r\nFAKE-ENROLL"),
        "row: {:?}",
        lines[1]
    );
    ensure!(
        lines[1].len() < 4 * MAX_REPORTED_SHORT,
        "row of {} bytes",
        lines[1].len()
    );

    let text = relay.admin_ok(&["device", "show", "board1"])?;
    ensure!(!has_raw_control(&text), "raw control characters: {text:?}");
    ensure!(
        !text
            .lines()
            .any(|l| l.starts_with("FAKE") || l.starts_with('A')),
        "a forged line: {text}"
    );
    let line = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .map(str::to_string)
            .with_context(|| format!("no {label:?} line in {text}"))
    };
    ensure!(line("agent version:")?.contains(r"9.9.9\x1b[2J\x1b[H\r\nFAKE-ENROLL"));
    ensure!(line("agent:")?.contains(r"\r\nFAKE-REPORT"));
    ensure!(line("hostname:")?.contains(r"\r\nFAKE-HOST"));
    ensure!(line("kernel:")?.contains(r"6.1\x1b]0;owned\x07"));
    ensure!(line("  app 1.0 running")?.contains(r"running\x1b[0m\nFAKE-COMPONENT"));
    for l in text.lines() {
        ensure!(
            l.len() < 4 * MAX_REPORTED_SHORT,
            "line of {} bytes",
            l.len()
        );
    }
    let state_text = relay.admin_ok(&["device", "state", "board1"])?;
    ensure!(
        !has_raw_control(&state_text) && !state_text.lines().any(|l| l.starts_with("FAKE")),
        "device state: {state_text:?}"
    );
    Ok(())
}

/// `at` (`YYYY-MM-DDTHH:MM:SSZ`, as the store writes) as the same instant in other RFC 3339
/// forms: at local midnight's hour with a negative offset, at 23h with a positive one (its
/// `+` encoded for a query string), and in lower case.
fn other_forms(at: &str) -> Result<[String; 3]> {
    let (date, rest) = at.split_once('T').context("no T")?;
    let hour: u32 = rest.get(..2).context("no hour")?.parse()?;
    let minutes_seconds = rest.get(3..8).context("no minutes")?;
    Ok([
        format!("{date}T00:{minutes_seconds}-{hour:02}:00"),
        format!("{date}T23:{minutes_seconds}%2B{:02}:00", 23 - hour),
        at.to_lowercase(),
    ])
}

#[test]
fn time_parameters_are_parsed_refused_by_name_and_compared_as_times() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    // Enrolled only: the telemetry endpoints need a device to look up before their times.
    let agent = Agent::new("board1", &[])?;
    let r = agent.enroll(&relay, Transport::Tcp, "acme")?;
    ensure!(r.status == Some(0), "enroll: {}", r.stderr);
    let api = relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--api"])?
        .trim()
        .to_string();
    let get = |path: &str| -> Result<(u16, serde_json::Value)> {
        let (code, body) = relay.http_get(path, Some(&api))?;
        Ok((code, serde_json::from_str(&body).unwrap_or_default()))
    };

    for (path, param) in [
        ("/v1/audit?since=garbage", "since"),
        ("/v1/audit?since=2026-01-01", "since"),
        ("/v1/audit?since=2026-13-01T00:00:00Z", "since"),
        ("/v1/devices/board1/telemetry?from=garbage", "from"),
        ("/v1/devices/board1/telemetry?to=2026-01-01T00:00:00", "to"),
        ("/v1/devices/board1/events?from=tomorrow", "from"),
        ("/v1/devices/board1/logs?to=1969-12-31T23:59:59Z", "to"),
    ] {
        let (code, body) = get(path)?;
        ensure!(
            code == 400
                && body["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with(&format!("{param}="))),
            "{path}: {code} {body}"
        );
    }
    let (code, body) = get("/v1/audit?since=2026-01-01T00:00:00+02:00")?;
    ensure!(
        code == 400 && body["error"].as_str().is_some_and(|e| e.contains("%2B")),
        "an unencoded '+': {code} {body}"
    );
    let (code, body) = get("/v1/devices/board1/telemetry?from=2026-01-01t00:00:00.5%2B02:00")?;
    ensure!(code == 200, "a good time with an offset: {code} {body}");

    // Two entries of the tenant a second apart at least (enrollments); `since` the later one,
    // in forms that sort differently from the stored form as text, finds exactly the later.
    std::thread::sleep(Duration::from_millis(1100));
    let second = Agent::new("board2", &[])?;
    let r = second.enroll(&relay, Transport::Tcp, "acme")?;
    ensure!(r.status == Some(0), "enroll: {}", r.stderr);
    let (code, all) = get("/v1/audit")?;
    ensure!(code == 200, "{code} {all}");
    let all = all.as_array().cloned().unwrap_or_default();
    let last = all.last().context("no audit entries")?;
    let at = last["at"].as_str().context("no at")?.to_string();
    let want: Vec<i64> = all
        .iter()
        .filter(|e| e["at"].as_str().is_some_and(|a| a >= at.as_str()))
        .filter_map(|e| e["id"].as_i64())
        .collect();
    ensure!(
        !want.is_empty() && want.len() < all.len(),
        "entries should straddle {at}: {all:?}"
    );
    for since in other_forms(&at)? {
        let (code, body) = get(&format!("/v1/audit?since={since}"))?;
        let got: Vec<i64> = body
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["id"].as_i64()).collect())
            .unwrap_or_default();
        ensure!(
            code == 200 && got == want,
            "since={since}: {got:?}, not {want:?}"
        );
    }

    // The CLI's --since: a usage error naming it, and the same comparison.
    let r = relay.admin(&["audit", "list", "--since", "garbage"])?;
    ensure!(
        r.status == Some(2) && r.stderr.contains("--since"),
        "{:?} {}",
        r.status,
        r.stderr
    );
    let [negative, _, lower] = other_forms(&at)?;
    for since in [negative, lower] {
        let out = relay.admin_ok(&[
            "audit", "list", "--tenant", "acme", "--since", &since, "--json",
        ])?;
        let entries: serde_json::Value = serde_json::from_str(&out)?;
        let got: Vec<i64> = entries
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["id"].as_i64()).collect())
            .unwrap_or_default();
        ensure!(got == want, "--since {since}: {got:?}, not {want:?}");
    }
    Ok(())
}

/// A command of 100 KiB runs; one whose request to the device would pass the 256 KiB a
/// control frame may hold is refused with a message that says so; a megabyte of command line
/// gets an error too; and the board answers the next session as if nothing happened.
#[test]
fn command_lines_of_hundreds_of_kilobytes_run_or_are_refused_clearly() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let port = s.engineer.ssh_port.to_string();
    let exec = |args: &[&str]| -> Result<Run> {
        let mut all = vec!["-p", &port, "board1@127.0.0.1"];
        all.extend_from_slice(args);
        // The error of a run names its arguments: not hundreds of kilobytes of them.
        run_with_timeout(s.engineer.ssh_cmd(&all), None, Duration::from_secs(60)).map_err(|e| {
            let text = e.to_string();
            let end = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
            anyhow::anyhow!("{}…", &text[..end])
        })
    };

    let long = "x".repeat(100 * 1024);
    let r = exec(&["printf", "%s", &long, "|", "wc", "-c"])?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == (100 * 1024).to_string(),
        "a 100 KiB command: {:?} {:?} {}",
        r.status,
        r.stdout,
        bounded(&r.stderr)
    );

    // Control characters take six bytes each in the request's JSON: 100 KiB of them is 600.
    let controls = "\u{1}".repeat(100 * 1024);
    let r = exec(&["echo", &controls])?;
    ensure!(
        r.status == Some(255) && r.stderr.contains("request too long for the device"),
        "a 600 KiB request: {:?} {}",
        r.status,
        bounded(&r.stderr)
    );

    let chunk = "y".repeat(100 * 1024);
    let mut args = vec!["echo"];
    args.extend(std::iter::repeat_n(chunk.as_str(), 10));
    let r = exec(&args)?;
    ensure!(
        r.status != Some(0) && !r.stdout.contains("yyyy"),
        "a 1 MB command line ran: {:?} {}",
        r.status,
        bounded(&r.stderr)
    );

    let r = s.engineer.exec("board1", "echo still")?;
    ensure!(
        r.status == Some(0) && r.stdout == "still\n",
        "the board after them: {:?} {:?} {}",
        r.status,
        r.stdout,
        r.stderr
    );
    Ok(())
}
