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
//!
//! Layout: `types` (the validated recipe), `raw` (the recipe as written), `text` (parsing
//! text and files), `validate` (rules and key paths), `uri` (artifact URIs), `placeholder`
//! (interpolation and the `|sh` filter), `config` (assignments and merge), `order` (start
//! order) and `error`.

use std::time::Duration;

mod config;
mod error;
mod order;
mod placeholder;
mod raw;
#[cfg(test)]
mod test_support;
mod text;
mod types;
mod uri;
mod validate;

pub use config::{apply_set, merge};
pub use error::RecipeError;
pub use order::start_order;
pub use placeholder::{Interpolation, interpolate, sh_quote};
pub use text::{load, parse, to_text};
pub use types::{
    Artifact, Dependency, DependencyKind, Lifecycle, Manifest, Platform, Recipe, SkipIf, Step,
    Unarchive,
};
pub use uri::ArtifactUri;

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
