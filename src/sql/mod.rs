//! The SQL subset on the `kv` table: parsing (with sqlparser) and executing
//! against the store.

pub mod exec;
pub mod interrupt;
pub mod parse;
pub mod row_locks;
pub mod views;
