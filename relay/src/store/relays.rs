//! What relays sharing one store hold, so that a relay that died without its shutdown does
//! not leave its boards online and its sessions open in the store for ever.

/// What was released: the links and sessions of relays that are gone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// The relays whose links and sessions were released.
    pub relays: Vec<String>,
    /// Devices marked offline.
    pub devices: usize,
    /// Sessions closed as interrupted.
    pub sessions: usize,
}
