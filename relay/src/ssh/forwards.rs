//! Engineers' forwards (`direct-tcpip` channels): `ssh -L` to a device-local address and
//! `ssh -J` to the device's own sshd, end to end. The relay checks the device, the role and
//! the target, audits the forward's opening and closing, and carries bytes it never reads.

use russh::Channel;
use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Msg};

use super::audit::audit_event;
use super::front::Conn;
use super::state::Peer;
use crate::link_forward::DeviceSide;
use crate::policy::{self, Permission};

impl Conn {
    /// Opens an engineer's forward: `ssh -L … DEVICE@relay` (the login names the device, the
    /// target is device-local) or `ssh -J relay DEVICE` (the target host names the device;
    /// its sshd listens locally). The bytes are copied both ways without being read.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open_forward(
        &self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
    ) -> Result<(), russh::Error> {
        let Peer::Engineer {
            identities,
            login,
            fingerprint,
        } = self.peer()
        else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // `ssh -L … DEVICE@relay`: the device is the login and the target is device-local.
        // `ssh -J relay DEVICE`: the target host names the device; its sshd listens locally.
        let (device, target_host) = match self.engineer_device(&identities, &login).await {
            Some(found) => (Some(found), host_to_connect.to_string()),
            None => (
                self.engineer_device(&identities, host_to_connect).await,
                "127.0.0.1".to_string(),
            ),
        };
        let Some((device, identity)) = device else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let engineer = format!("engineer:{}", identity.user);
        if !policy::allows(identity.role, Permission::Forward) {
            tracing::info!(
                "forward refused: {} {fingerprint} on device {}",
                identity.role,
                device.id
            );
            audit_event(
                self.front.store.clone(),
                Some(device.tenant.clone()),
                engineer.clone(),
                "forward.refused",
                Some(device.id.clone()),
                self.remote.to_string(),
                serde_json::json!({
                    "to": format!("{target_host}:{port_to_connect}"),
                    "reason": format!("role {}", identity.role),
                    "fingerprint": fingerprint,
                }),
            )
            .await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        if tether_protocol::names::is_reserved_host(&target_host) {
            // Only the relay reaches the device's embedded server, on a channel of its own; a
            // forward naming a link-reserved host is an attempt to reach it unrecorded (an
            // older agent would serve it).
            tracing::warn!(
                "forward refused: {fingerprint} named the reserved host {target_host:?} on device {}",
                device.id
            );
            audit_event(
                self.front.store.clone(),
                Some(device.tenant.clone()),
                engineer.clone(),
                "forward.refused",
                Some(device.id.clone()),
                self.remote.to_string(),
                serde_json::json!({
                    "to": format!("{target_host}:{port_to_connect}"),
                    "error": "reserved host",
                }),
            )
            .await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let link = self.front.registry.get(&device.id);
        let presence = self.front.presence.clone();
        if link.is_none() && presence.is_none() {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        }
        let channel_permit = match self.open_channel() {
            Ok(p) => p,
            Err(hit) => {
                // A channel-open failure carries only a code: OpenSSH prints "open failed:
                // resource shortage"; the relay's log names the limit.
                tracing::info!("forward refused for {}: {hit}", self.remote);
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                return Ok(());
            }
        };
        tracing::info!(
            "forward: {fingerprint} to {target_host}:{port_to_connect} on device {}",
            device.id
        );
        let originator = (originator_address.to_string(), originator_port);
        let store = self.front.store.clone();
        let source = self.remote.to_string();
        let source_ip = self.remote.ip();
        // Open the device side in a task: the device may take a while to dial its target, and
        // this engineer's other channels must keep moving meanwhile.
        tokio::spawn(async move {
            let event = |action: &'static str, detail: serde_json::Value| {
                audit_event(
                    store.clone(),
                    Some(device.tenant.clone()),
                    engineer.clone(),
                    action,
                    Some(device.id.clone()),
                    source.clone(),
                    detail,
                )
            };
            let to = format!("{target_host}:{port_to_connect}");
            let device_side = match (&link, &presence) {
                (Some(link), _) => crate::link_forward::open_on_link(
                    link,
                    &target_host,
                    port_to_connect,
                    originator,
                )
                .await
                .map_err(|e| e.to_string()),
                (None, Some(presence)) => {
                    // The link is on another relay of the cluster: through its peer port.
                    let target = crate::cluster::peer::Target::Tcp {
                        device_id: device.id.clone(),
                        host: target_host.clone(),
                        port: port_to_connect,
                    };
                    let originator = std::net::SocketAddr::new(
                        originator.0.parse().unwrap_or(source_ip),
                        u16::try_from(originator.1).unwrap_or(0),
                    );
                    match presence.open_remote(&target, originator).await {
                        Ok(Some(stream)) => Ok(DeviceSide::Stream(Box::new(stream))),
                        Ok(None) => Err("the device is offline".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                (None, None) => Err("the device is offline".to_string()),
            };
            match device_side {
                Ok(b) => {
                    reply.accept().await;
                    event("forward.open", serde_json::json!({ "to": to })).await;
                    let started = std::time::Instant::now();
                    let (sent, received) = b.carry(channel.into_stream()).await;
                    drop(channel_permit);
                    event(
                        "forward.close",
                        serde_json::json!({
                            "to": to,
                            "seconds": started.elapsed().as_secs(),
                            "bytes_in": sent,
                            "bytes_out": received,
                        }),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::info!(
                        "device {} refused forward to {target_host}:{port_to_connect}: {e}",
                        device.id
                    );
                    event(
                        "forward.refused",
                        serde_json::json!({ "to": to, "error": e }),
                    )
                    .await;
                    reply
                        .reject(ChannelOpenFailure::AdministrativelyProhibited)
                        .await;
                }
            }
        });
        Ok(())
    }
}
