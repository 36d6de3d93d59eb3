//! The unix account a child process runs as (engineers' sessions, application steps), and
//! how a child is started in its own session under that account.

// The crate denies `unsafe`; this module is one of those allowed it, block by block with
// the proof beside each.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid};
use thiserror::Error;
use tokio::process::Command;

/// Why an account could not be used.
#[derive(Debug, Error)]
pub enum AccountError {
    /// The configured unix user does not exist.
    #[error("{key} {user:?}: no such user")]
    NoSuchUser {
        /// The configuration key that named the user.
        key: String,
        /// The user.
        user: String,
    },
    /// The agent cannot switch to the configured user.
    #[error(
        "{key} {user:?}: the agent runs as uid {uid} and can only start processes as itself; run it as root to use another user"
    )]
    CannotSwitch {
        /// The configuration key that named the user.
        key: String,
        /// The configured user.
        user: String,
        /// The agent's uid.
        uid: u32,
    },
    /// Looking up the user failed.
    #[error("looking up user {user:?}: {source}")]
    Lookup {
        /// The user.
        user: String,
        /// The error.
        source: nix::Error,
    },
}

/// A unix account, resolved once (name, ids, supplementary groups, home, shell).
#[derive(Debug, Clone)]
pub struct Account {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: Uid,
    /// Primary group.
    pub gid: Gid,
    /// Supplementary groups (looked up only when switching).
    pub groups: Vec<Gid>,
    /// Home directory, or `/` when it does not exist.
    pub home: PathBuf,
    /// Login shell (or the configured one), `/bin/sh` when unset.
    pub shell: PathBuf,
    /// Whether spawning must switch uid/gid (the agent runs as root, children as someone else).
    pub switch: bool,
}

impl Account {
    /// Resolves `user` (None: the agent's own user); `key` names the configuration key in
    /// errors; `shell` overrides the login shell.
    pub fn resolve(
        user: Option<&str>,
        shell: Option<PathBuf>,
        key: &str,
    ) -> Result<Self, AccountError> {
        let me = Uid::current();
        let entry = match user {
            Some(name) => nix::unistd::User::from_name(name)
                .map_err(|source| AccountError::Lookup {
                    user: name.to_string(),
                    source,
                })?
                .ok_or_else(|| AccountError::NoSuchUser {
                    key: key.to_string(),
                    user: name.to_string(),
                })?,
            None => nix::unistd::User::from_uid(me)
                .map_err(|source| AccountError::Lookup {
                    user: me.to_string(),
                    source,
                })?
                .ok_or_else(|| AccountError::NoSuchUser {
                    key: key.to_string(),
                    user: me.to_string(),
                })?,
        };
        let switch = entry.uid != me;
        if switch && !me.is_root() {
            return Err(AccountError::CannotSwitch {
                key: key.to_string(),
                user: entry.name,
                uid: me.as_raw(),
            });
        }
        let groups = if switch {
            let cname = CString::new(entry.name.clone()).map_err(|_| AccountError::NoSuchUser {
                key: key.to_string(),
                user: entry.name.clone(),
            })?;
            nix::unistd::getgrouplist(&cname, entry.gid).map_err(|source| AccountError::Lookup {
                user: entry.name.clone(),
                source,
            })?
        } else {
            Vec::new()
        };
        let shell = shell.unwrap_or_else(|| {
            if entry.shell.as_os_str().is_empty() {
                PathBuf::from("/bin/sh")
            } else {
                entry.shell.clone()
            }
        });
        let home = if entry.dir.is_dir() {
            entry.dir.clone()
        } else {
            PathBuf::from("/")
        };
        Ok(Account {
            name: entry.name,
            uid: entry.uid,
            gid: entry.gid,
            groups,
            home,
            shell,
            switch,
        })
    }
}

/// Makes the child a session leader (own process group, so signals reach all of it), gives it
/// stdin as controlling terminal when `ctty`, drops to `account`, and gives it the usual login
/// umask (the agent itself runs with 0077 so its own state is private; what engineers and
/// applications create should be as readable as the same work done through sshd).
pub fn prepare_child(cmd: &mut Command, account: &Account, ctty: bool) {
    let switch = account
        .switch
        .then(|| (account.uid, account.gid, account.groups.clone()));
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called. It calls setsid, umask, ioctl(TIOCSCTTY), setgroups, setgid and
    // setuid, each a direct system call through nix/libc with no allocation or locking; the captured
    // group list was allocated before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            tether_protocol::private_fs::set_child_umask();
            if ctty && nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &switch {
                nix::unistd::setgroups(groups).map_err(std::io::Error::from)?;
                nix::unistd::setgid(*gid).map_err(std::io::Error::from)?;
                nix::unistd::setuid(*uid).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}
