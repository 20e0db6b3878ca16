//! Streaming replication: the walsender (PostgreSQL's streaming
//! replication protocol on the node's own listener), its command parser,
//! and replication slots.

pub mod basebackup;
pub mod client;
pub mod command;
pub mod conninfo;
pub mod follow;
mod passfile;
pub mod receive;
pub mod rejoin;
pub mod slots;
pub mod status;
pub mod syncrep;
pub mod walreceiver;
pub mod walsender;
