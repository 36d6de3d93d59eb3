//! A relay among others: the control plane of a cluster of relays on NATS.
//!
//! NATS carries only small, loss-tolerant facts: which relay holds which device's link (the
//! presence map, [`presence`]), the announcement that a device linked somewhere, so that a
//! relay still holding a stale link to it drops that link at once, and the hints that a
//! device's desired state or who may connect changed ([`notify`]). Byte streams never travel
//! as NATS messages: NATS drops messages for slow consumers, and an SSH stream cannot survive
//! a lost frame.
//!
//! NATS may be away; a relay then goes on serving the boards it holds and the durable API
//! (the store is PostgreSQL, shared by all relays), logs that cross-relay facts are
//! unavailable, and recovers by itself: the client reconnects, and the presence refresher
//! writes every held device again.

pub mod notify;
pub mod peer;
pub mod presence;

pub use presence::{Holder, Presence};

use thiserror::Error;

/// Why the cluster's control plane could not answer.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// NATS is unreachable or refused the request.
    #[error("the cluster's NATS is unavailable: {0}")]
    Nats(String),
    /// The relay holding the device could not be reached on its peer port.
    #[error("{0}")]
    Peer(#[from] peer::PeerError),
    /// A presence entry could not be read.
    #[error("presence entry {key}: {reason}")]
    Entry {
        /// The key.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
}
