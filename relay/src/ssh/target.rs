//! Which device an engineer's login or forward names, looked up only among the engineer's own
//! tenants: a device of another tenant and a device that does not exist get the same answer,
//! so an engineer cannot probe which device names exist elsewhere.

use super::front::Conn;
use crate::store::blocking::with_store;
use crate::store::{Device, DeviceStatus, EngineerIdentity};

impl Conn {
    /// Resolves a device for an engineer: the same `None` for unknown devices and devices of
    /// other tenants. The identity returned is the engineer's in the device's own tenant: one
    /// key may be registered to engineers of several tenants, and each tenant's records must
    /// name its own engineer.
    pub(super) async fn engineer_device(
        &self,
        identities: &[EngineerIdentity],
        name: &str,
    ) -> Option<(Device, EngineerIdentity)> {
        let tenants: Vec<i64> = identities.iter().map(|i| i.tenant_id).collect();
        let name = name.to_string();
        let device = with_store(&self.front.store, move |s| s.find_device(&tenants, &name))
            .await
            .ok()?
            .map_err(|e| tracing::error!("device lookup failed: {e}"))
            .ok()??;
        if device.status != DeviceStatus::Accepted {
            return None;
        }
        let identity = identities
            .iter()
            .find(|i| i.tenant_id == device.tenant_id)?
            .clone();
        Some((device, identity))
    }

    /// Why a login names no device the engineer may use, when the device is in one of the
    /// engineer's own tenants but not accepted yet: that tenant's engineers may know it waits
    /// for an operator. For anyone else it stays `None`, so another tenant hears exactly the
    /// answer for a device that does not exist.
    pub(super) async fn pending_device_hint(
        &self,
        identities: &[EngineerIdentity],
        name: &str,
    ) -> Option<String> {
        let tenants: Vec<i64> = identities.iter().map(|i| i.tenant_id).collect();
        let key = name.to_string();
        let device = with_store(&self.front.store, move |s| s.find_device(&tenants, &key))
            .await
            .ok()?
            .ok()??;
        let own = identities.iter().any(|i| i.tenant_id == device.tenant_id);
        (own && device.status == DeviceStatus::Pending).then(|| {
            format!(
                "device {} is pending acceptance (relay device accept {})",
                device.name, device.id
            )
        })
    }
}
