//! OTA.
pub mod bootenv;
pub mod bundle_tool;
pub mod download;
pub mod error;
pub mod image_copy;
pub mod policy;
pub mod state;
pub mod update;
