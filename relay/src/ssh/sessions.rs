//! Engineers' relay-terminated sessions (`ssh DEVICE@relay`, exec, sftp and scp): the checks
//! before one is opened (the device, the role, the device's link, the limits), then the
//! session carried to the device's embedded SSH server by [`super::proxy`], recorded, with
//! its opening and closing in the audit trail. An unrecorded session is not carried.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::server::{self, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId};

use super::audit::audit_event;
use super::front::{Conn, Front};
use super::proxy;
use super::state::{ConnState, Peer, lock};
use crate::policy::{self, Permission};
use crate::recording::Recording;
use crate::store::blocking::with_store;
use crate::store::{Device, EngineerIdentity};

impl Conn {
    /// Opens an engineer's session channel and carries it, in a task of its own, to the
    /// device the login names; a session that may not be opened is refused on the channel
    /// with the reason (the same one for a device of another tenant as for none at all).
    pub(super) async fn open_engineer_session(
        &self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
        identities: Vec<EngineerIdentity>,
        login: String,
        fingerprint: String,
    ) {
        reply.accept().await;
        let channel_permit = match self.open_channel() {
            Ok(p) => p,
            Err(hit) => {
                tokio::spawn(async move { proxy::refuse_session(channel, &hit.0).await });
                return;
            }
        };
        let front_handle = session.handle();
        let resolved = self.engineer_device(&identities, &login).await;
        let pending = match resolved {
            Some(_) => None,
            None => self.pending_device_hint(&identities, &login).await,
        };
        let registry = self.front.registry.clone();
        let front = self.front.clone();
        let remote = self.remote;
        let conn_state = self.state.clone();
        tokio::spawn(async move {
            let Some((device, identity)) = resolved else {
                if let Some(pending) = pending {
                    proxy::refuse_session(channel, &pending).await;
                    return;
                }
                let names: Vec<&str> = identities.iter().map(|i| i.user.as_str()).collect();
                let hint = if names.contains(&login.as_str()) {
                    "; log in as DEVICE@relay to open a shell on a device".to_string()
                } else {
                    String::new()
                };
                proxy::refuse_session(channel, &format!("no such device: {login}{hint}")).await;
                return;
            };
            let engineer = identity.user.clone();
            if !policy::allows(identity.role, Permission::OpenSession) {
                audit_event(
                    front.store.clone(),
                    Some(device.tenant.clone()),
                    format!("engineer:{engineer}"),
                    "session.refused",
                    Some(device.id.clone()),
                    remote.to_string(),
                    serde_json::json!({ "reason": format!("role {}", identity.role), "fingerprint": fingerprint }),
                )
                .await;
                proxy::refuse_session(
                    channel,
                    &format!(
                        "permission denied: role {} cannot open sessions on {}",
                        identity.role, device.name
                    ),
                )
                .await;
                return;
            }
            let link = registry.get(&device.id);
            if link.is_none() && front.presence.is_none() {
                proxy::refuse_session(channel, &offline(&device)).await;
                return;
            }
            let places = match front.limits.session(&device.id, &device.name, &engineer) {
                Ok(p) => p,
                Err(hit) => {
                    tracing::info!("session refused: {hit}");
                    proxy::refuse_session(channel, &hit.0).await;
                    return;
                }
            };
            tracing::info!(
                "session: engineer {engineer} ({fingerprint}) on device {} from {remote}",
                device.id
            );
            let opened = match &link {
                Some(link) => proxy::open_device_session(link, &engineer, remote).await,
                None => match remote_session(&front, &device, &engineer, remote).await {
                    Some(opened) => opened,
                    None => {
                        proxy::refuse_session(channel, &offline(&device)).await;
                        return;
                    }
                },
            };
            match opened {
                Ok(dev) => {
                    carry_session(
                        front,
                        channel,
                        front_handle,
                        dev,
                        device,
                        engineer,
                        fingerprint,
                        remote,
                        conn_state,
                    )
                    .await;
                    drop((places, channel_permit));
                }
                Err(e) => {
                    tracing::warn!("session to device {} failed: {e}", device.id);
                    proxy::refuse_session(
                        channel,
                        &format!("cannot reach device {}: {e}", device.name),
                    )
                    .await;
                }
            }
        });
    }

    /// Session requests from engineers are answered at once (the device side follows the
    /// same order); answering later would confuse OpenSSH, which pipelines its requests.
    pub(super) fn answer_engineer_request(
        &self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        if matches!(self.peer(), Peer::Engineer { .. }) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

/// What an engineer hears of a device no relay holds a link to.
fn offline(device: &Device) -> String {
    let seen = device
        .last_disconnected
        .clone()
        .unwrap_or_else(|| "never".into());
    format!("device {} is offline (last seen {seen})", device.name)
}

/// A session on `device` through the relay of the cluster that holds its link: `None` when
/// no relay does.
async fn remote_session(
    front: &super::front::Front,
    device: &Device,
    engineer: &str,
    remote: std::net::SocketAddr,
) -> Option<Result<proxy::DeviceSession, proxy::ProxyError>> {
    let presence = front.presence.as_ref()?;
    let target = crate::cluster::peer::Target::Session {
        device_id: device.id.clone(),
    };
    let stream = match presence.open_remote(&target, remote).await {
        Ok(Some(stream)) => stream,
        Ok(None) => return None,
        Err(e) => return Some(Err(proxy::ProxyError::Cluster(e.to_string()))),
    };
    let device_key = match russh::keys::PublicKey::from_openssh(&device.public_key) {
        Ok(k) => k,
        Err(e) => return Some(Err(proxy::ProxyError::Cluster(format!("device key: {e}")))),
    };
    tracing::info!("session to device {} through its relay", device.id);
    Some(proxy::session_over(stream, device_key, engineer).await)
}

/// Carries one engineer session to the device, recorded, with its audit entries; returns when
/// the session is over and its record complete.
#[allow(clippy::too_many_arguments)]
async fn carry_session(
    front: Arc<Front>,
    channel: Channel<Msg>,
    front_handle: server::Handle,
    dev: proxy::DeviceSession,
    device: Device,
    engineer: String,
    fingerprint: String,
    remote: SocketAddr,
    conn_state: Arc<Mutex<ConnState>>,
) {
    let active = SessionGuard::new(&front.active_sessions);
    let source = remote.to_string();
    let opened = {
        let (device_id, device_name) = (device.id.clone(), device.name.clone());
        let (engineer, fingerprint, source) =
            (engineer.clone(), fingerprint.clone(), source.clone());
        let tenant_id = device.tenant_id;
        with_store(&front.store, move |s| {
            s.open_session(crate::store::NewSession {
                tenant_id,
                device_id: &device_id,
                device_name: &device_name,
                engineer: &engineer,
                fingerprint: &fingerprint,
                source: &source,
            })
        })
        .await
    };
    let id = match opened {
        Ok(Ok(id)) => id,
        other => {
            // An unrecorded session is not carried: every session can be replayed or it
            // does not happen.
            if let Ok(Err(e)) = other {
                tracing::error!("cannot record a session on {}: {e}", device.id);
            }
            proxy::refuse_session(channel, "the relay cannot record this session right now").await;
            return;
        }
    };
    let actor = format!("engineer:{engineer}");
    let event = |action: &'static str, detail: serde_json::Value| {
        audit_event(
            front.store.clone(),
            Some(device.tenant.clone()),
            actor.clone(),
            action,
            Some(device.id.clone()),
            source.clone(),
            detail,
        )
    };
    event(
        "session.open",
        serde_json::json!({ "session": id, "fingerprint": fingerprint }),
    )
    .await;
    let recording = Recording::new(
        front.store.clone(),
        id.clone(),
        &front.sessions_dir,
        front.sessions.record_input,
        format!("{engineer}@{}", device.name),
    );
    let started = std::time::Instant::now();
    let flusher = {
        let recording = recording.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                recording.flush();
            }
        })
    };
    let idle = Some(front.limits.config.session_idle_timeout);
    let ended = proxy::relay_session(channel, front_handle, dev, recording.clone(), idle).await;
    let evicted = lock(&conn_state).evicted.clone();
    let reason = if *front.shutdown.borrow() {
        "relay stopped".to_string()
    } else if let Some(why) = evicted {
        format!("closed by the relay: {why}")
    } else {
        match ended {
            proxy::Ended::Device => "exited",
            proxy::Ended::Engineer => "closed by engineer",
            proxy::Ended::Idle => "idle timeout",
        }
        .to_string()
    };
    flusher.abort();
    let end = recording.finish(&reason).await;
    event(
        "session.close",
        serde_json::json!({
            "session": id,
            "seconds": started.elapsed().as_secs(),
            "kind": end.kind,
            "command": end.command,
            "reason": reason,
            "exit_status": end.exit_status,
            "bytes_in": end.bytes_in,
            "bytes_out": end.bytes_out,
        }),
    )
    .await;
    drop(active);
}

/// Counts a running session for as long as it lives.
struct SessionGuard(Arc<std::sync::atomic::AtomicUsize>);

impl SessionGuard {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
