//! Reading and writing one environment copy on its device: a regular file or a block device
//! (not MTD flash), with positioned I/O, an fsync after every write, and an eMMC boot
//! partition's `force_ro` switch turned off for the write and back on after it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::{BootEnvError, UbootCopy, io_err};

/// Reads one copy's block.
pub(super) fn read_block(env: &str, copy: &UbootCopy) -> Result<Vec<u8>, BootEnvError> {
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
pub(super) fn write_block(env: &str, copy: &UbootCopy, block: &[u8]) -> Result<(), BootEnvError> {
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
pub(super) fn force_ro_path(device: &Path) -> Option<PathBuf> {
    let name = device.to_str()?.strip_prefix("/dev/")?;
    let name = name.strip_prefix("block/").unwrap_or(name);
    let (disk, part) = name.strip_prefix("mmcblk")?.split_once("boot")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(disk) && digits(part))
        .then(|| PathBuf::from(format!("/sys/class/block/{name}/force_ro")))
}

/// Refuses character devices (MTD flash needs erasing, which is not implemented).
pub(super) fn check_device(file: &File, copy: &UbootCopy) -> Result<(), BootEnvError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
