//! A deployed component on disk: where its files live and the record of what it is and what
//! it is doing, so an agent that restarts (or a board that reboots) picks up where it was.
//!
//! ```text
//! <state_dir>/apps/<name>/component.json     the record (written atomically)
//! <state_dir>/apps/<name>/<version>/recipe.yaml
//! <state_dir>/apps/<name>/<version>/artifacts/  fetched and checked artifacts
//! <state_dir>/apps/<name>/<version>/unpacked/   unpacked archives
//! <state_dir>/apps/<name>/work/                 the steps' working directory, kept across versions
//! <state_dir>/apps/<name>/output.log[.1]        recent output for `agent app logs`
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Lifecycle state of a component (as Greengrass names them, plus `stopped`). One vocabulary
/// for `agent app list|show|stop|start`, the relay's reports and `recipes/README.md`, which
/// has the table of what leads to each.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Deployed, not installed yet.
    New,
    /// Install finished; not started.
    Installed,
    /// Startup step running, or run step just started.
    Starting,
    /// Run step up, or startup step succeeded.
    Running,
    /// Shutdown in progress.
    Stopping,
    /// Stopped on request (`agent app stop`, or the agent stopping); with desired `stopped`
    /// it stays so until `agent app start`, else it starts with the agent.
    Stopped,
    /// Run step exited 0, or there is nothing to run.
    Finished,
    /// A step failed; a restart is pending.
    Errored,
    /// Failed too often without a successful run; not restarted until asked.
    Broken,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// What the operator wants of a component; named with the words of [`State`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    /// Keep it running.
    Running,
    /// Keep it stopped.
    Stopped,
}

impl std::fmt::Display for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        })
    }
}

/// The durable record of one component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Component name.
    pub name: String,
    /// Deployed version.
    pub version: String,
    /// The version that was deployed before this one, to roll back to.
    pub previous_version: Option<String>,
    /// Operator's wish.
    pub desired: Desired,
    /// Last known state.
    pub state: State,
    /// Version whose install step completed (install is not run again for it).
    pub installed_version: Option<String>,
    /// Effective configuration (defaults merged with overrides).
    pub configuration: serde_json::Value,
    /// Overrides applied over the recipe's defaults (kept for redeploys and rollback).
    pub overrides: serde_json::Value,
    /// Failures since the last successful run.
    pub errors: u32,
    /// Restarts since deployed.
    pub restarts: u32,
    /// Process group of the running step, so a restarted agent can end what a killed one
    /// left behind.
    pub pgid: Option<i32>,
    /// Last failure, for `agent app show`.
    pub last_error: Option<String>,
}

/// File name of the record.
const RECORD_FILE: &str = "component.json";

/// The directory holding all components.
pub fn apps_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("apps")
}

/// Paths of one component.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<state_dir>/apps/<name>`.
    pub root: PathBuf,
}

impl Layout {
    /// The layout of component `name`.
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Self {
            root: apps_dir(state_dir).join(name),
        }
    }
    /// The record file.
    pub fn record(&self) -> PathBuf {
        self.root.join(RECORD_FILE)
    }
    /// A version's directory.
    pub fn version(&self, version: &str) -> PathBuf {
        self.root.join(version)
    }
    /// A version's recipe.
    pub fn recipe(&self, version: &str) -> PathBuf {
        self.version(version).join("recipe.yaml")
    }
    /// A version's artifacts.
    pub fn artifacts(&self, version: &str) -> PathBuf {
        self.version(version).join("artifacts")
    }
    /// A version's unpacked archives.
    pub fn unpacked(&self, version: &str) -> PathBuf {
        self.version(version).join("unpacked")
    }
    /// The working directory.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    /// The current output log.
    pub fn log(&self) -> PathBuf {
        self.root.join("output.log")
    }
    /// The previous output log.
    pub fn old_log(&self) -> PathBuf {
        self.root.join("output.log.1")
    }
}

/// Writes `record` atomically (temporary file, fsync, rename).
pub fn save(layout: &Layout, record: &Record) -> std::io::Result<()> {
    std::fs::create_dir_all(&layout.root)?;
    let tmp = layout.root.join("component.json.tmp");
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, layout.record())
}

/// Reads a component's record.
pub fn load(layout: &Layout) -> std::io::Result<Record> {
    let text = std::fs::read(layout.record())?;
    serde_json::from_slice(&text).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", layout.record().display()),
        )
    })
}

/// Names of all components that have a record, sorted.
pub fn list(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(apps_dir(state_dir))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().join(RECORD_FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
