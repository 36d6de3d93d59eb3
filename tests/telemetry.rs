//! Telemetry store-and-forward: records queued on the device reach the relay's store exactly
//! once, across relay outages, agent kills and reconnects; a full outbox drops the oldest and
//! says so.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;

/// Every stored record of `device`, oldest first.
fn stored(relay: &Relay, device: &str) -> Result<Vec<serde_json::Value>> {
    relay.stored_telemetry(device)
}

fn wait_stored(relay: &Relay, device: &str, n: usize) -> Result<Vec<serde_json::Value>> {
    let mut last = Vec::new();
    let found = wait_until(
        Duration::from_secs(30),
        &format!("{n} records stored"),
        || {
            last = stored(relay, device).unwrap_or_default();
            last.len() >= n
        },
    );
    found.map(|_| last)
}

fn send(agent: &Agent, topic: &str, value: &str) -> Result<u64> {
    let r = agent.cmd(&["telemetry", "send", topic, value])?;
    ensure!(
        r.status == Some(0),
        "telemetry send {topic} {value}: {}",
        r.stderr
    );
    Ok(r.stdout.trim().parse()?)
}

fn exactly_once(transport: Transport) -> Result<()> {
    let s = Setup::new(transport)?;
    let mut seqs = Vec::new();
    for i in 0..120 {
        seqs.push(send(
            &s.agent,
            "sensors/temp",
            &format!("{{\"i\":{i},\"c\":21.5}}"),
        )?);
    }
    let r = s.agent.cmd(&[
        "telemetry",
        "send",
        "sensors/temp",
        "7",
        "--ts",
        "2026-01-02T03:04:05.678Z",
    ])?;
    ensure!(r.status == Some(0), "send with --ts: {}", r.stderr);
    let r = s.agent.cmd(&[
        "notify",
        "--level",
        "critical",
        "door open",
        "--data",
        "{\"door\":2}",
    ])?;
    ensure!(r.status == Some(0), "notify: {}", r.stderr);
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers not increasing: {seqs:?}"
    );

    let records = wait_stored(&s.relay, "board1", 122)?;
    std::thread::sleep(Duration::from_millis(500));
    let records = if stored(&s.relay, "board1")?.len() == records.len() {
        records
    } else {
        stored(&s.relay, "board1")?
    };
    ensure!(
        records.len() == 122,
        "stored {} records, expected 122",
        records.len()
    );
    let unique: BTreeSet<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    ensure!(unique.len() == 122, "duplicate sequence numbers");
    for (i, r) in records.iter().take(120).enumerate() {
        ensure!(
            r["payload"]["i"] == i && r["topic"] == "sensors/temp" && r["kind"] == "metric",
            "record {i}: {r}"
        );
    }
    ensure!(
        records[120]["ts"] == "2026-01-02T03:04:05.678Z",
        "timestamp kept: {}",
        records[120]
    );
    let event = &records[121];
    ensure!(
        event["kind"] == "event" && event["level"] == "critical",
        "event {event}"
    );
    ensure!(
        event["payload"]["message"] == "door open" && event["payload"]["data"]["door"] == 2,
        "event {event}"
    );
    // The device deleted what the relay acknowledged.
    wait_until(Duration::from_secs(10), "outbox drained", || {
        s.agent
            .cmd(&["telemetry", "status", "--json"])
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.stdout).ok())
            .is_some_and(|st| st["queued_rows"] == 0 && st["acked_upto"] == 122)
    })?;

    // The relay counted what it committed, for Prometheus.
    let (code, page) = s.relay.http_get("/metrics", None)?;
    ensure!(code == 200, "GET /metrics: {code} {page}");
    let value = |series: &str| -> Option<f64> {
        page.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    };
    ensure!(
        value("tether_devices_online") == Some(1.0),
        "devices online:\n{page}"
    );
    ensure!(
        value("tether_telemetry_records_ingested_total{kind=\"metric\"}") == Some(121.0)
            && value("tether_telemetry_records_ingested_total{kind=\"event\"}") == Some(1.0),
        "records ingested per kind:\n{page}"
    );
    ensure!(
        value("tether_telemetry_batches_acked_total").is_some_and(|n| n >= 1.0)
            && value("tether_telemetry_ack_latency_seconds_count").is_some_and(|n| n >= 1.0)
            && value("tether_telemetry_sink_errors_total") == Some(0.0),
        "batches, latency and sink errors:\n{page}"
    );
    let label = match transport {
        Transport::Tcp => "tcp",
        Transport::WebSocket => "websocket",
    };
    for direction in ["in", "out"] {
        let series =
            format!("tether_link_bytes_total{{transport=\"{label}\",direction=\"{direction}\"}}");
        ensure!(
            value(&series).is_some_and(|n| n > 1000.0),
            "{series}:\n{page}"
        );
    }
    Ok(())
}

#[test]
fn records_reach_the_relay_exactly_once_over_tcp() -> Result<()> {
    exactly_once(Transport::Tcp)
}

#[test]
fn records_reach_the_relay_exactly_once_over_websocket() -> Result<()> {
    exactly_once(Transport::WebSocket)
}

#[test]
fn records_survive_relay_outages_and_agent_kills() -> Result<()> {
    let mut s = Setup::new(Transport::Tcp)?;
    s.relay.stop()?;
    for i in 0..40 {
        send(&s.agent, "t", &i.to_string())?;
    }
    // The agent dies hard while the relay is away; the records are on disk.
    if let Some(mut p) = s.agent.proc.take() {
        p.child.kill()?;
        let _ = p.child.wait();
    }
    let st: serde_json::Value =
        serde_json::from_str(&s.agent.cmd(&["telemetry", "status", "--json"])?.stdout)?;
    ensure!(st["queued_rows"] == 40, "queued after kill: {st}");
    s.relay.restart()?;
    s.agent.start()?;
    wait_stored(&s.relay, "board1", 40)?;
    // Again, with the relay killed and restarted while more records flow.
    for i in 40..80 {
        send(&s.agent, "t", &i.to_string())?;
        if i == 55 {
            s.relay.stop()?;
        }
        if i == 65 {
            s.relay.restart()?;
        }
    }
    let records = wait_stored(&s.relay, "board1", 80)?;
    std::thread::sleep(Duration::from_secs(1));
    let records = stored(&s.relay, "board1").unwrap_or(records);
    let values: Vec<i64> = records
        .iter()
        .filter_map(|r| r["payload"].as_i64())
        .collect();
    ensure!(
        values == (0..80).collect::<Vec<i64>>(),
        "stored values {values:?}"
    );
    Ok(())
}

#[test]
fn a_full_outbox_keeps_the_newest_and_reports_the_drop() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::with_extra_config("board1", &[], "telemetry:\n  max_rows: 10\n")?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    for i in 0..25 {
        send(&agent, "t", &i.to_string())?;
    }
    let st: serde_json::Value =
        serde_json::from_str(&agent.cmd(&["telemetry", "status", "--json"])?.stdout)?;
    ensure!(
        st["queued_rows"] == 10 && st["dropped_total"] == 15,
        "status {st}"
    );
    agent.start()?;
    let records = wait_stored(&relay, "board1", 10)?;
    let values: Vec<i64> = records
        .iter()
        .filter_map(|r| r["payload"].as_i64())
        .collect();
    // The report made room for itself by dropping one more of the oldest.
    ensure!(values == (16..25).collect::<Vec<i64>>(), "kept {values:?}");
    let report = records.last().cloned().unwrap_or_default();
    ensure!(
        report["topic"] == "tether/outbox/dropped" && report["level"] == "warning",
        "report {report}"
    );
    ensure!(
        report["payload"]["dropped"] == 16 && report["payload"]["dropped_total"] == 16,
        "report {report}"
    );
    Ok(())
}

#[test]
fn bad_producer_input_is_refused_clearly() -> Result<()> {
    let agent = Agent::with_extra_config("board1", &[], "telemetry:\n  max_payload: 100\n")?;
    let r = agent.cmd(&["telemetry", "send", "t", "not json"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("neither a number nor JSON"),
        "{}",
        r.stderr
    );
    let big = format!("\"{}\"", "x".repeat(200));
    let r = agent.cmd(&["telemetry", "send", "t", &big])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("max_payload"),
        "{}",
        r.stderr
    );
    let r = agent.cmd(&["telemetry", "send", "t", "1", "--ts", "yesterday"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("--ts"),
        "{}",
        r.stderr
    );
    let r = agent.cmd(&["notify", "--level", "bad", "x"])?;
    ensure!(r.status == Some(2), "bad level exit {:?}", r.status);
    let st: serde_json::Value =
        serde_json::from_str(&agent.cmd(&["telemetry", "status", "--json"])?.stdout)?;
    ensure!(st["queued_rows"] == 0, "refused input was queued: {st}");

    // Batch mode: bad lines are refused by line number, the good ones around them queued.
    let input = format!(
        "{{\"topic\":\"a\",\"value\":1}}\n{{\"topic\":\"a\",\"value\":\n\n{{\"topic\":\"a\",\"kind\":\"blob\",\"value\":1}}\n{{\"topic\":\"a\",\"value\":{big}}}\n{{\"topic\":\"a\",\"value\":5,\"ts\":\"2026-01-01T00:00:00Z\"}}\n"
    );
    let mut cmd = std::process::Command::new(bin_dir()?.join("agent"));
    cmd.arg("--config")
        .arg(&agent.config)
        .args(["telemetry", "send", "--batch"]);
    let r = run_with_timeout(cmd, Some(input.as_bytes()), Duration::from_secs(30))?;
    let answers: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(r.status == Some(1), "batch exit {:?}", r.status);
    ensure!(
        answers.len() == 5,
        "one answer per non-empty line: {}",
        r.stdout
    );
    ensure!(
        answers[0]["seq"].is_u64() && answers[4]["seq"].is_u64(),
        "{}",
        r.stdout
    );
    for (i, line, what) in [(1, 2, "malformed"), (2, 4, "blob"), (3, 5, "max_payload")] {
        let e = answers[i]["error"].as_str().unwrap_or_default();
        ensure!(
            e.starts_with(&format!("line {line}: ")) && e.contains(what),
            "answer {i}: {e}"
        );
    }
    ensure!(
        r.stderr.contains("stdin line 4") && r.stderr.contains("3 of 6 lines refused"),
        "{}",
        r.stderr
    );
    let st: serde_json::Value =
        serde_json::from_str(&agent.cmd(&["telemetry", "status", "--json"])?.stdout)?;
    ensure!(st["queued_rows"] == 2, "good batch lines queued: {st}");
    Ok(())
}

#[test]
fn the_system_metrics_collector_reports_this_machine() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent =
        Agent::with_extra_config("board1", &[], "telemetry:\n  system_metrics_interval: 1s\n")?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    let mut topics = BTreeSet::new();
    let mut records = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "two rounds of system metrics",
        || {
            records = stored(&relay, "board1").unwrap_or_default();
            topics = records
                .iter()
                .filter_map(|r| r["topic"].as_str().map(String::from))
                .collect();
            records
                .iter()
                .filter(|r| r["topic"] == "system/cpu")
                .count()
                >= 2
                && topics.contains("system/disk")
        },
    )?;
    for t in [
        "system/cpu",
        "system/memory",
        "system/load",
        "system/uptime",
        "system/disk",
    ] {
        ensure!(topics.contains(t), "no {t} in {topics:?}");
    }
    let last = |topic: &str| {
        records
            .iter()
            .rev()
            .find(|r| r["topic"] == topic)
            .map(|r| r["payload"].clone())
            .unwrap_or_default()
    };
    let cpu = last("system/cpu");
    ensure!(
        cpu["cores"].as_u64().is_some_and(|n| n >= 1)
            && cpu["usage_pct"]
                .as_f64()
                .is_some_and(|u| (0.0..=100.0).contains(&u)),
        "cpu {cpu}"
    );
    let mem = last("system/memory");
    ensure!(
        mem["total_bytes"].as_u64().is_some_and(|n| n > 1 << 20)
            && mem["used_bytes"].as_u64() <= mem["total_bytes"].as_u64(),
        "memory {mem}"
    );
    ensure!(
        last("system/uptime")["seconds"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "uptime"
    );
    ensure!(
        records.iter().all(|r| r["kind"] == "metric"),
        "system metrics are metrics"
    );
    Ok(())
}

#[test]
fn the_producer_socket_acks_each_line_and_isolates_bad_ones() -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let s = Setup::new(Transport::Tcp)?;
    let sock = s.agent.dir.path().join("state/telemetry.sock");
    wait_until(Duration::from_secs(10), "telemetry socket", || {
        sock.exists()
    })?;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock)?.permissions()) & 0o777;
    ensure!(mode == 0o660, "socket mode {mode:o}");
    let mut good = std::os::unix::net::UnixStream::connect(&sock)?;
    let mut bad = std::os::unix::net::UnixStream::connect(&sock)?;
    good.set_read_timeout(Some(Duration::from_secs(20)))?;
    bad.set_read_timeout(Some(Duration::from_secs(20)))?;
    // One burst of 1000 lines, one of them broken, plus an event.
    let mut burst = String::new();
    for i in 0..1000 {
        if i == 500 {
            burst.push_str("{\"topic\": \"t\", \"value\": \n");
        } else {
            burst.push_str(&format!("{{\"topic\":\"bulk\",\"value\":{i}}}\n"));
        }
    }
    burst.push_str("{\"kind\":\"event\",\"level\":\"warning\",\"topic\":\"door\",\"value\":{\"open\":true},\"ts\":\"2026-05-06T07:08:09.010Z\"}\n");
    good.write_all(burst.as_bytes())?;
    bad.write_all(b"{\"kind\":\"blob\",\"topic\":\"t\",\"value\":1}\n{\"kind\":\"event\",\"topic\":\"t\",\"value\":1}\n")?;
    let mut answers = Vec::new();
    let mut reader = BufReader::new(good.try_clone()?);
    for _ in 0..1001 {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        answers.push(serde_json::from_str::<serde_json::Value>(&line)?);
    }
    ensure!(
        answers[500]["error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed")),
        "answer 500: {}",
        answers[500]
    );
    let seqs: Vec<u64> = answers.iter().filter_map(|a| a["seq"].as_u64()).collect();
    ensure!(
        seqs.len() == 1000 && seqs.windows(2).all(|w| w[0] < w[1]),
        "{} sequence numbers",
        seqs.len()
    );
    let mut bad_reader = BufReader::new(bad.try_clone()?);
    let mut line = String::new();
    bad_reader.read_line(&mut line)?;
    ensure!(line.contains("blob"), "unknown kind answer {line}");
    line.clear();
    bad_reader.read_line(&mut line)?;
    ensure!(line.contains("level"), "event without level answer {line}");

    let records = wait_stored(&s.relay, "board1", 1000)?;
    ensure!(records.len() == 1000, "stored {}", records.len());
    let values: Vec<i64> = records
        .iter()
        .take(999)
        .filter_map(|r| r["payload"].as_i64())
        .collect();
    let expected: Vec<i64> = (0..1000).filter(|i| *i != 500).collect();
    ensure!(values == expected, "bulk values differ");
    let event = &records[999];
    ensure!(
        event["level"] == "warning" && event["ts"] == "2026-05-06T07:08:09.010Z",
        "event {event}"
    );
    Ok(())
}

#[test]
fn the_api_serves_telemetry_events_and_logs_by_tenant() -> Result<()> {
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
    for i in 0..5 {
        send(&s.agent, "temp", &i.to_string())?;
    }
    send(&s.agent, "humidity", "40")?;
    let r = s
        .agent
        .cmd(&["telemetry", "send", "--kind", "log", "app", "\"started\""])?;
    ensure!(r.status == Some(0), "{}", r.stderr);
    for level in ["info", "critical"] {
        let r = s
            .agent
            .cmd(&["notify", "--level", level, &format!("{level} happened")])?;
        ensure!(r.status == Some(0), "{}", r.stderr);
    }
    wait_stored(&s.relay, "board1", 9)?;
    let get = |path: &str, t: &str| -> Result<(u16, serde_json::Value)> {
        let (code, body) = s.relay.http_get(path, Some(t))?;
        Ok((
            code,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        ))
    };
    let (code, page) = get("/v1/devices/board1/telemetry?topic=temp&limit=3", &token)?;
    ensure!(
        code == 200 && page["records"].as_array().map(Vec::len) == Some(3),
        "{code} {page}"
    );
    let next = page["next_after"].as_u64().unwrap_or(0);
    let (_, rest) = get(
        &format!("/v1/devices/board1/telemetry?topic=temp&after={next}"),
        &token,
    )?;
    let values: Vec<i64> = rest["records"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["payload"].as_i64()).collect())
        .unwrap_or_default();
    ensure!(values == vec![3, 4], "second page {rest}");
    let (_, events) = get("/v1/devices/board1/events?level=critical", &token)?;
    let ev = events["records"].as_array().cloned().unwrap_or_default();
    ensure!(
        ev.len() == 1 && ev[0]["payload"]["message"] == "critical happened",
        "{events}"
    );
    let (_, logs) = get("/v1/devices/board1/logs", &token)?;
    ensure!(logs["records"][0]["payload"] == "started", "{logs}");
    let (code, _) = get("/v1/devices/board1/telemetry", &other)?;
    ensure!(code == 404, "other tenant got {code}");
    let (code, body) = get("/v1/devices/board1/telemetry?from=yesterday", &token)?;
    ensure!(
        code == 400 && body["error"].as_str().is_some_and(|e| e.contains("from")),
        "{code} {body}"
    );
    Ok(())
}

/// Opens a device's `tether-telemetry` channel with the stock OpenSSH client (the device's
/// own key, as its link would) and sends `bytes`; returns when ssh ends.
fn raw_telemetry_channel(relay: &Relay, agent: &Agent, bytes: &[u8]) -> Result<Run> {
    let key = agent.dir.path().join("state/device_ed25519");
    let mut cmd = ssh_with_key(relay, &key, &["-s"], "tether-link@127.0.0.1");
    cmd.arg("tether-telemetry");
    run_with_timeout(cmd, Some(bytes), Duration::from_secs(30))
}

#[test]
fn a_corrupt_frame_closes_only_that_channel() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    // A second device, enrolled but with no agent running: its key speaks for it.
    let other = Agent::new("board2", &[])?;
    other.enroll(&s.relay, Transport::Tcp, "acme")?;
    send(&s.agent, "before", "1")?;
    wait_stored(&s.relay, "board1", 1)?;

    let cases: [(&[u8], &str); 3] = [
        (b"\x00\x00\x00\x03\x09{}", "version 9 not supported"),
        (b"\x00\x00\x00\x05\x01oops", "malformed frame"),
        (b"\xff\xff\xff\xff", "length"),
    ];
    for (bytes, expect) in cases {
        let r = raw_telemetry_channel(&s.relay, &other, bytes)?;
        ensure!(r.status.is_some(), "ssh did not end: {}", r.stderr);
        wait_until(Duration::from_secs(10), expect, || {
            s.relay.log().lines().any(|l| {
                l.contains("closing its telemetry channel") && l.to_lowercase().contains(expect)
            })
        })
        .with_context(|| s.relay.log())?;
    }
    // A well-formed batch on the same kind of channel is committed and acknowledged: the
    // relay was not harmed by the garbage before it.
    let body = br#"{"type":"batch","records":[{"seq":7,"ts_ms":1767225600000,"kind":"metric","topic":"raw","payload":42}]}"#;
    let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(body);
    let r = raw_telemetry_channel(&s.relay, &other, &frame)?;
    ensure!(r.status.is_some(), "ssh did not end");
    let stored_other = wait_stored(&s.relay, "board2", 1)?;
    ensure!(
        stored_other.len() == 1 && stored_other[0]["payload"] == 42,
        "board2 stored {stored_other:?}"
    );
    // The linked device never noticed.
    send(&s.agent, "after", "2")?;
    let records = wait_stored(&s.relay, "board1", 2)?;
    ensure!(records.len() == 2, "board1 stored {records:?}");
    ensure!(
        s.agent.status()?["link"] == "online",
        "board1 link went down"
    );
    Ok(())
}

#[test]
fn a_corrupt_outbox_row_is_reported_not_a_stall() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::new("board1", &[])?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    for i in 0..5 {
        send(&agent, "t", &i.to_string())?;
    }
    // Damage one row the way a bad disk or a hand edit would.
    let db = rusqlite::Connection::open(agent.dir.path().join("state/outbox.db"))?;
    db.execute("UPDATE records SET payload = '{broken' WHERE seq = 3", [])?;
    drop(db);
    agent.start()?;
    let records = wait_stored(&relay, "board1", 5)?;
    let values: Vec<serde_json::Value> = records.iter().map(|r| r["payload"].clone()).collect();
    ensure!(
        values[..4] == [serde_json::json!(0), 1.into(), 3.into(), 4.into()],
        "stored {values:?}"
    );
    let report = &records[4];
    ensure!(
        report["topic"] == "tether/outbox/dropped" && report["payload"]["dropped"] == 1,
        "report {report}"
    );
    Ok(())
}

#[test]
fn retention_deletes_what_is_older_than_the_tenant_keeps() -> Result<()> {
    let mut s = Setup::new(Transport::Tcp)?;
    let r = s.agent.cmd(&[
        "telemetry",
        "send",
        "old",
        "1",
        "--ts",
        "2026-01-01T00:00:00Z",
    ])?;
    ensure!(r.status == Some(0), "{}", r.stderr);
    send(&s.agent, "new", "2")?;
    wait_stored(&s.relay, "board1", 2)?;
    let r = s
        .relay
        .admin(&["tenant", "retention", "acme", "--days", "0"])?;
    ensure!(
        r.status == Some(1),
        "zero days must be refused: {}",
        r.stdout
    );
    s.relay
        .admin_ok(&["tenant", "retention", "acme", "--days", "7"])?;
    let tenants = s.relay.admin_ok(&["tenant", "list", "--json"])?;
    ensure!(tenants.contains("\"retention_days\": 7"), "{tenants}");
    // The sweep runs when the relay starts and hourly after.
    s.relay.stop()?;
    s.relay.restart()?;
    wait_until(Duration::from_secs(10), "old record swept", || {
        stored(&s.relay, "board1").is_ok_and(|r| r.len() == 1 && r[0]["topic"] == "new")
    })?;
    Ok(())
}

#[test]
fn the_journal_of_configured_units_is_followed_and_resumed() -> Result<()> {
    // No journald runs here, so journalctl is a script that prints what journalctl
    // --output=json prints and records the arguments the agent gave it.
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let bin = tempfile::tempdir()?;
    let args_log = bin.path().join("args");
    let script = format!(
        r#"#!/bin/sh
echo "$@" >> {args}
case "$*" in
  *--after-cursor=c2*) echo '{{"__CURSOR":"c3","__REALTIME_TIMESTAMP":"1767225603000000","MESSAGE":"third","PRIORITY":"3","_SYSTEMD_UNIT":"web.service"}}' ;;
  *) echo '{{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"1767225601000000","MESSAGE":"first","PRIORITY":"6","_SYSTEMD_UNIT":"web.service","_PID":"42"}}'
     echo '{{"__CURSOR":"c2","__REALTIME_TIMESTAMP":"1767225602000000","MESSAGE":[104,105],"PRIORITY":"4","_SYSTEMD_UNIT":"web.service"}}' ;;
esac
exec sleep 600
"#,
        args = args_log.display()
    );
    let path = bin.path().join("journalctl");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let env_path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut agent = Agent::with_extra_config(
        "board1",
        &[],
        "telemetry:\n  journal_units: [web.service]\n",
    )?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start_with_env(&[("PATH", &env_path)])?;
    let records = wait_stored(&relay, "board1", 2)?;
    ensure!(
        records[0]["topic"] == "journal/web.service"
            && records[0]["kind"] == "log"
            && records[0]["ts"] == "2026-01-01T00:00:01.000Z"
            && records[0]["payload"]
                == serde_json::json!({"unit": "web.service", "priority": 6, "pid": 42, "line": "first"}),
        "{}",
        records[0]
    );
    ensure!(records[1]["payload"]["line"] == "hi", "{}", records[1]);
    // A restarted agent continues after the last entry it queued.
    agent.kill();
    agent.start_with_env(&[("PATH", &env_path)])?;
    let records = wait_stored(&relay, "board1", 3)?;
    ensure!(
        records.len() == 3 && records[2]["payload"]["line"] == "third",
        "{records:?}"
    );
    let args = std::fs::read_to_string(&args_log)?;
    let calls: Vec<&str> = args.lines().collect();
    ensure!(
        calls.len() == 2
            && calls[0].contains("--unit=web.service")
            && calls[0].contains("--lines=0")
            && calls[1].contains("--after-cursor=c2"),
        "journalctl calls: {calls:?}"
    );
    Ok(())
}

#[test]
fn tail_and_the_logs_api_follow_new_records() -> Result<()> {
    use std::io::BufRead;
    let s = Setup::new(Transport::Tcp)?;
    let token = s
        .relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--api"])?
        .trim()
        .to_string();
    send(&s.agent, "temp", "1")?;
    let log_seq = {
        let r = s
            .agent
            .cmd(&["telemetry", "send", "--kind", "log", "app", "\"early\""])?;
        ensure!(r.status == Some(0), "{}", r.stderr);
        r.stdout.trim().parse::<u64>()?
    };
    wait_stored(&s.relay, "board1", 2)?;

    // relay telemetry tail --follow prints the backlog of its topic, then what arrives.
    let mut tail = std::process::Command::new(bin_dir()?.join("relay"))
        .arg("--data-dir")
        .arg(s.relay.data_dir())
        .args([
            "telemetry",
            "tail",
            "board1",
            "--topic",
            "temp",
            "--follow",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = tail.stdout.take().context("tail stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| -> Result<serde_json::Value> {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .with_context(|| format!("tail printed no {what}"))?;
        Ok(serde_json::from_str(&line)?)
    };
    let first = next("backlog")?;
    send(&s.agent, "humidity", "40")?;
    send(&s.agent, "temp", "2")?;
    let second = next("new record")?;
    let _ = tail.kill();
    let _ = tail.wait();
    ensure!(
        first["payload"] == 1 && second["payload"] == 2 && second["topic"] == "temp",
        "tail printed {first} then {second}"
    );

    // The logs endpoint with follow=true waits for a record after `after`.
    let path = format!("/v1/devices/board1/logs?after={log_seq}&follow=true");
    let (code, body) = std::thread::scope(|scope| -> Result<(u16, String)> {
        let request = scope.spawn(|| s.relay.http_get(&path, Some(&token)));
        std::thread::sleep(Duration::from_millis(700));
        let r = s
            .agent
            .cmd(&["telemetry", "send", "--kind", "log", "app", "\"late\""])?;
        ensure!(r.status == Some(0), "{}", r.stderr);
        request
            .join()
            .map_err(|_| anyhow::anyhow!("request thread panicked"))?
    })?;
    let page: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(
        code == 200 && page["records"][0]["payload"] == "late",
        "{code} {page}"
    );
    Ok(())
}
