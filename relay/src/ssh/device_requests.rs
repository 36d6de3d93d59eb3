//! The one-request subsystems a device uses besides its link: enrollment (an enrolling
//! device's key and a token become a device) and key rotation (a linked device registers its
//! next key). Each reads one JSON request line and writes one JSON answer line.

use std::net::SocketAddr;
use std::sync::Arc;

use russh::keys::{HashAlg, PublicKey};
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tether_protocol::enroll::{EnrollRequest, EnrollResponse, MAX_ENROLL_MESSAGE};

use super::audit::audit_event;
use super::front::{Conn, Front};
use super::state::lock;
use crate::store::blocking::with_store;
use crate::store::{Device, DeviceEnrollment};

impl Conn {
    /// An enrolling device's session channel, for its one enrollment request.
    pub(super) async fn open_enrollment(
        &self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        key: PublicKey,
    ) {
        // One enrollment per connection: a key that proved nothing gets no more.
        let first = !std::mem::replace(&mut lock(&self.state).enroll_channel_used, true);
        if !first {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
        reply.accept().await;
        let front = self.front.clone();
        let remote = self.remote;
        tokio::spawn(enroll_channel(front, channel, key, remote));
    }
}

/// Serves the enrollment subsystem on a session channel: one JSON request line, one JSON
/// answer line.
async fn enroll_channel(
    front: Arc<Front>,
    mut channel: Channel<Msg>,
    key: PublicKey,
    remote: SocketAddr,
) {
    let grace = front.limits.config.login_grace;
    let Some(buf) = read_request_line(&mut channel, MAX_ENROLL_MESSAGE, grace).await else {
        let _ = channel.close().await;
        return;
    };
    let response = match tether_protocol::enroll::parse_request(&buf) {
        Err(message) => EnrollResponse::Refused { message },
        Ok(request) => redeem(&front, request, &key, remote).await,
    };
    answer_and_close(channel, &response).await;
}

/// Reads one JSON line (at most `max` bytes) from a session channel, within the login grace.
async fn read_request_line(
    channel: &mut Channel<Msg>,
    max: usize,
    grace: std::time::Duration,
) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let read = async {
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    buf.extend_from_slice(&data);
                    if buf.contains(&b'\n') || buf.len() > max {
                        break;
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(grace, read).await.ok()?;
    Some(buf)
}

/// Writes one JSON answer line and closes the channel.
async fn answer_and_close<T: serde::Serialize>(channel: Channel<Msg>, answer: &T) {
    let mut line = serde_json::to_vec(answer).unwrap_or_default();
    line.push(b'\n');
    let _ = channel.data(&line[..]).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// Serves the key rotation subsystem for a linked device: registers its next key.
pub(super) async fn keys_channel(
    front: Arc<Front>,
    mut channel: Channel<Msg>,
    device: Box<Device>,
    remote: SocketAddr,
) {
    use tether_protocol::rotate::{MAX_ROTATE_MESSAGE, RotateRequest, RotateResponse};
    let grace = front.limits.config.login_grace;
    let Some(buf) = read_request_line(&mut channel, MAX_ROTATE_MESSAGE, grace).await else {
        let _ = channel.close().await;
        return;
    };
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let request = if buf.len() > MAX_ROTATE_MESSAGE {
        Err("key rotation request too long".to_string())
    } else {
        serde_json::from_slice::<RotateRequest>(line)
            .map_err(|e| format!("malformed key rotation request: {e}"))
    };
    let response = match request {
        Err(message) => RotateResponse::Refused { message },
        Ok(r) if r.protocol != tether_protocol::PROTOCOL_VERSION => RotateResponse::Refused {
            message: format!(
                "agent speaks link protocol {}, relay speaks {}",
                r.protocol,
                tether_protocol::PROTOCOL_VERSION
            ),
        },
        Ok(r) => {
            let id = device.id.clone();
            match with_store(&front.store, move |s| {
                s.register_next_key(&id, &r.public_key)
            })
            .await
            {
                Ok(Ok(fingerprint)) => {
                    tracing::info!(
                        "device {} registered its next key {fingerprint} from {remote}",
                        device.id
                    );
                    audit_event(
                        front.store.clone(),
                        Some(device.tenant.clone()),
                        format!("device:{}", device.id),
                        "device.key.register",
                        Some(device.id.clone()),
                        remote.to_string(),
                        serde_json::json!({ "next": fingerprint, "current": device.fingerprint }),
                    )
                    .await;
                    RotateResponse::Registered { fingerprint }
                }
                Ok(Err(e)) => RotateResponse::Refused {
                    message: e.to_string(),
                },
                Err(_) => RotateResponse::Refused {
                    message: "internal error".into(),
                },
            }
        }
    };
    answer_and_close(channel, &response).await;
}

async fn redeem(
    front: &Arc<Front>,
    request: EnrollRequest,
    key: &PublicKey,
    remote: SocketAddr,
) -> EnrollResponse {
    let public_key_openssh = match key.to_openssh() {
        Ok(k) => k,
        Err(e) => {
            return EnrollResponse::Refused {
                message: format!("unusable device key: {e}"),
            };
        }
    };
    let enrollment = DeviceEnrollment {
        name: request.name.clone(),
        public_key_openssh,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        agent_version: request.agent_version.clone(),
        force: request.force,
    };
    let token = request.token;
    match with_store(&front.store, move |s| {
        s.redeem_enroll_token(&token, enrollment)
    })
    .await
    {
        Ok(Ok(enrolled)) => {
            tracing::info!(
                "enrolled device {} ({}) in tenant {} from {remote}",
                enrolled.device.id,
                enrolled.device.name,
                enrolled.tenant_name
            );
            audit_event(
                front.store.clone(),
                Some(enrolled.tenant_name.clone()),
                format!("device:{}", enrolled.device.id),
                "device.enroll",
                Some(enrolled.device.id.clone()),
                remote.to_string(),
                serde_json::json!({
                    "name": enrolled.device.name,
                    "status": enrolled.device.status.to_string(),
                    "fingerprint": enrolled.device.fingerprint,
                    "agent_version": request.agent_version,
                    "force": request.force,
                    "token": enrolled.token_id,
                }),
            )
            .await;
            if let Some(old) = &enrolled.replaced {
                tracing::warn!(
                    "enrollment from {remote} replaced device {} ({}) in tenant {}: key {} -> {}",
                    old.id,
                    old.name,
                    enrolled.tenant_name,
                    old.fingerprint,
                    enrolled.device.fingerprint
                );
                audit_event(
                    front.store.clone(),
                    Some(enrolled.tenant_name.clone()),
                    format!("device:{}", enrolled.device.id),
                    "device.replace",
                    Some(old.id.clone()),
                    remote.to_string(),
                    serde_json::json!({
                        "name": old.name,
                        "old_fingerprint": old.fingerprint,
                        "new_fingerprint": enrolled.device.fingerprint,
                        "new_device": enrolled.device.id,
                        "token": enrolled.token_id,
                    }),
                )
                .await;
                // The replaced device's link (if any) holds a key that no longer belongs to
                // any device.
                front.evict_unwelcome().await;
            }
            EnrollResponse::Enrolled {
                device_id: enrolled.device.id.clone(),
                name: enrolled.device.name.clone(),
                tenant: enrolled.tenant_name.clone(),
                status: enrolled.device.status.to_string(),
            }
        }
        Ok(Err(e)) => {
            tracing::info!("enrollment from {remote} refused: {e}");
            audit_event(
                front.store.clone(),
                None,
                "enrolling device".into(),
                "device.enroll",
                None,
                remote.to_string(),
                serde_json::json!({ "name": request.name, "ok": false, "error": e.to_string() }),
            )
            .await;
            EnrollResponse::Refused {
                message: e.to_string(),
            }
        }
        Err(_) => EnrollResponse::Refused {
            message: "internal error".into(),
        },
    }
}
