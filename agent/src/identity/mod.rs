//! Who this device is: the ed25519 key pair generated on the device that never leaves it
//! ([`device_key`]), and what enrollment recorded: the relay to dial, the device's id, the
//! relay's pinned host key ([`enrollment_record`]). Everything else reads these; nothing here
//! talks to the network (the enrollment exchange is [`crate::link::enroll_exchange`]).

pub mod device_key;
pub mod enrollment_record;
