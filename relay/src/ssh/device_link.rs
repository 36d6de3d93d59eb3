//! A device's link: its announcement (the device goes online and becomes reachable through
//! the registry), and the session channels the device opens on it, each taken by the
//! subsystem its request names: telemetry and control ([`crate::channels`]) or key rotation
//! ([`super::device_requests`]).

use russh::keys::PublicKey;
use russh::server::{ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId};
use tether_protocol::fleet::CONTROL_SUBSYSTEM;
use tether_protocol::names::KEYS_SUBSYSTEM;
use tether_protocol::telemetry::TELEMETRY_SUBSYSTEM;

use super::front::Conn;
use super::state::{Peer, lock};
use crate::registry::LiveLink;
use crate::store::Device;
use crate::store::blocking::with_store;

impl Conn {
    /// A device announces its link with a `tcpip-forward` request: it becomes the device's
    /// live link (replacing an older one) and the device is recorded online. The port it
    /// names says whether its agent serves its embedded SSH server on session channels, the
    /// address whether it also serves sessions straight on a link channel.
    pub(super) async fn announce_link(
        &self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, russh::Error> {
        let Peer::Device { device } = self.peer() else {
            return Ok(false);
        };
        tracing::debug!("device {} announced {address}", device.id);
        let device_key = match PublicKey::from_openssh(&device.public_key) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(
                    "device {} has an unreadable key in the store: {e}",
                    device.id
                );
                return Ok(false);
            }
        };
        let session_channels = *port == tether_protocol::names::LINK_SESSION_CHANNELS;
        if !session_channels {
            tracing::info!(
                "device {} runs an agent that predates session channels; reaching its embedded server the legacy way",
                device.id
            );
        }
        let link = LiveLink {
            conn_id: self.conn_id,
            handle: session.handle(),
            device_key,
            session_channels,
            link_sessions: session_channels
                && address == tether_protocol::names::LINK_FORWARD_ADDRESS_SESSIONS,
        };
        if let Some(old) = self.front.registry.insert(&device.id, link) {
            tracing::info!(
                "device {} reconnected; closing its previous link",
                device.id
            );
            tokio::spawn(async move {
                let _ = old
                    .handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "replaced by a newer link".into(),
                        "en".into(),
                    )
                    .await;
            });
        }
        if let Some(presence) = &self.front.presence {
            presence.link_up(&device.id, self.conn_id);
        }
        lock(&self.state).linked_device = Some(device.id.clone());
        let version = agent_version(session.remote_sshid());
        let id = device.id.clone();
        let remote = self.remote.to_string();
        if let Ok(Err(e)) = with_store(&self.front.store, move |s| {
            s.mark_online(&id, &remote, version.as_deref())
        })
        .await
        {
            tracing::error!("cannot record device {} online: {e}", device.id);
        }
        tracing::info!(
            "device {} ({}) online from {} via {}",
            device.id,
            device.name,
            self.remote,
            self.transport
        );
        *port = 1;
        Ok(true)
    }

    /// A session channel the device opened: held until its subsystem request says what it is
    /// for.
    pub(super) async fn hold_device_channel(
        &self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
    ) {
        reply.accept().await;
        let id = channel.id();
        lock(&self.state).device_channels.insert(id, channel);
    }

    /// Hands the held session channel `channel` to the subsystem `name` for `device`; whether
    /// one took it.
    pub(super) fn device_subsystem(
        &self,
        channel: ChannelId,
        name: &str,
        device: Box<Device>,
    ) -> bool {
        let taken = lock(&self.state).device_channels.remove(&channel);
        match (taken, name) {
            (Some(ch), TELEMETRY_SUBSYSTEM) => {
                let task = tokio::spawn(crate::channels::telemetry::serve(
                    ch.into_stream(),
                    device.id.clone(),
                    device.tenant_id,
                    self.front.sink.clone(),
                    self.front.metrics.clone(),
                    self.front.shutdown.clone(),
                ));
                let mut state = lock(&self.state);
                state.telemetry.retain(|t| !t.is_finished());
                state.telemetry.push(task);
                true
            }
            (Some(ch), KEYS_SUBSYSTEM) => {
                tokio::spawn(super::device_requests::keys_channel(
                    self.front.clone(),
                    ch,
                    device.clone(),
                    self.remote,
                ));
                true
            }
            (Some(ch), CONTROL_SUBSYSTEM) => {
                // An agent that announced session channels is of the release that
                // also reads the changes of a desired state.
                let features = crate::channels::control::AgentFeatures {
                    desired_changes: self
                        .front
                        .registry
                        .get(&device.id)
                        .is_some_and(|l| l.session_channels),
                };
                tokio::spawn(crate::channels::control::serve(
                    ch.into_stream(),
                    device.id.clone(),
                    self.front.store.clone(),
                    self.front.artifacts_dir.clone(),
                    features,
                ));
                true
            }
            _ => false,
        }
    }
}

/// Agent version from an SSH version line like `SSH-2.0-tether-agent_0.1.0`.
fn agent_version(sshid: &[u8]) -> Option<String> {
    let id = String::from_utf8_lossy(sshid);
    id.trim()
        .strip_prefix("SSH-2.0-tether-agent_")
        .map(|v| v.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_version_comes_from_the_ssh_id() {
        assert_eq!(
            agent_version(b"SSH-2.0-tether-agent_1.2.3\r\n").as_deref(),
            Some("1.2.3")
        );
        assert_eq!(agent_version(b"SSH-2.0-OpenSSH_9.2"), None);
    }
}
