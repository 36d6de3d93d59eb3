//! Telemetry, logs and events: store and forward.
//!
//! Every record goes into the [`outbox`] (SQLite) before its producer is answered, and leaves
//! it only once the relay acknowledged it ([`upload`], over the link's telemetry channel).
//! Records come from the local producer [`socket`] and `agent telemetry send` (both in the
//! [`record_line`] format), from the agent's own sources through a [`producer::Producer`]:
//! the [`journal`] follower, the system metrics collector ([`sysmetrics`]) and application
//! output (captured in [`crate::apps::output`]). Streams of lines from processes the agent does
//! not control are read in bounded memory by [`line_reader`]. The uploader learns of new
//! records, whoever wrote them, from [`outbox_watch`].

pub mod journal;
pub mod line_reader;
pub mod outbox;
pub mod outbox_watch;
pub mod producer;
pub mod record_line;
pub mod socket;
pub mod sysmetrics;
pub mod upload;
