//! The fleet's view of the device: desired state in, reported state out.
//!
//! Start at [`reconcile::run`], the agent end of the control channel: it receives desired
//! states and remote actions, fetches what they name, works on each version once
//! ([`deployment`]: the diff against what was applied, the round, put-back on failure, with
//! [`applied`] recording the outcome), carries out [`actions`], and reports component states
//! and the device's [`inventory`]. Components are deployed through [`crate::apps`], OS bundles
//! installed through [`crate::ota`].

pub mod actions;
pub mod applied;
pub mod deployment;
pub mod inventory;
pub mod reconcile;
