//! A recipe as written: the YAML shape read before validation, unknown keys refused, where a
//! step may be a bare script or a mapping and a timeout a duration or a number of seconds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::show;
use super::types::{DependencyKind, Platform, Unarchive};

/// A whole recipe as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecipe {
    pub(super) name: String,
    pub(super) version: String,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) configuration: Option<Value>,
    #[serde(default)]
    pub(super) dependencies: Option<BTreeMap<String, RawDependency>>,
    #[serde(default)]
    pub(super) manifests: Option<Vec<RawManifest>>,
}

/// A dependency as written; the version requirement defaults to `*`, the type to `hard`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDependency {
    #[serde(default)]
    pub(super) version: Option<String>,
    #[serde(default, rename = "type")]
    pub(super) kind: Option<DependencyKind>,
}

/// A manifest as written; a missing platform matches every device.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManifest {
    #[serde(default)]
    pub(super) platform: Option<Platform>,
    #[serde(default)]
    pub(super) artifacts: Option<Vec<RawArtifact>>,
    #[serde(default)]
    pub(super) lifecycle: Option<RawLifecycle>,
}

/// An artifact as written; `mode` is octal text like `"0755"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArtifact {
    pub(super) uri: String,
    pub(super) sha256: String,
    #[serde(default)]
    pub(super) unarchive: Option<Unarchive>,
    #[serde(default)]
    pub(super) mode: Option<String>,
}

/// The lifecycle steps as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLifecycle {
    #[serde(default)]
    pub(super) setenv: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) install: Option<RawStep>,
    #[serde(default)]
    pub(super) startup: Option<RawStep>,
    #[serde(default)]
    pub(super) run: Option<RawStep>,
    #[serde(default)]
    pub(super) shutdown: Option<RawStep>,
    #[serde(default)]
    pub(super) recover: Option<RawStep>,
}

/// A step as written: a bare script or a mapping.
pub(super) struct RawStep(pub(super) RawStepMap);

/// A step written as a mapping.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStepMap {
    pub(super) script: String,
    #[serde(default)]
    pub(super) timeout: Option<RawTimeout>,
    #[serde(default)]
    pub(super) env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) requires_privilege: Option<bool>,
    #[serde(default)]
    pub(super) skip_if: Option<String>,
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
pub(super) struct RawTimeout(pub(super) Duration);

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
