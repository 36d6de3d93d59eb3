//! The channels a device opens to the relay over its link, each a session channel whose
//! subsystem request names it:
//!
//! - [`telemetry`] (`tether-telemetry`): batches of records up, acknowledgements down once the
//!   sink committed them;
//! - [`control`] (`tether-control`): desired state and remote actions down, reported state,
//!   action results and artifact fetches up.
//!
//! Both speak length-prefixed frames of [`tether_protocol`] and only ever concern the device
//! whose link carries them.

pub mod control;
pub mod telemetry;
