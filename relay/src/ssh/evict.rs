//! The sweep that keeps live connections in step with the store: admin commands change it
//! from another process, and when the store's access generation moves (and once a minute
//! regardless) the serving relay closes what it no longer allows (engineers removed or disabled, keys unregistered, CAs no longer trusted, roles that
//! lost their sessions; devices rejected or removed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::audit::audit_event;
use super::front::Front;
use super::state::{ConnState, Peer, disconnect, lock};
use crate::policy;
use crate::store::EngineerIdentity;
use crate::store::blocking::with_store;

impl Front {
    /// Closes the connections of engineers removed or disabled since they logged in, of keys
    /// no longer registered to them and of certificates whose CA their tenant no longer
    /// trusts (admin commands change the store from another process; this is how the serving
    /// relay notices). Roles follow the store: an engineer made a viewer loses its sessions
    /// and forwards. One store query covers every live login.
    pub async fn evict_engineers(&self) {
        struct Held {
            conn_id: u64,
            state: Arc<Mutex<ConnState>>,
            fingerprint: String,
            ca: Option<String>,
            remote: SocketAddr,
            identities: Vec<EngineerIdentity>,
        }
        let held: Vec<Held> = self
            .live_logins()
            .iter()
            .filter_map(|(id, l)| match &lock(&l.state).peer {
                Peer::Engineer { identities, .. } => Some(Held {
                    conn_id: *id,
                    state: l.state.clone(),
                    fingerprint: l.fingerprint.clone(),
                    ca: l.ca.clone(),
                    remote: l.remote,
                    identities: identities.clone(),
                }),
                _ => None,
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let keys: Vec<String> = held
            .iter()
            .filter(|h| h.ca.is_none())
            .map(|h| h.fingerprint.clone())
            .collect();
        let cas: Vec<String> = held.iter().filter_map(|h| h.ca.clone()).collect();
        let users: Vec<(i64, String)> = held
            .iter()
            .filter(|h| h.ca.is_none())
            .flat_map(|h| h.identities.iter().map(|i| (i.tenant_id, i.user.clone())))
            .collect();
        let Ok(Ok(grants)) = with_store(&self.store, move |s| {
            s.live_engineer_grants(&keys, &cas, &users)
        })
        .await
        else {
            return;
        };
        for h in held {
            let mut gone: Option<(EngineerIdentity, String)> = None;
            let mut current = Vec::with_capacity(h.identities.len());
            for identity in &h.identities {
                let role = match &h.ca {
                    None => {
                        let row = grants.engineers.iter().find(|e| {
                            e.fingerprint == h.fingerprint
                                && e.tenant_id == identity.tenant_id
                                && e.user == identity.user
                        });
                        match row {
                            Some(e) if e.disabled => Err(format!(
                                "engineer {} of tenant {} was disabled",
                                identity.user, identity.tenant
                            )),
                            Some(e) => Ok(e.role),
                            None if grants
                                .existing
                                .iter()
                                .any(|(t, u)| *t == identity.tenant_id && *u == identity.user) =>
                            {
                                Err(format!(
                                    "the key {} of engineer {} of tenant {} was removed",
                                    h.fingerprint, identity.user, identity.tenant
                                ))
                            }
                            None => Err(format!(
                                "engineer {} of tenant {} was removed",
                                identity.user, identity.tenant
                            )),
                        }
                    }
                    Some(ca) => {
                        let trust = grants.trusted.iter().find(|t| {
                            &t.fingerprint == ca
                                && t.tenant_id == identity.tenant_id
                                && (t.principals.is_empty()
                                    || t.principals.contains(&identity.user))
                        });
                        match trust {
                            Some(t) => Ok(t.role),
                            None => Err(format!(
                                "tenant {} no longer trusts the CA {ca} that signed the certificate of engineer {}",
                                identity.tenant, identity.user
                            )),
                        }
                    }
                };
                match role {
                    Ok(role) if !policy::loses_access(identity.role, role) => {
                        current.push(EngineerIdentity {
                            role,
                            ..identity.clone()
                        });
                    }
                    Ok(role) => {
                        gone = Some((
                            identity.clone(),
                            format!(
                                "engineer {} of tenant {} is now a {role} and may not hold sessions or forwards",
                                identity.user, identity.tenant
                            ),
                        ));
                    }
                    Err(why) => gone = Some((identity.clone(), why)),
                }
            }
            let Some((identity, why)) = gone else {
                if let Peer::Engineer { identities, .. } = &mut lock(&h.state).peer {
                    *identities = current;
                }
                continue;
            };
            let handle = {
                let mut st = lock(&h.state);
                st.evicted = Some(why.clone());
                st.handle.clone()
            };
            self.live_logins().remove(&h.conn_id);
            tracing::info!("closing connection {} of an engineer: {why}", h.conn_id);
            audit_event(
                self.store.clone(),
                Some(identity.tenant.clone()),
                format!("engineer:{}", identity.user),
                "engineer.disconnect",
                None,
                h.remote.to_string(),
                serde_json::json!({ "reason": why, "fingerprint": h.fingerprint, "ca": h.ca }),
            )
            .await;
            if let Some(handle) = handle {
                disconnect(handle, format!("{why}; the relay closed this connection"));
            }
        }
    }

    /// Drops the links of devices that were rejected or removed since they connected.
    pub async fn evict_unwelcome(&self) {
        let ids = self.registry.device_ids();
        if ids.is_empty() {
            return;
        }
        let Ok(Ok(unwelcome)) = with_store(&self.store, move |s| s.unwelcome_devices(&ids)).await
        else {
            return;
        };
        for id in unwelcome {
            if let Some(link) = self.registry.take(&id) {
                tracing::info!("dropping link of device {id}: no longer accepted");
                if let Some(presence) = &self.presence {
                    presence.link_down(&id, link.conn_id);
                }
                let _ = link
                    .handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "device is no longer accepted".into(),
                        "en".into(),
                    )
                    .await;
            }
        }
    }
}
