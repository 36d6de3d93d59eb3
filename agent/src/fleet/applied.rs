//! What the device last applied of the relay's desired state, kept in `fleet.json` in the state
//! directory (written atomically): the version, how it ended, the components it put there, and
//! the ones that failed, so each desired version is worked on once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tether_protocol::fleet::{DeploymentStatus, DesiredComponent};

/// The contents of `fleet.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Applied {
    /// The last desired version worked on.
    pub version: u64,
    /// The deployment that version came from.
    pub deployment_id: Option<String>,
    /// How it ended.
    pub status: Option<DeploymentStatus>,
    /// Why, when it did not succeed.
    pub message: Option<String>,
    /// The components it leaves on the device, as the relay described them.
    pub components: BTreeMap<String, DesiredComponent>,
    /// An OS version installed and rebooted into, whose commit or rollback is awaited.
    #[serde(default)]
    pub os_installing: Option<String>,
    /// Desired components that were tried and not applied, with the spec that failed: they
    /// are tried again only when a version names them (or their spec changes).
    #[serde(default)]
    pub failed: BTreeMap<String, FailedSpec>,
}

/// A desired component that could not be applied, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedSpec {
    /// The spec that failed.
    pub component: DesiredComponent,
    /// Why it failed.
    pub error: String,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("fleet.json")
}

/// Reads `fleet.json`; nothing applied yet when it is missing or unreadable.
pub fn load(state_dir: &Path) -> Applied {
    std::fs::read(path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes `fleet.json` atomically (write, fsync, rename).
pub fn save(state_dir: &Path, applied: &Applied) -> std::io::Result<()> {
    let path = path(state_dir);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(applied).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}
