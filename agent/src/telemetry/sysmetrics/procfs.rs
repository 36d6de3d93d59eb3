//! Parsing what the kernel reports in `/proc` (CPU times, memory, mounts, network counters)
//! into figures, and the arithmetic on them (usage between two samples, rates, `df`-style
//! disk space). Pure functions over text: every malformed input is an error or skipped, never
//! a panic.

use std::collections::HashMap;

use serde_json::{Value, json};

/// Aggregate CPU time from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuTimes {
    pub(super) total: u64,
    /// Idle plus iowait: time in which the CPU was not doing work.
    pub(super) idle: u64,
}

/// Cumulative counters of one interface from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NetCounters {
    pub(super) rx_bytes: u64,
    pub(super) tx_bytes: u64,
    pub(super) rx_packets: u64,
    pub(super) tx_packets: u64,
    pub(super) rx_errors: u64,
    pub(super) tx_errors: u64,
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountEntry {
    pub(super) device: String,
    pub(super) mount: String,
    pub(super) fs: String,
}

/// Space on one filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct DiskUsage {
    pub(super) total: u64,
    pub(super) used: u64,
    pub(super) available: u64,
    pub(super) used_pct: f64,
}

fn parse_u64(field: &str) -> Result<u64, String> {
    field
        .parse()
        .map_err(|_| format!("{field:?} is not a counter"))
}

/// A non-negative finite number (load averages, uptime), or why the field is not one.
pub(super) fn parse_non_negative_f64(field: &str) -> Result<f64, String> {
    match field.parse::<f64>() {
        // NaN and infinities would become JSON null.
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{field:?} is not a non-negative number")),
    }
}

/// `part / whole` as a percentage, 0 when there is no whole.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 / whole as f64 * 100.0).clamp(0.0, 100.0)
}

/// The aggregate CPU times and the number of per-CPU lines in `/proc/stat`.
pub(super) fn parse_stat(text: &str) -> Result<(CpuTimes, u64), String> {
    let mut times = None;
    let mut cores: u64 = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(label) = fields.next() else { continue };
        if label == "cpu" {
            times = Some(parse_cpu_times(fields)?);
        } else if label
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            cores = cores.saturating_add(1);
        }
    }
    let times = times.ok_or("no aggregate \"cpu\" line")?;
    Ok((times, cores))
}

/// The aggregate CPU times from the counters of a `cpu` line of `/proc/stat`.
fn parse_cpu_times<'a>(fields: impl Iterator<Item = &'a str>) -> Result<CpuTimes, String> {
    // user nice system idle iowait irq softirq steal; guest and guest_nice follow but are
    // already counted in user and nice, so adding them would count that time twice.
    let values = fields
        .take(8)
        .map(parse_u64)
        .collect::<Result<Vec<_>, _>>()?;
    // Kernels before 2.6 stop after idle.
    let [_user, _nice, _system, idle, rest @ ..] = values.as_slice() else {
        return Err("fewer than four fields on the \"cpu\" line".into());
    };
    let iowait = rest.first().copied().unwrap_or(0);
    let total = values
        .iter()
        .try_fold(0u64, |sum, v| sum.checked_add(*v))
        .ok_or("CPU times overflow")?;
    let idle = idle.checked_add(iowait).ok_or("CPU times overflow")?;
    Ok(CpuTimes { total, idle })
}

/// Busy percentage since `prev`, or since boot when there is no usable previous sample.
pub(super) fn cpu_usage_pct(prev: Option<CpuTimes>, cur: CpuTimes) -> f64 {
    match prev {
        Some(prev) if cur.total >= prev.total => {
            let total = cur.total - prev.total;
            // iowait is known to go backwards on some kernels, so idle may shrink.
            let idle = cur.idle.saturating_sub(prev.idle).min(total);
            percent(total - idle, total)
        }
        // No previous sample, or the counters were reset: the cumulative ratio still means
        // something.
        _ => percent(cur.total.saturating_sub(cur.idle), cur.total),
    }
}

/// The `system/memory` payload from `/proc/meminfo`.
pub(super) fn parse_meminfo(text: &str) -> Result<Value, String> {
    const WANTED: &[&str] = &[
        "MemTotal",
        "MemFree",
        "MemAvailable",
        "Buffers",
        "Cached",
        "SwapTotal",
        "SwapFree",
    ];
    let mut fields: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        if !WANTED.contains(&key) {
            continue;
        }
        // Values are in kB whatever the unit column says.
        let bytes = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(|kb| kb.checked_mul(1024))
            .ok_or_else(|| format!("bad value for {key}"))?;
        fields.insert(key, bytes);
    }
    let get = |key: &str| fields.get(key).copied();
    let total = get("MemTotal").ok_or("no MemTotal")?;
    let available = match get("MemAvailable") {
        Some(available) => available,
        // Kernels before 3.14 have no MemAvailable; this is the estimate free(1) used then.
        None => get("MemFree")
            .ok_or("neither MemAvailable nor MemFree")?
            .saturating_add(get("Buffers").unwrap_or(0))
            .saturating_add(get("Cached").unwrap_or(0)),
    }
    .min(total);
    let used = total - available;
    Ok(json!({
        "total_bytes": total,
        "available_bytes": available,
        "used_bytes": used,
        "used_pct": percent(used, total),
        "swap_total_bytes": get("SwapTotal").unwrap_or(0),
        "swap_free_bytes": get("SwapFree").unwrap_or(0),
    }))
}

/// The entries of `/proc/self/mounts` and the number of lines that could not be parsed.
pub(super) fn parse_mounts(text: &str) -> (Vec<MountEntry>, usize) {
    let mut mounts = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next(), fields.next()) {
            (Some(device), Some(mount), Some(fs)) => mounts.push(MountEntry {
                device: decode_octal_escapes(device),
                mount: decode_octal_escapes(mount),
                fs: decode_octal_escapes(fs),
            }),
            _ => bad += 1,
        }
    }
    (mounts, bad)
}

/// Undoes the kernel's escaping of space, tab, newline and backslash in mount fields
/// (`\040`, `\011`, `\012`, `\134`); anything that is not a valid escape is kept as is.
fn decode_octal_escapes(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\'
            && let Some(decoded) = bytes.get(i + 1..i + 4).and_then(octal_byte)
        {
            out.push(decoded);
            i += 4;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u16 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u16::from(d - b'0');
    }
    u8::try_from(value).ok()
}

/// Space figures as `df` computes them: the reserved blocks count neither as used nor as
/// available, so `used_pct` is what an unprivileged writer sees.
pub(super) fn disk_usage(blocks: u64, free: u64, available: u64, fragment_size: u64) -> DiskUsage {
    let total = blocks.saturating_mul(fragment_size);
    let used = blocks.saturating_sub(free).saturating_mul(fragment_size);
    let available = available.saturating_mul(fragment_size);
    DiskUsage {
        total,
        used,
        available,
        used_pct: percent(used, used.saturating_add(available)),
    }
}

/// The interfaces of `/proc/net/dev` except loopback, in file order, and the number of
/// lines that could not be parsed.
pub(super) fn parse_net_dev(text: &str) -> (Vec<(String, NetCounters)>, usize) {
    let mut interfaces = Vec::new();
    let mut bad = 0;
    // The first two lines are column headers.
    for line in text.lines().skip(2) {
        if line.trim().is_empty() {
            continue;
        }
        // Old kernels print no space between the colon and a large first counter.
        let Some((name, counters)) = line.split_once(':') else {
            bad += 1;
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        match parse_net_counters(counters) {
            Some(c) if !name.is_empty() => interfaces.push((name.to_owned(), c)),
            _ => bad += 1,
        }
    }
    (interfaces, bad)
}

fn parse_net_counters(counters: &str) -> Option<NetCounters> {
    let fields = counters
        .split_whitespace()
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()?;
    // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit:
    // bytes packets errs ...
    let [
        rx_bytes,
        rx_packets,
        rx_errors,
        _,
        _,
        _,
        _,
        _,
        tx_bytes,
        tx_packets,
        tx_errors,
        ..,
    ] = fields.as_slice()
    else {
        return None;
    };
    Some(NetCounters {
        rx_bytes: *rx_bytes,
        tx_bytes: *tx_bytes,
        rx_packets: *rx_packets,
        tx_packets: *tx_packets,
        rx_errors: *rx_errors,
        tx_errors: *tx_errors,
    })
}

/// Bytes per second between two readings of a counter. A counter that went backwards
/// wrapped (32-bit kernels) or was reset (driver reload); the true delta is unknown, so 0.
pub(super) fn rate(previous: u64, current: u64, seconds: f64) -> f64 {
    match current.checked_sub(previous) {
        Some(delta) if seconds > 0.0 => delta as f64 / seconds,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counter_reset_falls_back_to_cumulative() {
        let prev = CpuTimes {
            total: 1000,
            idle: 500,
        };
        let cur = CpuTimes {
            total: 100,
            idle: 75,
        };
        assert_eq!(cpu_usage_pct(Some(prev), cur), 25.0);
        assert_eq!(cpu_usage_pct(Some(cur), cur), 0.0);
        assert_eq!(cpu_usage_pct(None, CpuTimes { total: 0, idle: 0 }), 0.0);
    }

    #[test]
    fn disk_usage_matches_df() {
        let usage = disk_usage(1000, 400, 300, 4096);
        assert_eq!(usage.total, 4_096_000);
        assert_eq!(usage.used, 2_457_600);
        assert_eq!(usage.available, 1_228_800);
        assert!((usage.used_pct - 600.0 / 900.0 * 100.0).abs() < 1e-9);
        assert_eq!(disk_usage(0, 0, 0, 4096).used_pct, 0.0);
        assert_eq!(disk_usage(u64::MAX, 0, 0, u64::MAX).total, u64::MAX);
    }

    #[test]
    fn mount_escapes_are_decoded() {
        assert_eq!(decode_octal_escapes(r"/mnt/my\040data"), "/mnt/my data");
        assert_eq!(decode_octal_escapes(r"a\011b\012c\134d"), "a\tb\nc\\d");
        // Not escapes: kept verbatim.
        assert_eq!(decode_octal_escapes(r"x\999\04"), r"x\999\04");
        assert_eq!(decode_octal_escapes(r"\777"), r"\777");
        assert_eq!(decode_octal_escapes("\\"), "\\");
    }
}
