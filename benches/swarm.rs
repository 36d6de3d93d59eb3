//! Device swarm: thousands of boards linked to one relay, simulated from a few processes with
//! the agent's own code (real enrollment, real SSH handshakes over TCP, the real link, control
//! channel, telemetry upload and embedded SSH server). Each board leaves from its own loopback
//! address (`link.bind_address` over 127.0.0.0/8), so ephemeral ports and per-source limits
//! are what they would be for boards on the Internet.
//!
//! Phases, each reported:
//! 1. ramp-up: every board enrolls and links, `TETHER_SWARM_RAMP` boards started per second;
//! 2. idle: relay RSS and CPU per idle link over `TETHER_SWARM_IDLE_S` seconds;
//! 3. load: each board sends a record every `TETHER_SWARM_TELEMETRY_S` seconds through its
//!    producer socket while engineers (the real OpenSSH client) type into shells on random
//!    boards, and into shells on one more board that has a process of its own (what the relay
//!    adds, apart from a simulating process busy with its 1,500 boards): records/s stored and
//!    keystroke RTT p50/p99;
//! 4. reconnect storm: the relay is SIGKILLed and started again; the time until every board is
//!    linked again.
//!
//! The boards and the relay keep their default keepalive intervals unless
//! `TETHER_SWARM_KEEPALIVE_S` (the boards') or `TETHER_SWARM_RELAY_KEEPALIVE_S` set them.
//!
//! Run with `cargo bench --bench swarm`; `TETHER_SWARM_BOARDS` (default 15000) and
//! `TETHER_SWARM_PER_PROC` (boards per simulating process, default 1500: each board holds
//! about ten descriptors there, against this machine's hard limit of 20,000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;

fn main() -> Result<()> {
    raise_open_files()?;
    if std::env::var_os("TETHER_SWARM_WORKER").is_some() {
        return worker();
    }
    orchestrate()
}

/// Raises this process's soft open-file limit to the hard one; children inherit it.
fn raise_open_files() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Board `g`'s own source address: 127.1.0.1, 127.1.0.2, … (never .0).
fn source_address(g: usize) -> IpAddr {
    let host = g % 250 + 1;
    let net = g / 250;
    IpAddr::V4(Ipv4Addr::new(
        127,
        (1 + net / 250) as u8,
        (net % 250) as u8,
        host as u8,
    ))
}

// ---- the simulating processes ----------------------------------------------------------------

/// One simulating process: boards `first..first + count`, started at the given rate.
fn worker() -> Result<()> {
    // Dies with the orchestrator, however it ends: left behind, 1,500 boards hold more than
    // a gigabyte and would distort every later run.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    let spec: Vec<usize> = std::env::var("TETHER_SWARM_WORKER")?
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    let [first, count] = spec[..] else {
        bail!("TETHER_SWARM_WORKER must be FIRST,COUNT");
    };
    let url = std::env::var("TETHER_SWARM_RELAY")?;
    let token = std::env::var("TETHER_SWARM_TOKEN")?;
    let dir = PathBuf::from(std::env::var("TETHER_SWARM_DIR")?);
    let rate: f64 = env_or("TETHER_SWARM_WORKER_RATE", 25.0);
    let every = Duration::from_secs_f64(env_or("TETHER_SWARM_TELEMETRY_S", 10.0));
    let flag = dir.join("telemetry-on");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("TETHER_SWARM_LOG").unwrap_or_else(|_| "error".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    // Each board's outbox is its own SQLite file, written on a blocking thread: left to
    // tokio's default (512 per process), ten simulating processes under load ran thousands
    // of threads and starved the relay they were there to measure. A real board has its own
    // CPU; here the boards of one process share a few threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let enrolled = Arc::new(AtomicUsize::new(0));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
        for g in first..first + count {
            tick.tick().await;
            tokio::spawn(board(
                g,
                dir.clone(),
                url.clone(),
                token.clone(),
                flag.clone(),
                every,
                enrolled.clone(),
            ));
        }
        // Boards run until the orchestrator kills this process.
        std::future::pending::<()>().await;
    });
    Ok(())
}

/// One simulated board: enrolls, then runs the agent (link, control channel, telemetry upload,
/// embedded SSH server) as `agent run` does, and produces a record every `every` while `flag`
/// exists.
async fn board(
    g: usize,
    dir: PathBuf,
    url: String,
    token: String,
    flag: PathBuf,
    every: Duration,
    enrolled: Arc<AtomicUsize>,
) {
    use tether_agent::config::AgentConfig;
    use tether_agent::link::enroll_exchange::{EnrollOptions, enroll};
    let mut config = AgentConfig {
        state_dir: dir.join(format!("b{g}")),
        ..Default::default()
    };
    config.link.bind_address = Some(source_address(g));
    config.telemetry.system_metrics_interval = Duration::ZERO;
    if let Ok(s) = std::env::var("TETHER_SWARM_KEEPALIVE_S")
        && let Ok(s) = s.parse::<f64>()
    {
        config.link.keepalive_interval = Some(Duration::from_secs_f64(s));
    }
    if let Err(e) = std::fs::create_dir_all(&config.state_dir) {
        eprintln!("board {g}: {e}");
        return;
    }
    let opts = EnrollOptions {
        url,
        token,
        name: Some(format!("swarm{g}")),
        force: false,
        fingerprint: None,
    };
    // A relay refuses logins beyond `limits.max_handshakes`; a provisioning script retries,
    // backing off, as long as a machine slower than the ramp-up rate needs (here up to
    // about ten minutes).
    let mut attempt = 0u64;
    loop {
        match enroll(&config, &opts).await {
            Ok(_) => break,
            Err(_) if attempt < 150 => {
                attempt += 1;
                let backoff = Duration::from_millis((250 * attempt).min(4000) + (g % 1000) as u64);
                tokio::time::sleep(backoff).await;
            }
            Err(e) => {
                eprintln!("board {g}: giving up enrolling: {e}");
                return;
            }
        }
    }
    enrolled.fetch_add(1, Ordering::Relaxed);
    let socket = tether_agent::telemetry::socket::default_path(&config.state_dir);
    tokio::spawn(produce(g, socket, flag, every));
    if let Err(e) = tether_agent::daemon::run(config).await {
        eprintln!("board {g}: agent stopped: {e:#}");
    }
}

/// Sends one record every `every` (from a start spread over the interval) through the board's
/// producer socket while `flag` exists, as an application on the board would.
async fn produce(g: usize, socket: PathBuf, flag: PathBuf, every: Duration) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let spread = every.mul_f64((g % 997) as f64 / 997.0);
    tokio::time::sleep(spread).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        if !flag.exists() {
            continue;
        }
        let Ok(stream) = tokio::net::UnixStream::connect(&socket).await else {
            continue;
        };
        let (read, mut write) = stream.into_split();
        n += 1;
        let line = format!("{{\"topic\":\"swarm\",\"value\":{{\"n\":{n},\"board\":{g}}}}}\n");
        if write.write_all(line.as_bytes()).await.is_err() {
            continue;
        }
        let mut answer = String::new();
        let _ = tokio::io::BufReader::new(read).read_line(&mut answer).await;
    }
}

// ---- the orchestrator --------------------------------------------------------------------------

/// How many devices `relay` reports online.
fn online(relay: &Relay) -> usize {
    relay
        .metric("tether_devices_online")
        .ok()
        .flatten()
        .unwrap_or(0.0) as usize
}

/// Waits until `want` boards are online on `relay` (or `limit` passes), printing progress;
/// returns how long it took and how many were online at the end.
fn wait_online(relay: &Relay, want: usize, limit: Duration, what: &str) -> (Duration, usize) {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let n = online(relay);
        if n >= want || start.elapsed() >= limit {
            return (start.elapsed(), n);
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!("  {what}: {n}/{want} online after {:.0?}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn orchestrate() -> Result<()> {
    let boards: usize = env_or("TETHER_SWARM_BOARDS", 15000);
    let per_proc: usize = env_or("TETHER_SWARM_PER_PROC", 1500).max(1);
    let ramp: f64 = env_or("TETHER_SWARM_RAMP", 250.0);
    let telemetry_s: f64 = env_or("TETHER_SWARM_TELEMETRY_S", 10.0);
    let idle_s: u64 = env_or("TETHER_SWARM_IDLE_S", 60);
    let shells: usize = env_or("TETHER_SWARM_SHELLS", 20);
    let limit = raise_open_files()?;
    let procs = boards.div_ceil(per_proc);
    eprintln!("swarm: {boards} boards from {procs} processes, {ramp}/s, open-file limit {limit}");
    // Each board's outbox uploader holds one inotify instance; past the per-user limit it
    // polls instead, which costs the simulating processes CPU (not the relay).
    let watches: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if watches < boards {
        eprintln!(
            "swarm: fs.inotify.max_user_instances is {watches}: boards beyond it poll their outbox \
             every 100 ms (raise it with sysctl for idle boards to be idle)"
        );
    }

    // The relay's and the boards' keepalive intervals are their defaults unless set here.
    let relay_config = match std::env::var("TETHER_SWARM_RELAY_KEEPALIVE_S") {
        Ok(s) => format!("ssh:\n  keepalive_interval: {s}s\n"),
        Err(_) => String::new(),
    };
    let mut relay = Relay::start_with_config(&relay_config)?;
    let pid = relay.pid().context("relay not running")?;
    relay.tenant("acme")?;
    let token = relay
        .admin_ok(&[
            "token",
            "create",
            "--tenant",
            "acme",
            "--uses",
            &(boards + 100).to_string(),
            "--ttl",
            "24h",
        ])?
        .trim()
        .to_string();
    let engineer = relay.engineer("alice", "acme", "operator")?;
    std::thread::sleep(Duration::from_secs(2));
    let (rss_base, _) = memory_kib(pid)?;

    let dir = tempfile::Builder::new()
        .prefix("swarm")
        .tempdir_in("/tmp")?;
    let exe = std::env::current_exe()?;
    let relay_url = relay.url(Transport::Tcp);
    // Simulating process `p` runs boards `first..first + count`, started `rate` per second.
    let spawn_worker = |p: usize, first: usize, count: usize, rate: f64| -> Result<KillOnDrop> {
        let log = std::fs::File::create(dir.path().join(format!("worker{p}.log")))?;
        let mut cmd = Command::new(&exe);
        cmd.env("TETHER_SWARM_WORKER", format!("{first},{count}"))
            .env("TETHER_SWARM_RELAY", &relay_url)
            .env("TETHER_SWARM_TOKEN", &token)
            .env("TETHER_SWARM_DIR", dir.path())
            .env("TETHER_SWARM_WORKER_RATE", rate.to_string())
            .env("TETHER_SWARM_TELEMETRY_S", telemetry_s.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Ok(KillOnDrop(cmd.spawn()?))
    };
    let mut workers = Vec::new();
    for p in 0..procs {
        let first = p * per_proc;
        let count = per_proc.min(boards - first);
        workers.push(spawn_worker(p, first, count, ramp / procs as f64)?);
    }

    // 1. Ramp-up.
    let ramp_limit = Duration::from_secs_f64(boards as f64 / ramp * 3.0 + 300.0);
    let (ramped, linked) = wait_online(&relay, boards, ramp_limit, "ramp-up");
    let link_rate = linked as f64 / ramped.as_secs_f64();
    // One more board with a process of its own, so that shells to it show what the relay
    // adds under load, apart from what a simulating process busy with 1,500 boards adds.
    let own = format!("swarm{boards}");
    workers.push(spawn_worker(procs, boards, 1, 1.0)?);
    let (_, linked) = wait_online(&relay, linked + 1, Duration::from_secs(60), "own board");
    let linked = linked.saturating_sub(1);
    std::thread::sleep(Duration::from_secs(20));

    // 2. Idle.
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_s));
    let idle_cpu = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64();
    let (rss_idle, _) = memory_kib(pid)?;
    let idle_links = online(&relay);
    let per_link_kib = (rss_idle.saturating_sub(rss_base)) as f64 / idle_links.max(1) as f64;

    // 3. Load: telemetry from every board, engineers typing into shells on random boards.
    std::fs::write(dir.path().join("telemetry-on"), b"")?;
    std::thread::sleep(Duration::from_secs_f64(telemetry_s * 1.5));
    let ingested = |r: &Relay| {
        r.metric("tether_telemetry_records_ingested_total{kind=\"metric\"}")
            .ok()
            .flatten()
            .unwrap_or(0.0)
    };
    let rec0 = ingested(&relay);
    let cpu_l0 = cpu_seconds(pid)?;
    let t_load = Instant::now();
    let mut rtts = Vec::new();
    let mut shell_errors = 0;
    let mut own_rtts = Vec::new();
    let mut own_errors = 0;
    let port = relay.ssh_port.to_string();
    // 50 keystrokes into a shell on `board` through the relay.
    let type_into = |board: &str| {
        let ssh = engineer.ssh_cmd(&["-p", &port, "-tt", &format!("{board}@127.0.0.1")]);
        keystroke_rtts(ssh, 50)
    };
    for i in 0..shells {
        let g = (i * 7919 + 13) % linked.max(1);
        match type_into(&own) {
            Ok(mut s) => own_rtts.append(&mut s),
            Err(e) => {
                own_errors += 1;
                eprintln!("  shell to {own}: {e:#}");
            }
        }
        match type_into(&format!("swarm{g}")) {
            Ok(mut s) => rtts.append(&mut s),
            Err(e) => {
                shell_errors += 1;
                eprintln!("  shell to swarm{g}: {e:#}");
                // The relay's account of how the session ended says which side closed it.
                if let Ok(audit) = relay.admin_ok(&["audit", "list", "--limit", "2"]) {
                    for line in audit.lines() {
                        eprintln!("    audit: {line}");
                    }
                }
                // What the relay said of the engineer's connection.
                let relay_log = relay.log();
                let said: Vec<&str> = relay_log
                    .lines()
                    .filter(|l| l.contains("alice") || l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                for line in said.iter().rev().take(6).rev() {
                    eprintln!("    relay: {line}");
                }
                // And the board's: what its embedded server said (with TETHER_SWARM_LOG).
                let log = dir.path().join(format!("worker{}.log", g / per_proc));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                for line in text.lines().filter(|l| l.contains("access")).rev().take(6) {
                    eprintln!("    board: {line}");
                }
            }
        }
    }
    let min_load = Duration::from_secs_f64(telemetry_s * 3.0);
    if t_load.elapsed() < min_load {
        std::thread::sleep(min_load - t_load.elapsed());
    }
    let load_s = t_load.elapsed().as_secs_f64();
    let records_per_s = (ingested(&relay) - rec0) / load_s;
    let load_cpu = (cpu_seconds(pid)? - cpu_l0) / load_s;
    rtts.sort();
    own_rtts.sort();
    let _ = std::fs::remove_file(dir.path().join("telemetry-on"));
    std::thread::sleep(Duration::from_secs(5));

    // 4. Reconnect storm.
    relay.kill();
    let killed = Instant::now();
    relay.restart()?;
    let storm_limit = Duration::from_secs(300);
    let (_, back) = wait_online(&relay, linked + 1, storm_limit, "reconnect storm");
    let back = back.saturating_sub(1);
    let settled = killed.elapsed();
    // Everything the new relay did so far was taking the boards back: its CPU per link is
    // what one handshake (key exchange, login, the link recorded online) costs.
    let storm_cpu = relay.pid().map_or(Ok(0.0), cpu_seconds)?;
    let log = relay.log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refus")).collect();
    let refused = refusals.len();
    // Grouped by the limit named, so that each refusal is explained (or is not).
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for line in &refusals {
        let why = line
            .find("(limits.")
            .and_then(|at| line[at + 1..].split([')', ':']).next())
            .unwrap_or("no limit named");
        *reasons.entry(why.to_string()).or_default() += 1;
    }

    let gave_up: usize = (0..=procs)
        .map(|p| {
            std::fs::read_to_string(dir.path().join(format!("worker{p}.log")))
                .map(|t| t.lines().filter(|l| l.contains("giving up")).count())
                .unwrap_or(0)
        })
        .sum();
    drop(workers);

    println!("device swarm: {boards} boards from {procs} processes (open-file limit {limit})");
    println!(
        "links held                    {linked} of {boards} after ramp-up, {back} after the storm"
    );
    println!(
        "ramp-up                       {:.1} s, {link_rate:.0} boards enrolled and linked per s",
        ramped.as_secs_f64()
    );
    println!(
        "relay RSS                     {rss_base} KiB empty, {rss_idle} KiB with {idle_links} idle links"
    );
    println!("relay RSS per idle link       {per_link_kib:.1} KiB");
    println!(
        "relay CPU, all idle           {:.2}% of a core ({:.3} µs per link per s)",
        idle_cpu * 100.0,
        idle_cpu * 1e6 / idle_links.max(1) as f64
    );
    println!(
        "telemetry under load          {records_per_s:.0} records/s stored (relay CPU {:.1}% of a core)",
        load_cpu * 100.0
    );
    println!(
        "shell RTT under load          p50 {} µs, p99 {} µs ({} keystrokes, {shells} shells, {shell_errors} failed)",
        quantile(&rtts, 0.5).as_micros(),
        quantile(&rtts, 0.99).as_micros(),
        rtts.len()
    );
    println!(
        "  to a board of its own        p50 {} µs, p99 {} µs ({} keystrokes, {own_errors} failed)",
        quantile(&own_rtts, 0.5).as_micros(),
        quantile(&own_rtts, 0.99).as_micros(),
        own_rtts.len()
    );
    println!(
        "reconnect storm               {:.1} s until {back} of {linked} linked again; {refused} refusals in the relay log (and {gave_up} boards gave up enrolling during the ramp-up)",
        settled.as_secs_f64()
    );
    println!(
        "relay CPU per reconnect       {:.2} ms ({storm_cpu:.1} CPU-s for {back} links)",
        storm_cpu * 1e3 / back.max(1) as f64
    );
    for (why, n) in &reasons {
        println!("  refused by {why:<27} {n}");
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
