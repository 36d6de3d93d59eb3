//! The bootloader environment that selects the boot slot.
//!
//! A/B updates switch slots through bootloader variables, RAUC style: `BOOT_ORDER="A B"` lists
//! the slots to try, and `BOOT_A_LEFT` / `BOOT_B_LEFT` count the attempts each slot has left. The
//! agent reads and writes them natively through [`BootEnv`], which has three backends:
//!
//! - [`UbootEnv`]: a U-Boot environment as described by an `fw_env.config` file, byte-compatible
//!   with U-Boot and with libubootenv's `fw_printenv` / `fw_setenv`.
//! - [`GrubEnv`]: GRUB's `grubenv` block, compatible with `grub-editenv` and GRUB's `load_env`.
//! - [`FileEnv`]: a plain `name=value` file, for tests and for boards whose boot script reads a
//!   file.
//!
//! # Atomicity
//!
//! [`BootEnv::write`] applies all its changes at once or not at all: every change is validated
//! before anything is written, and the new environment replaces the old one in one step.
//!
//! - A **redundant U-Boot environment** (two `fw_env.config` lines) is written the way U-Boot
//!   writes it: the new block goes to the copy that is *not* current, with a flags byte one
//!   higher, and is fsynced. The CRC32 lives inside the block, so a write torn by a power cut
//!   leaves a copy whose CRC fails, and the bootloader (and the agent) keep using the intact
//!   older copy. At every instant one of the copies holds either the old or the new environment.
//! - A **single U-Boot environment** (one line) is rewritten in place with one positioned write
//!   and an fsync. This is *not* power-cut safe: a torn write leaves a block with a bad CRC, and
//!   U-Boot then boots with its built-in default environment (losing the slot selection). Use a
//!   redundant environment on devices that update in the field.
//! - **GRUB** and **file** environments are written to a temporary file in the same directory,
//!   fsynced, renamed over the old file, and the directory is fsynced. The rename is atomic on
//!   POSIX filesystems, so a reader (GRUB included) sees the old or the new file. The rename
//!   gives the file a new inode; GRUB reads `grubenv` by path, so this is fine, and the block
//!   keeps its size (1024 bytes for a block `grub-editenv` created). GRUB's own `save_env`
//!   rewrites the block in place and refuses to on some filesystems (btrfs, ZFS, RAID, LVM); the
//!   agent writes from Linux and is not subject to that limit.
//!
//! The limits: atomicity is only as good as the storage's honouring of fsync (a device that
//! acknowledges writes it has only cached can still lose them), and a write that the storage
//! reports as failed leaves the environment in the old state but is reported as an error. Writes
//! that would change nothing are skipped, which spares flash from needless erase cycles.
//!
//! # Concurrency
//!
//! Each backend serialises its own read-modify-write cycles within the process. [`UbootEnv`]
//! additionally takes the `flock` that `fw_printenv`/`fw_setenv` take
//! (`/var/lock/fw_printenv.lock`), so the agent and the stock tools do not interleave.
//! `grub-editenv` takes no lock; an edit by it that races with the agent's rename is lost or
//! wins as a whole, never mixes.

mod file;
mod grub;
mod uboot;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use file::FileEnv;
pub use grub::GrubEnv;
pub use uboot::{MAX_ENV_SIZE, UbootCopy, UbootEnv};

/// A bootloader environment: variables as name → value.
pub trait BootEnv: Send + Sync {
    /// Reads all variables.
    fn read(&self) -> Result<BTreeMap<String, String>, BootEnvError>;

    /// Sets (`Some`) or deletes (`None`) variables in one atomic update; others are kept.
    ///
    /// Either every change is applied or none is (see the [module documentation](self) for the
    /// guarantees of each backend).
    fn write(&self, changes: &BTreeMap<String, Option<String>>) -> Result<(), BootEnvError>;

    /// What it is, for messages ("U-Boot environment /dev/mmcblk0 @ 0x3c0000", "GRUB environment
    /// /boot/grub/grubenv", "file /var/lib/tether/bootenv").
    fn describe(&self) -> String;
}

/// What went wrong reading or writing a bootloader environment.
///
/// Every message names the environment (device and offset, or file) it is about.
#[derive(Debug, thiserror::Error)]
pub enum BootEnvError {
    /// Reading, writing or syncing a device or file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the device or file.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line of an `fw_env.config` file is wrong.
    #[error("{} line {line}: {message}", .path.display())]
    ConfigLine {
        /// The configuration file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// An `fw_env.config` file (or a set of [`UbootCopy`]s) is wrong as a whole.
    #[error("{what}: {message}")]
    Config {
        /// The configuration file, or the environment's description.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// No copy of a U-Boot environment has a valid CRC (U-Boot itself would boot with its
    /// built-in default environment).
    #[error("{env}: bad CRC in {}", if *.redundant { "both copies" } else { "the environment block" })]
    BadCrc {
        /// The environment's description.
        env: String,
        /// Whether the environment is redundant (two copies).
        redundant: bool,
    },
    /// The environment block, or the device holding it, is too small.
    #[error("{env}: block too small: {message}")]
    TooSmall {
        /// The environment's description.
        env: String,
        /// What does not fit.
        message: String,
    },
    /// The environment's contents cannot be understood.
    #[error("{env}: {message}")]
    Corrupt {
        /// The environment's description.
        env: String,
        /// What is wrong.
        message: String,
    },
    /// A variable name that this environment cannot hold.
    #[error("{env}: invalid variable name {name:?}: {reason}")]
    InvalidName {
        /// The environment's description.
        env: String,
        /// The rejected name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A value that this environment cannot hold.
    #[error("{env}: invalid value for {name}: {reason}")]
    InvalidValue {
        /// The environment's description.
        env: String,
        /// The variable whose value is rejected.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The variables do not fit in the environment block.
    #[error("{env}: environment full: {needed} bytes needed, {available} available")]
    Full {
        /// The environment's description.
        env: String,
        /// Bytes the new environment needs.
        needed: usize,
        /// Bytes the block has for it.
        available: usize,
    },
    /// The device is of a kind this implementation does not write (MTD, UBI).
    #[error("{}: {message}", .device.display())]
    Unsupported {
        /// The device.
        device: PathBuf,
        /// What is not supported.
        message: String,
    },
}

/// A closure that wraps an [`io::Error`] into [`BootEnvError::Io`] with a description.
fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BootEnvError {
    let what = what.into();
    move |source| BootEnvError::Io { what, source }
}

/// Rejects the names no environment can hold: empty, containing `=`, NUL or a newline, or
/// starting with `#` (a comment in every format).
fn check_common_name(env: &str, name: &str) -> Result<(), BootEnvError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.contains('=') {
        Some("contains '='")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.contains('\n') {
        Some("contains a newline")
    } else if name.starts_with('#') {
        Some("starts with '#', which marks a comment")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BootEnvError::InvalidName {
            env: env.to_owned(),
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Replaces `path` with `contents` atomically: a temporary file in the same directory is
/// written, fsynced and renamed over `path`, then the directory is fsynced. The file keeps the
/// permissions of the file it replaces (0644 for a new file).
fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    // Unique within the process too, so two writers never share a temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp_name.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0o644,
        Err(e) => return Err(e),
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    File::open(dir)?.sync_all()
}

/// Reads a whole file, `None` if it does not exist.
fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Helpers shared by the backends' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;

    /// Variables from name/value pairs.
    pub(crate) fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// A change set from name/optional value pairs (None deletes).
    pub(crate) fn set(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_keeps_permissions_and_leaves_no_temporary()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("env");
        replace_file(&path, b"one")?;
        assert_eq!(fs::read(&path)?, b"one");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o644);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        replace_file(&path, b"two")?;
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, vec![std::ffi::OsString::from("env")]);
        Ok(())
    }

    #[test]
    fn common_names_are_checked() {
        for bad in ["", "a=b", "a\nb", "a\0b", "#x"] {
            let err = check_common_name("env", bad);
            assert!(
                matches!(err, Err(BootEnvError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(check_common_name("env", "BOOT_ORDER").is_ok());
    }

    #[test]
    fn errors_name_the_environment() {
        let err = BootEnvError::BadCrc {
            env: "U-Boot environment /dev/mmcblk0 @ 0x3c0000".into(),
            redundant: true,
        };
        assert_eq!(
            err.to_string(),
            "U-Boot environment /dev/mmcblk0 @ 0x3c0000: bad CRC in both copies"
        );
        let err = BootEnvError::ConfigLine {
            path: "/etc/fw_env.config".into(),
            line: 3,
            message: "bad OFFSET".into(),
        };
        assert_eq!(err.to_string(), "/etc/fw_env.config line 3: bad OFFSET");
    }
}
