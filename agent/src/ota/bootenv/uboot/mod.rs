//! U-Boot environments, byte-compatible with U-Boot and libubootenv (`fw_printenv`).
//!
//! A single environment is `[crc32 LE u32][data]`; a redundant one has two copies of
//! `[crc32 LE u32][flags u8][data]`. The data area (ENV_SIZE minus the header) holds
//! `name=value\0` entries, an empty entry (`\0`) ends them, and the rest is padding; the CRC32
//! (IEEE) covers the whole data area, padding included. The agent pads with `0x00`, as U-Boot's
//! `saveenv` does (libubootenv leaves whatever its buffer held there; readers never look past the
//! terminator, so any padding is accepted as long as the CRC covers it).
//!
//! Of two valid copies the current one is chosen exactly as U-Boot (`env_import_redund`) and
//! libubootenv do for "incremental" flags: `0x00` beats `0xff` (wraparound), otherwise the higher
//! flags byte wins, and on a tie the first copy wins. A write goes to the other copy with the
//! current flags plus one (mod 256), which always makes it the current one.
//!
//! Here: [`UbootEnv`], which reads and writes variables under libubootenv's lock. Below it:
//! `format` (the bytes of a copy), `device` (one copy's I/O on its file or block device) and
//! `fw_env_config` (the configuration file that says where the copies are); the tests of
//! compatibility with `fw_printenv`/`fw_setenv` are in `fw_tools`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::fcntl::{Flock, FlockArg};

use super::{BootEnv, BootEnvError, check_common_name, io_err};
use device::{read_block, write_block};
use format::{CopyState, RawVars, decode, encode, parse_data, select_current};
use fw_env_config::parse_config;

mod device;
mod format;
mod fw_env_config;
#[cfg(test)]
mod fw_tools;

/// The lock file `fw_printenv`/`fw_setenv` (libubootenv and U-Boot's own tools) `flock`.
const DEFAULT_LOCK_FILE: &str = "/var/lock/fw_printenv.lock";

/// The largest ENV_SIZE accepted: 16 MiB, far above any real U-Boot environment (8 KiB to a
/// few hundred KiB), so that a wrong `fw_env.config` cannot make the agent allocate without
/// bound (each copy is read whole into memory).
pub const MAX_ENV_SIZE: usize = 16 << 20;

/// One copy of a U-Boot environment: `size` bytes (ENV_SIZE, header included) at byte `offset` of
/// `device` (a regular file or a block device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UbootCopy {
    /// The file or block device that holds the copy.
    pub device: PathBuf,
    /// Byte offset of the copy in `device`.
    pub offset: u64,
    /// ENV_SIZE: the copy's size in bytes, CRC (and flags) included.
    pub size: usize,
}

impl UbootCopy {
    /// "DEVICE @ 0xOFFSET", for messages.
    fn label(&self) -> String {
        format!("{} @ {:#x}", self.device.display(), self.offset)
    }
}

/// A U-Boot environment as configured by an `fw_env.config` file: one copy (single environment)
/// or two (redundant environment).
///
/// Reads and writes take libubootenv's lock (`/var/lock/fw_printenv.lock`, see
/// [`UbootEnv::with_lock_file`]) so they do not interleave with `fw_setenv`.
///
/// Values are returned as stored, like `fw_printenv` shows them. U-Boot has no empty variables
/// (`name=` in the block means "unset"), so such entries are not returned and writing an empty
/// value deletes the variable.
#[derive(Debug)]
pub struct UbootEnv {
    copies: Vec<UbootCopy>,
    lock_file: Option<PathBuf>,
    guard: Mutex<()>,
}

/// All copies as read, and which one is current.
struct Loaded {
    states: Vec<CopyState>,
    current: Option<usize>,
}

impl UbootEnv {
    /// Reads an `fw_env.config` file in the classic format that `fw_printenv` uses: lines
    /// `DEVICE OFFSET ENV_SIZE [SECTOR_SIZE [NUM_SECTORS]]`, `#` starting a comment; one line
    /// is a single environment, two lines a redundant one.
    ///
    /// The numbers are read the way `fw_printenv` reads them (`sscanf("%lli %zx %zx %lx")`):
    /// OFFSET is a C integer (`0x…` hexadecimal, a leading `0` octal, else decimal; a negative
    /// offset counts from the end of the device), while ENV_SIZE and SECTOR_SIZE are **always
    /// hexadecimal**, with or without `0x` (`4000` means 16 KiB). SECTOR_SIZE and NUM_SECTORS only
    /// matter for MTD flash, which is not supported (nor is UBI); they are checked and ignored.
    pub fn from_config(path: &Path) -> Result<Self, BootEnvError> {
        let text =
            std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
        Ok(Self::new(parse_config(path, &text)?))
    }

    /// An environment with the given copies (one: single, two: redundant), for tests and for
    /// callers that know the layout without a configuration file.
    pub fn new(copies: Vec<UbootCopy>) -> Self {
        Self {
            copies,
            lock_file: Some(PathBuf::from(DEFAULT_LOCK_FILE)),
            guard: Mutex::new(()),
        }
    }

    /// Uses another lock file instead of `/var/lock/fw_printenv.lock` (`None`: no file lock,
    /// only the in-process one). A lock file that cannot be opened is skipped, as libubootenv
    /// does.
    pub fn with_lock_file(mut self, lock_file: Option<PathBuf>) -> Self {
        self.lock_file = lock_file;
        self
    }

    /// The configured copies.
    pub fn copies(&self) -> &[UbootCopy] {
        &self.copies
    }

    /// Replaces the whole environment with exactly `vars`, whatever the device holds now, even
    /// if no copy is valid: for provisioning a blank or corrupt environment.
    ///
    /// [`BootEnv::write`] refuses to work on an environment without a valid copy, because U-Boot
    /// is then running with its built-in default environment, and writing only the agent's
    /// variables would drop the defaults (`bootcmd` …). This method is for when that is intended.
    pub fn replace_all(&self, vars: &BTreeMap<String, String>) -> Result<(), BootEnvError> {
        let env = self.describe();
        let mut raw = RawVars::new();
        for (name, value) in vars {
            check_name(&env, name)?;
            check_value(&env, name, value)?;
            if !value.is_empty() {
                raw.insert(name.as_bytes().to_vec(), value.as_bytes().to_vec());
            }
        }
        let _locks = self.lock();
        let header = self.layout()?;
        let loaded = self.load(header)?;
        self.store(header, &loaded, &raw)
    }

    /// Takes the in-process lock and, if possible, libubootenv's file lock.
    fn lock(&self) -> (MutexGuard<'_, ()>, Option<Flock<File>>) {
        let guard = self
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let flock = self.lock_file.as_ref().and_then(|path| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o666)
                .open(path)
                .ok()?;
            Flock::lock(file, FlockArg::LockExclusive).ok()
        });
        (guard, flock)
    }

    /// Checks the copies and returns the header size (4 single, 5 redundant).
    fn layout(&self) -> Result<usize, BootEnvError> {
        let env = self.describe();
        let header = match self.copies.len() {
            1 => 4,
            2 => 5,
            n => {
                return Err(BootEnvError::Config {
                    what: env,
                    message: format!(
                        "{n} copies configured; a U-Boot environment has one (single) or two (redundant)"
                    ),
                });
            }
        };
        let size = self.copies[0].size;
        if let [a, b] = self.copies.as_slice() {
            if a.size != b.size {
                return Err(BootEnvError::Config {
                    what: env,
                    message: format!(
                        "the two copies differ in size ({:#x} and {:#x})",
                        a.size, b.size
                    ),
                });
            }
            let end = |c: &UbootCopy| c.offset.saturating_add(c.size as u64);
            if a.device == b.device && a.offset < end(b) && b.offset < end(a) {
                return Err(BootEnvError::Config {
                    what: env,
                    message: "the two copies overlap".into(),
                });
            }
        }
        if size > MAX_ENV_SIZE {
            return Err(BootEnvError::Config {
                what: env,
                message: format!(
                    "ENV_SIZE {size:#x} is larger than the {MAX_ENV_SIZE:#x} bytes a U-Boot environment may have here"
                ),
            });
        }
        if size < header + 2 {
            return Err(BootEnvError::TooSmall {
                env,
                message: format!(
                    "ENV_SIZE {size:#x} leaves no room for variables after the {header}-byte header"
                ),
            });
        }
        Ok(header)
    }

    /// Reads every copy and picks the current one.
    fn load(&self, header: usize) -> Result<Loaded, BootEnvError> {
        let mut states = Vec::with_capacity(self.copies.len());
        for copy in &self.copies {
            let block = read_block(&self.describe(), copy)?;
            states.push(decode(&block, header));
        }
        let current = select_current(&states);
        Ok(Loaded { states, current })
    }

    /// The current variables, or the CRC error.
    fn current_vars(&self, header: usize, loaded: &Loaded) -> Result<RawVars, BootEnvError> {
        let data = loaded
            .current
            .and_then(|c| loaded.states[c].data.as_deref())
            .ok_or_else(|| BootEnvError::BadCrc {
                env: self.describe(),
                redundant: header == 5,
            })?;
        parse_data(data).map_err(|message| BootEnvError::Corrupt {
            env: self.describe(),
            message,
        })
    }

    /// Writes `vars` as the new environment: to the non-current copy with the next flags value
    /// (redundant), or in place (single).
    fn store(&self, header: usize, loaded: &Loaded, vars: &RawVars) -> Result<(), BootEnvError> {
        let size = self.copies[0].size;
        let data = encode(&self.describe(), vars, size - header)?;
        let (target, flags) = match (header, loaded.current) {
            (4, _) => (0, None),
            (_, Some(current)) => (
                1 - current,
                Some(loaded.states[current].flags.wrapping_add(1)),
            ),
            (_, None) => (0, Some(1)),
        };
        let mut block = Vec::with_capacity(size);
        block.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        block.extend(flags);
        block.extend_from_slice(&data);
        write_block(&self.describe(), &self.copies[target], &block)
    }
}

impl BootEnv for UbootEnv {
    fn read(&self) -> Result<BTreeMap<String, String>, BootEnvError> {
        let _locks = self.lock();
        let header = self.layout()?;
        let loaded = self.load(header)?;
        let vars = self.current_vars(header, &loaded)?;
        Ok(vars
            .into_iter()
            .map(|(name, value)| {
                (
                    String::from_utf8_lossy(&name).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            })
            .collect())
    }

    fn write(&self, changes: &BTreeMap<String, Option<String>>) -> Result<(), BootEnvError> {
        let env = self.describe();
        for (name, value) in changes {
            check_name(&env, name)?;
            if let Some(value) = value {
                check_value(&env, name, value)?;
            }
        }
        let _locks = self.lock();
        let header = self.layout()?;
        let loaded = self.load(header)?;
        let old = self.current_vars(header, &loaded)?;
        let mut new = old.clone();
        for (name, value) in changes {
            match value {
                Some(value) if !value.is_empty() => {
                    new.insert(name.as_bytes().to_vec(), value.as_bytes().to_vec());
                }
                _ => {
                    new.remove(name.as_bytes());
                }
            }
        }
        if new == old {
            return Ok(());
        }
        self.store(header, &loaded, &new)
    }

    fn describe(&self) -> String {
        if self.copies.is_empty() {
            return "U-Boot environment (no copies configured)".into();
        }
        let labels: Vec<String> = self.copies.iter().map(UbootCopy::label).collect();
        format!("U-Boot environment {}", labels.join(" + "))
    }
}

/// Names U-Boot can hold: see [`check_common_name`]; also no leading blank (U-Boot's import
/// skips leading blanks).
fn check_name(env: &str, name: &str) -> Result<(), BootEnvError> {
    check_common_name(env, name)?;
    if name.starts_with([' ', '\t']) {
        return Err(BootEnvError::InvalidName {
            env: env.to_owned(),
            name: name.to_owned(),
            reason: "starts with a blank, which U-Boot skips",
        });
    }
    Ok(())
}

/// Values U-Boot and `fw_printenv` agree on: no NUL (the separator) and no backslash (U-Boot's
/// import takes it as an escape and drops it, `fw_printenv` does not).
fn check_value(env: &str, name: &str, value: &str) -> Result<(), BootEnvError> {
    let reason = if value.contains('\0') {
        "contains a NUL byte"
    } else if value.contains('\\') {
        "contains a backslash, which U-Boot reads as an escape (and fw_printenv does not)"
    } else {
        return Ok(());
    };
    Err(BootEnvError::InvalidValue {
        env: env.to_owned(),
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::bootenv::test_support::{set, vars};
    use std::error::Error;
    use std::os::unix::fs::FileExt;

    type TestResult = Result<(), Box<dyn Error>>;

    /// A zero-filled 64 KiB image file in a fresh directory.
    pub(super) fn image(dir: &Path) -> Result<PathBuf, Box<dyn Error>> {
        let path = dir.join("env.img");
        std::fs::write(&path, vec![0u8; 0x10000])?;
        Ok(path)
    }

    fn single(device: &Path) -> UbootEnv {
        UbootEnv::new(vec![UbootCopy {
            device: device.to_owned(),
            offset: 0x4000,
            size: 0x4000,
        }])
        .with_lock_file(None)
    }

    fn redundant(device: &Path) -> UbootEnv {
        UbootEnv::new(vec![
            UbootCopy {
                device: device.to_owned(),
                offset: 0x4000,
                size: 0x4000,
            },
            UbootCopy {
                device: device.to_owned(),
                offset: 0x8000,
                size: 0x4000,
            },
        ])
        .with_lock_file(None)
    }

    fn block(device: &Path, offset: usize, size: usize) -> Result<Vec<u8>, Box<dyn Error>> {
        Ok(std::fs::read(device)?[offset..offset + size].to_vec())
    }

    /// Writes a raw redundant copy with the given flags and data.
    fn put_copy(device: &Path, offset: u64, flags: u8, entries: &[u8]) -> TestResult {
        let mut data = entries.to_vec();
        data.resize(0x4000 - 5, 0);
        let mut blk = crc32fast::hash(&data).to_le_bytes().to_vec();
        blk.push(flags);
        blk.extend_from_slice(&data);
        let file = OpenOptions::new().write(true).open(device)?;
        file.write_all_at(&blk, offset)?;
        Ok(())
    }

    fn flags_of(device: &Path) -> Result<(u8, u8), Box<dyn Error>> {
        let bytes = std::fs::read(device)?;
        Ok((bytes[0x4004], bytes[0x8004]))
    }

    #[test]
    fn single_round_trip_and_byte_layout() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let env = single(&dev);
        env.replace_all(&vars(&[("bootcmd", "run x")]))?;
        env.write(&set(&[
            ("BOOT_ORDER", Some("A B")),
            ("BOOT_A_LEFT", Some("3")),
        ]))?;
        assert_eq!(
            env.read()?,
            vars(&[
                ("BOOT_A_LEFT", "3"),
                ("BOOT_ORDER", "A B"),
                ("bootcmd", "run x")
            ])
        );
        let blk = block(&dev, 0x4000, 0x4000)?;
        let data = &blk[4..];
        assert_eq!(
            &data[..44],
            b"BOOT_A_LEFT=3\0BOOT_ORDER=A B\0bootcmd=run x\0\0"
        );
        assert!(data[44..].iter().all(|&b| b == 0), "padding is 0x00");
        assert_eq!(
            u32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
            crc32fast::hash(data)
        );
        env.write(&set(&[("BOOT_A_LEFT", None), ("bootcmd", Some(""))]))?;
        assert_eq!(env.read()?, vars(&[("BOOT_ORDER", "A B")]));
        assert_eq!(
            env.describe(),
            format!("U-Boot environment {} @ 0x4000", dev.display())
        );
        Ok(())
    }

    #[test]
    fn redundant_writes_alternate_copies_with_increasing_flags() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let env = redundant(&dev);
        env.replace_all(&vars(&[("BOOT_ORDER", "A B")]))?;
        // No valid copy: the first goes to copy 0 with flags 1.
        assert_eq!(flags_of(&dev)?, (1, 0));
        env.write(&set(&[("BOOT_A_LEFT", Some("3"))]))?;
        assert_eq!(flags_of(&dev)?, (1, 2));
        env.write(&set(&[("BOOT_A_LEFT", Some("2"))]))?;
        assert_eq!(flags_of(&dev)?, (3, 2));
        assert_eq!(
            env.read()?,
            vars(&[("BOOT_A_LEFT", "2"), ("BOOT_ORDER", "A B")])
        );
        // The older copy still holds the previous environment.
        let older = block(&dev, 0x8000, 0x4000)?;
        assert!(older[5..].starts_with(b"BOOT_A_LEFT=3\0BOOT_ORDER=A B\0\0"));
        Ok(())
    }

    #[test]
    fn redundant_flags_wrap_from_255_to_0() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        put_copy(&dev, 0x4000, 0xfe, b"BOOT_A_LEFT=3\0\0")?;
        put_copy(&dev, 0x8000, 0xfd, b"BOOT_A_LEFT=9\0\0")?;
        let env = redundant(&dev);
        assert_eq!(env.read()?, vars(&[("BOOT_A_LEFT", "3")]));
        env.write(&set(&[("BOOT_A_LEFT", Some("2"))]))?;
        assert_eq!(flags_of(&dev)?, (0xfe, 0xff));
        assert_eq!(env.read()?, vars(&[("BOOT_A_LEFT", "2")]));
        env.write(&set(&[("BOOT_A_LEFT", Some("1"))]))?;
        assert_eq!(flags_of(&dev)?, (0x00, 0xff));
        assert_eq!(env.read()?, vars(&[("BOOT_A_LEFT", "1")]));
        env.write(&set(&[("BOOT_A_LEFT", Some("0"))]))?;
        assert_eq!(flags_of(&dev)?, (0x00, 0x01));
        assert_eq!(env.read()?, vars(&[("BOOT_A_LEFT", "0")]));
        Ok(())
    }

    #[test]
    fn torn_write_of_the_newer_copy_falls_back_to_the_older() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let env = redundant(&dev);
        env.replace_all(&vars(&[("BOOT_ORDER", "A B")]))?;
        env.write(&set(&[("BOOT_ORDER", Some("B A"))]))?;
        assert_eq!(flags_of(&dev)?, (1, 2));
        // A power cut in the middle of writing copy 1: its first half is new, the rest is not.
        let mut bytes = std::fs::read(&dev)?;
        bytes[0x8000 + 20..0xc000].fill(0xff);
        std::fs::write(&dev, &bytes)?;
        assert_eq!(env.read()?, vars(&[("BOOT_ORDER", "A B")]));
        // The next write goes over the torn copy, after the intact one.
        env.write(&set(&[("BOOT_A_LEFT", Some("3"))]))?;
        assert_eq!(flags_of(&dev)?, (1, 2));
        assert_eq!(
            env.read()?,
            vars(&[("BOOT_A_LEFT", "3"), ("BOOT_ORDER", "A B")])
        );
        // A torn header (CRC only) is no better.
        let mut bytes = std::fs::read(&dev)?;
        bytes[0x8000] ^= 0x55;
        std::fs::write(&dev, &bytes)?;
        assert_eq!(env.read()?, vars(&[("BOOT_ORDER", "A B")]));
        Ok(())
    }

    #[test]
    fn bad_crc_is_an_error_naming_the_device() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let err = single(&dev)
            .read()
            .err()
            .ok_or("read of a blank env succeeded")?;
        assert!(matches!(
            err,
            BootEnvError::BadCrc {
                redundant: false,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "U-Boot environment {} @ 0x4000: bad CRC in the environment block",
                dev.display()
            )
        );
        // write() refuses to replace U-Boot's default environment with only its changes.
        let err = single(&dev)
            .write(&set(&[("BOOT_ORDER", Some("A B"))]))
            .err()
            .ok_or("write to a blank env succeeded")?;
        assert!(matches!(err, BootEnvError::BadCrc { .. }));
        assert!(std::fs::read(&dev)?.iter().all(|&b| b == 0));
        let err = redundant(&dev).read().err().ok_or("read succeeded")?;
        assert!(
            err.to_string().ends_with(": bad CRC in both copies"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("{} @ 0x8000", dev.display()))
        );
        Ok(())
    }

    #[test]
    fn invalid_names_and_values_are_refused_before_writing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let env = single(&dev);
        env.replace_all(&vars(&[("x", "1")]))?;
        let before = std::fs::read(&dev)?;
        for (name, value, expected) in [
            ("A=B", "1", "invalid variable name \"A=B\": contains '='"),
            ("", "1", "invalid variable name \"\": empty"),
            (" x", "1", "starts with a blank"),
            ("ok", "a\\b", "invalid value for ok: contains a backslash"),
            ("ok", "a\0b", "contains a NUL byte"),
        ] {
            let changes = set(&[("BOOT_ORDER", Some("A B")), (name, Some(value))]);
            let err = env.write(&changes).err().ok_or("write succeeded")?;
            assert!(err.to_string().contains(expected), "{err}");
            assert!(
                err.to_string().contains(&dev.display().to_string()),
                "{err}"
            );
        }
        assert_eq!(std::fs::read(&dev)?, before, "nothing was written");
        // Newlines are fine in U-Boot values (multi-line scripts).
        env.write(&set(&[("script", Some("echo a\necho b"))]))?;
        assert_eq!(
            env.read()?.get("script").map(String::as_str),
            Some("echo a\necho b")
        );
        Ok(())
    }

    #[test]
    fn a_full_environment_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = dir.path().join("small.img");
        std::fs::write(&dev, vec![0u8; 64])?;
        let env = UbootEnv::new(vec![UbootCopy {
            device: dev.clone(),
            offset: 0,
            size: 32,
        }])
        .with_lock_file(None);
        // 28 bytes of data: "a=1234567890123456789012\0" (25) + "\0" fits exactly.
        env.replace_all(&vars(&[("a", "1234567890123456789012")]))?;
        let err = env
            .write(&set(&[("b", Some("1"))]))
            .err()
            .ok_or("write succeeded")?;
        assert!(matches!(
            err,
            BootEnvError::Full {
                needed: 30,
                available: 28,
                ..
            }
        ));
        assert!(err.to_string().contains("environment full"), "{err}");
        assert_eq!(env.read()?, vars(&[("a", "1234567890123456789012")]));
        Ok(())
    }

    #[test]
    fn a_device_too_small_or_a_tiny_block_is_reported() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = dir.path().join("short.img");
        std::fs::write(&dev, vec![0u8; 0x5000])?;
        let err = single(&dev).read().err().ok_or("read succeeded")?;
        assert!(matches!(err, BootEnvError::TooSmall { .. }));
        assert!(err.to_string().contains("block too small"), "{err}");
        assert!(
            err.to_string()
                .contains("ends before 0x4000 + ENV_SIZE 0x4000"),
            "{err}"
        );
        let tiny = UbootEnv::new(vec![UbootCopy {
            device: dev.clone(),
            offset: 0,
            size: 5,
        }])
        .with_lock_file(None);
        let err = tiny.read().err().ok_or("read succeeded")?;
        assert!(
            err.to_string().contains("ENV_SIZE 0x5 leaves no room"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn a_huge_env_size_is_refused_before_allocating() -> TestResult {
        // ENV_SIZE 0x6a387817e459c802 (the size a property test found) once made the agent
        // try to allocate that many bytes and abort.
        let dir = tempfile::tempdir()?;
        let dev = dir.path().join("env.img");
        std::fs::write(&dev, vec![0u8; 0x1000])?;
        let config = dir.path().join("fw_env.config");
        std::fs::write(&config, format!("{} 0 6a387817e459c802\n", dev.display()))?;
        let err = UbootEnv::from_config(&config).err().ok_or("accepted")?;
        assert!(err.to_string().contains("line 1: ENV_SIZE"), "{err}");
        let huge = UbootEnv::new(vec![UbootCopy {
            device: dev.clone(),
            offset: 0,
            size: 0x6a38_7817_e459_c802,
        }])
        .with_lock_file(None);
        let err = huge.read().err().ok_or("read succeeded")?;
        assert!(err.to_string().contains("is larger than"), "{err}");
        // A size within the limit but past the end of the device is refused before reading.
        let past_end = UbootEnv::new(vec![UbootCopy {
            device: dev.clone(),
            offset: u64::MAX - 4,
            size: 0x100,
        }])
        .with_lock_file(None);
        let err = past_end.read().err().ok_or("read succeeded")?;
        assert!(matches!(err, BootEnvError::TooSmall { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn unchanged_writes_do_not_touch_the_device() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let env = redundant(&dev);
        env.replace_all(&vars(&[("BOOT_ORDER", "A B")]))?;
        env.write(&set(&[("BOOT_ORDER", Some("A B")), ("missing", None)]))?;
        assert_eq!(flags_of(&dev)?, (1, 0));
        Ok(())
    }

    #[test]
    fn bad_copy_layouts_are_reported() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let copy = |offset: u64, size: usize| UbootCopy {
            device: dev.clone(),
            offset,
            size,
        };
        let cases = [
            (vec![], "0 copies configured"),
            (vec![copy(0, 0x100), copy(0x100, 0x200)], "differ in size"),
            (vec![copy(0, 0x100), copy(0x80, 0x100)], "overlap"),
            (vec![copy(0, 0x100); 3], "3 copies configured"),
        ];
        for (copies, expected) in cases {
            let err = UbootEnv::new(copies)
                .with_lock_file(None)
                .read()
                .err()
                .ok_or("read succeeded")?;
            assert!(err.to_string().contains(expected), "{err}");
        }
        Ok(())
    }

    #[test]
    fn negative_offsets_count_from_the_end_of_the_device() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let config = dir.path().join("fw_env.config");
        std::fs::write(&config, format!("{} -0x4000 0x4000\n", dev.display()))?;
        let env = UbootEnv::from_config(&config)?;
        assert_eq!(env.copies()[0].offset, 0xc000);
        std::fs::write(&config, format!("{} -0x20000 0x4000\n", dev.display()))?;
        let err = UbootEnv::from_config(&config)
            .err()
            .ok_or("from_config succeeded")?;
        assert!(
            err.to_string()
                .contains("line 1: OFFSET -131072 is before the start"),
            "{err}"
        );
        Ok(())
    }
}
