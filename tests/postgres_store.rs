//! The relay on PostgreSQL: the same relay, boards, engineers and telemetry as on its embedded
//! SQLite store, a database that goes away and comes back, and moving a relay's SQLite store
//! into PostgreSQL without re-enrolling a board.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;

fn send(agent: &Agent, topic: &str, value: &str) -> Result<()> {
    let r = agent.cmd(&["telemetry", "send", topic, value])?;
    ensure!(r.status == Some(0), "telemetry send: {}", r.stderr);
    Ok(())
}

fn wait_stored(relay: &Relay, device: &str, n: usize) -> Result<Vec<serde_json::Value>> {
    let mut last = Vec::new();
    wait_until(
        Duration::from_secs(60),
        &format!("{n} records stored"),
        || {
            last = relay.stored_telemetry(device).unwrap_or_default();
            last.len() >= n
        },
    )?;
    Ok(last)
}

/// An engineer's `cat` on the board through the relay: a live session to type into.
struct LiveSession {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl LiveSession {
    fn open(engineer: &Engineer, device: &str) -> Result<LiveSession> {
        let port = engineer.ssh_port.to_string();
        let dest = format!("{device}@127.0.0.1");
        let mut cmd = engineer.ssh_cmd(&["-p", &port, &dest, "cat"]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(LiveSession {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Types `text` and reads the board's echo of it.
    fn echo(&mut self, text: &str) -> Result<String> {
        let stdin = self.child.stdin.as_mut().context("no stdin")?;
        writeln!(stdin, "{text}")?;
        stdin.flush()?;
        Ok(self.lines.next().context("the session ended")??)
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_relay_on_postgres_serves_boards_and_survives_the_database_going_away() -> Result<()> {
    let mut pg = Postgres::start()?;
    let db = pg.create_database("relay_one")?;
    let relay = Relay::start_with_config(&format!("store:\n  url: {db}\n"))?;
    relay.tenant("acme")?;
    let engineer = relay.engineer("alice", "acme", "admin")?;
    let mut agent = Agent::new("board1", &[])?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;

    let r = engineer.exec_input("board1", "cat; echo done; exit 3", Some(b"typed\n"))?;
    ensure!(
        r.status == Some(3),
        "exit status {:?}: {}",
        r.status,
        r.stderr
    );
    ensure!(r.stdout == "typed\ndone\n", "stdout {:?}", r.stdout);
    for i in 0..50 {
        send(&agent, "sensors/temp", &format!("{{\"i\":{i}}}"))?;
    }
    wait_stored(&relay, "board1", 50)?;
    // The rows are in PostgreSQL, not in a file beside the relay.
    let rows = pg.psql(&db, "SELECT count(*) FROM telemetry")?;
    ensure!(
        rows.trim() == "50",
        "telemetry rows in PostgreSQL: {rows:?}"
    );
    ensure!(
        !relay.data_dir().join("relay.db").exists(),
        "a SQLite file was created beside a PostgreSQL store"
    );

    let mut live = LiveSession::open(&engineer, "board1")?;
    ensure!(live.echo("before")? == "before");

    pg.stop()?;
    // The live shell goes on: it needs no store.
    ensure!(live.echo("during")? == "during", "the live session stalled");
    // Admin commands fail, saying the store is unreachable, instead of hanging.
    let r = relay.admin(&["device", "list"])?;
    ensure!(r.status == Some(1), "device list without a database: {r:?}");
    ensure!(
        r.stderr.contains("store") && r.stderr.contains("127.0.0.1"),
        "the error does not name the store: {}",
        r.stderr
    );
    // Telemetry is not acknowledged while it cannot be stored: the board keeps it.
    for i in 50..70 {
        send(&agent, "sensors/temp", &format!("{{\"i\":{i}}}"))?;
    }
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        agent.queued()? > 0,
        "records were acknowledged without a store"
    );

    pg.start_again()?;
    let stored = wait_stored(&relay, "board1", 70)?;
    let mut seqs: Vec<u64> = stored.iter().filter_map(|r| r["seq"].as_u64()).collect();
    seqs.dedup();
    ensure!(seqs.len() == 70, "records stored {} times", seqs.len());
    ensure!(live.echo("after")? == "after");
    let r = engineer.exec("board1", "echo again")?;
    ensure!(
        r.stdout == "again\n",
        "a new session after the outage: {r:?}"
    );
    let devices = relay.admin_ok(&["device", "list", "--json"])?;
    ensure!(devices.contains("board1"), "{devices}");
    Ok(())
}

#[test]
fn relay_store_copy_moves_a_relay_to_postgres_without_re_enrolling_a_board() -> Result<()> {
    let pg = Postgres::start()?;
    let db = pg.create_database("moved")?;
    let mut relay = Relay::start()?;
    relay.tenant("acme")?;
    let engineer = relay.engineer("alice", "acme", "admin")?;
    let mut agent = Agent::new("board1", &[])?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    for i in 0..30 {
        send(&agent, "sensors/temp", &format!("{{\"i\":{i}}}"))?;
    }
    wait_stored(&relay, "board1", 30)?;
    let r = engineer.exec("board1", "echo on sqlite")?;
    ensure!(r.status == Some(0));
    let trail_before: Vec<serde_json::Value> =
        serde_json::from_str(&relay.admin_ok(&["audit", "list", "--json"])?)?;
    relay.stop()?;

    let sqlite = format!("sqlite:{}", relay.data_dir().join("relay.db").display());
    let copied = relay.admin_ok(&["store", "copy", "--from", &sqlite, "--to", &db, "--json"])?;
    let summary: serde_json::Value = serde_json::from_str(&copied)?;
    ensure!(summary["rows"]["telemetry"] == 30, "{summary}");
    ensure!(summary["rows"]["devices"] == 1, "{summary}");
    // A second copy into the filled database is refused, and changes nothing.
    let r = relay.admin(&["store", "copy", "--from", &sqlite, "--to", &db])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("already holds data"),
        "{r:?}"
    );

    std::fs::write(
        relay.dir.path().join("relay.yaml"),
        format!("store:\n  url: {db}\n"),
    )?;
    std::fs::remove_file(relay.data_dir().join("relay.db"))?;
    relay.restart()?;
    // The board comes back with its old key and host key pin: no re-enrollment.
    agent.wait_online()?;
    let r = engineer.exec("board1", "echo on postgres")?;
    ensure!(r.stdout == "on postgres\n", "{r:?}");
    ensure!(wait_stored(&relay, "board1", 30)?.len() == 30);
    // A second relay on the same database, with a data directory of its own, presents the
    // host key the board pinned.
    let second = Relay::start_with_config(&format!("store:\n  url: {db}\n"))?;
    let keyscan = |port: u16| -> Result<String> {
        let mut cmd = std::process::Command::new("ssh-keyscan");
        cmd.args(["-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"]);
        let r = run_with_timeout(cmd, None, Duration::from_secs(20))?;
        Ok(r.stdout
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string())
    };
    let (first_key, second_key) = (keyscan(relay.ssh_port)?, keyscan(second.ssh_port)?);
    ensure!(
        !first_key.is_empty() && first_key == second_key,
        "the relays present {first_key:?} and {second_key:?}"
    );
    let trail: Vec<serde_json::Value> =
        serde_json::from_str(&relay.admin_ok(&["audit", "list", "--json"])?)?;
    // The trail continues: every old entry with its id, then the copy itself.
    for (old, new) in trail_before.iter().zip(trail.iter()) {
        ensure!(
            old["id"] == new["id"] && old["action"] == new["action"],
            "{old} vs {new}"
        );
    }
    ensure!(
        trail.iter().any(|e| e["action"] == "store.copy"),
        "the copy is not in the trail"
    );
    // Nobody can rewrite that history, not even with the database's own client.
    let r = pg.psql(&db, "DELETE FROM audit");
    ensure!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("append-only")),
        "{r:?}"
    );
    Ok(())
}

#[test]
fn tls_to_postgres_follows_sslmode() -> Result<()> {
    let certs = tempfile::tempdir()?;
    // A certificate for 127.0.0.1 and localhost, trusted only where it is named.
    let (cert, key) = self_signed_cert(certs.path())?;
    let pg = Postgres::start_tls(&cert, &key)?;
    let db = pg.create_database("tls")?;
    let cert = cert.display();
    // (sslmode and root, works, what the error must name)
    let cases = [
        (
            format!("{db}?sslmode=verify-full&sslrootcert={cert}"),
            true,
            "",
        ),
        (
            format!("{db}?sslmode=verify-ca&sslrootcert={cert}"),
            true,
            "",
        ),
        (format!("{db}?sslmode=require"), true, ""),
        // The system roots do not know a self-signed certificate.
        (format!("{db}?sslmode=verify-full"), false, "certificate"),
        (
            format!("{db}?sslmode=verify-full&sslrootcert=/nonexistent.pem"),
            false,
            "/nonexistent.pem",
        ),
    ];
    let dir = tempfile::tempdir()?;
    for (url, works, names) in cases {
        std::fs::write(
            dir.path().join("relay.yaml"),
            format!("store:\n  url: \"{url}\"\n"),
        )?;
        let mut cmd = std::process::Command::new(bin_dir()?.join("relay"));
        cmd.arg("--config")
            .arg(dir.path().join("relay.yaml"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("init");
        let r = run_with_timeout(cmd, None, Duration::from_secs(60))?;
        if works {
            ensure!(r.status == Some(0), "{url}: {}", r.stderr);
        } else {
            ensure!(
                r.status == Some(1) && r.stderr.contains(names),
                "{url} should fail naming {names:?}: {r:?}"
            );
        }
    }
    // A serving relay's connections really are encrypted.
    let relay = Relay::start_with_config(&format!(
        "store:\n  url: \"{db}?sslmode=verify-full&sslrootcert={cert}\"\n"
    ))?;
    relay.tenant("acme")?;
    let encrypted = pg.psql(
        &db,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE s.ssl AND a.application_name = 'tether-relay'",
    )?;
    ensure!(
        encrypted.trim().parse::<u32>().is_ok_and(|n| n >= 1),
        "encrypted relay connections: {encrypted:?}"
    );
    let plain = pg.psql(
        &db,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE NOT s.ssl AND a.application_name = 'tether-relay'",
    )?;
    ensure!(
        plain.trim() == "0",
        "unencrypted relay connections: {plain:?}"
    );
    Ok(())
}
