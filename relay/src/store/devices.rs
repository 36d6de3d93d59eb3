//! Devices: enrolled boards, their status (pending, accepted, rejected) and their link state.

use serde::Serialize;

use super::StoreError;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// May hold its link.
    Accepted,
    /// Enrolled, waiting for an operator.
    Pending,
    /// Refused by an operator.
    Rejected,
}

impl DeviceStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Accepted => "accepted",
            DeviceStatus::Pending => "pending",
            DeviceStatus::Rejected => "rejected",
        }
    }
    /// Reads a stored status. The CHECK constraint allows only the three names; anything
    /// else would be a damaged file, and reading it as rejected keeps the device out.
    pub(crate) fn parse(s: &str) -> DeviceStatus {
        match s {
            "accepted" => DeviceStatus::Accepted,
            "pending" => DeviceStatus::Pending,
            _ => DeviceStatus::Rejected,
        }
    }
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a device that does not exist, by the id or name asked for.
pub(crate) fn no_device(key: &str) -> StoreError {
    StoreError::NotFound {
        what: "device",
        key: key.to_string(),
    }
}

/// The one device named `id_or_name` among `found`, the devices of every tenant with that
/// name: names are unique per tenant only, so a name two tenants use names no one device.
pub(crate) fn only_device_named(
    id_or_name: &str,
    found: Vec<Device>,
) -> Result<Device, StoreError> {
    let n = found.len();
    let mut found = found.into_iter();
    match (found.next(), n) {
        (Some(d), 1) => Ok(d),
        (None, _) => Err(no_device(id_or_name)),
        _ => Err(StoreError::Conflict(format!(
            "{n} devices in different tenants are named {id_or_name:?}; use the device id"
        ))),
    }
}

/// Whether a device with this stored status (`None`: no such device) may keep its link.
pub(crate) fn is_welcome(status: Option<&str>) -> bool {
    status == Some(DeviceStatus::Accepted.as_str())
}

/// A device and its connection state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Device {
    /// Stable id (`dev_…`).
    pub id: String,
    /// Tenant id.
    #[serde(skip)]
    pub tenant_id: i64,
    /// Tenant name.
    pub tenant: String,
    /// Name, unique in the tenant.
    pub name: String,
    /// Public key (OpenSSH format).
    pub public_key: String,
    /// SHA-256 fingerprint of the key.
    pub fingerprint: String,
    /// Whether it may connect.
    pub status: DeviceStatus,
    /// Enrollment time.
    pub created_at: String,
    /// Whether its link is up.
    pub online: bool,
    /// When its link last came up.
    pub last_connected: Option<String>,
    /// When its link last went down.
    pub last_disconnected: Option<String>,
    /// Address its link came from.
    pub remote_addr: Option<String>,
    /// Agent version it reported.
    pub agent_version: Option<String>,
}

/// What enrollment records about a device.
#[derive(Debug, Clone)]
pub struct DeviceEnrollment {
    /// Requested name.
    pub name: String,
    /// Public key (OpenSSH format).
    pub public_key_openssh: String,
    /// Its SHA-256 fingerprint.
    pub fingerprint: String,
    /// Agent version.
    pub agent_version: String,
    /// Replace a device of the same name with another key.
    pub force: bool,
}

/// The outcome of a successful enrollment.
#[derive(Debug, Clone)]
pub struct EnrolledDevice {
    /// The device as stored.
    pub device: Device,
    /// Its tenant's name.
    pub tenant_name: String,
    /// Id of the token redeemed (never its secret).
    pub token_id: String,
    /// The same-named device (with another key) that this enrollment replaced, if any.
    pub replaced: Option<Device>,
}

/// Devices: looking them up (always within the caller's tenants where it matters), accepting,
/// rejecting and removing them, and recording their links.
pub trait DeviceStore {
    /// The device holding key `fingerprint`.
    fn device_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Device>, StoreError>;

    /// The device with id `id`.
    fn device(&self, id: &str) -> Result<Option<Device>, StoreError>;

    /// A device by name or id, only within `tenant_ids` (the caller's tenants: a device of
    /// any other tenant is reported as absent). Tenants are searched in the order given; an id
    /// wins over another device's name.
    fn find_device(
        &self,
        tenant_ids: &[i64],
        name_or_id: &str,
    ) -> Result<Option<Device>, StoreError>;

    /// A device by id, or by name when the name is unique across tenants (admin commands).
    fn resolve_device(&self, id_or_name: &str) -> Result<Device, StoreError>;

    /// Devices, optionally of one tenant.
    fn devices(&self, tenant: Option<&str>) -> Result<Vec<Device>, StoreError>;

    /// Devices of the tenant with id `tenant_id`.
    fn tenant_devices(&self, tenant_id: i64) -> Result<Vec<Device>, StoreError>;

    /// Sets whether a device may connect.
    fn set_device_status(&self, id: &str, status: DeviceStatus) -> Result<(), StoreError>;

    /// Deletes a device.
    fn remove_device(&self, id: &str) -> Result<(), StoreError>;

    /// Records that a device's link came up.
    fn mark_online(
        &self,
        id: &str,
        remote_addr: &str,
        agent_version: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Records that a device's link went down.
    fn mark_offline(&self, id: &str) -> Result<(), StoreError>;

    /// Marks every online device offline (relay start-up and shutdown).
    fn mark_all_offline(&self) -> Result<usize, StoreError>;

    /// Of the given device ids, those that are no longer accepted or no longer exist.
    ///
    /// The serving relay asks this every few seconds for the devices whose links it holds, so
    /// an admin command in another process takes effect without any signalling between them.
    fn unwelcome_devices(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
}
