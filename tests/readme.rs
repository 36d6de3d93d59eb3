//! The README as a user follows it: its command blocks are read from README.md itself and run
//! against real relay and agent processes, so the documentation cannot drift from the CLI.
//!
//! Every `sh` block of the README is either run here or listed in [`NOT_RUN`] with the reason;
//! a new block fails [`every_shell_block_is_run_or_says_why_not`] until it is one or the other.
//! Where a block names things that cannot exist here (a relay host on the internet, an
//! operator's own key file), the test puts local stand-ins in their place and says which.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;

fn readme() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Every ```sh block of the README, in order.
fn shell_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == "```sh" => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// The first ```sh block after the first line containing `marker`.
fn block_after(text: &str, marker: &str) -> Result<String> {
    let at = text
        .find(marker)
        .with_context(|| format!("README has no {marker:?}"))?;
    shell_blocks(&text[at..])
        .into_iter()
        .next()
        .with_context(|| format!("README has no sh block after {marker:?}"))
}

/// Blocks (by their first line) that are not run, and why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "relay device tag board-17 edge",
        "needs an artifact and recipe named by placeholder (hello.yaml, dep_…)",
    ),
    (
        "agent app validate recipes/hello-http/recipe.yaml",
        "needs a running agent; the same commands run in tests/apps.rs",
    ),
    (
        "agent keygen --out release                    # release.key",
        "needs a root filesystem image; the first-try block below runs the same commands",
    ),
    (
        "curl -H \"Authorization: Bearer $API\" http://relay:8080/v1/devices",
        "names a relay host; the API is exercised in tests/isolation.rs",
    ),
];

/// Blocks (by their first line) that the tests below run.
const RUN: &[&str] = &[
    "./scripts/demo",
    "relay tenant add acme",
    "agent telemetry send sensors/temperature 21.5",
    "mkdir -p /tmp/ota-try && cd /tmp/ota-try",
];

#[test]
fn every_shell_block_is_run_or_says_why_not() -> Result<()> {
    let text = readme()?;
    for block in shell_blocks(&text) {
        let first = block.lines().next().unwrap_or_default().trim().to_string();
        let known = RUN.iter().any(|r| first.starts_with(r))
            || NOT_RUN.iter().any(|(r, _)| first.starts_with(r));
        ensure!(
            known,
            "README block starting {first:?} is neither run by tests/readme.rs nor listed in NOT_RUN"
        );
    }
    Ok(())
}

/// Runs `script` with bash (errexit, pipefail) in `dir` with the debug binaries first on PATH.
fn run_script(script: &str, dir: &Path, env: &[(&str, &str)]) -> Result<Run> {
    let path = format!(
        "{}:{}",
        bin_dir()?.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, None, Duration::from_secs(120))
}

/// The Quickstart section of the README: from its heading to the next one.
fn quickstart_section(text: &str) -> Result<&str> {
    let at = text
        .find("## Quickstart")
        .context("README has no Quickstart")?;
    let rest = &text[at..];
    let end = rest[2..].find("\n## ").map_or(rest.len(), |n| n + 2);
    Ok(&rest[..end])
}

/// The second quickstart command is the one script CI runs (it cannot run itself inside the
/// suite): `.ci/run` calls it, it runs the checks the README names, and the README names every
/// package it installs.
#[test]
fn the_quickstart_test_command_is_the_script_ci_runs() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let text = readme()?;
    let quickstart = block_after(&text, "## Quickstart")?;
    let second = quickstart
        .lines()
        .filter(|l| !l.trim().is_empty())
        .nth(1)
        .context("the quickstart has no second command")?
        .split('#')
        .next()
        .unwrap_or_default()
        .trim();
    ensure!(
        second == "./scripts/test",
        "the second quickstart command is {second:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("scripts/test");
    ensure!(
        std::fs::metadata(&path)?.permissions().mode() & 0o111 != 0,
        "scripts/test is not executable"
    );
    for script in ["scripts/test", ".ci/run"] {
        let mut cmd = Command::new("bash");
        cmd.arg("-n").arg(root.join(script));
        let r = run_with_timeout(cmd, None, Duration::from_secs(10))?;
        ensure!(r.status == Some(0), "{script} does not parse: {}", r.stderr);
    }
    let ci = std::fs::read_to_string(root.join(".ci/run"))?;
    ensure!(
        ci.lines()
            .any(|l| l.trim_start().starts_with("./scripts/test")),
        ".ci/run does not run scripts/test:\n{ci}"
    );

    let script = std::fs::read_to_string(&path)?;
    let section = quickstart_section(&text)?;
    for check in [
        "cargo fmt --all --check",
        "cargo clippy --workspace --all-targets -- -D warnings",
        "cargo test --workspace --no-fail-fast",
    ] {
        ensure!(
            script.lines().any(|l| l.trim() == format!("step {check}")),
            "scripts/test does not run `{check}`"
        );
        ensure!(
            section.contains(&format!("`{check}`")),
            "the Quickstart does not name `{check}`"
        );
    }
    // The table of tools: lines like `"ssh openssh-client"`, the package last.
    let packages: Vec<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix('"'))
        .filter_map(
            |entry| match entry.split_whitespace().collect::<Vec<_>>()[..] {
                [_, package] => Some(package),
                _ => None,
            },
        )
        .chain(["python3-pip", "ssh-audit", "asciinema"])
        .collect();
    ensure!(packages.len() > 3, "no tools table in scripts/test");
    for package in packages {
        ensure!(
            script.contains(package),
            "scripts/test does not install {package}"
        );
        if package != "python3-pip" {
            ensure!(
                section.contains(&format!("`{package}`")),
                "the Quickstart does not name `{package}`, which scripts/test installs"
            );
        }
    }
    Ok(())
}

#[test]
fn the_quickstart_demo_starts_a_relay_and_agent_that_ssh_reaches() -> Result<()> {
    let text = readme()?;
    let quickstart = block_after(&text, "## Quickstart")?;
    let first = quickstart
        .lines()
        .next()
        .context("empty quickstart")?
        .split('#')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    ensure!(
        first == "./scripts/demo",
        "quickstart starts with {first:?}"
    );
    ensure!(
        quickstart.lines().filter(|l| !l.trim().is_empty()).count() == 2,
        "the quickstart is two commands: {quickstart}"
    );

    let home = tempfile::tempdir()?;
    let demo_dir = home.path().join("demo");
    let (ssh_port, http_port) = (free_port()?, free_port()?);
    let mut demo = Command::new("bash")
        .arg("-c")
        .arg(&first)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", home.path())
        .env_remove("SSH_AUTH_SOCK")
        .env("TETHER_DEMO_BIN_DIR", bin_dir()?)
        .env("TETHER_DEMO_DIR", &demo_dir)
        .env("TETHER_DEMO_SSH_PORT", ssh_port.to_string())
        .env("TETHER_DEMO_HTTP_PORT", http_port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(
            home.path().join("demo.err"),
        )?))
        .process_group(0)
        .spawn()?;
    let result = (|| -> Result<()> {
        let stdout = demo.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut shell, mut command) = (None, None);
        let mut printed = String::new();
        while (shell.is_none() || command.is_none()) && Instant::now() < deadline {
            let line = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => line,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                // The demo ended before printing its ssh lines.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            printed.push_str(&line);
            printed.push('\n');
            if let Some(l) = line.trim().strip_prefix("open a shell:") {
                shell = Some(l.trim().to_string());
            }
            if let Some(l) = line.trim().strip_prefix("run a command:") {
                command = Some(l.trim().to_string());
            }
        }
        let (Some(shell), Some(command)) = (shell, command) else {
            let err = std::fs::read_to_string(home.path().join("demo.err")).unwrap_or_default();
            let logs: Vec<String> = ["relay.log", "agent.log"]
                .iter()
                .map(|f| std::fs::read_to_string(demo_dir.join(f)).unwrap_or_default())
                .map(|l| tail_lines(&l, 20))
                .collect();
            bail!(
                "the demo printed no ssh lines within 120 s:\n{printed}\nstderr:\n{err}\nlogs:\n{}",
                logs.join("\n---\n")
            );
        };
        // The shell line, as printed, with a command instead of a terminal; it also records
        // the relay's host key, which the command line then relies on, as a person would.
        let env = [("HOME", home.path().to_str().unwrap_or_default())];
        let r = run_script(&format!("{shell} echo from-the-demo"), home.path(), &env)?;
        ensure!(
            r.status == Some(0) && r.stdout.contains("from-the-demo"),
            "the demo's shell line: {:?} {}",
            r.status,
            r.stderr
        );
        let r = run_script(&command, home.path(), &env)?;
        ensure!(
            r.status == Some(0) && r.stdout.contains("load average"),
            "the demo's command line: {:?} {}",
            r.status,
            r.stderr
        );
        Ok(())
    })();
    // Ctrl-C, as the demo says: it stops relay and agent.
    let _ = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", demo.id())])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && matches!(demo.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if matches!(demo.try_wait(), Ok(None)) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", demo.id())])
            .status();
        let _ = demo.wait();
        result?;
        bail!("the demo did not stop on Ctrl-C");
    }
    result
}

#[test]
fn the_operator_commands_run_as_written() -> Result<()> {
    let relay = Relay::start()?;
    let text = readme()?;
    let block = block_after(
        &text,
        "Operators work on the relay's store with the admin commands",
    )?;
    // Stand-ins: the relay runs here, and alice's public key is one made for the test.
    let script = block.replace(
        "ssh://relay.example.com:2222",
        &format!("ssh://127.0.0.1:{}", relay.ssh_port),
    );
    let dir = tempfile::tempdir()?;
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(dir.path().join("alice"))
        .stdout(Stdio::null())
        .status()?;
    ensure!(st.success(), "ssh-keygen failed");
    let relay_yaml = dir.path().join("relay.yaml");
    std::fs::write(
        &relay_yaml,
        format!("data_dir: {}\n", relay.data_dir().display()),
    )?;
    let agent_yaml = dir.path().join("agent.yaml");
    std::fs::write(
        &agent_yaml,
        format!("state_dir: {}\n", dir.path().join("board").display()),
    )?;
    let r = run_script(
        &script,
        dir.path(),
        &[
            (
                "TETHER_RELAY_CONFIG",
                relay_yaml.to_str().unwrap_or_default(),
            ),
            (
                "TETHER_AGENT_CONFIG",
                agent_yaml.to_str().unwrap_or_default(),
            ),
        ],
    )?;
    ensure!(
        r.status == Some(0),
        "the operator block failed ({:?}):\n{script}\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );
    let board = relay.device_json("board-17")?;
    ensure!(board["status"] == "rejected", "board-17: {board}");
    Ok(())
}

#[test]
fn the_telemetry_commands_run_as_written() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let text = readme()?;
    let block = block_after(&text, "Producing on the board:")?;
    // Stand-in: `producer` is whatever program writes NDJSON; here, printf.
    let script = block.replace(
        "producer |",
        r#"printf '{"topic":"sensors/t","value":1}\n' |"#,
    );
    let r = run_script(
        &script,
        s.agent.dir.path(),
        &[(
            "TETHER_AGENT_CONFIG",
            s.agent.config.to_str().unwrap_or_default(),
        )],
    )?;
    ensure!(
        r.status == Some(0),
        "the telemetry block failed ({:?}):\n{script}\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );
    s.agent.wait_drained(Duration::from_secs(20))?;
    let stored = s.relay.stored_telemetry("board1")?;
    for topic in ["sensors/temperature", "sensors/door", "sensors/t"] {
        ensure!(
            stored.iter().any(|r| r["topic"] == topic),
            "{topic} not stored: {stored:?}"
        );
    }
    ensure!(
        stored.iter().any(|r| r["kind"] == "event"),
        "the event is not stored: {stored:?}"
    );
    Ok(())
}

#[test]
fn the_first_os_update_on_a_development_machine_runs_as_written() -> Result<()> {
    let text = readme()?;
    let block = block_after(&text, "A first try needs no board")?;
    let dir = tempfile::tempdir()?;
    // Stand-in: a private directory instead of the fixed /tmp/ota-try.
    let script = block.replace("/tmp/ota-try", &dir.path().display().to_string());
    let r = run_script(&script, dir.path(), &[])?;
    ensure!(
        r.status == Some(0) && r.stdout.contains("committed 1.1.0 in slot B"),
        "the first-try block ({:?}):\n{script}\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );
    Ok(())
}
