//! A/B OS updates on real loop devices holding real ext4 images, with the file boot
//! environment and a simulated bootloader that follows the rules of the shipped boot scripts
//! (first slot in BOOT_ORDER with attempts left; one attempt taken per boot).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::*;

/// A loop device attached to a file, detached on drop.
struct Loop {
    device: PathBuf,
}

impl Loop {
    fn attach(file: &Path) -> Result<Loop> {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()?;
        ensure!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Loop {
            device: PathBuf::from(String::from_utf8(out.stdout)?.trim()),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A real ext4 filesystem image holding /etc/os-version.
fn ext4_image(dir: &Path, version: &str) -> Result<PathBuf> {
    let root = dir.join(format!("root-{version}"));
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("etc/os-version"), format!("{version}\n"))?;
    let img = dir.join(format!("rootfs-{version}.ext4"));
    run_ok(Command::new("truncate").arg("-s").arg("12M").arg(&img))?;
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&img),
    )?;
    Ok(img)
}

fn sha256_prefix(device: &Path, len: u64) -> Result<String> {
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {len} {} | sha256sum", device.display())),
    )?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

struct Board {
    dir: tempfile::TempDir,
    agent: Agent,
    slots: Vec<Loop>,
    keys: PathBuf,
    /// fw_env.config when the board keeps its boot environment the U-Boot way; the simulated
    /// bootloader then reads and writes it with the real fw_printenv/fw_setenv.
    uboot: Option<PathBuf>,
}

impl Board {
    fn env_path(&self) -> PathBuf {
        self.dir.path().join("bootenv")
    }

    fn env(&self) -> Result<BTreeMap<String, String>> {
        let text = match &self.uboot {
            Some(config) => run_ok(Command::new("fw_printenv").arg("-c").arg(config))?,
            None => std::fs::read_to_string(self.env_path())?,
        };
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn set_env(&self, env: &BTreeMap<String, String>) -> Result<()> {
        if let Some(config) = &self.uboot {
            for (k, v) in env {
                run_ok(
                    Command::new("fw_setenv")
                        .arg("-c")
                        .arg(config)
                        .arg(k)
                        .arg(v),
                )?;
            }
            return Ok(());
        }
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let tmp = self.env_path().with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, self.env_path())?;
        Ok(())
    }

    /// What the boot script does: the first slot in BOOT_ORDER with attempts left, one
    /// attempt taken; its name goes on the kernel command line.
    fn boot(&self) -> Result<String> {
        let mut env = self.env()?;
        let order = env.get("BOOT_ORDER").cloned().unwrap_or_default();
        for slot in order.split_whitespace() {
            let key = format!("BOOT_{slot}_LEFT");
            let left: u32 = env.get(&key).and_then(|v| v.parse().ok()).unwrap_or(0);
            if left > 0 {
                env.insert(key, (left - 1).to_string());
                self.set_env(&env)?;
                std::fs::write(
                    self.dir.path().join("cmdline"),
                    format!("console=ttyS0 root=/dev/x rauc.slot={slot} quiet\n"),
                )?;
                return Ok(slot.to_string());
            }
        }
        bail!("no slot left to boot: {env:?}")
    }

    /// A boot after which the agent starts and runs its after-boot check.
    fn boot_and_check(&self) -> Result<(String, String)> {
        let slot = self.boot()?;
        let out = self.ota_ok(&["check"])?;
        Ok((slot, out))
    }

    fn ota(&self, args: &[&str]) -> Result<Run> {
        let mut all = vec!["ota"];
        all.extend_from_slice(args);
        self.agent.cmd(&all)
    }

    fn ota_ok(&self, args: &[&str]) -> Result<String> {
        let r = self.ota(args)?;
        ensure!(
            r.status == Some(0),
            "agent ota {args:?}: {:?} {}{}",
            r.status,
            r.stdout,
            r.stderr
        );
        Ok(r.stdout)
    }

    fn status(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ota_ok(&["status", "--json"])?)?)
    }

    fn bundle(&self, version: &str, compatible: &str, image: &Path) -> Result<PathBuf> {
        let out = self
            .dir
            .path()
            .join(format!("update-{version}-{compatible}.tbundle"));
        let r = self.agent.cmd(&[
            "bundle",
            "create",
            "--key",
            self.keys.with_extension("key").to_str().unwrap_or_default(),
            "--version",
            version,
            "--compatible",
            compatible,
            "--image",
            &format!("rootfs={}", image.display()),
            "--compress",
            "zstd",
            "-o",
            out.to_str().unwrap_or_default(),
        ])?;
        ensure!(r.status == Some(0), "bundle create: {}", r.stderr);
        Ok(out)
    }

    fn rebooted(&self) -> bool {
        let marker = self.dir.path().join("rebooted");
        let was = marker.exists();
        let _ = std::fs::remove_file(marker);
        was
    }
}

/// A board flashed with OS 1.0.0 at the factory (`ota.factory_version`).
fn board() -> Result<Board> {
    board_with(false)
}

fn board_with(uboot: bool) -> Result<Board> {
    board_from(uboot, "  factory_version: 1.0.0\n")
}

/// A board; with `uboot`, its boot environment is a redundant U-Boot environment in a file,
/// described by an fw_env.config. `ota_extra` goes at the end of the `ota:` section.
fn board_from(uboot: bool, ota_extra: &str) -> Result<Board> {
    let dir = tempfile::tempdir()?;
    let uboot_config = if uboot {
        let env_dev = dir.path().join("uboot-env.bin");
        // As the factory leaves it: one valid copy (CRC32, flags 1) and one blank.
        run_ok(Command::new("python3").arg("-c").arg(format!(
            "import struct, zlib\n\
             data = b'BOOT_ORDER=A B\\0BOOT_A_LEFT=2\\0BOOT_B_LEFT=2\\0\\0'.ljust(0x4000 - 5, b'\\0')\n\
             blob = bytearray(64 * 1024)\n\
             blob[0:0x4000] = struct.pack('<I', zlib.crc32(data)) + b'\\x01' + data\n\
             open('{}', 'wb').write(bytes(blob))",
            env_dev.display()
        )))?;
        let config = dir.path().join("fw_env.config");
        std::fs::write(
            &config,
            format!(
                "# two copies: updates are atomic\n{dev} 0x0000 0x4000\n{dev} 0x8000 0x4000\n",
                dev = env_dev.display()
            ),
        )?;
        Some(config)
    } else {
        None
    };
    let mut slots = Vec::new();
    for name in ["a", "b"] {
        let file = dir.path().join(format!("slot-{name}.img"));
        run_ok(Command::new("truncate").arg("-s").arg("16M").arg(&file))?;
        slots.push(Loop::attach(&file)?);
    }
    let keys = dir.path().join("release");
    let tmp_agent = Agent::new("keys", &[])?;
    let r = tmp_agent.cmd(&["keygen", "--out", keys.to_str().unwrap_or_default()])?;
    ensure!(r.status == Some(0), "keygen: {}", r.stderr);
    let extra = format!(
        "ota:\n  compatible: acme-board-rev2\n  keyring: {keyring}\n  bootloader: {backend}\n  env_file: {env}\n  uboot_config: {uboot_config}\n  slots:\n    - {{ name: A, class: rootfs, device: {a} }}\n    - {{ name: B, class: rootfs, device: {b} }}\n  tries: 2\n  health_check: test -f {healthy}\n  health_timeout: 5s\n  cmdline: {cmdline}\n  reboot_command: touch {rebooted}\n{ota_extra}",
        keyring = keys.with_extension("pub").display(),
        backend = if uboot { "uboot" } else { "file" },
        uboot_config = uboot_config
            .as_ref()
            .map(|c| c.display().to_string())
            .unwrap_or_else(|| "/nonexistent".into()),
        env = dir.path().join("bootenv").display(),
        a = slots[0].device.display(),
        b = slots[1].device.display(),
        healthy = dir.path().join("healthy").display(),
        cmdline = dir.path().join("cmdline").display(),
        rebooted = dir.path().join("rebooted").display(),
    );
    let agent = Agent::with_extra_config("board1", &[], &extra)?;
    let b = Board {
        dir,
        agent,
        slots,
        keys,
        uboot: uboot_config,
    };
    // As the factory image leaves it: A first, both with attempts.
    if b.uboot.is_none() {
        let mut env = BTreeMap::new();
        env.insert("BOOT_ORDER".into(), "A B".into());
        env.insert("BOOT_A_LEFT".into(), "2".into());
        env.insert("BOOT_B_LEFT".into(), "2".into());
        b.set_env(&env)?;
    }
    ensure!(
        b.env()?.get("BOOT_ORDER").map(String::as_str) == Some("A B"),
        "factory environment not readable"
    );
    ensure!(b.boot_and_check()?.0 == "A");
    Ok(b)
}

#[test]
fn updates_boot_on_trial_commit_when_healthy_and_fall_back_otherwise() -> Result<()> {
    let b = board()?;
    let image = ext4_image(b.dir.path(), "1.1.0")?;
    let image_len = std::fs::metadata(&image)?.len();
    let image_sha = sha256_prefix(&image, image_len)?;
    let bundle = b.bundle("1.1.0", "acme-board-rev2", &image)?;
    let r = b.agent.cmd(&[
        "bundle",
        "verify",
        "--keyring",
        b.keys.with_extension("pub").to_str().unwrap_or_default(),
        bundle.to_str().unwrap_or_default(),
    ])?;
    ensure!(r.status == Some(0), "verify: {}", r.stderr);
    let a_before = sha256_prefix(&b.slots[0].device, 16 << 20)?;

    // 1. The new slot boots but fails its health check: marked bad, back to A.
    let out = b.ota_ok(&["install", bundle.to_str().unwrap_or_default()])?;
    ensure!(out.contains("into slot B"), "{out}");
    ensure!(b.rebooted(), "install did not reboot");
    ensure!(
        sha256_prefix(&b.slots[1].device, image_len)? == image_sha,
        "slot B does not hold the image"
    );
    ensure!(
        sha256_prefix(&b.slots[0].device, 16 << 20)? == a_before,
        "the running slot was touched"
    );
    let env = b.env()?;
    ensure!(
        env.get("BOOT_ORDER").map(String::as_str) == Some("B A")
            && env.get("BOOT_B_LEFT").map(String::as_str) == Some("2"),
        "{env:?}"
    );
    let (slot, out) = b.boot_and_check()?;
    ensure!(
        slot == "B" && out.contains("failed its health check"),
        "{slot}: {out}"
    );
    ensure!(b.rebooted(), "a failed health check must reboot");
    ensure!(b.boot_and_check()?.0 == "A", "fell back to A");
    let st = b.status()?;
    ensure!(
        st["booted"] == "A" && st["slots"][1]["state"] == "bad" && st["pending"].is_null(),
        "{st}"
    );

    // 2. The new slot never gets to commit (it hangs, twice): the bootloader falls back by
    //    itself, and the agent on A says so.
    b.ota_ok(&[
        "install",
        bundle.to_str().unwrap_or_default(),
        "--no-reboot",
    ])?;
    ensure!(!b.rebooted(), "--no-reboot rebooted");
    ensure!(b.boot()? == "B");
    ensure!(b.boot()? == "B");
    let (slot, out) = b.boot_and_check()?;
    ensure!(slot == "A", "attempts exhausted: back to A, not {slot}");
    ensure!(
        out.contains("rolled back") && out.contains("did not commit"),
        "{out}"
    );

    // 3. Healthy: committed, and B stays first with full attempts.
    std::fs::write(b.dir.path().join("healthy"), "")?;
    b.ota_ok(&["install", bundle.to_str().unwrap_or_default()])?;
    let (slot, out) = b.boot_and_check()?;
    ensure!(
        slot == "B" && out.contains("committed 1.1.0 in slot B"),
        "{slot}: {out}"
    );
    let env = b.env()?;
    ensure!(
        env.get("BOOT_ORDER").map(String::as_str) == Some("B A")
            && env.get("BOOT_B_LEFT").map(String::as_str) == Some("2"),
        "{env:?}"
    );
    ensure!(b.boot_and_check()?.0 == "B");
    let st = b.status()?;
    ensure!(
        st["booted"] == "B"
            && st["slots"][1]["state"] == "good"
            && st["slots"][1]["version"] == "1.1.0",
        "{st}"
    );

    // A lower version is refused unless asked for.
    let old = ext4_image(b.dir.path(), "1.0.0")?;
    let old_bundle = b.bundle("1.0.0", "acme-board-rev2", &old)?;
    let r = b.ota(&["install", old_bundle.to_str().unwrap_or_default()])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("lower than the running 1.1.0"),
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn bad_bundles_never_touch_the_running_slot_nor_become_bootable() -> Result<()> {
    let b = board()?;
    let image = ext4_image(b.dir.path(), "2.0.0")?;
    let good = b.bundle("2.0.0", "acme-board-rev2", &image)?;
    let bytes = std::fs::read(&good)?;
    let a_before = sha256_prefix(&b.slots[0].device, 16 << 20)?;
    let env_before = b.env()?;

    // Tampered manifest: the version string in the signed JSON.
    let at = bytes
        .windows(7)
        .position(|w| w == b"\"2.0.0\"")
        .context("version in the manifest")?;
    let mut manifest_tampered = bytes.clone();
    manifest_tampered[at + 1] = b'9';
    // Tampered image: a byte near the end of the payload.
    let mut payload_tampered = bytes.clone();
    let n = payload_tampered.len();
    payload_tampered[n - 100] ^= 0x55;
    let truncated = bytes[..bytes.len() / 2].to_vec();
    let other_key = b.dir.path().join("other");
    let r = b
        .agent
        .cmd(&["keygen", "--out", other_key.to_str().unwrap_or_default()])?;
    ensure!(r.status == Some(0));
    let foreign = b.dir.path().join("foreign.tbundle");
    let r = b.agent.cmd(&[
        "bundle",
        "create",
        "--key",
        other_key.with_extension("key").to_str().unwrap_or_default(),
        "--version",
        "2.0.0",
        "--compatible",
        "acme-board-rev2",
        "--image",
        &format!("rootfs={}", image.display()),
        "-o",
        foreign.to_str().unwrap_or_default(),
    ])?;
    ensure!(r.status == Some(0), "{}", r.stderr);
    let wrong_board = b.bundle("2.0.0", "other-board", &image)?;
    let big = b.dir.path().join("big.img");
    run_ok(Command::new("truncate").arg("-s").arg("20M").arg(&big))?;
    let too_big = b.bundle("2.0.1", "acme-board-rev2", &big)?;

    let cases: Vec<(&str, PathBuf, &str, bool)> = vec![
        (
            "manifest",
            write(&b, "m.tbundle", &manifest_tampered)?,
            "signature",
            false,
        ),
        (
            "payload",
            write(&b, "p.tbundle", &payload_tampered)?,
            "sha256",
            true,
        ),
        (
            "truncated",
            write(&b, "t.tbundle", &truncated)?,
            "truncated",
            true,
        ),
        ("unknown key", foreign, "trusted key", false),
        ("compatible", wrong_board, "other-board", false),
        ("too big", too_big, "holds", false),
    ];
    for (what, path, expect, wrote) in cases {
        let r = b.ota(&["install", path.to_str().unwrap_or_default()])?;
        ensure!(
            r.status == Some(1) && r.stderr.contains(expect),
            "{what}: {:?} {}",
            r.status,
            r.stderr
        );
        ensure!(!b.rebooted(), "{what}: rebooted");
        ensure!(
            sha256_prefix(&b.slots[0].device, 16 << 20)? == a_before,
            "{what}: the running slot was touched"
        );
        let env = b.env()?;
        ensure!(
            env.get("BOOT_ORDER") == env_before.get("BOOT_ORDER"),
            "{what}: boot order changed: {env:?}"
        );
        if wrote {
            // Half written: B must not be bootable, not even as a fallback.
            ensure!(
                env.get("BOOT_B_LEFT").map(String::as_str) == Some("0"),
                "{what}: a partly written slot stays bootable: {env:?}"
            );
        }
        ensure!(
            b.boot_and_check()?.0 == "A",
            "{what}: booted something else"
        );
    }
    // And after all that a good bundle installs.
    b.ota_ok(&["install", good.to_str().unwrap_or_default(), "--no-reboot"])?;
    ensure!(b.boot()? == "B");
    Ok(())
}

fn write(b: &Board, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let p = b.dir.path().join(name);
    std::fs::write(&p, bytes)?;
    Ok(p)
}

#[test]
fn killing_the_install_at_any_moment_leaves_a_bootable_board() -> Result<()> {
    kill_anywhere(false)
}

#[test]
fn killing_the_install_leaves_a_valid_u_boot_environment_that_fw_printenv_reads() -> Result<()> {
    kill_anywhere(true)
}

fn kill_anywhere(uboot: bool) -> Result<()> {
    let b = board_with(uboot)?;
    std::fs::write(b.dir.path().join("healthy"), "")?;
    let image = ext4_image(b.dir.path(), "3.0.0")?;
    let image_len = std::fs::metadata(&image)?.len();
    let image_sha = sha256_prefix(&image, image_len)?;
    let bundle = b.bundle("3.0.0", "acme-board-rev2", &image)?;
    let a_sha = sha256_prefix(&b.slots[0].device, 16 << 20)?;
    // How long a whole install takes here, so the kills spread over all of it and past it.
    let started = std::time::Instant::now();
    b.ota_ok(&[
        "install",
        bundle.to_str().unwrap_or_default(),
        "--no-reboot",
    ])?;
    let whole = started.elapsed().as_millis() as u64;
    b.ota_ok(&["rollback", "--no-reboot"])?;
    b.rebooted();
    ensure!(b.boot_and_check()?.0 == "A");
    let mut outcomes = BTreeMap::new();
    for i in 0..30u64 {
        let delay_ms = whole * 6 / 5 * i / 29;
        let mut child = Command::new(bin_dir()?.join("agent"))
            .arg("--config")
            .arg(&b.agent.config)
            .args([
                "ota",
                "install",
                bundle.to_str().unwrap_or_default(),
                "--no-reboot",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait()?;
        let (slot, _) = b.boot_and_check()?;
        // Whatever boots is whole: the untouched old slot, or the complete verified image.
        match slot.as_str() {
            "A" => ensure!(
                sha256_prefix(&b.slots[0].device, 16 << 20)? == a_sha,
                "after a kill at {delay_ms} ms slot A changed"
            ),
            "B" => ensure!(
                sha256_prefix(&b.slots[1].device, image_len)? == image_sha,
                "after a kill at {delay_ms} ms slot B booted without the whole image"
            ),
            other => bail!("booted {other}"),
        }
        *outcomes
            .entry(format!(
                "{slot} (install {})",
                if status.success() {
                    "finished"
                } else {
                    "killed"
                }
            ))
            .or_insert(0u32) += 1;
        // Back to A for the next round, as a board that was rolled back would be.
        if slot == "B" {
            b.ota_ok(&["rollback", "--no-reboot"])?;
            b.rebooted();
            ensure!(b.boot_and_check()?.0 == "A");
        }
    }
    eprintln!("outcomes: {outcomes:?}");
    ensure!(
        outcomes.keys().any(|k| k.contains("killed")),
        "no install was ever interrupted: {outcomes:?}"
    );
    // And a later install still goes through.
    b.ota_ok(&[
        "install",
        bundle.to_str().unwrap_or_default(),
        "--no-reboot",
    ])?;
    let (slot, out) = b.boot_and_check()?;
    ensure!(
        slot == "B" && out.contains("committed 3.0.0"),
        "{slot}: {out}"
    );
    Ok(())
}

/// Waits for the agent to ask for a reboot, then does what a reboot does: the agent dies,
/// the bootloader picks a slot, the agent starts again. Returns the slot booted.
fn reboot_when_asked(b: &mut Board) -> Result<String> {
    let marker = b.dir.path().join("rebooted");
    wait_until(Duration::from_secs(60), "the agent reboots", || {
        marker.exists()
    })
    .with_context(|| b.agent.log())?;
    b.rebooted();
    b.agent.kill();
    let slot = b.boot()?;
    b.agent.start()?;
    Ok(slot)
}

#[test]
fn an_os_bundle_deployed_from_the_relay_commits_or_rolls_back_and_says_so() -> Result<()> {
    let mut b = board()?;
    std::fs::write(b.dir.path().join("healthy"), "")?;
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    b.agent.enroll(&relay, Transport::Tcp, "acme")?;
    b.agent.start()?;
    b.agent.wait_online()?;
    let image = ext4_image(b.dir.path(), "1.1.0")?;
    let bundle = b.bundle("1.1.0", "acme-board-rev2", &image)?;
    let id = deploy(&relay, "device:board1", &["--bundle", path_str(&bundle)])?;
    ensure!(reboot_when_asked(&mut b)? == "B", "the new slot boots");
    wait_deployment_status(&relay, &id, "succeeded", Duration::from_secs(60))
        .with_context(|| b.agent.log())?;
    let state = device_state(&relay, "board1")?;
    ensure!(
        state["reported"]["os_version"] == "1.1.0" && state["desired"]["os"]["version"] == "1.1.0",
        "{state}"
    );
    ensure!(b.status()?["slots"][1]["state"] == "good");
    let trail = relay.admin_ok(&["audit", "list", "--json"])?;
    ensure!(
        trail.contains("\"ota.installed\"") && trail.contains("\"to\": \"1.1.0\""),
        "the installed update is not in the audit trail: {trail}"
    );

    // A version whose health check fails: installed into A, booted on trial, marked bad,
    // back to B; the deployment says rolled back, and why.
    std::fs::remove_file(b.dir.path().join("healthy"))?;
    let image = ext4_image(b.dir.path(), "1.2.0")?;
    let bundle = b.bundle("1.2.0", "acme-board-rev2", &image)?;
    let id = deploy(&relay, "device:board1", &["--bundle", path_str(&bundle)])?;
    ensure!(
        reboot_when_asked(&mut b)? == "A",
        "the new slot boots on trial"
    );
    ensure!(reboot_when_asked(&mut b)? == "B", "the failed slot is left");
    let view = wait_deployment_status(&relay, &id, "rolled-back", Duration::from_secs(60))
        .with_context(|| b.agent.log())?;
    ensure!(
        view["devices"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("health check")),
        "{view}"
    );
    Ok(())
}

/// A static HTTPS file server with Range support that cuts its first `cuts` responses after
/// `chunk` bytes, logging the offset each request asked for.
const RANGE_SERVER: &str = r#"
import http.server, os, socket, ssl, sys
root, port, cert, key, cuts, chunk, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
served = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        path = os.path.join(root, self.path.lstrip("/"))
        if not os.path.isfile(path):
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        data = open(path, "rb").read()
        start = 0
        r = self.headers.get("Range", "")
        if r.startswith("bytes="):
            start = int(r[6:].split("-")[0] or 0)
        with open(log, "a") as f: f.write("%d\n" % start)
        body = data[start:]
        if start:
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        served[0] += 1
        if served[0] <= cuts:
            self.wfile.write(body[:chunk]); self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

#[test]
fn an_https_download_resumes_where_the_link_dropped() -> Result<()> {
    let b = board()?;
    std::fs::write(b.dir.path().join("healthy"), "")?;
    let image = ext4_image(b.dir.path(), "4.0.0")?;
    let bundle = b.bundle("4.0.0", "acme-board-rev2", &image)?;
    let bundle_len = std::fs::metadata(&bundle)?.len();
    let (cert, key) = self_signed_cert(b.dir.path())?;
    let script = b.dir.path().join("range_server.py");
    std::fs::write(&script, RANGE_SERVER)?;
    let port = free_port()?;
    let log = b.dir.path().join("ranges.log");
    let chunk = (bundle_len / 5).max(1);
    let mut server = Proc {
        child: Command::new("python3")
            .arg(&script)
            .arg(b.dir.path())
            .arg(port.to_string())
            .arg(&cert)
            .arg(&key)
            .arg("3")
            .arg(chunk.to_string())
            .arg(&log)
            .spawn()?,
        log: b.dir.path().join("server.log"),
    };
    wait_for_port(port)?;
    let url = format!(
        "https://127.0.0.1:{port}/{}",
        bundle
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    );
    let cert_env = cert.to_string_lossy().to_string();
    let r = b.agent.cmd_with_env(
        &["ota", "install", &url, "--no-reboot"],
        &[("SSL_CERT_FILE", cert_env.as_str())],
    )?;
    ensure!(
        r.status == Some(0),
        "install from {url}: {}{}",
        r.stdout,
        r.stderr
    );
    let offsets: Vec<u64> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    ensure!(
        offsets.len() == 4 && offsets[0] == 0 && offsets.windows(2).all(|w| w[1] > w[0]),
        "each retry resumes further on: {offsets:?}"
    );
    let (slot, out) = b.boot_and_check()?;
    ensure!(
        slot == "B" && out.contains("committed 4.0.0"),
        "{slot}: {out}"
    );
    // A server that is gone: a clear error, nothing touched.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let r = b.agent.cmd_with_env(
        &["ota", "install", &url, "--no-reboot"],
        &[("SSL_CERT_FILE", cert_env.as_str())],
    )?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("gave up after")
            && r.stderr.contains("connecting"),
        "{}",
        r.stderr
    );
    ensure!(
        b.boot_and_check()?.0 == "B",
        "a failed download changed the boot"
    );
    Ok(())
}

/// A board whose running version nobody knows (the agent installed nothing yet and
/// `ota.factory_version` is not set) refuses every bundle, touching nothing, until told to
/// accept one; once that one is committed its version is known and only older bundles are
/// refused. A board with a factory version is checked against that.
#[test]
fn a_board_with_no_known_version_installs_only_with_allow_downgrade() -> Result<()> {
    let b = board_from(false, "")?;
    std::fs::write(b.dir.path().join("healthy"), "")?;
    let image = ext4_image(b.dir.path(), "1.1.0")?;
    let bundle = b.bundle("1.1.0", "acme-board-rev2", &image)?;
    let path = bundle.to_str().unwrap_or_default();
    let env_before = b.env()?;
    let b_before = sha256_prefix(&b.slots[1].device, 16 << 20)?;

    let r = b.ota(&["install", path])?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("the running OS version is unknown")
            && r.stderr.contains("slot A")
            && r.stderr.contains("--allow-downgrade")
            && r.stderr.contains("ota.factory_version"),
        "{:?} {}",
        r.status,
        r.stderr
    );
    ensure!(!b.rebooted(), "a refused install rebooted");
    ensure!(
        b.env()? == env_before,
        "a refused install changed the boot environment"
    );
    ensure!(
        sha256_prefix(&b.slots[1].device, 16 << 20)? == b_before,
        "a refused install wrote slot B"
    );
    ensure!(
        b.status()?["pending"].is_null(),
        "a refused install is pending"
    );

    let out = b.ota_ok(&["install", path, "--allow-downgrade"])?;
    ensure!(out.contains("into slot B"), "{out}");
    ensure!(b.rebooted(), "install did not reboot");
    let (slot, out) = b.boot_and_check()?;
    ensure!(
        slot == "B" && out.contains("committed 1.1.0 in slot B"),
        "{slot}: {out}"
    );

    // Now the running version is known: older is refused, newer needs no flag.
    let old = ext4_image(b.dir.path(), "1.0.5")?;
    let old_bundle = b.bundle("1.0.5", "acme-board-rev2", &old)?;
    let r = b.ota(&["install", old_bundle.to_str().unwrap_or_default()])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("lower than the running 1.1.0"),
        "{}",
        r.stderr
    );
    let newer = ext4_image(b.dir.path(), "1.2.0")?;
    let newer_bundle = b.bundle("1.2.0", "acme-board-rev2", &newer)?;
    b.ota_ok(&[
        "install",
        newer_bundle.to_str().unwrap_or_default(),
        "--no-reboot",
    ])?;

    // ota.factory_version stands for the running version of a slot the agent never wrote.
    let flashed = board_from(false, "  factory_version: 2.0.0\n")?;
    let bundle = flashed.bundle("1.1.0", "acme-board-rev2", &image)?;
    let r = flashed.ota(&["install", bundle.to_str().unwrap_or_default()])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("lower than the running 2.0.0"),
        "{}",
        r.stderr
    );
    Ok(())
}

/// The same refusal reaches the relay when the bundle comes in a fleet deployment: the
/// deployment fails with the reason, the bundle is not downloaded, nothing is installed and
/// the board does not reboot.
#[test]
fn an_os_deployment_to_a_board_with_no_known_version_fails_and_says_why() -> Result<()> {
    let mut b = board_from(false, "")?;
    std::fs::write(b.dir.path().join("healthy"), "")?;
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    b.agent.enroll(&relay, Transport::Tcp, "acme")?;
    b.agent.start()?;
    b.agent.wait_online()?;
    let env_before = b.env()?;
    let image = ext4_image(b.dir.path(), "1.1.0")?;
    let bundle = b.bundle("1.1.0", "acme-board-rev2", &image)?;
    let id = deploy(&relay, "device:board1", &["--bundle", path_str(&bundle)])?;
    let view = wait_deployment_status(&relay, &id, "failed", Duration::from_secs(60))
        .with_context(|| b.agent.log())?;
    ensure!(
        view["devices"][0]["message"].as_str().is_some_and(|m| {
            m.contains("OS 1.1.0")
                && m.contains("the running OS version is unknown")
                && m.contains("ota.factory_version")
        }),
        "{view}"
    );
    ensure!(!b.rebooted(), "the board rebooted");
    ensure!(b.env()? == env_before, "the boot environment changed");
    let cache = b.agent.dir.path().join("state/fleet-cache");
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(cached.is_empty(), "the bundle was downloaded: {cached:?}");
    let st = b.status()?;
    ensure!(
        st["pending"].is_null() && st["slots"][1]["state"] == "unknown",
        "{st}"
    );
    Ok(())
}
