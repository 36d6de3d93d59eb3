//! A terminal for tests: tmux on a private socket, typed into with send-keys and read with
//! capture-pane.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::net::free_port;
use super::process::wait_until;

/// A tmux server on a private socket, killed on drop.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Whether tmux is installed.
    pub fn available() -> bool {
        Command::new("tmux").arg("-V").output().is_ok()
    }

    /// Starts `cmdline` in a detached session of `cols` x `rows`.
    pub fn new(cmdline: &str, cols: u16, rows: u16) -> Result<Tmux> {
        let socket = format!("tether-test-{}-{}", std::process::id(), free_port()?);
        let st = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .arg(cmdline)
            .status()
            .context("running tmux")?;
        ensure!(st.success(), "tmux new-session failed");
        Ok(Tmux { socket })
    }
    /// Runs a tmux command against this server.
    pub fn tmux(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
    /// Types `keys` (tmux key names) into the pane.
    pub fn send(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        self.tmux(&args).map(|_| ())
    }
    /// The pane's visible text.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "0"])
            .unwrap_or_default()
    }
    /// Waits until the pane shows `text`.
    pub fn wait_for(&self, text: &str) -> Result<()> {
        wait_until(Duration::from_secs(20), text, || {
            self.screen().contains(text)
        })
        .with_context(|| format!("screen was:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
