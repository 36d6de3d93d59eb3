//! `agent run`: the process wiring of the agent, the mirror of the relay's `server.rs`.
//!
//! It loads the identity, opens the outbox and starts every long-lived part: the producer
//! socket, the system metrics collector, the journal follower, the application supervisor (and
//! its local control socket), the post-boot check of an OS update, and the link loop, which
//! runs until a stop signal; once start-up is over (`memory.page_out_after`) it gives back the
//! code pages only start-up ran (`code_pages`). On the way out it stops the applications and
//! removes the sockets.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::access::ssh_server::ServerSettings;
use crate::config::AgentConfig;
use crate::identity::{device_key, enrollment_record};
use crate::link::forward::ForwardPolicy;
use crate::link::run::{self as link_run, LinkContext};
use crate::telemetry::producer::Producer;

/// Runs the agent until it is told to stop (SIGTERM, SIGINT) or a part it cannot go on
/// without fails.
pub async fn run(config: AgentConfig) -> Result<()> {
    warn_if_shared(&config.state_dir);
    let enrollment = enrollment_record::load(&config.state_dir)?;
    let key = device_key::load(&config.state_dir).context("loading the device key")?;
    let server = ServerSettings::new(config.shell.clone(), key.clone())
        .context("preparing the embedded SSH server (shell settings)")?;
    let policy = ForwardPolicy::new(&config.forward.allow);
    tracing::info!(
        "agent {} starting as {} ({}) for relay {}",
        crate::VERSION,
        enrollment.name,
        enrollment.device_id,
        enrollment.relay_url
    );
    let mut ctx = LinkContext {
        config,
        enrollment,
        key: Arc::new(key),
        server: Arc::new(server),
        policy: Arc::new(policy),
        supervisor: None,
    };
    let socket_path = ctx
        .config
        .telemetry
        .socket
        .clone()
        .unwrap_or_else(|| crate::telemetry::socket::default_path(&ctx.config.state_dir));
    let outbox_path = crate::telemetry::outbox::path(&ctx.config.state_dir);
    let outbox = crate::telemetry::outbox::Outbox::open(
        &outbox_path,
        crate::telemetry::outbox::Limits::from_config(&ctx.config.telemetry),
    )
    .with_context(|| format!("opening the outbox {}", outbox_path.display()))?;
    let producer = Producer::new(
        Arc::new(std::sync::Mutex::new(outbox)),
        ctx.config.telemetry.max_payload,
    );
    let socket = tokio::spawn(crate::telemetry::socket::serve(
        socket_path.clone(),
        ctx.config.telemetry.socket_mode_bits(),
        producer.clone(),
    ));
    let interval = ctx.config.telemetry.system_metrics_interval;
    if !interval.is_zero() {
        tokio::spawn(crate::telemetry::sysmetrics::run(
            producer.clone(),
            interval,
        ));
    }
    if !ctx.config.telemetry.journal_units.is_empty() {
        tokio::spawn(crate::telemetry::journal::follow(
            producer.clone(),
            ctx.config.telemetry.journal_units.clone(),
            ctx.config.state_dir.clone(),
        ));
    }
    let supervisor = crate::apps::supervisor::Supervisor::new(
        ctx.config.state_dir.clone(),
        ctx.config.apps.clone(),
        ctx.enrollment.device_id.clone(),
        Some(producer.clone()),
    )
    .context("starting the application supervisor (apps settings)")?;
    ctx.supervisor = Some(supervisor.clone());
    let recovering = supervisor.clone();
    tokio::spawn(async move {
        if let Err(e) = recovering.recover().await {
            tracing::error!("bringing components back: {e}");
        }
    });
    if ctx.config.ota.compatible.is_some() {
        // A boot after an update: commit it if healthy, or notice the fallback.
        let config = ctx.config.clone();
        tokio::task::spawn_blocking(move || match crate::ota::update::Ota::open(&config) {
            Ok(ota) => match ota.check_after_boot() {
                Ok(Some(outcome)) => tracing::warn!("OS update: {outcome}"),
                Ok(None) => {}
                Err(e) => tracing::error!("OS update check: {e}"),
            },
            Err(e) => tracing::error!("OS updates: {e}"),
        });
    }
    let control_path = crate::apps::control_socket::path(&ctx.config.state_dir);
    let control = tokio::spawn(crate::apps::control_socket::serve(
        control_path.clone(),
        supervisor.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tether_protocol::shutdown::stop_signal().await;
        tracing::info!("stopping");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stop_tx.send(true);
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let page_out_after = ctx.config.memory.page_out_after;
    if !page_out_after.is_zero() {
        tokio::spawn(async move {
            tokio::time::sleep(page_out_after).await;
            let released = tokio::task::spawn_blocking(crate::code_pages::release)
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            match released {
                Ok(done) => tracing::info!("start-up pages given back: {done}"),
                Err(e) => tracing::warn!("giving back start-up pages: {e}"),
            }
        });
    }
    let result = tokio::select! {
        r = link_run::run(ctx, stop_rx) => r.map_err(anyhow::Error::from),
        r = socket => match r {
            Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("telemetry socket {}", socket_path.display()))),
            _ => Err(anyhow::anyhow!("telemetry socket task ended")),
        },
        r = control => match r {
            Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("control socket {}", control_path.display()))),
            _ => Err(anyhow::anyhow!("control socket task ended")),
        },
    };
    supervisor.shutdown().await;
    let _ = std::fs::remove_file(&socket_path);
    let _ = std::fs::remove_file(&control_path);
    result
}

/// Logs a warning when group or others may list or write the state directory: the key and
/// outbox are private by their own modes, but others must not see or replace its entries. The
/// systemd unit's StateDirectoryMode= keeps it 0700; a directory made by hand may not be.
/// Search permission alone is fine: the supervisor adds it when applications run as apps.user.
fn warn_if_shared(state_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(state_dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o066 != 0 {
            tracing::warn!(
                "state directory {} has mode {mode:04o}; run `chmod 700 {}`",
                state_dir.display(),
                state_dir.display()
            );
        }
    }
}
