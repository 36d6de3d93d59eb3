//! Helpers shared by this crate's property tests: the settings every property test of the
//! workspace shares, from the one file that holds them.

#![allow(dead_code)] // Each test binary uses a different part of this module.

#[path = "../../../protocol/tests/common/fuzz.rs"]
mod fuzz;
pub use fuzz::*;
