//! `relay serve`: the SSH port, the HTTP port and the housekeeping between them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use russh::{MethodKind, MethodSet, Preferred, SshId, cipher, compression, kex, mac, server};
use tether_protocol::shutdown::stopped;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::RelayConfig;
use crate::registry::Registry;
use crate::ssh::Front;
use crate::store::Store;
use crate::store::blocking::with_store;
use crate::{hostkey, http};

/// How often telemetry older than each tenant's retention is deleted.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Most time a stop may take between SIGTERM and exit: longer than the HTTP drain, so requests
/// in progress are answered, and within the 10 s a service manager usually allows.
const SHUTDOWN_GRACE: Duration = http::DRAIN_TIMEOUT.saturating_add(Duration::from_millis(1500));

/// How often the relay checks, whatever the store says, for rejected or removed devices that
/// still hold a link and for engineers removed, disabled or re-keyed since they logged in. The
/// check runs at once when the store's access generation moves or another relay announces an
/// access change; this tick is the backstop, and it is slow because a check reads the store
/// for every live link.
const EVICTION_INTERVAL: Duration = Duration::from_secs(60);

/// How often a relay on a shared store says it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long a relay on a shared store may be silent before the others release its devices
/// and sessions: several heartbeats, so that a slow store does not release a live relay's.
const RELAY_SILENCE: Duration = Duration::from_secs(30);

/// Key exchanges the relay offers: the post-quantum hybrid first, then curve25519 for the
/// clients without it (OpenSSH before 9.9, which prefers its own sntrup761 hybrid that russh
/// lacks), then the extension markers (ext-info and strict kex, the Terrapin fix).
const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// [`KEX`] with the finite-field groups of `ssh.legacy_algorithms` before the markers.
const KEX_LEGACY: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::DH_G16_SHA512,
    kex::DH_G18_SHA512,
    kex::DH_G14_SHA256,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// Ciphers the relay offers. SSH lets the client's preference decide: OpenSSH puts
/// chacha20-poly1305 first, then aes-ctr, then aes-gcm. The relay re-encrypts every byte of
/// every session; AES-GCM is about 1.5x faster than chacha20 on CPUs with AES instructions, and
/// aes-ctr needs an HMAC beside it (with hmac-sha2-256-etm, SHA-256 was a quarter of the relay's
/// CPU during an scp). So the relay offers only AES-GCM, which every OpenSSH since 6.2 has.
const CIPHERS: &[cipher::Name] = &[cipher::AES_256_GCM, cipher::AES_128_GCM];

/// [`CIPHERS`] and the CTR ciphers of `ssh.legacy_algorithms`, for clients without AES-GCM.
const CIPHERS_LEGACY: &[cipher::Name] = &[
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::AES_256_CTR,
    cipher::AES_128_CTR,
];

/// MACs, used only with the CTR ciphers (GCM authenticates itself): encrypt-then-MAC only.
const MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

/// [`MACS`] and the encrypt-and-MAC forms of `ssh.legacy_algorithms`.
const MACS_LEGACY: &[mac::Name] = &[
    mac::HMAC_SHA512_ETM,
    mac::HMAC_SHA256_ETM,
    mac::HMAC_SHA512,
    mac::HMAC_SHA256,
];

/// No compression: offering zlib before authentication gives an unauthenticated peer a
/// decompressor to attack, and what the link carries (artifacts, bundles, SSH inside SSH)
/// is compressed or encrypted already.
const COMPRESSION: &[compression::Name] = &[compression::NONE];

/// SSH server settings of the relay.
fn ssh_config(config: &RelayConfig, host_key: russh::keys::PrivateKey) -> server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    server::Config {
        server_id: SshId::Standard(format!("SSH-2.0-tether-relay_{}", crate::VERSION).into()),
        methods,
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(300),
        // russh disconnects with "Too many authentication attempts" past this (the "none"
        // probe OpenSSH starts with counts as one).
        max_auth_attempts: config.limits.max_auth_tries as usize,
        // OpenSSH probes with "none" first; answering that at once costs nothing.
        auth_rejection_time_initial: Some(Duration::ZERO),
        // Links idle for hours are normal; keepalives, not inactivity, decide when a peer is gone.
        inactivity_timeout: None,
        keepalive_interval: Some(config.ssh.keepalive_interval),
        keepalive_max: config.ssh.keepalive_max as usize,
        nodelay: true,
        // Inner SSH packets of up to 32 KiB plus framing then fit one link packet instead of two.
        maximum_packet_size: 65535,
        preferred: Preferred {
            cipher: std::borrow::Cow::Borrowed(if config.ssh.legacy_algorithms {
                CIPHERS_LEGACY
            } else {
                CIPHERS
            }),
            kex: std::borrow::Cow::Borrowed(if config.ssh.legacy_algorithms {
                KEX_LEGACY
            } else {
                KEX
            }),
            mac: std::borrow::Cow::Borrowed(if config.ssh.legacy_algorithms {
                MACS_LEGACY
            } else {
                MACS
            }),
            compression: std::borrow::Cow::Borrowed(COMPRESSION),
            ..Preferred::default()
        },
        ..Default::default()
    }
}

/// Runs the relay until SIGTERM or SIGINT.
pub async fn serve(config: RelayConfig, store: Arc<Store>) -> Result<()> {
    // Both ring and aws-lc-rs may be compiled in through dependencies; pick one explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match crate::open_files::raise_to_hard() {
        Ok(limit) => tracing::info!(
            "open-file limit {limit}: room for about {} links (raise LimitNOFILE= for more)",
            crate::open_files::links_allowed(limit)
        ),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    warn_if_readable(&config.data_dir, "data directory", 0o700);
    if let Some(tls) = &config.http.tls {
        warn_if_readable(&tls.key, "TLS private key", 0o600);
    }
    let host_key = hostkey::load_or_create(&config.data_dir)
        .with_context(|| format!("loading the host key in {}", config.data_dir.display()))?;
    let host_key = with_store(&store, move |s| hostkey::cluster_or_own(s, host_key))
        .await?
        .context("choosing the host key")?;
    let fingerprint = hostkey::fingerprint(&host_key);
    {
        // Other relays may be serving from a shared store right now: their devices are online
        // and their sessions open. Only what this relay's previous run left is released here;
        // what a relay that is gone for good left, the others release (see below).
        let relay_id = config.relay_id();
        let id = relay_id.clone();
        let released = with_store(&store, move |s| s.join_as_relay(&id))
            .await?
            .with_context(|| format!("joining the store as relay {relay_id}"))?;
        if released.devices + released.sessions > 0 {
            tracing::warn!(
                "relay {relay_id} was not stopped cleanly last time: {} devices marked offline, {} sessions closed as interrupted",
                released.devices,
                released.sessions
            );
        }
    }

    let ssh_listener = TcpListener::bind(config.ssh.listen)
        .await
        .with_context(|| format!("binding the SSH port {}", config.ssh.listen))?;
    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding the HTTP port {}", config.http.listen))?;
    let tls = match &config.http.tls {
        Some(tls) => Some(http::tls_acceptor(&tls.cert, &tls.key).context("setting up TLS")?),
        None => None,
    };

    // Changes the admin CLI writes reach connected devices through this one watcher.
    let _changes = crate::store::notify::Watcher::spawn(store.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let registry = Arc::new(Registry::new());
    let presence = match &config.cluster.nats {
        Some(url) => {
            let relay_id = config.relay_id();
            tracing::info!("relay {relay_id} of a cluster, presence on NATS {url}");
            if let Some(listen) = config.cluster.peer_listen {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding the peer port {listen}"))?;
                tracing::info!("peer port on {listen}");
                tokio::spawn(crate::cluster::peer::serve(
                    listener,
                    host_key.clone(),
                    registry.clone(),
                    config.limits.max_peer_connections,
                    stop_rx.clone(),
                ));
            }
            Some(
                crate::cluster::Presence::start(
                    url,
                    &relay_id,
                    config.cluster.peer_address(),
                    Arc::new(host_key.clone()),
                    registry.clone(),
                )
                .await
                .with_context(|| format!("connecting to NATS {url}"))?,
            )
        }
        None => None,
    };
    let front = Front::new(
        store.clone(),
        registry.clone(),
        Arc::new(ssh_config(&config, host_key)),
        Arc::new(crate::sink::SqliteSink::new(store.clone())),
        &config,
        stop_rx.clone(),
        presence,
    );
    if let Some(presence) = &front.presence {
        crate::cluster::notify::start(
            presence.client().clone(),
            presence.relay_id(),
            store.notifier(),
            front.access_changed.clone(),
            front.metrics.clone(),
        );
    }
    let router = http::router(
        http::api::router(store.clone(), config.artifacts_dir(), config.sessions_dir()),
        front.clone(),
        config.http.trust_forwarded_for,
    );

    tracing::info!(
        "relay {} serving SSH on {} and HTTP{} on {} (host key {fingerprint}, data in {})",
        crate::VERSION,
        ssh_listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        if tls.is_some() { "S" } else { "" },
        http_listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        config.data_dir.display()
    );

    let http_task = tokio::spawn(http::serve(
        http_listener,
        tls,
        router,
        front.limits.clone(),
        config.http.trust_forwarded_for,
        config.ssh.tcp_keepalive,
        stop_rx.clone(),
    ));
    let ssh_task = tokio::spawn(accept_ssh(
        ssh_listener,
        front.clone(),
        config.ssh.tcp_keepalive,
        stop_rx.clone(),
    ));
    let evict_front = front.clone();
    let mut evict_stop = stop_rx.clone();
    let evict_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVICTION_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = evict_front.access_changed.notified() => {}
                _ = stopped(&mut evict_stop) => return,
            }
            // Engineers first: when a tenant goes, its engineers are told why before their
            // sessions end with the device links they ran on.
            evict_front.evict_engineers().await;
            evict_front.evict_unwelcome().await;
        }
    });

    let members_task = store
        .is_shared()
        .then(|| tokio::spawn(keep_membership(store.clone(), stop_rx.clone())));

    let retention_store = store.clone();
    let sessions_dir = config.sessions_dir();
    let mut retention_stop = stop_rx.clone();
    let retention_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match with_store(&retention_store, |s| s.enforce_retention()).await {
                        Ok(Ok(n)) if n > 0 => tracing::info!("retention: deleted {n} old telemetry records"),
                        Ok(Err(e)) => tracing::error!("retention: {e}"),
                        _ => {}
                    }
                    match with_store(&retention_store, |s| s.expire_sessions()).await {
                        Ok(Ok(casts)) => crate::recording::delete_casts(&sessions_dir, &casts),
                        Ok(Err(e)) => tracing::error!("session retention: {e}"),
                        Err(_) => {}
                    }
                }
                _ = stopped(&mut retention_stop) => return,
            }
        }
    });

    tether_protocol::shutdown::stop_signal().await;
    // The order matters: stop accepting (the listeners close as their accept loops end), let
    // what is in progress finish (HTTP requests get their answers, telemetry batches being
    // committed get their acks, links their goodbye), then record devices offline and exit.
    tracing::info!("shutting down: finishing requests in progress, closing sessions and links");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let links = async {
            let _ = ssh_task.await;
            let _ = evict_task.await;
            let _ = retention_task.await;
            if let Some(task) = members_task {
                let _ = task.await;
            }
            // Connection tasks unregister their device once their goodbye is sent, and
            // complete the records of the sessions they carried.
            for _ in 0..50 {
                if registry.is_empty()
                    && front
                        .active_sessions
                        .load(std::sync::atomic::Ordering::SeqCst)
                        == 0
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let _ = tokio::join!(http_task, links);
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown: still busy after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    // Each link recorded its own end; leaving also clears whatever a link could not record
    // (on a shared store, only this relay's devices: the others' are not its to touch).
    with_store(&store, |s| s.leave_relays())
        .await?
        .context("recording this relay's devices offline")?;
    tracing::info!("stopped");
    Ok(())
}

/// On a store shared by several relays: says every [`HEARTBEAT_INTERVAL`] that this relay is
/// alive, and releases what relays silent for [`RELAY_SILENCE`] held, so that a relay that
/// died for good does not leave its boards online and its sessions open in the store.
async fn keep_membership(store: Arc<crate::store::Store>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        if let Ok(Err(e)) = with_store(&store, |s| s.relay_heartbeat()).await {
            tracing::debug!("relay heartbeat: {e}");
            continue;
        }
        match with_store(&store, |s| s.reap_silent_relays(RELAY_SILENCE)).await {
            Ok(Ok(r)) if !r.relays.is_empty() => tracing::warn!(
                "relays {} were silent for {RELAY_SILENCE:?}: {} of their devices marked offline, {} sessions closed as interrupted",
                r.relays.join(", "),
                r.devices,
                r.sessions
            ),
            Ok(Err(e)) => tracing::debug!("releasing silent relays: {e}"),
            _ => {}
        }
    }
}

/// Logs a warning when group or others may read `path`. Not an error: an operator may share a
/// TLS key with a group on purpose (ssl-cert), and the files inside the data directory are
/// private by their own modes.
fn warn_if_readable(path: &std::path::Path, what: &str, fix: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{what} {} has mode {mode:04o}, readable beyond the relay's user; run `chmod {fix:o} {}`",
                path.display(),
                path.display()
            );
        }
    }
}

async fn accept_ssh(
    listener: TcpListener,
    front: Arc<Front>,
    tcp_keepalive: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("ssh accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        // run_stream does not set TCP_NODELAY itself; interactive keystrokes need it.
        let _ = tcp.set_nodelay(true);
        if let Err(e) = tether_protocol::tcp_keepalive::arm(&tcp, tcp_keepalive) {
            tracing::debug!("tcp keepalive on the connection from {peer}: {e}");
        }
        tokio::spawn(front.clone().serve(tcp, peer, "tcp"));
    }
}
