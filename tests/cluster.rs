//! Relays of a cluster: one PostgreSQL store, presence on NATS. A board moves between relays
//! when the one it holds dies, the presence map follows within its 15 s lifetime, a device
//! rejected through any relay loses its link wherever it is, and NATS going away and coming
//! back costs the boards nothing.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

/// A relay of the cluster: PostgreSQL store `db`, NATS `nats`, name `id`.
fn relay(db: &str, nats: &Nats, id: &str) -> Result<Relay> {
    Relay::start_with_config(&format!(
        "store:\n  url: {db}\ncluster:\n  nats: {}\n  relay_id: {id}\n",
        nats.url()
    ))
}

/// The relay the presence map names for device `name`, as `relay cluster status` says.
fn holder(via: &Relay, name: &str) -> Result<Option<String>> {
    let out = via.admin_ok(&["cluster", "status", "--json"])?;
    let lines: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    Ok(lines
        .iter()
        .find(|l| l["device"] == name)
        .and_then(|l| l["relay"].as_str().map(str::to_string)))
}

fn wait_holder(via: &Relay, name: &str, want: Option<&str>, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = None;
    wait_until(
        within,
        &format!("presence of {name} to be {want:?}"),
        || {
            last = holder(via, name).ok().flatten();
            last.as_deref() == want
        },
    )
    .with_context(|| format!("presence still says {last:?}"))?;
    Ok(start.elapsed())
}

#[test]
fn boards_move_between_relays_and_presence_follows() -> Result<()> {
    let pg = Postgres::start()?;
    let db = pg.create_database("cluster")?;
    let mut nats = Nats::start()?;
    let mut relays = [relay(&db, &nats, "r1")?, relay(&db, &nats, "r2")?];
    relays[0].tenant("acme")?;
    // Made through one relay, known to every relay: they share the store.
    let engineer = relays[0].engineer("alice", "acme", "admin")?;
    let mut agent = Agent::new("board1", &[])?;
    let r = agent.enroll(&relays[0], Transport::Tcp, "acme")?;
    ensure!(r.status == Some(0), "enroll: {}", r.stderr);
    agent.add_relay_urls(&[relays[1].url(Transport::Tcp)])?;
    agent.start()?;
    agent.wait_online()?;
    let ids = ["r1", "r2"];
    let mut seen = String::new();
    wait_until(Duration::from_secs(15), "a holder of board1", || {
        let h = holder(&relays[1], "board1");
        seen = format!("{h:?}");
        h.is_ok_and(|h| h.is_some())
    })
    .with_context(|| {
        format!(
            "relay cluster status: {seen}\n{}\n{}",
            relays[0].log(),
            relays[1].log()
        )
    })?;
    let first = holder(&relays[1], "board1")?.context("no holder")?;
    let held = ids
        .iter()
        .position(|i| *i == first)
        .context("unknown holder")?;
    let other = 1 - held;
    let r = engineer.exec_on(&relays[held], "board1", "echo held")?;
    ensure!(r.stdout == "held\n", "{r:?}");

    // An action queued through the relay that does not hold the board reaches it through the
    // shared store's change feed, and its result reads the same through every relay.
    let queued = Instant::now();
    let id = relays[other].admin_ok(&["action", "create", "board1", "--run", "echo across"])?;
    let id = id.trim().to_string();
    let mut done = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "the action to finish", || {
        done = relays[held]
            .admin_ok(&["action", "show", &id, "--json"])
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        done["status"] == "succeeded"
    })
    .with_context(|| format!("action {id}: {done}"))?;
    println!(
        "action through the other relay done after {:?}",
        queued.elapsed()
    );
    ensure!(
        done["output"]
            .as_str()
            .is_some_and(|o| o.contains("across")),
        "{done}"
    );
    let other_view: serde_json::Value =
        serde_json::from_str(&relays[other].admin_ok(&["action", "show", &id, "--json"])?)?;
    ensure!(other_view == done, "{other_view} vs {done}");

    // NATS goes away: the boards stay reachable through the relay that holds them, and the
    // relays say what is missing; when it is back, presence is written again by itself.
    let at = held;
    nats.stop();
    let r = engineer.exec_on(&relays[at], "board1", "echo without nats")?;
    ensure!(r.stdout == "without nats\n", "{r:?}");
    wait_until(
        Duration::from_secs(20),
        "the relay to report NATS gone",
        || relays[at].log().contains("NATS is unreachable"),
    )?;
    nats.start_again()?;
    wait_holder(&relays[0], "board1", Some(ids[at]), Duration::from_secs(30))?;

    // The holder dies without a word: its entry goes within the map's lifetime, and the
    // board, reconnecting, is held by the other relay.
    relays[held].kill();
    let moved = wait_holder(
        &relays[other],
        "board1",
        Some(ids[other]),
        Duration::from_secs(60),
    )?;
    println!(
        "board1 held by {} {:?} after {} was killed",
        ids[other], moved, ids[held]
    );
    let r = engineer.exec_on(&relays[other], "board1", "echo moved")?;
    ensure!(r.stdout == "moved\n", "{r:?}");

    // The dead relay comes back; a reject through it drops the link the other relay holds.
    relays[held].restart()?;
    let r = relays[held].admin(&["device", "reject", "board1"])?;
    ensure!(r.status == Some(0), "reject: {}", r.stderr);
    wait_holder(&relays[held], "board1", None, Duration::from_secs(20))?;

    Ok(())
}
