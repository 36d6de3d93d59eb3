//! Tests of the command line as a whole (its definitions, usage errors, the configuration)
//! and what the group modules' tests share: running `relay …` on a store in a directory.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use super::device::DEVICE_HEADER;
use super::{Cli, load_config, run};
use crate::store::Store;

/// What a test returns: any error fails it with its message.
pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An engineer's public key.
pub(super) const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ alice";

/// Runs `relay --data-dir <dir> args…` on the store there (created first, as `relay init`
/// would); returns stdout or the error as printed.
pub(super) fn relay(dir: &std::path::Path, args: &[&str]) -> Result<String, String> {
    Store::open(&dir.join("relay.db")).map_err(|e| e.to_string())?;
    let mut argv = vec!["relay", "--data-dir"];
    let dir = dir.display().to_string();
    argv.push(&dir);
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    run(cli, &mut out).map_err(|e| format!("{e:#}"))?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// Adds tenant `acme` and enrolls `board1` in it with a token made with `token_options`;
/// returns the store and the device.
pub(super) fn enrolled_board(
    dir: &std::path::Path,
    token_options: &[&str],
) -> Result<(Store, crate::store::Device), Box<dyn std::error::Error>> {
    relay(dir, &["tenant", "add", "acme"])?;
    let mut args = vec!["token", "create", "--tenant", "acme"];
    args.extend_from_slice(token_options);
    let secret = relay(dir, &args)?;
    let store = Store::open(&dir.join("relay.db"))?;
    let device = store
        .redeem_enroll_token(
            secret.trim(),
            crate::store::DeviceEnrollment {
                name: "board1".into(),
                public_key_openssh: KEY.into(),
                fingerprint: "SHA256:x".into(),
                agent_version: "0.1.0".into(),
                force: false,
            },
        )?
        .device;
    Ok((store, device))
}

#[test]
fn the_command_line_is_consistent_and_everything_has_help() {
    Cli::command().debug_assert();
    let mut cmd = Cli::command();
    cmd.build();
    fn check(cmd: &clap::Command, path: &str) {
        for sub in cmd.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            assert!(sub.get_about().is_some(), "{path} has no help");
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some() || arg.get_id() == "help",
                    "{path} {} has no help",
                    arg.get_id()
                );
            }
            check(sub, &path);
        }
    }
    check(&cmd, "relay");
}

#[test]
fn usage_errors_are_exit_code_2() {
    for argv in [
        vec!["relay"],
        vec!["relay", "token", "create"],
        vec!["relay", "token", "create", "--tenant", "a", "--ttl", "soon"],
        vec![
            "relay", "token", "create", "--tenant", "a", "--api", "--uses", "2",
        ],
        vec![
            "relay", "user", "add", "u", "--tenant", "a", "--role", "boss", "--key", "k",
        ],
        vec!["relay", "serve", "--ssh-listen", "nowhere"],
    ] {
        let e = Cli::try_parse_from(&argv).err();
        assert_eq!(e.map(|e| e.exit_code()), Some(2), "{argv:?}");
    }
    let help = Cli::try_parse_from(["relay", "device", "--help"]).err();
    assert_eq!(help.map(|e| e.exit_code()), Some(0));
}

#[test]
fn admin_commands_work_on_the_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    assert_eq!(
        relay(d, &["tenant", "add", "acme"])?,
        "tenant acme created\n"
    );
    assert_eq!(
        relay(d, &["tenant", "add", "acme"]).err().as_deref(),
        Some("tenant \"acme\" already exists")
    );
    let tenants: serde_json::Value =
        serde_json::from_str(&relay(d, &["tenant", "list", "--json"])?)?;
    assert_eq!(tenants[0]["name"], "acme");

    // `token create` prints the secret alone, so `TOKEN=$(relay token create …)` works.
    let secret = relay(d, &["token", "create", "--tenant", "acme", "--uses", "2"])?;
    assert!(
        secret.starts_with("tet_") && secret.trim_end().len() == 47,
        "{secret:?}"
    );
    assert_eq!(secret.lines().count(), 1);
    let created: serde_json::Value = serde_json::from_str(&relay(
        d,
        &["token", "create", "--tenant", "acme", "--api", "--json"],
    )?)?;
    assert_eq!(created["kind"], "api");
    assert!(created["expires_at"].is_null());
    assert_eq!(
        relay(d, &["token", "create", "--tenant", "nope"])
            .err()
            .as_deref(),
        Some("no tenant named \"nope\"")
    );
    let listed = relay(d, &["token", "list"])?;
    assert!(listed.starts_with("ID "), "{listed}");
    assert!(!listed.contains(secret.trim()), "token list shows a secret");
    let tokens: serde_json::Value =
        serde_json::from_str(&relay(d, &["token", "list", "--tenant", "acme", "--json"])?)?;
    assert_eq!(tokens[0]["uses_left"], 2);
    assert_eq!(tokens[0]["state"], "active");

    let key = d.join("alice.pub");
    std::fs::write(&key, format!("{KEY}\n"))?;
    let key_arg = key.display().to_string();
    let added = relay(
        d,
        &[
            "user", "add", "alice", "--tenant", "acme", "--role", "operator", "--key", &key_arg,
        ],
    )?;
    assert!(added.contains("as operator (SHA256:"), "{added}");
    std::fs::write(&key, "ssh-ed25519 garbage\n")?;
    let e = relay(
        d,
        &[
            "user", "add", "bob", "--tenant", "acme", "--role", "viewer", "--key", &key_arg,
        ],
    )
    .err()
    .unwrap_or_default();
    assert!(
        e.starts_with(&key_arg) && e.contains("not an OpenSSH public key"),
        "{e}"
    );
    std::fs::write(&key, KEY)?;
    assert_eq!(
        relay(
            d,
            &[
                "user", "add", "bob", "--tenant", "nope", "--role", "viewer", "--key", &key_arg
            ],
        )
        .err()
        .as_deref(),
        Some("no tenant named \"nope\"")
    );
    let e = relay(
        d,
        &[
            "user",
            "add",
            "bob",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--key",
            "/nonexistent.pub",
        ],
    )
    .err()
    .unwrap_or_default();
    assert!(e.contains("reading the public key /nonexistent.pub"), "{e}");
    let users = relay(d, &["user", "list"])?;
    assert!(
        users.contains("alice") && users.contains("operator"),
        "{users}"
    );

    assert_eq!(relay(d, &["device", "list", "--json"])?.trim(), "[]");
    assert_eq!(
        relay(d, &["device", "list"])?,
        format!("{}\n", DEVICE_HEADER.join("  "))
    );
    assert_eq!(
        relay(d, &["device", "show", "board1"]).err().as_deref(),
        Some("no device named \"board1\"")
    );
    assert_eq!(
        relay(d, &["device", "list", "--tenant", "nope"])
            .err()
            .as_deref(),
        Some("no tenant named \"nope\"")
    );
    Ok(())
}

#[test]
fn a_config_file_is_read_and_data_dir_overrides_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("relay.yaml");
    std::fs::write(
        &file,
        format!("data_dir: {}/from-file\n", dir.path().display()),
    )?;
    let cfg = file.display().to_string();
    let cli = Cli::try_parse_from(["relay", "--config", &cfg, "tenant", "list"])?;
    assert_eq!(load_config(&cli)?.data_dir, dir.path().join("from-file"));
    let cli = Cli::try_parse_from([
        "relay",
        "tenant",
        "list",
        "--config",
        &cfg,
        "--data-dir",
        "/x",
    ])?;
    assert_eq!(
        load_config(&cli)?.store_path(),
        PathBuf::from("/x/relay.db")
    );
    std::fs::write(&file, "bogus: 1\n")?;
    let cli = Cli::try_parse_from(["relay", "--config", &cfg, "tenant", "list"])?;
    let e = format!(
        "{:#}",
        load_config(&cli).err().ok_or("bad config accepted")?
    );
    assert!(e.contains("relay.yaml") && e.contains("bogus"), "{e}");
    Ok(())
}
