//! Telemetry recovers by itself from a failing sink: with the relay's disk full the device keeps
//! its records and the relay says once that its sink fails; once space is freed every record is
//! stored exactly once within seconds, over the same link, and the outbox drains.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;

/// Records produced while the disk is full, about 1 KiB each: far more than SQLite's write-ahead
/// log holds from before, so commits need space the disk no longer has.
const RECORDS: usize = 3000;
/// Records stored before the disk fills, to know the healthy path works first.
const BEFORE: usize = 10;
/// The relay's log line when its sink starts failing, and when it recovers.
const FAILING: &str = "telemetry sink failing";
const RECOVERED: &str = "telemetry sink recovered after";

/// A small tmpfs, unmounted when dropped (even when the test fails).
struct Tmpfs {
    /// Holds the mount point; removed after the unmount.
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on a fresh directory; `None`
    /// with the reason if this machine does not let the test mount one.
    fn mount(size: &str) -> Result<std::result::Result<Tmpfs, String>> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        Ok(match out {
            Ok(o) if o.status.success() => Ok(Tmpfs { dir }),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(format!("cannot run mount: {e}")),
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it open (a relay that would not die): detach it anyway.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the file system holding `path` with a file there, until no byte more fits.
fn fill(path: &Path) -> Result<u64> {
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {path:?}"))?;
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let block = vec![0xa5u8; chunk];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(e).with_context(|| format!("writing {path:?}")),
            }
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

/// One sample of `series` (name with labels) on the relay's `/metrics` page.
fn metric(relay: &Relay, series: &str) -> Result<Option<f64>> {
    let (code, page) = relay.http_get("/metrics", None)?;
    ensure!(code == 200, "GET /metrics: {code} {page}");
    Ok(page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    }))
}

/// Queues `n` records of about 1 KiB on the agent with `agent telemetry send --batch`,
/// numbered from `from` in their payload.
fn produce(agent: &Agent, from: usize, n: usize) -> Result<()> {
    let pad = "x".repeat(1000);
    let input: String = (from..from + n)
        .map(|i| format!("{{\"topic\":\"fill\",\"value\":{{\"i\":{i},\"pad\":\"{pad}\"}}}}\n"))
        .collect();
    let mut cmd = Command::new(bin_dir()?.join("agent"));
    cmd.arg("--config")
        .arg(&agent.config)
        .args(["telemetry", "send", "--batch"]);
    let r = run_with_timeout(cmd, Some(input.as_bytes()), Duration::from_secs(60))?;
    ensure!(
        r.status == Some(0),
        "telemetry send --batch exit {:?}: {}",
        r.status,
        r.stderr
    );
    Ok(())
}

fn count(log: &str, line: &str) -> usize {
    log.matches(line).count()
}

#[test]
fn telemetry_resumes_by_itself_once_the_relays_disk_has_space_again() -> Result<()> {
    let tmpfs = match Tmpfs::mount("24m")? {
        Ok(t) => t,
        Err(why) if std::env::var_os("CI").is_some() => {
            bail!("cannot mount a tmpfs for the relay's data directory: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED telemetry_resumes_by_itself_once_the_relays_disk_has_space_again: \
                 cannot mount a tmpfs (needs root): {why}"
            );
            return Ok(());
        }
    };
    // The relay's data directory is the tmpfs (through a link, so removing the relay's own
    // directory never reaches into the mount); its log stays outside, on a disk with room.
    let data = tmpfs.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let dir = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&data, dir.path().join("data"))?;
    let mut relay = Relay {
        dir,
        ssh_port: free_port()?,
        http_port: free_port()?,
        proc: None,
    };
    relay.restart()?;
    relay.tenant("acme")?;
    let mut agent = Agent::new("board1", &[])?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;

    produce(&agent, 0, BEFORE)?;
    agent.wait_drained(Duration::from_secs(20))?;
    ensure!(
        metric(&relay, "tether_telemetry_sink_failing")? == Some(0.0),
        "sink reported failing while healthy"
    );

    // The disk fills up; the device goes on producing.
    let filler: PathBuf = tmpfs.path().join("filler");
    let filled = fill(&filler)?;
    ensure!(filled > 0, "nothing was written to fill the tmpfs");
    produce(&agent, BEFORE, RECORDS)?;

    wait_until(
        Duration::from_secs(30),
        "the relay to say its sink fails",
        || relay.log().contains(FAILING),
    )
    .with_context(|| format!("relay log:\n{}", tail_lines(&relay.log(), 30)))?;
    ensure!(
        metric(&relay, "tether_telemetry_sink_failing")? == Some(1.0),
        "tether_telemetry_sink_failing not 1 while the disk is full"
    );
    ensure!(
        metric(&relay, "tether_telemetry_sink_errors_total")?.is_some_and(|n| n >= 1.0),
        "no sink error counted"
    );
    ensure!(agent.queued()? > 0, "the device let go of unstored records");

    // The disk stays full past the relay's own retries, so it closes the telemetry channel and
    // only the device reopening one can bring the records over.
    wait_until(
        Duration::from_secs(40),
        "the agent to reopen its telemetry channel",
        || agent.log().contains("reopening it in"),
    )
    .with_context(|| format!("agent log:\n{}", tail_lines(&agent.log(), 30)))?;
    ensure!(agent.queued()? > 0, "the device let go of unstored records");

    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    agent
        .wait_drained(Duration::from_secs(20))
        .context("outbox not drained within 20 s of freeing the disk")?;
    let took = freed.elapsed();

    let records = relay.stored_telemetry("board1")?;
    let seqs: BTreeSet<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    ensure!(
        records.len() == BEFORE + RECORDS && seqs.len() == records.len(),
        "stored {} records ({} distinct), expected {} each once",
        records.len(),
        seqs.len(),
        BEFORE + RECORDS
    );
    let payloads: BTreeSet<u64> = records
        .iter()
        .filter_map(|r| r["payload"]["i"].as_u64())
        .collect();
    ensure!(
        payloads.len() == BEFORE + RECORDS
            && payloads.last() == Some(&((BEFORE + RECORDS - 1) as u64)),
        "some payloads missing"
    );

    let log = relay.log();
    wait_until(
        Duration::from_secs(10),
        "the relay to say its sink recovered",
        || relay.log().contains(RECOVERED),
    )
    .with_context(|| format!("relay log:\n{}", tail_lines(&log, 30)))?;
    let log = relay.log();
    ensure!(
        count(&log, FAILING) == 1 && count(&log, RECOVERED) == 1,
        "the outage should be logged once as it starts and once as it ends:\n{}",
        tail_lines(&log, 40)
    );
    ensure!(
        !log.contains("closing its telemetry channel"),
        "a failing sink was logged per batch:\n{}",
        tail_lines(&log, 40)
    );
    ensure!(
        metric(&relay, "tether_telemetry_sink_failing")? == Some(0.0),
        "tether_telemetry_sink_failing still 1 after recovery"
    );
    // Over the same link: the device never had to reconnect.
    ensure!(
        !agent
            .log()
            .lines()
            .any(|l| l.contains("link to") && (l.contains(" lost: ") || l.contains(" failed: "))),
        "the link dropped, so this proves nothing about the telemetry channel:\n{}",
        tail_lines(&agent.log(), 30)
    );
    eprintln!("drained {took:?} after the disk had space again");

    drop(agent);
    relay.stop()?;
    drop(relay);
    drop(tmpfs);
    Ok(())
}
