//! Engineers: registered on a relay with a fresh key, then driving the stock OpenSSH client
//! (ssh, scp, sftp) through it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Result, bail};

use super::process::{Run, run_with_timeout};
use super::relay::Relay;

impl Relay {
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
}

/// An engineer: a key pair and an OpenSSH client configuration for the relay.
pub struct Engineer {
    /// The engineer's user name on the relay.
    pub name: String,
    /// The private key file (the public key is beside it, `.pub`).
    pub key: PathBuf,
    /// The relay's SSH port.
    pub ssh_port: u16,
    /// The OpenSSH client configuration for this engineer (`ssh -F`).
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
        self.exec_via(self.ssh_port, device, command, input)
    }

    /// Runs `cmd` on `device` through the relay on SSH port `port` (another relay of a
    /// cluster than the one the engineer was registered through).
    pub fn exec_on(&self, relay: &Relay, device: &str, command: &str) -> Result<Run> {
        self.exec_via(relay.ssh_port, device, command, None)
    }

    /// Like [`Engineer::exec_on`] with data on stdin.
    pub fn exec_input_on(
        &self,
        relay: &Relay,
        device: &str,
        command: &str,
        input: Option<&[u8]>,
    ) -> Result<Run> {
        self.exec_via(relay.ssh_port, device, command, input)
    }

    fn exec_via(
        &self,
        port: u16,
        device: &str,
        command: &str,
        input: Option<&[u8]>,
    ) -> Result<Run> {
        let cmd = self.ssh_cmd(&[
            "-p",
            &port.to_string(),
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
