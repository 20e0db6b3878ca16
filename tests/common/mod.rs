//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// PostgreSQL 15's binaries, where Debian puts them.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The path of a PostgreSQL 15 program, if installed.
pub fn pg_bin(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(PG_BIN).join(name);
    p.exists().then_some(p)
}
