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
    /// The components this version's deployment (or configuration push) adds, changes or
    /// removes. The device works on these (and on components it never tried), and the
    /// version's outcome is theirs: a component that failed in an earlier version and that
    /// this one does not name is left as it is, not retried. `None` (documents from before
    /// this field) means every component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<String>>,
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

impl DeploymentStatus {
    /// The status's name, as printed, sent and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::Downloading => "downloading",
            DeploymentStatus::Installing => "installing",
            DeploymentStatus::Succeeded => "succeeded",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::RolledBack => "rolled-back",
        }
    }
}

impl std::fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component as the device has it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportedComponent {
    /// Name.
    pub name: String,
    /// Deployed version.
    pub version: String,
    /// Lifecycle state (new, installed, starting, running, stopping, stopped, finished,
    /// errored, broken; `recipes/README.md` says what each means).
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
    /// Components of the desired state that the device tried and could not apply (the
    /// deployment was rolled back); they are tried again when a deployment names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedComponent>,
}

/// A desired component that a device could not apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedComponent {
    /// Name.
    pub name: String,
    /// The desired version that failed.
    pub version: String,
    /// Why.
    pub error: String,
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

/// Most bytes the relay keeps of a short string a device reports about itself: versions, host
/// and interface names, kernel, architecture, addresses, mounts, component names and states.
/// Generous for any real value, small enough that one field cannot flood a table or a store.
pub const MAX_REPORTED_SHORT: usize = 256;

/// Most bytes the relay keeps of a free-text string a device reports: a deployment's message
/// and a component's or an action's last error.
pub const MAX_REPORTED_TEXT: usize = 4096;

/// What a reported string the relay cut at its limit ends with, so nobody takes it for the
/// whole value.
pub const TRUNCATED_MARKER: &str = "…[truncated]";

/// Cuts `s` to at most `max` bytes (at a char boundary), ending with [`TRUNCATED_MARKER`],
/// when it is longer than `max`; returns whether it was cut. A report is not refused for one
/// long field: refusing would lose everything else in it.
pub fn truncate_reported(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max.saturating_sub(TRUNCATED_MARKER.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    if s.len() + TRUNCATED_MARKER.len() <= max {
        s.push_str(TRUNCATED_MARKER);
    }
    true
}

/// Bounds `field` (named `name` for the list of cut fields) with [`truncate_reported`].
fn bound(cut: &mut Vec<String>, name: impl FnOnce() -> String, field: &mut String, max: usize) {
    if truncate_reported(field, max) {
        cut.push(name());
    }
}

/// Like [`bound`] for an optional field.
fn bound_opt(
    cut: &mut Vec<String>,
    name: impl FnOnce() -> String,
    field: &mut Option<String>,
    max: usize,
) {
    if let Some(f) = field {
        bound(cut, name, f, max);
    }
}

impl ReportedState {
    /// Cuts every string of the report to [`MAX_REPORTED_SHORT`] or [`MAX_REPORTED_TEXT`]
    /// bytes (see [`truncate_reported`]); returns the names of the fields that were cut, like
    /// `inventory.agent_version` or `components[2].last_error`, for the relay's log.
    /// Component configurations are JSON documents, not strings, and are left as they are.
    pub fn bound_strings(&mut self) -> Vec<String> {
        let mut cut = Vec::new();
        let c = &mut cut;
        bound_opt(
            c,
            || "deployment_id".into(),
            &mut self.deployment_id,
            MAX_REPORTED_SHORT,
        );
        bound_opt(c, || "message".into(), &mut self.message, MAX_REPORTED_TEXT);
        bound_opt(
            c,
            || "os_version".into(),
            &mut self.os_version,
            MAX_REPORTED_SHORT,
        );
        for (i, comp) in self.components.iter_mut().enumerate() {
            let at = |f: &str| format!("components[{i}].{f}");
            bound(c, || at("name"), &mut comp.name, MAX_REPORTED_SHORT);
            bound(c, || at("version"), &mut comp.version, MAX_REPORTED_SHORT);
            bound(c, || at("state"), &mut comp.state, MAX_REPORTED_SHORT);
            bound_opt(
                c,
                || at("last_error"),
                &mut comp.last_error,
                MAX_REPORTED_TEXT,
            );
        }
        for (i, f) in self.failed.iter_mut().enumerate() {
            let at = |x: &str| format!("failed[{i}].{x}");
            bound(c, || at("name"), &mut f.name, MAX_REPORTED_SHORT);
            bound(c, || at("version"), &mut f.version, MAX_REPORTED_SHORT);
            bound(c, || at("error"), &mut f.error, MAX_REPORTED_TEXT);
        }
        if let Some(inv) = &mut self.inventory {
            let short = MAX_REPORTED_SHORT;
            bound(c, || "inventory.hostname".into(), &mut inv.hostname, short);
            bound_opt(
                c,
                || "inventory.machine_id".into(),
                &mut inv.machine_id,
                short,
            );
            bound(c, || "inventory.kernel".into(), &mut inv.kernel, short);
            bound_opt(c, || "inventory.os".into(), &mut inv.os, short);
            bound_opt(
                c,
                || "inventory.os_version".into(),
                &mut inv.os_version,
                short,
            );
            bound(c, || "inventory.arch".into(), &mut inv.arch, short);
            bound(
                c,
                || "inventory.agent_version".into(),
                &mut inv.agent_version,
                short,
            );
            for (i, d) in inv.disks.iter_mut().enumerate() {
                let at = |f: &str| format!("inventory.disks[{i}].{f}");
                bound(c, || at("mount"), &mut d.mount, short);
                bound(c, || at("device"), &mut d.device, short);
                bound(c, || at("fs"), &mut d.fs, short);
            }
            for (i, n) in inv.interfaces.iter_mut().enumerate() {
                let at = |f: &str| format!("inventory.interfaces[{i}].{f}");
                bound(c, || at("name"), &mut n.name, short);
                bound_opt(c, || at("mac"), &mut n.mac, short);
                for (j, a) in n.addresses.iter_mut().enumerate() {
                    bound(c, || at(&format!("addresses[{j}]")), a, short);
                }
            }
        }
        cut
    }
}

/// Whether `s` is a sha256 in lowercase hex (64 characters).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reported_strings_are_cut_at_a_char_boundary_with_the_marker() {
        let mut short = "0.1.0".to_string();
        assert!(!truncate_reported(&mut short, MAX_REPORTED_SHORT));
        assert_eq!(short, "0.1.0");
        // Multi-byte characters across the cut: the result stays valid UTF-8 within the limit.
        let mut long = "é".repeat(1000);
        assert!(truncate_reported(&mut long, MAX_REPORTED_SHORT));
        assert!(long.len() <= MAX_REPORTED_SHORT, "{} bytes", long.len());
        assert!(long.ends_with(TRUNCATED_MARKER) && long.starts_with("éé"));
        let mut exact = "x".repeat(MAX_REPORTED_SHORT);
        assert!(!truncate_reported(&mut exact, MAX_REPORTED_SHORT));
    }

    #[test]
    fn a_report_is_bounded_field_by_field_and_names_what_was_cut() {
        let huge = "\u{1b}[2J\n".repeat(10_000);
        let mut report = ReportedState {
            message: Some(huge.clone()),
            components: vec![ReportedComponent {
                name: "app".into(),
                version: huge.clone(),
                state: "running".into(),
                errors: 0,
                restarts: 0,
                last_error: Some(huge.clone()),
                configuration: serde_json::Value::Null,
            }],
            inventory: Some(Inventory {
                hostname: huge.clone(),
                kernel: "6.1".into(),
                arch: "x86_64".into(),
                agent_version: huge.clone(),
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: None,
                    addresses: vec!["10.0.0.2/24".into(), huge],
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let cut = report.bound_strings();
        assert_eq!(
            cut,
            [
                "message",
                "components[0].version",
                "components[0].last_error",
                "inventory.hostname",
                "inventory.agent_version",
                "inventory.interfaces[0].addresses[1]",
            ]
        );
        let inventory = report.inventory.as_ref().map(|i| i.agent_version.len());
        assert!(inventory.is_some_and(|n| n <= MAX_REPORTED_SHORT));
        assert!(report.message.is_some_and(|m| m.len() <= MAX_REPORTED_TEXT));
        assert_eq!(report.components[0].name, "app");
        assert_eq!(report.components[0].state, "running");
    }
}
