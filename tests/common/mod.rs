//! Test harness: real `relay` and `agent` processes on loopback, driven by the real OpenSSH
//! client. Every process a test starts is killed when its guard drops; every wait is bounded.
//!
//! Layout:
//! - `process`: the built binaries, processes killed on drop, commands with a time limit,
//!   bounded waits, benchmark settings from the environment.
//! - `net`: free ports, waiting for a port, a bare HTTP GET.
//! - `relay`: a relay process, its admin commands and HTTP API.
//! - `agent`: an agent process, enrolled and linked.
//! - `engineer`: engineers registered on a relay, and the OpenSSH client they use.
//! - `setup`: a relay, a tenant, an engineer and an online agent in one call.
//! - `deploy`: applications and deployments, on the board and from the relay.
//! - `postgres`: a private PostgreSQL server.
//! - `nats`: a private NATS server.
//! - `sshd`: a private OpenSSH server, the board's own sshd.
//! - `chaos`: the chaos proxy, a network that cuts connections.
//! - `tmux`: a terminal to type into.
//! - `rtt`: keystroke round trips through an ssh command.
//! - `data`: deterministic test data.
//!
//! Each test file declares `mod common;` and uses `common::*`.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

mod agent;
mod chaos;
mod data;
mod deploy;
mod engineer;
mod listening;
mod nats;
mod net;
mod postgres;
mod process;
mod relay;
mod rtt;
mod setup;
mod sshd;
mod tmux;

#[allow(unused_imports)] // Each test binary uses a different part of the harness.
pub use {
    agent::*, chaos::*, data::*, deploy::*, engineer::*, nats::*, net::*, postgres::*, process::*,
    relay::*, rtt::*, setup::*, sshd::*, tmux::*,
};
