//! The life of one SSH connection: admission against the limits before the key exchange, the
//! version exchange and the login grace, the relay's stop (telemetry channels acknowledge what
//! they are committing before the goodbye) and the cleanup after (the device's link
//! unregistered and recorded offline).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::server;
use tether_protocol::shutdown::stopped;
use tokio::io::{AsyncRead, AsyncWrite};

use super::front::{Conn, Front};
use super::state::{ConnState, Peer, disconnect, lock};
use crate::store::blocking::with_store;

/// How long a stopping relay waits for a device's telemetry channel to acknowledge the batch
/// it is committing. A commit takes milliseconds; a stuck store must not hold the stop up.
const TELEMETRY_DRAIN: Duration = Duration::from_secs(2);

impl Front {
    /// Serves one SSH connection (from TCP or from a WebSocket) until it ends.
    pub async fn serve<S>(self: Arc<Self>, stream: S, remote: SocketAddr, transport: &'static str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let admitted = match self.limits.new_connection(remote.ip()) {
            Ok(()) => self.limits.handshake_queued(remote.ip()).await,
            Err(hit) => Err(hit),
        };
        let handshake = match admitted {
            Ok(p) => p,
            Err(hit) => {
                // Refused before the key exchange, which is the expensive part a flood is
                // after; RFC 4253 lets a server send text lines before its version line.
                tracing::warn!("{transport} connection from {remote} refused: {hit}");
                let mut stream = stream;
                let line = format!("tether: {hit}\r\n");
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    use tokio::io::AsyncWriteExt;
                    let _ = stream.write_all(line.as_bytes()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
                return;
            }
        };
        let state = Arc::new(Mutex::new(ConnState {
            peer: Peer::Unknown,
            device_channels: HashMap::new(),
            linked_device: None,
            handshake: Some(handshake),
            handle: None,
            channels: Arc::default(),
            telemetry: Vec::new(),
            enroll_channel_used: false,
            evicted: None,
        }));
        let handler = Conn {
            front: self.clone(),
            conn_id,
            remote,
            transport,
            state: state.clone(),
        };
        // The version exchange happens inside run_stream; bound it so half-open connections
        // and clients that never speak cannot pile up.
        let login_grace = self.limits.config.login_grace;
        let running = match tokio::time::timeout(
            login_grace,
            server::run_stream(
                self.config.clone(),
                crate::metrics::Counted::new(
                    stream,
                    self.metrics.bytes(transport, "in"),
                    self.metrics.bytes(transport, "out"),
                ),
                handler,
            ),
        )
        .await
        {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => {
                tracing::debug!("{transport} connection from {remote}: {e:?}");
                return;
            }
            Err(_) => {
                tracing::info!("{transport} connection from {remote}: no SSH version line in time");
                return;
            }
        };
        let handle = running.handle();
        lock(&state).handle = Some(handle.clone());
        if let Some(hit) = self.limits.auth_refused(remote.ip()) {
            tracing::info!("{transport} connection from {remote} refused: {hit}");
            disconnect(handle, hit.0);
            let _ = tokio::time::timeout(Duration::from_secs(2), running).await;
            return;
        }
        let grace_state = state.clone();
        let grace_handle = handle.clone();
        let grace = tokio::spawn(async move {
            tokio::time::sleep(login_grace).await;
            // An enrolling peer has proven nothing but that it holds some key; its request
            // takes milliseconds, so one still connected after the grace is squatting.
            let unauthenticated = matches!(
                lock(&grace_state).peer,
                Peer::Unknown | Peer::Enrolling { .. }
            );
            if unauthenticated {
                tracing::info!("{remote}: authentication not completed in time, disconnecting");
                let _ = grace_handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "login grace time exceeded".into(),
                        "en".into(),
                    )
                    .await;
            }
        });
        let mut shutdown = self.shutdown.clone();
        let mut running = running;
        let result = tokio::select! {
            r = &mut running => r,
            _ = stopped(&mut shutdown) => {
                // Telemetry channels stop reading at once; let them acknowledge the batch they
                // are committing. The session keeps running meanwhile, so the ack goes out.
                let channels = std::mem::take(&mut lock(&state).telemetry);
                let drained = tokio::time::timeout(
                    TELEMETRY_DRAIN,
                    futures_util::future::join_all(channels),
                );
                tokio::select! {
                    r = &mut running => r,
                    _ = drained => {
                        let _ = handle
                            .disconnect(russh::Disconnect::ByApplication, "relay shutting down".into(), "en".into())
                            .await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                        Ok(())
                    }
                }
            }
        };
        grace.abort();
        self.live_logins().remove(&conn_id);
        if let Err(e) = result {
            tracing::debug!("{transport} connection from {remote} ended: {e:?}");
        }
        let linked = lock(&state).linked_device.take();
        if let Some(device_id) = linked
            && self.registry.remove(&device_id, conn_id)
        {
            tracing::info!("device {device_id} offline ({remote} via {transport})");
            if let Some(presence) = &self.presence {
                presence.link_down(&device_id, conn_id);
            }
            let id = device_id.clone();
            if let Ok(Err(e)) = with_store(&self.store, move |s| s.mark_offline(&id)).await {
                tracing::error!("cannot record device {device_id} offline: {e}");
            }
        }
    }
}
