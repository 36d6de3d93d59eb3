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

/// A relay whose data directory is a small tmpfs, with one linked agent that has stored
/// [`BEFORE`] records. Fields drop in order: the agent, the relay, then the unmount.
struct Rig {
    agent: Agent,
    relay: Relay,
    tmpfs: Tmpfs,
}

/// Starts the rig, or `None` (after saying so) where no tmpfs can be mounted outside CI.
fn rig(test: &str) -> Result<Option<Rig>> {
    let tmpfs = match Tmpfs::mount("24m")? {
        Ok(t) => t,
        Err(why) if std::env::var_os("CI").is_some() => {
            bail!("cannot mount a tmpfs for the relay's data directory: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs (needs root): {why}");
            return Ok(None);
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
        relay.metric("tether_telemetry_sink_failing")? == Some(0.0),
        "sink reported failing while healthy"
    );
    Ok(Some(Rig {
        agent,
        relay,
        tmpfs,
    }))
}

impl Rig {
    /// Fills the disk and returns the filler file.
    fn fill(&self) -> Result<PathBuf> {
        let filler = self.tmpfs.path().join("filler");
        ensure!(fill(&filler)? > 0, "nothing was written to fill the tmpfs");
        Ok(filler)
    }

    /// Waits until the relay says its sink fails.
    fn wait_failing(&self) -> Result<()> {
        wait_until(
            Duration::from_secs(30),
            "the relay to say its sink fails",
            || self.relay.log().contains(FAILING),
        )
        .with_context(|| format!("relay log:\n{}", tail_lines(&self.relay.log(), 30)))
    }

    /// Checks that within seconds of the disk having room again (at `freed`) every record is
    /// stored exactly once, the outbox drained, and the outage was logged once each way, over
    /// the same link.
    fn check_recovered(&self, freed: Instant) -> Result<()> {
        self.agent
            .wait_drained(Duration::from_secs(20).saturating_sub(freed.elapsed()))
            .context("outbox not drained within 20 s of freeing the disk")?;
        eprintln!(
            "drained {:?} after the disk had space again",
            freed.elapsed()
        );

        let records = self.relay.stored_telemetry("board1")?;
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

        wait_until(
            Duration::from_secs(10),
            "the relay to say its sink recovered",
            || self.relay.log().contains(RECOVERED),
        )
        .with_context(|| format!("relay log:\n{}", tail_lines(&self.relay.log(), 30)))?;
        let log = self.relay.log();
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
            self.relay.metric("tether_telemetry_sink_failing")? == Some(0.0),
            "tether_telemetry_sink_failing still 1 after recovery"
        );
        // Over the same link: a reconnect would have resumed upload the old way.
        ensure!(
            !self.agent.log().lines().any(
                |l| l.contains("link to") && (l.contains(" lost: ") || l.contains(" failed: "))
            ),
            "the link dropped, so this proves nothing about the telemetry channel:\n{}",
            tail_lines(&self.agent.log(), 30)
        );
        Ok(())
    }

    fn stop(mut self) -> Result<()> {
        drop(self.agent);
        self.relay.stop()?;
        drop(self.relay);
        drop(self.tmpfs);
        Ok(())
    }
}

#[test]
fn telemetry_resumes_by_itself_once_the_relays_disk_has_space_again() -> Result<()> {
    let Some(rig) = rig("telemetry_resumes_by_itself_once_the_relays_disk_has_space_again")? else {
        return Ok(());
    };
    let filler = rig.fill()?;
    produce(&rig.agent, BEFORE, RECORDS)?;
    rig.wait_failing()?;
    ensure!(
        rig.relay.metric("tether_telemetry_sink_failing")? == Some(1.0),
        "tether_telemetry_sink_failing not 1 while the disk is full"
    );
    ensure!(
        rig.relay
            .metric("tether_telemetry_sink_errors_total")?
            .is_some_and(|n| n >= 1.0),
        "no sink error counted"
    );
    ensure!(
        rig.agent.queued()? > 0,
        "the device let go of unstored records"
    );
    // The disk stays full past the relay's own retries, so it closes the telemetry channel and
    // only the device reopening one on the same link can bring the records over.
    wait_until(
        Duration::from_secs(40),
        "the agent to reopen its telemetry channel",
        || rig.agent.log().contains("reopening it in"),
    )
    .with_context(|| format!("agent log:\n{}", tail_lines(&rig.agent.log(), 30)))?;
    ensure!(
        rig.agent.queued()? > 0,
        "the device let go of unstored records"
    );
    std::fs::remove_file(&filler)?;
    rig.check_recovered(Instant::now())?;
    rig.stop()
}

#[test]
fn a_short_sink_outage_is_ridden_out_by_the_relay_on_the_same_channel() -> Result<()> {
    let Some(rig) = rig("a_short_sink_outage_is_ridden_out_by_the_relay_on_the_same_channel")?
    else {
        return Ok(());
    };
    let filler = rig.fill()?;
    // The disk has room again about a second after the sink first failed, while the device
    // may still be producing: well within the relay's retries of one batch.
    let freed = std::thread::scope(|scope| -> Result<Instant> {
        let producer = scope.spawn(|| produce(&rig.agent, BEFORE, RECORDS));
        rig.wait_failing()?;
        std::thread::sleep(Duration::from_secs(1));
        std::fs::remove_file(&filler)?;
        let freed = Instant::now();
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        Ok(freed)
    })?;
    rig.check_recovered(freed)?;
    // The relay's retries bridged the outage: the device never had to reopen the channel.
    ensure!(
        !rig.agent.log().contains("reopening it in"),
        "the telemetry channel was closed during a short outage:\n{}",
        tail_lines(&rig.agent.log(), 30)
    );
    rig.stop()
}
