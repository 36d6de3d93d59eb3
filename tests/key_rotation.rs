//! Device key rotation: `agent keys rotate` registers a new key over the link, the running
//! agent switches to it, the relay retires the old one (refused afterwards, also to stock
//! OpenSSH), and a rotation stopped at either point where it could be cut short leaves a
//! device that still connects.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;

/// The agent's current key fingerprint.
fn fingerprint(agent: &Agent) -> Result<String> {
    let r = agent.cmd(&["keys", "show", "--json"])?;
    ensure!(r.status == Some(0), "keys show: {}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout)?;
    Ok(v["fingerprint"].as_str().unwrap_or_default().to_string())
}

/// Logs in as the device link user with `key`; true if the relay accepted the key.
fn relay_accepts(relay: &Relay, key: &Path) -> Result<bool> {
    let mut c = ssh_with_key(relay, key, &[], "tether-link@127.0.0.1");
    c.arg("true");
    let r = run_with_timeout(c, None, Duration::from_secs(20))?;
    Ok(!r.stderr.contains("Permission denied"))
}

/// The state directory's device key file.
fn key_file(agent: &Agent) -> std::path::PathBuf {
    agent.dir.path().join("state").join("device_ed25519")
}

#[test]
fn a_rotated_key_works_and_the_old_one_is_refused() -> Result<()> {
    let s = Setup::new(Transport::WebSocket)?;
    let old_fp = fingerprint(&s.agent)?;
    let keep = tempfile::tempdir()?;
    let old_key = keep.path().join("old");
    std::fs::copy(key_file(&s.agent), &old_key)?;
    ensure!(
        relay_accepts(&s.relay, &old_key)?,
        "the old key is refused before rotation"
    );

    let r = s.agent.cmd(&["keys", "rotate", "--json"])?;
    ensure!(r.status == Some(0), "rotate: {} {}", r.stdout, r.stderr);
    let out: Value = serde_json::from_str(&r.stdout)?;
    let new_fp = out["new"].as_str().context("new")?.to_string();
    ensure!(
        out["old"] == old_fp.as_str() && new_fp != old_fp && out["confirmed"] == true,
        "{out}"
    );
    ensure!(
        fingerprint(&s.agent)? == new_fp,
        "the key file was not replaced"
    );

    // The relay dropped the link held with the old key; the running agent comes back with
    // the new one, and sessions work (the relay checks the device's host key against it).
    let id = s.agent.device_id()?;
    wait_until(
        Duration::from_secs(30),
        "a session on the rotated device",
        || {
            s.engineer
                .exec("board1", "echo rotated")
                .is_ok_and(|r| r.status == Some(0) && r.stdout.trim() == "rotated")
        },
    )
    .with_context(|| s.agent.log())?;
    let d = s.relay.device_json(&id)?;
    ensure!(
        d["fingerprint"] == new_fp.as_str() && d["online"] == true,
        "{d}"
    );
    ensure!(
        !relay_accepts(&s.relay, &old_key)?,
        "the retired key is still accepted"
    );
    let trail = s.relay.admin_ok(&["audit", "list", "--json"])?;
    ensure!(
        trail.contains("device.key.register") && trail.contains("device.key.rotate"),
        "{trail}"
    );
    Ok(())
}

/// Registers `public_key` as the device's next key straight in the relay's store: what the
/// relay holds after the registration step of a rotation.
fn register_next(relay: &Relay, device_id: &str, public_key: &str, fp: &str) -> Result<()> {
    let db = rusqlite::Connection::open(relay.data_dir().join("relay.db"))?;
    let n = db.execute(
        "UPDATE devices SET next_public_key = ?2, next_fingerprint = ?3 WHERE id = ?1",
        rusqlite::params![device_id, public_key.trim(), fp],
    )?;
    ensure!(n == 1, "no device {device_id}");
    Ok(())
}

#[test]
fn a_rotation_cut_short_leaves_a_device_that_connects() -> Result<()> {
    let mut s = Setup::new(Transport::Tcp)?;
    let id = s.agent.device_id()?;
    let dir = tempfile::tempdir()?;
    let new_key = dir.path().join("new");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&new_key)
        .status()?;
    ensure!(st.success());
    let public_key = std::fs::read_to_string(dir.path().join("new.pub"))?;
    let fp_out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(dir.path().join("new.pub"))
        .output()?;
    let new_fp = String::from_utf8_lossy(&fp_out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    ensure!(new_fp.starts_with("SHA256:"), "{new_fp}");

    // Cut after the relay learned the new key, before the agent replaced its file: the old
    // key still works.
    register_next(&s.relay, &id, &public_key, &new_fp)?;
    s.agent.kill();
    s.agent.start()?;
    s.agent.wait_online()?;
    let r = s.engineer.exec("board1", "echo still-old")?;
    ensure!(r.status == Some(0), "{}", r.stderr);

    // Cut after the file was replaced, before the relay saw the new key log in: the agent's
    // next login with it completes the rotation.
    s.agent.kill();
    std::fs::copy(&new_key, key_file(&s.agent))?;
    s.agent.start()?;
    s.agent.wait_online()?;
    let r = s.engineer.exec("board1", "echo now-new")?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == "now-new",
        "{}",
        r.stderr
    );
    let d = s.relay.device_json(&id)?;
    ensure!(d["fingerprint"] == new_fp.as_str(), "{d}");
    Ok(())
}
