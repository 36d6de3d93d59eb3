//! Shell completions and man pages generated from a program's clap definitions, so that what
//! `--help` says, what a shell completes and what `man` shows are one text and cannot drift.
//! Both programs expose them as `completions SHELL` and `man DIR`; the board and relay
//! packaging in `bsp/` installs what they print.

use std::io::Write;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Writes the completion script of `cmd` for `shell` to `out`.
///
/// The script is generated into memory first: clap_complete panics when its writer fails, and
/// a closed stdout (`agent completions bash | head`) must stay an ordinary write error.
pub fn write_completions(
    mut cmd: clap::Command,
    shell: Shell,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    out.write_all(&script)?;
    out.flush()
}

/// Writes the man pages of `cmd` into `dir` (created if missing): `NAME.1` and one
/// `NAME-SUBCOMMAND.1` per visible subcommand, nested ones included. Returns the program's
/// pages in `dir`, in name order.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_string();
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)?;
    let mut written = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
        let page = file.strip_suffix(".1").unwrap_or("");
        if page == name || page.starts_with(&format!("{name}-")) {
            written.push(path);
        }
    }
    written.sort();
    Ok(written)
}

/// What `PROGRAM man DIR` does: writes the pages into `dir` and prints each page's path on
/// `out`, one per line.
pub fn man_command(cmd: clap::Command, dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let pages = write_man_pages(cmd, dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing man pages into {}: {e}", dir.display()),
        )
    })?;
    for page in pages {
        writeln!(out, "{}", page.display())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo program.")
            .subcommand(
                clap::Command::new("device")
                    .about("Manage devices.")
                    .subcommand(clap::Command::new("list").about("List devices.")),
            )
            .subcommand(clap::Command::new("hidden").hide(true))
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn man_pages_cover_every_visible_subcommand() -> TestResult {
        let dir = tempfile::tempdir()?;
        let pages = write_man_pages(program(), dir.path())?;
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| p.file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"demo.1".to_string()), "{names:?}");
        assert!(names.contains(&"demo-device.1".to_string()), "{names:?}");
        assert!(
            names.contains(&"demo-device-list.1".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("hidden")), "{names:?}");
        let top = std::fs::read_to_string(dir.path().join("demo.1"))?;
        assert!(top.contains(".TH demo"), "{top}");
        Ok(())
    }

    #[test]
    fn completions_name_the_subcommands() -> TestResult {
        let mut out = Vec::new();
        write_completions(program(), Shell::Bash, &mut out)?;
        let script = String::from_utf8(out)?;
        assert!(
            script.contains("complete") && script.contains("device"),
            "{script}"
        );
        Ok(())
    }

    #[test]
    fn a_closed_writer_is_an_error_not_a_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let r = write_completions(program(), Shell::Zsh, &mut Closed);
        assert!(
            r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe),
            "{r:?}"
        );
    }
}
