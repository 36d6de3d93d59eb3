//! Recipes and assertions shared by the unit tests of the recipe modules.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{Interpolation, Recipe, RecipeError, parse};

/// What a test returns, so that it can use `?` instead of unwrapping.
pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A well-formed sha256 for artifacts.
pub(super) const SHA: &str = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b";

/// A recipe that uses every key of the format.
pub(super) const FULL: &str = r#"
name: com.example.hello
version: 1.2.0
description: A small HTTP service
configuration:
  port: 8080
  message: hello
dependencies:
  com.example.base:
    version: ">=1.0.0, <2.0.0"
    type: hard
  com.example.metrics:
    type: soft
manifests:
  - platform: { os: linux, arch: aarch64 }
    lifecycle:
      run: "exec ./hello-arm"
  - platform: { os: linux, arch: "*" }
    artifacts:
      - uri: file:///opt/hello.tar.gz
        sha256: 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b
        unarchive: tar.gz
        mode: "0755"
      - uri: https://example.com/dl/tool.bin?x=1
        sha256: 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b
      - uri: relay:sha256:3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b
        sha256: 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b
      - uri: hello.zip
        sha256: 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b
        unarchive: zip
    lifecycle:
      setenv: { GREETING: "hi", PORT: 8080 }
      install: "pip install flask"
      run:
        script: "exec python3 {artifacts:unpacked_path}/server.py --port {configuration:/port} --base {com.example.base:configuration:/url}"
        timeout: 30s
        env: { KEY: value }
        requires_privilege: true
        skip_if: "onpath python3"
      shutdown:
        script: "kill $(cat {work:path}/pid)"
        timeout: 10
        skip_if: exists /etc/hello.done
      recover: "rm -f {work:path}/pid"
"#;

/// Parses text that must be a valid recipe.
pub(super) fn ok(text: &str) -> Result<Recipe, RecipeError> {
    parse(text, Path::new("hello.yaml"))
}

/// Parses text that must fail and returns the error message.
pub(super) fn fails(text: &str) -> Result<String, Box<dyn std::error::Error>> {
    match parse(text, Path::new("hello.yaml")) {
        Ok(r) => Err(format!("expected an error, parsed {r:?}").into()),
        Err(e) => Ok(e.to_string()),
    }
}

/// A minimal recipe with `extra` lines inserted into the first manifest's lifecycle.
pub(super) fn with_lifecycle(lifecycle: &str) -> String {
    format!("name: com.example.hello\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n{lifecycle}")
}

/// A minimal recipe whose one manifest has the artifact `artifact` (a YAML flow mapping).
pub(super) fn with_artifact(artifact: &str) -> String {
    format!(
        "name: com.example.hello\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - {artifact}\n    lifecycle:\n      run: x\n"
    )
}

/// Fails unless `text` contains every one of `parts`.
pub(super) fn assert_contains(text: &str, parts: &[&str]) -> TestResult {
    for part in parts {
        if !text.contains(part) {
            return Err(format!("`{text}` does not contain `{part}`").into());
        }
    }
    Ok(())
}

/// Interpolation values with fixed device paths and id, over `configuration` and
/// `dependencies`.
pub(super) fn sample_interpolation<'a>(
    configuration: &'a Value,
    dependencies: &'a BTreeMap<String, Value>,
) -> Interpolation<'a> {
    Interpolation {
        artifacts_path: Path::new("/var/lib/tether/c/artifacts"),
        unpacked_path: Path::new("/var/lib/tether/c/unpacked"),
        work_path: Path::new("/var/lib/tether/c/work"),
        configuration,
        dependencies,
        device_id: "dev-1",
    }
}
