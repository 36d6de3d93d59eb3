//! Relay overhead benchmark: the same work through the tether relay and agent, directly against
//! a local OpenSSH sshd, and through the OpenSSH reverse tunnel a team would build without
//! tether (the board's `ssh -N -R` to a jump sshd, the engineer's `ssh -J` through it), measured
//! in one run on loopback.
//!
//! - keystroke round trip: one byte through `ssh -tt host 'stty raw -echo; cat'` and back;
//! - bulk upload: scp of 256 MiB;
//! - port forward: 256 MiB through `ssh -L` to a local sink;
//! - CPU-seconds per GiB moved, for scp and `-L`: the whole machine's (every process the
//!   benchmark started: clients, sshds, relay, agent and its sftp child, read from
//!   `/proc/PID/stat`, so other work on the machine does not count) and the relay's own.
//!
//! The same three again on a cluster of two relays (one PostgreSQL store, NATS presence): the
//! engineer on the relay that holds the board, and on the other relay, which carries the
//! session over its peer connection to the holder.
//!
//! Run with `cargo bench --bench relay_overhead`. Needs openssh-client and openssh-server.
//! Environment: `RELAY_OVERHEAD_ROUNDS=N` measures scp and `-L` N times per path, interleaved,
//! and reports medians (default 1; 0 measures keystrokes only); `RELAY_OVERHEAD_KEYSTROKES=N`
//! sets the keystrokes per path (default 400); `RELAY_OVERHEAD_CLUSTER=0` skips the cluster rows;
//! `RELAY_OVERHEAD_PATHS=tcp,ws` measures only those of `direct`, `tunnel`, `tcp`, `ws` and
//! `embedded` (the tcp link with sessions through the agent's embedded SSH server, as agents
//! before link sessions served them) (to profile one path; the ratios need `direct` and
//! `tunnel`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;

const BULK: usize = 256 << 20;
const KEYSTROKES: usize = 400;

const GIB: f64 = (1u64 << 30) as f64;

/// How to reach a shell: ssh arguments up to (not including) the remote command.
struct Target {
    label: &'static str,
    ssh_args: Vec<String>,
    scp_args: Vec<String>,
    dest: String,
    /// The relay processes the path goes through (none for the OpenSSH baselines).
    relays: Vec<u32>,
}

/// CPU-seconds spent so far: by every process the benchmark started, and by the relays of a
/// path.
#[derive(Clone, Copy)]
struct Cpu {
    machine: f64,
    relay: f64,
}

fn cpu_now(t: &Target) -> Result<Cpu> {
    let mut relay = 0.0;
    for pid in &t.relays {
        relay += cpu_seconds(*pid)?;
    }
    Ok(Cpu {
        machine: descendants_cpu_seconds()?,
        relay,
    })
}

/// Runs `work` (which moves `BULK` bytes) and returns its result with the CPU-seconds per GiB
/// it cost.
fn metered(t: &Target, work: impl FnOnce() -> Result<f64>) -> Result<(f64, Cpu)> {
    let before = cpu_now(t)?;
    let rate = work()?;
    // Session processes (sshd's per-connection children, the agent's sftp child) finish and
    // are reaped just after the client returns; their last ticks belong to this transfer.
    std::thread::sleep(Duration::from_millis(300));
    let after = cpu_now(t)?;
    let per_gib = GIB / BULK as f64;
    Ok((
        rate,
        Cpu {
            machine: (after.machine - before.machine) * per_gib,
            relay: (after.relay - before.relay) * per_gib,
        },
    ))
}

/// One path's figures: medians over the rounds.
#[derive(Clone, Copy)]
struct Row {
    p50: Duration,
    p99: Duration,
    scp: f64,
    fwd: f64,
    scp_cpu: Cpu,
    fwd_cpu: Cpu,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One round of one path: scp's and `-L`'s throughput (MiB/s) with the CPU they cost.
type Sample = ((f64, Cpu), (f64, Cpu));

/// Measures every target: keystroke RTT once, then scp and `-L` `rounds` times, interleaving
/// the targets in both so that noise on the machine spreads over all of them.
fn measure(
    targets: &[&Target],
    rounds: usize,
    keystrokes: usize,
    file: &std::path::Path,
    remote: &std::path::Path,
    sink_port: u16,
    sink_done: &std::sync::mpsc::Receiver<usize>,
) -> Result<Vec<Row>> {
    let rtts = keystroke_rtt(targets, keystrokes)?;
    let mut samples: Vec<Vec<Sample>> = targets.iter().map(|_| vec![]).collect();
    for _ in 0..rounds {
        for (t, s) in targets.iter().zip(&mut samples) {
            let scp = metered(t, || scp_upload(t, file, remote))
                .with_context(|| format!("{}: scp", t.label))?;
            let fwd = metered(t, || forward_throughput(t, sink_port, sink_done))
                .with_context(|| format!("{}: -L", t.label))?;
            s.push((scp, fwd));
        }
    }
    let med = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    Ok(rtts
        .into_iter()
        .zip(&samples)
        .map(|((p50, p99), s)| Row {
            p50,
            p99,
            scp: med(s, |x| x.0.0),
            fwd: med(s, |x| x.1.0),
            scp_cpu: Cpu {
                machine: med(s, |x| x.0.1.machine),
                relay: med(s, |x| x.0.1.relay),
            },
            fwd_cpu: Cpu {
                machine: med(s, |x| x.1.1.machine),
                relay: med(s, |x| x.1.1.relay),
            },
        })
        .collect())
}

fn print_rows(targets: &[&Target], rows: &[Row]) {
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10} {:>13} {:>11} {:>13} {:>11}",
        "path",
        "RTT p50 µs",
        "RTT p99 µs",
        "scp MiB/s",
        "-L MiB/s",
        "scp CPU-s/GiB",
        "(relay)",
        "-L CPU-s/GiB",
        "(relay)"
    );
    for (t, r) in targets.iter().zip(rows) {
        let relay = |c: Cpu| {
            if t.relays.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", c.relay)
            }
        };
        println!(
            "{:<30} {:>10} {:>10} {:>10.1} {:>10.1} {:>13.2} {:>11} {:>13.2} {:>11}",
            t.label,
            r.p50.as_micros(),
            r.p99.as_micros(),
            r.scp,
            r.fwd,
            r.scp_cpu.machine,
            relay(r.scp_cpu),
            r.fwd_cpu.machine,
            relay(r.fwd_cpu)
        );
    }
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

/// Keystroke round trips (p50, p99) on every target, measured on all of them in turn.
fn keystroke_rtt(targets: &[&Target], keystrokes: usize) -> Result<Vec<(Duration, Duration)>> {
    let commands = targets
        .iter()
        .map(|t| {
            let mut cmd = Command::new("ssh");
            cmd.args(&t.ssh_args).args(["-tt", &t.dest]);
            cmd
        })
        .collect();
    let samples = interleaved_keystroke_rtts(commands, keystrokes)?;
    Ok(samples
        .iter()
        .map(|s| (quantile(s, 0.5), quantile(s, 0.99)))
        .collect())
}

fn scp_upload(t: &Target, file: &std::path::Path, remote_dir: &std::path::Path) -> Result<f64> {
    let dest = format!("{}:{}/upload", t.dest, remote_dir.display());
    let start = Instant::now();
    let st = Command::new("scp")
        .args(&t.scp_args)
        .arg(file)
        .arg(&dest)
        .status()?;
    let secs = start.elapsed().as_secs_f64();
    if !st.success() {
        bail!("{}: scp failed", t.label);
    }
    let _ = std::fs::remove_file(remote_dir.join("upload"));
    Ok(BULK as f64 / secs / (1 << 20) as f64)
}

/// A sink that reads everything from each connection and reports the byte count.
fn sink() -> Result<(u16, std::sync::mpsc::Receiver<usize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Two connections per forward measured (the readiness probe and the transfer), for
        // every path and round; the bound only keeps the thread from outliving a broken run.
        for s in listener.incoming().take(1024) {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                let _ = s.write_all(b"k");
                let _ = tx.send(total);
            });
        }
    });
    Ok((port, rx))
}

fn forward_throughput(
    t: &Target,
    sink_port: u16,
    done: &std::sync::mpsc::Receiver<usize>,
) -> Result<f64> {
    let local = free_port()?;
    let mut cmd = Command::new("ssh");
    cmd.args(&t.ssh_args).args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("127.0.0.1:{local}:127.0.0.1:{sink_port}"),
        &t.dest,
    ]);
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn()?;
    wait_for_port(local)?;
    let mut conn = TcpStream::connect(("127.0.0.1", local))?;
    let chunk = vec![0x5au8; 1 << 16];
    let start = Instant::now();
    let mut sent = 0;
    while sent < BULK {
        conn.write_all(&chunk)?;
        sent += chunk.len();
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    // The readiness probe of the forward port shows up at the sink as an empty connection.
    let got = loop {
        let n = done.recv_timeout(Duration::from_secs(120))?;
        if n != 0 {
            break n;
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    if got != BULK {
        bail!("{}: forward delivered {got} of {BULK} bytes", t.label);
    }
    Ok(BULK as f64 / secs / (1 << 20) as f64)
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let rounds = env_usize("RELAY_OVERHEAD_ROUNDS", 1)?;
    let keystrokes = env_usize("RELAY_OVERHEAD_KEYSTROKES", KEYSTROKES)?.max(1);
    let cluster = env_usize("RELAY_OVERHEAD_CLUSTER", 1)? != 0;
    adopt_orphans()?;
    let (sink_port, sink_done) = sink()?;
    let relay = Relay::start()?;
    relay.tenant("bench")?;
    let engineer = relay.engineer("bench", "bench", "admin")?;
    let engineer_pub = engineer.key.with_extension("pub");
    let sshd = Sshd::start(&engineer_pub)?;
    let mut agent = Agent::new("bench-board", &[format!("127.0.0.1:{sink_port}")])?;
    agent.enroll(&relay, Transport::Tcp, "bench")?;
    agent.start()?;
    agent.wait_online()?;
    let mut ws_agent = Agent::new("bench-ws", &[format!("127.0.0.1:{sink_port}")])?;
    ws_agent.enroll(&relay, Transport::WebSocket, "bench")?;
    ws_agent.start()?;
    ws_agent.wait_online()?;
    // The same tcp link with every session through the agent's embedded SSH server (as
    // through another relay of a cluster, or with agents before link sessions).
    let mut embedded_agent = Agent::with_extra_config(
        "bench-embedded",
        &[format!("127.0.0.1:{sink_port}")],
        "link:\n  channel_sessions: false\n",
    )?;
    embedded_agent.enroll(&relay, Transport::Tcp, "bench")?;
    embedded_agent.start()?;
    embedded_agent.wait_online()?;
    let relay_pid = relay.pid().context("relay pid")?;

    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let cfg = engineer.ssh_config.display().to_string();

    // The reverse tunnel: a jump sshd; the board's `ssh -N -R` to it publishes the board's
    // sshd on a loopback port of the jump host, which the engineer reaches with `ssh -J`.
    let jump = Sshd::start(&engineer_pub)?;
    let tunnel_port = free_port()?;
    let _board_tunnel = KillOnDrop(
        Command::new("ssh")
            .args([
                "-F",
                &cfg,
                "-p",
                &jump.port.to_string(),
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("127.0.0.1:{tunnel_port}:127.0.0.1:{}", sshd.port),
                &format!("{user}@127.0.0.1"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the board's ssh -R")?,
    );
    wait_for_port(tunnel_port).context("the reverse tunnel's port")?;
    let jump_spec = format!("{user}@127.0.0.1:{}", jump.port);

    let direct = Target {
        label: "direct sshd",
        ssh_args: vec!["-F".into(), cfg.clone(), "-p".into(), sshd.port.to_string()],
        scp_args: vec!["-F".into(), cfg.clone(), "-P".into(), sshd.port.to_string()],
        dest: format!("{user}@127.0.0.1"),
        relays: vec![],
    };
    let tunnel = Target {
        label: "openssh reverse tunnel (-J)",
        ssh_args: vec![
            "-F".into(),
            cfg.clone(),
            "-J".into(),
            jump_spec.clone(),
            "-p".into(),
            tunnel_port.to_string(),
        ],
        scp_args: vec![
            "-F".into(),
            cfg.clone(),
            "-J".into(),
            jump_spec.clone(),
            "-P".into(),
            tunnel_port.to_string(),
        ],
        dest: format!("{user}@127.0.0.1"),
        relays: vec![],
    };
    let relay_target = |label, device: &str| Target {
        label,
        ssh_args: vec![
            "-F".into(),
            cfg.clone(),
            "-p".into(),
            relay.ssh_port.to_string(),
        ],
        scp_args: vec![
            "-F".into(),
            cfg.clone(),
            "-P".into(),
            relay.ssh_port.to_string(),
        ],
        dest: format!("{device}@127.0.0.1"),
        relays: vec![relay_pid],
    };
    let via_relay = relay_target("tether relay (tcp link)", "bench-board");
    let via_ws = relay_target("tether relay (websocket link)", "bench-ws");
    let via_embedded = relay_target("tether relay (tcp, embedded server)", "bench-embedded");

    let work = tempfile::tempdir()?;
    let file = work.path().join("bulk");
    std::fs::write(&file, pseudo_random(BULK, 42))?;
    let remote = tempfile::tempdir()?;

    println!(
        "relay overhead on loopback ({keystrokes} keystrokes, {} MiB bulk, median of {rounds} round(s))",
        BULK >> 20
    );
    let only = std::env::var("RELAY_OVERHEAD_PATHS").ok();
    let targets: Vec<&Target> = [
        ("direct", &direct),
        ("tunnel", &tunnel),
        ("tcp", &via_relay),
        ("ws", &via_ws),
        ("embedded", &via_embedded),
    ]
    .into_iter()
    .filter(|(key, _)| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|k| k == *key))
    })
    .map(|(_, t)| t)
    .collect();
    let rows = match measure(
        &targets,
        rounds,
        keystrokes,
        &file,
        remote.path(),
        sink_port,
        &sink_done,
    ) {
        Ok(rows) => rows,
        Err(e) => {
            // What the relay and the boards said is what explains a failed path.
            for (who, log) in [
                ("relay", relay.log()),
                ("tcp board", agent.log()),
                ("websocket board", ws_agent.log()),
                ("embedded-server board", embedded_agent.log()),
            ] {
                eprintln!("--- {who} log (last lines) ---\n{}", tail_lines(&log, 40));
            }
            return Err(e);
        }
    };
    print_rows(&targets, &rows);
    if only.is_some() {
        return Ok(());
    }
    let (base, rev) = (rows[0], rows[1]);
    for (t, row) in targets[2..].iter().zip(&rows[2..]) {
        let rtt = format!(
            "{}: RTT p50 +{} µs, p99 +{} µs over direct",
            t.label,
            row.p50.as_micros() as i128 - base.p50.as_micros() as i128,
            row.p99.as_micros() as i128 - base.p99.as_micros() as i128,
        );
        if rounds == 0 {
            println!("{rtt}");
            continue;
        }
        println!(
            "{rtt}; scp {:.2}x direct, {:.2}x tunnel; -L {:.2}x direct, {:.2}x tunnel; \
             machine CPU/GiB scp {:.2}x tunnel, -L {:.2}x tunnel",
            row.scp / base.scp,
            row.scp / rev.scp,
            row.fwd / base.fwd,
            row.fwd / rev.fwd,
            row.scp_cpu.machine / rev.scp_cpu.machine,
            row.fwd_cpu.machine / rev.fwd_cpu.machine,
        );
    }
    if !cluster {
        return Ok(());
    }

    // A cluster: the board on relay 1; the engineer on relay 1, then on relay 2.
    let pg = Postgres::start()?;
    let db = pg.create_database("bench")?;
    let nats = Nats::start()?;
    let cluster_relay = |id: &str| -> Result<Relay> {
        Relay::start_with_config(&format!(
            "store:\n  url: {db}\ncluster:\n  nats: {}\n  relay_id: {id}\n  peer_listen: 127.0.0.1:{}\n",
            nats.url(),
            free_port()?
        ))
    };
    let r1 = cluster_relay("r1")?;
    let r2 = cluster_relay("r2")?;
    r1.tenant("bench")?;
    let clustered = r1.engineer("bench", "bench", "admin")?;
    let mut board = Agent::new("bench-cluster", &[format!("127.0.0.1:{sink_port}")])?;
    board.enroll(&r1, Transport::Tcp, "bench")?;
    board.start()?;
    board.wait_online()?;
    let ccfg = clustered.ssh_config.display().to_string();
    let both = vec![
        r1.pid().context("relay 1 pid")?,
        r2.pid().context("relay 2 pid")?,
    ];
    let cluster_target = |label, relay: &Relay| Target {
        label,
        ssh_args: vec![
            "-F".into(),
            ccfg.clone(),
            "-p".into(),
            relay.ssh_port.to_string(),
        ],
        scp_args: vec![
            "-F".into(),
            ccfg.clone(),
            "-P".into(),
            relay.ssh_port.to_string(),
        ],
        dest: "bench-cluster@127.0.0.1".into(),
        relays: both.clone(),
    };
    let same = cluster_target("cluster, same relay", &r1);
    let other = cluster_target("cluster, other relay", &r2);
    let cluster_targets = [&same, &other];
    let cluster_rows = measure(
        &cluster_targets,
        rounds,
        keystrokes,
        &file,
        remote.path(),
        sink_port,
        &sink_done,
    )?;
    print_rows(&cluster_targets, &cluster_rows);
    let (same_row, other_row) = (cluster_rows[0], cluster_rows[1]);
    println!(
        "other relay vs same relay: RTT p50 +{} µs, p99 +{} µs; scp {:.2}x; -L {:.2}x",
        other_row.p50.as_micros() as i128 - same_row.p50.as_micros() as i128,
        other_row.p99.as_micros() as i128 - same_row.p99.as_micros() as i128,
        other_row.scp / same_row.scp,
        other_row.fwd / same_row.fwd
    );
    Ok(())
}
