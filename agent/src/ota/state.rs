//! What the agent knows about the board's slots and updates, kept in `<state_dir>/ota.json`
//! and written atomically (write, fsync, rename), so a power cut leaves the old record or the
//! new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ota::error::{OtaError, io};

/// What the agent knows about one slot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SlotInfo {
    /// OS version installed in it, when the agent installed it.
    pub version: Option<String>,
    /// `good`, `bad`, `installing` or `pending` (installed, not yet committed).
    pub state: String,
}

/// An update waiting for its trial boot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    /// The slot it went into.
    pub slot: String,
    /// Its version.
    pub version: String,
    /// The slot that was running when it was installed.
    pub from: String,
}

/// `ota.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OtaState {
    /// Per slot name.
    pub slots: BTreeMap<String, SlotInfo>,
    /// The update on trial, if any.
    pub pending: Option<Pending>,
    /// How the last update ended (`committed 1.2.0 in B`, `rolled back: …`).
    pub last_outcome: Option<String>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("ota.json")
}

/// Reads `ota.json`; nothing known yet when it is missing or unreadable.
pub fn load(state_dir: &Path) -> OtaState {
    std::fs::read(path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes `ota.json` atomically, creating the state directory if needed.
pub fn save(state_dir: &Path, state: &OtaState) -> Result<(), OtaError> {
    let path = path(state_dir);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(state).map_err(|e| OtaError::Io {
        what: "encoding ota.json".into(),
        source: std::io::Error::other(e),
    })?;
    tether_protocol::private_fs::create_dir(state_dir)
        .map_err(io("creating the state directory"))?;
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
    f.write_all(&text)
        .map_err(io(format!("writing {}", tmp.display())))?;
    f.sync_all()
        .map_err(io(format!("syncing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))
}
