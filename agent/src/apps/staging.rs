//! A component version's directory made ready before anything of it runs: the recipe, the
//! artifacts (fetched and checked), the unpacked archives, and access for the account the steps
//! run as; and old versions pruned once a new one is in place.

use std::path::Path;

use tether_protocol::recipe::Manifest;

use crate::account::Account;
use crate::apps::artifacts::{self, ArtifactError, Sources};
use crate::apps::component::Layout;
use crate::apps::error::{SupervisorError, io_err};

/// Adds search (x) permission for group and others to `dir`, never read: users who know a path
/// below it can reach it, nobody else can list it.
pub fn open_for_traversal(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o011 != 0o011 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))?;
    }
    Ok(())
}

/// Gives `root` and everything below it (not following symbolic links) to `account`.
fn chown_tree(root: &Path, account: &Account) -> std::io::Result<()> {
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        std::os::unix::fs::lchown(
            &path,
            Some(account.uid.as_raw()),
            Some(account.gid.as_raw()),
        )?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Lets a component that runs as another user than the agent use its version directory: the
/// directories on the way are opened for traversal only, and the artifacts and unpacked archives
/// are given to that user (keeping their modes), as is the work directory before each step. The
/// recipe, the component's record and its logs stay the agent's.
fn share_with(layout: &Layout, version: &str, account: &Account) -> std::io::Result<()> {
    open_for_traversal(&layout.root)?;
    open_for_traversal(&layout.version(version))?;
    for dir in [layout.artifacts(version), layout.unpacked(version)] {
        if dir.exists() {
            chown_tree(&dir, account)?;
        }
    }
    Ok(())
}

/// Prepares a version directory: the recipe's text, artifacts (fetched from `sources` and
/// checked), unpacked archives; shared with `account` when the component's steps run as
/// someone else.
pub async fn stage(
    layout: &Layout,
    version: &str,
    recipe_text: &str,
    sources: Sources,
    manifest: &Manifest,
    account: &Account,
) -> Result<(), SupervisorError> {
    let dir = layout.version(version);
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    std::fs::create_dir_all(layout.work()).map_err(io_err("creating the work directory"))?;
    let recipe_path = layout.recipe(version);
    std::fs::write(&recipe_path, recipe_text)
        .map_err(io_err(format!("writing {}", recipe_path.display())))?;
    let artifacts_dir = layout.artifacts(version);
    let unpacked_dir = layout.unpacked(version);
    let artifacts = manifest.artifacts.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ArtifactError> {
        for a in &artifacts {
            let path = artifacts::fetch(a, &sources, &artifacts_dir)?;
            if let Some(kind) = a.unarchive {
                let stem = a
                    .file_name()
                    .trim_end_matches(".tar.gz")
                    .trim_end_matches(".tgz")
                    .trim_end_matches(".zip")
                    .to_string();
                artifacts::unpack(
                    &path,
                    kind,
                    &unpacked_dir.join(stem),
                    &artifacts::describe(&a.uri),
                )?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| SupervisorError::Io {
        what: "artifact task".into(),
        source: std::io::Error::other(e.to_string()),
    })??;
    if account.switch {
        share_with(layout, version, account).map_err(io_err(format!(
            "sharing {} with {}",
            layout.version(version).display(),
            account.name
        )))?;
    }
    Ok(())
}

/// Deletes the component's version directories other than `current` and `previous`.
pub fn prune_versions(layout: &Layout, current: &str, previous: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(&layout.root) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().to_string();
        let is_version = e.path().join("recipe.yaml").exists();
        if is_version && file_name != current && Some(file_name.as_str()) != previous {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
