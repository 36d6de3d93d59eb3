//! Files only their owner may read: the process umask both programs start with, and directories
//! and files created private from the first moment.
//!
//! Keys, databases and state are never created with a wider mode and narrowed afterwards: a
//! `chmod` after `open` leaves a window in which another user can open the file and keep the
//! descriptor.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::sys::stat::{Mode, umask};

/// Mode of directories holding state: owner only.
pub const DIR_MODE: u32 = 0o700;

/// Mode of keys, databases and state files: owner read and write only.
pub const FILE_MODE: u32 = 0o600;

/// The umask children that act for people get (shells, commands, applications): the usual
/// login umask, so files they create are as readable as the same work done through sshd.
pub const CHILD_UMASK: u32 = 0o022;

/// Adds group and other bits to the process umask, so every file and directory the process
/// creates without an explicit mode is private; returns the umask it replaced.
pub fn restrict_umask() -> u32 {
    let previous = umask(Mode::from_bits_truncate(0o077));
    // Keep bits the caller's umask had beyond group and other (an owner-bit umask is odd but
    // deliberate).
    let tightened = previous.bits() | 0o077;
    umask(Mode::from_bits_truncate(tightened));
    previous.bits()
}

/// Sets the umask of the calling process to [`CHILD_UMASK`]. Async-signal-safe (one system
/// call), so it may run in a `pre_exec` hook between fork and exec.
pub fn set_child_umask() {
    umask(Mode::from_bits_truncate(CHILD_UMASK));
}

/// Creates `dir` and missing parents with mode 0700; an existing directory is left as it is.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates `path` empty with mode 0600 if it does not exist (its directory must); returns
/// whether it was created. Used before handing a path to SQLite, which would otherwise create
/// the file with the umask's mode (and give its -wal and -shm files the same).
pub fn create_file(path: &Path) -> io::Result<bool> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> io::Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    }

    #[test]
    fn created_private_and_existing_left_alone() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("a/b");
        create_dir(&dir)?;
        assert_eq!(mode(&dir)?, 0o700);
        assert_eq!(mode(&root.path().join("a"))?, 0o700);
        let file = dir.join("db");
        assert!(create_file(&file)?);
        assert_eq!(mode(&file)?, 0o600);
        std::fs::write(&file, b"data")?;
        assert!(!create_file(&file)?);
        assert_eq!(std::fs::read(&file)?, b"data");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))?;
        create_dir(&dir)?;
        assert_eq!(mode(&dir)?, 0o750);
        Ok(())
    }
}
