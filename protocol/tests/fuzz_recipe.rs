//! Property tests of recipes (`tether_protocol::recipe`): any text parses to a recipe or an
//! error naming the file, never a panic; a recipe that parses serializes (YAML and JSON, as the
//! [`Recipe`] documentation promises) to text that parses to the same recipe; damaged recipe
//! text is refused or parses consistently; placeholders, `--set` assignments, configuration
//! merges and the start order keep their documented properties on arbitrary input.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=20000 cargo test -p tether-protocol --test fuzz_recipe`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fail, json_value};
use proptest::prelude::*;
use serde_json::{Value, json};
use tether_protocol::recipe::{self, Interpolation, Recipe};

/// Cases per property: 256 keeps each property within a few seconds in a debug build on a
/// 2-core machine (parsing and re-serializing a recipe is the costly part), and the file well
/// under the 30 s budget of a bounded run.
const CASES: u32 = 256;

const SHA: &str = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b";

/// Parses as a file named `fuzz.yaml`; the error as its message.
fn parse(text: &str) -> Result<Recipe, String> {
    recipe::parse(text, Path::new("fuzz.yaml")).map_err(|e| e.to_string())
}

/// A value from `good`; unless `valid`, sometimes one from `bad`, arbitrary text or any JSON.
fn pick(
    good: &'static [&'static str],
    bad: &'static [&'static str],
    valid: bool,
) -> BoxedStrategy<Value> {
    let good = prop::sample::select(good).prop_map(|s| Value::String(s.to_owned()));
    if valid {
        return good.boxed();
    }
    prop_oneof![
        6 => good,
        2 => prop::sample::select(bad).prop_map(|s| Value::String(s.to_owned())),
        1 => ".{0,12}".prop_map(Value::String),
        1 => json_value(),
    ]
    .boxed()
}

/// Inserts the `Some` entries into a JSON object.
fn object(entries: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        entries
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
    )
}

const NAME: &str = "com.example.hello";
const DEPENDENCIES: &[&str] = &["com.example.base", "org.a-b.c1", "x.y"];
const BAD_NAMES: &[&str] = &["com", "Com.x", "a..b", "-a.b", NAME];
const VERSIONS: &[&str] = &["1.0.0", " 2.3.4 ", "0.1.0-rc.1+build.5"];
const BAD_VERSIONS: &[&str] = &["1.2", "v1", ""];
const REQUIREMENTS: &[&str] = &["*", ">=1.0.0, <2.0.0", "^1.2", "=0.1.0-rc.1", "~1"];
const BAD_REQUIREMENTS: &[&str] = &[">", "1.x.y", ""];
const SCRIPTS: &[&str] = &[
    "exec ./hello",
    "echo {configuration:/port} {work:path} {artifacts:path} {artifacts:unpacked_path} {device:id}",
    "echo ${HOME} { a; b; } '{print $1}' {{literal}} }}",
    "echo {com.example.base:configuration:/url} {x.y:configuration:/a~1b}",
    "line one\n  line two\n",
    "  spaced  ",
];
const BAD_SCRIPTS: &[&str] = &[
    "echo {artifacts:nope}",
    "echo {configuration:port}",
    "echo {configuration:/~2}",
    "echo {com.undeclared:configuration:/a}",
    "  ",
    "a\0b",
];
const TIMEOUTS: &[&str] = &["30s", "5m", "1h 30m", " 2s ", "1ms", "3days"];
const BAD_TIMEOUTS: &[&str] = &["0s", "soon", "-1s"];
const SKIP_IFS: &[&str] = &[
    "exists /etc/done",
    "onpath python3",
    "  exists   a b ",
    "exists {work:path}/x",
];
const BAD_SKIP_IFS: &[&str] = &["onpath a b", "never", "exists", "exists a\0"];
/// URIs whose file names all differ, so that any subset is valid together.
const URIS: &[&str] = &[
    "https://example.com/dl/tool.bin?x=1",
    "file:///opt/hello.tar.gz",
    "hello.zip",
    "relay:sha256:3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b",
    "https://example.com/a/b/c.d#frag",
];
const BAD_URIS: &[&str] = &[
    "http://example.com/a",
    "file://relative",
    "file:///dir/",
    "ftp://x/y",
    "a/b",
    "https://",
    "https://host/",
    "two words",
];

/// A lifecycle step: a bare script or a mapping with any of its keys.
fn step(valid: bool) -> impl Strategy<Value = Value> {
    let timeout = prop_oneof![
        pick(TIMEOUTS, BAD_TIMEOUTS, valid),
        (1u64..).prop_map(Value::from),
        (1e-3f64..1e12).prop_map(Value::from),
    ];
    let env_name = if valid {
        prop::sample::select(&["PORT", "_X", "A1"][..])
            .prop_map(str::to_owned)
            .boxed()
    } else {
        "[A-Za-z0-9_-]{0,4}".boxed()
    };
    let env = prop::collection::btree_map(
        env_name,
        pick(
            &["1", "{configuration:/port}", "plain"],
            &["{bad:x}"],
            valid,
        ),
        0..3,
    );
    prop_oneof![
        pick(SCRIPTS, BAD_SCRIPTS, valid),
        (
            pick(SCRIPTS, BAD_SCRIPTS, valid),
            prop::option::of(timeout),
            prop::option::of(env),
            prop::option::of(any::<bool>()),
            prop::option::of(pick(SKIP_IFS, BAD_SKIP_IFS, valid)),
        )
            .prop_map(|(script, timeout, env, privileged, skip_if)| {
                object(vec![
                    ("script", Some(script)),
                    ("timeout", timeout),
                    ("env", env.map(|e| json!(e))),
                    ("requires_privilege", privileged.map(Value::Bool)),
                    ("skip_if", skip_if),
                ])
            }),
    ]
}

fn artifacts(valid: bool) -> impl Strategy<Value = Vec<Value>> {
    let one = move |uri: Value| {
        (
            pick(
                &[SHA],
                &[
                    "ABC",
                    "3A7BD3E2360A3D29EEA436FCFB7E44C735D117C42D1C1835420B6B9942DD4F1B",
                ],
                valid,
            ),
            prop::option::of(pick(&["tar.gz", "zip"], &["rar"], valid)),
            prop::option::of(pick(
                &["0755", "0o640", "7777", "0"],
                &["10000", "9", "0o"],
                valid,
            )),
        )
            .prop_map(move |(sha256, unarchive, mode)| {
                object(vec![
                    ("uri", Some(uri.clone())),
                    ("sha256", Some(sha256)),
                    ("unarchive", unarchive),
                    ("mode", mode),
                ])
            })
    };
    let uris: BoxedStrategy<Vec<Value>> = if valid {
        prop::sample::subsequence(URIS, 0..=URIS.len())
            .prop_map(|u| u.into_iter().map(|s| Value::String(s.to_owned())).collect())
            .boxed()
    } else {
        prop::collection::vec(pick(URIS, BAD_URIS, false), 0..3).boxed()
    };
    uris.prop_flat_map(move |uris| uris.into_iter().map(one).collect::<Vec<_>>())
}

fn manifest(valid: bool) -> impl Strategy<Value = Value> {
    let steps: &'static [&'static str] = if valid {
        &["install", "run", "shutdown", "recover"]
    } else {
        &["install", "startup", "run", "shutdown", "recover"]
    };
    let lifecycle = (
        prop::option::of(prop::collection::btree_map(
            "[A-Z_]{1,4}",
            pick(&["hi", "8080"], &["{x:y}"], valid),
            0..3,
        )),
        prop::collection::btree_map(prop::sample::select(steps), step(valid), 0..4),
    )
        .prop_map(|(setenv, steps)| {
            let mut l = object(vec![("setenv", setenv.map(|s| json!(s)))]);
            if let Value::Object(m) = &mut l {
                for (name, s) in steps {
                    m.insert(name.to_owned(), s);
                }
            }
            l
        });
    (
        prop::option::of((
            pick(&["linux", "*"], &["windows"], valid),
            pick(
                &["x86_64", "aarch64", "arm", "riscv64", "*"],
                &["x86"],
                valid,
            ),
        )),
        artifacts(valid),
        prop::option::of(lifecycle),
    )
        .prop_map(|(platform, artifacts, lifecycle)| {
            object(vec![
                (
                    "platform",
                    platform.map(|(os, arch)| json!({"os": os, "arch": arch})),
                ),
                (
                    "artifacts",
                    (!artifacts.is_empty()).then_some(Value::Array(artifacts)),
                ),
                ("lifecycle", lifecycle),
            ])
        })
}

/// A recipe document: valid when `valid`, else close to valid with some wrong values.
fn recipe_doc(valid: bool) -> impl Strategy<Value = Value> {
    let configuration = if valid {
        prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed()
    } else {
        json_value().boxed()
    };
    // The scripts may refer to com.example.base and x.y, so a valid recipe declares all
    // three dependencies; a nearly valid one any of them.
    let deps = (
        prop::sample::subsequence(DEPENDENCIES, if valid { 3..=3 } else { 0..=3 }),
        prop::collection::vec(
            (
                prop::option::of(pick(REQUIREMENTS, BAD_REQUIREMENTS, valid)),
                prop::option::of(pick(&["hard", "soft"], &["weak"], valid)),
            ),
            3,
        ),
    )
        .prop_map(|(names, specs)| names.into_iter().zip(specs).collect::<Vec<_>>());
    (
        pick(&[NAME], BAD_NAMES, valid),
        pick(VERSIONS, BAD_VERSIONS, valid),
        prop::option::of(".{0,20}"),
        prop::option::of(configuration),
        deps,
        prop::collection::vec(manifest(valid), if valid { 1..3 } else { 0..3 }),
    )
        .prop_map(
            |(name, version, description, configuration, deps, manifests)| {
                let deps: serde_json::Map<String, Value> = deps
                    .into_iter()
                    .map(|(n, (version, kind))| {
                        (
                            n.to_owned(),
                            object(vec![("version", version), ("type", kind)]),
                        )
                    })
                    .collect();
                object(vec![
                    ("name", Some(name)),
                    ("version", Some(version)),
                    ("description", description.map(Value::String)),
                    ("configuration", configuration),
                    ("dependencies", Some(Value::Object(deps))),
                    ("manifests", Some(Value::Array(manifests))),
                ])
            },
        )
}

/// A recipe document as text: YAML as the serializer writes it, or JSON (which is YAML too).
fn recipe_text(valid: bool) -> impl Strategy<Value = String> {
    (recipe_doc(valid), any::<bool>()).prop_filter_map("serializable", |(doc, as_json)| {
        if as_json {
            // JSON leaves DEL and the C1 controls raw, which YAML does not allow in a stream.
            let text = serde_json::to_string_pretty(&doc).ok()?;
            Some(
                text.chars()
                    .map(|c| match c {
                        '\u{7f}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}' => {
                            format!("\\u{:04x}", u32::from(c))
                        }
                        c => c.to_string(),
                    })
                    .collect(),
            )
        } else {
            serde_saphyr::to_string(&doc).ok()
        }
    })
}

/// Parses `text`; a recipe that parses must serialize to YAML and to JSON that parse back to
/// the same recipe. Errors must name the file.
fn check_parse(text: &str) -> Result<Option<Recipe>, TestCaseError> {
    let r = match parse(text) {
        Ok(r) => r,
        Err(e) => {
            prop_assert!(e.contains("fuzz.yaml"), "{e}");
            return Ok(None);
        }
    };
    let yaml = serde_saphyr::to_string(&r).map_err(fail)?;
    let again = parse(&yaml).map_err(|e| fail(format!("{e}\n--- serialized as ---\n{yaml}")))?;
    prop_assert_eq!(&again, &r, "YAML:\n{}", yaml);
    let json = serde_json::to_string(&r).map_err(fail)?;
    let again: Recipe =
        serde_json::from_str(&json).map_err(|e| fail(format!("{e}\n--- as ---\n{json}")))?;
    prop_assert_eq!(&again, &r, "JSON:\n{}", json);
    Ok(Some(r))
}

/// A damaged recipe text: a character replaced, a line dropped, or the text cut.
fn damage(text: &str, at: usize, how: u8, with: char) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return with.to_string();
    }
    let at = at % chars.len();
    match how % 3 {
        0 => {
            let mut c = chars;
            c[at] = with;
            c.into_iter().collect()
        }
        1 => {
            let lines: Vec<&str> = text.lines().collect();
            let drop = at % lines.len().max(1);
            lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, l)| format!("{l}\n"))
                .collect()
        }
        _ => chars[..at].iter().collect(),
    }
}

proptest! {
    #![proptest_config(common::config(CASES))]

    /// Arbitrary text never panics the parser, and what it accepts round-trips.
    #[test]
    fn arbitrary_text_parses_consistently(text in ".{0,200}") {
        check_parse(&text)?;
    }

    /// Valid recipe documents parse, and the recipe round-trips through YAML and JSON.
    #[test]
    fn valid_recipes_parse_and_round_trip(text in recipe_text(true)) {
        let parsed = check_parse(&text)?;
        prop_assert!(parsed.is_some(), "refused: {:?}\n{}", parse(&text).err(), text);
    }

    /// Recipe documents with wrong values here and there parse to a recipe that round-trips,
    /// or to an error naming the file.
    #[test]
    fn nearly_valid_recipes_parse_consistently(text in recipe_text(false)) {
        check_parse(&text)?;
    }

    /// Damaged recipe text is refused or parses to a recipe that round-trips.
    #[test]
    fn damaged_recipes_are_refused_or_consistent(
        text in recipe_text(true),
        at in any::<usize>(),
        how in any::<u8>(),
        with in prop_oneof![Just('{'), Just(':'), Just('\n'), Just(' '), Just('"'), any::<char>()],
    ) {
        check_parse(&damage(&text, at, how, with))?;
    }

    /// Interpolation never panics; text without braces comes out unchanged, and doubled braces
    /// come out single.
    #[test]
    fn interpolation_of_arbitrary_text(text in ".{0,80}", plain in "[^{}]{0,40}", config in json_value()) {
        let deps = BTreeMap::from([("com.example.base".to_owned(), json!({"url": "u"}))]);
        let with = Interpolation {
            artifacts_path: Path::new("/a"),
            unpacked_path: Path::new("/u"),
            work_path: Path::new("/w"),
            configuration: &config,
            dependencies: &deps,
            device_id: "dev",
        };
        let _ = recipe::interpolate(&text, &with);
        prop_assert_eq!(recipe::interpolate(&plain, &with).map_err(fail)?, plain.clone());
        let doubled = format!("{{{{{plain}}}}}");
        prop_assert_eq!(recipe::interpolate(&doubled, &with).map_err(fail)?, format!("{{{plain}}}"));
    }

    /// A `{configuration:/key}` placeholder is replaced by the value at that key: strings raw,
    /// anything else as JSON; `{configuration:/key|sh}` by that text quoted for the shell.
    #[test]
    fn configuration_placeholders_insert_the_value(key in "[a-z]{1,8}", value in json_value()) {
        let config = json!({ key.clone(): value.clone() });
        let deps = BTreeMap::new();
        let with = Interpolation {
            artifacts_path: Path::new("/a"),
            unpacked_path: Path::new("/u"),
            work_path: Path::new("/w"),
            configuration: &config,
            dependencies: &deps,
            device_id: "dev",
        };
        let expected = match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let got = recipe::interpolate(&format!("<{{configuration:/{key}}}>"), &with).map_err(fail)?;
        prop_assert_eq!(got, format!("<{expected}>"));
        // With `|sh` the same text comes quoted as one shell word (NUL cannot be one).
        let quoted = recipe::interpolate(&format!("<{{configuration:/{key}|sh}}>"), &with);
        if expected.contains('\0') {
            prop_assert!(quoted.is_err());
        } else {
            prop_assert_eq!(quoted.map_err(fail)?, format!("<{}>", recipe::sh_quote(&expected)));
        }
    }

    /// `apply_set` never panics; when it succeeds on a JSON pointer key, the value is then at
    /// that pointer (parsed as JSON when it parses, else the text itself).
    #[test]
    fn apply_set_puts_the_value_at_the_key(
        config in json_value(),
        assignment in ".{0,40}",
        segments in prop::collection::vec("[a-z0-9~/.]{1,6}", 1..4),
        value in ".{0,12}",
    ) {
        let mut c = config.clone();
        let _ = recipe::apply_set(&mut c, &assignment);

        let pointer: String = segments
            .iter()
            .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
            .collect();
        let mut c = config;
        if recipe::apply_set(&mut c, &format!("{pointer}={value}")).is_ok() {
            let expected = serde_json::from_str::<Value>(&value)
                .unwrap_or_else(|_| Value::String(value.clone()));
            prop_assert_eq!(c.pointer(&pointer), Some(&expected), "{}", c);
        }
    }

    /// Merging a patch is idempotent, and a patch without nulls leaves every one of its
    /// non-object values in place.
    #[test]
    fn merge_is_idempotent(base in json_value(), patch in json_value()) {
        let mut once = base.clone();
        recipe::merge(&mut once, &patch);
        let mut twice = once.clone();
        recipe::merge(&mut twice, &patch);
        prop_assert_eq!(&twice, &once);
        if let Value::Object(entries) = &patch {
            for (key, value) in entries {
                if !value.is_null() && !value.is_object() {
                    prop_assert_eq!(once.get(key), Some(value));
                }
            }
        }
    }

    /// The start order lists every component once, dependencies before their dependents, or
    /// refuses the set.
    #[test]
    fn start_order_puts_dependencies_first(
        edges in prop::collection::vec((0usize..5, 0usize..5, any::<bool>()), 0..8),
        count in 1usize..5,
    ) {
        let name = |i: usize| format!("com.c{i}");
        let recipes: Vec<Recipe> = (0..count)
            .map(|i| {
                let deps: BTreeMap<String, Value> = edges
                    .iter()
                    .filter(|(from, to, _)| *from == i && *to != i)
                    .map(|(_, to, hard)| {
                        (name(*to), json!({"type": if *hard { "hard" } else { "soft" }}))
                    })
                    .collect();
                let doc = json!({
                    "name": name(i),
                    "version": "1.0.0",
                    "dependencies": deps,
                    "manifests": [{}],
                });
                serde_json::from_value(doc).map_err(fail)
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Recipe> = recipes.iter().collect();
        if let Ok(order) = recipe::start_order(&refs) {
            prop_assert_eq!(order.len(), recipes.len());
            for r in &recipes {
                let at = order.iter().position(|n| *n == r.name);
                for dep in r.dependencies.keys() {
                    if let Some(dep_at) = order.iter().position(|n| n == dep) {
                        prop_assert!(Some(dep_at) < at, "{dep} after {} in {order:?}", r.name);
                    }
                }
            }
        }
    }
}
