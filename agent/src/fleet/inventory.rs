//! What this device is, for the relay's inventory: host name, machine id, kernel, OS release,
//! architecture, memory, disks, network interfaces and agent version.
//!
//! Everything comes from the kernel and standard files that every Linux board has or lacks
//! harmlessly; a missing source leaves its field empty rather than failing the report.

use std::collections::BTreeMap;
use std::path::Path;

use tether_protocol::fleet::{Disk, Interface, Inventory};

/// Collects the inventory of this device (blocking: reads /proc, /sys and /etc).
pub fn collect() -> Inventory {
    let uname = nix::sys::utsname::uname().ok();
    let os_release = read_os_release(Path::new("/etc/os-release"))
        .or_else(|| read_os_release(Path::new("/usr/lib/os-release")))
        .unwrap_or_default();
    Inventory {
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        machine_id: std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        kernel: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        os: os_release.get("PRETTY_NAME").cloned(),
        os_version: os_release.get("VERSION_ID").cloned(),
        arch: std::env::consts::ARCH.to_string(),
        memory_bytes: memory_bytes(),
        disks: disks(),
        interfaces: interfaces(),
        agent_version: crate::VERSION.to_string(),
    }
}

/// `KEY=value` pairs of an os-release file, quotes removed.
fn read_os_release(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                (k.trim().to_string(), v.to_string())
            })
            .collect(),
    )
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let rest = l.strip_prefix("MemTotal:")?;
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map(|kb| kb.saturating_mul(1024))
        .unwrap_or(0)
}

/// The disks the system metrics collector reports, in inventory form.
fn disks() -> Vec<Disk> {
    crate::telemetry::sysmetrics::Collector::new()
        .disk_samples()
        .into_iter()
        .map(|s| Disk {
            mount: s.value["mount"].as_str().unwrap_or_default().to_string(),
            device: s.value["device"].as_str().unwrap_or_default().to_string(),
            fs: s.value["fs"].as_str().unwrap_or_default().to_string(),
            total_bytes: s.value["total_bytes"].as_u64().unwrap_or(0),
            available_bytes: s.value["available_bytes"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Interfaces with their hardware and IP addresses, loopback left out.
fn interfaces() -> Vec<Interface> {
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    for ifa in addrs {
        if ifa.interface_name == "lo" {
            continue;
        }
        let entry = by_name
            .entry(ifa.interface_name.clone())
            .or_insert_with(|| Interface {
                name: ifa.interface_name.clone(),
                mac: std::fs::read_to_string(format!(
                    "/sys/class/net/{}/address",
                    ifa.interface_name
                ))
                .ok()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty() && m != "00:00:00:00:00:00"),
                addresses: Vec::new(),
            });
        let prefix = |mask: Option<u32>| mask.map(|m| format!("/{m}")).unwrap_or_default();
        if let Some(addr) = ifa.address.as_ref() {
            if let Some(v4) = addr.as_sockaddr_in() {
                let mask = ifa
                    .netmask
                    .as_ref()
                    .and_then(|m| m.as_sockaddr_in())
                    .map(|m| u32::from(m.ip()).count_ones());
                entry.addresses.push(format!("{}{}", v4.ip(), prefix(mask)));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let mask = ifa
                    .netmask
                    .as_ref()
                    .and_then(|m| m.as_sockaddr_in6())
                    .map(|m| u128::from(m.ip()).count_ones());
                entry.addresses.push(format!("{}{}", v6.ip(), prefix(mask)));
            }
        }
    }
    by_name.into_values().collect()
}

/// How far a disk's free space must move, as a share of its size, before a report says so.
const FREE_SPACE_NEWS: u64 = 100;

/// Whether `fresh` tells the relay something that `reported` does not. Free space moves a
/// little all the time; it counts once a disk's moved by more than 1% of its size since the
/// report, and everything else counts at once. Without this every idle board would send a
/// report (and the relay write one) each time inventory is collected.
pub fn is_news(reported: Option<&Inventory>, fresh: &Inventory) -> bool {
    let Some(reported) = reported else {
        return true;
    };
    if reported.disks.len() != fresh.disks.len() {
        return true;
    }
    let mut same = fresh.clone();
    for (d, r) in same.disks.iter_mut().zip(&reported.disks) {
        let slack = d.total_bytes / FREE_SPACE_NEWS;
        if d.mount == r.mount && d.available_bytes.abs_diff(r.available_bytes) <= slack {
            d.available_bytes = r.available_bytes;
        }
    }
    same != *reported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_news_only_past_a_share_of_the_disk() {
        let disk = |avail| Disk {
            mount: "/data".into(),
            device: "/dev/mmcblk0p3".into(),
            fs: "ext4".into(),
            total_bytes: 1_000_000_000,
            available_bytes: avail,
        };
        let inv = |avail| Inventory {
            hostname: "board".into(),
            disks: vec![disk(avail)],
            ..Inventory::default()
        };
        let reported = inv(500_000_000);
        assert!(is_news(None, &reported));
        assert!(!is_news(Some(&reported), &inv(500_000_000)));
        assert!(
            !is_news(Some(&reported), &inv(509_999_999)),
            "under 1% of the disk"
        );
        assert!(
            !is_news(Some(&reported), &inv(490_000_000)),
            "exactly 1% of the disk"
        );
        assert!(
            is_news(Some(&reported), &inv(489_999_999)),
            "over 1% of the disk"
        );
        let mut renamed = inv(500_000_001);
        renamed.hostname = "board-2".into();
        assert!(
            is_news(Some(&reported), &renamed),
            "anything else counts at once"
        );
        let mut more = inv(500_000_000);
        more.disks.push(disk(1));
        assert!(is_news(Some(&reported), &more), "a disk mounted");
    }

    #[test]
    fn this_machine_has_an_inventory() {
        let inv = collect();
        assert!(!inv.hostname.is_empty());
        assert!(!inv.kernel.is_empty());
        assert!(inv.memory_bytes > 0);
        assert_eq!(inv.arch, std::env::consts::ARCH);
        assert!(inv.interfaces.iter().all(|i| i.name != "lo"));
    }

    #[test]
    fn os_release_values_lose_their_quotes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("os-release");
        std::fs::write(
            &p,
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n",
        )?;
        let m = read_os_release(&p).ok_or("no file")?;
        assert_eq!(
            m.get("PRETTY_NAME").map(String::as_str),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(m.get("ID").map(String::as_str), Some("debian"));
        Ok(())
    }
}
