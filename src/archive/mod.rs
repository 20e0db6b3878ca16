//! The WAL archive: a directory of verified segments and timeline history
//! files of one system, optionally zstd-compressed, that `walship archive`
//! fills and `walship restore` (a standby's `restore_command`) reads.
//!
//! - `store`: the archive directory itself (its identity file, put, get)
//! - `archiver`: the job that ships a node's `.ready` segments to it
//! - `restore`: one file back out, verified, with prefetch
//! - `cleanup`: removes segments no longer needed

pub mod archiver;
pub mod cleanup;
pub mod restore;
pub mod store;

pub use store::{Archive, ArchiveError, Compression};
