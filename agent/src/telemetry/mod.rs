//! Telemetry.
pub mod journal;
pub mod line_reader;
pub mod outbox;
pub mod producer;
pub mod record_line;
pub mod socket;
pub mod sysmetrics;
pub mod upload;
