//! A relay process for tests: its own data directory and loopback ports, started, restarted,
//! killed or stopped, with its admin commands, its HTTP API and its stored telemetry.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::net::free_port;
use super::process::{Proc, Run, bin_dir, run_with_timeout, spawn_logged, tail_lines};

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
    /// The relay's directory: optional `relay.yaml`, data directory and log; removed on drop.
    pub dir: tempfile::TempDir,
    /// The SSH port (device links and engineers) on 127.0.0.1.
    pub ssh_port: u16,
    /// The HTTP port (API and WebSocket links) on 127.0.0.1.
    pub http_port: u16,
    /// `relay serve`, while it runs.
    pub proc: Option<Proc>,
}

/// Which link transport an agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// SSH over TCP to the SSH port (`ssh://`).
    Tcp,
    /// SSH in WebSocket binary messages on the HTTP port (`ws://…/v1/link`).
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
        // A port free a moment ago can be taken by another test's connection before the relay
        // binds it: then try other ports, a bounded number of times.
        for _ in 0..3 {
            match relay.restart() {
                Err(e) if relay.lost_its_ports() => {
                    eprintln!("relay: {e:#}; trying other ports");
                    relay.ssh_port = free_port()?;
                    relay.http_port = free_port()?;
                }
                other => return other.map(|()| relay),
            }
        }
        relay.restart()?;
        Ok(relay)
    }

    /// Whether the relay process ended because one of its ports was in use.
    fn lost_its_ports(&mut self) -> bool {
        let Some(p) = self.proc.as_mut() else {
            return false;
        };
        matches!(p.child.try_wait(), Ok(Some(_))) && p.log_text().contains("in use")
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
        let mut cmd = self.command()?;
        cmd.args([
            "serve",
            "--ssh-listen",
            &format!("127.0.0.1:{}", self.ssh_port),
            "--http-listen",
            &format!("127.0.0.1:{}", self.http_port),
        ]);
        let log = self.dir.path().join("relay.log");
        // Keep earlier logs: append a marker rather than truncating on restart.
        let proc = spawn_logged(cmd, &log)?;
        let proc = self.proc.insert(proc);
        for port in [self.ssh_port, self.http_port] {
            proc.wait_for_port(port).context("relay")?;
        }
        Ok(())
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
        let mut cmd = self.command()?;
        cmd.args(["telemetry", "tail", device, "--limit", "1000000", "--json"]);
        let r = run_with_timeout(cmd, None, Duration::from_secs(120))?;
        if r.status != Some(0) {
            bail!("relay telemetry tail {device} failed: {}", r.stderr);
        }
        r.stdout
            .lines()
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }

    /// `relay` with this relay's configuration file (when it has one) and data directory.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(bin_dir()?.join("relay"));
        let config = self.dir.path().join("relay.yaml");
        if config.exists() {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--data-dir").arg(self.data_dir());
        Ok(cmd)
    }

    /// The relay's data directory (its embedded store).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The log of `relay serve` so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// Runs an admin command on this relay's store.
    pub fn admin(&self, args: &[&str]) -> Result<Run> {
        let mut cmd = self.command()?;
        cmd.args(args);
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

    /// The process id of `relay serve`, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// One sample of `series` (name with labels, as the page spells them) on `/metrics`.
    pub fn metric(&self, series: &str) -> Result<Option<f64>> {
        let (code, page) = self.http_get("/metrics", None)?;
        anyhow::ensure!(code == 200, "GET /metrics: {code} {page}");
        Ok(page.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        }))
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
