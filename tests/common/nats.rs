//! A private NATS server for a test (Debian's `nats-server`, JetStream on), on a free loopback
//! port with its own store directory; stopped and started again on demand, killed on drop.

use std::process::Command;

use anyhow::{Context, Result};

use super::net::{free_port, wait_for_port};
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
        self.proc = Some(proc);
        wait_for_port(self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
