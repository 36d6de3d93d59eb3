//! Engineers reach a device through the relay with stock OpenSSH: exec, stdin, pty shells,
//! scp/sftp, -L forwards and ProxyJump, over both link transports.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

fn exec_and_stdin(transport: Transport) -> Result<()> {
    let s = Setup::new(transport)?;
    exec_and_stdin_on(&s)?;
    // By default sessions travel straight on link channels, not through the embedded server.
    let log = s.agent.log();
    ensure!(
        log.contains("on a link session") && !log.contains("for engineer alice"),
        "sessions did not travel as link sessions:\n{log}"
    );
    Ok(())
}

fn exec_and_stdin_on(s: &Setup) -> Result<()> {
    let r = s
        .engineer
        .exec("board1", "echo out; echo err >&2; exit 7")?;
    ensure!(
        r.status == Some(7),
        "exit status {:?}, stderr {}",
        r.status,
        r.stderr
    );
    ensure!(r.stdout == "out\n", "stdout {:?}", r.stdout);
    ensure!(r.stderr.contains("err"), "stderr {:?}", r.stderr);

    let r = s
        .engineer
        .exec_input("board1", "cat; echo done", Some(b"hi\nthere\n"))?;
    ensure!(r.status == Some(0), "cat: {:?} {}", r.status, r.stderr);
    ensure!(
        r.stdout == "hi\nthere\ndone\n",
        "stdin piping gave {:?}",
        r.stdout
    );

    // A large stdin stream comes back byte-exact.
    let data = pseudo_random(3 << 20, 7);
    let r = {
        let cmd = s.engineer.ssh_cmd(&[
            "-p",
            &s.engineer.ssh_port.to_string(),
            "board1@127.0.0.1",
            "cat",
        ]);
        let mut cmd = cmd;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let sent = data.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&sent));
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_end(&mut out)?;
        let _ = writer.join();
        let _ = child.wait();
        out
    };
    ensure!(
        r.len() == data.len() && r == data,
        "echoed {} of {} bytes",
        r.len(),
        data.len()
    );

    // The command runs as a login shell would see it.
    let r = s
        .engineer
        .exec("board1", "echo $HOME; echo $USER; id -un")?;
    let lines: Vec<&str> = r.stdout.lines().collect();
    ensure!(
        lines.len() == 3 && !lines[0].is_empty() && lines[1] == lines[2],
        "env {:?}",
        r.stdout
    );

    // A command killed by a signal is reported like OpenSSH does (ssh exits 255).
    let r = s.engineer.exec("board1", "kill -TERM $$")?;
    ensure!(r.status == Some(255), "killed command gave {:?}", r.status);

    // Accepted environment variables pass, others do not.
    let mut cmd = s.engineer.ssh_cmd(&[
        "-p",
        &s.engineer.ssh_port.to_string(),
        "-o",
        "SetEnv=LANG=C.UTF-8 TETHER_SECRET=x",
        "board1@127.0.0.1",
        "echo lang=$LANG secret=$TETHER_SECRET",
    ]);
    cmd.env_remove("LANG");
    let r = run_with_timeout(cmd, None, Duration::from_secs(30))?;
    ensure!(
        r.stdout.trim() == "lang=C.UTF-8 secret=",
        "env passing gave {:?}",
        r.stdout
    );

    // A flood of allowed variables is cut at the board's bounds (256 variables, 64 KiB) and
    // the session still runs: 300 short ones, then 120 of a kilobyte each.
    for (count, len, most, least) in [(300usize, 1usize, 256usize, 200usize), (120, 1000, 65, 50)] {
        let value = "v".repeat(len);
        let vars: Vec<String> = (0..count).map(|i| format!("LC_F{i}={value}")).collect();
        let set_env = format!("SetEnv={}", vars.join(" "));
        let cmd = s.engineer.ssh_cmd(&[
            "-p",
            &s.engineer.ssh_port.to_string(),
            "-o",
            &set_env,
            "board1@127.0.0.1",
            "env | grep -c '^LC_F'",
        ]);
        let r = run_with_timeout(cmd, None, Duration::from_secs(30))?;
        let got: usize = r.stdout.trim().parse().with_context(|| {
            format!(
                "{count} variables of {len} bytes: {:?} {:?}",
                r.stdout, r.stderr
            )
        })?;
        ensure!(
            r.status == Some(0) && (least..=most).contains(&got),
            "{count} variables of {len} bytes: {got} reached the command (status {:?})",
            r.status
        );
    }
    Ok(())
}

#[test]
fn exec_and_stdin_over_tcp() -> Result<()> {
    exec_and_stdin(Transport::Tcp)
}

#[test]
fn exec_and_stdin_over_websocket() -> Result<()> {
    exec_and_stdin(Transport::WebSocket)
}

/// `link.channel_sessions: false`: the agent announces its link as agents before link sessions
/// did, and the relay carries every session to its embedded SSH server, with the same results.
#[test]
fn exec_and_stdin_through_the_embedded_ssh_server() -> Result<()> {
    let s = Setup::with_agent_config(Transport::Tcp, &[], "link:\n  channel_sessions: false\n")?;
    exec_and_stdin_on(&s)?;
    ensure!(
        s.agent.log().contains("for engineer alice"),
        "the sessions did not go through the embedded server:\n{}",
        s.agent.log()
    );
    Ok(())
}

fn files(transport: Transport) -> Result<()> {
    let s = Setup::new(transport)?;
    let work = tempfile::tempdir()?;
    let remote_dir = tempfile::tempdir()?;
    let rd = remote_dir.path().display().to_string();
    for (name, len) in [("empty", 0usize), ("small", 1000), ("big", 24 << 20)] {
        let local = work.path().join(name);
        std::fs::write(&local, pseudo_random(len, len as u64 + 1))?;
        let r = s.engineer.scp(&[
            &local.display().to_string(),
            &format!("board1@127.0.0.1:{rd}/{name}"),
        ])?;
        ensure!(r.status == Some(0), "scp upload {name}: {}", r.stderr);
        ensure!(
            std::fs::read(remote_dir.path().join(name))? == std::fs::read(&local)?,
            "upload {name} differs"
        );
        let back = work.path().join(format!("{name}.back"));
        let r = s.engineer.scp(&[
            &format!("board1@127.0.0.1:{rd}/{name}"),
            &back.display().to_string(),
        ])?;
        ensure!(r.status == Some(0), "scp download {name}: {}", r.stderr);
        ensure!(
            std::fs::read(&back)? == std::fs::read(&local)?,
            "download {name} differs"
        );
    }
    let local = work.path().join("small");
    let batch = format!(
        "mkdir {rd}/sub\nput {} {rd}/sub/f\nls {rd}/sub\nrename {rd}/sub/f {rd}/sub/g\nget {rd}/sub/g {}\nrm {rd}/sub/g\nrmdir {rd}/sub\n",
        local.display(),
        work.path().join("g").display()
    );
    let r = s.engineer.sftp_batch("board1", &batch)?;
    ensure!(r.status == Some(0), "sftp batch: {}{}", r.stdout, r.stderr);
    ensure!(r.stdout.contains("/sub/f"), "sftp ls output {:?}", r.stdout);
    ensure!(
        std::fs::read(work.path().join("g"))? == std::fs::read(&local)?,
        "sftp get differs"
    );
    ensure!(
        !remote_dir.path().join("sub").exists(),
        "sftp rmdir left the directory"
    );
    Ok(())
}

#[test]
fn scp_and_sftp_over_tcp() -> Result<()> {
    files(Transport::Tcp)
}

#[test]
fn scp_and_sftp_over_websocket() -> Result<()> {
    files(Transport::WebSocket)
}

fn local_forward(transport: Transport) -> Result<()> {
    let echo = echo_server()?;
    let s = Setup::with_allow(transport, &[format!("127.0.0.1:{echo}")])?;
    let local = free_port()?;
    let mut cmd = s.engineer.ssh_cmd(&[
        "-p",
        &s.engineer.ssh_port.to_string(),
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("127.0.0.1:{local}:127.0.0.1:{echo}"),
        "board1@127.0.0.1",
    ]);
    cmd.stdin(std::process::Stdio::null());
    let mut child = KillOnDrop(cmd.spawn()?);
    wait_for_port(local)?;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let payload = pseudo_random(200_000, 3);
    let mut got = vec![0u8; payload.len()];
    let sent = payload.clone();
    let mut writer = conn.try_clone()?;
    let w = std::thread::spawn(move || writer.write_all(&sent));
    conn.read_exact(&mut got)?;
    let _ = w.join();
    ensure!(got == payload, "forwarded bytes differ");

    // A target the device does not allow is refused: the forwarded connection closes at once.
    let refused_port = echo_server()?;
    let local2 = free_port()?;
    let mut cmd = s.engineer.ssh_cmd(&[
        "-p",
        &s.engineer.ssh_port.to_string(),
        "-N",
        "-L",
        &format!("127.0.0.1:{local2}:127.0.0.1:{refused_port}"),
        "board1@127.0.0.1",
    ]);
    cmd.stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let _child2 = KillOnDrop(cmd.spawn()?);
    wait_for_port(local2)?;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = conn.write_all(b"hello");
    let mut buf = [0u8; 16];
    let n = conn.read(&mut buf).unwrap_or(0);
    ensure!(n == 0, "a refused forward returned data");
    ensure!(
        s.agent.log().contains("not in forward.allow"),
        "agent did not log the refusal"
    );
    child.0.kill()?;
    Ok(())
}

/// A forward whose engineer stops reading while the device's service keeps sending: the
/// board's other sessions must not wait for that engineer.
#[test]
fn a_forward_nobody_reads_holds_up_no_one_else() -> Result<()> {
    // A device-local service that sends 256 MiB to whoever connects.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let service = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let block = vec![b'f'; 64 * 1024];
                for _ in 0..4096 {
                    if conn.write_all(&block).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let s = Setup::with_allow(Transport::Tcp, &[format!("127.0.0.1:{service}")])?;
    let local = free_port()?;
    let mut cmd = s.engineer.ssh_cmd(&[
        "-p",
        &s.engineer.ssh_port.to_string(),
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("127.0.0.1:{local}:127.0.0.1:{service}"),
        "board1@127.0.0.1",
    ]);
    cmd.stdin(std::process::Stdio::null());
    let _forward = KillOnDrop(cmd.spawn()?);
    wait_for_port(local)?;
    // Connected, and never read.
    let _unread = std::net::TcpStream::connect(("127.0.0.1", local))?;
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..3 {
        let started = Instant::now();
        let r = s.engineer.exec("board1", &format!("echo n={i}"))?;
        ensure!(
            r.status == Some(0) && r.stdout == format!("n={i}\n"),
            "session {i} beside the unread forward: {:?} {:?} {}",
            r.status,
            r.stdout,
            r.stderr
        );
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "session {i} took {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

#[test]
fn local_forward_over_tcp() -> Result<()> {
    local_forward(Transport::Tcp)
}

#[test]
fn local_forward_over_websocket() -> Result<()> {
    local_forward(Transport::WebSocket)
}

fn proxy_jump(transport: Transport) -> Result<()> {
    if sshd_path().is_none() {
        eprintln!("skipping: sshd not installed");
        return Ok(());
    }
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let engineer = relay.engineer("alice", "acme", "operator")?;
    let sshd = Sshd::start(&engineer.key.with_extension("pub"))?;
    let mut agent = Agent::new("board1", &[format!("127.0.0.1:{}", sshd.port)])?;
    agent.enroll(&relay, transport, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let cmd = engineer.ssh_cmd(&[
        "-J",
        "relay",
        "-p",
        &sshd.port.to_string(),
        &format!("{user}@board1"),
        "echo via-sshd; echo $SSH_CONNECTION",
    ]);
    let r = run_with_timeout(cmd, None, Duration::from_secs(60))?;
    ensure!(r.status == Some(0), "ProxyJump failed: {}", r.stderr);
    ensure!(r.stdout.starts_with("via-sshd\n"), "output {:?}", r.stdout);
    // The device's sshd saw a connection from the agent (loopback), proving bytes went end to end.
    ensure!(
        r.stdout.contains("127.0.0.1"),
        "SSH_CONNECTION {:?}",
        r.stdout
    );
    Ok(())
}

#[test]
fn proxy_jump_to_device_sshd_over_tcp() -> Result<()> {
    proxy_jump(Transport::Tcp)
}

#[test]
fn proxy_jump_to_device_sshd_over_websocket() -> Result<()> {
    proxy_jump(Transport::WebSocket)
}

fn pty_shell(transport: Transport) -> Result<()> {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipping: tmux not installed");
        return Ok(());
    }
    let s = Setup::new(transport)?;
    let ssh = format!(
        "ssh -F {} -p {} -tt board1@127.0.0.1",
        s.engineer.ssh_config.display(),
        s.engineer.ssh_port
    );
    let t = Tmux::new(&ssh, 100, 30)?;
    t.send(&["echo tty=$(tty) term=$TERM", "Enter"])?;
    t.wait_for("tty=/dev/pts/")?;
    t.send(&["stty size", "Enter"])?;
    t.wait_for("30 100")?;
    // The terminal size change reaches the remote pty.
    t.tmux(&["resize-window", "-t", "0", "-x", "120", "-y", "40"])?;
    std::thread::sleep(Duration::from_millis(300));
    t.send(&["clear; stty size", "Enter"])?;
    t.wait_for("40 120")?;
    // Ctrl-C interrupts the remote foreground process.
    t.send(&["sleep 30; echo not-interrupted", "Enter"])?;
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    t.send(&["C-c"])?;
    t.send(&["echo after-$((6*7))", "Enter"])?;
    t.wait_for("after-42")?;
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "Ctrl-C took {:?}",
        started.elapsed()
    );
    ensure!(
        !t.screen().lines().any(|l| l.trim() == "not-interrupted"),
        "sleep was not interrupted"
    );
    t.send(&["exit", "Enter"])?;
    Ok(())
}

#[test]
fn pty_shell_over_tcp() -> Result<()> {
    pty_shell(Transport::Tcp)
}

#[test]
fn pty_shell_over_websocket() -> Result<()> {
    pty_shell(Transport::WebSocket)
}

#[test]
fn many_sessions_and_devices_and_a_stalled_session() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let engineer = relay.engineer("alice", "acme", "admin")?;
    let mut agents = Vec::new();
    for (i, transport) in [Transport::Tcp, Transport::WebSocket, Transport::Tcp]
        .into_iter()
        .enumerate()
    {
        let mut a = Agent::new(&format!("board{i}"), &[])?;
        a.enroll(&relay, transport, "acme")?;
        a.start()?;
        agents.push(a);
    }
    for a in &agents {
        a.wait_online()?;
    }
    // A session whose output nobody reads: its flow control must not hold up anyone else.
    let mut stalled = engineer.ssh_cmd(&[
        "-p",
        &engineer.ssh_port.to_string(),
        "board0@127.0.0.1",
        "yes",
    ]);
    stalled
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let _stalled = KillOnDrop(stalled.spawn()?);
    std::thread::sleep(Duration::from_millis(500));

    let mut handles = Vec::new();
    for i in 0..12 {
        let device = format!("board{}", i % 3);
        let cfg = engineer.ssh_config.clone();
        let port = engineer.ssh_port;
        handles.push(std::thread::spawn(move || -> Result<()> {
            let mut cmd = Command::new("ssh");
            cmd.arg("-F").arg(&cfg).args([
                "-p",
                &port.to_string(),
                &format!("{device}@127.0.0.1"),
                &format!("sleep 1; echo n={i}"),
            ]);
            let r = run_with_timeout(cmd, None, Duration::from_secs(60))?;
            ensure!(
                r.status == Some(0) && r.stdout.trim() == format!("n={i}"),
                "session {i}: {:?} {} {}",
                r.status,
                r.stdout,
                r.stderr
            );
            Ok(())
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("session thread panicked"))??;
    }
    Ok(())
}

/// The other direction of the stalled session above: an engineer streams input into a
/// process that never reads it. The session gets only the agent's credit of input (the rest
/// waits in the engineer's client), and the board's other sessions and its link carry on.
#[test]
fn a_process_that_never_reads_its_input_holds_up_no_one_else() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let engineer = relay.engineer("alice", "acme", "admin")?;
    let mut agent = Agent::new("board0", &[])?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;

    let mut stuck = engineer.ssh_cmd(&[
        "-p",
        &engineer.ssh_port.to_string(),
        "board0@127.0.0.1",
        "sleep 60",
    ]);
    stuck
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut stuck = KillOnDrop(stuck.spawn()?);
    let Some(mut stdin) = stuck.0.stdin.take() else {
        anyhow::bail!("no stdin for the stuck session");
    };
    // 64 MiB offered; the writer thread blocks once the path is full and ends when the
    // session is killed.
    let (written_tx, written_rx) = std::sync::mpsc::channel::<usize>();
    std::thread::spawn(move || {
        use std::io::Write;
        let block = vec![b'y'; 64 * 1024];
        let mut total = 0;
        for _ in 0..1024 {
            if stdin.write_all(&block).is_err() {
                break;
            }
            total += block.len();
            let _ = written_tx.send(total);
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let offered = written_rx.try_iter().last().unwrap_or(0);
    ensure!(
        offered < 32 * 1024 * 1024,
        "{offered} bytes went into a process that reads none"
    );

    for i in 0..6 {
        let r = engineer.exec("board0", &format!("echo n={i}"))?;
        ensure!(
            r.status == Some(0) && r.stdout == format!("n={i}\n"),
            "session {i} beside the stuck one: {:?} {:?} {}",
            r.status,
            r.stdout,
            r.stderr
        );
    }
    let r = engineer.exec_input("board0", "wc -c", Some(&vec![b'z'; 3 * 1024 * 1024]))?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == (3 * 1024 * 1024).to_string(),
        "3 MiB through a second session: {:?} {:?} {}",
        r.status,
        r.stdout,
        r.stderr
    );
    Ok(())
}

#[test]
fn sessions_run_as_the_configured_user() -> Result<()> {
    let root = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("skipping: switching users needs root");
        return Ok(());
    }
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let engineer = relay.engineer("alice", "acme", "admin")?;
    // `nobody` has no login shell; shell.shell gives it one for the test.
    let mut agent =
        Agent::with_extra_config("board1", &[], "shell:\n  user: nobody\n  shell: /bin/sh\n")?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    let r = engineer.exec("board1", "id -un; echo $HOME; echo $USER")?;
    ensure!(
        r.stdout == "nobody\n/\nnobody\n",
        "session identity {:?} {}",
        r.stdout,
        r.stderr
    );

    // File access through sftp is checked as that user too: a root-only directory is closed.
    let private = tempfile::tempdir()?;
    let local = tempfile::NamedTempFile::new()?;
    std::fs::write(local.path(), b"x")?;
    let r = engineer.scp(&[
        &local.path().display().to_string(),
        &format!("board1@127.0.0.1:{}/f", private.path().display()),
    ])?;
    ensure!(
        r.status != Some(0),
        "nobody wrote into a root-only directory"
    );
    ensure!(
        !private.path().join("f").exists(),
        "file created as nobody in a 0700 root directory"
    );
    let open_dir = tempfile::tempdir()?;
    std::fs::set_permissions(
        open_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    let r = engineer.scp(&[
        &local.path().display().to_string(),
        &format!("board1@127.0.0.1:{}/f", open_dir.path().display()),
    ])?;
    ensure!(
        r.status == Some(0),
        "scp into a world-writable directory: {}",
        r.stderr
    );
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(open_dir.path().join("f"))?);
    ensure!(
        owner != 0,
        "uploaded file is owned by root, not by the session user"
    );
    Ok(())
}

#[test]
fn a_vanished_engineer_hangs_up_the_remote_process() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let mut cmd = s.engineer.ssh_cmd(&[
        "-p",
        &s.engineer.ssh_port.to_string(),
        "board1@127.0.0.1",
        "echo $$; exec sleep 1000",
    ]);
    cmd.stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut ssh = KillOnDrop(cmd.spawn()?);
    let mut out = ssh.0.stdout.take().context("stdout")?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let pid: u32 = String::from_utf8_lossy(&line).trim().parse()?;
    ensure!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "remote process {pid} not running"
    );
    // The engineer's client dies without a goodbye.
    ssh.0.kill()?;
    let _ = ssh.0.wait();
    wait_until(Duration::from_secs(15), "remote process gone", || {
        // A zombie is gone as far as the session is concerned; the agent reaps it.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.contains(") Z "))
            .unwrap_or(true)
    })?;
    // The device is still reachable for everyone else.
    let r = s.engineer.exec("board1", "echo alive")?;
    ensure!(
        r.stdout == "alive\n",
        "after a vanished session: {}",
        r.stderr
    );
    Ok(())
}

/// Reads "resident A -> B MiB" from the agent's log line about its start-up pages.
fn resident_before_after(log: &str) -> Option<(f64, f64)> {
    let line = log
        .lines()
        .find(|l| l.contains("start-up pages given back"))?;
    let (_, figures) = line.rsplit_once("resident ")?;
    let (before, after) = figures.split_once(" -> ")?;
    let after = after.split_whitespace().next()?;
    Some((before.trim().parse().ok()?, after.parse().ok()?))
}

#[test]
fn an_agent_that_gave_back_its_start_up_pages_serves_shells_and_files() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let engineer = relay.engineer("alice", "acme", "admin")?;
    let mut agent = Agent::with_extra_config("board1", &[], "memory:\n  page_out_after: 1s\n")?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    let mut figures = None;
    wait_until(
        Duration::from_secs(20),
        "the start-up pages given back",
        || {
            figures = resident_before_after(&agent.log());
            figures.is_some()
        },
    )?;
    let (before, after) = figures.context("no figures")?;
    ensure!(
        after < before,
        "resident memory did not shrink: {before} -> {after} MiB\n{}",
        agent.log()
    );

    // The code it gave back comes back when it runs: a command, a pty shell, a file both ways.
    let r = engineer.exec("board1", "echo still; exit 3")?;
    ensure!(
        r.status == Some(3) && r.stdout == "still\n",
        "exec after the page-out: {:?} {:?} {}",
        r.status,
        r.stdout,
        r.stderr
    );
    let data = pseudo_random(1 << 20, 11);
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("up");
    std::fs::write(&local, &data)?;
    let remote = dir.path().join("remote");
    let r = engineer.scp(&[
        &local.display().to_string(),
        &format!("board1@127.0.0.1:{}", remote.display()),
    ])?;
    ensure!(r.status == Some(0), "scp up: {}", r.stderr);
    let back = dir.path().join("back");
    let r = engineer.scp(&[
        &format!("board1@127.0.0.1:{}", remote.display()),
        &back.display().to_string(),
    ])?;
    ensure!(r.status == Some(0), "scp down: {}", r.stderr);
    ensure!(std::fs::read(&back)? == data, "the file came back changed");
    ensure!(
        agent.status()?["link"] == "online",
        "link after the page-out: {}",
        agent.log()
    );
    Ok(())
}
