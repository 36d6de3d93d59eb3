//! Recipe text and files: the size limit, YAML parsing whose errors carry file, line and
//! column, and writing a recipe back as text that reads the same.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de;
use serde::{Deserialize, Deserializer};

use super::MAX_RECIPE_BYTES;
use super::error::RecipeError;
use super::raw::RawRecipe;
use super::types::Recipe;
use super::validate::validate;

/// Parses and validates recipe text; `origin` names the file in errors.
pub fn parse(text: &str, origin: &Path) -> Result<Recipe, RecipeError> {
    if text.len() > MAX_RECIPE_BYTES {
        return Err(RecipeError::TooLarge {
            path: origin.to_path_buf(),
            size: text.len() as u64,
        });
    }
    if text.trim().is_empty() {
        return Err(RecipeError::Parse {
            path: origin.to_path_buf(),
            message: "the recipe is empty".to_owned(),
        });
    }
    let raw: RawRecipe = serde_saphyr::from_str(text).map_err(|e| RecipeError::Parse {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })?;
    validate(raw, origin)
}

/// Writes a recipe back as recipe text (YAML), for a recipe changed after parsing (the relay
/// rewrites artifact URIs). The text is parsed again and must give the same recipe, so what is
/// stored is exactly what was meant; comments and formatting of the original are not kept.
pub fn to_text(recipe: &Recipe) -> Result<String, RecipeError> {
    let origin = || PathBuf::from(format!("{}.yaml", recipe.name));
    let text = serde_saphyr::to_string(recipe).map_err(|e| RecipeError::Parse {
        path: origin(),
        message: format!("writing the recipe: {e}"),
    })?;
    if parse(&text, &origin())? != *recipe {
        return Err(RecipeError::Parse {
            path: origin(),
            message: "the written recipe does not read back the same".to_owned(),
        });
    }
    Ok(text)
}

/// Reads and parses a recipe file.
pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
    let io = |source| RecipeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let too_large = |size| RecipeError::TooLarge {
        path: path.to_path_buf(),
        size,
    };
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_RECIPE_BYTES as u64 {
        return Err(too_large(len));
    }
    let mut text = String::new();
    file.take(MAX_RECIPE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() > MAX_RECIPE_BYTES {
        return Err(too_large(text.len() as u64));
    }
    parse(&text, path)
}

impl<'de> Deserialize<'de> for Recipe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawRecipe::deserialize(deserializer)?;
        validate(raw, Path::new("recipe")).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::test_support::*;
    use crate::recipe::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn parses_full_recipe() -> TestResult {
        let r = ok(FULL)?;
        assert_eq!(r.name, "com.example.hello");
        assert_eq!(r.version, semver::Version::new(1, 2, 0));
        assert_eq!(r.description, "A small HTTP service");
        assert_eq!(r.configuration, json!({"port": 8080, "message": "hello"}));
        let base = &r.dependencies["com.example.base"];
        assert_eq!(base.version, semver::VersionReq::parse(">=1.0.0, <2.0.0")?);
        assert_eq!(base.kind, DependencyKind::Hard);
        let metrics = &r.dependencies["com.example.metrics"];
        assert_eq!(metrics.version, semver::VersionReq::STAR);
        assert_eq!(metrics.kind, DependencyKind::Soft);
        assert_eq!(r.manifests.len(), 2);

        let m = &r.manifests[1];
        assert_eq!(
            m.platform,
            Platform {
                os: "linux".into(),
                arch: "*".into()
            }
        );
        assert_eq!(
            m.artifacts[0],
            Artifact {
                uri: ArtifactUri::File(PathBuf::from("/opt/hello.tar.gz")),
                sha256: SHA.into(),
                unarchive: Some(Unarchive::TarGz),
                mode: Some(0o755),
            }
        );
        assert_eq!(
            m.artifacts[1].uri,
            ArtifactUri::Https("https://example.com/dl/tool.bin?x=1".into())
        );
        assert_eq!(
            m.artifacts[2].uri,
            ArtifactUri::Relay {
                sha256: SHA.into(),
                name: None
            }
        );
        assert_eq!(m.artifacts[3].uri, ArtifactUri::Local("hello.zip".into()));
        assert_eq!(m.artifacts[3].unarchive, Some(Unarchive::Zip));
        let names: Vec<String> = m.artifacts.iter().map(Artifact::file_name).collect();
        assert_eq!(names, ["hello.tar.gz", "tool.bin", SHA, "hello.zip"]);

        let l = &m.lifecycle;
        assert_eq!(l.setenv["GREETING"], "hi");
        assert_eq!(l.setenv["PORT"], "8080");
        assert!(l.startup.is_none());
        let run = l.run.as_ref().ok_or("no run step")?;
        assert_eq!(run.timeout, Some(Duration::from_secs(30)));
        assert_eq!(run.env["KEY"], "value");
        assert!(run.requires_privilege);
        assert_eq!(run.skip_if, Some(SkipIf::OnPath("python3".into())));
        let shutdown = l.shutdown.as_ref().ok_or("no shutdown step")?;
        assert_eq!(shutdown.timeout, Some(Duration::from_secs(10)));
        assert_eq!(
            shutdown.skip_if,
            Some(SkipIf::Exists(PathBuf::from("/etc/hello.done")))
        );
        assert!(l.recover.is_some());
        Ok(())
    }

    #[test]
    fn step_as_string_or_mapping() -> TestResult {
        let r = ok(&with_lifecycle(
            "      install: pip install flask\n      run:\n        script: exec app\n",
        ))?;
        let l = &r.manifests[0].lifecycle;
        let install = l.install.as_ref().ok_or("no install")?;
        assert_eq!(
            *install,
            Step {
                script: "pip install flask".into(),
                timeout: None,
                env: BTreeMap::new(),
                requires_privilege: false,
                skip_if: None,
            }
        );
        assert_eq!(install.effective_timeout(false), Some(DEFAULT_STEP_TIMEOUT));
        let run = l.run.as_ref().ok_or("no run")?;
        assert_eq!(run.script, "exec app");
        assert_eq!(run.effective_timeout(true), None);
        Ok(())
    }

    #[test]
    fn defaults_for_optional_keys() -> TestResult {
        let r = ok("name: com.example.hello\nversion: 1.0.0\nmanifests:\n  - {}\n")?;
        assert_eq!(r.description, "");
        assert_eq!(r.configuration, json!({}));
        assert!(r.dependencies.is_empty());
        assert_eq!(r.manifests[0].platform, Platform::default());
        assert_eq!(r.manifests[0].lifecycle, Lifecycle::default());
        Ok(())
    }

    #[test]
    fn unknown_key_names_file_line_and_key() -> TestResult {
        let e = fails(&with_lifecycle("      run: echo\n      bogus: 1\n"))?;
        assert_contains(&e, &["hello.yaml", "line 6", "column 7", "bogus"])?;
        let e = fails(&with_lifecycle("      run: {script: x, tmeout: 3s}\n"))?;
        assert_contains(&e, &["hello.yaml", "line 5", "tmeout"])?;
        let e = fails("name: com.example.hello\nversion: 1.0.0\nextra: 1\nmanifests: [{}]\n")?;
        assert_contains(&e, &["hello.yaml", "line 3", "extra"])
    }

    #[test]
    fn type_error_names_line() -> TestResult {
        let e = fails("name: com.example.hello\nversion: [1]\nmanifests: [{}]\n")?;
        assert_contains(&e, &["hello.yaml", "line 2", "column 10"])?;
        let e = fails(&with_lifecycle(
            "      run: {script: x, requires_privilege: maybe}\n",
        ))?;
        assert_contains(&e, &["hello.yaml", "line 5"])?;
        let e = fails(&with_lifecycle("      run: {script: x, timeout: soon}\n"))?;
        assert_contains(&e, &["hello.yaml", "line 5", "soon", "not a duration"])?;
        let e = fails("- a\n- b\n")?;
        assert_contains(&e, &["hello.yaml", "line 1"])
    }

    #[test]
    fn rejects_empty_recipe() -> TestResult {
        assert_contains(&fails("  \n")?, &["hello.yaml", "empty"])
    }

    #[test]
    fn no_panic_on_truncated_or_mangled_input() -> TestResult {
        let config = json!({"port": 1});
        let deps = BTreeMap::new();
        let with = sample_interpolation(&config, &deps);
        let mut seen_ok = 0;
        for (end, _) in FULL.char_indices() {
            let prefix = &FULL[..end];
            if parse(prefix, Path::new("p.yaml")).is_ok() {
                seen_ok += 1;
            }
            let _ = interpolate(prefix, &with);
            let mut c = json!({});
            let _ = apply_set(&mut c, prefix);
            let mangled = FULL.replacen(&FULL[end..=end], "{", 1);
            let _ = parse(&mangled, Path::new("p.yaml"));
        }
        assert!(seen_ok > 0);
        Ok(())
    }

    #[test]
    fn refuses_oversized_input() -> TestResult {
        let mut text = String::from("name: com.a\nversion: 1.0.0\nmanifests: [{}]\n");
        text.push_str(&"#".repeat(MAX_RECIPE_BYTES));
        let e = fails(&text)?;
        assert_contains(&e, &["hello.yaml", "limited to 1048576 bytes"])?;

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, &text)?;
        let e = load(&path).err().ok_or("accepted")?;
        assert!(matches!(e, RecipeError::TooLarge { .. }));
        assert_contains(&e.to_string(), &["big.yaml"])
    }

    #[test]
    fn load_reads_a_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("recipe.yaml");
        std::fs::write(&path, FULL)?;
        assert_eq!(load(&path)?, ok(FULL)?);
        let missing = dir.path().join("missing.yaml");
        let e = load(&missing).err().ok_or("accepted")?;
        assert_contains(&e.to_string(), &["missing.yaml"])
    }

    #[test]
    fn serde_round_trip() -> TestResult {
        let r = ok(FULL)?;
        let yaml = serde_saphyr::to_string(&r)?;
        assert_eq!(parse(&yaml, Path::new("again.yaml"))?, r);
        let json = serde_json::to_string(&r)?;
        assert_eq!(serde_json::from_str::<Recipe>(&json)?, r);
        let bad = json.replace("com.example.hello", "Bad");
        let e = serde_json::from_str::<Recipe>(&bad)
            .err()
            .ok_or("accepted")?;
        assert_contains(&e.to_string(), &["name: "])
    }
}
