//! The relay's SSH port. One port serves three kinds of client, told apart by SSH user name
//! and key:
//!
//! - devices holding their link open ([`LINK_USER`], device key known to the store);
//! - devices enrolling ([`ENROLL_USER`], any key, a token in the enrollment subsystem);
//! - engineers with stock OpenSSH (any other user name, a key registered to an engineer):
//!   `ssh DEVICE@relay` is proxied to the device's embedded SSH server, `-L` forwards reach
//!   device-local addresses, and `ssh -J relay DEVICE` (a `direct-tcpip` channel to host
//!   DEVICE) reaches the device's own sshd end to end.
//!
//! Unknown devices and devices of other tenants get the same answer, so an engineer cannot
//! probe which device names exist elsewhere.
//!
//! Layout:
//! - [`front`]: what every connection shares ([`Front`]) and the handler of one connection;
//!   `state`: what the front knows about one connection;
//! - `connection`: one connection from admission to cleanup; `handler`: the russh handler,
//!   which hands every event to one of the modules below;
//! - `auth`: who the peer is, by key or by certificate ([`certauth`]);
//! - `device_link`: a device's link and the channels it opens; `device_requests`: enrollment
//!   and key rotation;
//! - `sessions`: engineers' relay-terminated sessions, carried by [`proxy`]; `forwards`:
//!   their `-L` and `-J` forwards; `target`: which device a login or forward names;
//! - `evict`: the sweep that closes what the store no longer allows;
//! - `audit`: the audit trail from the front's tasks.
//!
//! What a role may do is decided by [`crate::policy`].
//!
//! [`LINK_USER`]: tether_protocol::names::LINK_USER
//! [`ENROLL_USER`]: tether_protocol::names::ENROLL_USER

mod audit;
mod auth;
pub mod certauth;
mod connection;
mod device_link;
mod device_requests;
mod evict;
mod forwards;
pub mod front;
mod handler;
pub mod proxy;
mod sessions;
mod state;
mod target;

pub use front::Front;
