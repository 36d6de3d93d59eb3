//! Interoperability with libubootenv's `fw_printenv` and `fw_setenv`: the agent and the tools
//! read each other's writes of a single and a redundant environment, across the wrap of the
//! flags byte and a torn write. Skipped where the tools are not installed.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::UbootEnv;
use super::format::newer_of;
use super::tests::image;
use crate::ota::bootenv::BootEnv;
use crate::ota::bootenv::test_support::{set, vars};

type TestResult = Result<(), Box<dyn Error>>;

/// The path of a tool on PATH, or `None` (the test is then skipped).
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        eprintln!("{name} is not installed; skipping");
    }
    found
}

fn run(tool: &Path, args: &[&str]) -> Result<String, Box<dyn Error>> {
    let out = Command::new(tool).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "{} {args:?}: {}: {}",
            tool.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn fw_printenv_and_fw_setenv_share_a_single_environment() -> TestResult {
    let (Some(printenv), Some(setenv)) = (tool("fw_printenv"), tool("fw_setenv")) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let dev = image(dir.path())?;
    let config = dir.path().join("fw_env.config");
    std::fs::write(&config, format!("# test\n{} 0x4000 4000\n", dev.display()))?;
    let cfg = config.to_str().ok_or("non-UTF-8 temp path")?;
    let env = UbootEnv::from_config(&config)?;
    env.replace_all(&BTreeMap::new())?;
    env.write(&set(&[
        ("BOOT_ORDER", Some("A B")),
        ("BOOT_A_LEFT", Some("3")),
    ]))?;
    assert_eq!(
        run(&printenv, &["-c", cfg])?,
        "BOOT_A_LEFT=3\nBOOT_ORDER=A B\n"
    );
    run(&setenv, &["-c", cfg, "BOOT_B_LEFT", "2"])?;
    assert_eq!(
        env.read()?,
        vars(&[
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "2"),
            ("BOOT_ORDER", "A B")
        ])
    );
    // Deleting from either side.
    run(&setenv, &["-c", cfg, "BOOT_A_LEFT"])?;
    env.write(&set(&[("BOOT_B_LEFT", None)]))?;
    assert_eq!(run(&printenv, &["-c", cfg])?, "BOOT_ORDER=A B\n");
    assert_eq!(env.read()?, vars(&[("BOOT_ORDER", "A B")]));
    Ok(())
}

#[test]
fn fw_printenv_and_fw_setenv_share_a_redundant_environment() -> TestResult {
    let (Some(printenv), Some(setenv)) = (tool("fw_printenv"), tool("fw_setenv")) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let dev = image(dir.path())?;
    let other = dir.path().join("env2.img");
    std::fs::write(&other, vec![0u8; 0x8000])?;
    let config = dir.path().join("fw_env.config");
    std::fs::write(
        &config,
        format!(
            "{} 0x4000 0x4000\n{} 0x2000 0x4000\n",
            dev.display(),
            other.display()
        ),
    )?;
    let cfg = config.to_str().ok_or("non-UTF-8 temp path")?;
    let env = UbootEnv::from_config(&config)?;
    env.replace_all(&vars(&[("BOOT_ORDER", "A B")]))?;
    let mut expected = vars(&[("BOOT_ORDER", "A B")]);
    let listing = |vars: &BTreeMap<String, String>| {
        vars.iter()
            .map(|(n, v)| format!("{n}={v}\n"))
            .collect::<String>()
    };
    // Alternate writers across the 255 → 0 wrap of the flags byte.
    for round in 0..260u32 {
        let value = round.to_string();
        if round % 3 == 0 {
            run(&setenv, &["-c", cfg, "BOOT_A_LEFT", &value])?;
        } else {
            env.write(&set(&[("BOOT_A_LEFT", Some(&value))]))?;
        }
        expected.insert("BOOT_A_LEFT".into(), value);
        assert_eq!(env.read()?, expected, "round {round}");
        if round % 3 != 2 || round > 250 {
            assert_eq!(
                run(&printenv, &["-c", cfg])?,
                listing(&expected),
                "round {round}"
            );
        }
    }
    // A power cut tearing the next write: both sides fall back to the previous environment.
    let previous = expected.clone();
    env.write(&set(&[("BOOT_A_LEFT", Some("final"))]))?;
    let flags = |path: &Path, offset: usize| std::fs::read(path).map(|b| b[offset + 4]);
    let (newer, offset) = match newer_of(flags(&dev, 0x4000)?, flags(&other, 0x2000)?) {
        0 => (&dev, 0x4000),
        _ => (&other, 0x2000),
    };
    let mut bytes = std::fs::read(newer)?;
    bytes[offset + 5..offset + 0x4000].fill(0xff);
    std::fs::write(newer, &bytes)?;
    assert_eq!(env.read()?, previous);
    assert_eq!(run(&printenv, &["-c", cfg])?, listing(&previous));
    Ok(())
}
