//! Engineers log in with OpenSSH user certificates signed by a CA their tenant trusts
//! (`relay tenant trust-ca`), made and used by the real ssh-keygen and ssh: validity interval,
//! principals, critical options and the CA's role are honoured, refusals are audited, and
//! registered keys keep working beside them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::*;

fn keygen(dir: &Path, name: &str) -> Result<PathBuf> {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()?;
    ensure!(st.success(), "ssh-keygen {name}");
    Ok(key)
}

/// Signs `key`.pub with `ca` into `key`-cert.pub with extra ssh-keygen options.
fn sign(ca: &Path, key: &Path, id: &str, options: &[&str]) -> Result<PathBuf> {
    let st = Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(ca)
        .args(["-I", id])
        .args(options)
        .arg(format!("{}.pub", key.display()))
        .status()?;
    ensure!(st.success(), "ssh-keygen -s for {id}");
    Ok(PathBuf::from(format!("{}-cert.pub", key.display())))
}

/// ssh to `device` with `key` and its certificate (if any) only.
fn ssh_with(relay: &Relay, key: &Path, cert: Option<&Path>, command: &str) -> Result<Run> {
    let cert_option = cert.map(|c| format!("CertificateFile={}", c.display()));
    let extra: Vec<&str> = match &cert_option {
        Some(o) => vec!["-o", o],
        None => vec![],
    };
    let mut c = ssh_with_key(relay, key, &extra, "board1@127.0.0.1");
    c.arg(command);
    run_with_timeout(c, None, Duration::from_secs(30))
}

#[test]
fn certificates_from_a_trusted_ca_log_in_within_their_limits() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let dir = tempfile::tempdir()?;
    let ca = keygen(dir.path(), "ca")?;
    s.relay.admin_ok(&[
        "tenant",
        "trust-ca",
        "acme",
        "--key",
        &format!("{}.pub", ca.display()),
        "--principal",
        "carol",
        "--principal",
        "dave",
    ])?;
    let listed = s.relay.admin_ok(&["tenant", "cas", "acme", "--json"])?;
    ensure!(
        listed.contains("\"carol\"") && listed.contains("operator"),
        "{listed}"
    );

    // A valid certificate for carol, whose key no one registered.
    let carol = keygen(dir.path(), "carol")?;
    let cert = sign(
        &ca,
        &carol,
        "carol@example.com",
        &["-n", "carol", "-V", "-5m:+1h"],
    )?;
    let r = ssh_with(&s.relay, &carol, Some(&cert), "echo hello-$((6*7))")?;
    ensure!(
        r.status == Some(0) && r.stdout.trim() == "hello-42",
        "certificate login: {:?} {}",
        r.status,
        r.stderr
    );
    // Without the certificate the bare key is nobody (ssh picks up KEY-cert.pub beside a key
    // by itself, so the bare key goes elsewhere).
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare)?;
    std::fs::copy(&carol, bare.join("carol"))?;
    let r = ssh_with(&s.relay, &bare.join("carol"), None, "true")?;
    ensure!(r.status == Some(255), "the bare key got in: {}", r.stdout);

    // Refused: expired, wrong principal, no principal, unsupported or unmet critical options.
    let refused: [(&str, &[&str]); 5] = [
        ("expired", &["-n", "carol", "-V", "20200101:20200102"]),
        ("wrong-principal", &["-n", "mallory", "-V", "-5m:+1h"]),
        ("not-yet-valid", &["-n", "carol", "-V", "+1d:+2d"]),
        (
            "elsewhere",
            &["-n", "carol", "-O", "source-address=192.0.2.0/24"],
        ),
        ("forced", &["-n", "carol", "-O", "force-command=ls"]),
    ];
    for (name, options) in refused {
        let key = keygen(dir.path(), name)?;
        let cert = sign(&ca, &key, name, options)?;
        let r = ssh_with(&s.relay, &key, Some(&cert), "true")?;
        ensure!(
            r.status == Some(255) && r.stderr.contains("Permission denied"),
            "{name} certificate: {:?} {}",
            r.status,
            r.stderr
        );
    }
    // source-address that matches is fine.
    let near = keygen(dir.path(), "near")?;
    let cert = sign(
        &ca,
        &near,
        "near",
        &["-n", "dave", "-O", "source-address=127.0.0.0/8,::1"],
    )?;
    let r = ssh_with(&s.relay, &near, Some(&cert), "true")?;
    ensure!(r.status == Some(0), "source-address 127/8: {}", r.stderr);

    // A CA no tenant trusts.
    let rogue = keygen(dir.path(), "rogue-ca")?;
    let eve = keygen(dir.path(), "eve")?;
    let cert = sign(&rogue, &eve, "eve", &["-n", "carol"])?;
    let r = ssh_with(&s.relay, &eve, Some(&cert), "true")?;
    ensure!(r.status == Some(255), "untrusted CA got in");

    // The CA's role applies: a viewer CA's engineers cannot open sessions.
    let viewers = keygen(dir.path(), "viewer-ca")?;
    s.relay.admin_ok(&[
        "tenant",
        "trust-ca",
        "acme",
        "--key",
        &format!("{}.pub", viewers.display()),
        "--role",
        "viewer",
    ])?;
    let vic = keygen(dir.path(), "vic")?;
    let cert = sign(&viewers, &vic, "vic", &["-n", "vic"])?;
    let r = ssh_with(&s.relay, &vic, Some(&cert), "true")?;
    ensure!(
        r.status == Some(255) && r.stderr.contains("role viewer"),
        "viewer certificate: {:?} {}",
        r.status,
        r.stderr
    );

    // Registered keys keep working; an unknown plain key is still refused.
    let r = s.engineer.exec("board1", "echo registered")?;
    ensure!(r.status == Some(0), "{}", r.stderr);
    let stranger = keygen(dir.path(), "stranger")?;
    let r = ssh_with(&s.relay, &stranger, None, "true")?;
    ensure!(r.status == Some(255), "an unknown key got in");

    // The trail names the certificate on success and the reason on refusal.
    let trail: serde_json::Value =
        serde_json::from_str(&s.relay.admin_ok(&["audit", "list", "--json"])?)?;
    let entries = trail.as_array().cloned().unwrap_or_default();
    ensure!(
        entries.iter().any(|e| e["action"] == "auth.success"
            && e["actor"] == "engineer:carol"
            && e["detail"]["certificate"]["key_id"] == "carol@example.com"),
        "{trail:#}"
    );
    ensure!(
        entries.iter().any(|e| e["action"] == "auth.failure"
            && e["detail"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("mallory"))),
        "{trail:#}"
    );
    let sessions = s
        .relay
        .admin_ok(&["session", "list", "--user", "carol", "--json"])?;
    ensure!(sessions.contains("\"engineer\": \"carol\""), "{sessions}");

    // Untrusting the CA locks its certificates out.
    let fp = String::from_utf8(
        Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(format!("{}.pub", ca.display()))
            .output()?
            .stdout,
    )?;
    let fp = fp.split_whitespace().nth(1).unwrap_or_default().to_string();
    s.relay
        .admin_ok(&["tenant", "untrust-ca", "acme", "--fingerprint", &fp])?;
    let cert = PathBuf::from(format!("{}-cert.pub", carol.display()));
    let r = ssh_with(&s.relay, &carol, Some(&cert), "true")?;
    ensure!(
        r.status == Some(255),
        "an untrusted CA's certificate got in"
    );
    Ok(())
}
