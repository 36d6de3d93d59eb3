//! Device key rotation: a device registers its next key over its link; the relay accepts both
//! until the device logs in with the new one, which then replaces the old (see
//! `tether_protocol::rotate`).

use rusqlite::{OptionalExtension, params};

use super::{Device, EngineerKey, Store, StoreError, device_where};

/// What a login with a device key found.
#[derive(Debug, Clone)]
pub struct DeviceLogin {
    /// The device (with its key as it stands after this login).
    pub device: Device,
    /// The login used the registered next key, which now replaced the old one.
    pub rotated_from: Option<String>,
}

impl Store {
    /// Registers `public_key` as the next key of device `id`, beside its current one.
    pub fn register_next_key(&self, id: &str, public_key: &str) -> Result<String, StoreError> {
        let key = EngineerKey::parse(public_key)?;
        let conn = self.conn();
        let current: Option<String> = conn
            .query_row(
                "SELECT fingerprint FROM devices WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(current) = current else {
            return Err(StoreError::NotFound {
                what: "device",
                key: id.to_string(),
            });
        };
        if current == key.fingerprint {
            return Err(StoreError::Invalid(
                "the new key is the device's current key".into(),
            ));
        }
        let taken: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM devices WHERE id != ?1
                 AND (fingerprint = ?2 OR next_fingerprint = ?2))",
            params![id, key.fingerprint],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::Conflict(
                "the new key belongs to another device".into(),
            ));
        }
        conn.execute(
            "UPDATE devices SET next_public_key = ?2, next_fingerprint = ?3 WHERE id = ?1",
            params![id, key.openssh, key.fingerprint],
        )?;
        Ok(key.fingerprint)
    }

    /// The device that holds key `fingerprint`, current or next. A login with the next key
    /// makes it the current one and retires the old, in one transaction.
    pub fn device_login(&self, fingerprint: &str) -> Result<Option<DeviceLogin>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let next_of: Option<(String, String)> = tx
            .query_row(
                "SELECT id, fingerprint FROM devices WHERE next_fingerprint = ?1",
                params![fingerprint],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let rotated_from = match &next_of {
            Some((id, old)) => {
                tx.execute(
                    "UPDATE devices SET public_key = next_public_key, fingerprint = next_fingerprint,
                         next_public_key = NULL, next_fingerprint = NULL WHERE id = ?1",
                    params![id],
                )?;
                Some(old.clone())
            }
            None => None,
        };
        let device = device_where(&tx, "d.fingerprint = ?1", params![fingerprint])?;
        tx.commit()?;
        Ok(device.map(|device| DeviceLogin {
            device,
            rotated_from,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeviceEnrollment;

    fn key(seed: u8) -> Result<String, Box<dyn std::error::Error>> {
        let kp = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
        let k = russh::keys::PrivateKey::from(kp);
        Ok(k.public_key().to_openssh()?)
    }

    #[test]
    fn the_next_key_replaces_the_old_at_its_first_login() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("relay.db"))?;
        store.add_tenant("acme")?;
        let token = store.create_token(crate::store::NewToken {
            tenant: "acme",
            kind: crate::store::TokenKind::Enroll,
            ttl: None,
            uses: None,
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        let old = EngineerKey::parse(&key(1)?)?;
        let enrolled = store.redeem_enroll_token(
            &token.secret,
            DeviceEnrollment {
                name: "b1".into(),
                public_key_openssh: old.openssh.clone(),
                fingerprint: old.fingerprint.clone(),
                agent_version: "0".into(),
                force: false,
            },
        )?;
        let id = enrolled.device.id;
        assert!(store.register_next_key(&id, &old.openssh).is_err());
        let new_fp = store.register_next_key(&id, &key(2)?)?;
        // Both keys log in until the new one is used.
        let l = store.device_login(&old.fingerprint)?.ok_or("old key")?;
        assert!(l.rotated_from.is_none());
        let l = store.device_login(&new_fp)?.ok_or("new key")?;
        assert_eq!(l.rotated_from.as_deref(), Some(old.fingerprint.as_str()));
        assert_eq!(l.device.fingerprint, new_fp);
        assert!(store.device_login(&old.fingerprint)?.is_none());
        assert!(
            store
                .device_login(&new_fp)?
                .is_some_and(|l| l.rotated_from.is_none())
        );
        Ok(())
    }
}
