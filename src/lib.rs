//! walship: a PostgreSQL-style physical WAL-shipping replication toolkit.
//!
//! Layout:
//! - `wal`: the write-ahead log in PostgreSQL 15's format
//! - `durable`: the fsync discipline for every file that must survive a crash
//! - `dump`: `walship dump`, pg_waldump's job
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod dump;
pub mod durable;
pub mod wal;
