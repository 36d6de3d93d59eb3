//! Applications.
pub mod artifacts;
pub mod component;
pub mod component_task;
pub mod control_socket;
pub mod error;
pub mod output;
pub mod policy;
pub mod process_group;
pub mod staging;
pub mod supervisor;
