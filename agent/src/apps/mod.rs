//! Applications from YAML lifecycle recipes.
//!
//! Start at [`supervisor::Supervisor`]: deploy, start, stop, restart and remove, each done
//! completely or undone, with dependencies in order and rollback of a version that does not
//! stay up. Each started component runs in its own task ([`component_task`]), its processes
//! in their own groups ([`process_group`]), its output captured ([`output`]). The rules the
//! supervisor follows (restart backoff, broken, settled, dependents) are pure functions in
//! [`policy`]. A version is staged on disk first ([`staging`], [`artifacts`]) and every
//! component has a durable record ([`component`]). `agent app` reaches the supervisor inside
//! `agent run` through the local [`control_socket`].

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
