//! Fleet desired state on the wire: what the relay wants a device to run, what the device
//! reports back, and how the device fetches recipes and artifacts stored on the relay.
//!
//! The device opens a [`CONTROL_SUBSYSTEM`] channel when its link comes up. The relay sends
//! the device's current [`DesiredState`] at once and again whenever it changes; the device
//! answers with [`ReportedState`] after each reconciliation and whenever a component changes
//! state. Both directions use [`crate::frame`] framing with [`ControlFrame`] bodies.
//!
//! Recipes and artifacts are content-addressed by sha256 and fetched over the same channel:
//! the device sends [`ControlFrame::Fetch`] with the offset it already has, the relay answers
//! with [`ControlFrame::Chunk`]s up to the end (or [`ControlFrame::FetchError`]). An
//! interrupted transfer resumes from what the device kept, and the device checks the digest
//! before use. (One channel rather than one per download: the link's SSH handle is owned by
//! the connection loop, and a single ordered stream keeps the exchange simple.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Subsystem of the control channel.
pub const CONTROL_SUBSYSTEM: &str = "tether-control";

/// Bytes of artifact data per [`ControlFrame::Chunk`] (before base64).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// One component as the relay wants it on a device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DesiredComponent {
    /// Component version (as in its recipe).
    pub version: String,
    /// sha256 of the recipe file stored on the relay.
    pub recipe_sha256: String,
    /// Configuration overrides merged over the recipe's defaults.
    #[serde(default)]
    pub configuration: serde_json::Value,
}

/// Everything the relay wants one device to run. `version` increases with every change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// Version of this document for the device; a device applies each version once.
    pub version: u64,
    /// The deployment that produced this version, if any.
    #[serde(default)]
    pub deployment_id: Option<String>,
    /// Components by name.
    #[serde(default)]
    pub components: BTreeMap<String, DesiredComponent>,
    /// The OS the device should run, as a signed bundle stored on the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<DesiredOs>,
}

/// An OS version for a device: the bundle stored on the relay that installs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DesiredOs {
    /// The bundle's version.
    pub version: String,
    /// sha256 of the bundle file stored on the relay.
    pub bundle_sha256: String,
}

/// Where a deployment stands on one device.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// Not yet picked up (device offline, or busy with an earlier version).
    Pending,
    /// Fetching recipes and artifacts.
    Downloading,
    /// Installing and starting components.
    Installing,
    /// Every component is running (or finished).
    Succeeded,
    /// It failed and nothing could be restored.
    Failed,
    /// It failed and the previous components were restored.
    RolledBack,
}

impl std::fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::Downloading => "downloading",
            DeploymentStatus::Installing => "installing",
            DeploymentStatus::Succeeded => "succeeded",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::RolledBack => "rolled-back",
        })
    }
}

/// One component as the device has it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportedComponent {
    /// Name.
    pub name: String,
    /// Deployed version.
    pub version: String,
    /// Lifecycle state (new, installed, starting, running, stopping, finished, errored, broken).
    pub state: String,
    /// Failures since the last successful run.
    pub errors: u32,
    /// Restarts since deployed.
    pub restarts: u32,
    /// Last failure.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Effective configuration.
    #[serde(default)]
    pub configuration: serde_json::Value,
}

/// A network interface of a device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    /// Name, e.g. `eth0`.
    pub name: String,
    /// Hardware address, if it has one.
    #[serde(default)]
    pub mac: Option<String>,
    /// Addresses with prefix length, e.g. `192.168.1.20/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A mounted filesystem of a device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Disk {
    /// Mount point.
    pub mount: String,
    /// Device or source.
    pub device: String,
    /// Filesystem type.
    pub fs: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Free bytes for unprivileged users.
    pub available_bytes: u64,
}

/// What a device is: reported when the link comes up and whenever it changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Inventory {
    /// Host name.
    pub hostname: String,
    /// `/etc/machine-id`, if present.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`, if present.
    #[serde(default)]
    pub os: Option<String>,
    /// `VERSION_ID` of `/etc/os-release`, if present.
    #[serde(default)]
    pub os_version: Option<String>,
    /// CPU architecture (`x86_64`, `aarch64`, …).
    pub arch: String,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Mounted filesystems.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Network interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Version of the agent.
    pub agent_version: String,
}

/// What a device reports about its desired-state work and its components.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReportedState {
    /// The desired-state version the device worked on last.
    pub version: u64,
    /// The deployment of that version, if any.
    #[serde(default)]
    pub deployment_id: Option<String>,
    /// How that went.
    pub status: Option<DeploymentStatus>,
    /// Why it failed, or what was done.
    #[serde(default)]
    pub message: Option<String>,
    /// The components on the device now.
    #[serde(default)]
    pub components: Vec<ReportedComponent>,
    /// What the device is.
    #[serde(default)]
    pub inventory: Option<Inventory>,
    /// The OS version running (from the agent's slot records), if OS updates are set up.
    #[serde(default)]
    pub os_version: Option<String>,
}

/// What a remote action does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionKind {
    /// Run a shell command (as the agent's application user) and report its exit code and
    /// (bounded) output.
    Run {
        /// The command line, run by `/bin/sh -c`.
        command: String,
        /// Time limit in seconds (default 300).
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
    /// Restart a component (and its hard dependents).
    Restart {
        /// The component.
        component: String,
    },
    /// Reboot the device.
    Reboot,
}

/// An action the relay asks a device to carry out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Its id (`act_…`).
    pub id: String,
    /// What to do.
    pub action: ActionKind,
}

/// Where an action stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionStatus {
    /// Queued; not yet sent to the device.
    Pending,
    /// Sent; the device is carrying it out.
    Running,
    /// Done, exit code 0.
    Succeeded,
    /// Done with an error or a non-zero exit code.
    Failed,
    /// Not delivered before it expired.
    Expired,
}

impl std::fmt::Display for ActionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActionStatus::Pending => "pending",
            ActionStatus::Running => "running",
            ActionStatus::Succeeded => "succeeded",
            ActionStatus::Failed => "failed",
            ActionStatus::Expired => "expired",
        })
    }
}

/// How an action ended on the device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionResult {
    /// The action.
    pub id: String,
    /// Succeeded or failed.
    pub status: ActionStatus,
    /// Exit code, for `run`.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Output (stdout and stderr interleaved), at most [`MAX_ACTION_OUTPUT`] bytes.
    #[serde(default)]
    pub output: String,
    /// Whether output was cut at the limit.
    #[serde(default)]
    pub truncated: bool,
    /// What went wrong, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// Most bytes of output an action reports.
pub const MAX_ACTION_OUTPUT: usize = 64 * 1024;

/// A message on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlFrame {
    /// Relay → device: the desired state.
    Desired {
        /// The document.
        state: DesiredState,
    },
    /// Device → relay: the reported state (boxed: it is by far the largest variant).
    Reported {
        /// The report.
        state: Box<ReportedState>,
    },
    /// Device → relay: send the artifact (or recipe) `sha256` from byte `offset` on.
    Fetch {
        /// Its digest, lowercase hex.
        sha256: String,
        /// What the device already has.
        offset: u64,
    },
    /// Relay → device: a piece of a fetched artifact.
    Chunk {
        /// The artifact.
        sha256: String,
        /// Where `data` starts.
        offset: u64,
        /// The bytes, base64 (standard alphabet, padded).
        data: String,
        /// Whether this is the last piece.
        last: bool,
    },
    /// Relay → device: carry out an action (once; the relay sends each action once per link).
    Action {
        /// The action.
        action: Action,
    },
    /// Device → relay: how an action ended.
    ActionResult {
        /// The result.
        result: ActionResult,
    },
    /// Relay → device: the artifact cannot be sent.
    FetchError {
        /// The artifact.
        sha256: String,
        /// Why.
        message: String,
    },
}

/// Whether `s` is a sha256 in lowercase hex (64 characters).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
