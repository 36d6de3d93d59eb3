//! A private NATS server for a test (Debian's `nats-server`, JetStream on), on a free loopback
//! port with its own store directory; stopped and started again on demand, killed on drop.

use std::process::Command;

use anyhow::{Context, Result};

use super::net::free_port;
use super::process::{Proc, spawn_logged};

/// A running nats-server.
pub struct Nats {
    dir: tempfile::TempDir,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    proc: Option<Proc>,
}

impl Nats {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Result<Nats> {
        let mut nats = Nats {
            dir: tempfile::tempdir()?,
            port: free_port()?,
            proc: None,
        };
        nats.start_again()?;
        Ok(nats)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Publishes `payloads` on `subject` as a bare NATS client would (the text protocol over
    /// TCP), then waits for the server's answer to a PING so that they were all delivered.
    pub fn publish_raw(&self, subject: &str, payloads: &[Vec<u8>]) -> Result<()> {
        use std::io::{BufRead, BufReader, Write};
        let stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut info = String::new();
        reader.read_line(&mut info)?;
        anyhow::ensure!(info.starts_with("INFO"), "NATS greeted with {info:?}");
        let mut w = std::io::BufWriter::new(stream);
        w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")?;
        for p in payloads {
            write!(w, "PUB {subject} {}\r\n", p.len())?;
            w.write_all(p)?;
            w.write_all(b"\r\n")?;
        }
        w.write_all(b"PING\r\n")?;
        w.flush()?;
        for _ in 0..16 {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                anyhow::bail!("NATS closed the connection");
            }
            anyhow::ensure!(!line.starts_with("-ERR"), "NATS refused: {line}");
            if line.starts_with("PONG") {
                return Ok(());
            }
        }
        anyhow::bail!("no PONG from NATS")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// Kills the server (SIGKILL): NATS is gone for every relay at once.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Starts the server again on the same port and store directory.
    pub fn start_again(&mut self) -> Result<()> {
        let mut cmd = Command::new("nats-server");
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.dir.path().join("js"));
        let proc = spawn_logged(cmd, &self.dir.path().join("nats.log"))
            .context("starting nats-server (Debian package nats-server)")?;
        let proc = self.proc.insert(proc);
        proc.wait_for_port(self.port).context("nats-server")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
