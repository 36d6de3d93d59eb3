//! Who this device is: its ed25519 key pair and the record enrollment left.
pub mod device_key;
pub mod enrollment_record;
