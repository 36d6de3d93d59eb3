//! Keystroke round trips: one byte typed into a raw `cat` at the far end of an ssh command and
//! read back, as an engineer feels a remote shell.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Keystrokes sent before sampling, to warm every path.
const WARMUP: usize = 20;

/// Runs `ssh` (arguments up to the destination, which must allocate a tty with `-tt`) with
/// `stty raw -echo; echo ready; exec cat` and measures `samples` keystroke round trips, sorted.
pub fn keystroke_rtts(mut ssh: Command, samples: usize) -> Result<Vec<Duration>> {
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
    let result = (|| {
        let mut stdin = child.stdin.take().context("stdin")?;
        let mut stdout = child.stdout.take().context("stdout")?;
        let mut seen = Vec::new();
        let mut b = [0u8; 1];
        let start = Instant::now();
        while !seen.ends_with(b"ready") {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the shell never became ready");
            }
            stdout.read_exact(&mut b)?;
            seen.push(b[0]);
        }
        // Let the line end after "ready" arrive before timing.
        std::thread::sleep(Duration::from_millis(200));
        let mut out = Vec::with_capacity(samples);
        for i in 0..samples + WARMUP {
            let c = b'a' + (i % 26) as u8;
            let t0 = Instant::now();
            stdin.write_all(&[c])?;
            stdin.flush()?;
            loop {
                stdout.read_exact(&mut b)?;
                if b[0] == c {
                    break;
                }
            }
            if i >= WARMUP {
                out.push(t0.elapsed());
            }
        }
        out.sort();
        Ok(out)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let said = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    result.with_context(|| format!("ssh said: {}", said.trim()))
}

/// The `q` quantile (0..=1) of sorted `samples`.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}
