//! A private PostgreSQL server for a test (`scripts/postgres-server`): a new cluster in a
//! temporary directory on a free loopback port, stopped and started on demand, gone with its
//! guard (the script stops the server when its standard input closes).

use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::net::free_port;
use super::process::run_with_timeout;

/// A running PostgreSQL server and the script that holds it.
pub struct Postgres {
    script: Child,
    commands: Option<ChildStdin>,
    /// The lines the script prints (`ready …`, `stopped`, `started`).
    replies: mpsc::Receiver<String>,
    /// URL of the server's `tether` database.
    pub url: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn forward(lines: Lines<BufReader<ChildStdout>>, tx: mpsc::Sender<String>) {
    for line in lines.map_while(|l| l.ok()) {
        if tx.send(line).is_err() {
            return;
        }
    }
}

impl Postgres {
    /// Starts a server; returns once it accepts connections.
    pub fn start() -> Result<Postgres> {
        Self::launch(None)
    }

    /// Starts a server that also speaks TLS with the PEM certificate and key given.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<Postgres> {
        Self::launch(Some((cert, key)))
    }

    fn launch(tls: Option<(&std::path::Path, &std::path::Path)>) -> Result<Postgres> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres-server");
        let mut cmd = Command::new(script);
        if let Some((cert, key)) = tls {
            cmd.env("TETHER_PG_SSL_CERT", cert)
                .env("TETHER_PG_SSL_KEY", key);
        }
        let mut child = cmd
            .arg(dir.path().join("pg"))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {script}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || forward(BufReader::new(stdout).lines(), tx));
        let mut pg = Postgres {
            commands: child.stdin.take(),
            script: child,
            replies,
            url: String::new(),
            port,
            _dir: dir,
        };
        let ready = pg.reply(Duration::from_secs(60))?;
        match ready.strip_prefix("ready ") {
            Some(url) => pg.url = url.to_string(),
            None => bail!("scripts/postgres-server said {ready:?}"),
        }
        Ok(pg)
    }

    fn reply(&self, timeout: Duration) -> Result<String> {
        self.replies
            .recv_timeout(timeout)
            .context("scripts/postgres-server did not answer (is Debian's postgresql installed?)")
    }

    fn command(&mut self, command: &str, expect: &str) -> Result<()> {
        let stdin = self.commands.as_mut().context("the server is gone")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        let reply = self.reply(Duration::from_secs(60))?;
        if reply != expect {
            bail!("postgres {command}: {reply:?}");
        }
        Ok(())
    }

    /// Stops the server (as an operator restarting it would); connections are cut.
    pub fn stop(&mut self) -> Result<()> {
        self.command("stop", "stopped")
    }

    /// Starts the stopped server again, same port and data.
    pub fn start_again(&mut self) -> Result<()> {
        self.command("start", "started")
    }

    /// Creates database `name`; returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let mut cmd = Command::new("psql");
        cmd.arg(&self.url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(format!("CREATE DATABASE {name}"));
        let r = run_with_timeout(cmd, None, Duration::from_secs(30))?;
        if r.status != Some(0) {
            bail!("creating database {name}: {}", r.stderr);
        }
        Ok(format!("postgres://tether@127.0.0.1:{}/{name}", self.port))
    }

    /// Runs `sql` with psql on the `tether` database; returns what it printed (unaligned,
    /// tuples only).
    pub fn psql(&self, db_url: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new("psql");
        cmd.arg(db_url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c"])
            .arg(sql);
        let r = run_with_timeout(cmd, None, Duration::from_secs(30))?;
        if r.status != Some(0) {
            bail!("psql {sql}: {}", r.stderr);
        }
        Ok(r.stdout)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // End of input: the script stops the server at once and removes its directory.
        drop(self.commands.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.script.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}
