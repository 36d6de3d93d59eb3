//! The device link.
pub mod connection;
pub mod enroll_exchange;
pub mod forward;
pub mod key_rotation;
pub mod run;
pub mod status;
pub mod transport;
