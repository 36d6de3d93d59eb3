//! The common starting point of a test: a relay, one tenant, one admin engineer and one
//! online agent.

use anyhow::Result;

use super::agent::Agent;
use super::engineer::Engineer;
use super::relay::{Relay, Transport};

/// A relay, one tenant, one admin engineer and one online agent: the common starting point.
pub struct Setup {
    /// The relay, with tenant `acme`.
    pub relay: Relay,
    /// The agent `board1` of `acme`, online.
    pub agent: Agent,
    /// `alice`, admin of `acme`.
    pub engineer: Engineer,
}

impl Setup {
    /// Starts everything with the agent linked over `transport`.
    pub fn new(transport: Transport) -> Result<Setup> {
        Self::with_allow(transport, &[])
    }

    /// Like [`Setup::new`] with forwards allowed to `allow`.
    pub fn with_allow(transport: Transport, allow: &[String]) -> Result<Setup> {
        Self::with_agent_config(transport, allow, "")
    }

    /// Like [`Setup::with_allow`] with `extra` YAML appended to the agent's configuration.
    pub fn with_agent_config(transport: Transport, allow: &[String], extra: &str) -> Result<Setup> {
        let relay = Relay::start()?;
        relay.tenant("acme")?;
        let engineer = relay.engineer("alice", "acme", "admin")?;
        let mut agent = Agent::with_extra_config("board1", allow, extra)?;
        agent.enroll(&relay, transport, "acme")?;
        agent.start()?;
        agent.wait_online()?;
        Ok(Setup {
            relay,
            agent,
            engineer,
        })
    }
}
