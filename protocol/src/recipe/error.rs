//! Why a recipe is refused or a recipe operation failed, and how values from the recipe are
//! shortened when an error message quotes them.

use std::path::PathBuf;

use thiserror::Error;

use super::MAX_RECIPE_BYTES;

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

/// Shortens a value for an error message.
pub(super) fn show(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
