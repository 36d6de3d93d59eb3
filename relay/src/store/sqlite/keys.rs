//! Device key rotation in SQLite.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::devices::device_where;
use crate::store::devices::no_device;
use crate::store::{DeviceKeyStore, DeviceLogin, EngineerKey, StoreError};

impl DeviceKeyStore for SqliteStore {
    fn register_next_key(&self, id: &str, public_key: &str) -> Result<String, StoreError> {
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
            return Err(no_device(id));
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

    fn device_login(&self, fingerprint: &str) -> Result<Option<DeviceLogin>, StoreError> {
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
