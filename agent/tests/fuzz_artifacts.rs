//! Property tests of artifact unpacking (`tether_agent::apps::artifacts::unpack`): a `tar.gz` or
//! `zip` archive of hostile entries (`..` components, absolute names, symlinks and hard links
//! pointing out, entries through such links) unpacks or fails, never panics, and never
//! creates or changes anything outside the directory it unpacks into.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=20000 cargo test -p tether-agent --test fuzz_artifacts`.

mod common;

use common::fail;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tether_agent::apps::artifacts;
use tether_protocol::recipe::Unarchive;

/// Cases per property: 256. A case builds and unpacks an archive of a few entries in a fresh
/// directory, a millisecond or two in a debug build, so each property takes a second or so on
/// a 2-core machine and the file stays well under the 30 s budget of a bounded run.
const CASES: u32 = 256;

/// Where archives unpack, relative to the test's directory: deep enough that every `..` an
/// entry can hold (at most four) still lands inside the test's directory, never above it.
const INTO: &str = "l1/l2/l3/l4/into";

fn config() -> ProptestConfig {
    common::config(CASES)
}

/// A path an entry may name: up to four components, some of them `..` or `.`, relative or
/// absolute (`@` stands for the absolute path of the `outside` directory: absolute names only
/// ever point there, so that a reader that honoured them would write inside the test's
/// directory, not elsewhere on the machine).
fn entry_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop::sample::select(&["a", "b", "..", ".", "outside", "c.txt"][..]),
            1..=4,
        ),
        0u8..4,
    )
        .prop_map(|(parts, start)| {
            let rel = parts.join("/");
            match start {
                0 => format!("@/{rel}"),
                1 => format!("./{rel}"),
                _ => rel,
            }
        })
}

#[derive(Debug, Clone)]
enum Entry {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        3 => (entry_path(), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(p, d)| Entry::File(p, d)),
        1 => entry_path().prop_map(Entry::Dir),
        2 => (entry_path(), entry_path()).prop_map(|(p, t)| Entry::Symlink(p, t)),
        1 => (entry_path(), entry_path()).prop_map(|(p, t)| Entry::Hardlink(p, t)),
    ]
}

/// `@` (the placeholder for the outside directory) replaced by its absolute path.
fn resolve(path: &str, outside: &Path) -> String {
    path.replace('@', &outside.display().to_string())
}

/// A `tar.gz` of `entries`, names written raw into the headers (as a hostile archive would,
/// bypassing the checks of the tar writer).
fn tar_gz(entries: &[Entry], outside: &Path) -> Result<Vec<u8>, TestCaseError> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_old();
        let (path, link, kind, data): (&str, Option<&str>, tar::EntryType, &[u8]) = match e {
            Entry::File(p, d) => (p, None, tar::EntryType::Regular, d),
            Entry::Dir(p) => (p, None, tar::EntryType::Directory, &[]),
            Entry::Symlink(p, t) => (p, Some(t), tar::EntryType::Symlink, &[]),
            Entry::Hardlink(p, t) => (p, Some(t), tar::EntryType::Link, &[]),
        };
        let path = resolve(path, outside);
        let old = header.as_old_mut();
        if path.len() > old.name.len() {
            continue;
        }
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            let link = resolve(link, outside);
            if link.len() > old.linkname.len() {
                continue;
            }
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder.append(&header, data).map_err(fail)?;
    }
    let tar = builder.into_inner().map_err(fail)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).map_err(fail)?;
    gz.finish().map_err(fail)
}

/// A `zip` of `entries` (hard links become files: zip has none).
fn zip(entries: &[Entry], outside: &Path) -> Result<Vec<u8>, TestCaseError> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o755);
    for e in entries {
        // The writer may refuse an entry (a duplicate name, say); the archive is then built
        // without it.
        let _ = match e {
            Entry::File(p, d) => w
                .start_file(resolve(p, outside), options)
                .map_err(|e| e.to_string())
                .and_then(|()| w.write_all(d).map_err(|e| e.to_string())),
            Entry::Hardlink(p, _) => w
                .start_file(resolve(p, outside), options)
                .map_err(|e| e.to_string()),
            Entry::Dir(p) => w
                .add_directory(resolve(p, outside), options)
                .map_err(|e| e.to_string()),
            Entry::Symlink(p, t) => w
                .add_symlink(resolve(p, outside), resolve(t, outside), options)
                .map_err(|e| e.to_string()),
        };
    }
    Ok(w.finish().map_err(fail)?.into_inner())
}

/// Every path under `root` (not following symlinks), relative to it.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TestCaseError> {
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        out.push(path.strip_prefix(root).map_err(fail)?.to_owned());
        let meta = std::fs::symlink_metadata(&path).map_err(fail)?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

/// Unpacks `archive` as `kind` into [`INTO`] and checks that nothing appeared outside it.
fn check_contained(kind: Unarchive, entries: &[Entry]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let root = dir.path().canonicalize().map_err(fail)?;
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).map_err(fail)?;
    let archive = match kind {
        Unarchive::TarGz => tar_gz(entries, &outside)?,
        Unarchive::Zip => zip(entries, &outside)?,
    };
    let file = root.join("artifact");
    std::fs::write(&file, &archive).map_err(fail)?;
    let into = root.join(INTO);
    let _ = artifacts::unpack(&file, kind, &into, "fuzz");

    let mut found = Vec::new();
    walk(&root, &root, &mut found)?;
    let ancestors: Vec<PathBuf> = Path::new(INTO).ancestors().map(Path::to_path_buf).collect();
    for path in found {
        let allowed = path.starts_with(INTO)
            || ancestors.contains(&path)
            || path == Path::new("artifact")
            || path == Path::new("outside");
        prop_assert!(
            allowed,
            "{} was created outside {INTO} by {entries:?}",
            path.display()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Hostile tar.gz archives never reach outside the directory they unpack into.
    #[test]
    fn tar_gz_entries_stay_inside(entries in prop::collection::vec(entry(), 1..6)) {
        check_contained(Unarchive::TarGz, &entries)?;
    }

    /// Hostile zip archives never reach outside the directory they unpack into.
    #[test]
    fn zip_entries_stay_inside(entries in prop::collection::vec(entry(), 1..6)) {
        check_contained(Unarchive::Zip, &entries)?;
    }

    /// Arbitrary bytes as an archive of either kind are refused or unpack, never a panic.
    #[test]
    fn arbitrary_bytes_as_archives(bytes in prop::collection::vec(any::<u8>(), 0..256), as_zip in any::<bool>()) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let file = dir.path().join("artifact");
        std::fs::write(&file, &bytes).map_err(fail)?;
        let kind = if as_zip { Unarchive::Zip } else { Unarchive::TarGz };
        let _ = artifacts::unpack(&file, kind, &dir.path().join("into"), "fuzz");
    }
}
