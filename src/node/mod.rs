//! A node: its data directory, settings, and the server that runs it.

pub mod archiving;
pub mod busy_poll;
pub mod config;
pub mod control;
pub mod datadir;
mod exporter;
pub mod promote;
pub mod promote_journal;
pub mod roles;
pub mod server;
pub mod session;
pub mod standby;
pub mod users;
mod views;
