//! The device link: one long-lived SSH connection from the agent to the relay, the channels
//! on it, and the two exchanges that set it up.
//!
//! Start at [`run`], the link loop of `agent run`: it connects through [`connection`] (the
//! handshake, host-key pinning, and serving the channels the relay opens) over a
//! [`transport`] (TCP, WebSocket, HTTP CONNECT proxy), reconnects with backoff, starts the
//! telemetry upload and the control channel, and publishes its state for `agent status`
//! ([`status`]). [`relay_choice`] picks the relay to dial when the board knows several.
//! [`forward`] is the policy and dialling of device-local forward targets.
//! [`enroll_exchange`] (`agent enroll`) and [`key_rotation`] (`agent keys rotate`) are the
//! one-off exchanges over a connection of their own.

pub mod connection;
pub mod enroll_exchange;
pub mod forward;
pub mod key_rotation;
pub mod relay_choice;
pub mod run;
pub mod status;
pub mod transport;
