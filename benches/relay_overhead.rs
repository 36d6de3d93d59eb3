//! Relay overhead benchmark: the same work through the tether relay and agent versus directly
//! against a local OpenSSH sshd, measured in one run on loopback.
//!
//! - keystroke round trip: one byte through `ssh -tt host 'stty raw -echo; cat'` and back;
//! - bulk upload: scp of 256 MiB;
//! - port forward: 256 MiB through `ssh -L` to a local sink.
//!
//! The same three again on a cluster of two relays (one PostgreSQL store, NATS presence): the
//! engineer on the relay that holds the board, and on the other relay, which carries the
//! session over its peer connection to the holder.
//!
//! Run with `cargo bench --bench relay_overhead`. Needs openssh-client and openssh-server.

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

/// How to reach a shell: ssh arguments up to (not including) the remote command.
struct Target {
    label: &'static str,
    ssh_args: Vec<String>,
    scp_args: Vec<String>,
    dest: String,
}

fn keystroke_rtt(t: &Target) -> Result<(Duration, Duration)> {
    let mut cmd = Command::new("ssh");
    cmd.args(&t.ssh_args).args(["-tt", &t.dest]);
    let samples = keystroke_rtts(cmd, KEYSTROKES).with_context(|| t.label)?;
    Ok((quantile(&samples, 0.5), quantile(&samples, 0.99)))
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
        for s in listener.incoming().take(16) {
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
    let (sink_port, sink_done) = sink()?;
    let relay = Relay::start()?;
    relay.tenant("bench")?;
    let engineer = relay.engineer("bench", "bench", "admin")?;
    let sshd = Sshd::start(&engineer.key.with_extension("pub"))?;
    let mut agent = Agent::new("bench-board", &[format!("127.0.0.1:{sink_port}")])?;
    agent.enroll(&relay, Transport::Tcp, "bench")?;
    agent.start()?;
    agent.wait_online()?;
    let mut ws_agent = Agent::new("bench-ws", &[format!("127.0.0.1:{sink_port}")])?;
    ws_agent.enroll(&relay, Transport::WebSocket, "bench")?;
    ws_agent.start()?;
    ws_agent.wait_online()?;

    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let cfg = engineer.ssh_config.display().to_string();
    let direct = Target {
        label: "direct sshd",
        ssh_args: vec!["-F".into(), cfg.clone(), "-p".into(), sshd.port.to_string()],
        scp_args: vec!["-F".into(), cfg.clone(), "-P".into(), sshd.port.to_string()],
        dest: format!("{user}@127.0.0.1"),
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
    };
    let via_relay = relay_target("tether relay (tcp link)", "bench-board");
    let via_ws = relay_target("tether relay (websocket link)", "bench-ws");

    let work = tempfile::tempdir()?;
    let file = work.path().join("bulk");
    std::fs::write(&file, pseudo_random(BULK, 42))?;
    let remote = tempfile::tempdir()?;

    println!(
        "relay overhead on loopback ({KEYSTROKES} keystrokes, {} MiB bulk)",
        BULK >> 20
    );
    println!(
        "{:<30} {:>12} {:>12} {:>12} {:>12}",
        "path", "RTT p50 µs", "RTT p99 µs", "scp MiB/s", "-L MiB/s"
    );
    let mut rows = Vec::new();
    for t in [&direct, &via_relay, &via_ws] {
        let (p50, p99) = keystroke_rtt(t)?;
        let scp = scp_upload(t, &file, remote.path())?;
        let fwd = forward_throughput(t, sink_port, &sink_done)?;
        println!(
            "{:<30} {:>12} {:>12} {:>12.1} {:>12.1}",
            t.label,
            p50.as_micros(),
            p99.as_micros(),
            scp,
            fwd
        );
        rows.push((p50, p99, scp, fwd));
    }
    let base = rows[0];

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
    };
    let same = cluster_target("cluster, same relay", &r1);
    let other = cluster_target("cluster, other relay", &r2);
    for t in [&same, &other] {
        let (p50, p99) = keystroke_rtt(t)?;
        let scp = scp_upload(t, &file, remote.path())?;
        let fwd = forward_throughput(t, sink_port, &sink_done)?;
        println!(
            "{:<30} {:>12} {:>12} {:>12.1} {:>12.1}",
            t.label,
            p50.as_micros(),
            p99.as_micros(),
            scp,
            fwd
        );
        rows.push((p50, p99, scp, fwd));
    }
    let (same_row, other_row) = (rows[3], rows[4]);
    println!(
        "other relay vs same relay: RTT p50 +{} µs, p99 +{} µs; scp {:.2}x; -L {:.2}x",
        other_row.0.as_micros() as i128 - same_row.0.as_micros() as i128,
        other_row.1.as_micros() as i128 - same_row.1.as_micros() as i128,
        other_row.2 / same_row.2,
        other_row.3 / same_row.3
    );
    for (t, row) in [&via_relay, &via_ws].iter().zip(&rows[1..]) {
        println!(
            "{}: RTT overhead p50 {} µs, p99 {} µs; scp {:.2}x direct; -L {:.2}x direct",
            t.label,
            row.0.as_micros() as i128 - base.0.as_micros() as i128,
            row.1.as_micros() as i128 - base.1.as_micros() as i128,
            row.2 / base.2,
            row.3 / base.3
        );
    }
    Ok(())
}
