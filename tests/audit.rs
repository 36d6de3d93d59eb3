//! The audit trail after a scripted scenario: admin changes, engineers' and devices'
//! authentication (including a refused key), read back by CLI and API, tenant-scoped.

mod common;

use anyhow::{Result, ensure};
use common::*;

#[test]
fn the_audit_trail_records_who_did_what_from_where() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    // An engineer logs in and runs a command; a stranger's key is refused.
    let r = s.engineer.exec("board1", "true")?;
    ensure!(r.status == Some(0), "exec: {}", r.stderr);
    s.relay.admin_ok(&["user", "list"])?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("k");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    ensure!(st.success());
    let r = run_with_timeout(
        {
            let mut c = ssh_with_key(&s.relay, &key, &[], "board1@127.0.0.1");
            c.arg("true");
            c
        },
        None,
        std::time::Duration::from_secs(20),
    )?;
    ensure!(r.status != Some(0), "an unknown key got in");
    let r = s.relay.admin(&["device", "accept", "no-such-device"])?;
    ensure!(r.status == Some(1));

    // The session's close is recorded when its proxy task ends, just after the client's exit.
    wait_until(std::time::Duration::from_secs(10), "session.close", || {
        s.relay
            .admin_ok(&["audit", "list", "--json"])
            .is_ok_and(|t| t.contains("session.close"))
    })?;
    let trail: serde_json::Value =
        serde_json::from_str(&s.relay.admin_ok(&["audit", "list", "--json"])?)?;
    let entries = trail.as_array().cloned().unwrap_or_default();
    let has = |actor: &str, action: &str| {
        entries.iter().any(|e| {
            e["actor"].as_str().is_some_and(|a| a.starts_with(actor)) && e["action"] == action
        })
    };
    for (actor, action) in [
        ("admin", "tenant.add"),
        ("admin", "token.create"),
        ("admin", "user.add"),
        ("engineer:alice", "auth.success"),
        ("engineer:alice", "session.open"),
        ("engineer:alice", "session.close"),
        ("device:", "auth.success"),
        ("device:", "device.enroll"),
        ("login:board1", "auth.failure"),
        ("admin", "device.accept"),
    ] {
        ensure!(has(actor, action), "no {actor} {action} in {trail:#}");
    }
    let failed_accept = entries
        .iter()
        .find(|e| e["action"] == "device.accept")
        .cloned()
        .unwrap_or_default();
    ensure!(failed_accept["detail"]["ok"] == false, "{failed_accept}");
    let refused = entries
        .iter()
        .find(|e| e["action"] == "auth.failure")
        .cloned()
        .unwrap_or_default();
    ensure!(
        refused["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:"))
            && refused["detail"]["fingerprint"]
                .as_str()
                .is_some_and(|f| f.starts_with("SHA256:")),
        "{refused}"
    );
    ensure!(
        !entries.iter().any(|e| e["action"] == "user.list"),
        "reads are not audited"
    );

    // The API shows a tenant its own entries only.
    s.relay.tenant("globex")?;
    let token = s
        .relay
        .admin_ok(&["token", "create", "--tenant", "globex", "--api"])?
        .trim()
        .to_string();
    let (code, body) = s.relay.http_get("/v1/audit", Some(&token))?;
    ensure!(code == 200, "{code} {body}");
    let theirs: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(
        theirs
            .as_array()
            .is_some_and(|a| a.iter().all(|e| e["tenant"] == "globex")),
        "{theirs}"
    );
    Ok(())
}
