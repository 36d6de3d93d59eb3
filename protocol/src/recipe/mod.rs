//! Application recipes: how a component is installed, run and supervised on a device.
//!
//! A recipe is a YAML document (modelled on AWS IoT Greengrass v2 component recipes) with a
//! reverse-DNS `name`, a semver `version`, an optional `description`, a default
//! `configuration` tree, `dependencies` on other components with semver requirements, and a
//! list of `manifests`. The first manifest whose `platform` matches the device is used; it
//! lists the `artifacts` to fetch (each checked by sha256) and the `lifecycle` steps
//! (`install`, `startup` or `run`, `shutdown`, `recover`). Scripts may contain placeholders
//! such as `{configuration:/port}` that [`interpolate`] fills in, raw or, with the `|sh`
//! filter (`{configuration:/message|sh}`), quoted as one shell word (see [`sh_quote`]).
//!
//! [`parse`] and [`load`] read and validate a recipe: unknown keys and wrong types are
//! reported with file, line and column; semantic errors name the file and the key path, such
//! as `manifests[0].artifacts[1].sha256`. Recipes larger than [`MAX_RECIPE_BYTES`] are
//! refused. [`apply_set`] and [`merge`] build a component's effective configuration, and
//! [`start_order`] orders a set of components so that dependencies start first.
//!
//! The full format is documented in `recipes/README.md`, next to the example recipes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use thiserror::Error;

/// Largest recipe accepted, in bytes (1 MiB); recipes also arrive over the network.
pub const MAX_RECIPE_BYTES: usize = 1024 * 1024;

/// Longest component name accepted, in characters.
pub const MAX_NAME_LEN: usize = 128;

/// Timeout of a step other than `run` that sets none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Operating systems a manifest's `platform.os` may name (besides `*`).
pub const KNOWN_OS: &[&str] = &["linux"];

/// Architectures a manifest's `platform.arch` may name (besides `*`), as in
/// `std::env::consts::ARCH`.
pub const KNOWN_ARCH: &[&str] = &["x86_64", "aarch64", "arm", "riscv64"];

// ---------------------------------------------------------------------------------------------
// Public model
// ---------------------------------------------------------------------------------------------

/// A validated recipe.
///
/// Serializes to the recipe format (YAML or JSON) and deserializes from it with the same
/// validation as [`parse`].
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

/// Where an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactUri {
    /// Downloaded from this `https://` URL (the whole URL).
    Https(String),
    /// Copied from this absolute path on the device (`file:///…`).
    File(PathBuf),
    /// Fetched from the relay's artifact store by its sha256: `relay:sha256:<hex>`, stored on
    /// the device under the digest, or `relay:sha256:<hex>/<name>`, stored under `name` (what
    /// `relay deploy create --artifacts` writes for a bare file name, so that
    /// `{artifacts:path}/<name>` is the same file locally and from the relay).
    Relay {
        /// The digest, 64 lowercase hex digits.
        sha256: String,
        /// The file name on the device, if not the digest.
        name: Option<String>,
    },
    /// A bare file name, resolved against the `--artifacts` directory at deploy time.
    Local(String),
}

impl fmt::Display for ArtifactUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactUri::Https(url) => f.write_str(url),
            ArtifactUri::File(path) => write!(f, "file://{}", path.display()),
            ArtifactUri::Relay { sha256, name: None } => write!(f, "relay:sha256:{sha256}"),
            ArtifactUri::Relay {
                sha256,
                name: Some(name),
            } => write!(f, "relay:sha256:{sha256}/{name}"),
            ArtifactUri::Local(name) => f.write_str(name),
        }
    }
}

impl Serialize for ArtifactUri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
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
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a recipe is not acceptable, or why a recipe operation failed.
///
/// Errors about a recipe file name the file; parse errors carry line and column, semantic
/// errors the key path like `manifests[0].artifacts[1].sha256`.
#[derive(Debug, Error)]
pub enum RecipeError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The recipe is larger than [`MAX_RECIPE_BYTES`].
    #[error(
        "{path}: the recipe is {size} bytes; recipes are limited to {limit} bytes (1 MiB)",
        limit = MAX_RECIPE_BYTES
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes (at least this many).
        size: u64,
    },
    /// The text is not YAML of the recipe's shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and the offending key.
        message: String,
    },
    /// A value is not acceptable.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key path, like `manifests[0].artifacts[1].sha256`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// No manifest covers the device's platform.
    #[error(
        "{name} {version} has no manifest for platform {os}/{arch} (its manifests cover: {covered})"
    )]
    NoManifest {
        /// The component.
        name: String,
        /// Its version.
        version: String,
        /// The device's operating system.
        os: String,
        /// The device's architecture.
        arch: String,
        /// The platforms the manifests cover, comma-separated.
        covered: String,
    },
    /// A placeholder could not be filled in.
    #[error("placeholder {placeholder}: {message}")]
    Placeholder {
        /// The placeholder with its braces, like `{configuration:/port}`.
        placeholder: String,
        /// What is wrong.
        message: String,
    },
    /// A `key=value` configuration assignment could not be applied.
    #[error("cannot set `{assignment}`: {message}")]
    Set {
        /// The assignment as given.
        assignment: String,
        /// What is wrong.
        message: String,
    },
    /// Two components of a set have the same name.
    #[error("{name} is listed twice ({first} and {second})")]
    DuplicateComponent {
        /// The component.
        name: String,
        /// The first version listed.
        first: String,
        /// The second version listed.
        second: String,
    },
    /// A hard dependency is not part of the set.
    #[error("{component} needs {dependency} ({requirement}), which is not deployed")]
    MissingDependency {
        /// The dependent component.
        component: String,
        /// The missing dependency.
        dependency: String,
        /// The version requirement.
        requirement: semver::VersionReq,
    },
    /// A dependency's version does not satisfy the requirement.
    #[error(
        "{component} {component_version} needs {dependency} ({requirement}), but {dependency} {found} is deployed"
    )]
    VersionMismatch {
        /// The dependent component.
        component: String,
        /// Its version.
        component_version: String,
        /// The dependency.
        dependency: String,
        /// The version requirement.
        requirement: semver::VersionReq,
        /// The dependency's version in the set.
        found: String,
    },
    /// The dependencies form a cycle.
    #[error("dependency cycle: {cycle} (each component needs the next)")]
    Cycle {
        /// The components on the cycle, like `a -> b -> a`.
        cycle: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: String,
    version: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    configuration: Option<Value>,
    #[serde(default)]
    dependencies: Option<BTreeMap<String, RawDependency>>,
    #[serde(default)]
    manifests: Option<Vec<RawManifest>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDependency {
    #[serde(default)]
    version: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<DependencyKind>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    artifacts: Option<Vec<RawArtifact>>,
    #[serde(default)]
    lifecycle: Option<RawLifecycle>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    uri: String,
    sha256: String,
    #[serde(default)]
    unarchive: Option<Unarchive>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    #[serde(default)]
    setenv: Option<BTreeMap<String, String>>,
    #[serde(default)]
    install: Option<RawStep>,
    #[serde(default)]
    startup: Option<RawStep>,
    #[serde(default)]
    run: Option<RawStep>,
    #[serde(default)]
    shutdown: Option<RawStep>,
    #[serde(default)]
    recover: Option<RawStep>,
}

/// A step as written: a bare script or a mapping.
struct RawStep(RawStepMap);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStepMap {
    script: String,
    #[serde(default)]
    timeout: Option<RawTimeout>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    requires_privilege: Option<bool>,
    #[serde(default)]
    skip_if: Option<String>,
}

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = RawStep;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a script (string) or a mapping with script, timeout, env, \
                     requires_privilege, skip_if",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStep, E> {
                Ok(RawStep(RawStepMap {
                    script: v.to_owned(),
                    timeout: None,
                    env: None,
                    requires_privilege: None,
                    skip_if: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawStep, A::Error> {
                RawStepMap::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawStep)
            }
        }
        deserializer.deserialize_any(StepVisitor)
    }
}

/// A timeout as written: a humantime string (`30s`, `5m`, `1h 30m`) or a number of seconds.
struct RawTimeout(Duration);

impl<'de> Deserialize<'de> for RawTimeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeoutVisitor;
        impl Visitor<'_> for TimeoutVisitor {
            type Value = RawTimeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like 30s, 5m or 1h 30m, or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTimeout, E> {
                Ok(RawTimeout(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawTimeout, E> {
                u64::try_from(v)
                    .map(|s| RawTimeout(Duration::from_secs(s)))
                    .map_err(|_| E::custom(format!("timeout {v} is negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawTimeout, E> {
                Duration::try_from_secs_f64(v)
                    .map(RawTimeout)
                    .map_err(|_| E::custom(format!("timeout {v} is not a valid number of seconds")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTimeout, E> {
                humantime::parse_duration(v.trim())
                    .map(RawTimeout)
                    .map_err(|e| {
                        E::custom(format!(
                            "`{}` is not a duration ({e}); write e.g. 30s, 5m or 1h 30m",
                            show(v)
                        ))
                    })
            }
        }
        deserializer.deserialize_any(TimeoutVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

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

/// Shortens a value for an error message.
fn show(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn validate(raw: RawRecipe, origin: &Path) -> Result<Recipe, RecipeError> {
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

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_problem(s: &str) -> String {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("`{s}` must be written in lowercase hex")
    } else {
        format!(
            "`{}` is not a sha256: expected 64 lowercase hex digits, got {} characters",
            show(s),
            s.chars().count()
        )
    }
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

/// The last path segment of an `https://` URL (without query or fragment).
fn https_file_name(url: &str) -> &str {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    match rest.find('/') {
        Some(slash) => rest[slash..].rsplit('/').next().unwrap_or(""),
        None => "",
    }
}

fn check_file_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{what} does not end in a file name"));
    }
    if name.chars().any(|ch| ch.is_control() || ch == '\\') {
        return Err(format!(
            "{what} has control characters or '\\' in its file name"
        ));
    }
    Ok(())
}

fn parse_uri(uri: &str) -> Result<ArtifactUri, String> {
    let shown = show(uri);
    if uri.is_empty() {
        return Err("the URI is empty".to_owned());
    }
    if uri.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(format!(
            "`{shown}` contains whitespace or control characters"
        ));
    }
    if let Some(rest) = uri.strip_prefix("https://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return Err(format!("`{shown}` has no host"));
        }
        check_file_name(https_file_name(uri), &format!("`{shown}`"))?;
        return Ok(ArtifactUri::Https(uri.to_owned()));
    }
    if uri.starts_with("http://") {
        return Err(format!(
            "`{shown}`: plain http is not allowed; use https://"
        ));
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!(
                "`{shown}`: file URIs take an absolute path, like file:///opt/app.tar.gz"
            ));
        }
        let path = PathBuf::from(rest);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if rest.ends_with('/') {
            return Err(format!("`{shown}` does not end in a file name"));
        }
        check_file_name(&name, &format!("`{shown}`"))?;
        return Ok(ArtifactUri::File(path));
    }
    if let Some(rest) = uri.strip_prefix("relay:sha256:") {
        let (hash, name) = match rest.split_once('/') {
            Some((hash, name)) => (hash, Some(name)),
            None => (rest, None),
        };
        if !is_sha256(hash) {
            return Err(format!("`{shown}`: {}", sha256_problem(hash)));
        }
        if let Some(name) = name {
            if name.contains('/') {
                return Err(format!(
                    "`{shown}`: the name after the digest is a bare file name (no '/')"
                ));
            }
            check_file_name(name, &format!("`{shown}`"))?;
        }
        return Ok(ArtifactUri::Relay {
            sha256: hash.to_owned(),
            name: name.map(str::to_owned),
        });
    }
    // A scheme: a letter, then letters, digits, '+', '-', '.', then ':'.
    if let Some(colon) = uri.find(':') {
        let scheme = &uri[..colon];
        let looks_like_scheme = scheme
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-' | '.'));
        if looks_like_scheme {
            return Err(format!(
                "`{shown}`: unsupported URI scheme `{}`; use https://, file://, \
                 relay:sha256:<hex> or a bare file name",
                show(scheme)
            ));
        }
    }
    if uri.contains('/') {
        return Err(format!(
            "`{shown}`: a local artifact is a bare file name (no '/'), found in the --artifacts directory"
        ));
    }
    check_file_name(uri, &format!("`{shown}`"))?;
    Ok(ArtifactUri::Local(uri.to_owned()))
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
        check_placeholders(c, value, deps).map_err(|m| c.err(&vkey, m))?;
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
    check_placeholders(c, &raw.script, deps).map_err(|m| c.err(format!("{key}.script"), m))?;
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
            check_placeholders(c, &text, deps).map_err(|m| c.err(&skey, m))?;
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
// Placeholders
// ---------------------------------------------------------------------------------------------

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
fn check_placeholders(
    c: &Check<'_>,
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
                        show(c.component)
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

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Applies `key=value` to a configuration tree, creating objects along the way.
///
/// The key is a JSON pointer like `/server/port` or dotted like `server.port`; the value is
/// parsed as JSON if it parses (`8080`, `true`, `[1,2]`, `"8080"`), else taken as a string.
/// A non-object configuration (such as null) becomes an empty object first; an existing
/// non-object value on the way is an error, an array on the way is indexed by number.
pub fn apply_set(configuration: &mut Value, assignment: &str) -> Result<(), RecipeError> {
    let fail = |message: String| RecipeError::Set {
        assignment: show(assignment),
        message,
    };
    let (key, value_text) = assignment
        .split_once('=')
        .ok_or_else(|| fail("expected key=value".to_owned()))?;
    let key = key.trim();
    let segments: Vec<String> = if let Some(pointer) = key.strip_prefix('/') {
        pointer
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect()
    } else {
        key.split('.').map(str::to_owned).collect()
    };
    if key.is_empty() || segments.iter().any(String::is_empty) {
        return Err(fail(
            "the key is empty or has an empty segment; write server.port or /server/port"
                .to_owned(),
        ));
    }
    let value = serde_json::from_str::<Value>(value_text)
        .unwrap_or_else(|_| Value::String(value_text.to_owned()));

    if !configuration.is_object() {
        *configuration = Value::Object(serde_json::Map::new());
    }
    let last_index = segments.len().saturating_sub(1);
    let mut current = configuration;
    for (i, segment) in segments.iter().enumerate() {
        let is_last = i == last_index;
        if current.is_null() {
            *current = Value::Object(serde_json::Map::new());
        }
        current = match current {
            Value::Object(map) => {
                if is_last {
                    map.insert(segment.clone(), value);
                    return Ok(());
                }
                map.entry(segment.clone()).or_insert(Value::Null)
            }
            Value::Array(items) => {
                let len = items.len();
                let Some(item) = segment
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| items.get_mut(index))
                else {
                    return Err(fail(format!(
                        "{} is an array of {len} elements; `{}` is not an index of it",
                        pointer_of(&segments[..i]),
                        show(segment)
                    )));
                };
                if is_last {
                    *item = value;
                    return Ok(());
                }
                item
            }
            other => {
                return Err(fail(format!(
                    "{} is {}, not a mapping",
                    pointer_of(&segments[..i]),
                    kind_of(other)
                )));
            }
        };
    }
    Ok(())
}

/// A JSON pointer for configuration error messages.
fn pointer_of(segments: &[String]) -> String {
    if segments.is_empty() {
        return "the configuration".to_owned();
    }
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&s.replace('~', "~0").replace('/', "~1"));
    }
    show(&out)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a mapping",
    }
}

/// RFC 7386 JSON merge patch (null deletes), for configuration overrides over defaults.
pub fn merge(base: &mut Value, patch: &Value) {
    match patch {
        Value::Object(entries) => {
            if !base.is_object() {
                *base = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(target) = base {
                for (key, value) in entries {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *base = other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Dependencies
// ---------------------------------------------------------------------------------------------

/// Start order for a set of components: dependencies first (topological; ties by name).
///
/// Errors: two components with one name, a cycle (the message lists the components on it,
/// like `a -> b -> a`), a hard dependency missing from the set, a dependency whose version
/// does not satisfy the requirement. Soft dependencies that are missing are fine; present
/// ones order (and are version-checked) like hard ones.
pub fn start_order(components: &[&Recipe]) -> Result<Vec<String>, RecipeError> {
    let mut by_name: BTreeMap<&str, &Recipe> = BTreeMap::new();
    for recipe in components {
        if let Some(previous) = by_name.insert(recipe.name.as_str(), recipe) {
            return Err(RecipeError::DuplicateComponent {
                name: recipe.name.clone(),
                first: previous.version.to_string(),
                second: recipe.version.to_string(),
            });
        }
    }

    let mut needs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, recipe) in &by_name {
        let mut set = BTreeSet::new();
        for (dep_name, dep) in &recipe.dependencies {
            match by_name.get(dep_name.as_str()) {
                Some(found) => {
                    if !dep.version.matches(&found.version) {
                        return Err(RecipeError::VersionMismatch {
                            component: recipe.name.clone(),
                            component_version: recipe.version.to_string(),
                            dependency: dep_name.clone(),
                            requirement: dep.version.clone(),
                            found: found.version.to_string(),
                        });
                    }
                    set.insert(dep_name.as_str());
                }
                None if dep.kind == DependencyKind::Hard => {
                    return Err(RecipeError::MissingDependency {
                        component: recipe.name.clone(),
                        dependency: dep_name.clone(),
                        requirement: dep.version.clone(),
                    });
                }
                None => {}
            }
        }
        needs.insert(name, set);
    }

    let mut order = Vec::with_capacity(needs.len());
    while let Some(ready) = needs
        .iter()
        .find(|(_, deps)| deps.is_empty())
        .map(|(name, _)| *name)
    {
        needs.remove(ready);
        for deps in needs.values_mut() {
            deps.remove(ready);
        }
        order.push(ready.to_owned());
    }
    if needs.is_empty() {
        return Ok(order);
    }

    // Every remaining component needs another remaining one: walk until a name repeats.
    let mut path: Vec<&str> = Vec::new();
    let mut current = needs.keys().next().copied();
    while let Some(name) = current {
        if let Some(pos) = path.iter().position(|n| *n == name) {
            let mut cycle: Vec<&str> = path.split_off(pos);
            if let Some(min_pos) = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map(|(i, _)| i)
            {
                cycle.rotate_left(min_pos);
            }
            if let Some(first) = cycle.first().copied() {
                cycle.push(first);
            }
            return Err(RecipeError::Cycle {
                cycle: cycle.join(" -> "),
            });
        }
        path.push(name);
        current = needs.get(name).and_then(|deps| deps.iter().next().copied());
    }
    let mut stuck: Vec<&str> = needs.keys().copied().collect();
    if let Some(first) = stuck.first().copied() {
        stuck.push(first);
    }
    Err(RecipeError::Cycle {
        cycle: stuck.join(" -> "),
    })
}

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
    use super::*;
    use serde_json::json;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const SHA: &str = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b";

    const FULL: &str = r#"
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

    fn ok(text: &str) -> Result<Recipe, RecipeError> {
        parse(text, Path::new("hello.yaml"))
    }

    /// Parses text that must fail and returns the error message.
    fn fails(text: &str) -> Result<String, Box<dyn std::error::Error>> {
        match parse(text, Path::new("hello.yaml")) {
            Ok(r) => Err(format!("expected an error, parsed {r:?}").into()),
            Err(e) => Ok(e.to_string()),
        }
    }

    /// A minimal recipe with `extra` lines inserted into the first manifest's lifecycle.
    fn with_lifecycle(lifecycle: &str) -> String {
        format!("name: com.example.hello\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n{lifecycle}")
    }

    fn with_artifact(artifact: &str) -> String {
        format!(
            "name: com.example.hello\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - {artifact}\n    lifecycle:\n      run: x\n"
        )
    }

    fn assert_contains(text: &str, parts: &[&str]) -> TestResult {
        for part in parts {
            if !text.contains(part) {
                return Err(format!("`{text}` does not contain `{part}`").into());
            }
        }
        Ok(())
    }

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
    fn rejects_bad_uri() -> TestResult {
        for (uri, why) in [
            ("http://example.com/a.bin", "plain http"),
            ("s3://bucket/a.bin", "unsupported URI scheme `s3`"),
            ("file://relative/a.bin", "absolute path"),
            ("file:///opt/", "file name"),
            ("https://example.com/", "file name"),
            ("https:///a.bin", "no host"),
            ("dist/a.bin", "bare file name"),
            ("..", "file name"),
            ("relay:sha256:abc", "not a sha256"),
            ("relay:sha256:abc/a.bin", "not a sha256"),
            (format!("relay:sha256:{SHA}/..").as_str(), "file name"),
            (format!("relay:sha256:{SHA}/").as_str(), "file name"),
            (format!("relay:sha256:{SHA}/x/y").as_str(), "bare file name"),
        ] {
            let e = fails(&with_artifact(&format!(
                "{{uri: \"{uri}\", sha256: {SHA}}}"
            )))?;
            assert_contains(&e, &["manifests[0].artifacts[0].uri: ", why])?;
        }
        let other = "0".repeat(64);
        let e = fails(&with_artifact(&format!(
            "{{uri: \"relay:sha256:{other}\", sha256: {SHA}}}"
        )))?;
        assert_contains(&e, &["artifacts[0].uri", "but sha256 is"])?;
        let e = fails(&format!(
            "name: com.a\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - {{uri: a.bin, sha256: {SHA}}}\n      - {{uri: \"https://x.org/a.bin\", sha256: {SHA}}}\n"
        ))?;
        assert_contains(&e, &["manifests[0].artifacts[1].uri", "names must differ"])
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

    fn sample_interpolation<'a>(
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

    #[test]
    fn apply_set_pointer_and_dotted_keys() -> TestResult {
        let mut c = json!({"server": {"port": 1}, "keep": true});
        apply_set(&mut c, "/server/port=8080")?;
        apply_set(&mut c, "server.host=example.com")?;
        apply_set(&mut c, "a.b.c=1")?;
        apply_set(&mut c, "/x~1y=2")?;
        assert_eq!(
            c,
            json!({"server": {"port": 8080, "host": "example.com"}, "keep": true,
                   "a": {"b": {"c": 1}}, "x/y": 2})
        );
        let mut empty = Value::Null;
        apply_set(&mut empty, "top=1")?;
        assert_eq!(empty, json!({"top": 1}));
        let mut list = json!({"l": [{"a": 1}, 2]});
        apply_set(&mut list, "l.0.a=3")?;
        apply_set(&mut list, "/l/1=4")?;
        assert_eq!(list, json!({"l": [{"a": 3}, 4]}));
        Ok(())
    }

    #[test]
    fn apply_set_json_and_string_values() -> TestResult {
        let mut c = json!({});
        for assignment in [
            "n=8080",
            "f=1.5",
            "b=false",
            "s=hello world",
            "q=\"8080\"",
            "o={\"k\": [1, 2]}",
            "e=",
            "eq=a=b",
            "z=null",
        ] {
            apply_set(&mut c, assignment)?;
        }
        assert_eq!(
            c,
            json!({"n": 8080, "f": 1.5, "b": false, "s": "hello world", "q": "8080",
                   "o": {"k": [1, 2]}, "e": "", "eq": "a=b", "z": null})
        );
        Ok(())
    }

    #[test]
    fn apply_set_errors() -> TestResult {
        let mut c = json!({"port": 1, "l": [1]});
        for (assignment, part) in [
            ("noequals", "expected key=value"),
            ("=1", "key is empty"),
            ("a..b=1", "empty segment"),
            ("port.x=1", "/port is a number, not a mapping"),
            ("l.5=1", "/l is an array of 1 elements"),
        ] {
            match apply_set(&mut c, assignment) {
                Ok(()) => return Err(format!("{assignment} was accepted").into()),
                Err(e) => assert_contains(&e.to_string(), &[&format!("`{assignment}`"), part])?,
            }
        }
        assert_eq!(c, json!({"port": 1, "l": [1]}));
        Ok(())
    }

    #[test]
    fn merge_with_null_deletion() -> TestResult {
        let mut base = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "f": "x"});
        merge(
            &mut base,
            &json!({"a": null, "b": {"c": null, "n": 4}, "e": [3], "f": {"g": 1}, "h": null}),
        );
        assert_eq!(
            base,
            json!({"b": {"d": 3, "n": 4}, "e": [3], "f": {"g": 1}})
        );
        let mut scalar = json!(1);
        merge(&mut scalar, &json!({"a": {"b": null, "c": 1}}));
        assert_eq!(scalar, json!({"a": {"c": 1}}));
        let mut whole = json!({"a": 1});
        merge(&mut whole, &json!("text"));
        assert_eq!(whole, json!("text"));
        Ok(())
    }

    fn component(name: &str, version: &str, deps: &[(&str, &str, DependencyKind)]) -> Recipe {
        Recipe {
            name: name.to_owned(),
            version: semver::Version::parse(version).unwrap_or(semver::Version::new(0, 0, 0)),
            description: String::new(),
            configuration: json!({}),
            dependencies: deps
                .iter()
                .map(|(n, req, kind)| {
                    (
                        (*n).to_owned(),
                        Dependency {
                            version: semver::VersionReq::parse(req)
                                .unwrap_or(semver::VersionReq::STAR),
                            kind: *kind,
                        },
                    )
                })
                .collect(),
            manifests: vec![Manifest {
                platform: Platform::default(),
                artifacts: Vec::new(),
                lifecycle: Lifecycle::default(),
            }],
        }
    }

    use DependencyKind::{Hard, Soft};

    #[test]
    fn start_order_chain() -> TestResult {
        let c = component("com.c", "1.0.0", &[("com.b", "*", Hard)]);
        let b = component("com.b", "1.0.0", &[("com.a", "^1", Hard)]);
        let a = component("com.a", "1.4.0", &[]);
        assert_eq!(start_order(&[&c, &b, &a])?, ["com.a", "com.b", "com.c"]);
        assert_eq!(start_order(&[])?, Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn start_order_diamond_is_deterministic() -> TestResult {
        let top = component(
            "com.top",
            "1.0.0",
            &[("com.y", "*", Hard), ("com.x", "*", Soft)],
        );
        let x = component("com.x", "1.0.0", &[("com.base", "*", Hard)]);
        let y = component("com.y", "1.0.0", &[("com.base", "*", Hard)]);
        let base = component("com.base", "1.0.0", &[]);
        let alone = component("com.alone", "1.0.0", &[]);
        let expected = ["com.alone", "com.base", "com.x", "com.y", "com.top"];
        assert_eq!(start_order(&[&top, &x, &y, &base, &alone])?, expected);
        assert_eq!(start_order(&[&alone, &base, &y, &x, &top])?, expected);
        Ok(())
    }

    #[test]
    fn start_order_cycle_error() -> TestResult {
        let a = component("com.a", "1.0.0", &[("com.b", "*", Hard)]);
        let b = component("com.b", "1.0.0", &[("com.c", "*", Soft)]);
        let c = component("com.c", "1.0.0", &[("com.a", "*", Hard)]);
        let d = component("com.d", "1.0.0", &[("com.a", "*", Hard)]);
        let e = start_order(&[&d, &c, &b, &a])
            .err()
            .ok_or("no cycle found")?;
        assert_eq!(
            e.to_string(),
            "dependency cycle: com.a -> com.b -> com.c -> com.a (each component needs the next)"
        );
        let x = component("com.x", "1.0.0", &[("com.y", "*", Hard)]);
        let y = component("com.y", "1.0.0", &[("com.x", "*", Hard)]);
        let e = start_order(&[&y, &x]).err().ok_or("no cycle found")?;
        assert_contains(&e.to_string(), &["com.x -> com.y -> com.x"])
    }

    #[test]
    fn start_order_missing_hard_dependency() -> TestResult {
        let a = component("com.x", "1.0.0", &[("com.y", ">=1.0", Hard)]);
        let e = start_order(&[&a]).err().ok_or("accepted")?;
        assert_eq!(
            e.to_string(),
            "com.x needs com.y (>=1.0), which is not deployed"
        );
        Ok(())
    }

    #[test]
    fn start_order_missing_soft_dependency_is_fine() -> TestResult {
        let a = component("com.x", "1.0.0", &[("com.y", ">=1.0", Soft)]);
        assert_eq!(start_order(&[&a])?, ["com.x"]);
        Ok(())
    }

    #[test]
    fn start_order_version_mismatch() -> TestResult {
        let a = component("com.x", "1.0.0", &[("com.y", ">=1.0.0, <2.0.0", Hard)]);
        let b = component("com.y", "2.1.0", &[]);
        let e = start_order(&[&a, &b]).err().ok_or("accepted")?;
        assert_eq!(
            e.to_string(),
            "com.x 1.0.0 needs com.y (>=1.0.0, <2.0.0), but com.y 2.1.0 is deployed"
        );
        let soft = component("com.x", "1.0.0", &[("com.y", "^1", Soft)]);
        assert!(start_order(&[&soft, &b]).is_err());
        let dup = component("com.y", "2.2.0", &[]);
        let e = start_order(&[&b, &dup]).err().ok_or("accepted")?;
        assert_eq!(e.to_string(), "com.y is listed twice (2.1.0 and 2.2.0)");
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
    fn a_relay_artifact_may_keep_a_file_name() -> TestResult {
        let r = ok(&with_artifact(&format!(
            "{{uri: \"relay:sha256:{SHA}/server.py\", sha256: {SHA}}}"
        )))?;
        let a = &r.manifests[0].artifacts[0];
        assert_eq!(
            a.uri,
            ArtifactUri::Relay {
                sha256: SHA.into(),
                name: Some("server.py".into())
            }
        );
        assert_eq!(a.file_name(), "server.py");
        assert_eq!(a.uri.to_string(), format!("relay:sha256:{SHA}/server.py"));
        // Written back as text, it reads the same.
        assert_eq!(parse(&to_text(&r)?, Path::new("again.yaml"))?, r);
        Ok(())
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
