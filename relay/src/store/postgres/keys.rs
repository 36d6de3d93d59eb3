//! Device key rotation in PostgreSQL.

use super::devices::device_where;
use super::{PgStore, is_unique_violation};
use crate::store::devices::no_device;
use crate::store::{DeviceKeyStore, DeviceLogin, EngineerKey, StoreError};

impl DeviceKeyStore for PgStore {
    fn register_next_key(&self, id: &str, public_key: &str) -> Result<String, StoreError> {
        let key = EngineerKey::parse(public_key)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // The device's row stays locked until the commit, so its own login cannot rotate
            // keys between this check and the update.
            let current: Option<String> = tx
                .query_opt(
                    "SELECT fingerprint FROM devices WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?
                .map(|r| r.get(0));
            let Some(current) = current else {
                return Err(no_device(id));
            };
            if current == key.fingerprint {
                return Err(StoreError::Invalid(
                    "the new key is the device's current key".into(),
                ));
            }
            let taken: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM devices WHERE id != $1
                         AND (fingerprint = $2 OR next_fingerprint = $2))",
                    &[&id, &key.fingerprint],
                )
                .await?
                .get(0);
            let taken_error =
                || StoreError::Conflict("the new key belongs to another device".into());
            if taken {
                return Err(taken_error());
            }
            // Another device registering the same next key at the same moment passes the check
            // above too; the UNIQUE next_fingerprint lets only one of them have it.
            match tx
                .execute(
                    "UPDATE devices SET next_public_key = $2, next_fingerprint = $3 WHERE id = $1",
                    &[&id, &key.openssh, &key.fingerprint],
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => return Err(taken_error()),
                Err(e) => return Err(e.into()),
            }
            tx.commit().await?;
            Ok(key.fingerprint)
        })
    }

    fn device_login(&self, fingerprint: &str) -> Result<Option<DeviceLogin>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // The first login with a registered next key makes it the device's key. The row is
            // locked so that two logins racing with the new key rotate once, and the second
            // finds the device by its (now current) key with nothing rotated.
            let next_of: Option<(String, String)> = tx
                .query_opt(
                    "SELECT id, fingerprint FROM devices WHERE next_fingerprint = $1 FOR UPDATE",
                    &[&fingerprint],
                )
                .await?
                .map(|r| (r.get(0), r.get(1)));
            let rotated_from = match next_of {
                Some((id, old)) => {
                    tx.execute(
                        "UPDATE devices SET public_key = next_public_key, fingerprint = next_fingerprint,
                             next_public_key = NULL, next_fingerprint = NULL WHERE id = $1",
                        &[&id],
                    )
                    .await?;
                    Some(old)
                }
                None => None,
            };
            let device = device_where(&tx, "d.fingerprint = $1", &[&fingerprint]).await?;
            tx.commit().await?;
            Ok(device.map(|device| DeviceLogin {
                device,
                rotated_from,
            }))
        })
    }
}
