//! Fleet.
pub mod actions;
pub mod inventory;
pub mod reconcile;
