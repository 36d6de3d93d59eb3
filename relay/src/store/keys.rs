//! Device key rotation: a device registers its next key over its link; the relay accepts both
//! until the device logs in with the new one, which then replaces the old (see
//! `tether_protocol::rotate`).

use super::{Device, StoreError};

/// What a login with a device key found.
#[derive(Debug, Clone)]
pub struct DeviceLogin {
    /// The device (with its key as it stands after this login).
    pub device: Device,
    /// The login used the registered next key, which now replaced the old one.
    pub rotated_from: Option<String>,
}

/// Device key rotation.
pub trait DeviceKeyStore {
    /// Registers `public_key` as the next key of device `id`, beside its current one.
    fn register_next_key(&self, id: &str, public_key: &str) -> Result<String, StoreError>;

    /// The device that holds key `fingerprint`, current or next. A login with the next key
    /// makes it the current one and retires the old, in one transaction.
    fn device_login(&self, fingerprint: &str) -> Result<Option<DeviceLogin>, StoreError>;
}
