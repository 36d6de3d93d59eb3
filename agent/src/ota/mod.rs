//! OTA.
pub mod bootenv;
pub mod bundle_tool;
pub mod download;
pub mod image_copy;
pub mod update;
