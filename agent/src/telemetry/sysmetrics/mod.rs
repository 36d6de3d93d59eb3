//! The built-in system metrics collector.
//!
//! The agent samples the board's CPU, memory, load, uptime, disks, network interfaces and
//! thermal zones at a fixed interval and queues each measurement as a telemetry record, so a
//! fleet operator sees device health without installing anything else on the device.
//!
//! Everything is read from `/proc` and `/sys` (plus `statvfs` for disks): no daemon, no
//! extra dependency, and it works on the small Linux images found on embedded boards. Boards
//! differ widely (no thermal zones, no swap, an old kernel without `MemAvailable`, a
//! hardened `/proc`), so a source that is missing or unreadable is skipped with a debug log
//! rather than failing the whole round. Content that cannot be parsed is skipped with a
//! warning naming the file; a sampler that runs forever on unattended devices must never
//! panic on what the kernel (or a test) hands it.
//!
//! [`Collector`] keeps the previous CPU and network counters, so CPU usage and network rates
//! describe the interval between two calls to [`Collector::sample`].

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use procfs::{
    CpuTimes, DiskUsage, NetCounters, cpu_usage_pct, disk_usage, parse_meminfo, parse_mounts,
    parse_net_dev, parse_non_negative_f64, parse_stat, rate,
};

mod procfs;

/// At most this many disk samples per round: container hosts can have thousands of mounts.
const MAX_MOUNTS: usize = 64;
/// At most this many network samples per round: virtual interfaces can be numerous.
const MAX_INTERFACES: usize = 64;
/// At most this many temperature samples per round.
const MAX_THERMAL_ZONES: usize = 32;
/// Upper bound on what is read from one file, so a runaway source cannot exhaust memory.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Filesystem types that do not describe storage worth reporting: virtual filesystems,
/// memory-backed ones, and read-only images (squashfs is always 100% full).
const SKIPPED_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    // Old kernels list the initramfs as `rootfs` on `/` next to the real root filesystem;
    // statvfs on `/` would report the real one twice.
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// One measurement to queue: topic and JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Telemetry topic, e.g. `system/cpu`.
    pub topic: String,
    /// The measurement.
    pub value: Value,
}

impl Sample {
    fn new(topic: &str, value: Value) -> Self {
        Sample {
            topic: topic.to_owned(),
            value,
        }
    }
}

/// Network counters as of one round, kept to turn the next round's counters into rates.
#[derive(Debug)]
struct NetSnapshot {
    at: Instant,
    counters: HashMap<String, NetCounters>,
}

/// Reads system metrics from a root directory (normally `/`; tests pass a temp dir with fake
/// `proc/` and `sys/` files).
#[derive(Debug)]
pub struct Collector {
    root: PathBuf,
    prev_cpu: Option<CpuTimes>,
    prev_net: Option<NetSnapshot>,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    /// A collector reading the real `/proc` and `/sys`.
    pub fn new() -> Self {
        Self::with_root("/")
    }

    /// A collector reading `<root>/proc/...` and `<root>/sys/...` (for tests).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Collector {
            root: root.into(),
            prev_cpu: None,
            prev_net: None,
        }
    }

    /// Takes one round of samples.
    ///
    /// Sources that are missing or unreadable on this board are skipped (logged at debug),
    /// never an error; malformed content is skipped with a warning naming the file. Never
    /// panics on any file content.
    pub fn sample(&mut self) -> Vec<Sample> {
        self.sample_at(Instant::now())
    }

    /// [`Collector::sample`] with the clock passed in, so tests get exact rates.
    fn sample_at(&mut self, now: Instant) -> Vec<Sample> {
        let mut out = Vec::new();
        self.sample_cpu(&mut out);
        self.sample_memory(&mut out);
        self.sample_load(&mut out);
        self.sample_uptime(&mut out);
        self.sample_disks(&mut out);
        self.sample_network(now, &mut out);
        self.sample_temperatures(&mut out);
        out
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn sample_cpu(&mut self, out: &mut Vec<Sample>) {
        let path = self.path("proc/stat");
        let Some(text) = read_text(&path) else { return };
        match parse_stat(&text) {
            Ok((times, cores)) => {
                let usage = cpu_usage_pct(self.prev_cpu, times);
                self.prev_cpu = Some(times);
                out.push(Sample::new(
                    "system/cpu",
                    json!({ "usage_pct": usage, "cores": cores }),
                ));
            }
            Err(why) => malformed(&path, &why),
        }
    }

    fn sample_memory(&self, out: &mut Vec<Sample>) {
        let path = self.path("proc/meminfo");
        let Some(text) = read_text(&path) else { return };
        match parse_meminfo(&text) {
            Ok(value) => out.push(Sample::new("system/memory", value)),
            Err(why) => malformed(&path, &why),
        }
    }

    fn sample_load(&self, out: &mut Vec<Sample>) {
        let path = self.path("proc/loadavg");
        let Some(text) = read_text(&path) else { return };
        let mut fields = text.split_whitespace().map(parse_non_negative_f64);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(load1)), Some(Ok(load5)), Some(Ok(load15))) => out.push(Sample::new(
                "system/load",
                json!({ "load1": load1, "load5": load5, "load15": load15 }),
            )),
            _ => malformed(&path, "expected three load averages"),
        }
    }

    fn sample_uptime(&self, out: &mut Vec<Sample>) {
        let path = self.path("proc/uptime");
        let Some(text) = read_text(&path) else { return };
        match text.split_whitespace().next().map(parse_non_negative_f64) {
            Some(Ok(seconds)) => {
                out.push(Sample::new("system/uptime", json!({ "seconds": seconds })));
            }
            _ => malformed(&path, "expected the uptime in seconds"),
        }
    }

    /// Only the `system/disk` samples (the inventory needs nothing else).
    pub fn disk_samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        self.sample_disks(&mut out);
        out
    }

    fn sample_disks(&self, out: &mut Vec<Sample>) {
        let path = self.path("proc/self/mounts");
        let Some(text) = read_text(&path) else { return };
        let (mounts, bad_lines) = parse_mounts(&text);
        if bad_lines > 0 {
            malformed(&path, &format!("{bad_lines} unparsable line(s)"));
        }
        // Bind mounts and re-mounts show the same device several times; one report each.
        let mut seen_devices = HashSet::new();
        let mut emitted = 0;
        for entry in mounts {
            if emitted >= MAX_MOUNTS {
                break;
            }
            if SKIPPED_FILESYSTEMS.contains(&entry.fs.as_str())
                || seen_devices.contains(&entry.device)
            {
                continue;
            }
            let Some(usage) = self.stat_filesystem(&entry.mount) else {
                continue;
            };
            // Filesystems without blocks are virtual ones not in the skip list.
            if usage.total == 0 {
                continue;
            }
            out.push(Sample::new(
                "system/disk",
                json!({
                    "mount": entry.mount,
                    "device": entry.device,
                    "fs": entry.fs,
                    "total_bytes": usage.total,
                    "used_bytes": usage.used,
                    "available_bytes": usage.available,
                    "used_pct": usage.used_pct,
                }),
            ));
            seen_devices.insert(entry.device);
            emitted += 1;
        }
    }

    /// Space on the filesystem mounted at `mount`, looked up under the collector's root so a
    /// test root never reaches the host's filesystems.
    fn stat_filesystem(&self, mount: &str) -> Option<DiskUsage> {
        // The kernel only lists absolute, normalised mount points; anything else would make
        // statvfs look outside the root.
        let relative = mount.strip_prefix('/')?;
        if Path::new(relative)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            tracing::debug!("skipping mount {mount:?}: not a normalised absolute path");
            return None;
        }
        let path = self.root.join(relative);
        match nix::sys::statvfs::statvfs(&path) {
            Ok(st) => Some(disk_usage(
                to_u64(st.blocks()),
                to_u64(st.blocks_free()),
                to_u64(st.blocks_available()),
                to_u64(st.fragment_size()),
            )),
            Err(e) => {
                tracing::debug!("skipping mount {}: statvfs: {e}", path.display());
                None
            }
        }
    }

    fn sample_network(&mut self, now: Instant, out: &mut Vec<Sample>) {
        let path = self.path("proc/net/dev");
        let Some(text) = read_text(&path) else { return };
        let (interfaces, bad_lines) = parse_net_dev(&text);
        if bad_lines > 0 {
            malformed(&path, &format!("{bad_lines} unparsable line(s)"));
        }
        let previous = self.prev_net.as_ref().map(|p| {
            (
                now.saturating_duration_since(p.at).as_secs_f64(),
                &p.counters,
            )
        });
        let mut current = HashMap::new();
        for (name, c) in interfaces.into_iter().take(MAX_INTERFACES) {
            let mut value = json!({
                "interface": name,
                "rx_bytes": c.rx_bytes,
                "tx_bytes": c.tx_bytes,
                "rx_packets": c.rx_packets,
                "tx_packets": c.tx_packets,
                "rx_errors": c.rx_errors,
                "tx_errors": c.tx_errors,
            });
            let prev = previous.and_then(|(secs, counters)| Some((secs, counters.get(&name)?)));
            if let (Some((secs, p)), Some(map)) = (prev, value.as_object_mut())
                && secs > 0.0
            {
                map.insert(
                    "rx_bytes_per_s".into(),
                    json!(rate(p.rx_bytes, c.rx_bytes, secs)),
                );
                map.insert(
                    "tx_bytes_per_s".into(),
                    json!(rate(p.tx_bytes, c.tx_bytes, secs)),
                );
            }
            out.push(Sample::new("system/network", value));
            current.insert(name, c);
        }
        self.prev_net = Some(NetSnapshot {
            at: now,
            counters: current,
        });
    }

    fn sample_temperatures(&self, out: &mut Vec<Sample>) {
        let dir = self.path("sys/class/thermal");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!("skipping {}: {e}", dir.display());
                return;
            }
        };
        // Directory order is arbitrary; sort numerically so zone 10 follows zone 9.
        let mut zones: Vec<(u64, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let index = name.strip_prefix("thermal_zone")?.parse().ok()?;
                Some((index, name))
            })
            .collect();
        zones.sort();
        for (_, zone) in zones.into_iter().take(MAX_THERMAL_ZONES) {
            let zone_dir = dir.join(&zone);
            let temp_path = zone_dir.join("temp");
            // Reading temp fails with EINVAL or ENODATA on zones whose sensor is off.
            let Some(text) = read_text(&temp_path) else {
                continue;
            };
            let Ok(millidegrees) = text.trim().parse::<i64>() else {
                malformed(&temp_path, "expected millidegrees Celsius");
                continue;
            };
            let kind = read_text(&zone_dir.join("type"))
                .map(|t| t.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned());
            out.push(Sample::new(
                "system/temperature",
                json!({
                    "zone": zone,
                    "type": kind,
                    "celsius": millidegrees as f64 / 1000.0,
                }),
            ));
        }
    }
}

/// Reads a whole (small) file as text, or `None` with a debug log if it cannot be read.
fn read_text(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    let result = fs::File::open(path).and_then(|f| f.take(MAX_FILE_BYTES).read_to_end(&mut bytes));
    if let Err(e) = result {
        tracing::debug!("skipping {}: {e}", path.display());
        return None;
    }
    if bytes.len() as u64 >= MAX_FILE_BYTES {
        // The last line was cut by the limit; a half line parses into wrong values.
        let end = bytes.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        bytes.truncate(end);
    }
    // Paths and interface names need not be UTF-8; a lossy copy keeps the rest usable.
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn malformed(path: &Path, why: &str) {
    tracing::warn!("ignoring malformed {}: {why}", path.display());
}

/// Widens the platform-sized statvfs fields (32-bit on some ARM boards).
fn to_u64<T: Into<u64>>(value: T) -> u64 {
    value.into()
}

/// Samples system metrics every `interval` into the outbox, for as long as the agent runs.
pub async fn run(producer: crate::telemetry::producer::Producer, interval: std::time::Duration) {
    let mut collector = Some(crate::telemetry::sysmetrics::Collector::new());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(mut c) = collector.take() else {
            return;
        };
        // statvfs on a hung network mount blocks; keep it off the async threads.
        let Ok((c, samples)) = tokio::task::spawn_blocking(move || {
            let samples = c.sample();
            (c, samples)
        })
        .await
        else {
            tracing::error!("system metrics collector failed; stopping it");
            return;
        };
        collector = Some(c);
        let now = tether_protocol::clock::now_ms();
        let records = samples
            .into_iter()
            .map(|s| crate::telemetry::outbox::NewRecord {
                ts_ms: now,
                kind: tether_protocol::telemetry::Kind::Metric,
                topic: s.topic,
                level: None,
                payload: s.value.to_string(),
            })
            .collect::<Vec<_>>();
        if let Err(e) = producer.append(records).await {
            tracing::warn!("queuing system metrics: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn write(root: &Path, relative: &str, contents: impl AsRef<[u8]>) -> TestResult {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, contents)?;
        Ok(())
    }

    fn topic<'a>(samples: &'a [Sample], topic: &str) -> Vec<&'a Value> {
        samples
            .iter()
            .filter(|s| s.topic == topic)
            .map(|s| &s.value)
            .collect()
    }

    const NET_DEV_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n \
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    fn fake_root() -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        write(
            root,
            "proc/stat",
            "cpu  100 0 100 800 0 0 0 0 0 0\n\
             cpu0 50 0 50 400 0 0 0 0 0 0\n\
             cpu1 50 0 50 400 0 0 0 0 0 0\n\
             intr 12345 0 0\n\
             ctxt 999\n",
        )?;
        write(
            root,
            "proc/meminfo",
            "MemTotal:        1000 kB\n\
             MemFree:          100 kB\n\
             MemAvailable:     250 kB\n\
             Buffers:           10 kB\n\
             Cached:            20 kB\n\
             SwapTotal:        512 kB\n\
             SwapFree:         128 kB\n\
             HugePages_Total:    0\n",
        )?;
        write(root, "proc/loadavg", "0.52 0.58 1.25 1/123 4567\n")?;
        write(root, "proc/uptime", "12345.67 23456.78\n")?;
        write(
            root,
            "proc/net/dev",
            format!(
                "{NET_DEV_HEADER}    lo:  500 5 0 0 0 0 0 0  500 5 0 0 0 0 0 0\n  \
                 eth0: 1000 10 1 0 0 0 0 0 2000 20 2 0 0 0 0 0\n \
                 wlan0:5000 50 0 0 0 0 0 0 6000 60 0 0 0 0 0 0\n"
            ),
        )?;
        write(
            root,
            "proc/self/mounts",
            "/dev/sda1 / ext4 rw,relatime 0 0\n\
             proc /proc proc rw,nosuid 0 0\n\
             tmpfs /run tmpfs rw,nosuid,size=10240k 0 0\n\
             /dev/sda2 /mnt/my\\040data ext4 rw 0 0\n\
             /dev/sda1 /srv ext4 rw 0 0\n\
             /dev/sdb1 /absent vfat rw 0 0\n\
             /dev/loop0 /snap/core squashfs ro 0 0\n\
             overlay /merged overlay rw,lowerdir=/a,upperdir=/b 0 0\n",
        )?;
        fs::create_dir_all(root.join("mnt/my data"))?;
        fs::create_dir_all(root.join("merged"))?;
        fs::create_dir_all(root.join("srv"))?;
        fs::create_dir_all(root.join("run"))?;
        write(root, "sys/class/thermal/thermal_zone0/temp", "45678\n")?;
        write(
            root,
            "sys/class/thermal/thermal_zone0/type",
            "cpu-thermal\n",
        )?;
        write(
            root,
            "sys/class/thermal/thermal_zone1/type",
            "gpu-thermal\n",
        )?;
        write(root, "sys/class/thermal/thermal_zone10/temp", "-5000\n")?;
        write(root, "sys/class/thermal/cooling_device0/type", "fan\n")?;
        Ok(dir)
    }

    #[test]
    fn fake_root_payloads() -> TestResult {
        let dir = fake_root()?;
        let samples = Collector::with_root(dir.path()).sample();

        assert_eq!(
            topic(&samples, "system/cpu"),
            [&json!({ "usage_pct": 20.0, "cores": 2 })]
        );
        assert_eq!(
            topic(&samples, "system/memory"),
            [&json!({
                "total_bytes": 1_024_000,
                "available_bytes": 256_000,
                "used_bytes": 768_000,
                "used_pct": 75.0,
                "swap_total_bytes": 524_288,
                "swap_free_bytes": 131_072,
            })]
        );
        assert_eq!(
            topic(&samples, "system/load"),
            [&json!({ "load1": 0.52, "load5": 0.58, "load15": 1.25 })]
        );
        assert_eq!(
            topic(&samples, "system/uptime"),
            [&json!({ "seconds": 12345.67 })]
        );
        assert_eq!(
            topic(&samples, "system/network"),
            [
                &json!({
                    "interface": "eth0",
                    "rx_bytes": 1000, "tx_bytes": 2000,
                    "rx_packets": 10, "tx_packets": 20,
                    "rx_errors": 1, "tx_errors": 2,
                }),
                &json!({
                    "interface": "wlan0",
                    "rx_bytes": 5000, "tx_bytes": 6000,
                    "rx_packets": 50, "tx_packets": 60,
                    "rx_errors": 0, "tx_errors": 0,
                }),
            ]
        );
        assert_eq!(
            topic(&samples, "system/temperature"),
            [
                &json!({ "zone": "thermal_zone0", "type": "cpu-thermal", "celsius": 45.678 }),
                &json!({ "zone": "thermal_zone10", "type": "unknown", "celsius": -5.0 }),
            ]
        );

        let disks = topic(&samples, "system/disk");
        let names: Vec<(&Value, &Value, &Value)> = disks
            .iter()
            .map(|d| (&d["mount"], &d["device"], &d["fs"]))
            .collect();
        assert_eq!(
            names,
            [
                (&json!("/"), &json!("/dev/sda1"), &json!("ext4")),
                (&json!("/mnt/my data"), &json!("/dev/sda2"), &json!("ext4")),
                (&json!("/merged"), &json!("overlay"), &json!("overlay")),
            ]
        );
        for disk in disks {
            let total = disk["total_bytes"].as_u64().ok_or("total_bytes")?;
            let used = disk["used_bytes"].as_u64().ok_or("used_bytes")?;
            let available = disk["available_bytes"].as_u64().ok_or("available_bytes")?;
            let pct = disk["used_pct"].as_f64().ok_or("used_pct")?;
            assert!(total > 0, "{disk}");
            assert!(used.saturating_add(available) <= total, "{disk}");
            assert!((0.0..=100.0).contains(&pct), "{disk}");
        }
        Ok(())
    }

    #[test]
    fn second_sample_uses_the_interval() -> TestResult {
        let dir = fake_root()?;
        let root = dir.path();
        let mut collector = Collector::with_root(root);
        let t0 = Instant::now();
        collector.sample_at(t0);

        // 400 more ticks, 200 of them idle or iowait.
        write(
            root,
            "proc/stat",
            "cpu  200 0 200 900 100 0 0 0 0 0\ncpu0 1\n",
        )?;
        // eth0 moved on; wlan0's counters went backwards (driver reload).
        write(
            root,
            "proc/net/dev",
            format!(
                "{NET_DEV_HEADER}  eth0: 3000 30 1 0 0 0 0 0 2500 25 2 0 0 0 0 0\n \
                 wlan0: 10 1 0 0 0 0 0 0 6000 60 0 0 0 0 0 0\n  \
                 usb0: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n"
            ),
        )?;
        let t1 = t0.checked_add(Duration::from_secs(2)).ok_or("clock")?;
        let samples = collector.sample_at(t1);

        assert_eq!(
            topic(&samples, "system/cpu"),
            [&json!({ "usage_pct": 50.0, "cores": 1 })]
        );
        let net = topic(&samples, "system/network");
        assert_eq!(net.len(), 3);
        assert_eq!(net[0]["interface"], "eth0");
        assert_eq!(net[0]["rx_bytes_per_s"], json!(1000.0));
        assert_eq!(net[0]["tx_bytes_per_s"], json!(250.0));
        assert_eq!(net[1]["interface"], "wlan0");
        assert_eq!(net[1]["rx_bytes_per_s"], json!(0.0));
        assert_eq!(net[1]["tx_bytes_per_s"], json!(0.0));
        // A new interface has no previous reading, hence no rate yet.
        assert_eq!(net[2]["interface"], "usb0");
        assert!(net[2].get("rx_bytes_per_s").is_none(), "{}", net[2]);

        // Through the public entry point, rates appear on the second call too.
        let mut collector = Collector::with_root(root);
        let first = collector.sample();
        assert!(
            topic(&first, "system/network")
                .iter()
                .all(|n| n.get("rx_bytes_per_s").is_none())
        );
        let second = collector.sample();
        assert!(
            topic(&second, "system/network")
                .iter()
                .all(|n| n["rx_bytes_per_s"].is_f64() && n["tx_bytes_per_s"].is_f64())
        );
        Ok(())
    }

    #[test]
    fn memory_without_mem_available() -> TestResult {
        let value =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 100 kB\n")?;
        assert_eq!(
            value,
            json!({
                "total_bytes": 1_024_000,
                "available_bytes": 256_000,
                "used_bytes": 768_000,
                "used_pct": 75.0,
                "swap_total_bytes": 0,
                "swap_free_bytes": 0,
            })
        );
        Ok(())
    }

    #[test]
    fn garbage_is_skipped() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        write(root, "proc/stat", "cpu a b c d\ncpu0 x\n")?;
        write(root, "proc/meminfo", b"\xff\xfe\0MemTotal: lots kB\n::::\n")?;
        write(root, "proc/loadavg", "nan inf -1\n")?;
        write(root, "proc/uptime", "")?;
        write(
            root,
            "proc/net/dev",
            "garbage\n|||\n  eth0: 1 2\nlo: x\n: 1 2 3 4 5 6 7 8 9 10 11\nno colon here\n",
        )?;
        write(
            root,
            "proc/self/mounts",
            b"\\\\\\ \n \0\0 relative/path ext4\n/dev/x /\\999 ext4\n/dev/y /../.. ext4\n\xff\n",
        )?;
        write(root, "sys/class/thermal/thermal_zone0/temp", "hot\n")?;
        write(
            root,
            "sys/class/thermal/thermal_zone1/temp",
            "99999999999999999999999\n",
        )?;
        fs::create_dir_all(root.join("sys/class/thermal/thermal_zoneX"))?;

        let mut collector = Collector::with_root(root);
        assert_eq!(collector.sample(), []);
        assert_eq!(collector.sample(), []);

        // Counters at the edge of u64 overflow instead of wrapping silently.
        let max = u64::MAX;
        write(root, "proc/stat", format!("cpu {max} {max} {max} {max}\n"))?;
        write(root, "proc/meminfo", format!("MemTotal: {max} kB\n"))?;
        assert_eq!(collector.sample(), []);
        Ok(())
    }

    #[test]
    fn random_bytes_never_panic() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        const FILES: &[&str] = &[
            "proc/stat",
            "proc/meminfo",
            "proc/loadavg",
            "proc/uptime",
            "proc/net/dev",
            "proc/self/mounts",
            "sys/class/thermal/thermal_zone0/temp",
            "sys/class/thermal/thermal_zone0/type",
        ];
        // Biased toward the characters the parsers look for, so they get past the first check.
        const ALPHABET: &[u8] = b"cpu0123456789 :\n\\/.-kBMemTotalAvailableSwap|eth\xff\0";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut collector = Collector::with_root(root);
        for _ in 0..200 {
            for file in FILES {
                let mut bytes = Vec::new();
                for _ in 0..(state % 200) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let index = usize::try_from(state % ALPHABET.len() as u64)?;
                    bytes.push(ALPHABET.get(index).copied().unwrap_or(b' '));
                }
                write(root, file, bytes)?;
            }
            for sample in collector.sample() {
                assert!(sample.topic.starts_with("system/"));
            }
        }
        Ok(())
    }

    #[test]
    fn missing_sources_are_skipped() -> TestResult {
        let dir = tempfile::tempdir()?;
        assert_eq!(Collector::with_root(dir.path()).sample(), []);
        Ok(())
    }

    #[test]
    fn real_machine_reports_core_metrics() {
        let samples = Collector::new().sample();
        for wanted in [
            "system/cpu",
            "system/memory",
            "system/load",
            "system/uptime",
        ] {
            assert!(
                samples.iter().any(|s| s.topic == wanted),
                "no {wanted} in {samples:?}"
            );
        }
    }
}
