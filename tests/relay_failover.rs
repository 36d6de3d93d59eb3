//! A board that knows more than one URL of its relay (`link.relay_urls`): whichever URL it
//! tries first, it links through one that answers, comes back after the relay restarts, and a
//! URL it cannot parse stops `agent run` at start with the URL named.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::*;

/// Points the board's enrollment record at `url` in place of the URL it enrolled with.
fn set_enrolled_url(agent: &Agent, url: &str) -> Result<()> {
    let path = agent.dir.path().join("state").join("enrollment.json");
    let mut record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    record["relay_url"] = serde_json::Value::String(url.to_string());
    std::fs::write(&path, serde_json::to_vec_pretty(&record)?)?;
    Ok(())
}

#[test]
fn a_board_links_through_whichever_of_its_relay_urls_answers() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let dead = format!("ssh://127.0.0.1:{}", free_port()?);
    let ws = format!("ws://127.0.0.1:{}/v1/link", relay.http_port);
    // Three rounds: the first URL is chosen at random, so each round may start elsewhere;
    // the enrolled URL is dead in all of them.
    for round in 0..3 {
        let mut agent = Agent::new(&format!("board{round}"), &[])?;
        let r = agent.enroll(&relay, Transport::Tcp, "acme")?;
        ensure!(r.status == Some(0), "enroll: {}", r.stderr);
        set_enrolled_url(&agent, &dead)?;
        agent.add_relay_urls(&[dead.clone(), ws.clone()])?;
        agent.start()?;
        agent.wait_online()?;
        let status = agent.status()?;
        ensure!(status["link"] == "online", "{status}");
        agent.kill();
    }
    Ok(())
}

#[test]
fn a_board_with_two_urls_comes_back_after_its_relay_restarts() -> Result<()> {
    let mut relay = Relay::start()?;
    relay.tenant("acme")?;
    let mut agent = Agent::new("board1", &[])?;
    let r = agent.enroll(&relay, Transport::Tcp, "acme")?;
    ensure!(r.status == Some(0), "enroll: {}", r.stderr);
    agent.add_relay_urls(&[format!("ws://127.0.0.1:{}/v1/link", relay.http_port)])?;
    agent.start()?;
    agent.wait_online()?;
    relay.stop()?;
    wait_until(
        Duration::from_secs(30),
        "the link down while the relay is stopped",
        || {
            agent
                .status()
                .map(|s| s["link"] != "online")
                .unwrap_or(false)
        },
    )?;
    relay.restart()?;
    agent.wait_online()?;
    Ok(())
}

#[test]
fn a_relay_url_that_cannot_be_parsed_stops_the_agent_naming_it() -> Result<()> {
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let agent = Agent::new("board1", &[])?;
    let r = agent.enroll(&relay, Transport::Tcp, "acme")?;
    ensure!(r.status == Some(0), "enroll: {}", r.stderr);
    agent.add_relay_urls(&["ftp://relay.example.com".to_string()])?;
    let r = agent.cmd(&["run"])?;
    ensure!(r.status == Some(1), "exit {:?}: {}", r.status, r.stderr);
    ensure!(
        r.stderr.contains("ftp://relay.example.com"),
        "the error does not name the URL: {}",
        r.stderr
    );
    Ok(())
}
