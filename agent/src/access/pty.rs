//! Pseudo-terminals for interactive sessions.
//!
//! The master side is made non-blocking and driven by tokio's reactor (no thread per
//! session); the slave side becomes the child's controlling terminal, so the kernel's line
//! discipline turns a typed Ctrl-C into SIGINT for the foreground process group, exactly as
//! under sshd.

// The crate denies `unsafe`; this module is one of those allowed it, block by block with
// the proof beside each.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{OpenptyResult, Winsize, openpty};
use tokio::io::unix::AsyncFd;

/// A terminal size in characters and pixels, as SSH `pty-req` and `window-change` carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// Width in pixels.
    pub px_width: u32,
    /// Height in pixels.
    pub px_height: u32,
}

impl Size {
    /// A size in the order SSH's `pty-req` and `window-change` carry it.
    pub const fn new(cols: u32, rows: u32, px_width: u32, px_height: u32) -> Self {
        Self {
            cols,
            rows,
            px_width,
            px_height,
        }
    }

    fn winsize(self) -> Winsize {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        Winsize {
            ws_row: clamp(self.rows),
            ws_col: clamp(self.cols),
            ws_xpixel: clamp(self.px_width),
            ws_ypixel: clamp(self.px_height),
        }
    }
}

nix::ioctl_write_ptr_bad!(set_winsize, nix::libc::TIOCSWINSZ, Winsize);

/// An open pseudo-terminal pair.
pub struct Pty {
    /// The master side, owned by the agent.
    pub master: OwnedFd,
    /// The slave side, handed to the child (and closed in the agent after spawning).
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal of the given size.
pub fn open(size: Size) -> io::Result<Pty> {
    let winsize = size.winsize();
    let OpenptyResult { master, slave } = openpty(Some(&winsize), None).map_err(io::Error::from)?;
    Ok(Pty { master, slave })
}

/// Sets the terminal size on the master; the kernel then signals SIGWINCH to the foreground group.
pub fn resize(master: &impl AsFd, size: Size) -> io::Result<()> {
    let winsize = size.winsize();
    // SAFETY: TIOCSWINSZ reads one `Winsize` through the pointer, which refers to a live local
    // value for the duration of the call; the fd is a valid open pty master borrowed from `master`.
    unsafe { set_winsize(master.as_fd().as_raw_fd(), &winsize) }.map_err(io::Error::from)?;
    Ok(())
}

/// The master side of a pty, readable and writable without blocking the runtime.
pub struct AsyncMaster {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncMaster {
    /// Wraps a master fd, switching it to non-blocking mode.
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(&master, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&master, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: `master` is an `OwnedFd`, so its descriptor is valid and open, and the
        // AsyncFd owns it for its whole lifetime: nothing else can close or replace it, and
        // `as_raw_fd` on an OwnedFd always returns the same descriptor.
        let fd =
            unsafe { AsyncFd::register(master) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd })
    }

    /// Reads what the terminal printed. `Ok(0)` means the slave side is closed for good
    /// (Linux reports that as EIO, which this maps to end-of-file).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the terminal (what the engineer typed).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal size.
    pub fn resize(&self, size: Size) -> io::Result<()> {
        resize(self.fd.get_ref(), size)
    }
}
