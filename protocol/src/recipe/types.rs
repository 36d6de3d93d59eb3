//! The validated recipe: what a component is, which components it needs, the manifests for
//! each platform with their artifacts, and the lifecycle steps that install, run and stop it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::DEFAULT_STEP_TIMEOUT;
use super::error::RecipeError;
use super::uri::{ArtifactUri, https_file_name};

/// A validated recipe.
///
/// Serializes to the recipe format (YAML or JSON) and deserializes from it with the same
/// validation as [`parse`](super::parse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipe {
    /// Reverse-DNS component name, like `com.example.hello`.
    pub name: String,
    /// Component version.
    pub version: semver::Version,
    /// Free text; empty when not given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Default configuration; always a JSON object.
    pub configuration: Value,
    /// Components this one needs, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, Dependency>,
    /// Per-platform instructions; the first that matches the device is used. Never empty.
    pub manifests: Vec<Manifest>,
}

/// A dependency on another component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// Versions of the dependency that satisfy this component.
    pub version: semver::VersionReq,
    /// Whether the dependency is required and restarts this component.
    #[serde(rename = "type")]
    pub kind: DependencyKind,
}

/// How strongly a component depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyKind {
    /// Must be deployed; its restart restarts the dependent (`hard`, the default).
    #[default]
    Hard,
    /// Orders start-up when deployed; may be absent (`soft`).
    Soft,
}

/// Instructions for one platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Devices this manifest applies to.
    pub platform: Platform,
    /// Files to fetch before installing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Steps that install, run and stop the component.
    pub lifecycle: Lifecycle,
}

/// The devices a manifest applies to; `*` matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// Operating system, as in `std::env::consts::OS` (`linux`), or `*`.
    #[serde(default = "any")]
    pub os: String,
    /// Architecture, as in `std::env::consts::ARCH`, or `*`.
    #[serde(default = "any")]
    pub arch: String,
}

fn any() -> String {
    "*".to_owned()
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: any(),
            arch: any(),
        }
    }
}

impl Platform {
    /// Whether a device with this `os` and `arch` is covered.
    pub fn matches(&self, os: &str, arch: &str) -> bool {
        (self.os == "*" || self.os == os) && (self.arch == "*" || self.arch == arch)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

/// A file the component needs, checked by sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// Where the file comes from.
    pub uri: ArtifactUri,
    /// Expected sha256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// Unpack the file into the unpacked directory after checking it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unarchive: Option<Unarchive>,
    /// Permission bits of the stored file (at most `0o7777`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_mode"
    )]
    pub mode: Option<u32>,
}

impl Artifact {
    /// File name the artifact is stored under in the component's artifacts dir (last path
    /// segment of the URI; for a relay artifact the name after the digest, else the sha256).
    pub fn file_name(&self) -> String {
        match &self.uri {
            ArtifactUri::Https(url) => https_file_name(url).to_owned(),
            ArtifactUri::File(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ArtifactUri::Relay { sha256, name } => name.clone().unwrap_or_else(|| sha256.clone()),
            ArtifactUri::Local(name) => name.clone(),
        }
    }
}

/// Archive format of an artifact to unpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unarchive {
    /// A gzip-compressed tar archive (`tar.gz`).
    #[serde(rename = "tar.gz")]
    TarGz,
    /// A zip archive (`zip`).
    #[serde(rename = "zip")]
    Zip,
}

/// The lifecycle steps of a manifest; `run` and `startup` are never both set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Lifecycle {
    /// Environment variables for every step.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub setenv: BTreeMap<String, String>,
    /// Runs once per installed version, before the first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install: Option<Step>,
    /// Starts a service that daemonises; exit 0 means started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup: Option<Step>,
    /// The component's foreground process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Step>,
    /// Stops the component.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Step>,
    /// Runs after a step failed, before the component is started again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recover: Option<Step>,
}

/// One lifecycle step: a shell script and how to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The script, run by `/bin/sh -c` after placeholders are filled in. Never empty.
    pub script: String,
    /// Limit on the step's run time; `None` means unlimited for `run` and
    /// [`DEFAULT_STEP_TIMEOUT`] for the other steps.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_timeout"
    )]
    pub timeout: Option<Duration>,
    /// Environment variables for this step (over `setenv`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Run as root if the agent allows it.
    #[serde(skip_serializing_if = "is_false")]
    pub requires_privilege: bool,
    /// Condition under which the step is skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_if: Option<SkipIf>,
}

impl Step {
    /// The limit on this step's run time: its own, else [`DEFAULT_STEP_TIMEOUT`] unless it is
    /// the `run` step (`None`: unlimited).
    pub fn effective_timeout(&self, is_run: bool) -> Option<Duration> {
        match self.timeout {
            Some(t) => Some(t),
            None if is_run => None,
            None => Some(DEFAULT_STEP_TIMEOUT),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// When to skip a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipIf {
    /// `exists PATH`: skip if the path exists (relative paths: in the work directory).
    Exists(PathBuf),
    /// `onpath COMMAND`: skip if the command is found on `PATH`.
    OnPath(String),
}

impl fmt::Display for SkipIf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipIf::Exists(path) => write!(f, "exists {}", path.display()),
            SkipIf::OnPath(command) => write!(f, "onpath {command}"),
        }
    }
}

impl Serialize for SkipIf {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn serialize_mode<S: Serializer>(mode: &Option<u32>, serializer: S) -> Result<S::Ok, S::Error> {
    match mode {
        Some(m) => serializer.collect_str(&format_args!("{m:04o}")),
        None => serializer.serialize_none(),
    }
}

fn serialize_timeout<S: Serializer>(
    timeout: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match timeout {
        Some(t) => serializer.collect_str(&humantime::format_duration(*t)),
        None => serializer.serialize_none(),
    }
}

// ---------------------------------------------------------------------------------------------

impl Recipe {
    /// The manifest for this device (`os`, `arch` as in `std::env::consts::OS` / `ARCH`): the
    /// first whose platform matches. The error names the recipe and the platform.
    pub fn manifest_for(&self, os: &str, arch: &str) -> Result<&Manifest, RecipeError> {
        self.manifests
            .iter()
            .find(|m| m.platform.matches(os, arch))
            .ok_or_else(|| RecipeError::NoManifest {
                name: self.name.clone(),
                version: self.version.to_string(),
                os: os.to_owned(),
                arch: arch.to_owned(),
                covered: self
                    .manifests
                    .iter()
                    .map(|m| m.platform.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::recipe::test_support::*;

    #[test]
    fn manifest_for_picks_first_matching() -> TestResult {
        let r = ok(FULL)?;
        let arm = r.manifest_for("linux", "aarch64")?;
        assert_eq!(arm.platform.arch, "aarch64");
        let x86 = r.manifest_for("linux", "x86_64")?;
        assert_eq!(x86.platform.arch, "*");
        assert!(std::ptr::eq(x86, &r.manifests[1]));
        Ok(())
    }

    #[test]
    fn manifest_for_star_matches_anything() -> TestResult {
        let r = ok("name: com.a\nversion: 1.0.0\nmanifests:\n  - platform: {os: \"*\"}\n")?;
        r.manifest_for("linux", "riscv64")?;
        r.manifest_for("macos", "x86_64")?;
        Ok(())
    }

    #[test]
    fn manifest_for_no_match_errors() -> TestResult {
        let r = ok(FULL)?;
        match r.manifest_for("macos", "aarch64") {
            Ok(m) => Err(format!("matched {m:?}").into()),
            Err(e) => assert_contains(
                &e.to_string(),
                &[
                    "com.example.hello 1.2.0",
                    "macos/aarch64",
                    "linux/aarch64, linux/*",
                ],
            ),
        }
    }
}
