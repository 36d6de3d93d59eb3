//! Fleet.
pub mod actions;
pub mod applied;
pub mod deployment;
pub mod inventory;
pub mod reconcile;
