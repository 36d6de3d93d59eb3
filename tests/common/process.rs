//! The programs under test and how tests run them: the built `relay` and `agent` binaries,
//! child processes killed and reaped on drop, commands run with a time limit, and bounded
//! waits.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Directory holding the built `relay` and `agent` binaries.
pub fn bin_dir() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Integration tests of the root package cannot name other packages' binaries, so build them
/// once per test process (a no-op when they are fresh) into the same target directory.
fn build_binaries() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary is not in target/<profile>/deps")?
        .to_path_buf();
    let target_dir = profile_dir.parent().context("no target dir")?;
    let profile = profile_dir
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--bins",
        "-p",
        "tether-relay",
        "-p",
        "tether-agent",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .context("running cargo build for the binaries")?;
    if !status.success() {
        bail!("cargo build of relay and agent failed");
    }
    Ok(profile_dir)
}

/// The last `n` lines of `text` (of a log, for an error message).
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// The file its stdout and stderr go to.
    pub log: PathBuf,
}

impl Proc {
    /// Sends SIGTERM and waits (bounded) for the process to exit; returns whether it did.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.terminate_status(timeout).is_some()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns how it exited.
    pub fn terminate_status(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (30 s at most) until something accepts TCP connections on `port` of 127.0.0.1,
    /// failing at once, with the end of the log, if the process exits first.
    pub fn wait_for_port(&mut self, port: u16) -> Result<()> {
        let mut exited = None;
        let child = &mut self.child;
        let waited = wait_until(Duration::from_secs(30), &format!("port {port}"), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            super::listening::is_listening(port)
        });
        if let Some(status) = exited {
            bail!(
                "exited ({status}) before listening on {port}: {}",
                tail_lines(&self.log_text(), 20)
            );
        }
        waited.with_context(|| format!("log: {}", tail_lines(&self.log_text(), 20)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
/// Spawns `cmd` with stdout and stderr appended to `log`, killed when the guard drops.
pub(super) fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Proc> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.env("RUST_LOG", "info,russh=warn");
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    Ok(Proc {
        child,
        log: log.to_path_buf(),
    })
}

/// Output of a finished command, with text helpers.
#[derive(Debug)]
pub struct Run {
    /// The exit code; `None` when a signal ended it.
    pub status: Option<i32>,
    /// Its stdout, lossily UTF-8.
    pub stdout: String,
    /// Its stderr, lossily UTF-8.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            status: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs a command with a time limit, killing it when the limit passes.
pub fn run_with_timeout(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Run> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    if let Some(data) = input {
        let mut stdin = child.stdin.take().context("stdin")?;
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Run {
        status: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// A child process (an ssh client, a balancer) killed and reaped when the guard drops.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time of process `pid` from `/proc/PID/stat`, in clock ticks: its own (utime + stime,
/// all threads), its reaped children's (cutime + cstime), and its parent's pid.
fn proc_stat_cpu(pid: u32) -> Option<(u64, u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let ppid = u32::try_from(num(1)?).ok()?;
    Some((num(11)? + num(12)?, num(13)? + num(14)?, ppid))
}

/// Clock ticks per second, the unit of `/proc/PID/stat` times.
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

/// CPU-seconds process `pid` has spent itself (all threads), without its children.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let (own, _, _) = proc_stat_cpu(pid).with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(own as f64 / clock_ticks())
}

/// CPU-seconds process `pid` has spent itself and through the children it has reaped (the
/// agent and the sftp children it waited for, sshd and its per-connection processes).
pub fn cpu_seconds_with_children(pid: u32) -> Result<f64> {
    let (own, reaped, _) =
        proc_stat_cpu(pid).with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok((own + reaped) as f64 / clock_ticks())
}

/// Makes this process the reaper of its orphaned descendants, so that their CPU time stays
/// visible to [`descendants_cpu_seconds`]: `ssh -J` starts its `ssh -W` and never waits for it,
/// leaving it to whoever reaps orphans.
pub fn adopt_orphans() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")
}

/// CPU-seconds spent by every process this one started, directly or not: the live ones
/// (zombies included) and the ones reaped by a process of the tree. This process's own time is
/// not counted. Differences of two readings are the machine's cost of the work between them
/// without what else runs on the machine; orphans count only after [`adopt_orphans`].
pub fn descendants_cpu_seconds() -> Result<f64> {
    let me = std::process::id();
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between listing and reading; it is then no longer in the tree
        // (its time moved to its reaper, which is read too).
        if let Some(stat) = proc_stat_cpu(pid) {
            procs.push((pid, stat));
        }
    }
    let parent: std::collections::HashMap<u32, u32> = procs
        .iter()
        .map(|(pid, (_, _, ppid))| (*pid, *ppid))
        .collect();
    let in_tree = |mut pid: u32| {
        // Bounded: a pid chain is at most as long as the process table.
        for _ in 0..procs.len() {
            match parent.get(&pid) {
                Some(&p) if p == me => return true,
                Some(&p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let mut ticks = 0;
    for (pid, (own, reaped, _)) in &procs {
        if *pid == me {
            ticks += reaped;
        } else if in_tree(*pid) {
            ticks += own + reaped;
        }
    }
    Ok(ticks as f64 / clock_ticks())
}

/// The setting in environment variable `name` (a benchmark's knob), or `default` when it is
/// unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
