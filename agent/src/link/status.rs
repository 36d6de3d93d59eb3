//! The link state that `agent run` publishes and `agent status` reads.
//!
//! `agent run` rewrites a small JSON file in the state directory on every link state change;
//! `agent status` combines it with the enrollment record. A file left by an agent that is no
//! longer running is reported as `stopped`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the link state inside the state directory.
pub const STATUS_FILE: &str = "link-status.json";

/// State of the device link.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Dialling the relay.
    Connecting,
    /// Connected and authenticated; the relay can reach the device.
    Online,
    /// Waiting before the next attempt after a failure or disconnect.
    Offline,
    /// No agent is running.
    Stopped,
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkState::Connecting => "connecting",
            LinkState::Online => "online",
            LinkState::Offline => "offline",
            LinkState::Stopped => "stopped",
        })
    }
}

/// What `agent run` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Current state.
    pub state: LinkState,
    /// When the state began (RFC 3339).
    pub since: String,
    /// The last connection error, if the link is not up.
    pub last_error: Option<String>,
    /// Process id of the agent that wrote this.
    pub pid: u32,
}

/// Path of the status file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Records a new link state. Failures are logged, never fatal: status is informational.
pub fn publish(state_dir: &Path, state: LinkState, last_error: Option<String>) {
    let status = LinkStatus {
        state,
        since: tether_protocol::clock::now_rfc3339(),
        last_error,
        pid: std::process::id(),
    };
    let bytes = match serde_json::to_vec_pretty(&status) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("cannot encode link status: {e}");
            return;
        }
    };
    let path = path(state_dir);
    if let Err(e) = crate::atomic_file::write(&path, &bytes) {
        tracing::warn!("cannot write link status: {}: {e}", path.display());
    }
}

/// Reads the link state, reporting `stopped` when the writer is gone.
pub fn read(state_dir: &Path) -> LinkStatus {
    let stopped = |since: String| LinkStatus {
        state: LinkState::Stopped,
        since,
        last_error: None,
        pid: 0,
    };
    let Ok(text) = std::fs::read_to_string(path(state_dir)) else {
        return stopped(String::new());
    };
    match serde_json::from_str::<LinkStatus>(&text) {
        Ok(status) if process_alive(status.pid) => status,
        Ok(status) => stopped(status.since),
        Err(_) => stopped(String::new()),
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}
