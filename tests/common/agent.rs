//! An agent process for tests: its own state directory and configuration, enrolled with a
//! relay, run in the background, and asked for its status and telemetry queue.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::engineer::ssh_with_key;
use super::process::{Proc, Run, bin_dir, run_with_timeout, spawn_logged, tail_lines, wait_until};
use super::relay::{Relay, Transport};

/// An agent with its own state directory and configuration.
pub struct Agent {
    /// The agent's directory: configuration, state and log; removed on drop.
    pub dir: tempfile::TempDir,
    /// Its configuration file (`agent.yaml` in `dir`).
    pub config: PathBuf,
    /// `agent run`, while it runs.
    pub proc: Option<Proc>,
    /// The device name it enrolls with.
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
        // A `link:` section at the start of `extra` joins the harness's own.
        let extra = match extra.strip_prefix("link:\n") {
            Some(rest) => {
                let end = rest
                    .lines()
                    .take_while(|l| l.starts_with("  "))
                    .map(|l| l.len() + 1)
                    .sum::<usize>()
                    .min(rest.len());
                yaml = yaml.replacen("link:\n", &format!("link:\n{}", &rest[..end]), 1);
                &rest[end..]
            }
            None => extra,
        };
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

    /// Adds `urls` as `link.relay_urls` to the agent's configuration.
    pub fn add_relay_urls(&self, urls: &[String]) -> Result<()> {
        let yaml = std::fs::read_to_string(&self.config)?;
        let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        let yaml = yaml.replacen(
            "link:\n",
            &format!("link:\n  relay_urls: [{}]\n", list.join(", ")),
            1,
        );
        std::fs::write(&self.config, yaml)?;
        Ok(())
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

    /// The log of `agent run` so far.
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

    /// The device id the relay gave at enrollment, from `agent status`.
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
