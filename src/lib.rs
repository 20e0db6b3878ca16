//! walship: a PostgreSQL-style physical WAL-shipping replication toolkit.
//!
//! Layout:
//! - `wal`: the write-ahead log in PostgreSQL 15's format
//! - `durable`: the fsync discipline for every file that must survive a crash
//! - `meta`: small metadata files with magic, version and CRC
//! - `store`: the key-value state machine, its commit pipeline and checkpoints
//! - `fence`: epochs
//! - `node`: a data directory and the server that runs it
//! - `dump`: `walship dump`, pg_waldump's job
//! - `shell`: how an operator's shell command ended
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod archive;
pub mod crashpoint;
pub mod demo;
pub mod dump;
pub mod durable;
pub mod fence;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod progress;
pub mod protocol;
pub mod replication;
pub mod shell;
pub mod sql;
pub mod sqlstate;
pub mod store;
pub mod wal;
