//! Cost of the cluster's presence map for the links one relay holds: the relay's own presence
//! code against a real nats-server, with `TETHER_PRESENCE_LINKS` links (default 15000) held.
//!
//! Reports how long until every link is in the map (as `relay cluster status` reads it), then
//! the CPU that this relay's side of the map and the NATS server spend per held link per
//! second while nothing changes, over `TETHER_PRESENCE_IDLE_S` seconds (default 30), and the
//! NATS server's RSS. An idle fleet should cost neither anything per link.
//!
//! Run with `cargo bench --bench presence`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;

fn main() -> Result<()> {
    let links: u64 = env_or("TETHER_PRESENCE_LINKS", 15_000);
    let idle = Duration::from_secs(env_or("TETHER_PRESENCE_IDLE_S", 30));
    let nats = Nats::start()?;
    let nats_pid = nats.pid().context("nats-server is not running")?;
    let url = nats.url();
    let dir = tempfile::tempdir()?;
    let key = tether_relay::hostkey::load_or_create(dir.path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let me = std::process::id();

    let presence = runtime.block_on(tether_relay::cluster::Presence::start(
        &url,
        "bench",
        Some("127.0.0.1:1".into()),
        Arc::new(key),
        Arc::new(tether_relay::registry::Registry::new()),
    ))?;
    let start = Instant::now();
    runtime.block_on(async {
        for n in 0..links {
            presence.link_up(&format!("board{n}"), n + 1);
            if n % 1000 == 999 {
                // The way links come up: spread, not all within one poll of the runtime.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let deadline = start + Duration::from_secs(120);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = runtime
            .block_on(tether_relay::cluster::presence::all(&url))?
            .len();
        if seen as u64 == links {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if seen as u64 != links {
        bail!("only {seen} of {links} links are in the presence map after 120 s");
    }
    println!(
        "presence: {links} links in the map after {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Idle: links held, nothing changing.
    let (relay0, nats0) = (cpu_seconds(me)?, cpu_seconds(nats_pid)?);
    let t0 = Instant::now();
    std::thread::sleep(idle);
    let secs = t0.elapsed().as_secs_f64();
    let (relay1, nats1) = (cpu_seconds(me)?, cpu_seconds(nats_pid)?);
    let per_link = |cpu: f64| cpu / secs / links as f64 * 1e6;
    let (nats_rss, _) = memory_kib(nats_pid)?;
    println!(
        "presence idle, {links} links over {secs:.0} s: relay {:.2}% of a core ({:.3} µs per link per s), NATS {:.2}% ({:.3} µs per link per s), NATS RSS {} MiB",
        (relay1 - relay0) / secs * 100.0,
        per_link(relay1 - relay0),
        (nats1 - nats0) / secs * 100.0,
        per_link(nats1 - nats0),
        nats_rss / 1024,
    );
    let still = runtime
        .block_on(tether_relay::cluster::presence::all(&url))?
        .len();
    if still as u64 != links {
        bail!("{still} of {links} links are left in the presence map after the idle phase");
    }
    drop(presence);
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
