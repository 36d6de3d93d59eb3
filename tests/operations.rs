//! Running a relay over its life: a backup taken while it serves restores into a relay the
//! boards accept without re-enrolling, and small things operators meet on the first days.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;

#[test]
fn a_backup_taken_while_serving_restores_a_relay_the_boards_reconnect_to() -> Result<()> {
    let mut s = Setup::new(Transport::Tcp)?;
    let r = s.engineer.exec("board1", "echo before")?;
    ensure!(r.status == Some(0), "exec: {}", r.stderr);
    wait_until(Duration::from_secs(10), "the session recorded", || {
        s.relay
            .admin_ok(&["session", "list", "--json"])
            .is_ok_and(|l| l.contains("echo before"))
    })?;

    let backup = tempfile::tempdir()?;
    let dest = backup.path().join("data");
    let out = s
        .relay
        .admin_ok(&["backup", dest.to_str().context("path")?, "--json"])?;
    let summary: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        summary["host_key"] == true && summary["store_bytes"].as_u64().is_some_and(|b| b > 0),
        "backup: {summary}"
    );
    // A backup never overwrites another.
    let again = s.relay.admin(&["backup", dest.to_str().context("path")?])?;
    ensure!(
        again.status == Some(1) && again.stderr.contains("not empty"),
        "second backup into the same place: {:?} {}",
        again.status,
        again.stderr
    );

    // Taking a copy of the whole store is in the audit trail.
    let trail = s.relay.admin_ok(&["audit", "list", "--json"])?;
    ensure!(
        trail.contains("store.backup"),
        "the backup is not audited: {trail}"
    );

    // Changes after the backup are not in it.
    s.relay.admin_ok(&["tenant", "add", "after-backup"])?;

    // Restore: stop the relay, put the backup in place of its data directory, start it.
    s.relay.stop()?;
    let data = s.relay.data_dir();
    std::fs::remove_dir_all(&data)?;
    std::fs::rename(&dest, &data)?;
    s.relay.restart()?;

    // The board pinned the relay's host key at enrollment: it reconnects by itself.
    s.agent.wait_online()?;
    let r = s.engineer.exec("board1", "echo after")?;
    ensure!(
        r.status == Some(0) && r.stdout == "after\n",
        "exec after the restore: {:?} {}",
        r.status,
        r.stderr
    );
    let tenants = s.relay.admin_ok(&["tenant", "list", "--json"])?;
    ensure!(
        tenants.contains("acme") && !tenants.contains("after-backup"),
        "tenants after the restore: {tenants}"
    );
    let sessions = s.relay.admin_ok(&["session", "list", "--json"])?;
    ensure!(
        sessions.contains("echo before"),
        "the recorded session is gone: {sessions}"
    );
    Ok(())
}

#[test]
fn a_log_line_needs_no_json_quotes() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let r = s.agent.cmd(&[
        "telemetry",
        "send",
        "app/web",
        "listening on 8000",
        "--kind",
        "log",
    ])?;
    ensure!(r.status == Some(0), "log line: {:?} {}", r.status, r.stderr);
    // A metric still needs a number or JSON, and the error says how to send text.
    let r = s.agent.cmd(&["telemetry", "send", "sensors/t", "warm"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("--kind log"),
        "bare metric: {:?} {}",
        r.status,
        r.stderr
    );
    s.agent.wait_drained(Duration::from_secs(20))?;
    let stored = s.relay.stored_telemetry("board1")?;
    ensure!(
        stored
            .iter()
            .any(|r| r["topic"] == "app/web" && r["payload"] == "listening on 8000"),
        "stored: {stored:?}"
    );
    Ok(())
}
