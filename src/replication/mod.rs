//! Streaming replication: the walsender (PostgreSQL's streaming
//! replication protocol on the node's own listener), its command parser,
//! and replication slots.

pub mod command;
pub mod slots;
pub mod walsender;
