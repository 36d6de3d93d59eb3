//! `bsp/install` as an image build and an administrator use it: the binary, unit, example
//! configuration, shell completions and man pages land where Debian and systemd look for them,
//! the completions and pages come from the program itself and cover every visible subcommand,
//! a second run upgrades without touching an edited configuration, and bad arguments are usage
//! errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::*;

fn install_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bsp/install")
}

fn install(program: &str, destdir: &Path) -> Result<Run> {
    let mut cmd = Command::new(install_script());
    cmd.arg(program)
        .arg("--bin")
        .arg(bin_dir()?.join(program))
        .arg("--destdir")
        .arg(destdir);
    run_with_timeout(cmd, None, Duration::from_secs(60))
}

/// The subcommand paths `--help` lists, as man page names (`agent-app-deploy`), one level deep
/// below each group.
fn visible_pages(program: &str) -> Result<Vec<String>> {
    let help = |args: &[&str]| -> Result<String> {
        let mut cmd = Command::new(bin_dir()?.join(program));
        cmd.args(args).arg("--help");
        Ok(run_with_timeout(cmd, None, Duration::from_secs(20))?.stdout)
    };
    let commands = |text: &str| -> Vec<String> {
        text.split("Commands:")
            .nth(1)
            .unwrap_or("")
            .split("\n\n")
            .next()
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_string)
            .collect()
    };
    let mut pages = vec![program.to_string()];
    for top in commands(&help(&[])?) {
        pages.push(format!("{program}-{top}"));
        for sub in commands(&help(&[&top])?) {
            pages.push(format!("{program}-{top}-{sub}"));
        }
    }
    Ok(pages)
}

#[test]
fn both_programs_install_with_completions_and_a_page_per_subcommand() -> Result<()> {
    let dest = tempfile::tempdir()?;
    for program in ["agent", "relay"] {
        let r = install(program, dest.path())?;
        ensure!(r.status == Some(0), "bsp/install {program}: {}", r.stderr);
        let usr = dest.path().join("usr");
        ensure!(usr.join("bin").join(program).is_file(), "no binary");
        for completion in [
            format!("share/bash-completion/completions/{program}"),
            format!("share/zsh/vendor-completions/_{program}"),
            format!("share/fish/vendor_completions.d/{program}.fish"),
        ] {
            let text = std::fs::read_to_string(usr.join(&completion))?;
            ensure!(
                text.contains(program),
                "{completion} does not name {program}"
            );
        }
        // bash loads the script and registers the completion function.
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(format!(
            "source {}; complete -p {program}",
            usr.join("share/bash-completion/completions")
                .join(program)
                .display()
        ));
        let r = run_with_timeout(cmd, None, Duration::from_secs(20))?;
        ensure!(
            r.status == Some(0) && r.stdout.contains(&format!("_{program}")),
            "bash completion of {program} not registered: {} {}",
            r.stdout,
            r.stderr
        );

        let man1 = usr.join("share/man/man1");
        let pages = visible_pages(program)?;
        ensure!(pages.len() > 10, "only {pages:?} in --help");
        for page in &pages {
            let path = man1.join(format!("{page}.1"));
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            ensure!(
                text.contains(&format!(".TH {page}")),
                "{page}.1 has no title"
            );
        }
        // Hidden commands (the agent's sftp-server helper) get no page.
        ensure!(!man1.join(format!("{program}-sftp-server.1")).exists());
        if Path::new("/usr/bin/man").exists() {
            let mut cmd = Command::new("man");
            cmd.env("MANPAGER", "cat")
                .env("MANWIDTH", "100")
                .arg("-l")
                .arg(man1.join(format!("{program}.1")));
            let r = run_with_timeout(cmd, None, Duration::from_secs(20))?;
            ensure!(
                r.status == Some(0) && r.stdout.contains("NAME") && r.stdout.contains(program),
                "man cannot render {program}.1: {}",
                r.stderr
            );
        }
    }
    let unit = dest.path().join("etc/systemd/system/tether-agent.service");
    ensure!(unit.is_file(), "no agent unit");
    Ok(())
}

#[test]
fn a_second_install_upgrades_and_keeps_the_configuration() -> Result<()> {
    let dest = tempfile::tempdir()?;
    let r = install("agent", dest.path())?;
    ensure!(r.status == Some(0), "{}", r.stderr);
    let config = dest.path().join("etc/tether/agent.yaml");
    ensure!(config.is_file(), "no configuration installed");
    std::fs::write(&config, "# edited on the board\nrelay:\n  urls: []\n")?;
    let page = dest.path().join("usr/share/man/man1/agent.1");
    std::fs::write(&page, "stale")?;
    let r = install("agent", dest.path())?;
    ensure!(r.status == Some(0), "{}", r.stderr);
    ensure!(
        std::fs::read_to_string(&config)?.starts_with("# edited on the board"),
        "the second install overwrote the configuration"
    );
    ensure!(
        std::fs::read_to_string(&page)?.contains(".TH agent"),
        "the second install did not refresh the man page"
    );
    Ok(())
}

#[test]
fn bad_arguments_are_usage_errors_and_a_missing_binary_a_failure() -> Result<()> {
    let dest = tempfile::tempdir()?;
    for args in [&["board"][..], &[][..], &["agent", "--colour"][..]] {
        let mut cmd = Command::new(install_script());
        cmd.args(args);
        let r = run_with_timeout(cmd, None, Duration::from_secs(20))?;
        ensure!(r.status == Some(2), "{args:?}: exit {:?}", r.status);
        ensure!(
            r.stderr.contains("usage: bsp/install"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let mut cmd = Command::new(install_script());
    cmd.args(["relay", "--bin"])
        .arg(dest.path().join("no-such-relay"))
        .arg("--destdir")
        .arg(dest.path());
    let r = run_with_timeout(cmd, None, Duration::from_secs(20))?;
    ensure!(r.status == Some(1), "exit {:?}: {}", r.status, r.stderr);
    ensure!(r.stderr.contains("no relay binary"), "{}", r.stderr);
    ensure!(
        std::fs::read_dir(dest.path())?.next().is_none(),
        "a failed install left files behind"
    );
    Ok(())
}
