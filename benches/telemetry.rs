//! Telemetry throughput benchmark, with 100-byte payloads, in one run on loopback:
//!
//! - baseline: the same rows inserted straight into SQLite with rusqlite (WAL,
//!   `synchronous=FULL`, 4096 rows per transaction), which is what a durable outbox costs at
//!   the least;
//! - outbox append through the producer socket (one connection, pipelined), answered per record;
//! - outbox append through `agent telemetry send --batch` reading stdin;
//! - end to end: records already queued on the device uploaded over the link (TCP) and
//!   committed by the relay's SQLite sink, until the device has every acknowledgement;
//! - end to end live: producing through the socket while the link uploads, until the last
//!   record is acknowledged;
//! - end to end, backlog into PostgreSQL: the backlog stage again with the relay's store on a
//!   private PostgreSQL server, beside the SQLite figure of the same run.
//!
//! Run with `cargo bench --bench telemetry`. `TETHER_BENCH_RECORDS` changes the count
//! (default 500,000 per stage).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

/// A producer line with a 100-byte payload.
fn line(i: usize) -> String {
    let head = format!("{{\"i\":{i},\"pad\":\"");
    let pad = "x".repeat(100 - head.len() - 2);
    format!("{{\"topic\":\"bench/t\",\"value\":{head}{pad}\"}}}}\n")
}

fn records() -> usize {
    std::env::var("TETHER_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000)
}

/// Rows inserted per second straight into SQLite, with the outbox's durability settings.
fn sqlite_baseline(n: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join("b.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE r (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER, kind TEXT, topic TEXT, level TEXT, payload TEXT, size INTEGER)",
    )?;
    let payloads: Vec<String> = (0..n)
        .map(|i| {
            let l = line(i);
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
            v["value"].to_string()
        })
        .collect();
    let start = Instant::now();
    for chunk in payloads.chunks(4096) {
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO r (ts_ms, kind, topic, level, payload, size) VALUES (?1, 'metric', 'bench/t', NULL, ?2, ?3)",
            )?;
            for p in chunk {
                stmt.execute(rusqlite::params![1_767_225_600_000i64, p, p.len() as i64])?;
            }
        }
        tx.commit()?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Records per second appended through the socket by one pipelined producer.
fn socket_append(agent: &Agent, n: usize) -> Result<f64> {
    let path = agent.socket_path();
    wait_until(Duration::from_secs(20), "producer socket", || path.exists())?;
    let stream = UnixStream::connect(&path)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let lines: Vec<String> = (0..n).map(line).collect();
    let start = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        for chunk in lines.chunks(8192) {
            writer.write_all(chunk.concat().as_bytes())?;
        }
        Ok(())
    });
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut answer = String::new();
    for i in 0..n {
        answer.clear();
        reader.read_line(&mut answer)?;
        ensure!(answer.starts_with("{\"seq\""), "record {i}: {answer}");
    }
    let elapsed = start.elapsed();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Records per second appended by `agent telemetry send --batch`.
fn cli_append(agent: &Agent, n: usize) -> Result<f64> {
    let input: String = (n..2 * n).map(line).collect();
    let mut cmd = std::process::Command::new(bin_dir()?.join("agent"));
    cmd.arg("--config")
        .arg(&agent.config)
        .args(["telemetry", "send", "--batch"]);
    let start = Instant::now();
    let r = run_with_timeout(cmd, Some(input.as_bytes()), Duration::from_secs(600))?;
    let elapsed = start.elapsed();
    ensure!(r.status == Some(0), "send --batch: {}", r.stderr);
    Ok(n as f64 / elapsed.as_secs_f64())
}

fn outbox_status(agent: &Agent) -> Result<serde_json::Value> {
    let r = agent.cmd(&["telemetry", "status", "--json"])?;
    ensure!(r.status == Some(0), "status: {}", r.stderr);
    Ok(serde_json::from_str(&r.stdout)?)
}

/// Waits until the device holds no unacknowledged record; returns when that was seen.
fn wait_drained(agent: &Agent) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let st = outbox_status(agent)?;
        if st["queued_rows"] == 0 && st["acked_upto"] == st["last_seq"] {
            return Ok(Instant::now());
        }
        ensure!(Instant::now() < deadline, "outbox never drained: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() -> Result<()> {
    let n = records();
    println!("telemetry benchmark: {n} records per stage, 100-byte payloads");
    let baseline = sqlite_baseline(n)?;
    println!("sqlite insert (baseline)      {baseline:>10.0} records/s");

    let mut relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::with_extra_config(
        "bench",
        &[],
        "telemetry:\n  max_rows: 10000000\n  max_bytes: 4000000000\n",
    )?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    // Appends are measured with the relay down, so the upload does not compete for the file.
    relay.stop()?;
    agent.start()?;

    let socket = socket_append(&agent, n)?;
    println!(
        "socket append                 {socket:>10.0} records/s  ({:.2}x baseline)",
        socket / baseline
    );
    let cli = cli_append(&agent, n)?;
    println!(
        "CLI batch append              {cli:>10.0} records/s  ({:.2}x baseline)",
        cli / baseline
    );

    // Backlog upload: 2n records queued, relay comes back.
    let queued = outbox_status(&agent)?["queued_rows"]
        .as_u64()
        .context("queued_rows")?;
    let start = Instant::now();
    relay.restart()?;
    let done = wait_drained(&agent)?;
    let backlog = queued as f64 / (done - start).as_secs_f64();
    println!(
        "end to end, backlog           {backlog:>10.0} records/s  ({:.2}x baseline)",
        backlog / baseline
    );

    // Live: produce through the socket while the link uploads.
    let start = Instant::now();
    let produced = socket_append(&agent, n)?;
    let done = wait_drained(&agent)?;
    let live = n as f64 / (done - start).as_secs_f64();
    println!(
        "end to end, live              {live:>10.0} records/s  ({:.2}x baseline; producer at {produced:.0}/s)",
        live / baseline
    );
    let stored = relay.admin_ok(&["device", "show", "bench", "--json"])?;
    ensure!(stored.contains("bench"), "device missing");
    drop(agent);
    drop(relay);

    let pg_backlog = postgres_backlog(n)?;
    println!(
        "end to end, backlog, postgres {pg_backlog:>10.0} records/s  ({:.2}x the SQLite sink)",
        pg_backlog / backlog
    );
    Ok(())
}

/// The backlog stage with the relay's store in PostgreSQL: `n` records queued while the relay
/// is down, then uploaded and committed; records per second.
fn postgres_backlog(n: usize) -> Result<f64> {
    let pg = Postgres::start()?;
    let db = pg.create_database("bench")?;
    let mut relay = Relay::start_with_config(&format!("store:\n  url: {db}\n"))?;
    relay.tenant("acme")?;
    let mut agent = Agent::with_extra_config(
        "bench-pg",
        &[],
        "telemetry:\n  max_rows: 10000000\n  max_bytes: 4000000000\n",
    )?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    relay.stop()?;
    agent.start()?;
    socket_append(&agent, n)?;
    let queued = outbox_status(&agent)?["queued_rows"]
        .as_u64()
        .context("queued_rows")?;
    let start = Instant::now();
    relay.restart()?;
    let done = wait_drained(&agent)?;
    let rows = pg.psql(&db, "SELECT count(*) FROM telemetry")?;
    ensure!(
        rows.trim() == queued.to_string(),
        "PostgreSQL holds {rows} rows of {queued}"
    );
    Ok(queued as f64 / (done - start).as_secs_f64())
}
