//! Applications.
pub mod artifacts;
pub mod component;
pub mod control_socket;
pub mod supervisor;
