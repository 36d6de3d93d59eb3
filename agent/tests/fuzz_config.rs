//! Property tests of the agent's configuration file (`tether_agent::config`): any text is a
//! configuration or an error naming the file, never a panic; every valid configuration
//! written out as YAML parses back unchanged; a comment, whatever it says, does not change
//! what a file means.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=100000 cargo test -p tether-agent --test fuzz_config`.

mod common;

use common::fail;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use tether_agent::config::{AgentConfig, Bootloader, SlotConfig};

/// Cases per property: 256. A case parses and serializes a configuration of some forty keys,
/// about a millisecond in a debug build, so each property takes a second or so on a 2-core
/// machine and the file stays well under the 30 s budget of a bounded run.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    common::config(CASES)
}

const FILE: &str = "/etc/tether/agent.yaml";

fn parse(text: &str) -> Result<AgentConfig, String> {
    AgentConfig::parse(text, Path::new(FILE)).map_err(|e| e.to_string())
}

/// Printable text for string values.
fn text() -> impl Strategy<Value = String> {
    "[ -~]{1,12}"
}

fn path() -> impl Strategy<Value = PathBuf> {
    "/[a-z0-9._-]{1,8}(/[a-z0-9._-]{1,8}){0,2}".prop_map(PathBuf::from)
}

/// A duration of at least a second, as humantime writes and reads them.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..1_000_000).prop_map(Duration::from_secs),
        (1_000u64..u64::from(u32::MAX)).prop_map(Duration::from_millis),
    ]
}

/// Any configuration that passes the agent's checks: starts from the defaults and changes
/// a sample of keys in every section, within their rules.
fn valid_config() -> impl Strategy<Value = AgentConfig> {
    let link = (duration(), 1u32.., duration(), duration(), duration());
    let telemetry = (
        (
            1u64..,
            1_000u64..,
            1usize..1_000,
            1usize..,
            1usize..4 << 20,
            1usize..,
        ),
        prop::option::of(path()),
        0u32..0o1000,
        prop_oneof![Just(Duration::ZERO), duration()],
        prop::collection::vec("[a-z0-9@._-]{1,12}", 0..3),
    );
    let apps = (
        prop::option::of("[a-z_]{1,8}"),
        any::<bool>(),
        (duration(), duration(), duration(), duration(), duration()),
        1u32..,
        any::<u64>(),
        text(),
    );
    let slots = prop::collection::btree_map(
        "[A-Za-z0-9_]{1,4}",
        (prop::sample::select(&["rootfs", "kernel"][..]), path()),
        0..4,
    );
    let ota = (
        prop::option::of("[!-~]{1,16}"),
        prop::sample::select(&[Bootloader::Uboot, Bootloader::Grub, Bootloader::File][..]),
        prop::option::of(path()),
        slots,
        1u32..=255,
        prop::option::of(text()),
        any::<bool>(),
    );
    let shell = (
        prop::option::of("[a-z_]{1,8}"),
        prop::option::of(path()),
        prop::collection::btree_map("[A-Z_]{1,6}", text(), 0..3),
        prop::collection::vec("[A-Z_]{1,6}\\*?", 0..3),
    );
    let forward = prop::collection::vec(
        (
            "[a-z0-9.]{1,12}",
            prop_oneof![Just("*".to_owned()), (1u16..).prop_map(|p| p.to_string())],
        )
            .prop_map(|(host, port)| format!("{host}:{port}")),
        0..3,
    );
    (path(), link, telemetry, apps, ota, shell, forward).prop_map(
        |(state_dir, link, telemetry, apps, ota, shell, forward)| {
            let mut c = AgentConfig {
                state_dir,
                ..AgentConfig::default()
            };
            let (interval, max, connect, backoff_a, backoff_b) = link;
            c.link.keepalive_interval = Some(interval);
            c.link.tcp_keepalive = connect;
            c.link.keepalive_max = max;
            c.link.connect_timeout = connect;
            c.link.backoff_initial = backoff_a.min(backoff_b);
            c.link.backoff_max = backoff_a.max(backoff_b);

            let ((rows, bytes, payload, records, batch_bytes, window), socket, mode, metrics, units) =
                telemetry;
            c.telemetry.max_rows = rows;
            c.telemetry.max_bytes = bytes;
            c.telemetry.max_payload = payload;
            c.telemetry.batch_records = records;
            c.telemetry.batch_bytes = batch_bytes;
            c.telemetry.window = window;
            c.telemetry.socket = socket;
            c.telemetry.socket_mode = format!("{mode:04o}");
            c.telemetry.system_metrics_interval = metrics;
            c.telemetry.journal_units = units;

            let (user, privileged, (step, stop, backoff_a, backoff_b, settle), broken, log, reboot) =
                apps;
            c.apps.user = user;
            c.apps.allow_privileged = privileged;
            c.apps.step_timeout = step;
            c.apps.stop_timeout = stop;
            c.apps.backoff_initial = backoff_a.min(backoff_b);
            c.apps.backoff_max = backoff_a.max(backoff_b);
            c.apps.settle_time = settle;
            c.apps.broken_after = broken;
            c.apps.log_bytes = log;
            c.apps.reboot_command = reboot;

            let (compatible, bootloader, env_file, slots, tries, health, downgrade) = ota;
            c.ota.compatible = compatible;
            c.ota.bootloader = bootloader;
            c.ota.env_file = env_file;
            // Every class needs two slots: keep only the classes that have them.
            let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
            for (class, _) in slots.values() {
                *by_class.entry(class).or_default() += 1;
            }
            c.ota.slots = slots
                .iter()
                .filter(|(_, (class, _))| by_class[class] >= 2)
                .map(|(name, (class, device))| SlotConfig {
                    name: name.clone(),
                    class: (*class).to_owned(),
                    device: device.clone(),
                })
                .collect();
            c.ota.tries = tries;
            c.ota.health_check = health;
            c.ota.allow_downgrade = downgrade;

            let (user, shell_path, env, accept_env) = shell;
            c.shell.user = user;
            c.shell.shell = shell_path;
            c.shell.env = env;
            c.shell.accept_env = accept_env;
            c.forward.allow = forward;
            c
        },
    )
}

/// Short configuration files of a few sections, each setting a key or two and leaving the
/// rest to the defaults.
fn small_file() -> impl Strategy<Value = String> {
    prop::sample::subsequence(
        &[
            "state_dir: /var/lib/t\n",
            "shell:\n  user: bob\n",
            "shell:\n  env: { A: b }\n",
            "link:\n  keepalive_max: 5\n",
            "telemetry:\n  socket_mode: \"0640\"\n",
            "apps:\n  broken_after: 2\n",
            "forward:\n  allow: [\"127.0.0.1:80\"]\n",
            "ota:\n  tries: 5\n",
        ][..],
        0..=4,
    )
    .prop_map(|sections| {
        // A section may appear once: keep the first of each.
        let mut seen = Vec::new();
        let mut text = String::new();
        for s in sections {
            let key = s.split(':').next().unwrap_or_default();
            if !seen.contains(&key) {
                seen.push(key);
                text.push_str(s);
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(config())]

    /// Any text is a configuration or an error naming the file.
    #[test]
    fn arbitrary_text_is_parsed_or_refused_by_name(
        text in prop_oneof![
            ".{0,120}",
            "((link|shell|ota|apps|telemetry|forward|accept_env|slots|tries|[a-z_]{1,6}):[ \n]{1,3}[a-z0-9:.\\[\\]{}\"'#*-]{0,12}\n {0,4}){0,6}",
        ]
    ) {
        if let Err(e) = parse(&text) {
            prop_assert!(e.contains(FILE), "{e}");
        }
    }

    /// Every valid configuration, written out as YAML, parses back unchanged.
    #[test]
    fn configurations_round_trip(c in valid_config()) {
        let yaml = serde_saphyr::to_string(&c).map_err(fail)?;
        let parsed = parse(&yaml).map_err(|e| fail(format!("{e}\n--- from ---\n{yaml}")))?;
        prop_assert_eq!(parsed, c, "{}", yaml);
    }

    /// A comment line, whatever it says and wherever it stands, does not change what a file
    /// means.
    #[test]
    fn comments_do_not_change_the_meaning(
        file in small_file(),
        comment in prop_oneof![
            Just("accept_env: [\"LANG\"]".to_owned()),
            Just("shell: { accept_env: [] }".to_owned()),
            "[ -~]{0,30}",
        ],
        at in any::<usize>(),
    ) {
        let plain = parse(&file).map_err(|e| fail(format!("{e}\n--- from ---\n{file}")))?;
        let mut lines: Vec<&str> = file.lines().collect();
        let comment = format!("# {comment}");
        lines.insert(at % (lines.len() + 1), &comment);
        let commented = lines.join("\n");
        let parsed = parse(&commented).map_err(|e| fail(format!("{e}\n--- from ---\n{commented}")))?;
        prop_assert_eq!(parsed, plain, "{}", commented);
    }
}
