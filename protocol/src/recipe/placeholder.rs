//! Placeholders in scripts and environment values: finding them (`{{`/`}}` escapes, shell
//! `${VAR}` left alone), checking them when a recipe is validated, and filling them in, raw or
//! quoted as one shell word with the `|sh` filter.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::error::{RecipeError, show};
use super::types::Dependency;

/// Values the placeholders in scripts are filled from.
#[derive(Debug, Clone, Copy)]
pub struct Interpolation<'a> {
    /// The component's artifacts directory (`{artifacts:path}`).
    pub artifacts_path: &'a Path,
    /// Where archives are unpacked (`{artifacts:unpacked_path}`).
    pub unpacked_path: &'a Path,
    /// The component's work directory (`{work:path}`).
    pub work_path: &'a Path,
    /// The component's effective configuration (`{configuration:/pointer}`).
    pub configuration: &'a Value,
    /// Dependency name -> its effective configuration (`{name:configuration:/pointer}`).
    pub dependencies: &'a BTreeMap<String, Value>,
    /// The device's id from its enrollment (`{device:id}`), e.g. `dev_…`.
    pub device_id: &'a str,
}

/// A piece of text with placeholders.
enum Piece<'a> {
    Text(&'a str),
    /// The text inside the braces of a placeholder.
    Placeholder(&'a str),
}

/// How a placeholder's value is written into the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// As it is (`{configuration:/port}`).
    Raw,
    /// Quoted for POSIX sh as one word (`{configuration:/port|sh}`).
    Sh,
}

/// Splits `configuration:/message|sh` into the reference and its filter. `|` always starts a
/// filter, so a configuration key containing `|` cannot be named by a placeholder.
fn split_filter(inner: &str) -> Result<(&str, Filter), String> {
    match inner.split_once('|') {
        None => Ok((inner, Filter::Raw)),
        Some((reference, "sh")) => Ok((reference, Filter::Sh)),
        Some((_, other)) => Err(format!(
            "unknown filter `{}`; the only filter is `sh`, as in {{configuration:/message|sh}}, \
             which quotes the value as one shell word",
            show(other)
        )),
    }
}

/// Quotes `value` for POSIX sh as exactly one word: in single quotes, each `'` written as
/// `'\''`. Inside single quotes the shell expands nothing (`$`, backticks, `\`, newlines are
/// literal), so the word is the value, whatever it holds; the empty string becomes `''`.
pub fn sh_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for ch in value.chars() {
        if ch == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(ch);
        }
    }
    out.push('\'');
    out
}

/// What a placeholder refers to.
enum Placeholder<'a> {
    ArtifactsPath,
    UnpackedPath,
    WorkPath,
    DeviceId,
    Configuration(&'a str),
    DependencyConfiguration(&'a str, &'a str),
}

/// Whether the text between braces has the shape of a placeholder: `word:rest`, no
/// whitespace, where word is letters, digits, '.', '-' and '_'.
fn looks_like_placeholder(inner: &str) -> bool {
    if inner.contains(|ch: char| ch.is_whitespace() || ch == '{') {
        return false;
    }
    match inner.split_once(':') {
        Some((word, _)) => {
            !word.is_empty()
                && word
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_'))
        }
        None => false,
    }
}

/// Splits text into literal pieces and placeholders: `{{` and `}}` are literal braces, a `{`
/// right after `$` is never a placeholder, and braces whose content does not look like a
/// placeholder are literal.
fn pieces(text: &str) -> Vec<Piece<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    // The first `}` at or after some earlier position (None: there is none), so that text
    // full of `{` is scanned once rather than once per brace.
    let mut close: Option<Option<usize>> = None;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        if (b == b'{' && next == Some(b'{')) || (b == b'}' && next == Some(b'}')) {
            // Keep the first brace, drop the second.
            out.push(Piece::Text(&text[start..=i]));
            i += 2;
            start = i;
            continue;
        }
        if b == b'{' && (i == 0 || bytes[i - 1] != b'$') {
            let end = match close {
                Some(Some(at)) if at > i => Some(at),
                Some(None) => None,
                _ => {
                    let found = text[i + 1..].find('}').map(|len| i + 1 + len);
                    close = Some(found);
                    found
                }
            };
            if let Some(end) = end {
                let inner = &text[i + 1..end];
                if looks_like_placeholder(inner) {
                    out.push(Piece::Text(&text[start..i]));
                    out.push(Piece::Placeholder(inner));
                    i = end + 1;
                    start = i;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push(Piece::Text(&text[start..]));
    out
}

fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(
            "a configuration placeholder takes a JSON pointer starting with '/', like {configuration:/port}"
                .to_owned(),
        );
    }
    let mut chars = pointer.chars();
    while let Some(ch) = chars.next() {
        if ch == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("'~' in a JSON pointer must be followed by 0 or 1".to_owned());
        }
    }
    Ok(())
}

fn classify(inner: &str) -> Result<Placeholder<'_>, String> {
    let (word, rest) = inner.split_once(':').unwrap_or((inner, ""));
    match word {
        "artifacts" => match rest {
            "path" => Ok(Placeholder::ArtifactsPath),
            "unpacked_path" => Ok(Placeholder::UnpackedPath),
            _ => Err("unknown placeholder; artifacts has path and unpacked_path".to_owned()),
        },
        "work" => match rest {
            "path" => Ok(Placeholder::WorkPath),
            _ => Err("unknown placeholder; work has path".to_owned()),
        },
        "device" => match rest {
            "id" => Ok(Placeholder::DeviceId),
            _ => Err("unknown placeholder; device has id".to_owned()),
        },
        "configuration" => {
            check_pointer(rest)?;
            Ok(Placeholder::Configuration(rest))
        }
        dep if dep.contains('.') => match rest.split_once(':') {
            Some(("configuration", pointer)) => {
                check_pointer(pointer)?;
                Ok(Placeholder::DependencyConfiguration(dep, pointer))
            }
            _ => Err(format!(
                "unknown placeholder; a dependency's configuration is {{{dep}:configuration:/pointer}}"
            )),
        },
        _ => Err(
            "unknown placeholder; known are artifacts:path, artifacts:unpacked_path, work:path, \
             configuration:/pointer, <dependency>:configuration:/pointer and device:id \
             (write {{ and }} for literal braces)"
                .to_owned(),
        ),
    }
}

/// Checks the placeholders of recipe text; dependency placeholders must name a declared
/// dependency, and filters must be known.
pub(super) fn check_placeholders(
    component: &str,
    text: &str,
    deps: &BTreeMap<String, Dependency>,
) -> Result<(), String> {
    for piece in pieces(text) {
        if let Piece::Placeholder(inner) = piece {
            let shown = format!("{{{}}}", show(inner));
            let reference = match split_filter(inner) {
                Ok((reference, _)) => reference,
                Err(m) => {
                    return Err(format!(
                        "placeholder {shown} in component {}: {m}",
                        show(component)
                    ));
                }
            };
            match classify(reference) {
                Err(m) => return Err(format!("placeholder {shown}: {m}")),
                Ok(Placeholder::DependencyConfiguration(dep, _)) if !deps.contains_key(dep) => {
                    return Err(format!(
                        "placeholder {shown}: {} is not listed in dependencies",
                        show(dep)
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    Ok(())
}

fn path_text(path: &Path, placeholder: &str) -> Result<String, RecipeError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| RecipeError::Placeholder {
            placeholder: placeholder.to_owned(),
            message: format!("the path {} is not valid UTF-8", path.display()),
        })
}

fn value_text(value: &Value, placeholder: &str) -> Result<String, RecipeError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => serde_json::to_string(other).map_err(|e| RecipeError::Placeholder {
            placeholder: placeholder.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// Replaces `{artifacts:path}`, `{artifacts:unpacked_path}`, `{work:path}`,
/// `{configuration:/json/pointer}`, `{<dependency-name>:configuration:/pointer}` and
/// `{device:id}` in `text`.
///
/// Strings are inserted raw, numbers, booleans and null as JSON text, objects and arrays as
/// compact JSON. Any placeholder followed by `|sh` (`{configuration:/message|sh}`) has that
/// text quoted by [`sh_quote`] instead, so a value from an operator stays one word of a
/// script and is never run; the raw form is for trusted values only. `{{` and `}}` are
/// literal braces. Only `{word:…}` without whitespace inside
/// is a placeholder, and never right after `$`, so shell `${VAR}` and `{ a; b; }` are left
/// alone. An unknown placeholder, an unknown dependency or a pointer that resolves to nothing
/// is an error naming the placeholder.
pub fn interpolate(text: &str, with: &Interpolation<'_>) -> Result<String, RecipeError> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text) {
        let inner = match piece {
            Piece::Text(t) => {
                out.push_str(t);
                continue;
            }
            Piece::Placeholder(inner) => inner,
        };
        let placeholder = format!("{{{}}}", show(inner));
        let fail = |message: String| RecipeError::Placeholder {
            placeholder: placeholder.clone(),
            message,
        };
        let (reference, filter) = split_filter(inner).map_err(fail)?;
        let kind = classify(reference).map_err(fail)?;
        let value = match kind {
            Placeholder::ArtifactsPath => path_text(with.artifacts_path, &placeholder)?,
            Placeholder::UnpackedPath => path_text(with.unpacked_path, &placeholder)?,
            Placeholder::WorkPath => path_text(with.work_path, &placeholder)?,
            Placeholder::DeviceId => with.device_id.to_owned(),
            Placeholder::Configuration(pointer) => {
                let v = with.configuration.pointer(pointer).ok_or_else(|| {
                    fail(format!(
                        "the configuration has no value at {}",
                        show(pointer)
                    ))
                })?;
                value_text(v, &placeholder)?
            }
            Placeholder::DependencyConfiguration(dep, pointer) => {
                let config = with.dependencies.get(dep).ok_or_else(|| {
                    fail(format!(
                        "{} is not a dependency of this component",
                        show(dep)
                    ))
                })?;
                let v = config.pointer(pointer).ok_or_else(|| {
                    fail(format!(
                        "the configuration of {} has no value at {}",
                        show(dep),
                        show(pointer)
                    ))
                })?;
                value_text(v, &placeholder)?
            }
        };
        match filter {
            Filter::Raw => out.push_str(&value),
            // A shell word cannot hold NUL, and the script could not be passed to sh at all.
            Filter::Sh if value.contains('\0') => {
                return Err(fail(
                    "the value contains a NUL character, which a shell word cannot hold".to_owned(),
                ));
            }
            Filter::Sh => out.push_str(&sh_quote(&value)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::test_support::*;
    use crate::recipe::*;
    use serde_json::json;

    #[test]
    fn rejects_bad_placeholders_at_validation() -> TestResult {
        let e = fails(&with_lifecycle(
            "      run: echo {configuration:nopointer}\n",
        ))?;
        assert_contains(
            &e,
            &[
                "hello.yaml: manifests[0].lifecycle.run.script: placeholder {configuration:nopointer}",
                "JSON pointer",
            ],
        )?;
        let e = fails(&with_lifecycle("      run: echo {artifact:path}\n"))?;
        assert_contains(
            &e,
            &["run.script: placeholder {artifact:path}: unknown placeholder"],
        )?;
        let e = fails(&with_lifecycle(
            "      run: echo {com.other:configuration:/a}\n",
        ))?;
        assert_contains(
            &e,
            &["{com.other:configuration:/a}", "not listed in dependencies"],
        )?;
        let e = fails(&with_lifecycle(
            "      setenv: {A: \"{work:dir}\"}\n      run: x\n",
        ))?;
        assert_contains(&e, &["lifecycle.setenv[A]: placeholder {work:dir}"])?;
        let e = fails(&with_lifecycle(
            "      run: {script: x, skip_if: \"exists {device:name}\"}\n",
        ))?;
        assert_contains(&e, &["run.skip_if: placeholder {device:name}"])?;
        // Shell braces are not placeholders.
        ok(&with_lifecycle(
            "      run: \"echo ${HOME} ${X:-a} { a; b; } {a,b} '{print $1}'\"\n",
        ))?;
        Ok(())
    }

    #[test]
    fn interpolate_each_placeholder() -> TestResult {
        let config = json!({
            "port": 8080, "message": "hi there", "debug": true, "nothing": null,
            "list": [1, "a"], "server": {"host": "h", "a/b": 1, "t~": 2}
        });
        let mut deps = BTreeMap::new();
        deps.insert("com.example.base".to_owned(), json!({"url": "http://base"}));
        let with = sample_interpolation(&config, &deps);
        let cases = [
            ("{artifacts:path}/x", "/var/lib/tether/c/artifacts/x"),
            ("{artifacts:unpacked_path}", "/var/lib/tether/c/unpacked"),
            ("cd {work:path}", "cd /var/lib/tether/c/work"),
            ("--port {configuration:/port}", "--port 8080"),
            ("'{configuration:/message}'", "'hi there'"),
            ("{configuration:/debug}", "true"),
            ("{configuration:/nothing}", "null"),
            ("{configuration:/list}", "[1,\"a\"]"),
            (
                "{configuration:/server}",
                "{\"a/b\":1,\"host\":\"h\",\"t~\":2}",
            ),
            (
                "{configuration:/server/a~1b}{configuration:/server/t~0}",
                "12",
            ),
            ("{configuration:/list/1}", "a"),
            ("{com.example.base:configuration:/url}", "http://base"),
            ("{device:id}", "dev-1"),
            ("no placeholders", "no placeholders"),
            ("", ""),
            ("héllo {device:id} ✓", "héllo dev-1 ✓"),
        ];
        for (text, expected) in cases {
            assert_eq!(interpolate(text, &with)?, expected, "for {text}");
        }
        Ok(())
    }

    #[test]
    fn interpolate_literal_braces() -> TestResult {
        let config = json!({"port": 1});
        let deps = BTreeMap::new();
        let with = sample_interpolation(&config, &deps);
        assert_eq!(
            interpolate(
                "{{configuration:/port}} {{ }} {{{configuration:/port}}}",
                &with
            )?,
            "{configuration:/port} { } {1}"
        );
        Ok(())
    }

    #[test]
    fn interpolate_leaves_shell_braces() -> TestResult {
        let config = json!({});
        let deps = BTreeMap::new();
        let with = sample_interpolation(&config, &deps);
        for text in [
            "echo ${HOME}",
            "echo ${PORT:-8080}",
            "f() { a; b; }",
            "cp x.{a,b} y",
            "awk -F: '{print $1}'",
            "find . -exec rm {} ;",
            "echo '{\"a\":1}'",
            "unterminated {configuration:/x",
            "}{",
        ] {
            assert_eq!(interpolate(text, &with)?, text);
        }
        Ok(())
    }

    #[test]
    fn interpolate_is_linear_on_many_braces() -> TestResult {
        let config = json!({});
        let deps = BTreeMap::new();
        let with = sample_interpolation(&config, &deps);
        let text = "{ ".repeat(MAX_RECIPE_BYTES / 2) + "}";
        let started = std::time::Instant::now();
        assert_eq!(interpolate(&text, &with)?, text);
        assert!(started.elapsed() < Duration::from_secs(5));
        Ok(())
    }

    #[test]
    fn interpolate_unknown_placeholder_errors() -> TestResult {
        let config = json!({"port": 1});
        let mut deps = BTreeMap::new();
        deps.insert("com.b".to_owned(), json!({}));
        let with = sample_interpolation(&config, &deps);
        for (text, parts) in [
            (
                "{foo:bar}",
                &["placeholder {foo:bar}", "unknown placeholder"][..],
            ),
            (
                "{artifacts:decompressed}",
                &["{artifacts:decompressed}", "unknown"][..],
            ),
            (
                "{configuration:/missing}",
                &["{configuration:/missing}", "no value at /missing"][..],
            ),
            (
                "{configuration:port}",
                &["{configuration:port}", "JSON pointer"][..],
            ),
            (
                "{com.c:configuration:/a}",
                &["{com.c:configuration:/a}", "not a dependency"][..],
            ),
            (
                "{com.b:configuration:/a}",
                &[
                    "{com.b:configuration:/a}",
                    "configuration of com.b has no value at /a",
                ][..],
            ),
            (
                "{com.b:config:/a}",
                &["{com.b:config:/a}", "unknown placeholder"][..],
            ),
        ] {
            match interpolate(text, &with) {
                Ok(out) => return Err(format!("{text} gave {out}").into()),
                Err(e) => assert_contains(&e.to_string(), parts)?,
            }
        }
        Ok(())
    }

    /// Values an operator could set that a shell would otherwise split, expand or run.
    const HOSTILE: &[&str] = &[
        "two words",
        "it's",
        "x'; touch PWNED1; '",
        "$(touch PWNED2)",
        "`touch PWNED3`",
        "line one\nline two",
        "",
        "'",
        "''",
        "\\'",
        "back\\slash $HOME ${X:-y} * ? [a] ~ # ; & | < > ( ) { } !",
        "  leading and trailing  ",
        "tab\there",
        "ünïcödé ✓",
    ];

    #[test]
    fn sh_quote_writes_one_single_quoted_word() {
        let cases = [
            ("two words", "'two words'"),
            ("it's", "'it'\\''s'"),
            ("x'; touch PWNED; '", "'x'\\''; touch PWNED; '\\'''"),
            ("$(touch PWNED)", "'$(touch PWNED)'"),
            ("`touch PWNED`", "'`touch PWNED`'"),
            ("a\nb", "'a\nb'"),
            ("", "''"),
            ("'", "''\\'''"),
        ];
        for (value, expected) in cases {
            assert_eq!(sh_quote(value), expected, "for {value:?}");
        }
    }

    /// The real /bin/sh reads each quoted value back as exactly one word equal to the value,
    /// and nothing in it runs.
    #[test]
    fn sh_quote_survives_a_real_shell() -> TestResult {
        let dir = tempfile::tempdir()?;
        for value in HOSTILE {
            let script = format!(
                "set -- {q}; printf '%s' \"$#\"; printf '|%s' \"$1\"",
                q = sh_quote(value)
            );
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&script)
                .current_dir(dir.path())
                .output()?;
            assert!(out.status.success(), "{script}: {out:?}");
            assert_eq!(
                String::from_utf8(out.stdout)?,
                format!("1|{value}"),
                "for {value:?}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())?.collect();
        assert!(left.is_empty(), "a quoted value ran: {left:?}");
        Ok(())
    }

    #[test]
    fn interpolate_sh_filter_quotes_every_kind_of_placeholder() -> TestResult {
        let config = json!({
            "message": "x'; touch PWNED; '", "port": 8080, "empty": "",
            "list": [1, "a b"], "sub": "$(id)\n`id`"
        });
        let mut deps = BTreeMap::new();
        deps.insert("com.example.base".to_owned(), json!({"url": "it's"}));
        let with = Interpolation {
            artifacts_path: Path::new("/var/lib/tether/my app/artifacts"),
            unpacked_path: Path::new("/var/lib/tether/my app/unpacked"),
            work_path: Path::new("/var/lib/tether/it's/work"),
            configuration: &config,
            dependencies: &deps,
            device_id: "dev 1",
        };
        let cases = [
            (
                "echo {configuration:/message|sh}",
                "echo 'x'\\''; touch PWNED; '\\'''",
            ),
            ("--port {configuration:/port|sh}", "--port '8080'"),
            ("[{configuration:/empty|sh}]", "['']"),
            ("{configuration:/list|sh}", "'[1,\"a b\"]'"),
            ("{configuration:/sub|sh}", "'$(id)\n`id`'"),
            ("{configuration:/list/1|sh}", "'a b'"),
            ("{com.example.base:configuration:/url|sh}", "'it'\\''s'"),
            ("{device:id|sh}", "'dev 1'"),
            (
                "{artifacts:path|sh}/x",
                "'/var/lib/tether/my app/artifacts'/x",
            ),
            (
                "{artifacts:unpacked_path|sh}",
                "'/var/lib/tether/my app/unpacked'",
            ),
            ("cd {work:path|sh}", "cd '/var/lib/tether/it'\\''s/work'"),
            // The raw form is unchanged.
            ("echo {configuration:/message}", "echo x'; touch PWNED; '"),
            ("{{configuration:/port|sh}}", "{configuration:/port|sh}"),
        ];
        for (text, expected) in cases {
            assert_eq!(interpolate(text, &with)?, expected, "for {text}");
        }
        Ok(())
    }

    #[test]
    fn interpolate_sh_filter_refuses_nul() -> TestResult {
        let config = json!({"v": "a\u{0}b"});
        let deps = BTreeMap::new();
        let with = sample_interpolation(&config, &deps);
        let e = interpolate("echo {configuration:/v|sh}", &with)
            .err()
            .ok_or("accepted")?;
        assert_contains(
            &e.to_string(),
            &["placeholder {configuration:/v|sh}", "NUL"],
        )
    }

    #[test]
    fn unknown_filters_are_errors_naming_filter_component_and_step() -> TestResult {
        for (lifecycle, parts) in [
            (
                "      run: echo {configuration:/msg|foo}\n",
                &[
                    "hello.yaml: manifests[0].lifecycle.run.script",
                    "placeholder {configuration:/msg|foo}",
                    "component com.example.hello",
                    "unknown filter `foo`",
                    "`sh`",
                ][..],
            ),
            (
                "      install: echo {device:id|}\n      run: x\n",
                &["lifecycle.install.script", "unknown filter ``"][..],
            ),
            (
                "      shutdown: echo {artifacts:path|sh|sh}\n",
                &["lifecycle.shutdown.script", "unknown filter `sh|sh`"][..],
            ),
            (
                "      setenv: {A: \"{work:path|SH}\"}\n      run: x\n",
                &["lifecycle.setenv[A]", "unknown filter `SH`"][..],
            ),
            (
                "      run: {script: x, skip_if: \"exists {configuration:/f|quote}\"}\n",
                &["run.skip_if", "unknown filter `quote`"][..],
            ),
        ] {
            let e = fails(&with_lifecycle(lifecycle))?;
            assert_contains(&e, parts)?;
        }
        // The filter does not hide a bad reference.
        let e = fails(&with_lifecycle("      run: echo {work:dir|sh}\n"))?;
        assert_contains(&e, &["placeholder {work:dir|sh}", "unknown placeholder"])?;
        // Known filters pass validation everywhere.
        ok(&with_lifecycle(
            "      setenv: {A: \"{configuration:/a|sh}\"}\n      run: echo {configuration:/a|sh} {device:id|sh} {artifacts:path|sh} {artifacts:unpacked_path|sh} {work:path|sh}\n",
        ))?;
        // At run time too, naming the placeholder.
        let config = json!({"msg": "hi"});
        let deps = BTreeMap::new();
        let with = sample_interpolation(&config, &deps);
        let e = interpolate("{configuration:/msg|foo}", &with)
            .err()
            .ok_or("accepted")?;
        assert_contains(
            &e.to_string(),
            &[
                "placeholder {configuration:/msg|foo}",
                "unknown filter `foo`",
            ],
        )
    }
}
