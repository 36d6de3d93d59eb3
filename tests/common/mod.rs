//! Test harness: real `relay` and `agent` processes on loopback, driven by the real OpenSSH
//! client. Every process a test starts is killed when its guard drops; every wait is bounded.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod tmux;
#[allow(unused_imports)] // not every test file opens a terminal
pub use tmux::Tmux;

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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16) -> Result<()> {
    wait_until(Duration::from_secs(30), &format!("port {port}"), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
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
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Proc> {
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
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
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

/// A fresh self-signed certificate for 127.0.0.1 in `dir`: (certificate PEM, key PEM).
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        // rustls refuses a CA certificate as a server certificate.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?;
    if !st.success() {
        bail!("openssl could not make a test certificate");
    }
    Ok((cert, key))
}

/// A relay process with its own data directory and ports.
pub struct Relay {
    pub dir: tempfile::TempDir,
    pub ssh_port: u16,
    pub http_port: u16,
    pub proc: Option<Proc>,
}

/// Which link transport an agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

/// Both transports, for tests that must hold for each.
pub const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::WebSocket];

impl Relay {
    /// Starts a relay on free loopback ports and waits until both ports accept connections.
    pub fn start() -> Result<Relay> {
        Self::launch(tempfile::tempdir()?)
    }

    /// Starts a relay in `dir` (which may hold a `relay.yaml`) on free loopback ports.
    fn launch(dir: tempfile::TempDir) -> Result<Relay> {
        let mut relay = Relay {
            dir,
            ssh_port: free_port()?,
            http_port: free_port()?,
            proc: None,
        };
        relay.restart()?;
        Ok(relay)
    }

    /// Starts a relay whose HTTP port speaks TLS with a fresh self-signed certificate for
    /// 127.0.0.1; returns the relay and the certificate's PEM path (for SSL_CERT_FILE).
    pub fn start_tls() -> Result<(Relay, PathBuf)> {
        let dir = tempfile::tempdir()?;
        let (cert, key) = self_signed_cert(dir.path())?;
        std::fs::write(
            dir.path().join("relay.yaml"),
            format!(
                "http:\n  tls:\n    cert: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
        )?;
        Ok((Self::launch(dir)?, cert))
    }

    /// Starts a relay with `yaml` as its configuration file.
    pub fn start_with_config(yaml: &str) -> Result<Relay> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("relay.yaml"), yaml)?;
        Self::launch(dir)
    }

    /// Starts (again) the relay process on the same data directory and ports.
    pub fn restart(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin_dir()?.join("relay"));
        let config = self.dir.path().join("relay.yaml");
        if config.exists() {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--data-dir").arg(self.data_dir()).args([
            "serve",
            "--ssh-listen",
            &format!("127.0.0.1:{}", self.ssh_port),
            "--http-listen",
            &format!("127.0.0.1:{}", self.http_port),
        ]);
        let log = self.dir.path().join("relay.log");
        // Keep earlier logs: append a marker rather than truncating on restart.
        let proc = spawn_logged(cmd, &log)?;
        self.proc = Some(proc);
        wait_for_port(self.ssh_port)?;
        wait_for_port(self.http_port)
    }

    /// Kills the relay with SIGKILL (no chance to flush or say goodbye) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Stops the relay with SIGTERM.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take()
            && !p.terminate(Duration::from_secs(10))
        {
            bail!("relay did not stop on SIGTERM within 10 s");
        }
        Ok(())
    }

    /// Stops the relay with SIGTERM; returns its exit code (None if killed by a signal) and how
    /// long it took to exit. Fails if it is still running after `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<(Option<i32>, Duration)> {
        let Some(mut p) = self.proc.take() else {
            bail!("the relay is not running");
        };
        let start = Instant::now();
        match p.terminate_status(timeout) {
            Some(status) => Ok((status.code(), start.elapsed())),
            None => bail!(
                "relay did not stop on SIGTERM within {timeout:?}; log:\n{}",
                tail_lines(&p.log_text(), 40)
            ),
        }
    }

    /// Every stored telemetry record of the device named `device`, oldest first, as
    /// `relay telemetry tail --json` prints them.
    pub fn stored_telemetry(&self, device: &str) -> Result<Vec<serde_json::Value>> {
        let mut cmd = Command::new(bin_dir()?.join("relay"));
        cmd.arg("--data-dir").arg(self.data_dir()).args([
            "telemetry",
            "tail",
            device,
            "--limit",
            "1000000",
            "--json",
        ]);
        let r = run_with_timeout(cmd, None, Duration::from_secs(120))?;
        if r.status != Some(0) {
            bail!("relay telemetry tail {device} failed: {}", r.stderr);
        }
        r.stdout
            .lines()
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// Runs an admin command on this relay's store.
    pub fn admin(&self, args: &[&str]) -> Result<Run> {
        let mut cmd = Command::new(bin_dir()?.join("relay"));
        cmd.arg("--data-dir").arg(self.data_dir()).args(args);
        run_with_timeout(cmd, None, Duration::from_secs(30))
    }

    /// Runs an admin command that must succeed; returns its stdout.
    pub fn admin_ok(&self, args: &[&str]) -> Result<String> {
        let r = self.admin(args)?;
        if r.status != Some(0) {
            bail!(
                "relay {args:?} failed ({:?}): {}{}",
                r.status,
                r.stdout,
                r.stderr
            );
        }
        Ok(r.stdout)
    }

    /// Creates a tenant.
    pub fn tenant(&self, name: &str) -> Result<()> {
        self.admin_ok(&["tenant", "add", name]).map(|_| ())
    }

    /// Mints an enrollment token for `tenant`.
    pub fn enroll_token(&self, tenant: &str) -> Result<String> {
        Ok(self
            .admin_ok(&["token", "create", "--tenant", tenant])?
            .trim()
            .to_string())
    }

    /// Registers an engineer with a fresh key; returns the engineer.
    pub fn engineer(&self, name: &str, tenant: &str, role: &str) -> Result<Engineer> {
        let key = self.dir.path().join(format!("{name}-{tenant}_ed25519"));
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("ssh-keygen failed");
        }
        let pubkey = key.with_extension("pub");
        let pubkey = if pubkey.exists() {
            pubkey
        } else {
            PathBuf::from(format!("{}.pub", key.display()))
        };
        self.admin_ok(&[
            "user",
            "add",
            name,
            "--tenant",
            tenant,
            "--role",
            role,
            "--key",
            &pubkey.display().to_string(),
        ])?;
        Engineer::new(name, key, self.ssh_port, self.dir.path())
    }

    /// The relay URL an agent dials over `transport`.
    pub fn url(&self, transport: Transport) -> String {
        match transport {
            Transport::Tcp => format!("ssh://127.0.0.1:{}", self.ssh_port),
            Transport::WebSocket => format!("ws://127.0.0.1:{}/v1/link", self.http_port),
        }
    }

    /// Device record as `relay device show --json` prints it.
    pub fn device_json(&self, id: &str) -> Result<serde_json::Value> {
        let out = self.admin_ok(&["device", "show", id, "--json"])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// A plain HTTP/1.1 GET on the HTTP port; returns (status code, body).
    pub fn http_get(&self, path: &str, bearer: Option<&str>) -> Result<(u16, String)> {
        self.http("GET", path, bearer, None)
    }

    /// A plain HTTP/1.1 request with an optional JSON body; returns (status code, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        json: Option<&str>,
    ) -> Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let body = json.unwrap_or_default();
        let content = json
            .map(|b| {
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    b.len()
                )
            })
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{content}Connection: close\r\n\r\n{body}"
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }
}

/// An agent with its own state directory and configuration.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub proc: Option<Proc>,
    pub name: String,
}

impl Agent {
    /// Prepares an agent whose config allows forwards to `allow` (device-local host:port).
    pub fn new(name: &str, allow: &[String]) -> Result<Agent> {
        Self::with_extra_config(name, allow, "")
    }

    /// Like [`Agent::new`] with more top-level YAML appended to the configuration.
    pub fn with_extra_config(name: &str, allow: &[String], extra: &str) -> Result<Agent> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("agent.yaml");
        let mut yaml = format!(
            "state_dir: {}\nlink:\n  keepalive_interval: 5s\n  backoff_initial: 200ms\n  backoff_max: 1s\n  connect_timeout: 5s\n",
            dir.path().join("state").display()
        );
        yaml.push_str("forward:\n  allow:\n");
        for a in allow {
            yaml.push_str(&format!("    - \"{a}\"\n"));
        }
        if allow.is_empty() {
            yaml = yaml.replace("forward:\n  allow:\n", "forward:\n  allow: []\n");
        }
        // The built-in system metrics would add records that tests counting records do not
        // expect; tests of the collector turn it on explicitly.
        if extra.contains("system_metrics_interval") {
            yaml.push_str(extra);
        } else if extra.contains("telemetry:\n") {
            yaml.push_str(&extra.replacen(
                "telemetry:\n",
                "telemetry:\n  system_metrics_interval: 0s\n",
                1,
            ));
        } else {
            yaml.push_str(extra);
            yaml.push_str("telemetry:\n  system_metrics_interval: 0s\n");
        }
        std::fs::write(&config, yaml)?;
        Ok(Agent {
            dir,
            config,
            proc: None,
            name: name.to_string(),
        })
    }

    /// Runs an `agent` subcommand to completion.
    pub fn cmd(&self, args: &[&str]) -> Result<Run> {
        self.cmd_with_env(args, &[])
    }

    /// Runs an `agent` subcommand with extra environment variables.
    pub fn cmd_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Run> {
        let mut cmd = Command::new(bin_dir()?.join("agent"));
        cmd.arg("--config").arg(&self.config).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_timeout(cmd, None, Duration::from_secs(60))
    }

    /// Enrolls with `relay` over `transport` using a fresh token of `tenant`.
    pub fn enroll(&self, relay: &Relay, transport: Transport, tenant: &str) -> Result<Run> {
        let token = relay.enroll_token(tenant)?;
        let r = self.cmd(&[
            "enroll",
            &relay.url(transport),
            "--token",
            &token,
            "--name",
            &self.name,
        ])?;
        if r.status != Some(0) {
            bail!("enroll failed ({:?}): {}{}", r.status, r.stdout, r.stderr);
        }
        Ok(r)
    }

    /// Starts `agent run` in the background.
    pub fn start(&mut self) -> Result<()> {
        self.start_with_env(&[])
    }

    /// Starts `agent run` in the background with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let mut cmd = Command::new(bin_dir()?.join("agent"));
        cmd.arg("--config").arg(&self.config).arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.proc = Some(spawn_logged(cmd, &self.dir.path().join("agent.log"))?);
        Ok(())
    }

    /// `agent status --json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let r = self.cmd(&["status", "--json"])?;
        if r.status != Some(0) {
            bail!("agent status failed: {}", r.stderr);
        }
        Ok(serde_json::from_str(&r.stdout)?)
    }

    /// Waits until the agent reports its link online.
    pub fn wait_online(&self) -> Result<()> {
        wait_until(Duration::from_secs(30), "agent link online", || {
            self.status()
                .map(|s| s["link"] == "online")
                .unwrap_or(false)
        })
        .with_context(|| format!("agent log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// Kills `agent run` with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Path of the producer socket (the default, under the state directory).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("state").join("telemetry.sock")
    }

    /// Enrolls through `url` (for example a proxy in front of the relay).
    pub fn enroll_via(&self, relay: &Relay, url: &str, tenant: &str) -> Result<Run> {
        let token = relay.enroll_token(tenant)?;
        let r = self.cmd(&["enroll", url, "--token", &token, "--name", &self.name])?;
        if r.status != Some(0) {
            bail!(
                "enroll via {url} failed ({:?}): {}{}",
                r.status,
                r.stdout,
                r.stderr
            );
        }
        Ok(r)
    }

    /// `agent telemetry status --json`: queued rows and bytes, last sequence number, last
    /// acknowledgement, drops.
    pub fn telemetry_status(&self) -> Result<serde_json::Value> {
        let r = self.cmd(&["telemetry", "status", "--json"])?;
        if r.status != Some(0) {
            bail!("telemetry status: {}", r.stderr);
        }
        Ok(serde_json::from_str(&r.stdout)?)
    }

    /// Records in the outbox not yet acknowledged by the relay.
    pub fn queued(&self) -> Result<u64> {
        Ok(self.telemetry_status()?["queued_rows"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Waits until the relay has acknowledged everything in the outbox.
    pub fn wait_drained(&self, timeout: Duration) -> Result<()> {
        wait_until(timeout, "outbox drained", || {
            self.telemetry_status()
                .is_ok_and(|s| s["queued_rows"] == 0 && s["acked_upto"] == s["last_seq"])
        })
        .with_context(|| format!("agent log:\n{}", tail_lines(&self.log(), 40)))
    }

    pub fn device_id(&self) -> Result<String> {
        Ok(self.status()?["device_id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

impl Drop for Agent {
    /// Stops the agent with SIGTERM first, so it stops the applications it runs (they are
    /// in their own process groups and would outlive a SIGKILLed agent); SIGKILL follows in
    /// `Proc`'s own drop if it does not exit.
    fn drop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.terminate(Duration::from_secs(15));
        }
    }
}

/// An engineer: a key pair and an OpenSSH client configuration for the relay.
pub struct Engineer {
    pub name: String,
    pub key: PathBuf,
    pub ssh_port: u16,
    pub ssh_config: PathBuf,
}

impl Engineer {
    fn new(name: &str, key: PathBuf, ssh_port: u16, dir: &Path) -> Result<Engineer> {
        let ssh_config = dir.join(format!(
            "ssh_config-{name}-{}",
            key.file_name().and_then(|f| f.to_str()).unwrap_or("k")
        ));
        let known = dir.join("known_hosts");
        std::fs::write(
            &ssh_config,
            format!(
                "Host relay\n  HostName 127.0.0.1\n  Port {ssh_port}\n  User {name}\n\
                 Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  BatchMode yes\n  \
                 StrictHostKeyChecking no\n  UserKnownHostsFile {known}\n  LogLevel ERROR\n  \
                 ConnectTimeout 10\n  ServerAliveInterval 5\n",
                key = key.display(),
                known = known.display()
            ),
        )?;
        Ok(Engineer {
            name: name.to_string(),
            key,
            ssh_port,
            ssh_config,
        })
    }

    /// `ssh -F config` with extra arguments.
    pub fn ssh_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&self.ssh_config).args(args);
        cmd
    }

    /// Runs `cmd` on `device` through the relay (relay-terminated exec).
    pub fn exec(&self, device: &str, command: &str) -> Result<Run> {
        self.exec_input(device, command, None)
    }

    /// Like [`Engineer::exec`] with data on stdin.
    pub fn exec_input(&self, device: &str, command: &str, input: Option<&[u8]>) -> Result<Run> {
        let cmd = self.ssh_cmd(&[
            "-p",
            &self.ssh_port.to_string(),
            &format!("{device}@127.0.0.1"),
            command,
        ]);
        run_with_timeout(cmd, input, Duration::from_secs(60))
    }

    /// scp with this engineer's settings.
    pub fn scp(&self, args: &[&str]) -> Result<Run> {
        let mut cmd = Command::new("scp");
        cmd.arg("-F")
            .arg(&self.ssh_config)
            .arg("-P")
            .arg(self.ssh_port.to_string())
            .args(args);
        run_with_timeout(cmd, None, Duration::from_secs(120))
    }

    /// sftp in batch mode with the given commands.
    pub fn sftp_batch(&self, device: &str, batch: &str) -> Result<Run> {
        let mut cmd = Command::new("sftp");
        cmd.arg("-F")
            .arg(&self.ssh_config)
            .arg("-P")
            .arg(self.ssh_port.to_string())
            .args(["-b", "-"])
            .arg(format!("{device}@127.0.0.1"));
        run_with_timeout(cmd, Some(batch.as_bytes()), Duration::from_secs(60))
    }
}

/// `ssh` to `dest` on the relay's SSH port with `key` and nothing else of the user's (no
/// config, agent keys or known hosts), unattended; `extra` goes before the destination.
pub fn ssh_with_key(relay: &Relay, key: &Path, extra: &[&str], dest: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"]).arg(key).args([
        "-p",
        &relay.ssh_port.to_string(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
    ]);
    cmd.args(extra).arg(dest);
    cmd
}

/// Asks for artifact `sha256` on a `tether-control` channel opened with the stock OpenSSH
/// client on `agent`'s own device key, as its link would (the agent itself need not run);
/// returns the relay's answer to that fetch: a `chunk` or a `fetch_error` frame, as JSON.
pub fn fetch_over_control(relay: &Relay, agent: &Agent, sha256: &str) -> Result<serde_json::Value> {
    let key = agent.dir.path().join("state/device_ed25519");
    let body = format!(r#"{{"type":"fetch","sha256":"{sha256}","offset":0}}"#);
    let mut frame = u32::try_from(body.len() + 1)?.to_be_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(body.as_bytes());
    let mut cmd = ssh_with_key(relay, &key, &["-s"], "tether-link@127.0.0.1");
    cmd.arg("tether-control");
    let r = run_with_timeout(cmd, Some(&frame), Duration::from_secs(30))?;
    // Length prefixes are binary, the bodies JSON objects: read each where it starts.
    r.stdout
        .match_indices(r#"{"type":"#)
        .filter_map(|(at, _)| {
            serde_json::Deserializer::from_str(&r.stdout[at..])
                .into_iter::<serde_json::Value>()
                .next()?
                .ok()
        })
        .find(|f| f["sha256"] == sha256 && (f["type"] == "chunk" || f["type"] == "fetch_error"))
        .with_context(|| {
            format!(
                "no answer to the fetch of {sha256} ({:?}): {:?} {}",
                r.status, r.stdout, r.stderr
            )
        })
}

/// A relay, one tenant, one admin engineer and one online agent: the common starting point.
pub struct Setup {
    pub relay: Relay,
    pub agent: Agent,
    pub engineer: Engineer,
}

impl Setup {
    /// Starts everything with the agent linked over `transport`.
    pub fn new(transport: Transport) -> Result<Setup> {
        Self::with_allow(transport, &[])
    }

    /// Like [`Setup::new`] with forwards allowed to `allow`.
    pub fn with_allow(transport: Transport, allow: &[String]) -> Result<Setup> {
        let relay = Relay::start()?;
        relay.tenant("acme")?;
        let engineer = relay.engineer("alice", "acme", "admin")?;
        let mut agent = Agent::new("board1", allow)?;
        agent.enroll(&relay, transport, "acme")?;
        agent.start()?;
        agent.wait_online()?;
        Ok(Setup {
            relay,
            agent,
            engineer,
        })
    }
}

/// Deterministic pseudo-random bytes (xorshift), so file tests need no RNG crate.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Whether the OpenSSH server binary is available (ProxyJump tests need a private sshd).
pub fn sshd_path() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A private sshd on a free loopback port, accepting `authorized_key` for the current user.
pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Proc,
}

impl Sshd {
    pub fn start(authorized_key_pub: &Path) -> Result<Sshd> {
        let sshd = sshd_path().context("sshd is not installed (apt-get install openssh-server)")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let host_key = dir.path().join("host_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("ssh-keygen for sshd host key failed");
        }
        let auth = dir.path().join("authorized_keys");
        std::fs::copy(authorized_key_pub, &auth)?;
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                 AuthorizedKeysFile {auth}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 Subsystem sftp internal-sftp\nLogLevel ERROR\n",
                hk = host_key.display(),
                pid = dir.path().join("sshd.pid").display(),
                auth = auth.display()
            ),
        )?;
        let _ = std::fs::create_dir_all("/run/sshd");
        let mut cmd = Command::new(sshd);
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let proc = spawn_logged(cmd, &dir.path().join("sshd.log"))?;
        wait_for_port(port).with_context(|| format!("sshd log: {}", proc.log_text()))?;
        Ok(Sshd { port, dir, proc })
    }
}

/// A loopback TCP proxy that, when told to, cuts every connection through it at random
/// intervals: the network of a board in the field, in miniature.
pub struct ChaosProxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cutting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    /// Connections cut so far.
    pub cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ChaosProxy {
    /// Listens on a free loopback port and forwards each connection to `127.0.0.1:target`.
    /// Cuts come at pseudo-random intervals between `min` and `max` once cutting is on.
    pub fn start(target: u16, min: Duration, max: Duration, seed: u64) -> Result<ChaosProxy> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let cutting = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let cuts = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        {
            let (stop, conns) = (stop.clone(), conns.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let _ = client.set_nonblocking(false);
                    // Relay down: the client sees the connection close, as it would.
                    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let pairs = [
                        (client.try_clone(), upstream.try_clone()),
                        (upstream.try_clone(), client.try_clone()),
                    ];
                    if let Ok(mut list) = conns.lock() {
                        list.push(client);
                        list.push(upstream);
                    }
                    for pair in pairs {
                        if let (Ok(mut from), Ok(mut to)) = pair {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                let _ = from.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                }
            }));
        }
        {
            let (stop, cutting, conns, cuts) =
                (stop.clone(), cutting.clone(), conns.clone(), cuts.clone());
            threads.push(std::thread::spawn(move || {
                let mut x = seed | 1;
                while !stop.load(Ordering::SeqCst) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let span = max.saturating_sub(min).as_millis().max(1) as u64;
                    let wait = min + Duration::from_millis(x % span);
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if cutting.load(Ordering::SeqCst) {
                        let n = cut(&conns);
                        cuts.fetch_add(n as u64 / 2, Ordering::SeqCst);
                    }
                }
            }));
        }
        Ok(ChaosProxy {
            port,
            stop,
            cutting,
            conns,
            cuts,
            threads,
        })
    }

    /// Turns the random cuts on or off.
    pub fn set_cutting(&self, on: bool) {
        self.cutting.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Shuts down every connection in `conns`; returns how many sockets were shut.
fn cut(conns: &std::sync::Mutex<Vec<TcpStream>>) -> usize {
    let Ok(mut list) = conns.lock() else {
        return 0;
    };
    let n = list.len();
    for c in list.drain(..) {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    n
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        cut(&self.conns);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
