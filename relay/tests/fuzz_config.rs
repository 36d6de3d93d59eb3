//! Property tests of the relay's configuration file (`tether_relay::config`): any text is a
//! configuration or an error naming the file, never a panic; every valid configuration
//! written out as YAML parses back unchanged; comments, and sections left with only comments,
//! do not change what a file means.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=100000 cargo test -p tether-relay --test fuzz_config`.

mod common;

use common::fail;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use tether_relay::config::{LimitsConfig, RelayConfig, TlsConfig};

/// Cases per property: 512. A case parses a short YAML file, well under a millisecond in a
/// debug build, so each property takes about a second on a 2-core machine and the file stays
/// well under the 30 s budget of a bounded run.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    common::config(CASES)
}

const FILE: &str = "/etc/tether/relay.yaml";

fn parse(text: &str) -> Result<RelayConfig, String> {
    RelayConfig::parse(text, Path::new(FILE)).map_err(|e| e.to_string())
}

fn path() -> impl Strategy<Value = PathBuf> {
    "/?[a-z0-9._ -]{1,12}(/[a-z0-9._-]{1,8}){0,2}".prop_map(PathBuf::from)
}

/// An address as a configuration file can write it (no IPv6 flow label or scope).
fn addr() -> impl Strategy<Value = SocketAddr> {
    (any::<std::net::IpAddr>(), any::<u16>()).prop_map(SocketAddr::from)
}

/// A duration as humantime writes and reads them: whole nanoseconds, more than zero.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..100_000).prop_map(Duration::from_secs),
        (1u64..u64::from(u32::MAX)).prop_map(Duration::from_millis),
        (1u64..).prop_map(Duration::from_nanos),
    ]
}

/// Abuse limits within their rules: a window and a number of tries above zero, any counts
/// (0 is "no limit") and any idle timeout (0s is "never").
fn limits() -> impl Strategy<Value = LimitsConfig> {
    (
        (any::<u32>(), duration(), 1u32..),
        (
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
        ),
        (any::<usize>(), any::<usize>(), any::<usize>()),
        prop_oneof![Just(Duration::ZERO), duration()],
    )
        .prop_map(|(auth, handshakes, sessions, idle)| {
            let mut l = LimitsConfig::default();
            (
                l.auth_failures_per_source,
                l.auth_failure_window,
                l.max_auth_tries,
            ) = auth;
            (
                l.max_handshakes,
                l.max_handshakes_per_source,
                l.max_http_connections,
                l.max_http_connections_per_source,
            ) = handshakes;
            (
                l.sessions_per_device,
                l.sessions_per_engineer,
                l.channels_per_connection,
            ) = sessions;
            l.session_idle_timeout = idle;
            l
        })
}

/// Any configuration that passes the relay's checks. It starts from the defaults, so that a
/// section added later is at least round-tripped with its default values.
fn valid_config() -> impl Strategy<Value = RelayConfig> {
    (
        path(),
        (addr(), duration(), 1u32..),
        (addr(), prop::option::of((path(), path())), any::<bool>()),
        prop::option::of(path()),
        any::<bool>(),
        limits(),
    )
        .prop_map(|(data_dir, ssh, http, store, record_input, limits)| {
            let mut c = RelayConfig {
                data_dir,
                ..RelayConfig::default()
            };
            (c.ssh.listen, c.ssh.keepalive_interval, c.ssh.keepalive_max) = ssh;
            let (listen, tls, trust_forwarded_for) = http;
            c.http.listen = listen;
            c.http.tls = tls.map(|(cert, key)| TlsConfig { cert, key });
            c.http.trust_forwarded_for = trust_forwarded_for;
            c.store.path = store;
            c.sessions.record_input = record_input;
            c.limits = limits;
            c
        })
}

proptest! {
    #![proptest_config(config())]

    /// Any text is a configuration or an error naming the file.
    #[test]
    fn arbitrary_text_is_parsed_or_refused_by_name(
        text in prop_oneof![
            ".{0,120}",
            "((ssh|http|store|sessions|limits|record_input|max_auth_tries|tls|data_dir|listen|path|keepalive_max|keepalive_interval|[a-z]{1,3}):[ \n]{1,3}[a-z0-9:.\\[\\]{}\"'#-]{0,12}\n {0,4}){0,6}",
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

    /// A comment line anywhere, and a section holding only comments, change nothing.
    #[test]
    fn comments_do_not_change_the_meaning(
        c in valid_config(),
        comment in "[ -~]{0,30}",
        at in any::<usize>(),
        empty in prop::sample::select(&["ssh", "http", "store", "sessions", "limits"][..]),
    ) {
        let yaml = serde_saphyr::to_string(&c).map_err(fail)?;
        let mut lines: Vec<String> = yaml.lines().map(str::to_owned).collect();
        let at = at % (lines.len() + 1);
        lines.insert(at, format!("# {comment}"));
        let commented = lines.join("\n");
        let parsed = parse(&commented).map_err(|e| fail(format!("{e}\n--- from ---\n{commented}")))?;
        prop_assert_eq!(parsed, c.clone(), "{}", commented);

        let section_only_comments = format!("{empty}:\n  # {comment}\n");
        prop_assert_eq!(parse(&section_only_comments).map_err(fail)?, RelayConfig::default());
    }
}
