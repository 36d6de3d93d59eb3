//! Who is on the other end of a connection, from the SSH user name and the key or
//! certificate: a device holding its link ([`LINK_USER`] and a device key the store knows,
//! which may complete a key rotation), a device enrolling ([`ENROLL_USER`], any key) or an
//! engineer (a registered key, or a certificate of a CA the tenant trusts, see [`certauth`]).
//! Every success and failure goes to the audit trail; failures count against the source's
//! limits.

use crate::publickey_only::reject;
use russh::keys::{HashAlg, PublicKey};
use russh::server::{self, Auth};
use tether_protocol::names::{ENROLL_USER, LINK_USER};

use super::audit::audit_event;
use super::certauth;
use super::front::Conn;
use super::state::{Peer, disconnect, lock};
use crate::store::blocking::with_store;
use crate::store::{Device, DeviceStatus, EngineerIdentity};

impl Conn {
    /// A key offered before the client proves it holds it: accepted when it may log in as
    /// `user`, or when it may be the key of a certificate some tenant's CA signed.
    pub(super) async fn key_offered(
        &self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, russh::Error> {
        if self
            .lookup_key(user, offer.public_key, false)
            .await
            .is_some()
        {
            return Ok(Auth::Accept);
        }
        // A certificate is offered by its inner key, which no one registered: when some tenant
        // trusts a CA, let the client prove the key and decide on the certificate (or refuse
        // the plain key) once it is signed for.
        let engineer_login = user != LINK_USER && user != ENROLL_USER;
        if engineer_login
            && with_store(&self.front.store, |s| s.any_trusted_ca())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false)
        {
            return Ok(Auth::Accept);
        }
        let fp = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        self.auth_failed(user, &fp).await;
        Ok(reject())
    }

    /// A key the client proved it holds: the peer becomes the device, enrolling device or
    /// engineer it belongs to for `user`, or the attempt is refused and counted.
    pub(super) async fn key_verified(
        &self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, russh::Error> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        if let Some(hit) = self.front.limits.auth_refused(self.remote.ip()) {
            self.disconnect_with(hit.0);
            return Ok(reject());
        }
        match self.lookup_key(user, key.public_key, true).await {
            Some(peer) => {
                tracing::info!(
                    "{}: authenticated {} as {user:?} with {fp} via {}",
                    self.remote,
                    match &peer {
                        Peer::Device { .. } => "device",
                        Peer::Enrolling { .. } => "enrolling device",
                        _ => "engineer",
                    },
                    self.transport
                );
                let audited = match &peer {
                    Peer::Device { device } => {
                        Some((Some(device.tenant.clone()), format!("device:{}", device.id)))
                    }
                    // A key that names the enrollment user proves nothing yet: the enrollment
                    // result is audited instead, and the connection keeps its place among the
                    // handshakes in progress until the login grace closes it.
                    Peer::Enrolling { .. } | Peer::Unknown | Peer::Engineer { .. } => None,
                };
                let engineer = match &peer {
                    Peer::Engineer { identities, .. } => Some(identities.clone()),
                    _ => None,
                };
                if engineer.is_some() {
                    self.hold_login(fp.clone(), None);
                }
                {
                    let mut st = lock(&self.state);
                    if !matches!(peer, Peer::Enrolling { .. }) {
                        st.handshake = None;
                    }
                    st.peer = peer;
                }
                if let Some((tenant, actor)) = audited {
                    self.audit(tenant, actor, "auth.success", user, &fp).await;
                }
                if let Some(identities) = engineer {
                    let detail = serde_json::json!({
                        "user": user,
                        "fingerprint": fp,
                        "transport": self.transport,
                    });
                    self.audit_engineer_login(&identities, user, detail).await;
                }
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(
                    "{}: refused key {fp} for user {user:?} via {}",
                    self.remote,
                    self.transport
                );
                self.auth_failed(user, &fp).await;
                Ok(reject())
            }
        }
    }

    /// An OpenSSH user certificate the client proved it holds: an engineer's login when a
    /// tenant trusts its CA and [`certauth::check`] accepts it.
    pub(super) async fn certificate_presented(
        &self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, russh::Error> {
        let fp = certificate
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        if let Some(hit) = self.front.limits.auth_refused(self.remote.ip()) {
            self.disconnect_with(hit.0);
            return Ok(reject());
        }
        if user == LINK_USER || user == ENROLL_USER {
            self.auth_failed(user, &fp).await;
            return Ok(reject());
        }
        let ca = certificate
            .signature_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let trusts = with_store(&self.front.store, move |s| s.cas_by_fingerprint(&ca))
            .await
            .ok()
            .and_then(|r| r.map_err(|e| tracing::error!("CA lookup failed: {e}")).ok())
            .unwrap_or_default();
        let now = u64::try_from(tether_protocol::clock::now_ms() / 1000).unwrap_or(0);
        match certauth::check(certificate, &trusts, self.remote.ip(), now) {
            Ok(granted) => {
                let first = granted.identities.first().cloned();
                tracing::info!(
                    "{}: authenticated engineer {:?} with certificate {:?} (serial {}, CA {}) as {user:?} via {}",
                    self.remote,
                    first.as_ref().map(|i| i.user.as_str()),
                    certificate.key_id(),
                    certificate.serial(),
                    granted.ca,
                    self.transport
                );
                let identities = granted.identities.clone();
                self.hold_login(fp.clone(), Some(granted.ca.clone()));
                {
                    let mut st = lock(&self.state);
                    st.peer = Peer::Engineer {
                        identities: granted.identities,
                        login: user.to_string(),
                        fingerprint: fp.clone(),
                    };
                    st.handshake = None;
                }
                let detail = serde_json::json!({
                    "user": user,
                    "fingerprint": fp,
                    "transport": self.transport,
                    "certificate": {
                        "key_id": certificate.key_id(),
                        "serial": certificate.serial(),
                        "ca": granted.ca,
                        "principals": certificate.valid_principals(),
                    },
                });
                self.audit_engineer_login(&identities, user, detail).await;
                Ok(Auth::Accept)
            }
            Err(why) => {
                tracing::info!(
                    "{}: refused certificate {:?} for user {user:?}: {why}",
                    self.remote,
                    certificate.key_id()
                );
                let detail = serde_json::json!({
                    "user": user,
                    "fingerprint": fp,
                    "transport": self.transport,
                    "certificate": { "key_id": certificate.key_id(), "serial": certificate.serial() },
                    "reason": why,
                });
                audit_event(
                    self.front.store.clone(),
                    None,
                    format!("login:{user}"),
                    "auth.failure",
                    None,
                    self.remote.to_string(),
                    detail,
                )
                .await;
                if let Some(hit) = self.front.limits.auth_failed(self.remote.ip()) {
                    self.disconnect_with(hit.0);
                }
                Ok(reject())
            }
        }
    }

    /// Audits an engineer's login in the tenants it concerns, under each tenant's own
    /// engineer name: the tenant of the device the login names, or, when it names none (a
    /// ProxyJump login), every tenant the key belongs to. No tenant's trail learns of another
    /// tenant's device.
    async fn audit_engineer_login(
        &self,
        identities: &[EngineerIdentity],
        login: &str,
        detail: serde_json::Value,
    ) {
        let targets: Vec<EngineerIdentity> = match self.engineer_device(identities, login).await {
            Some((_, identity)) => vec![identity],
            None => identities.to_vec(),
        };
        for identity in targets {
            audit_event(
                self.front.store.clone(),
                Some(identity.tenant.clone()),
                format!("engineer:{}", identity.user),
                "auth.success",
                None,
                self.remote.to_string(),
                detail.clone(),
            )
            .await;
        }
    }

    /// Records a failed authentication (audit trail, per-source count); a source that failed
    /// too often is disconnected with the reason. A key of a disabled engineer is recorded
    /// with that reason, in the engineer's tenant.
    async fn auth_failed(&self, user: &str, fingerprint: &str) {
        let disabled = if user == LINK_USER || user == ENROLL_USER {
            Vec::new()
        } else {
            let fp = fingerprint.to_string();
            with_store(&self.front.store, move |s| s.disabled_engineers(&fp))
                .await
                .ok()
                .and_then(|r| {
                    r.map_err(|e| tracing::error!("engineer lookup failed: {e}"))
                        .ok()
                })
                .unwrap_or_default()
        };
        let mut detail = serde_json::json!({
            "user": user,
            "fingerprint": fingerprint,
            "transport": self.transport,
        });
        let mut tenant = None;
        if let Some((t, name)) = disabled.first() {
            detail["reason"] = format!("engineer {name} of tenant {t} is disabled").into();
            tenant = Some(t.clone());
        }
        audit_event(
            self.front.store.clone(),
            tenant,
            format!("login:{user}"),
            "auth.failure",
            None,
            self.remote.to_string(),
            detail,
        )
        .await;
        if let Some(hit) = self.front.limits.auth_failed(self.remote.ip()) {
            tracing::warn!("{}: {hit}", self.remote);
            self.disconnect_with(hit.0);
        }
    }

    /// A device logged in with its registered next key, which replaced `old`: records it and
    /// drops the link still held with the old key, so the agent comes back with the new one.
    async fn key_rotated(&self, device: &Device, old: &str) {
        tracing::info!(
            "device {} rotated its key: {old} retired, {} in use",
            device.id,
            device.fingerprint
        );
        audit_event(
            self.front.store.clone(),
            Some(device.tenant.clone()),
            format!("device:{}", device.id),
            "device.key.rotate",
            Some(device.id.clone()),
            self.remote.to_string(),
            serde_json::json!({ "retired": old, "fingerprint": device.fingerprint }),
        )
        .await;
        // Its connection's own cleanup then unregisters it and records the device offline.
        if let Some(link) = self.front.registry.get(&device.id)
            && link.device_key.fingerprint(HashAlg::Sha256).to_string() == old
        {
            disconnect(link.handle, "device key rotated".into());
        }
    }

    /// Appends an authentication event to the audit trail (failures to log are logged).
    async fn audit(
        &self,
        tenant: Option<String>,
        actor: String,
        action: &'static str,
        user: &str,
        fingerprint: &str,
    ) {
        let detail = serde_json::json!({
            "user": user,
            "fingerprint": fingerprint,
            "transport": self.transport,
        });
        audit_event(
            self.front.store.clone(),
            tenant,
            actor,
            action,
            None,
            self.remote.to_string(),
            detail,
        )
        .await;
    }

    /// Looks up who `key` belongs to for SSH user `user`. Only a `verified` key (the client
    /// signed with it) completes a device's key rotation: an offer proves nothing.
    async fn lookup_key(&self, user: &str, key: &PublicKey, verified: bool) -> Option<Peer> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        match user {
            ENROLL_USER => Some(Peer::Enrolling { key: key.clone() }),
            LINK_USER if !verified => {
                let device = with_store(&self.front.store, move |s| s.device_by_fingerprint(&fp))
                    .await
                    .ok()?
                    .map_err(|e| tracing::error!("device key lookup failed: {e}"))
                    .ok()??;
                (device.status == DeviceStatus::Accepted).then(|| Peer::Device {
                    device: Box::new(device),
                })
            }
            LINK_USER => {
                let login = with_store(&self.front.store, move |s| s.device_login(&fp))
                    .await
                    .ok()?
                    .map_err(|e| tracing::error!("device key lookup failed: {e}"))
                    .ok()??;
                let device = login.device;
                if let Some(old) = login.rotated_from {
                    self.key_rotated(&device, &old).await;
                }
                (device.status == DeviceStatus::Accepted).then(|| Peer::Device {
                    device: Box::new(device),
                })
            }
            login => {
                let lookup_fp = fp.clone();
                let identities = with_store(&self.front.store, move |s| {
                    s.engineer_identities(&lookup_fp)
                })
                .await
                .ok()?
                .map_err(|e| tracing::error!("engineer key lookup failed: {e}"))
                .ok()?;
                (!identities.is_empty()).then(|| Peer::Engineer {
                    identities,
                    login: login.to_string(),
                    fingerprint: fp,
                })
            }
        }
    }
}
