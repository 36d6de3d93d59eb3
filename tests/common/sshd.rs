//! A private OpenSSH server on a loopback port: the board's own sshd that `ssh -J` reaches
//! through the relay.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::net::free_port;
use super::process::{Proc, spawn_logged};

/// Whether the OpenSSH server binary is available (ProxyJump tests need a private sshd).
pub fn sshd_path() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A private sshd on a free loopback port, accepting `authorized_key` for the current user.
pub struct Sshd {
    /// The loopback port sshd listens on.
    pub port: u16,
    /// Its host key, configuration and log; removed on drop.
    pub dir: tempfile::TempDir,
    /// The sshd process.
    pub proc: Proc,
}

impl Sshd {
    /// Starts sshd with a fresh host key and waits until it accepts connections.
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
        let mut proc = spawn_logged(cmd, &dir.path().join("sshd.log"))?;
        proc.wait_for_port(port).context("sshd")?;
        Ok(Sshd { port, dir, proc })
    }
}
