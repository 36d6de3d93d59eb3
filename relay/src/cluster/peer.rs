//! Relay-to-relay byte streams: how an engineer's session or forward accepted by one relay
//! reaches a device whose link another relay holds.
//!
//! The relay that accepted the engineer opens one SSH connection to the holder's peer port per
//! session or forward, and one `direct-tcpip` channel on it naming what it wants: the device's
//! embedded server ([`Target::Session`]) or a device-side TCP target ([`Target::Tcp`]). The
//! holder opens the matching channel on the device's link and copies bytes both ways. SSH
//! rather than TLS because the relays already share what SSH needs: both ends prove they hold
//! the cluster's host key (kept in the store, see [`crate::hostkey`]), the server as its host
//! key and the client as its user key, so no certificate authority has to be run for the
//! relays and nothing outside the store is configured. One connection per engineer stream,
//! not one shared connection per pair of relays: SSH's per-channel windows already keep a slow
//! engineer from stalling the others, and a separate TCP connection also keeps their bytes out
//! of each other's TCP queue and lets a relay's death end exactly the streams it carried.
//!
//! The relay that accepted the engineer has already decided everything about the engineer
//! (tenant, role, target); the holder only checks that the peer is a relay of the cluster and
//! that it holds the device's link. The device applies its own forward policy, as always.

use crate::link_forward::DeviceSide;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet, client};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::publickey_only::reject;
use crate::registry::Registry;

/// The user name a relay logs in with on another relay's peer port.
const PEER_USER: &str = "tether-peer";

/// How long opening a peer stream may take (TCP, key exchange, login, channel).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a peer stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The device's embedded SSH server (an engineer's session).
    Session {
        /// The device.
        device_id: String,
    },
    /// A TCP target on the device's side (`ssh -L`, `ssh -J`).
    Tcp {
        /// The device.
        device_id: String,
        /// Host as the device resolves it.
        host: String,
        /// Port.
        port: u32,
    },
}

impl Target {
    /// The `direct-tcpip` host and port that name this target.
    fn encode(&self) -> (String, u32) {
        match self {
            Target::Session { device_id } => (format!("session/{device_id}"), 0),
            Target::Tcp {
                device_id,
                host,
                port,
            } => (format!("tcp/{device_id}/{host}"), *port),
        }
    }

    fn decode(host: &str, port: u32) -> Option<Target> {
        if let Some(device_id) = host.strip_prefix("session/") {
            return Some(Target::Session {
                device_id: device_id.to_string(),
            });
        }
        let (device_id, host) = host.strip_prefix("tcp/")?.split_once('/')?;
        Some(Target::Tcp {
            device_id: device_id.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// The device the target is on.
    pub fn device_id(&self) -> &str {
        match self {
            Target::Session { device_id } | Target::Tcp { device_id, .. } => device_id,
        }
    }
}

/// Why a peer stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The holder's peer port did not answer.
    #[error("relay peer {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The SSH layer failed or the holder refused the login.
    #[error("relay peer {addr}: {reason}")]
    Refused {
        /// The address dialled.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// Nothing answered in time.
    #[error("relay peer {0}: no answer within 10 s")]
    Timeout(String),
}

/// A byte stream to a device through the relay that holds its link; the SSH connection it
/// rides on lives as long as the stream.
pub struct PeerStream {
    inner: russh::ChannelStream<client::Msg>,
    _connection: client::Handle<PeerClient>,
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client side: accepts only a holder presenting the cluster's host key.
pub struct PeerClient {
    cluster_key: PublicKey,
}

impl client::Handler for PeerClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.cluster_key.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// Opens a stream to `target` through the relay whose peer port is `addr`, logging in with
/// the cluster's key; `originator` is the engineer's address, passed on to the device.
pub async fn open(
    addr: &str,
    cluster_key: Arc<PrivateKey>,
    target: &Target,
    originator: SocketAddr,
) -> Result<PeerStream, PeerError> {
    tokio::time::timeout(
        OPEN_TIMEOUT,
        open_inner(addr, cluster_key, target, originator),
    )
    .await
    .map_err(|_| PeerError::Timeout(addr.to_string()))?
}

async fn open_inner(
    addr: &str,
    cluster_key: Arc<PrivateKey>,
    target: &Target,
    originator: SocketAddr,
) -> Result<PeerStream, PeerError> {
    let refused = |reason: String| PeerError::Refused {
        addr: addr.to_string(),
        reason,
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| PeerError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let handler = PeerClient {
        cluster_key: cluster_key.public_key().clone(),
    };
    let mut connection = client::connect_stream(config, tcp, handler)
        .await
        .map_err(|e| refused(e.to_string()))?;
    let auth = connection
        .authenticate_publickey(PEER_USER, PrivateKeyWithHashAlg::new(cluster_key, None))
        .await
        .map_err(|e| refused(e.to_string()))?;
    if !auth.success() {
        return Err(refused("the peer refused the cluster key".into()));
    }
    let (host, port) = target.encode();
    let channel = connection
        .channel_open_direct_tcpip(
            host,
            port,
            originator.ip().to_string(),
            u32::from(originator.port()),
        )
        .await
        .map_err(|e| refused(format!("{} on the holder: {e}", target.device_id())))?;
    Ok(PeerStream {
        inner: channel.into_stream(),
        _connection: connection,
    })
}

/// The server side of one peer connection.
struct PeerConn {
    registry: Arc<Registry>,
    cluster_key: PublicKey,
    remote: SocketAddr,
    /// Set once the peer logged in with the cluster's key.
    authenticated: Arc<AtomicBool>,
}

impl PeerConn {
    fn is_cluster_key(&self, user: &str, key: &PublicKey) -> bool {
        user == PEER_USER && key.key_data() == self.cluster_key.key_data()
    }
}

impl server::Handler for PeerConn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.is_cluster_key(user, offer.public_key) {
            Auth::Accept
        } else {
            reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.is_cluster_key(user, key.public_key) {
            self.authenticated.store(true, Ordering::SeqCst);
            Ok(Auth::Accept)
        } else {
            tracing::warn!(
                "peer port: {} offered a key that is not the cluster's",
                self.remote
            );
            Ok(reject())
        }
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(target) = Target::decode(host_to_connect, port_to_connect) else {
            reply.reject(ChannelOpenFailure::UnknownChannelType).await;
            return Ok(());
        };
        let Some(link) = self.registry.get(target.device_id()) else {
            // The device moved on since the peer looked it up.
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let originator = (originator_address.to_string(), originator_port);
        let remote = self.remote;
        tokio::spawn(async move {
            let device_channel = match &target {
                Target::Session { .. } if link.session_channels => link
                    .handle
                    .channel_open_session()
                    .await
                    .map(|c| DeviceSide::Stream(Box::new(c.into_stream()))),
                Target::Session { .. } => link
                    .handle
                    .channel_open_forwarded_tcpip(
                        tether_protocol::names::LEGACY_EMBEDDED_SSH_TARGET,
                        0,
                        originator.0,
                        originator.1,
                    )
                    .await
                    .map(|c| DeviceSide::Stream(Box::new(c.into_stream()))),
                Target::Tcp { host, port, .. } => {
                    crate::link_forward::open_on_link(&link, host, *port, originator).await
                }
            };
            match device_channel {
                Ok(device_side) => {
                    reply.accept().await;
                    tracing::debug!("peer {remote}: carrying {target:?}");
                    device_side.carry(channel.into_stream()).await;
                }
                Err(e) => {
                    tracing::info!("peer {remote}: {target:?} refused by the device: {e}");
                    reply
                        .reject(ChannelOpenFailure::AdministrativelyProhibited)
                        .await;
                }
            }
        });
        Ok(())
    }
}

/// Serves the peer port on `listener` until `stop` turns true: SSH with `host_key` (the
/// cluster's), accepting only relays that log in with it too.
pub async fn serve(
    listener: TcpListener,
    host_key: PrivateKey,
    registry: Arc<Registry>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    // 0 means no limit, as for every other limit.
    let slots = Arc::new(tokio::sync::Semaphore::new(if max_connections == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        max_connections
    }));
    let mut warned_full: Option<std::time::Instant> = None;
    let cluster_key = host_key.public_key().clone();
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = Arc::new(server::Config {
        methods,
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 2,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("peer port accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: a flood of connections must not take the relay's descriptors.
            if warned_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                warned_full = Some(std::time::Instant::now());
                tracing::warn!(
                    "peer port full (limits.max_peer_connections = {max_connections}): refusing {remote}"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let authenticated = Arc::new(AtomicBool::new(false));
        let handler = PeerConn {
            registry: registry.clone(),
            cluster_key: cluster_key.clone(),
            remote,
            authenticated: authenticated.clone(),
        };
        let config = config.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // The key exchange and login must finish promptly; a peer port is not a place to
            // hold connections open without speaking.
            let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
            let running =
                match tokio::time::timeout_at(deadline, server::run_stream(config, tcp, handler))
                    .await
                {
                    Ok(Ok(running)) => running,
                    Ok(Err(e)) => return tracing::debug!("peer {remote}: {e:?}"),
                    Err(_) => return tracing::info!("peer {remote}: no SSH version line in time"),
                };
            let handle = running.handle();
            let mut running = std::pin::pin!(running);
            let ended = tokio::select! {
                ended = &mut running => Some(ended),
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None if authenticated.load(Ordering::SeqCst) => running.await,
                None => {
                    tracing::info!("peer {remote}: not logged in within {OPEN_TIMEOUT:?}; closing");
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "not logged in in time".into(),
                            "en".into(),
                        )
                        .await;
                    // The session's own task ends with the disconnect; it is not waited for
                    // beyond a moment, so a peer that stops reading cannot hold the slot.
                    let _ = tokio::time::timeout(Duration::from_secs(2), running).await;
                    return;
                }
            };
            if let Err(e) = ended {
                tracing::debug!("peer {remote} ended: {e:?}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_and_nothing_else_decodes() {
        for t in [
            Target::Session {
                device_id: "dev_01".into(),
            },
            Target::Tcp {
                device_id: "dev_01".into(),
                host: "::1".into(),
                port: 8080,
            },
        ] {
            let (host, port) = t.encode();
            assert_eq!(Target::decode(&host, port), Some(t));
        }
        assert_eq!(Target::decode("127.0.0.1", 22), None);
        assert_eq!(Target::decode("tcp/dev_01", 22), None);
    }

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &[seed; 32],
        ))
    }

    /// Whether the server closed `tcp` (read end of stream) within `within`.
    async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn the_peer_port_bounds_its_connections_and_closes_those_that_do_not_log_in()
    -> Result<(), Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(listener, key(1), Arc::new(Registry::new()), 2, stop));
        // Two that finish the key exchange and then never log in, holding both places.
        let config = Arc::new(client::Config::default());
        let mut held = Vec::new();
        for _ in 0..2 {
            let handler = PeerClient {
                cluster_key: key(1).public_key().clone(),
            };
            held.push(client::connect(config.clone(), addr, handler).await?);
        }
        // A third is closed at once, before it says anything.
        let mut third = TcpStream::connect(addr).await?;
        assert!(closed_within(&mut third, Duration::from_secs(2)).await);
        // The two that did not log in are closed by the deadline, freeing their places.
        let start = std::time::Instant::now();
        for h in &held {
            while !h.is_closed() {
                assert!(
                    start.elapsed() < OPEN_TIMEOUT + Duration::from_secs(5),
                    "a peer that never logged in still holds its place"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        drop(held);
        // Once freed, a relay with the cluster's key logs in again.
        let handler = PeerClient {
            cluster_key: key(1).public_key().clone(),
        };
        let mut again = client::connect(config.clone(), addr, handler).await?;
        let auth = again
            .authenticate_publickey(
                PEER_USER,
                PrivateKeyWithHashAlg::new(Arc::new(key(1)), None),
            )
            .await?;
        assert!(auth.success());
        // And one with another key does not.
        let handler = PeerClient {
            cluster_key: key(1).public_key().clone(),
        };
        let mut stranger = client::connect(config, addr, handler).await?;
        let auth = stranger
            .authenticate_publickey(
                PEER_USER,
                PrivateKeyWithHashAlg::new(Arc::new(key(2)), None),
            )
            .await?;
        assert!(!auth.success());
        Ok(())
    }
}
