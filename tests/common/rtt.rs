//! Keystroke round trips: one byte typed into a raw `cat` at the far end of an ssh command and
//! read back, as an engineer feels a remote shell.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Keystrokes sent before sampling, to warm every path.
const WARMUP: usize = 20;

/// A raw `cat` at the far end of an ssh command, ready to echo keystrokes.
pub struct KeystrokeShell {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: Option<std::thread::JoinHandle<String>>,
    typed: usize,
}

impl KeystrokeShell {
    /// Runs `ssh` (arguments up to the destination, which must allocate a tty with `-tt`) with
    /// `stty raw -echo; echo ready; exec cat` and waits until the shell is ready.
    pub fn open(mut ssh: Command) -> Result<Self> {
        ssh.arg("stty raw -echo; echo ready; exec cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ssh.spawn()?;
        // Drained aside so that a chatty client never blocks; kept for the error, if any.
        let stderr = child.stderr.take().map(|e| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = e.take(4096).read_to_string(&mut text);
                text
            })
        });
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ssh has no stdin or stdout");
        };
        let mut shell = KeystrokeShell {
            child,
            stdin,
            stdout,
            stderr,
            typed: 0,
        };
        let ready = shell.wait_ready();
        let ready =
            ready.and_then(|()| (0..WARMUP).try_for_each(|_| shell.keystroke().map(|_| ())));
        match ready {
            Ok(()) => Ok(shell),
            Err(e) => Err(shell.fail(e)),
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let mut seen = Vec::new();
        let mut b = [0u8; 1];
        let start = Instant::now();
        while !seen.ends_with(b"ready") {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the shell never became ready");
            }
            self.stdout.read_exact(&mut b)?;
            seen.push(b[0]);
        }
        // Let the line end after "ready" arrive before timing.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    /// Types one byte and waits for its echo: one round trip.
    pub fn keystroke(&mut self) -> Result<Duration> {
        let c = b'a' + (self.typed % 26) as u8;
        self.typed += 1;
        let mut b = [0u8; 1];
        let t0 = Instant::now();
        self.stdin.write_all(&[c])?;
        self.stdin.flush()?;
        loop {
            self.stdout.read_exact(&mut b)?;
            if b[0] == c {
                return Ok(t0.elapsed());
            }
        }
    }

    /// Ends the session and returns `e` with what ssh said on stderr.
    pub fn fail(mut self, e: anyhow::Error) -> anyhow::Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let said = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        e.context(format!("ssh said: {}", said.trim()))
    }
}

impl Drop for KeystrokeShell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ssh` as [`KeystrokeShell::open`] does and measures `samples` keystroke round trips,
/// sorted.
pub fn keystroke_rtts(ssh: Command, samples: usize) -> Result<Vec<Duration>> {
    let mut all = interleaved_keystroke_rtts(vec![ssh], samples)?;
    Ok(all.pop().unwrap_or_default())
}

/// Opens one shell per command and measures `samples` round trips on each, one keystroke per
/// shell in turn, so that whatever else the machine does falls on every path alike. Returns
/// each shell's round trips, sorted, in the order of `commands`.
pub fn interleaved_keystroke_rtts(
    commands: Vec<Command>,
    samples: usize,
) -> Result<Vec<Vec<Duration>>> {
    let mut shells = Vec::new();
    for (i, cmd) in commands.into_iter().enumerate() {
        shells.push(KeystrokeShell::open(cmd).with_context(|| format!("shell {i}"))?);
    }
    let mut out: Vec<Vec<Duration>> = shells.iter().map(|_| Vec::with_capacity(samples)).collect();
    for _ in 0..samples {
        for i in 0..shells.len() {
            let typed = shells[i].keystroke();
            match typed {
                Ok(rtt) => out[i].push(rtt),
                Err(e) => {
                    let shell = shells.swap_remove(i);
                    return Err(shell.fail(e).context(format!("shell {i}")));
                }
            }
        }
    }
    for v in &mut out {
        v.sort();
    }
    Ok(out)
}

/// The `q` quantile (0..=1) of sorted `samples`.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}
