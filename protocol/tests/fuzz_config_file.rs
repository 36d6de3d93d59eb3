//! Property tests of the YAML configuration reader shared by the agent and the relay
//! (`tether_protocol::config_file`): any text parses to a configuration or an error naming the
//! file, never a panic; blank text means the defaults; a configuration that is written out
//! parses back unchanged; comments never change what a file means.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=100000 cargo test -p tether-protocol --test fuzz_config_file`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::fail;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tether_protocol::config_file::{self, ConfigError};

/// Cases per property: 512. A case parses a few lines of YAML, well under a millisecond in a
/// debug build, so each property takes about a second on a 2-core machine and the file stays
/// well under the 30 s budget of a bounded run.
const CASES: u32 = 512;

/// A configuration shaped like the programs' own: nested sections, defaults, strict keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Sample {
    name: String,
    count: u32,
    ratio: f64,
    enabled: bool,
    tags: Vec<String>,
    env: BTreeMap<String, String>,
    section: Section,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Section {
    path: Option<String>,
    limit: u64,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            name: "tether".into(),
            count: 3,
            ratio: 0.5,
            enabled: true,
            tags: vec!["a".into()],
            env: BTreeMap::new(),
            section: Section::default(),
        }
    }
}

fn parse(text: &str) -> Result<Sample, ConfigError> {
    config_file::parse(text, Path::new("/etc/tether/sample.yaml"))
}

/// Text for string values: printable, as YAML allows in a stream.
fn text() -> impl Strategy<Value = String> {
    "[ -~\u{a0}-\u{d7ff}]{0,12}"
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        text(),
        any::<u32>(),
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        any::<bool>(),
        prop::collection::vec(text(), 0..3),
        prop::collection::btree_map("[A-Z_]{1,6}", text(), 0..3),
        (prop::option::of(text()), any::<u64>()),
    )
        .prop_map(
            |(name, count, ratio, enabled, tags, env, (path, limit))| Sample {
                name,
                count,
                ratio,
                enabled,
                tags,
                env,
                section: Section { path, limit },
            },
        )
}

proptest! {
    #![proptest_config(common::config(CASES))]

    /// Any text is a configuration or an error naming the file.
    #[test]
    fn arbitrary_text_is_parsed_or_refused_by_name(text in prop_oneof![".{0,120}", "[a-z_:\\[\\]{}#\n \t\"'-]{0,80}"]) {
        if let Err(e) = parse(&text) {
            prop_assert!(e.to_string().contains("/etc/tether/sample.yaml"), "{e}");
        }
    }

    /// Blank text is the defaults.
    #[test]
    fn blank_text_is_the_defaults(text in "[ \t\n\r]{0,10}") {
        prop_assert_eq!(parse(&text).map_err(fail)?, Sample::default());
    }

    /// A configuration written out as YAML parses back unchanged.
    #[test]
    fn configurations_round_trip(s in sample()) {
        let yaml = serde_saphyr::to_string(&s).map_err(fail)?;
        let parsed = parse(&yaml).map_err(|e| fail(format!("{e}\n--- from ---\n{yaml}")))?;
        prop_assert_eq!(parsed, s, "{}", yaml);
    }

    /// Comment lines (whatever they say) and trailing comments do not change a file's meaning.
    #[test]
    fn comments_do_not_change_the_meaning(s in sample(), comment in "[ -~]{0,30}", at in any::<usize>()) {
        let yaml = serde_saphyr::to_string(&s).map_err(fail)?;
        let mut lines: Vec<String> = yaml.lines().map(str::to_owned).collect();
        let at = at % (lines.len() + 1);
        lines.insert(at, format!("# {comment}"));
        let commented = lines.join("\n");
        let parsed = parse(&commented).map_err(|e| fail(format!("{e}\n--- from ---\n{commented}")))?;
        prop_assert_eq!(parsed, s, "{}", commented);
    }
}
