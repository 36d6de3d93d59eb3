//! OS update install benchmark: `agent ota install` of an uncompressed bundle into a file
//! slot, against `dd` of the same image into a file followed by `sha256sum` of it (the least
//! an install that checks what it wrote must do), in one run; plus the agent's peak RSS for a
//! 64 MiB and a 1 GiB image, which must stay flat.
//!
//! Run with `cargo bench --bench ota`. Needs GNU time (`/usr/bin/time`) for the RSS figures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use common::*;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Peak RSS in KiB from GNU time's -v report.
fn max_rss(report: &str) -> Option<u64> {
    report.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Maximum resident set size (kbytes):")
            .and_then(|v| v.trim().parse().ok())
    })
}

fn one_size(dir: &Path, agent: &Agent, mib: u64) -> Result<()> {
    let image = dir.join(format!("image-{mib}.img"));
    // Incompressible content, so neither side gets a free ride.
    std::fs::write(&image, pseudo_random((mib << 20) as usize, mib))?;
    let bundle = dir.join(format!("image-{mib}.tbundle"));
    let keys = dir.join("release");
    let r = agent.cmd(&[
        "bundle",
        "create",
        "--key",
        keys.with_extension("key").to_str().unwrap_or_default(),
        "--version",
        "1.0.0",
        "--compatible",
        "bench-board",
        "--image",
        &format!("rootfs={}", image.display()),
        "-o",
        bundle.to_str().unwrap_or_default(),
    ])?;
    ensure!(r.status == Some(0), "bundle create: {}", r.stderr);
    run(&mut Command::new("sync"))?;

    // dd + sha256sum of the same bytes into a file of the same size.
    let target = dir.join("dd-target.img");
    let start = Instant::now();
    run(Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", "conv=fsync", "status=none"]))?;
    run(Command::new("sha256sum").arg(&target))?;
    let dd = start.elapsed().as_secs_f64();

    // The agent: signature, streaming with hashing, fsync, read back and hash again.
    std::fs::write(dir.join("cmdline"), "tether.slot=A\n")?;
    let start = Instant::now();
    let report = run(Command::new("/usr/bin/time")
        .arg("-v")
        .arg(bin_dir()?.join("agent"))
        .arg("--config")
        .arg(&agent.config)
        .args([
            "ota",
            "install",
            bundle.to_str().unwrap_or_default(),
            "--no-reboot",
        ]))?;
    let ota = start.elapsed().as_secs_f64();
    let rss = max_rss(&report).context("no RSS in GNU time's report")?;
    let mib_f = mib as f64;
    println!(
        "{mib:>5} MiB  dd+sha256sum {:>7.1} MiB/s   agent ota install {:>7.1} MiB/s ({:.2}x)   agent peak RSS {:.1} MiB",
        mib_f / dd,
        mib_f / ota,
        dd / ota,
        rss as f64 / 1024.0
    );
    for p in [&image, &bundle, &target] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

fn main() -> Result<()> {
    let dir =
        tempfile::tempdir_in(std::env::var("TETHER_BENCH_DIR").unwrap_or_else(|_| ".".into()))?;
    let keys = dir.path().join("release");
    let keygen = Agent::new("keys", &[])?;
    let r = keygen.cmd(&["keygen", "--out", keys.to_str().unwrap_or_default()])?;
    ensure!(r.status == Some(0), "keygen: {}", r.stderr);
    let extra = format!(
        "ota:\n  compatible: bench-board\n  keyring: {}\n  bootloader: file\n  env_file: {}\n  slots:\n    - {{ name: A, class: rootfs, device: {} }}\n    - {{ name: B, class: rootfs, device: {} }}\n  cmdline: {}\n  reboot_command: \"true\"\n",
        keys.with_extension("pub").display(),
        dir.path().join("bootenv").display(),
        dir.path().join("slot-a.img").display(),
        dir.path().join("slot-b.img").display(),
        dir.path().join("cmdline").display(),
    );
    let agent = Agent::with_extra_config("bench", &[], &extra)?;
    println!("OS update install, file slot, uncompressed bundle, one run (release build)");
    for mib in [64, 1024] {
        one_size(dir.path(), &agent, mib)?;
        let _ = std::fs::remove_file(dir.path().join("slot-b.img"));
    }
    Ok(())
}
