//! `relay backup DIR`: a copy of the data directory (a consistent snapshot of the store, also
//! while `relay serve` runs, the host key, artifacts and recordings), itself a data directory.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::change::{Change, record};
use super::output::print_json;
use crate::config::RelayConfig;
use crate::store::Store;

/// Runs `relay backup`, recorded in the audit trail.
pub(super) fn run(
    out: &mut dyn Write,
    store: &Store,
    config: &RelayConfig,
    dir: &Path,
    json: bool,
) -> Result<()> {
    // A copy of the whole store leaves the relay: that is worth a line in the trail.
    let shown = dir.display().to_string();
    let change = Change::new("store.backup", None, Some(&shown)).with("dir", &shown);
    let result = crate::backup::backup(config, store, dir)
        .with_context(|| format!("backing up to {}", dir.display()))
        .and_then(|summary| {
            if json {
                print_json(out, &summary)
            } else {
                writeln!(
                    out,
                    "backup in {}: store {} bytes, host key {}, {} artifacts, {} recordings",
                    summary.dir.display(),
                    summary.store_bytes,
                    if summary.host_key {
                        "copied"
                    } else {
                        "none yet"
                    },
                    summary.artifacts,
                    summary.recordings
                )
                .map_err(anyhow::Error::from)
            }
        });
    record(store, change, result)
}
