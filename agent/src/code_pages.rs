//! Gives back the pages of code and read-only data that only start-up needed.
//!
//! The kernel maps the binary's and the libraries' file pages in large pieces (read-ahead
//! windows, whole page-cache folios), so an agent that has started holds most of its 8 MiB of
//! code resident though it runs a small part of it while idle. Once start-up is over,
//! [`release`] marks each read-only file mapping for random access (later faults read the page
//! they need, not a window around it) and asks the kernel to reclaim its pages
//! (`MADV_PAGEOUT`, Linux 5.4). What idle work runs faults back in; the rest of the binary
//! stays on disk until it is needed. Pages other processes map too (the C library) are left
//! alone by the kernel. This is what Android does to the file pages of apps in the background.

// The crate denies `unsafe`; this module is one of those allowed it, for the one `madvise`
// call below and the proof beside it.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;

use nix::sys::mman::{MmapAdvise, madvise};

/// What [`release`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Read-only file mappings advised.
    pub mappings: usize,
    /// Their length in bytes.
    pub bytes: u64,
    /// Mappings the kernel refused the advice for (an old kernel without `MADV_PAGEOUT`).
    pub refused: usize,
    /// This process's resident memory before and after, in KiB (0 when unknown).
    pub resident_kib: (u64, u64),
}

impl std::fmt::Display for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "{} read-only mappings ({:.1} MiB), resident {:.1} -> {:.1} MiB",
            self.mappings,
            self.bytes as f64 / 1048576.0,
            mib(self.resident_kib.0),
            mib(self.resident_kib.1)
        )?;
        if self.refused > 0 {
            write!(
                f,
                "; the kernel refused {} (before Linux 5.4)",
                self.refused
            )?;
        }
        Ok(())
    }
}

/// This process's resident memory in KiB, from `VmRSS` in `/proc/self/status`.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A read-only, file-backed mapping of this process (`start`, `end`).
fn read_only_file_mappings(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            // offset, device, inode, then the path.
            let path = fields.nth(3)?;
            if !path.starts_with('/') || perms.as_bytes().get(1) != Some(&b'-') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

/// Advises every read-only file mapping of this process as described in the module comment.
pub fn release() -> std::io::Result<Released> {
    let before = resident_kib();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut done = Released::default();
    for (start, end) in read_only_file_mappings(&maps) {
        let Some(addr) = NonNull::new(start as *mut c_void) else {
            continue;
        };
        let len = end - start;
        let mut ok = true;
        for advice in [MmapAdvise::MADV_RANDOM, MmapAdvise::MADV_PAGEOUT] {
            // SAFETY: `addr..addr+len` is a whole mapping of this process as the kernel listed
            // it a moment ago (a range that has been unmapped since only makes the call fail
            // with ENOMEM). Neither advice changes what the memory holds: MADV_RANDOM only
            // turns off read-ahead for later faults, and MADV_PAGEOUT reclaims pages the way
            // memory pressure would, so a later access faults back the same contents (from the
            // file for clean pages, from swap for the anonymous copies of relocated ones, which
            // without swap stay put). No reference into the range is invalidated.
            if unsafe { madvise(addr, len, advice) }.is_err() {
                ok = false;
            }
        }
        done.mappings += 1;
        done.bytes += len as u64;
        if !ok {
            done.refused += 1;
        }
    }
    done.resident_kib = (before, resident_kib());
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_chosen() {
        let maps = "\
5654be7ab000-5654be9c5000 r--p 00000000 fe:00 5505472  /usr/bin/agent
5654be9c5000-5654bef20000 r-xp 00219000 fe:00 5505472  /usr/bin/agent
5654bef52000-5654bef89000 rw-p 007a4000 fe:00 5505472  /usr/bin/agent
5654fb25d000-5654fb2d0000 rw-p 00000000 00:00 0        [heap]
7fdfc5dae000-7fdfc5db6000 rw-s 00000000 fe:00 10010674 /var/lib/tether/outbox.db-shm
7fdfc61e4000-7fdfc633a000 r-xp 00026000 fe:00 326279   /usr/lib/x86_64-linux-gnu/libc.so.6
7ffefd7cf000-7ffefd7f0000 rw-p 00000000 00:00 0        [stack]
7ffefd7f0000-7ffefd7f4000 r--p 00000000 00:00 0        [vvar]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
garbage
";
        let chosen = read_only_file_mappings(maps);
        assert_eq!(
            chosen,
            vec![
                (0x5654be7ab000, 0x5654be9c5000),
                (0x5654be9c5000, 0x5654bef20000),
                (0x7fdfc61e4000, 0x7fdfc633a000),
            ]
        );
    }

    #[test]
    fn release_keeps_this_process_running_and_its_data_intact() {
        let text = String::from("still here");
        let done = release().expect("reading /proc/self/maps");
        assert!(done.mappings > 0, "{done:?}");
        assert!(
            done.resident_kib.0 > 0 && done.resident_kib.1 > 0,
            "{done:?}"
        );
        assert_eq!(text, "still here");
        // Code paged out comes back on the next call.
        assert!(release().expect("second release").mappings > 0);
    }
}
