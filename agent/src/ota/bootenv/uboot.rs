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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::fcntl::{Flock, FlockArg};

use super::{BootEnv, BootEnvError, check_common_name, io_err};

/// The lock file `fw_printenv`/`fw_setenv` (libubootenv and U-Boot's own tools) `flock`.
const DEFAULT_LOCK_FILE: &str = "/var/lock/fw_printenv.lock";

/// The largest ENV_SIZE accepted: 16 MiB, far above any real U-Boot environment (8 KiB to a
/// few hundred KiB), so that a wrong `fw_env.config` cannot make the agent allocate without
/// bound (each copy is read whole into memory).
pub const MAX_ENV_SIZE: usize = 16 << 20;

/// Variables as stored: name bytes → value bytes (values keep their bytes as they are, so the
/// variables the agent does not change are written back untouched).
type RawVars = BTreeMap<Vec<u8>, Vec<u8>>;

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

/// A copy as read from its device.
struct CopyState {
    /// The flags byte (0 for a single environment).
    flags: u8,
    /// The data area, if the CRC is valid.
    data: Option<Vec<u8>>,
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

/// Reads one copy's block.
fn read_block(env: &str, copy: &UbootCopy) -> Result<Vec<u8>, BootEnvError> {
    let file = File::open(&copy.device)
        .map_err(io_err(format!("{env}: opening {}", copy.device.display())))?;
    check_device(&file, copy)?;
    let too_small = || BootEnvError::TooSmall {
        env: env.to_owned(),
        message: format!(
            "{} ends before {:#x} + ENV_SIZE {:#x}",
            copy.device.display(),
            copy.offset,
            copy.size
        ),
    };
    // The device's size is checked before the block is allocated, so that a configuration
    // pointing past its end is an error rather than an allocation of ENV_SIZE bytes.
    let device_size = (&file).seek(SeekFrom::End(0)).map_err(io_err(format!(
        "{env}: measuring {}",
        copy.device.display()
    )))?;
    let end = copy.offset.checked_add(copy.size as u64);
    if end.is_none_or(|end| end > device_size) {
        return Err(too_small());
    }
    let mut block = vec![0u8; copy.size];
    match file.read_exact_at(&mut block, copy.offset) {
        Ok(()) => Ok(block),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(too_small()),
        Err(e) => Err(BootEnvError::Io {
            what: format!("{env}: reading {}", copy.label()),
            source: e,
        }),
    }
}

/// Writes one copy's block with one positioned write, then fsyncs. An eMMC boot partition is
/// made writable for the write (its `force_ro` switch), as libubootenv does.
fn write_block(env: &str, copy: &UbootCopy, block: &[u8]) -> Result<(), BootEnvError> {
    let force_ro = force_ro_path(&copy.device).filter(|path| path.exists());
    let was_read_only = match &force_ro {
        Some(path) => {
            let read_only = std::fs::read_to_string(path)
                .map_err(io_err(format!("{env}: reading {}", path.display())))?
                .trim()
                == "1";
            if read_only {
                std::fs::write(path, "0").map_err(io_err(format!(
                    "{env}: making {} writable",
                    copy.device.display()
                )))?;
            }
            read_only
        }
        None => false,
    };
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .open(&copy.device)
            .map_err(io_err(format!(
                "{env}: opening {} for writing",
                copy.device.display()
            )))?;
        check_device(&file, copy)?;
        file.write_all_at(block, copy.offset)
            .map_err(io_err(format!("{env}: writing {}", copy.label())))?;
        file.sync_all()
            .map_err(io_err(format!("{env}: syncing {}", copy.device.display())))
    })();
    if let (Some(path), true) = (&force_ro, was_read_only) {
        // Best effort, as libubootenv: the write's own result is what matters.
        let _ = std::fs::write(path, "1");
    }
    result
}

/// The sysfs `force_ro` switch of an eMMC boot partition (`/dev/mmcblkNbootM`), which the
/// kernel keeps read-only by default.
fn force_ro_path(device: &Path) -> Option<PathBuf> {
    let name = device.to_str()?.strip_prefix("/dev/")?;
    let name = name.strip_prefix("block/").unwrap_or(name);
    let (disk, part) = name.strip_prefix("mmcblk")?.split_once("boot")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(disk) && digits(part))
        .then(|| PathBuf::from(format!("/sys/class/block/{name}/force_ro")))
}

/// Refuses character devices (MTD flash needs erasing, which is not implemented).
fn check_device(file: &File, copy: &UbootCopy) -> Result<(), BootEnvError> {
    let meta = file
        .metadata()
        .map_err(io_err(format!("inspecting {}", copy.device.display())))?;
    if meta.file_type().is_char_device() {
        return Err(BootEnvError::Unsupported {
            device: copy.device.clone(),
            message: "character devices (MTD flash) are not supported; only regular files and block devices".into(),
        });
    }
    Ok(())
}

/// Checks a block's CRC and splits off its flags.
fn decode(block: &[u8], header: usize) -> CopyState {
    let stored = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    let flags = if header == 5 { block[4] } else { 0 };
    let data = &block[header..];
    CopyState {
        flags,
        data: (crc32fast::hash(data) == stored).then(|| data.to_vec()),
    }
}

/// The current copy, as U-Boot's `env_import_redund` chooses it.
fn select_current(states: &[CopyState]) -> Option<usize> {
    match states {
        [only] => only.data.is_some().then_some(0),
        [a, b] => match (a.data.is_some(), b.data.is_some()) {
            (false, false) => None,
            (true, false) => Some(0),
            (false, true) => Some(1),
            (true, true) => Some(newer_of(a.flags, b.flags)),
        },
        _ => None,
    }
}

/// Of two valid copies with these flags, the index of the newer one.
fn newer_of(first: u8, second: u8) -> usize {
    match (first, second) {
        (0xff, 0) => 1,
        (0, 0xff) => 0,
        (a, b) if b > a => 1,
        _ => 0,
    }
}

/// Parses a data area as U-Boot's `himport_r` does: NUL-terminated entries up to an empty one;
/// leading blanks skipped; `#` entries are comments; `name` and `name=` delete `name`; a later
/// entry overrides an earlier one. Values are kept as stored (U-Boot would also unescape
/// backslashes; `fw_printenv` does not).
fn parse_data(data: &[u8]) -> Result<RawVars, String> {
    let mut vars = RawVars::new();
    let mut rest = data;
    while let Some((&first, _)) = rest.split_first() {
        if first == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let mut entry = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        while let [b' ' | b'\t', tail @ ..] = entry {
            entry = tail;
        }
        if entry.first() == Some(&b'#') {
            continue;
        }
        match entry.iter().position(|&b| b == b'=') {
            None => {
                vars.remove(entry);
            }
            Some(0) => {
                return Err(format!(
                    "entry {:?} has an empty name (U-Boot rejects such an environment)",
                    String::from_utf8_lossy(entry)
                ));
            }
            Some(eq) if eq + 1 == entry.len() => {
                vars.remove(&entry[..eq]);
            }
            Some(eq) => {
                vars.insert(entry[..eq].to_vec(), entry[eq + 1..].to_vec());
            }
        }
    }
    Ok(vars)
}

/// Serialises variables into a data area of `size` bytes, sorted by name, padded with `0x00`.
fn encode(env: &str, vars: &RawVars, size: usize) -> Result<Vec<u8>, BootEnvError> {
    let needed = vars
        .iter()
        .map(|(name, value)| name.len() + 1 + value.len() + 1)
        .sum::<usize>()
        + 1;
    if needed > size {
        return Err(BootEnvError::Full {
            env: env.to_owned(),
            needed,
            available: size,
        });
    }
    let mut data = Vec::with_capacity(size);
    for (name, value) in vars {
        data.extend_from_slice(name);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(0);
    }
    data.resize(size, 0);
    Ok(data)
}

/// Parses the classic `fw_env.config` format (see [`UbootEnv::from_config`]).
fn parse_config(path: &Path, text: &str) -> Result<Vec<UbootCopy>, BootEnvError> {
    let line_err = |line: usize, message: String| BootEnvError::ConfigLine {
        path: path.to_owned(),
        line,
        message,
    };
    let mut copies: Vec<UbootCopy> = Vec::new();
    let mut first_line = 0;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fields: Vec<&str> = raw
            .split_whitespace()
            .take_while(|field| !field.starts_with('#'))
            .collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 3 {
            return Err(line_err(
                line,
                format!(
                    "expected DEVICE OFFSET ENV_SIZE [SECTOR_SIZE [NUM_SECTORS]], found {} field{}",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" }
                ),
            ));
        }
        if fields.len() > 6 {
            return Err(line_err(
                line,
                format!(
                    "expected DEVICE OFFSET ENV_SIZE [SECTOR_SIZE [NUM_SECTORS]], found {} fields",
                    fields.len()
                ),
            ));
        }
        if copies.len() == 2 {
            return Err(line_err(
                line,
                "a third environment line; one line is a single environment, two a redundant one"
                    .into(),
            ));
        }
        let device = PathBuf::from(fields[0]);
        if fields[0].starts_with("/dev/mtd") || fields[0].starts_with("/dev/ubi") {
            return Err(line_err(
                line,
                format!("{}: MTD and UBI devices are not supported", fields[0]),
            ));
        }
        let offset = parse_c_integer(fields[1]).ok_or_else(|| {
            line_err(
                line,
                format!(
                    "OFFSET {:?} is not a number (0x… hexadecimal, 0… octal, or decimal)",
                    fields[1]
                ),
            )
        })?;
        let size = parse_hex(fields[2]).ok_or_else(|| {
            line_err(
                line,
                format!(
                    "ENV_SIZE {:?} is not a hexadecimal number (fw_printenv reads it as hexadecimal, with or without 0x)",
                    fields[2]
                ),
            )
        })?;
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size > 0)
            .ok_or_else(|| line_err(line, format!("ENV_SIZE {:?} is out of range", fields[2])))?;
        if size > MAX_ENV_SIZE {
            return Err(line_err(
                line,
                format!(
                    "ENV_SIZE {:?} is larger than the {MAX_ENV_SIZE:#x} bytes a U-Boot environment may have here",
                    fields[2]
                ),
            ));
        }
        for (name, field) in ["SECTOR_SIZE", "NUM_SECTORS"].iter().zip(&fields[3..]) {
            if parse_hex(field).is_none() {
                return Err(line_err(
                    line,
                    format!("{name} {field:?} is not a hexadecimal number"),
                ));
            }
        }
        if let Some(field) = fields.get(5)
            && field.parse::<i32>().is_err()
        {
            return Err(line_err(
                line,
                format!("the sixth field {field:?} is not a decimal number"),
            ));
        }
        let offset = if offset < 0 {
            let device_size = File::open(&device)
                .and_then(|mut f| f.seek(SeekFrom::End(0)))
                .map_err(|e| {
                    line_err(
                        line,
                        format!(
                            "negative OFFSET needs the size of {}: {e}",
                            device.display()
                        ),
                    )
                })?;
            let resolved = i128::from(device_size) + i128::from(offset);
            u64::try_from(resolved).map_err(|_| {
                line_err(
                    line,
                    format!(
                        "OFFSET {offset} is before the start of {} ({device_size} bytes)",
                        device.display()
                    ),
                )
            })?
        } else {
            offset.unsigned_abs()
        };
        if let Some(first) = copies.first()
            && first.size != size
        {
            return Err(line_err(
                line,
                format!(
                    "ENV_SIZE {size:#x} differs from line {first_line}'s {:#x}; both copies must have the same size",
                    first.size
                ),
            ));
        }
        if copies.is_empty() {
            first_line = line;
        }
        copies.push(UbootCopy {
            device,
            offset,
            size,
        });
    }
    if copies.is_empty() {
        return Err(BootEnvError::Config {
            what: path.display().to_string(),
            message: "no environment line (DEVICE OFFSET ENV_SIZE)".into(),
        });
    }
    Ok(copies)
}

/// A C integer as `strtoll(…, 0)` reads it: optional sign, then `0x…` hexadecimal, `0…` octal or
/// decimal. The whole text must be the number.
fn parse_c_integer(text: &str) -> Option<i64> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        (16, hex)
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (8, &unsigned[1..])
    } else {
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let value = i64::try_from(u64::from_str_radix(digits, radix).ok()?).ok()?;
    Some(if negative { -value } else { value })
}

/// A hexadecimal number as `%x` reads it: with or without `0x`. The whole text must be the
/// number.
fn parse_hex(text: &str) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::bootenv::test_support::{set, vars};
    use std::error::Error;
    use std::process::Command;

    type TestResult = Result<(), Box<dyn Error>>;

    /// A zero-filled 64 KiB image file in a fresh directory.
    fn image(dir: &Path) -> Result<PathBuf, Box<dyn Error>> {
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
    fn redundant_selection_follows_u_boot() {
        let state = |valid: bool, flags: u8| CopyState {
            flags,
            data: valid.then(Vec::new),
        };
        let pick =
            |a: (bool, u8), b: (bool, u8)| select_current(&[state(a.0, a.1), state(b.0, b.1)]);
        assert_eq!(pick((true, 1), (true, 2)), Some(1));
        assert_eq!(pick((true, 7), (true, 6)), Some(0));
        assert_eq!(pick((true, 0xff), (true, 0)), Some(1), "0 follows 255");
        assert_eq!(pick((true, 0), (true, 0xff)), Some(0), "0 follows 255");
        assert_eq!(pick((true, 0xfe), (true, 0xff)), Some(1));
        assert_eq!(
            pick((true, 5), (true, 5)),
            Some(0),
            "a tie goes to the first copy"
        );
        assert_eq!(pick((false, 9), (true, 1)), Some(1));
        assert_eq!(pick((true, 1), (false, 9)), Some(0));
        assert_eq!(pick((false, 1), (false, 2)), None);
        assert_eq!(select_current(&[state(true, 0)]), Some(0));
        assert_eq!(select_current(&[state(false, 0)]), None);
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
    fn data_area_is_parsed_like_u_boot() -> Result<(), String> {
        let parsed =
            parse_data(b"b=1\0  a=2\0#comment=x\0c=\0d=4\0d\0e=5\0b=6\0f=x=y\0\0g=ignored\0")?;
        let expected: RawVars = [("a", "2"), ("b", "6"), ("e", "5"), ("f", "x=y")]
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(parsed, expected);
        assert_eq!(parse_data(b"\0a=1\0")?, RawVars::new());
        assert_eq!(
            parse_data(b"a=1")?.len(),
            1,
            "unterminated at the end of the area"
        );
        assert!(parse_data(b"=x\0\0").is_err());
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
    fn config_lines_are_read_like_fw_printenv() -> TestResult {
        let path = Path::new("/etc/fw_env.config");
        let copies = parse_config(
            path,
            "# MMC environment\n\
             \n\
             /dev/mmcblk0 0x3c0000 0x20000   # first copy\n\
             \t/dev/mmcblk0\t3932160 20000 200 1\n",
        )?;
        assert_eq!(
            copies,
            vec![
                UbootCopy {
                    device: "/dev/mmcblk0".into(),
                    offset: 0x3c0000,
                    size: 0x20000,
                },
                UbootCopy {
                    device: "/dev/mmcblk0".into(),
                    offset: 3932160,
                    size: 0x20000,
                },
            ]
        );
        let copies = parse_config(path, "/dev/mmcblk0boot1 010 0X4000\n")?;
        assert_eq!(copies[0].offset, 8, "a leading 0 is octal, as with %lli");
        assert_eq!(copies[0].size, 0x4000);
        Ok(())
    }

    #[test]
    fn config_errors_carry_line_numbers() {
        let path = Path::new("/etc/fw_env.config");
        let cases = [
            (
                "# c\n/dev/mmcblk0 0x0\n",
                "line 2: expected DEVICE OFFSET ENV_SIZE",
            ),
            (
                "/dev/mmcblk0 zero 0x4000\n",
                "line 1: OFFSET \"zero\" is not a number",
            ),
            (
                "/dev/mmcblk0 0 16k\n",
                "line 1: ENV_SIZE \"16k\" is not a hexadecimal number",
            ),
            (
                "/dev/mmcblk0 0 0\n",
                "line 1: ENV_SIZE \"0\" is out of range",
            ),
            (
                "/dev/mmcblk0 0 4000 sector\n",
                "line 1: SECTOR_SIZE \"sector\"",
            ),
            (
                "/dev/mmcblk0 0 4000 1 2 3 4\n",
                "line 1: expected DEVICE OFFSET ENV_SIZE",
            ),
            (
                "/dev/mtd1 0 4000\n",
                "line 1: /dev/mtd1: MTD and UBI devices are not supported",
            ),
            (
                "/dev/a 0 4000\n/dev/b 0 8000\n",
                "line 2: ENV_SIZE 0x8000 differs from line 1's 0x4000",
            ),
            (
                "/dev/a 0 4000\n/dev/b 0 4000\n#\n/dev/c 0 4000\n",
                "line 4: a third environment line",
            ),
            ("# nothing\n\n", "no environment line"),
        ];
        for (text, expected) in cases {
            match parse_config(path, text) {
                Ok(copies) => panic!("{text:?} parsed as {copies:?}"),
                Err(err) => {
                    let message = err.to_string();
                    assert!(message.starts_with("/etc/fw_env.config"), "{message}");
                    assert!(message.contains(expected), "{message} lacks {expected}");
                }
            }
        }
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

    #[test]
    fn emmc_boot_partitions_have_a_force_ro_switch() {
        assert_eq!(
            force_ro_path(Path::new("/dev/mmcblk0boot1")),
            Some(PathBuf::from("/sys/class/block/mmcblk0boot1/force_ro"))
        );
        assert_eq!(
            force_ro_path(Path::new("/dev/block/mmcblk10boot0")),
            Some(PathBuf::from("/sys/class/block/mmcblk10boot0/force_ro"))
        );
        assert_eq!(force_ro_path(Path::new("/dev/mmcblk0")), None);
        assert_eq!(force_ro_path(Path::new("/dev/mmcblk0p1")), None);
        assert_eq!(force_ro_path(Path::new("/dev/mmcblkboot0")), None);
        assert_eq!(force_ro_path(Path::new("/tmp/mmcblk0boot0")), None);
    }

    #[test]
    fn numbers_are_parsed_like_c() {
        assert_eq!(parse_c_integer("0x10"), Some(16));
        assert_eq!(parse_c_integer("-0x10"), Some(-16));
        assert_eq!(parse_c_integer("010"), Some(8));
        assert_eq!(parse_c_integer("0"), Some(0));
        assert_eq!(parse_c_integer("42"), Some(42));
        assert_eq!(parse_c_integer("0x"), None);
        assert_eq!(parse_c_integer("09"), None);
        assert_eq!(parse_c_integer("-"), None);
        assert_eq!(parse_c_integer("--1"), None);
        assert_eq!(parse_hex("4000"), Some(0x4000));
        assert_eq!(parse_hex("0x4000"), Some(0x4000));
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_hex("-1"), None);
    }

    // Interoperability with libubootenv's fw_printenv / fw_setenv.

    /// The path of a tool on PATH, or `None` (the test is then skipped).
    fn tool(name: &str) -> Option<PathBuf> {
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        });
        if found.is_none() {
            eprintln!("{name} is not installed; skipping");
        }
        found
    }

    fn run(tool: &Path, args: &[&str]) -> Result<String, Box<dyn Error>> {
        let out = Command::new(tool).args(args).output()?;
        if !out.status.success() {
            return Err(format!(
                "{} {args:?}: {}: {}",
                tool.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    #[test]
    fn fw_printenv_and_fw_setenv_share_a_single_environment() -> TestResult {
        let (Some(printenv), Some(setenv)) = (tool("fw_printenv"), tool("fw_setenv")) else {
            return Ok(());
        };
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let config = dir.path().join("fw_env.config");
        std::fs::write(&config, format!("# test\n{} 0x4000 4000\n", dev.display()))?;
        let cfg = config.to_str().ok_or("non-UTF-8 temp path")?;
        let env = UbootEnv::from_config(&config)?;
        env.replace_all(&BTreeMap::new())?;
        env.write(&set(&[
            ("BOOT_ORDER", Some("A B")),
            ("BOOT_A_LEFT", Some("3")),
        ]))?;
        assert_eq!(
            run(&printenv, &["-c", cfg])?,
            "BOOT_A_LEFT=3\nBOOT_ORDER=A B\n"
        );
        run(&setenv, &["-c", cfg, "BOOT_B_LEFT", "2"])?;
        assert_eq!(
            env.read()?,
            vars(&[
                ("BOOT_A_LEFT", "3"),
                ("BOOT_B_LEFT", "2"),
                ("BOOT_ORDER", "A B")
            ])
        );
        // Deleting from either side.
        run(&setenv, &["-c", cfg, "BOOT_A_LEFT"])?;
        env.write(&set(&[("BOOT_B_LEFT", None)]))?;
        assert_eq!(run(&printenv, &["-c", cfg])?, "BOOT_ORDER=A B\n");
        assert_eq!(env.read()?, vars(&[("BOOT_ORDER", "A B")]));
        Ok(())
    }

    #[test]
    fn fw_printenv_and_fw_setenv_share_a_redundant_environment() -> TestResult {
        let (Some(printenv), Some(setenv)) = (tool("fw_printenv"), tool("fw_setenv")) else {
            return Ok(());
        };
        let dir = tempfile::tempdir()?;
        let dev = image(dir.path())?;
        let other = dir.path().join("env2.img");
        std::fs::write(&other, vec![0u8; 0x8000])?;
        let config = dir.path().join("fw_env.config");
        std::fs::write(
            &config,
            format!(
                "{} 0x4000 0x4000\n{} 0x2000 0x4000\n",
                dev.display(),
                other.display()
            ),
        )?;
        let cfg = config.to_str().ok_or("non-UTF-8 temp path")?;
        let env = UbootEnv::from_config(&config)?;
        env.replace_all(&vars(&[("BOOT_ORDER", "A B")]))?;
        let mut expected = vars(&[("BOOT_ORDER", "A B")]);
        let listing = |vars: &BTreeMap<String, String>| {
            vars.iter()
                .map(|(n, v)| format!("{n}={v}\n"))
                .collect::<String>()
        };
        // Alternate writers across the 255 → 0 wrap of the flags byte.
        for round in 0..260u32 {
            let value = round.to_string();
            if round % 3 == 0 {
                run(&setenv, &["-c", cfg, "BOOT_A_LEFT", &value])?;
            } else {
                env.write(&set(&[("BOOT_A_LEFT", Some(&value))]))?;
            }
            expected.insert("BOOT_A_LEFT".into(), value);
            assert_eq!(env.read()?, expected, "round {round}");
            if round % 3 != 2 || round > 250 {
                assert_eq!(
                    run(&printenv, &["-c", cfg])?,
                    listing(&expected),
                    "round {round}"
                );
            }
        }
        // A power cut tearing the next write: both sides fall back to the previous environment.
        let previous = expected.clone();
        env.write(&set(&[("BOOT_A_LEFT", Some("final"))]))?;
        let flags = |path: &Path, offset: usize| std::fs::read(path).map(|b| b[offset + 4]);
        let (newer, offset) = match newer_of(flags(&dev, 0x4000)?, flags(&other, 0x2000)?) {
            0 => (&dev, 0x4000),
            _ => (&other, 0x2000),
        };
        let mut bytes = std::fs::read(newer)?;
        bytes[offset + 5..offset + 0x4000].fill(0xff);
        std::fs::write(newer, &bytes)?;
        assert_eq!(env.read()?, previous);
        assert_eq!(run(&printenv, &["-c", cfg])?, listing(&previous));
        Ok(())
    }
}
