//! Validation of a recipe as written: names, versions, platforms, artifacts, environment
//! variables and steps. Each error names the file and the key path, such as
//! `manifests[0].artifacts[1].sha256`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::error::{RecipeError, show};
use super::placeholder::check_placeholders;
use super::raw::{RawArtifact, RawLifecycle, RawManifest, RawRecipe, RawStep, RawStepMap};
use super::types::{Artifact, Dependency, Lifecycle, Manifest, Recipe, SkipIf, Step};
use super::uri::{ArtifactUri, is_sha256, parse_uri, sha256_problem};
use super::{KNOWN_ARCH, KNOWN_OS, MAX_NAME_LEN};

/// Where errors point: the file, and the component they are about.
struct Check<'a> {
    origin: &'a Path,
    /// The recipe's `name`, for messages that must say which component.
    component: &'a str,
}

impl Check<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> RecipeError {
        RecipeError::Invalid {
            path: self.origin.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks a recipe as written and builds the validated recipe; errors name `origin` and the
/// key path.
pub(super) fn validate(raw: RawRecipe, origin: &Path) -> Result<Recipe, RecipeError> {
    let c = Check {
        origin,
        component: &raw.name,
    };

    check_name(&raw.name).map_err(|m| c.err("name", m))?;
    let version = semver::Version::parse(raw.version.trim()).map_err(|e| {
        c.err(
            "version",
            format!(
                "`{}` is not a semantic version like 1.2.0: {e}",
                show(&raw.version)
            ),
        )
    })?;

    let configuration = match raw.configuration {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(c.err(
                "configuration",
                "must be a mapping (key: value pairs) at the top level",
            ));
        }
    };

    let mut dependencies = BTreeMap::new();
    for (dep_name, dep) in raw.dependencies.unwrap_or_default() {
        let key = format!("dependencies[{}]", show(&dep_name));
        check_name(&dep_name).map_err(|m| c.err(&key, m))?;
        if dep_name == raw.name {
            return Err(c.err(&key, "a component cannot depend on itself"));
        }
        let req_text = dep.version.unwrap_or_else(|| "*".to_owned());
        let requirement = semver::VersionReq::parse(&req_text).map_err(|e| {
            c.err(
                format!("{key}.version"),
                format!(
                    "`{}` is not a version requirement like \">=1.0.0, <2.0.0\": {e}",
                    show(&req_text)
                ),
            )
        })?;
        dependencies.insert(
            dep_name,
            Dependency {
                version: requirement,
                kind: dep.kind.unwrap_or_default(),
            },
        );
    }

    let raw_manifests = raw.manifests.unwrap_or_default();
    if raw_manifests.is_empty() {
        return Err(c.err("manifests", "at least one manifest is required"));
    }
    let mut manifests = Vec::with_capacity(raw_manifests.len());
    for (i, m) in raw_manifests.into_iter().enumerate() {
        manifests.push(validate_manifest(
            &c,
            &format!("manifests[{i}]"),
            m,
            &dependencies,
        )?);
    }

    Ok(Recipe {
        name: raw.name,
        version,
        description: raw.description.unwrap_or_default(),
        configuration,
        dependencies,
        manifests,
    })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the component name is empty".to_owned());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "`{}` is longer than {MAX_NAME_LEN} characters",
            show(name)
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|ch| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || *ch == '-' || *ch == '.'))
    {
        return Err(format!(
            "`{}` contains {bad:?}; names use lowercase letters, digits, '-' and '.', like com.example.hello",
            show(name)
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "`{}` is not a reverse-DNS name: it needs at least two dot-separated labels, like com.example.hello",
            show(name)
        ));
    }
    for label in labels {
        match label.chars().next() {
            None => return Err(format!("`{}` has an empty label", show(name))),
            Some('-') => {
                return Err(format!(
                    "`{}`: label `{label}` must start with a letter or digit",
                    show(name)
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn validate_manifest(
    c: &Check<'_>,
    key: &str,
    raw: RawManifest,
    deps: &BTreeMap<String, Dependency>,
) -> Result<Manifest, RecipeError> {
    let platform = raw.platform.unwrap_or_default();
    if platform.os != "*" && !KNOWN_OS.contains(&platform.os.as_str()) {
        return Err(c.err(
            format!("{key}.platform.os"),
            format!(
                "`{}` is not a supported OS; use {} or \"*\"",
                show(&platform.os),
                KNOWN_OS.join(", ")
            ),
        ));
    }
    if platform.arch != "*" && !KNOWN_ARCH.contains(&platform.arch.as_str()) {
        return Err(c.err(
            format!("{key}.platform.arch"),
            format!(
                "`{}` is not a supported architecture; use one of {} or \"*\"",
                show(&platform.arch),
                KNOWN_ARCH.join(", ")
            ),
        ));
    }

    let mut artifacts = Vec::new();
    let mut file_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, a) in raw.artifacts.unwrap_or_default().into_iter().enumerate() {
        let akey = format!("{key}.artifacts[{i}]");
        let artifact = validate_artifact(c, &akey, a)?;
        let name = artifact.file_name();
        if let Some(first) = file_names.insert(name.clone(), i) {
            return Err(c.err(
                format!("{akey}.uri"),
                format!(
                    "stored as `{}`, like {key}.artifacts[{first}]; artifact file names must differ",
                    show(&name)
                ),
            ));
        }
        artifacts.push(artifact);
    }

    let lifecycle = validate_lifecycle(
        c,
        &format!("{key}.lifecycle"),
        raw.lifecycle.unwrap_or(RawLifecycle {
            setenv: None,
            install: None,
            startup: None,
            run: None,
            shutdown: None,
            recover: None,
        }),
        deps,
    )?;
    Ok(Manifest {
        platform,
        artifacts,
        lifecycle,
    })
}

fn validate_artifact(c: &Check<'_>, key: &str, raw: RawArtifact) -> Result<Artifact, RecipeError> {
    if !is_sha256(&raw.sha256) {
        return Err(c.err(format!("{key}.sha256"), sha256_problem(&raw.sha256)));
    }
    let uri = parse_uri(&raw.uri).map_err(|m| c.err(format!("{key}.uri"), m))?;
    if let ArtifactUri::Relay { sha256: h, .. } = &uri
        && *h != raw.sha256
    {
        return Err(c.err(
            format!("{key}.uri"),
            format!(
                "the relay URI names sha256 {h}, but sha256 is {}",
                raw.sha256
            ),
        ));
    }
    let mode = match raw.mode {
        None => None,
        Some(text) => Some(parse_mode(&text).map_err(|m| c.err(format!("{key}.mode"), m))?),
    };
    Ok(Artifact {
        uri,
        sha256: raw.sha256,
        unarchive: raw.unarchive,
        mode,
    })
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!(
            "`{}` is not an octal mode like \"0755\"",
            show(text)
        ));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("mode {t} is larger than 07777")),
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn validate_env(
    c: &Check<'_>,
    key: &str,
    env: BTreeMap<String, String>,
    deps: &BTreeMap<String, Dependency>,
) -> Result<BTreeMap<String, String>, RecipeError> {
    for (name, value) in &env {
        let vkey = format!("{key}[{}]", show(name));
        if !is_env_name(name) {
            return Err(c.err(
                vkey,
                "not a valid environment variable name (letters, digits and '_', not starting with a digit)",
            ));
        }
        if value.contains('\0') {
            return Err(c.err(vkey, "the value contains a NUL character"));
        }
        check_placeholders(c.component, value, deps).map_err(|m| c.err(&vkey, m))?;
    }
    Ok(env)
}

fn validate_lifecycle(
    c: &Check<'_>,
    key: &str,
    raw: RawLifecycle,
    deps: &BTreeMap<String, Dependency>,
) -> Result<Lifecycle, RecipeError> {
    let setenv = validate_env(
        c,
        &format!("{key}.setenv"),
        raw.setenv.unwrap_or_default(),
        deps,
    )?;
    if raw.run.is_some() && raw.startup.is_some() {
        return Err(c.err(
            key,
            "run and startup are mutually exclusive: use run for a foreground process, \
             startup for one that daemonises",
        ));
    }
    let step = |name: &str, s: Option<RawStep>| -> Result<Option<Step>, RecipeError> {
        s.map(|s| validate_step(c, &format!("{key}.{name}"), s.0, deps))
            .transpose()
    };
    Ok(Lifecycle {
        setenv,
        install: step("install", raw.install)?,
        startup: step("startup", raw.startup)?,
        run: step("run", raw.run)?,
        shutdown: step("shutdown", raw.shutdown)?,
        recover: step("recover", raw.recover)?,
    })
}

fn validate_step(
    c: &Check<'_>,
    key: &str,
    raw: RawStepMap,
    deps: &BTreeMap<String, Dependency>,
) -> Result<Step, RecipeError> {
    if raw.script.trim().is_empty() {
        return Err(c.err(format!("{key}.script"), "the script is empty"));
    }
    if raw.script.contains('\0') {
        return Err(c.err(
            format!("{key}.script"),
            "the script contains a NUL character",
        ));
    }
    check_placeholders(c.component, &raw.script, deps)
        .map_err(|m| c.err(format!("{key}.script"), m))?;
    let timeout = raw.timeout.map(|t| t.0);
    if timeout == Some(Duration::ZERO) {
        return Err(c.err(
            format!("{key}.timeout"),
            "the timeout must be more than zero",
        ));
    }
    let env = validate_env(c, &format!("{key}.env"), raw.env.unwrap_or_default(), deps)?;
    let skip_if = match raw.skip_if {
        None => None,
        Some(text) => {
            let skey = format!("{key}.skip_if");
            check_placeholders(c.component, &text, deps).map_err(|m| c.err(&skey, m))?;
            Some(parse_skip_if(&text).map_err(|m| c.err(&skey, m))?)
        }
    };
    Ok(Step {
        script: raw.script,
        timeout,
        env,
        requires_privilege: raw.requires_privilege.unwrap_or(false),
        skip_if,
    })
}

fn parse_skip_if(text: &str) -> Result<SkipIf, String> {
    let t = text.trim();
    let (word, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
    let rest = rest.trim();
    if rest.contains('\0') {
        return Err("contains a NUL character".to_owned());
    }
    match word {
        "exists" if !rest.is_empty() => Ok(SkipIf::Exists(PathBuf::from(rest))),
        "onpath" if !rest.is_empty() && !rest.contains(char::is_whitespace) => {
            Ok(SkipIf::OnPath(rest.to_owned()))
        }
        "onpath" if !rest.is_empty() => {
            Err(format!("`{}`: onpath takes one command name", show(text)))
        }
        _ => Err(format!(
            "`{}` is not a condition; write `exists PATH` or `onpath COMMAND`",
            show(text)
        )),
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use crate::recipe::test_support::*;

    #[test]
    fn rejects_bad_name() -> TestResult {
        for name in [
            "hello",
            "Com.example",
            "com..example",
            "com.-example",
            "com.exa_mple",
            "com.example.",
            "\"\"",
        ] {
            let e = fails(&format!(
                "name: {name}\nversion: 1.0.0\nmanifests: [{{}}]\n"
            ))?;
            assert_contains(&e, &["hello.yaml: name: "])?;
        }
        let long = format!("com.{}", "a".repeat(130));
        let e = fails(&format!(
            "name: {long}\nversion: 1.0.0\nmanifests: [{{}}]\n"
        ))?;
        assert_contains(&e, &["name: ", "longer than 128"])?;
        assert!(ok("name: 9lives.a-b.c0\nversion: 1.0.0\nmanifests: [{}]\n").is_ok());
        let e = fails("name: com.a\nversion: 1.0.0\ndependencies: {Bad: {}}\nmanifests: [{}]\n")?;
        assert_contains(&e, &["hello.yaml: dependencies[Bad]: "])?;
        let e = fails("name: com.a\nversion: 1.0.0\ndependencies: {com.a: {}}\nmanifests: [{}]\n")?;
        assert_contains(&e, &["dependencies[com.a]", "itself"])
    }

    #[test]
    fn rejects_bad_semver() -> TestResult {
        let e = fails("name: com.a\nversion: 1.2\nmanifests: [{}]\n")?;
        assert_contains(
            &e,
            &["hello.yaml: version: `1.2` is not a semantic version"],
        )?;
        let e = fails(
            "name: com.a\nversion: 1.0.0\ndependencies: {com.b: {version: \"=>1\"}}\nmanifests: [{}]\n",
        )?;
        assert_contains(&e, &["hello.yaml: dependencies[com.b].version: `=>1`"])?;
        let e = fails(
            "name: com.a\nversion: 1.0.0\ndependencies: {com.b: {type: weak}}\nmanifests: [{}]\n",
        )?;
        assert_contains(&e, &["line 3", "weak"])
    }

    #[test]
    fn rejects_bad_sha256() -> TestResult {
        let e = fails(&with_artifact("{uri: a.bin, sha256: abc}"))?;
        assert_contains(
            &e,
            &["hello.yaml: manifests[0].artifacts[0].sha256: `abc` is not a sha256"],
        )?;
        let upper = SHA.to_uppercase();
        let e = fails(&with_artifact(&format!("{{uri: a.bin, sha256: {upper}}}")))?;
        assert_contains(&e, &["artifacts[0].sha256", "lowercase"])
    }

    #[test]
    fn rejects_bad_mode() -> TestResult {
        for mode in ["\"0789\"", "\"rwx\"", "\"17777\"", "\"\""] {
            let e = fails(&with_artifact(&format!(
                "{{uri: a.bin, sha256: {SHA}, mode: {mode}}}"
            )))?;
            assert_contains(&e, &["hello.yaml: manifests[0].artifacts[0].mode: "])?;
        }
        let r = ok(&with_artifact(&format!(
            "{{uri: a.bin, sha256: {SHA}, mode: 0640}}"
        )))?;
        assert_eq!(r.manifests[0].artifacts[0].mode, Some(0o640));
        Ok(())
    }

    #[test]
    fn rejects_unknown_unarchive() -> TestResult {
        let e = fails(&with_artifact(&format!(
            "{{uri: a.bin, sha256: {SHA}, unarchive: rar}}"
        )))?;
        assert_contains(&e, &["hello.yaml", "line 5", "rar", "tar.gz"])
    }

    #[test]
    fn rejects_run_and_startup() -> TestResult {
        let e = fails(&with_lifecycle("      run: a\n      startup: b\n"))?;
        assert_contains(&e, &["hello.yaml: manifests[0].lifecycle: run and startup"])
    }

    #[test]
    fn rejects_missing_manifests_and_empty_script() -> TestResult {
        let e = fails("name: com.a\nversion: 1.0.0\n")?;
        assert_contains(&e, &["hello.yaml: manifests: at least one"])?;
        let e = fails("name: com.a\nversion: 1.0.0\nmanifests: []\n")?;
        assert_contains(&e, &["manifests: at least one"])?;
        let e = fails(&with_lifecycle("      install: \"  \"\n"))?;
        assert_contains(
            &e,
            &["manifests[0].lifecycle.install.script: the script is empty"],
        )?;
        let e = fails(&with_lifecycle("      run: {script: x, timeout: 0s}\n"))?;
        assert_contains(&e, &["manifests[0].lifecycle.run.timeout"])
    }

    #[test]
    fn rejects_bad_env_platform_and_skip_if() -> TestResult {
        let e = fails(&with_lifecycle("      setenv: {1ABC: x}\n"))?;
        assert_contains(&e, &["manifests[0].lifecycle.setenv[1ABC]: not a valid"])?;
        let e = fails(&with_lifecycle("      run: {script: x, env: {A-B: x}}\n"))?;
        assert_contains(&e, &["manifests[0].lifecycle.run.env[A-B]"])?;
        let e = fails(&with_lifecycle(
            "      run: {script: x, skip_if: \"maybe /x\"}\n",
        ))?;
        assert_contains(&e, &["manifests[0].lifecycle.run.skip_if: ", "exists PATH"])?;
        let e = fails(&with_lifecycle(
            "      run: {script: x, skip_if: \"onpath a b\"}\n",
        ))?;
        assert_contains(&e, &["run.skip_if", "one command"])?;
        let e = fails(
            "name: com.a\nversion: 1.0.0\nmanifests:\n  - {}\n  - platform: {os: windows}\n",
        )?;
        assert_contains(&e, &["manifests[1].platform.os: `windows`"])?;
        let e = fails("name: com.a\nversion: 1.0.0\nmanifests:\n  - platform: {arch: x86}\n")?;
        assert_contains(&e, &["manifests[0].platform.arch: `x86`"])?;
        let e = fails("name: com.a\nversion: 1.0.0\nmanifests:\n  - platform: {cpu: x86}\n")?;
        assert_contains(&e, &["line 4", "cpu"])
    }
}
