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
//! `<state_dir>/ota.json`, written atomically.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_protocol::bundle::{self, BundleError, Keyring, Manifest};
use thiserror::Error;

use crate::config::{AgentConfig, Bootloader, OtaConfig, SlotConfig};
use crate::ota::bootenv::{BootEnv, BootEnvError, FileEnv, GrubEnv, UbootEnv};

/// Why an OTA operation failed.
#[derive(Debug, Error)]
pub enum OtaError {
    /// OTA is not configured.
    #[error("OS updates are off: set ota.compatible and ota.slots in the agent configuration")]
    NotConfigured,
    /// The bundle is not acceptable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The boot environment failed.
    #[error(transparent)]
    BootEnv(#[from] BootEnvError),
    /// The bundle is for another board.
    #[error("bundle is for {found:?}, this board is {expected:?} (ota.compatible)")]
    Incompatible {
        /// The bundle's compatible string.
        found: String,
        /// This board's.
        expected: String,
    },
    /// The bundle would downgrade.
    #[error("bundle version {bundle} is lower than the running {running}; use --allow-downgrade")]
    Downgrade {
        /// The bundle's version.
        bundle: String,
        /// The running version.
        running: String,
    },
    /// The running version is unknown, so the bundle cannot be checked against it.
    #[error(
        "the running OS version is unknown (slot {slot} has no version recorded: the agent did not \
         install it, and ota.factory_version is not set), so bundle version {bundle} cannot be \
         checked for a downgrade; if {bundle} is right for this board, install it with \
         `agent ota install --allow-downgrade`, or set ota.factory_version to the version the \
         board was flashed with (deployments from the relay need one of the two in the agent \
         configuration: ota.factory_version, or ota.allow_downgrade: true)"
    )]
    UnknownVersion {
        /// The bundle's version.
        bundle: String,
        /// The running slot.
        slot: String,
    },
    /// The running slot cannot be determined.
    #[error("cannot tell which slot is running: {0}")]
    Booted(String),
    /// No slot can take an image.
    #[error("{0}")]
    Slot(String),
    /// Reading, writing or syncing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OtaError {
    let what = what.into();
    move |source| OtaError::Io { what, source }
}

/// What the agent knows about one slot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SlotInfo {
    /// OS version installed in it, when the agent installed it.
    pub version: Option<String>,
    /// `good`, `bad`, `installing` or `pending` (installed, not yet committed).
    pub state: String,
}

/// An update waiting for its trial boot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    /// The slot it went into.
    pub slot: String,
    /// Its version.
    pub version: String,
    /// The slot that was running when it was installed.
    pub from: String,
}

/// `ota.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OtaState {
    /// Per slot name.
    pub slots: BTreeMap<String, SlotInfo>,
    /// The update on trial, if any.
    pub pending: Option<Pending>,
    /// How the last update ended (`committed 1.2.0 in B`, `rolled back: …`).
    pub last_outcome: Option<String>,
}

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

    fn state_path(&self) -> PathBuf {
        self.state_dir.join("ota.json")
    }

    /// The agent's record of slots and updates.
    pub fn state(&self) -> OtaState {
        std::fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, state: &OtaState) -> Result<(), OtaError> {
        let path = self.state_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(state).map_err(|e| OtaError::Io {
            what: "encoding ota.json".into(),
            source: std::io::Error::other(e),
        })?;
        tether_protocol::private_fs::create_dir(&self.state_dir)
            .map_err(io("creating the state directory"))?;
        let mut f =
            std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
        f.write_all(&text)
            .map_err(io(format!("writing {}", tmp.display())))?;
        f.sync_all()
            .map_err(io(format!("syncing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))
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
        check_version(
            version,
            self.running_version(&self.state(), &booted).as_deref(),
            &booted,
            allow_downgrade || self.cfg.allow_downgrade,
        )
    }

    fn order(&self, env: &BTreeMap<String, String>) -> Vec<String> {
        env.get("BOOT_ORDER")
            .map(|o| o.split_whitespace().map(String::from).collect())
            .unwrap_or_else(|| self.cfg.slots.iter().map(|s| s.name.clone()).collect())
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
        let mut targets: Vec<&SlotConfig> = Vec::new();
        for image in &manifest.images {
            let slot = self
                .cfg
                .slots
                .iter()
                .find(|s| s.class == image.class && s.name != booted)
                .ok_or_else(|| {
                    OtaError::Slot(format!(
                        "no slot of class {:?} other than the running {booted}",
                        image.class
                    ))
                })?;
            if let Some(capacity) = capacity(&slot.device)?
                && image.size > capacity
            {
                return Err(OtaError::Slot(format!(
                    "image {} is {} bytes, slot {} ({}) holds {capacity}",
                    image.class,
                    image.size,
                    slot.name,
                    slot.device.display()
                )));
            }
            targets.push(slot);
        }
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
        let mut order: Vec<String> = target_names.clone();
        let env = self.env.read()?;
        for name in self.order(&env) {
            if !order.contains(&name) {
                order.push(name);
            }
        }
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
        let Some(pending) = state.pending.clone() else {
            self.refresh(&mut state, &booted)?;
            return Ok(None);
        };
        if booted != pending.slot {
            let outcome = format!(
                "rolled back: slot {} ({}) did not commit, the bootloader went back to {booted}",
                pending.slot, pending.version
            );
            self.mark_bad(&mut state, &pending.slot, &outcome)?;
            self.refresh(&mut state, &booted)?;
            return Ok(Some(outcome));
        }
        match self.health_check() {
            Ok(()) => {
                let outcome = self.commit_slot(&mut state, &booted)?;
                Ok(Some(outcome))
            }
            Err(why) => {
                let outcome = format!(
                    "rolled back: {} in slot {booted} failed its health check: {why}",
                    pending.version
                );
                self.mark_bad(&mut state, &booted, &outcome)?;
                self.reboot()?;
                Ok(Some(outcome))
            }
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
        // An update installed but not booted yet: cancel it; the running slot stays.
        if let Some(pending) = state.pending.clone()
            && pending.slot != booted
        {
            let outcome = format!(
                "cancelled: {} in slot {} was not booted",
                pending.version, pending.slot
            );
            self.mark_bad(&mut state, &pending.slot, &outcome)?;
            self.refresh(&mut state, &booted)?;
            return Ok(booted);
        }
        let class = self
            .cfg
            .slots
            .iter()
            .find(|s| s.name == booted)
            .map(|s| s.class.clone())
            .unwrap_or_default();
        let other = self
            .cfg
            .slots
            .iter()
            .find(|s| {
                s.class == class
                    && s.name != booted
                    && state.slots.get(&s.name).is_none_or(|i| i.state == "good")
            })
            .ok_or_else(|| {
                OtaError::Slot(format!(
                    "no other good slot of class {class:?} to go back to"
                ))
            })?;
        let env = self.env.read()?;
        let mut order = vec![other.name.clone()];
        order.extend(self.order(&env).into_iter().filter(|n| *n != other.name));
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
        let mut order = vec![slot.to_string()];
        order.extend(self.order(&env).into_iter().filter(|n| n != slot));
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
        let mut order: Vec<String> = self.order(&env).into_iter().filter(|n| n != slot).collect();
        order.push(slot.to_string());
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

/// The downgrade policy: a bundle older than the running version is refused, and so is any
/// bundle while the running version is unknown, since an unknown version could be newer than
/// the bundle: a board moves to an older, or possibly older, version only when told to.
/// `allow` (`--allow-downgrade`, `ota.allow_downgrade`) accepts both.
fn check_version(
    bundle: &str,
    running: Option<&str>,
    booted: &str,
    allow: bool,
) -> Result<(), OtaError> {
    if allow {
        return Ok(());
    }
    match running {
        None => Err(OtaError::UnknownVersion {
            bundle: bundle.to_string(),
            slot: booted.to_string(),
        }),
        Some(running) if older(bundle, running) => Err(OtaError::Downgrade {
            bundle: bundle.to_string(),
            running: running.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

/// Whether semver `a` is lower than `b` (unparsable versions never count as lower).
fn older(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
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

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn an_unknown_running_version_accepts_nothing_unless_allowed() -> TestResult {
        let e = check_version("1.1.0", None, "A", false)
            .err()
            .ok_or("accepted with an unknown running version")?
            .to_string();
        for part in [
            "running OS version is unknown",
            "slot A",
            "bundle version 1.1.0",
            "--allow-downgrade",
            "ota.factory_version",
            "ota.allow_downgrade: true",
        ] {
            assert!(e.contains(part), "{e} lacks {part}");
        }
        check_version("1.1.0", None, "A", true)?;
        Ok(())
    }

    #[test]
    fn a_known_running_version_refuses_only_older_bundles() -> TestResult {
        let e = check_version("1.0.0", Some("1.1.0"), "B", false)
            .err()
            .ok_or("downgrade accepted")?;
        assert!(matches!(e, OtaError::Downgrade { .. }), "{e}");
        assert!(
            e.to_string().contains("lower than the running 1.1.0"),
            "{e}"
        );
        check_version("1.0.0", Some("1.1.0"), "B", true)?;
        check_version("1.1.0", Some("1.1.0"), "B", false)?;
        check_version("1.2.0", Some("1.1.0"), "B", false)?;
        check_version("1.2.0-rc.1", Some("1.1.0"), "B", false)?;
        Ok(())
    }

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
}
