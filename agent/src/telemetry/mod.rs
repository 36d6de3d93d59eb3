//! Telemetry.
pub mod journal;
pub mod outbox;
pub mod producer;
pub mod socket;
pub mod sysmetrics;
pub mod upload;
