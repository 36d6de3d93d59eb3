//! Exactly once under chaos: 100,000 records produced through the socket and the CLI while the
//! relay is killed with SIGKILL and restarted, the agent is killed with SIGKILL mid-upload, and
//! a proxy between them cuts the connection at random; storage ends with each record once, with
//! its payload and timestamp.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;

/// Records per producer (socket and CLI): 100,000 in all.
const PER_PRODUCER: usize = 50_000;
/// Lines per socket write and per CLI invocation.
const CHUNK: usize = 5_000;

/// The producer timestamp of record `i` of a producer, as RFC 3339 with milliseconds:
/// distinct per record, so the test can tell each one's timestamp survived.
fn ts(i: usize, offset_ms: usize) -> String {
    let ms = i * 3 + offset_ms;
    let (s, ms) = (ms / 1000, ms % 1000);
    format!(
        "2026-03-01T{:02}:{:02}:{:02}.{ms:03}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

fn line(src: &str, i: usize, offset_ms: usize) -> String {
    // About 100 bytes of payload, like the benchmark.
    format!(
        "{{\"topic\":\"chaos/{src}\",\"value\":{{\"src\":\"{src}\",\"i\":{i},\"pad\":\"{}\"}},\"ts\":\"{}\"}}\n",
        "x".repeat(60),
        ts(i, offset_ms)
    )
}

/// Sends the socket producer's records in chunks, checking every answer is a sequence number.
fn produce_through_socket(agent: &Agent) -> Result<()> {
    let path = agent.socket_path();
    wait_until(Duration::from_secs(20), "producer socket", || path.exists())?;
    let stream = UnixStream::connect(&path).with_context(|| format!("{}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut answer = String::new();
    for start in (0..PER_PRODUCER).step_by(CHUNK) {
        let chunk: String = (start..start + CHUNK)
            .map(|i| line("socket", i, 0))
            .collect();
        writer.write_all(chunk.as_bytes())?;
        for i in start..start + CHUNK {
            answer.clear();
            reader.read_line(&mut answer)?;
            ensure!(answer.contains("\"seq\""), "socket record {i}: {answer}");
        }
    }
    Ok(())
}

/// Queues the CLI producer's records with `agent telemetry send --batch`, one process per chunk.
fn produce_through_cli(config: &std::path::Path) -> Result<()> {
    for start in (0..PER_PRODUCER).step_by(CHUNK) {
        let input: String = (start..start + CHUNK).map(|i| line("cli", i, 1)).collect();
        let mut cmd = Command::new(bin_dir()?.join("agent"));
        cmd.arg("--config")
            .arg(config)
            .args(["telemetry", "send", "--batch"]);
        let r = run_with_timeout(cmd, Some(input.as_bytes()), Duration::from_secs(120))?;
        ensure!(
            r.status == Some(0) && r.stdout.lines().count() == CHUNK,
            "send --batch at {start}: {:?} {}",
            r.status,
            r.stderr
        );
    }
    Ok(())
}

/// Kills and restarts the relay with SIGKILL at pseudo-random moments until told to stop.
fn relay_killer(
    relay: Arc<Mutex<Relay>>,
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU32>,
    seed: u64,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let mut x = seed | 1;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            std::thread::sleep(Duration::from_millis(700 + x % 1500));
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let mut r = relay.lock().map_err(|_| anyhow::anyhow!("relay lock"))?;
            r.kill();
            kills.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100 + x % 400));
            r.restart()?;
        }
        Ok(())
    })
}

fn chaos(transport: Transport, seed: u64) -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    // The records carry fixed timestamps from early 2026; keep them past the default 30 days,
    // or the retention sweep at each relay start would (rightly) delete them.
    relay.admin_ok(&["tenant", "retention", "acme", "--days", "3650"])?;
    let target = match transport {
        Transport::Tcp => relay.ssh_port,
        Transport::WebSocket => relay.http_port,
    };
    let proxy = ChaosProxy::start(
        target,
        Duration::from_millis(300),
        Duration::from_millis(1500),
        seed,
    )?;
    let url = match transport {
        Transport::Tcp => format!("ssh://127.0.0.1:{}", proxy.port),
        Transport::WebSocket => format!("ws://127.0.0.1:{}/v1/link", proxy.port),
    };
    let mut agent = Agent::with_extra_config(
        "board1",
        &[],
        "telemetry:\n  batch_records: 1000\n  window: 4\n",
    )?;
    agent.enroll_via(&relay, &url, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    let relay = Arc::new(Mutex::new(relay));

    // Chaos from here on: cuts in the proxy, relay kills.
    proxy.set_cutting(true);
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let killer = relay_killer(
        relay.clone(),
        stop.clone(),
        kills.clone(),
        seed.wrapping_mul(31),
    );

    let produced = produce_through_socket(&agent).and_then(|_| {
        // The CLI writes the outbox from other processes while the agent uploads from it;
        // meanwhile the agent is killed with SIGKILL mid-upload, twice, and started again.
        let config = agent.config.clone();
        std::thread::scope(|scope| -> Result<()> {
            let producer = scope.spawn(|| produce_through_cli(&config));
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(1500));
                let queued = agent.queued()?;
                agent.kill();
                eprintln!("killed the agent with {queued} records queued");
                std::thread::sleep(Duration::from_millis(300));
                agent.start()?;
            }
            producer
                .join()
                .map_err(|_| anyhow::anyhow!("CLI producer panicked"))?
        })
    });
    // Keep the chaos going into the upload of what is queued: at least four relay kills.
    let _ = wait_until(Duration::from_secs(60), "four relay kills", || {
        kills.load(Ordering::SeqCst) >= 4
    });
    let queued_at_calm = agent.queued().unwrap_or(0);
    stop.store(true, Ordering::SeqCst);
    killer
        .join()
        .map_err(|_| anyhow::anyhow!("relay killer panicked"))??;
    produced?;
    let kills = kills.load(Ordering::SeqCst);
    let cuts = proxy.cuts.load(Ordering::SeqCst);
    proxy.set_cutting(false);
    eprintln!(
        "{transport:?}: relay killed {kills} times, {cuts} connections cut, \
         {queued_at_calm} records still queued when the chaos stopped"
    );
    ensure!(kills >= 4, "the relay was killed only {kills} times");
    ensure!(cuts >= 3, "the proxy cut only {cuts} connections");

    // Everything drains once the chaos stops.
    let relay = relay.lock().map_err(|_| anyhow::anyhow!("relay lock"))?;
    agent.wait_drained(Duration::from_secs(180))?;
    verify(&relay)
}

/// Storage holds exactly the 100,000 records, each once, with payload and timestamp intact.
fn verify(relay: &Relay) -> Result<()> {
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    let mut seqs = std::collections::HashSet::new();
    let mut count = 0usize;
    for r in relay.stored_telemetry("board1")? {
        count += 1;
        if !seqs.insert(r["seq"].as_u64().unwrap_or(0)) {
            bail!("sequence number stored twice: {r}");
        }
        let src = r["payload"]["src"].as_str().unwrap_or_default().to_string();
        let i = r["payload"]["i"].as_u64().context("payload without i")?;
        let offset = if src == "cli" { 1 } else { 0 };
        ensure!(
            r["topic"] == format!("chaos/{src}")
                && r["kind"] == "metric"
                && r["ts"] == ts(i as usize, offset)
                && r["payload"]["pad"].as_str().is_some_and(|p| p.len() == 60),
            "record altered: {r}"
        );
        *seen.entry((src, i)).or_default() += 1;
    }
    ensure!(
        count == 2 * PER_PRODUCER,
        "stored {count} records, expected {}",
        2 * PER_PRODUCER
    );
    for src in ["socket", "cli"] {
        for i in 0..PER_PRODUCER as u64 {
            match seen.get(&(src.to_string(), i)) {
                Some(1) => {}
                other => bail!("record {src}/{i} stored {other:?} times"),
            }
        }
    }
    Ok(())
}

#[test]
fn a_hundred_thousand_records_arrive_exactly_once_through_chaos_over_tcp() -> Result<()> {
    chaos(Transport::Tcp, 0x5eed_0001)
}

#[test]
fn a_hundred_thousand_records_arrive_exactly_once_through_chaos_over_websocket() -> Result<()> {
    chaos(Transport::WebSocket, 0x5eed_0002)
}
