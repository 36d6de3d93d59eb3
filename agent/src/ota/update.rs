//! A/B OS updates: install a signed bundle into the slot that is not running, boot it on
//! trial, commit it when it proves healthy, and notice when the bootloader fell back.
//!
//! Boot selection uses the RAUC-compatible variables `BOOT_ORDER` (slot names, first tried
//! first) and `BOOT_<name>_LEFT` (boot attempts left), which the boot scripts in `bsp/`
//! implement: the bootloader boots the first slot in order with attempts left, after taking
//! one attempt away. The agent therefore:
//!
//! 1. checks the bundle's signatures against the keyring and its compatible string and
//!    version before anything is written;
//! 2. sets the target slot's attempts to 0 *before* writing, so a slot that is half written
//!    (power cut, bad image) can never be booted, not even as a fallback;
//! 3. streams every image into its slot, hashing on the way, syncs, reads it back and hashes
//!    again;
//! 4. only then puts the target first in `BOOT_ORDER` with `ota.tries` attempts, in one atomic
//!    environment write, and reboots;
//! 5. after boot, if the pending slot is the one running, runs the health check and commits
//!    (attempts back to full) or marks it bad and reboots into the old slot; if the old slot is
//!    running, the bootloader fell back: the update is reported as rolled back.
//!
//! What the agent knows about slots (versions, good or bad, the pending update) is kept in
//! `<state_dir>/ota.json` ([`crate::ota::state`]); which slots an update goes to, how the boot
//! order changes and what a boot means are decided in [`crate::ota::policy`].

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tether_protocol::bundle::{self, Keyring, Manifest};

use crate::config::{AgentConfig, Bootloader, OtaConfig};
use crate::ota::bootenv::{BootEnv, FileEnv, GrubEnv, UbootEnv};
use crate::ota::error::{OtaError, io};
use crate::ota::policy::{self, AfterBoot, Rollback};
use crate::ota::state::{self, OtaState, Pending, SlotInfo};

/// What `agent ota status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct OtaStatus {
    /// The running slot.
    pub booted: Option<String>,
    /// Each configured slot with what the agent and the bootloader know of it.
    pub slots: Vec<SlotStatus>,
    /// The update on trial.
    pub pending: Option<Pending>,
    /// How the last update ended.
    pub last_outcome: Option<String>,
    /// `BOOT_ORDER` as the bootloader sees it.
    pub boot_order: Option<String>,
}

/// One slot in `agent ota status`.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// Boot name.
    pub name: String,
    /// Image class.
    pub class: String,
    /// Device.
    pub device: PathBuf,
    /// Installed version, if known.
    pub version: Option<String>,
    /// good / bad / installing / pending / unknown.
    pub state: String,
    /// `BOOT_<name>_LEFT`.
    pub attempts_left: Option<u32>,
}

/// Options of an install.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Install even if the version is lower than the running one, or the running one is
    /// unknown.
    pub allow_downgrade: bool,
}

/// The OTA engine for one board.
pub struct Ota {
    cfg: OtaConfig,
    state_dir: PathBuf,
    env: Box<dyn BootEnv>,
}

impl Ota {
    /// Opens the configured boot environment; fails when OTA is not configured.
    pub fn open(config: &AgentConfig) -> Result<Self, OtaError> {
        let cfg = config.ota.clone();
        if cfg.compatible.is_none() || cfg.slots.is_empty() {
            return Err(OtaError::NotConfigured);
        }
        let env: Box<dyn BootEnv> = match cfg.bootloader {
            Bootloader::Uboot => Box::new(UbootEnv::from_config(&cfg.uboot_config)?),
            Bootloader::Grub => Box::new(GrubEnv::new(cfg.grub_env.clone())),
            Bootloader::File => Box::new(FileEnv::new(
                cfg.env_file
                    .clone()
                    .unwrap_or_else(|| config.state_dir.join("bootenv")),
            )),
        };
        Ok(Self {
            cfg,
            state_dir: config.state_dir.clone(),
            env,
        })
    }

    /// The agent's record of slots and updates.
    pub fn state(&self) -> OtaState {
        state::load(&self.state_dir)
    }

    fn save(&self, state: &OtaState) -> Result<(), OtaError> {
        state::save(&self.state_dir, state)
    }

    /// The running slot, from `tether.slot=` or `rauc.slot=` on the kernel command line.
    pub fn booted_slot(&self) -> Result<String, OtaError> {
        let cmdline = std::fs::read_to_string(&self.cfg.cmdline).map_err(|e| {
            OtaError::Booted(format!("reading {}: {e}", self.cfg.cmdline.display()))
        })?;
        let name = cmdline
            .split_whitespace()
            .find_map(|w| {
                w.strip_prefix("tether.slot=")
                    .or(w.strip_prefix("rauc.slot="))
            })
            .ok_or_else(|| {
                OtaError::Booted(format!(
                    "no tether.slot= or rauc.slot= in {} (the boot script passes it)",
                    self.cfg.cmdline.display()
                ))
            })?;
        if !self.cfg.slots.iter().any(|s| s.name == name) {
            return Err(OtaError::Booted(format!(
                "the kernel says slot {name:?}, which is not in ota.slots"
            )));
        }
        Ok(name.to_string())
    }

    /// The OS version of slot `booted`: the one recorded when the agent installed it, else
    /// `ota.factory_version` (a slot the agent never installed holds the factory image).
    pub fn running_version(&self, state: &OtaState, booted: &str) -> Option<String> {
        state
            .slots
            .get(booted)
            .and_then(|s| s.version.clone())
            .or_else(|| self.cfg.factory_version.clone())
    }

    /// Whether a bundle of `version` may be installed over the running slot: not when it is
    /// older, nor while the running version is unknown, unless `allow_downgrade` (or
    /// `ota.allow_downgrade`) says so. Checked by `install`, and by a fleet deployment before
    /// it downloads the bundle.
    pub fn check_version(&self, version: &str, allow_downgrade: bool) -> Result<(), OtaError> {
        let booted = self.booted_slot()?;
        policy::check_version(
            version,
            self.running_version(&self.state(), &booted).as_deref(),
            &booted,
            allow_downgrade || self.cfg.allow_downgrade,
        )
    }

    fn order(&self, env: &BTreeMap<String, String>) -> Vec<String> {
        policy::boot_order(env, &self.cfg.slots)
    }

    /// Slots, versions, states, attempts left, the pending update, how the last one ended.
    pub fn status(&self) -> Result<OtaStatus, OtaError> {
        let env = self.env.read()?;
        let state = self.state();
        Ok(OtaStatus {
            booted: self.booted_slot().ok(),
            slots: self
                .cfg
                .slots
                .iter()
                .map(|s| {
                    let info = state.slots.get(&s.name).cloned().unwrap_or_default();
                    SlotStatus {
                        name: s.name.clone(),
                        class: s.class.clone(),
                        device: s.device.clone(),
                        version: info.version,
                        state: if info.state.is_empty() {
                            "unknown".into()
                        } else {
                            info.state
                        },
                        attempts_left: env
                            .get(&format!("BOOT_{}_LEFT", s.name))
                            .and_then(|v| v.parse().ok()),
                    }
                })
                .collect(),
            pending: state.pending,
            last_outcome: state.last_outcome,
            boot_order: env.get("BOOT_ORDER").cloned(),
        })
    }

    /// Installs the bundle at `source` (a file, or `-` for stdin) into the slots that are not
    /// running and makes them the next boot; `progress` gets (bytes written, bytes in all).
    pub fn install(
        &self,
        source: &Path,
        opts: &InstallOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Manifest, OtaError> {
        let keyring = Keyring::load(&self.cfg.keyring)?;
        let reader: Box<dyn Read> = if source == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(
                std::fs::File::open(source).map_err(io(format!("opening {}", source.display())))?,
            )
        };
        let mut r = BufReader::with_capacity(256 * 1024, reader);
        let manifest = bundle::read_header(&mut r, &keyring)?;
        let expected = self.cfg.compatible.clone().unwrap_or_default();
        if manifest.compatible != expected {
            return Err(OtaError::Incompatible {
                found: manifest.compatible.clone(),
                expected,
            });
        }
        let booted = self.booted_slot()?;
        self.check_version(&manifest.version, opts.allow_downgrade)?;
        let mut state = self.state();
        // Every image needs a slot of its class that is not the running one.
        let targets = policy::target_slots(&self.cfg.slots, &manifest.images, &booted, capacity)?;
        let target_names: Vec<String> = targets.iter().map(|s| s.name.clone()).collect();

        // From here on the target slots are not bootable until the end.
        let mut disable = BTreeMap::new();
        for name in &target_names {
            disable.insert(format!("BOOT_{name}_LEFT"), Some("0".to_string()));
            state.slots.insert(
                name.clone(),
                SlotInfo {
                    version: None,
                    state: "installing".into(),
                },
            );
        }
        self.env.write(&disable)?;
        self.save(&state)?;

        let total: u64 = manifest.images.iter().map(|i| i.size).sum();
        let mut done_before = 0u64;
        for (image, slot) in manifest.images.iter().zip(&targets) {
            let what = format!(
                "writing image {} to slot {} ({})",
                image.class,
                slot.name,
                slot.device.display()
            );
            // Written from the start, never truncated: a file slot keeps its size, as a
            // partition would.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&slot.device)
                .map_err(io(what.clone()))?;
            let mut out = BufWriter::with_capacity(1024 * 1024, file);
            let base = done_before;
            crate::ota::image_copy::copy_image_any(&mut r, image, &mut out, &mut |n| {
                progress(base + n, total)
            })?;
            let file = out.into_inner().map_err(|e| OtaError::Io {
                what: what.clone(),
                source: e.into_error(),
            })?;
            file.sync_all()
                .map_err(io(format!("syncing slot {}", slot.name)))?;
            drop(file);
            // Read back what the device holds now, not what went through our buffers.
            let mut check = std::fs::File::open(&slot.device)
                .map_err(io(format!("reading back slot {}", slot.name)))?;
            let digest = hash_prefix(&mut check, image.size)
                .map_err(io(format!("reading back slot {}", slot.name)))?;
            if digest != image.sha256 {
                return Err(OtaError::Slot(format!(
                    "slot {} does not read back what was written (sha256 {digest}, expected {})",
                    slot.name, image.sha256
                )));
            }
            done_before += image.size;
        }

        // A bundle with bytes after its last image is not the bundle that was signed.
        bundle::expect_end(&mut r)?;

        // One atomic environment write makes the new slots the next boot, on trial.
        let env = self.env.read()?;
        let order = policy::order_first(&self.order(&env), &target_names);
        let mut select = BTreeMap::new();
        select.insert("BOOT_ORDER".to_string(), Some(order.join(" ")));
        for name in &target_names {
            select.insert(
                format!("BOOT_{name}_LEFT"),
                Some(self.cfg.tries.to_string()),
            );
        }
        // The pending update is recorded first: if the agent dies between the two writes,
        // the slot is still not bootable and the next check reports the update as not taken,
        // rather than a slot booting that the health check never judged.
        for name in &target_names {
            state.slots.insert(
                name.clone(),
                SlotInfo {
                    version: Some(manifest.version.clone()),
                    state: "pending".into(),
                },
            );
        }
        state.pending = target_names.first().map(|slot| Pending {
            slot: slot.clone(),
            version: manifest.version.clone(),
            from: booted.clone(),
        });
        self.save(&state)?;
        self.env.write(&select)?;
        Ok(manifest)
    }

    /// Runs the reboot command.
    pub fn reboot(&self) -> Result<(), OtaError> {
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.cfg.reboot_command)
            .status()
            .map_err(io("running ota.reboot_command"))?;
        if !status.success() {
            return Err(OtaError::Io {
                what: "ota.reboot_command".into(),
                source: std::io::Error::other(format!("exited with {status}")),
            });
        }
        Ok(())
    }

    /// After boot: commits a pending slot that is running and healthy, marks it bad (and
    /// reboots back) when the health check fails, or records that the bootloader fell back.
    /// A good slot that is running gets its boot attempts back, as `rauc status mark-good`
    /// does at every boot, so the bootloader never runs out of attempts for it. Returns what
    /// happened to a pending update, or `None` when none was pending.
    pub fn check_after_boot(&self) -> Result<Option<String>, OtaError> {
        let mut state = self.state();
        let booted = self.booted_slot()?;
        match policy::after_boot(state.pending.as_ref(), &booted) {
            AfterBoot::NothingPending => {
                self.refresh(&mut state, &booted)?;
                Ok(None)
            }
            AfterBoot::FellBack { slot, outcome } => {
                self.mark_bad(&mut state, &slot, &outcome)?;
                self.refresh(&mut state, &booted)?;
                Ok(Some(outcome))
            }
            AfterBoot::OnTrial(pending) => match self.health_check() {
                Ok(()) => {
                    let outcome = self.commit_slot(&mut state, &booted)?;
                    Ok(Some(outcome))
                }
                Err(why) => {
                    let outcome = policy::failed_health_outcome(&pending, &booted, &why);
                    self.mark_bad(&mut state, &booted, &outcome)?;
                    self.reboot()?;
                    Ok(Some(outcome))
                }
            },
        }
    }

    /// Gives the running (good) slot its full boot attempts back.
    fn refresh(&self, state: &mut OtaState, booted: &str) -> Result<(), OtaError> {
        let key = format!("BOOT_{booted}_LEFT");
        let tries = self.cfg.tries.to_string();
        if self.env.read()?.get(&key) != Some(&tries) {
            let mut changes = BTreeMap::new();
            changes.insert(key, Some(tries));
            self.env.write(&changes)?;
        }
        let info = state.slots.entry(booted.to_string()).or_default();
        if info.state != "good" {
            info.state = "good".into();
            self.save(state)?;
        }
        Ok(())
    }

    /// Commits the running slot by hand (`agent ota commit`).
    pub fn commit(&self) -> Result<String, OtaError> {
        let booted = self.booted_slot()?;
        let mut state = self.state();
        self.commit_slot(&mut state, &booted)
    }

    /// Makes the other good slot of the running one's class the next boot (`agent ota
    /// rollback`); returns its name.
    pub fn rollback(&self) -> Result<String, OtaError> {
        let booted = self.booted_slot()?;
        let mut state = self.state();
        let other = match policy::rollback(&self.cfg.slots, &state, &booted)? {
            // An update installed but not booted yet: cancel it; the running slot stays.
            Rollback::CancelPending { slot, outcome } => {
                self.mark_bad(&mut state, &slot, &outcome)?;
                self.refresh(&mut state, &booted)?;
                return Ok(booted);
            }
            Rollback::Boot(other) => other,
        };
        let env = self.env.read()?;
        let order = policy::order_first(&self.order(&env), std::slice::from_ref(&other.name));
        let mut changes = BTreeMap::new();
        changes.insert("BOOT_ORDER".to_string(), Some(order.join(" ")));
        changes.insert(
            format!("BOOT_{}_LEFT", other.name),
            Some(self.cfg.tries.to_string()),
        );
        self.env.write(&changes)?;
        Ok(other.name.clone())
    }

    fn commit_slot(&self, state: &mut OtaState, slot: &str) -> Result<String, OtaError> {
        let env = self.env.read()?;
        let order = policy::order_first(&self.order(&env), &[slot.to_string()]);
        let mut changes = BTreeMap::new();
        changes.insert("BOOT_ORDER".to_string(), Some(order.join(" ")));
        changes.insert(
            format!("BOOT_{slot}_LEFT"),
            Some(self.cfg.tries.to_string()),
        );
        self.env.write(&changes)?;
        let version = state
            .slots
            .get(slot)
            .and_then(|s| s.version.clone())
            .unwrap_or_else(|| "unknown".into());
        state.slots.insert(
            slot.to_string(),
            SlotInfo {
                version: Some(version.clone()),
                state: "good".into(),
            },
        );
        let outcome = format!("committed {version} in slot {slot}");
        state.pending = None;
        state.last_outcome = Some(outcome.clone());
        self.save(state)?;
        Ok(outcome)
    }

    fn mark_bad(&self, state: &mut OtaState, slot: &str, outcome: &str) -> Result<(), OtaError> {
        let env = self.env.read()?;
        let order = policy::order_last(&self.order(&env), slot);
        let mut changes = BTreeMap::new();
        changes.insert("BOOT_ORDER".to_string(), Some(order.join(" ")));
        changes.insert(format!("BOOT_{slot}_LEFT"), Some("0".to_string()));
        self.env.write(&changes)?;
        if let Some(info) = state.slots.get_mut(slot) {
            info.state = "bad".into();
        }
        state.pending = None;
        state.last_outcome = Some(outcome.to_string());
        self.save(state)
    }

    /// Runs `ota.health_check` within `ota.health_timeout`.
    fn health_check(&self) -> Result<(), String> {
        let Some(command) = &self.cfg.health_check else {
            return Ok(());
        };
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start: {e}"))?;
        let deadline = std::time::Instant::now() + self.cfg.health_timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("{command:?} exited with {status}")),
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{command:?} did not finish within {}",
                        humantime::format_duration(self.cfg.health_timeout)
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// How many bytes a slot holds: a block device's size, an existing non-empty file's length
/// (a file slot stands for a partition of that size), or no limit for a new file.
fn capacity(device: &Path) -> Result<Option<u64>, OtaError> {
    match std::fs::metadata(device) {
        Ok(m) if m.is_file() => Ok((m.len() > 0).then_some(m.len())),
        Ok(_) => {
            let mut f =
                std::fs::File::open(device).map_err(io(format!("opening {}", device.display())))?;
            let end = f
                .seek(SeekFrom::End(0))
                .map_err(io(format!("sizing {}", device.display())))?;
            Ok(Some(end))
        }
        Err(_) => Ok(None),
    }
}

/// sha256 of the first `len` bytes of `r`.
fn hash_prefix(r: &mut dyn Read, len: u64) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1024 * 1024];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("ended {left} bytes early"),
            ));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlotConfig;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn ota(dir: &Path, factory_version: Option<&str>) -> Result<Ota, OtaError> {
        let mut config = AgentConfig {
            state_dir: dir.to_path_buf(),
            ..AgentConfig::default()
        };
        config.ota.compatible = Some("board".into());
        config.ota.bootloader = Bootloader::File;
        config.ota.factory_version = factory_version.map(String::from);
        config.ota.slots = ["A", "B"]
            .iter()
            .map(|name| SlotConfig {
                name: (*name).into(),
                class: "rootfs".into(),
                device: dir.join(format!("slot-{name}")),
            })
            .collect();
        Ota::open(&config)
    }

    #[test]
    fn the_running_version_is_the_recorded_one_else_the_factory_version() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut state = OtaState::default();
        state.slots.insert(
            "A".into(),
            SlotInfo {
                version: None,
                state: "good".into(),
            },
        );
        state.slots.insert(
            "B".into(),
            SlotInfo {
                version: Some("2.0.0".into()),
                state: "good".into(),
            },
        );
        let without = ota(dir.path(), None)?;
        assert_eq!(without.running_version(&state, "A"), None);
        assert_eq!(
            without.running_version(&state, "B").as_deref(),
            Some("2.0.0")
        );
        let with = ota(dir.path(), Some("1.0.0"))?;
        assert_eq!(with.running_version(&state, "A").as_deref(), Some("1.0.0"));
        assert_eq!(with.running_version(&state, "B").as_deref(), Some("2.0.0"));
        Ok(())
    }

    /// A two-slot board booted into `booted`, as the boot after an install of 2.0.0 from A
    /// into B finds it: B first in `BOOT_ORDER` with its attempts, the update pending. The
    /// health check is `health`; rebooting leaves a `rebooted` file.
    fn after_install(
        dir: &Path,
        booted: &str,
        health: &str,
    ) -> Result<Ota, Box<dyn std::error::Error>> {
        let cmdline = dir.join("cmdline");
        std::fs::write(
            &cmdline,
            format!("console=ttyS0 tether.slot={booted} quiet\n"),
        )?;
        let mut config = AgentConfig {
            state_dir: dir.to_path_buf(),
            ..AgentConfig::default()
        };
        config.ota.compatible = Some("board".into());
        config.ota.bootloader = Bootloader::File;
        config.ota.cmdline = cmdline;
        config.ota.health_check = Some(health.into());
        config.ota.reboot_command = format!("touch {}", dir.join("rebooted").display());
        config.ota.slots = ["A", "B"]
            .iter()
            .map(|name| SlotConfig {
                name: (*name).into(),
                class: "rootfs".into(),
                device: dir.join(format!("slot-{name}")),
            })
            .collect();
        let ota = Ota::open(&config)?;
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "3"),
        ] {
            env.insert(k.to_string(), Some(v.to_string()));
        }
        ota.env.write(&env)?;
        let mut state = OtaState::default();
        for (slot, version, st) in [("A", "1.0.0", "good"), ("B", "2.0.0", "pending")] {
            let info = SlotInfo {
                version: Some(version.into()),
                state: st.into(),
            };
            state.slots.insert(slot.into(), info);
        }
        state.pending = Some(Pending {
            slot: "B".into(),
            version: "2.0.0".into(),
            from: "A".into(),
        });
        ota.save(&state)?;
        Ok(ota)
    }

    fn env_of(ota: &Ota, key: &str) -> Result<Option<String>, OtaError> {
        Ok(ota.env.read()?.get(key).cloned())
    }

    #[test]
    fn a_healthy_update_on_trial_is_committed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ota = after_install(dir.path(), "B", "true")?;
        let outcome = ota.check_after_boot()?;
        assert_eq!(outcome.as_deref(), Some("committed 2.0.0 in slot B"));
        assert_eq!(env_of(&ota, "BOOT_ORDER")?.as_deref(), Some("B A"));
        assert_eq!(env_of(&ota, "BOOT_B_LEFT")?.as_deref(), Some("3"));
        let state = ota.state();
        assert_eq!(state.pending, None);
        assert_eq!(state.slots["B"].state, "good");
        assert_eq!(state.last_outcome, outcome);
        assert!(!dir.path().join("rebooted").exists());
        // The next boot has nothing pending and only tops up the attempts.
        assert_eq!(ota.check_after_boot()?, None);
        Ok(())
    }

    #[test]
    fn an_update_failing_its_health_check_is_marked_bad_and_left_by_a_reboot() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ota = after_install(dir.path(), "B", "exit 3")?;
        let outcome = ota.check_after_boot()?.unwrap_or_default();
        assert!(
            outcome.starts_with("rolled back: 2.0.0 in slot B failed its health check"),
            "{outcome}"
        );
        assert_eq!(env_of(&ota, "BOOT_ORDER")?.as_deref(), Some("A B"));
        assert_eq!(env_of(&ota, "BOOT_B_LEFT")?.as_deref(), Some("0"));
        assert_eq!(ota.state().slots["B"].state, "bad");
        assert!(dir.path().join("rebooted").exists());
        Ok(())
    }

    #[test]
    fn a_fallback_by_the_bootloader_is_reported_and_the_old_slot_kept() -> TestResult {
        let dir = tempfile::tempdir()?;
        // The health check would fail, but it must not even run: B is not the running slot.
        let ota = after_install(dir.path(), "A", "exit 1")?;
        ota.env.write(&BTreeMap::from([(
            "BOOT_A_LEFT".to_string(),
            Some("1".to_string()),
        )]))?;
        let outcome = ota.check_after_boot()?;
        assert_eq!(
            outcome.as_deref(),
            Some("rolled back: slot B (2.0.0) did not commit, the bootloader went back to A")
        );
        assert_eq!(env_of(&ota, "BOOT_ORDER")?.as_deref(), Some("A B"));
        assert_eq!(env_of(&ota, "BOOT_B_LEFT")?.as_deref(), Some("0"));
        // The running slot gets its attempts back.
        assert_eq!(env_of(&ota, "BOOT_A_LEFT")?.as_deref(), Some("3"));
        let state = ota.state();
        assert_eq!(state.pending, None);
        assert_eq!(state.slots["B"].state, "bad");
        assert_eq!(state.slots["A"].state, "good");
        assert!(!dir.path().join("rebooted").exists());
        Ok(())
    }

    #[test]
    fn a_rollback_cancels_an_update_that_was_not_booted() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ota = after_install(dir.path(), "A", "true")?;
        assert_eq!(ota.rollback()?, "A");
        assert_eq!(env_of(&ota, "BOOT_ORDER")?.as_deref(), Some("A B"));
        assert_eq!(env_of(&ota, "BOOT_B_LEFT")?.as_deref(), Some("0"));
        let state = ota.state();
        assert_eq!(state.pending, None);
        assert_eq!(
            state.last_outcome.as_deref(),
            Some("cancelled: 2.0.0 in slot B was not booted")
        );
        Ok(())
    }
}
