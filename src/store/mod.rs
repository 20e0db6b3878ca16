//! The key-value state machine: the `kv` table's rows, changed only by
//! replaying walship's COMMIT records, in LSN order.
//!
//! - `Store`: the rows (a persistent ordered map, so a checkpoint's
//!   snapshot is an O(1) clone) and the LSN they reflect
//! - `snapshot`: checkpoint files
//! - `db`: the commit pipeline (log first, then apply), checkpoints

pub mod db;
pub mod snapshot;

use std::ops::Bound;

use imbl::OrdMap;

use crate::wal::payload::Op;
use crate::wal::Lsn;

pub use db::{Db, DbError, Durability, KvOp, RolesGuard, View};

/// A key or a value as the store holds it: inline when it is short (up to
/// 24 bytes, as most keys are), so a lookup compares keys where the tree's
/// nodes hold them instead of following a pointer to each, and a short
/// row costs no allocation of its own.
pub type KvText = compact_str::CompactString;

/// The rows of `kv`, as of `applied`.
///
/// Invariant: holds exactly the effects of every COMMIT record that ends at
/// or before `applied`.
#[derive(Clone, Debug, Default)]
pub struct Store {
    rows: OrdMap<KvText, KvText>,
    applied: Lsn,
}

impl Store {
    pub fn from_rows(rows: OrdMap<KvText, KvText>, applied: Lsn) -> Store {
        Store { rows, applied }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.rows.get(key).map(KvText::as_str)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The LSN up to which changes are applied.
    pub fn applied(&self) -> Lsn {
        self.applied
    }

    /// Rows with keys in the range, in key order.
    pub fn range<'a>(
        &'a self,
        lo: Bound<&'a str>,
        hi: Bound<&'a str>,
    ) -> impl DoubleEndedIterator<Item = (&'a str, &'a str)> + 'a {
        self.rows
            .range::<_, str>((lo, hi))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn rows(&self) -> &OrdMap<KvText, KvText> {
        &self.rows
    }

    /// Applies one transaction's changes, which end at `end`.
    pub fn apply(&mut self, ops: &[KvOp], end: Lsn) {
        for op in ops {
            match op {
                KvOp::Put { key, value } => {
                    self.rows.insert(KvText::from(key), KvText::from(value));
                }
                KvOp::Delete { key } => {
                    self.rows.remove(key.as_str());
                }
            }
        }
        self.applied = self.applied.max(end);
    }

    /// Applies a decoded COMMIT record's operations (crash recovery, standbys).
    pub fn apply_record(&mut self, ops: &[Op<'_>], end: Lsn) -> Result<(), std::str::Utf8Error> {
        let ops = ops
            .iter()
            .map(KvOp::from_record)
            .collect::<Result<Vec<_>, _>>()?;
        self.apply(&ops, end);
        Ok(())
    }

    /// A checksum of the rows (CRC-32C over each key and value, length
    /// prefixed, in key order): two stores are equal when their checksums
    /// and row counts are.
    pub fn checksum(&self) -> u32 {
        let mut crc = 0;
        for (k, v) in &self.rows {
            crc = crc32c::crc32c_append(crc, &(k.len() as u32).to_le_bytes());
            crc = crc32c::crc32c_append(crc, k.as_bytes());
            crc = crc32c::crc32c_append(crc, &(v.len() as u32).to_le_bytes());
            crc = crc32c::crc32c_append(crc, v.as_bytes());
        }
        crc
    }
}
