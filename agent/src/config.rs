//! The agent's configuration file (YAML).
//!
//! Every key is optional and has the default documented on its field (and in the README).
//! Unknown keys and bad values are errors naming the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_protocol::config_file;

/// Where the agent looks for its configuration when not told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tether/agent.yaml";

/// Default state directory (device key, enrollment record, link status).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tether";

/// The agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Directory for the device key, the enrollment record and the link status.
    pub state_dir: PathBuf,
    /// The link to the relay.
    pub link: LinkConfig,
    /// Shells and commands served to engineers.
    pub shell: ShellConfig,
    /// Device-local targets engineers may reach.
    pub forward: ForwardConfig,
    /// The telemetry outbox and its upload.
    pub telemetry: TelemetryConfig,
    /// Applications run from recipes.
    pub apps: AppsConfig,
    /// A/B OS updates.
    pub ota: OtaConfig,
    /// The agent's own memory.
    pub memory: MemoryConfig,
}

/// Settings of the agent's own memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// How long after `agent run` starts the code and read-only data it mapped are given back
    /// to the kernel (see `code_pages`), so that only what idle work runs comes back; `0s`
    /// keeps them. Default 60s.
    #[serde(with = "humantime_serde")]
    pub page_out_after: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            page_out_after: Duration::from_secs(60),
        }
    }
}

/// Which bootloader environment selects the boot slot.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Bootloader {
    /// U-Boot environment per `ota.uboot_config` (fw_env.config).
    Uboot,
    /// GRUB environment block `ota.grub_env`.
    Grub,
    /// A key=value file `ota.env_file` (tests, and boards whose boot script reads a file).
    File,
}

/// One boot slot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// Boot name, as in `BOOT_ORDER` (e.g. `A`).
    pub name: String,
    /// Image class the slot takes from a bundle (e.g. `rootfs`).
    pub class: String,
    /// Block device or file the image is written to.
    pub device: PathBuf,
}

/// Settings of A/B OS updates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtaConfig {
    /// Compatible string bundles must carry (board model and revision). Unset: OTA is off.
    pub compatible: Option<String>,
    /// Trusted bundle signing keys: a `.pub` file or a directory of them.
    /// Default `/etc/tether/keyring`.
    pub keyring: PathBuf,
    /// Boot environment backend. Default `uboot`.
    pub bootloader: Bootloader,
    /// fw_env.config of the U-Boot environment. Default `/etc/fw_env.config`.
    pub uboot_config: PathBuf,
    /// GRUB environment block. Default `/boot/grub/grubenv`.
    pub grub_env: PathBuf,
    /// Environment file of the `file` backend. Default `<state_dir>/bootenv`.
    pub env_file: Option<PathBuf>,
    /// The slots (at least two of each class that is updated).
    pub slots: Vec<SlotConfig>,
    /// Boot attempts a newly installed slot gets before the bootloader falls back. Default 3.
    pub tries: u32,
    /// Command whose exit status 0 means the new slot works (run by `/bin/sh -c` after boot).
    /// Default: none (booting is enough).
    pub health_check: Option<String>,
    /// Time the health check may take. Default 120s.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Where the booted slot is read from (`tether.slot=` or `rauc.slot=`). Default
    /// `/proc/cmdline`.
    pub cmdline: PathBuf,
    /// Command that reboots into the new slot. Default `systemctl reboot || reboot`.
    pub reboot_command: String,
    /// Allow installing a version lower than the booted one, or any version while the booted
    /// one is unknown. Default false.
    pub allow_downgrade: bool,
    /// Version of the OS the board was flashed with, taken as the running version while the
    /// booted slot has none recorded (it was not installed by the agent). Unset: such a board
    /// refuses bundles unless downgrades are allowed. Default unset.
    pub factory_version: Option<String>,
}

impl Default for OtaConfig {
    fn default() -> Self {
        Self {
            compatible: None,
            keyring: PathBuf::from("/etc/tether/keyring"),
            bootloader: Bootloader::Uboot,
            uboot_config: PathBuf::from("/etc/fw_env.config"),
            grub_env: PathBuf::from("/boot/grub/grubenv"),
            env_file: None,
            slots: Vec::new(),
            tries: 3,
            health_check: None,
            health_timeout: Duration::from_secs(120),
            cmdline: PathBuf::from("/proc/cmdline"),
            reboot_command: "systemctl reboot || reboot".to_string(),
            allow_downgrade: false,
            factory_version: None,
        }
    }
}

/// Settings of the application supervisor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AppsConfig {
    /// Unix user that lifecycle steps run as. Default: the agent's own user.
    pub user: Option<String>,
    /// Whether steps with `requires_privilege: true` run as root (the agent must be root).
    /// Default true.
    pub allow_privileged: bool,
    /// Time limit of install, startup, shutdown and recover steps without their own `timeout`.
    /// Default 120s.
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
    /// After the shutdown step (or at once without one), how long a stopping component's
    /// processes have between SIGTERM and SIGKILL. Default 10s.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// First restart delay of a failed `run` step; doubles per failure. Default 1s.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest restart delay. Default 60s.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A `run` step that stays up this long counts as a successful run (clears the error
    /// count). Default 10s.
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
    /// Errors without a successful run after which a component is `broken` and no longer
    /// restarted. Default 3.
    pub broken_after: u32,
    /// How long a newly deployed component must stay up before the deployment counts as a
    /// success (a failure within it rolls back). Default 3s.
    #[serde(with = "humantime_serde")]
    pub settle_time: Duration,
    /// Bytes of output kept per component for `agent app logs` (twice this, in two files).
    /// Default 1 MiB.
    pub log_bytes: u64,
    /// Command (run by `/bin/sh -c` as root) that reboots the board for a remote reboot
    /// action. Default `systemctl reboot || reboot`.
    pub reboot_command: String,
}

impl Default for AppsConfig {
    fn default() -> Self {
        Self {
            user: None,
            allow_privileged: true,
            step_timeout: Duration::from_secs(120),
            stop_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(10),
            broken_after: 3,
            settle_time: Duration::from_secs(3),
            log_bytes: 1024 * 1024,
            reboot_command: "systemctl reboot || reboot".to_string(),
        }
    }
}

/// Settings of the telemetry outbox and its upload to the relay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Most records kept while the relay is unreachable; the oldest are dropped beyond. Default 1000000.
    pub max_rows: u64,
    /// Most bytes (topic + payload) kept; the oldest are dropped beyond. Default 256 MiB.
    pub max_bytes: u64,
    /// Largest payload a producer may send, in bytes. Default 256 KiB.
    pub max_payload: usize,
    /// Most records in one upload batch. Default 2000.
    pub batch_records: usize,
    /// Most bytes in one upload batch. Default 1 MiB.
    pub batch_bytes: usize,
    /// Batches sent ahead of the relay's acknowledgements. Default 4.
    pub window: usize,
    /// Local producer socket (newline-delimited JSON). Default `<state_dir>/telemetry.sock`.
    pub socket: Option<PathBuf>,
    /// Permissions of the socket, octal. Default "0660".
    pub socket_mode: String,
    /// How often the built-in collector samples CPU, memory, disks, network, load, uptime and
    /// temperature; `0s` turns it off. Default 60s.
    #[serde(with = "humantime_serde")]
    pub system_metrics_interval: Duration,
    /// systemd units whose journal is followed into the outbox as log records. Default none.
    pub journal_units: Vec<String>,
}

impl TelemetryConfig {
    /// The socket's permission bits (validated when the configuration is loaded).
    pub fn socket_mode_bits(&self) -> u32 {
        u32::from_str_radix(&self.socket_mode, 8).unwrap_or(0o660)
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            max_payload: 256 * 1024,
            batch_records: 2000,
            batch_bytes: 1024 * 1024,
            window: 4,
            socket: None,
            socket_mode: "0660".to_string(),
            system_metrics_interval: Duration::from_secs(60),
            journal_units: Vec::new(),
        }
    }
}

/// Settings of the link to the relay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// SSH keepalive interval: shows that the relay process still answers, and keeps HTTP
    /// proxies from timing the link out. Default: 120s on `ssh://` links, 30s on WebSocket
    /// links (below the 60 s idle timeout of common HTTP load balancers).
    #[serde(default, with = "humantime_serde")]
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalives before the link counts as dead. Default 3.
    pub keepalive_max: u32,
    /// Silence after which the kernel probes the link's TCP connection (it then drops a dead
    /// one within half as long again), without waking the agent; 0s leaves it off. Default 60s.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Time allowed for connecting and the SSH handshake. Default 15s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First reconnect delay. Default 1s.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay. Default 60s.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// More URLs of the enrolled relay: other relays of its cluster, or the same relay over
    /// another transport. The link starts at a random one, moves to the next after a failure
    /// and stays with one that works. Default [] (the enrolled URL only).
    pub relay_urls: Vec<String>,
    /// Local address the link's TCP connections leave from (OpenSSH's `BindAddress`): the
    /// interface of a board with several uplinks. Default: the system's choice.
    pub bind_address: Option<std::net::IpAddr>,
    /// Serve engineers' sessions straight on link channels where the relay can, with no SSH
    /// session inside them; `false` announces the link as agents before did, so every session
    /// goes through the embedded SSH server. Default true.
    pub channel_sessions: bool,
}

/// Settings of the shells the embedded SSH server runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShellConfig {
    /// Unix user sessions run as. Default: the user the agent runs as.
    pub user: Option<String>,
    /// Shell to run. Default: the user's login shell, else /bin/sh.
    pub shell: Option<PathBuf>,
    /// Extra environment for every session.
    pub env: BTreeMap<String, String>,
    /// Environment variables engineers may pass (`*` suffix matches a prefix).
    /// Default ["LANG", "LC_*"].
    pub accept_env: Vec<String>,
}

/// Settings of port forwarding to device-local addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// `host:port` (or `host:*`) targets engineers may reach with `-L` and `-J`.
    /// Default ["127.0.0.1:22"].
    pub allow: Vec<String>,
}

// The section's own default carries the default accept_env, so that a `shell:` section that
// does not set it gets the default too (an explicit empty list means none).
impl Default for ShellConfig {
    fn default() -> Self {
        Self {
            user: None,
            shell: None,
            env: BTreeMap::new(),
            accept_env: default_accept_env(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            link: LinkConfig::default(),
            shell: ShellConfig::default(),
            forward: ForwardConfig::default(),
            telemetry: TelemetryConfig::default(),
            apps: AppsConfig::default(),
            ota: OtaConfig::default(),
            memory: MemoryConfig::default(),
        }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: None,
            keepalive_max: 3,
            tcp_keepalive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(15),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            relay_urls: Vec::new(),
            bind_address: None,
            channel_sessions: true,
        }
    }
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            allow: vec!["127.0.0.1:22".to_string()],
        }
    }
}

fn default_accept_env() -> Vec<String> {
    vec!["LANG".to_string(), "LC_*".to_string()]
}

pub use tether_protocol::config_file::ConfigError;

impl AgentConfig {
    /// Parses configuration text; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: AgentConfig = config_file::parse(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::invalid(path, key, message);
        let link = &self.link;
        if link.keepalive_interval.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                "link.keepalive_interval",
                "must be greater than zero".into(),
            ));
        }
        if link.keepalive_max == 0 {
            return Err(invalid("link.keepalive_max", "must be at least 1".into()));
        }
        if link.connect_timeout.is_zero() {
            return Err(invalid(
                "link.connect_timeout",
                "must be greater than zero".into(),
            ));
        }
        if link.backoff_initial.is_zero() || link.backoff_initial > link.backoff_max {
            return Err(invalid(
                "link.backoff_initial",
                "must be greater than zero and not above link.backoff_max".into(),
            ));
        }
        let t = &self.telemetry;
        for (key, value) in [
            ("telemetry.max_rows", t.max_rows),
            ("telemetry.max_bytes", t.max_bytes),
            ("telemetry.max_payload", t.max_payload as u64),
            ("telemetry.batch_records", t.batch_records as u64),
            ("telemetry.batch_bytes", t.batch_bytes as u64),
            ("telemetry.window", t.window as u64),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than zero".into()));
            }
        }
        if u32::from_str_radix(&t.socket_mode, 8).map_or(true, |m| m > 0o777) {
            return Err(invalid(
                "telemetry.socket_mode",
                format!(
                    "{:?} is not an octal permission like \"0660\"",
                    t.socket_mode
                ),
            ));
        }
        if t.max_payload as u64 > t.max_bytes {
            return Err(invalid(
                "telemetry.max_payload",
                "must not exceed telemetry.max_bytes".into(),
            ));
        }
        if t.batch_bytes > tether_protocol::telemetry::MAX_FRAME / 2 {
            return Err(invalid(
                "telemetry.batch_bytes",
                "must be at most 4 MiB".into(),
            ));
        }
        if !t.system_metrics_interval.is_zero()
            && t.system_metrics_interval < Duration::from_secs(1)
        {
            return Err(invalid(
                "telemetry.system_metrics_interval",
                "must be 0s (off) or at least 1s".into(),
            ));
        }
        for (i, unit) in t.journal_units.iter().enumerate() {
            if unit.is_empty() || unit.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    &format!("telemetry.journal_units[{i}]"),
                    format!("{unit:?} is not a systemd unit name"),
                ));
            }
        }
        let a = &self.apps;
        for (key, value) in [
            ("apps.step_timeout", a.step_timeout),
            ("apps.stop_timeout", a.stop_timeout),
            ("apps.backoff_initial", a.backoff_initial),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero".into()));
            }
        }
        if a.backoff_initial > a.backoff_max {
            return Err(invalid(
                "apps.backoff_initial",
                "must not be above apps.backoff_max".into(),
            ));
        }
        if a.broken_after == 0 {
            return Err(invalid("apps.broken_after", "must be at least 1".into()));
        }
        if let Some(user) = &a.user
            && user.trim().is_empty()
        {
            return Err(invalid("apps.user", "must not be empty".into()));
        }
        let o = &self.ota;
        if o.tries == 0 || o.tries > 255 {
            return Err(invalid("ota.tries", "must be between 1 and 255".into()));
        }
        if let Some(version) = &o.factory_version
            && let Err(e) = semver::Version::parse(version)
        {
            return Err(invalid(
                "ota.factory_version",
                format!("{version:?} is not a semantic version like 1.0.0: {e}"),
            ));
        }
        for (i, slot) in o.slots.iter().enumerate() {
            let ok_name = !slot.name.is_empty()
                && slot
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok_name {
                return Err(invalid(
                    &format!("ota.slots[{i}].name"),
                    format!(
                        "{:?} must be letters, digits or '_' (it becomes BOOT_<name>_LEFT)",
                        slot.name
                    ),
                ));
            }
            if o.slots[..i].iter().any(|s| s.name == slot.name) {
                return Err(invalid(
                    &format!("ota.slots[{i}].name"),
                    format!("{:?} is used by two slots", slot.name),
                ));
            }
            // Slot names are boot names (BOOT_ORDER, BOOT_<name>_LEFT): with a second class
            // nothing says which of its slots belongs to the running boot target, and an
            // update could write the running one.
            if let Some(first) = o.slots.first()
                && slot.class != first.class
            {
                return Err(invalid(
                    &format!("ota.slots[{i}].class"),
                    format!(
                        "{:?} differs from {:?} (ota.slots[0]): the slots are the boot targets of one A/B pair, so all have one class; put a kernel or boot files inside that image",
                        slot.class, first.class
                    ),
                ));
            }
            if o.slots.iter().filter(|s| s.class == slot.class).count() < 2 {
                return Err(invalid(
                    &format!("ota.slots[{i}].class"),
                    format!(
                        "class {:?} needs at least two slots to update one while booted from the other",
                        slot.class
                    ),
                ));
            }
        }
        for (i, entry) in self.forward.allow.iter().enumerate() {
            let ok = entry.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && (port == "*" || port.parse::<u16>().is_ok_and(|p| p > 0))
            });
            if !ok {
                return Err(invalid(
                    &format!("forward.allow[{i}]"),
                    format!("{entry:?} is not host:port or host:*"),
                ));
            }
        }
        if let Some(user) = &self.shell.user
            && user.trim().is_empty()
        {
            return Err(invalid("shell.user", "must not be empty".into()));
        }
        Ok(())
    }
}

/// Loads the configuration file at `path`, which must exist.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    AgentConfig::parse(&config_file::read(path)?, path)
}

/// Loads `path`; a missing file means defaults unless the path was given explicitly.
pub fn load_or_default(path: &Path, explicit: bool) -> Result<AgentConfig, ConfigError> {
    if !explicit && !path.exists() {
        return Ok(AgentConfig::default());
    }
    load(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("/etc/tether/agent.yaml"))
    }

    #[test]
    fn defaults() -> Result<(), ConfigError> {
        let c = parse("")?;
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.forward.allow, vec!["127.0.0.1:22"]);
        assert_eq!(c.shell.accept_env, vec!["LANG", "LC_*"]);
        assert_eq!(c.link.keepalive_interval, None);
        assert_eq!(c.link.tcp_keepalive, Duration::from_secs(60));
        Ok(())
    }

    #[test]
    fn the_example_file_is_valid_and_shows_the_defaults() -> Result<(), ConfigError> {
        let example = include_str!("../../bsp/agent.yaml.example");
        assert_eq!(parse(example)?, AgentConfig::default());
        Ok(())
    }

    #[test]
    fn full_file() -> Result<(), ConfigError> {
        let c = parse(
            "state_dir: /data/tether\nlink:\n  keepalive_interval: 20s\n  keepalive_max: 4\n  tcp_keepalive: 0s\n  connect_timeout: 5s\n  \
             backoff_initial: 500ms\n  backoff_max: 2m\nshell:\n  user: operator\n  shell: /bin/bash\n  env:\n    \
             SITE: lab\n  accept_env: []\nforward:\n  allow: ['127.0.0.1:80', 'localhost:*']\n",
        )?;
        assert_eq!(c.state_dir, PathBuf::from("/data/tether"));
        assert_eq!(c.link.backoff_max, Duration::from_secs(120));
        assert_eq!(c.link.keepalive_interval, Some(Duration::from_secs(20)));
        assert_eq!(c.link.tcp_keepalive, Duration::ZERO);
        assert_eq!(c.shell.user.as_deref(), Some("operator"));
        assert_eq!(c.shell.env.get("SITE").map(String::as_str), Some("lab"));
        assert!(c.shell.accept_env.is_empty());
        assert_eq!(c.forward.allow.len(), 2);
        Ok(())
    }

    #[test]
    fn accept_env_defaults_whatever_the_comments_say() -> Result<(), ConfigError> {
        // Found by a property test: the default used to be applied only when the text did not
        // contain "accept_env" at all, so this commented-out line turned it into an empty list.
        let c = parse("# accept_env: [\"LANG\"]\nshell:\n  user: bob\n")?;
        assert_eq!(c.shell.accept_env, vec!["LANG", "LC_*"]);
        let c = parse("shell:\n  user: bob\n  # accept_env: []\n")?;
        assert_eq!(c.shell.accept_env, vec!["LANG", "LC_*"]);
        let c = parse("shell:\n  accept_env: []\n")?;
        assert!(c.shell.accept_env.is_empty());
        Ok(())
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let msg = |t: &str| parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        let e = msg("link:\n  keepalive_interval: 5s\n  bogus_key: 1\n");
        assert!(
            e.contains("/etc/tether/agent.yaml") && e.contains("bogus_key") && e.contains("line 3"),
            "{e}"
        );
        let e = msg("link:\n  keepalive_interval: soon\n");
        assert!(
            e.contains("line 2") && e.contains("keepalive_interval"),
            "{e}"
        );
        let e = msg("forward:\n  allow: ['nohost']\n");
        assert!(e.contains("forward.allow[0]"), "{e}");
        let e = msg("link:\n  backoff_initial: 2m\n  backoff_max: 1m\n");
        assert!(e.contains("link.backoff_initial"), "{e}");
        let e = msg("ota:\n  factory_version: '1.0'\n");
        assert!(
            e.contains("ota.factory_version") && e.contains("\"1.0\" is not a semantic version"),
            "{e}"
        );
    }

    #[test]
    fn slots_are_one_ab_pair_of_one_class() {
        let msg = |t: &str| parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        let slots = "ota:\n  slots:\n    - { name: A, class: rootfs, device: /dev/a }\n    - { name: B, class: rootfs, device: /dev/b }\n";
        assert_eq!(msg(slots), "");
        let e = msg(&format!(
            "{slots}    - {{ name: KA, class: kernel, device: /dev/ka }}\n    - {{ name: KB, class: kernel, device: /dev/kb }}\n"
        ));
        assert!(e.contains("ota.slots[2].class"), "{e}");
        assert!(e.contains("\"kernel\" differs from \"rootfs\""), "{e}");
    }

    #[test]
    fn missing_default_file_means_defaults() -> Result<(), ConfigError> {
        let dir = std::env::temp_dir().join("tether-no-such-config.yaml");
        assert_eq!(load_or_default(&dir, false)?, AgentConfig::default());
        assert!(matches!(
            load_or_default(&dir, true),
            Err(ConfigError::Io { .. })
        ));
        Ok(())
    }
}
