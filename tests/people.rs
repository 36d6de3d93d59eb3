//! People and tenants over their whole life: engineers removed, disabled, re-enabled,
//! re-keyed and demoted lose their live sessions and forwards within seconds and their new
//! logins; tenants are removed with their devices only when confirmed; every admin change is
//! in the tenant's audit trail with a structured detail and no secret.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;

/// How long the relay may take to notice an admin change: its change feed reads the store's
/// access generation four times a second, and the sweep runs when it moved.
const NOTICE: Duration = Duration::from_secs(8);

/// A finished command for an assertion message.
fn show(r: &Run) -> String {
    format!("{:?}\nstdout: {}\nstderr: {}", r.status, r.stdout, r.stderr)
}

/// A fresh ed25519 key pair in `dir`; returns the private key's path.
fn keygen(dir: &Path, name: &str) -> Result<PathBuf> {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()?;
    ensure!(st.success(), "ssh-keygen failed");
    Ok(key)
}

/// The SHA256 fingerprint of a public key file, as the relay shows it.
fn fingerprint(pubkey: &Path) -> Result<String> {
    let out = Command::new("ssh-keygen").arg("-lf").arg(pubkey).output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no fingerprint in {text:?}"))
}

/// An open interactive session (a pty) on `device` that stays until the relay closes it.
/// Returns once the device side answered, with the child and its stderr.
struct Held {
    child: KillOnDrop,
    stderr: std::sync::mpsc::Receiver<String>,
}

fn hold_session(mut cmd: Command) -> Result<Held> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn()?);
    let stdout = child.0.stdout.take().context("stdout")?;
    let stderr = child.0.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        let _ = etx.send(text);
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("the session never became ready")?;
    Ok(Held { child, stderr: erx })
}

impl Held {
    /// Waits (bounded) for the relay to close the session; returns the client's stderr.
    fn closed_within(mut self, limit: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            if self.child.0.try_wait()?.is_some() {
                break;
            }
            if start.elapsed() > limit {
                bail!("the session was still open after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(self
            .stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default())
    }
}

/// `ssh -tt DEVICE@relay 'echo ready; sleep 120'` for `engineer`, with INFO logging so the
/// relay's disconnect message is printed.
fn interactive(engineer: &Engineer, device: &str) -> Command {
    engineer.ssh_cmd(&[
        "-tt",
        "-o",
        "LogLevel=INFO",
        "-p",
        &engineer.ssh_port.to_string(),
        &format!("{device}@127.0.0.1"),
        "echo ready; sleep 120",
    ])
}

/// The tenant's audit trail as JSON.
fn trail(relay: &Relay, tenant: &str) -> Result<Vec<serde_json::Value>> {
    let text = relay.admin_ok(&["audit", "list", "--tenant", tenant, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn find<'a>(
    entries: &'a [serde_json::Value],
    action: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<&'a serde_json::Value> {
    entries.iter().find(|e| e["action"] == action && pred(e))
}

/// Checks an admin entry: tenant, target and a structured detail that is no debug dump.
fn check_admin_entry(entries: &[serde_json::Value], action: &str, target: &str) -> Result<()> {
    let e = find(entries, action, |e| e["target"] == target)
        .with_context(|| format!("no {action} on {target} in {entries:#?}"))?;
    ensure!(e["actor"] == "admin" && e["tenant"] == "acme", "{e}");
    ensure!(
        e["detail"].is_object()
            && e["detail"]["ok"] == true
            && e["detail"].get("command").is_none(),
        "{e}"
    );
    Ok(())
}

#[test]
fn removed_disabled_and_re_keyed_engineers_lose_their_sessions_and_forwards() -> Result<()> {
    let echo = echo_server()?;
    let s = Setup::with_allow(Transport::Tcp, &[format!("127.0.0.1:{echo}")])?;
    let bob = s.relay.engineer("bob", "acme", "operator")?;

    // Disabled: the open session closes with the reason, new logins are refused and say why.
    let held = hold_session(interactive(&bob, "board1"))?;
    s.relay
        .admin_ok(&["user", "disable", "bob", "--tenant", "acme"])?;
    let stderr = held.closed_within(NOTICE)?;
    ensure!(
        stderr.contains("engineer bob of tenant acme was disabled"),
        "{stderr}"
    );
    let r = bob.exec("board1", "true")?;
    ensure!(r.status != Some(0), "a disabled engineer got in");
    let entries = trail(&s.relay, "acme")?;
    ensure!(
        find(&entries, "auth.failure", |e| e["detail"]["reason"]
            == "engineer bob of tenant acme is disabled")
        .is_some(),
        "{entries:#?}"
    );
    ensure!(
        find(&entries, "engineer.disconnect", |e| e["actor"]
            == "engineer:bob")
        .is_some(),
        "{entries:#?}"
    );
    let listed = s.relay.admin_ok(&["user", "list"])?;
    ensure!(listed.contains("disabled"), "{listed}");

    // Enabled again: in again.
    s.relay
        .admin_ok(&["user", "enable", "bob", "--tenant", "acme"])?;
    let r = bob.exec("board1", "echo back")?;
    ensure!(
        r.status == Some(0) && r.stdout.contains("back"),
        "{}",
        show(&r)
    );

    // A second key carries a -L forward; removing that key closes it, the first key stays.
    let second = keygen(s.relay.dir.path(), "bob-second")?;
    let second_pub = second.with_extension("pub");
    let second_pub = if second_pub.exists() {
        second_pub
    } else {
        PathBuf::from(format!("{}.pub", second.display()))
    };
    let fp = fingerprint(&second_pub)?;
    s.relay.admin_ok(&[
        "user",
        "add-key",
        "bob",
        "--tenant",
        "acme",
        "--key",
        &second_pub.display().to_string(),
    ])?;
    let local = free_port()?;
    let forward = format!("127.0.0.1:{local}:127.0.0.1:{echo}");
    let mut cmd = ssh_with_key(
        &s.relay,
        &second,
        &[
            "-N",
            "-o",
            "LogLevel=INFO",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &forward,
        ],
        "board1@127.0.0.1",
    );
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut fwd = KillOnDrop(cmd.spawn()?);
    wait_for_port(local)?;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf)?;
    ensure!(&buf == b"ping", "the forward does not carry data");
    s.relay.admin_ok(&[
        "user",
        "remove-key",
        "bob",
        "--tenant",
        "acme",
        "--fingerprint",
        &fp,
    ])?;
    let start = Instant::now();
    while fwd.0.try_wait()?.is_none() {
        ensure!(start.elapsed() < NOTICE, "the forward survived its key");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stderr = String::new();
    if let Some(mut e) = fwd.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    ensure!(
        stderr.contains(&format!(
            "the key {fp} of engineer bob of tenant acme was removed"
        )),
        "{stderr}"
    );
    let n = conn.read(&mut buf).unwrap_or(0);
    ensure!(n == 0, "the forwarded connection is still open");
    let r = bob.exec("board1", "echo first-key")?;
    ensure!(
        r.status == Some(0),
        "the first key stopped working: {}",
        show(&r)
    );
    // The last key is not removed: that is what remove and disable are for.
    let first_fp = fingerprint(&PathBuf::from(format!("{}.pub", bob.key.display())))?;
    let r = s.relay.admin(&[
        "user",
        "remove-key",
        "bob",
        "--tenant",
        "acme",
        "--fingerprint",
        &first_fp,
    ])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("last key"),
        "{}",
        show(&r)
    );

    // Removed: the session closes, logins are refused, the recordings stay.
    let held = hold_session(interactive(&bob, "board1"))?;
    s.relay
        .admin_ok(&["user", "remove", "bob", "--tenant", "acme"])?;
    let stderr = held.closed_within(NOTICE)?;
    ensure!(
        stderr.contains("engineer bob of tenant acme was removed"),
        "{stderr}"
    );
    let r = bob.exec("board1", "true")?;
    ensure!(r.status != Some(0), "a removed engineer got in");
    let sessions: serde_json::Value = serde_json::from_str(
        &s.relay
            .admin_ok(&["session", "list", "--user", "bob", "--json"])?,
    )?;
    ensure!(
        sessions.as_array().is_some_and(|a| a.len() >= 3),
        "bob's recordings are gone: {sessions:#}"
    );
    // The session the relay closed says why in its record.
    wait_until(
        Duration::from_secs(10),
        "the closed session's record",
        || {
            s.relay
                .admin_ok(&["session", "list", "--user", "bob", "--json"])
                .is_ok_and(|t| {
                    t.contains("closed by the relay: engineer bob of tenant acme was removed")
                })
        },
    )?;
    // alice, another engineer of the tenant, is untouched.
    let r = s.engineer.exec("board1", "echo alice")?;
    ensure!(r.status == Some(0), "{}", show(&r));

    let entries = trail(&s.relay, "acme")?;
    for action in [
        "user.disable",
        "user.enable",
        "user.add_key",
        "user.remove_key",
        "user.remove",
    ] {
        check_admin_entry(&entries, action, "bob")?;
    }
    let removed_key = find(&entries, "user.remove_key", |e| e["detail"]["ok"] == true)
        .context("user.remove_key")?;
    ensure!(
        removed_key["detail"]["fingerprint"] == fp.as_str(),
        "{removed_key}"
    );
    let removed = find(&entries, "user.remove", |_| true).context("user.remove")?;
    ensure!(
        removed["detail"]["name"] == "bob" && removed["detail"]["role"] == "operator",
        "{removed}"
    );
    Ok(())
}

#[test]
fn an_engineer_made_a_viewer_loses_sessions_and_its_refusals_are_audited() -> Result<()> {
    let echo = echo_server()?;
    let s = Setup::with_allow(Transport::Tcp, &[format!("127.0.0.1:{echo}")])?;
    let bob = s.relay.engineer("bob", "acme", "operator")?;
    let held = hold_session(interactive(&bob, "board1"))?;
    s.relay.admin_ok(&[
        "user", "set-role", "bob", "--tenant", "acme", "--role", "viewer",
    ])?;
    let stderr = held.closed_within(NOTICE)?;
    ensure!(
        stderr.contains("engineer bob of tenant acme is now a viewer"),
        "{stderr}"
    );

    // A viewer logs in but opens neither sessions nor forwards; both refusals are recorded.
    let r = bob.exec("board1", "true")?;
    ensure!(
        r.status != Some(0) && r.stderr.contains("role viewer"),
        "{}",
        show(&r)
    );
    let local = free_port()?;
    let mut cmd = bob.ssh_cmd(&[
        "-p",
        &bob.ssh_port.to_string(),
        "-N",
        "-L",
        &format!("127.0.0.1:{local}:127.0.0.1:{echo}"),
        "board1@127.0.0.1",
    ]);
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    let _fwd = KillOnDrop(cmd.spawn()?);
    wait_for_port(local)?;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = conn.write_all(b"ping");
    let mut buf = [0u8; 4];
    ensure!(conn.read(&mut buf).unwrap_or(0) == 0, "a viewer forwarded");
    wait_until(Duration::from_secs(10), "forward.refused", || {
        trail(&s.relay, "acme").is_ok_and(|t| {
            find(&t, "forward.refused", |e| {
                e["detail"]["reason"] == "role viewer"
            })
            .is_some()
        })
    })?;
    let entries = trail(&s.relay, "acme")?;
    let refused = find(&entries, "session.refused", |_| true)
        .with_context(|| format!("no session.refused in {entries:#?}"))?;
    ensure!(
        refused["detail"]["reason"] == "role viewer"
            && refused["actor"] == "engineer:bob"
            && refused["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("dev_")),
        "{refused}"
    );
    let role = find(&entries, "user.set_role", |_| true).context("user.set_role")?;
    ensure!(
        role["target"] == "bob"
            && role["detail"]["role"] == "viewer"
            && role["detail"]["previous_role"] == "operator",
        "{role}"
    );

    // Operator again: sessions open again.
    s.relay.admin_ok(&[
        "user", "set-role", "bob", "--tenant", "acme", "--role", "operator",
    ])?;
    let r = bob.exec("board1", "echo again")?;
    ensure!(r.status == Some(0), "{}", show(&r));
    Ok(())
}

#[test]
fn a_tenant_is_removed_with_its_devices_only_when_confirmed() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    s.relay.tenant("globex")?;

    // Retention is shown, as text and JSON, and follows a change.
    let text = s.relay.admin_ok(&["tenant", "retention", "globex"])?;
    ensure!(
        text == "tenant globex keeps 30 days of telemetry and 90 days of session recordings\n",
        "{text}"
    );
    s.relay
        .admin_ok(&["tenant", "retention", "globex", "--days", "7"])?;
    let json: serde_json::Value =
        serde_json::from_str(
            &s.relay
                .admin_ok(&["tenant", "retention", "globex", "--json"])?,
        )?;
    ensure!(
        json == serde_json::json!({ "tenant": "globex", "days": 7, "session_days": 90 }),
        "{json}"
    );
    let r = s.relay.admin(&["tenant", "retention", "nope"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("nope"),
        "{}",
        show(&r)
    );

    // Refused while it has devices; --with-devices alone says what it would delete.
    let r = s.relay.admin(&["tenant", "remove", "acme"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("still has 1 device"),
        "{}",
        show(&r)
    );
    let r = s
        .relay
        .admin(&["tenant", "remove", "acme", "--with-devices"])?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("1 device")
            && r.stderr.contains("1 engineer")
            && r.stderr.contains("add --yes"),
        "{}",
        show(&r)
    );
    let r = s.relay.admin(&["tenant", "remove", "acme", "--yes"])?;
    ensure!(
        r.status == Some(2),
        "--yes alone is a usage error: {}",
        show(&r)
    );
    ensure!(
        s.relay.admin_ok(&["device", "list"])?.contains("board1"),
        "a refused removal deleted the device"
    );

    // Confirmed: the device's link and the engineer's session are dropped, the data is gone,
    // the audit trail stays.
    let held = hold_session(interactive(&s.engineer, "board1"))?;
    let out = s
        .relay
        .admin_ok(&["tenant", "remove", "acme", "--with-devices", "--yes"])?;
    ensure!(
        out.starts_with("tenant acme removed with 1 device"),
        "{out}"
    );
    let stderr = held.closed_within(NOTICE)?;
    ensure!(
        stderr.contains("engineer alice of tenant acme was removed"),
        "{stderr}"
    );
    wait_until(NOTICE, "the device link to drop", || {
        s.relay.log().contains("dropping link of device")
    })?;
    let devices: serde_json::Value =
        serde_json::from_str(&s.relay.admin_ok(&["device", "list", "--json"])?)?;
    ensure!(devices == serde_json::json!([]), "{devices}");
    let tenants = s.relay.admin_ok(&["tenant", "list"])?;
    ensure!(
        !tenants.contains("acme") && tenants.contains("globex"),
        "{tenants}"
    );
    let entries = trail(&s.relay, "acme")?;
    ensure!(
        find(&entries, "tenant.add", |_| true).is_some(),
        "the audit trail lost the tenant's history"
    );
    let removed = find(&entries, "tenant.remove", |e| e["detail"]["ok"] == true)
        .with_context(|| format!("no tenant.remove in {entries:#?}"))?;
    ensure!(
        removed["target"] == "acme"
            && removed["detail"]["deleted"]["devices"] == 1
            && removed["detail"]["deleted"]["engineers"] == 1,
        "{removed}"
    );
    let refused = find(&entries, "tenant.remove", |e| e["detail"]["ok"] == false);
    ensure!(refused.is_some(), "the refused attempts are not audited");
    Ok(())
}

#[test]
fn cli_changes_are_in_the_tenants_trail_with_structured_detail_and_no_secret() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let enroll = relay.enroll_token("acme")?;
    let api = relay
        .admin_ok(&[
            "token", "create", "--tenant", "acme", "--api", "--role", "viewer",
        ])?
        .trim()
        .to_string();
    relay.engineer("carol", "acme", "operator")?;
    relay.admin_ok(&["tenant", "retention", "acme", "--session-days", "10"])?;
    let tokens: serde_json::Value =
        serde_json::from_str(&relay.admin_ok(&["token", "list", "--json"])?)?;
    let api_id = tokens
        .as_array()
        .and_then(|t| t.iter().find(|t| t["kind"] == "api"))
        .and_then(|t| t["id"].as_str())
        .context("no API token listed")?
        .to_string();
    relay.admin_ok(&["token", "set-role", &api_id, "--role", "operator"])?;
    relay.admin_ok(&["token", "revoke", &api_id])?;

    let text = relay.admin_ok(&["audit", "list", "--tenant", "acme", "--json"])?;
    ensure!(
        !text.contains(&enroll) && !text.contains(&api),
        "a token secret is in the audit trail"
    );
    ensure!(
        !text.contains("PRIVATE KEY"),
        "private material in the trail"
    );
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    check_admin_entry(&entries, "tenant.add", "acme")?;
    check_admin_entry(&entries, "user.add", "carol")?;
    check_admin_entry(&entries, "tenant.retention", "acme")?;
    check_admin_entry(&entries, "token.set_role", &api_id)?;
    check_admin_entry(&entries, "token.revoke", &api_id)?;
    check_admin_entry(&entries, "token.create", &api_id)?;
    let created = find(&entries, "token.create", |e| e["target"] == api_id.as_str())
        .context("token.create")?;
    ensure!(
        created["detail"]["kind"] == "api"
            && created["detail"]["role"] == "viewer"
            && created["detail"]["id"] == api_id.as_str(),
        "{created}"
    );
    let user = find(&entries, "user.add", |_| true).context("user.add")?;
    ensure!(
        user["detail"]["role"] == "operator"
            && user["detail"]["fingerprint"]
                .as_str()
                .is_some_and(|f| f.starts_with("SHA256:")),
        "{user}"
    );
    let retention = find(&entries, "tenant.retention", |_| true).context("retention")?;
    ensure!(
        retention["detail"]["session_days"] == 10 && retention["detail"]["days"].is_null(),
        "{retention}"
    );

    // --limit keeps the newest entries, printed oldest first; --oldest the first ones.
    let newest: Vec<serde_json::Value> = serde_json::from_str(&relay.admin_ok(&[
        "audit", "list", "--tenant", "acme", "--limit", "2", "--json",
    ])?)?;
    let last_two: Vec<&serde_json::Value> = entries.iter().rev().take(2).rev().collect();
    ensure!(newest.iter().collect::<Vec<_>>() == last_two, "{newest:#?}");
    ensure!(newest[1]["action"] == "token.revoke", "{newest:#?}");
    let oldest: Vec<serde_json::Value> = serde_json::from_str(&relay.admin_ok(&[
        "audit", "list", "--tenant", "acme", "--limit", "1", "--oldest", "--json",
    ])?)?;
    ensure!(oldest[0]["action"] == "tenant.add", "{oldest:#?}");

    // The API shows the tenant its CLI changes, and limits the same way.
    let token = relay
        .admin_ok(&["token", "create", "--tenant", "acme", "--api"])?
        .trim()
        .to_string();
    let (code, body) = relay.http_get("/v1/audit?limit=1", Some(&token))?;
    ensure!(code == 200, "{code} {body}");
    let page: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(
        page[0]["action"] == "token.create" && page[0]["tenant"] == "acme",
        "{page:#}"
    );
    let (code, body) = relay.http_get("/v1/audit?limit=1&oldest=true", Some(&token))?;
    ensure!(code == 200, "{code} {body}");
    let page: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(page[0]["action"] == "tenant.add", "{page:#}");
    Ok(())
}

#[test]
fn names_spelled_differently_or_huge_never_reach_the_wrong_engineer() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    relay.tenant("globex")?;
    relay.engineer("alice", "acme", "operator")?;
    relay.engineer("alice", "globex", "operator")?;

    // Other spellings are refused, naming what was wrong; nobody is removed.
    for args in [
        ["user", "remove", "ALICE", "--tenant", "globex"],
        ["user", "remove", "alice", "--tenant", "GLOBEX"],
        ["user", "disable", "Alice", "--tenant", "acme"],
    ] {
        let r = relay.admin(&args)?;
        ensure!(
            r.status == Some(1) && r.stderr.contains("name"),
            "{args:?}: {}",
            show(&r)
        );
    }
    let users: serde_json::Value =
        serde_json::from_str(&relay.admin_ok(&["user", "list", "--json"])?)?;
    ensure!(users.as_array().map(Vec::len) == Some(2), "{users:#}");
    let r = relay.admin(&["user", "remove", "bob", "--tenant", "acme"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("no user named \"bob\" in tenant acme"),
        "{}",
        show(&r)
    );
    relay.admin_ok(&["user", "remove", "alice", "--tenant", "globex"])?;
    let users: serde_json::Value =
        serde_json::from_str(&relay.admin_ok(&["user", "list", "--json"])?)?;
    ensure!(
        users.as_array().map(Vec::len) == Some(1) && users[0]["tenant"] == "acme",
        "{users:#}"
    );

    // A huge name (as large as one argument may be on Linux) is refused in a short message
    // that names the field, and the audit entry keeps only its start.
    let huge = "a".repeat(100_000);
    let r = relay.admin(&["user", "disable", &huge, "--tenant", "acme"])?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("user name")
            && r.stderr.contains("(100000 bytes)")
            && r.stderr.len() < 1000,
        "{:?} {}",
        r.status,
        r.stderr.len()
    );
    let trail = relay.admin_ok(&["audit", "list", "--json"])?;
    ensure!(trail.len() < 20_000, "the huge name went into the trail");
    // A megabyte "key" file is refused by its size, naming the file.
    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big.pub");
    std::fs::write(&big, format!("ssh-ed25519 {}\n", "A".repeat(1 << 20)))?;
    let r = relay.admin(&[
        "user",
        "add-key",
        "alice",
        "--tenant",
        "acme",
        "--key",
        &big.display().to_string(),
    ])?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("big.pub")
            && r.stderr.contains("too large for a public key file")
            && r.stderr.len() < 1000,
        "{}",
        show(&r)
    );
    Ok(())
}

#[test]
fn a_certificate_login_ends_when_its_tenant_stops_trusting_the_ca() -> Result<()> {
    let s = Setup::new(Transport::Tcp)?;
    let dir = tempfile::tempdir()?;
    let ca = keygen(dir.path(), "ca")?;
    let ca_pub = format!("{}.pub", ca.display());
    s.relay
        .admin_ok(&["tenant", "trust-ca", "acme", "--key", &ca_pub])?;
    let carol = keygen(dir.path(), "carol")?;
    let st = Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(&ca)
        .args(["-I", "carol@example.com", "-n", "carol", "-V", "-5m:+1h"])
        .arg(format!("{}.pub", carol.display()))
        .status()?;
    ensure!(st.success(), "ssh-keygen -s");
    let cert = format!("CertificateFile={}-cert.pub", carol.display());
    let mut cmd = ssh_with_key(
        &s.relay,
        &carol,
        &["-tt", "-o", "LogLevel=INFO", "-o", &cert],
        "board1@127.0.0.1",
    );
    cmd.arg("echo ready; sleep 120");
    let held = hold_session(cmd)?;
    let ca_fp = fingerprint(Path::new(&ca_pub))?;
    s.relay
        .admin_ok(&["tenant", "untrust-ca", "acme", "--fingerprint", &ca_fp])?;
    let stderr = held.closed_within(NOTICE)?;
    ensure!(
        stderr.contains(&format!("tenant acme no longer trusts the CA {ca_fp}")),
        "{stderr}"
    );
    let entries = trail(&s.relay, "acme")?;
    check_admin_entry(&entries, "tenant.untrust_ca", &ca_fp)?;
    check_admin_entry(&entries, "tenant.trust_ca", &ca_fp)?;
    // The engineer with a registered key is untouched by the CA's going.
    let r = s.engineer.exec("board1", "echo alice")?;
    ensure!(r.status == Some(0), "{}", show(&r));
    Ok(())
}
