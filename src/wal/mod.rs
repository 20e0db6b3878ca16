//! The write-ahead log, in PostgreSQL 15's format.
//!
//! - `lsn`: positions (`Lsn`, `SegNo`, `TimelineId`, `SegmentSize`)
//! - `name`: segment and history file names
//! - `history`: timeline history files
//! - `format`: page and record headers, byte for byte
//! - `crc`: CRC-32C tuned for records' small sizes
//! - `payload`: walship's own records
//! - `decoder`: the I/O-free decoder every reader uses
//! - `segment`, `reader`: segment files and walking them
//! - `writer`: the memory-mapped, group-committing writer
//! - `verify`: checking WAL that arrives over the network
//!
//! This module knows nothing of the rest of walship.

pub mod crc;
pub mod decoder;
pub mod error;
pub mod format;
pub mod history;
pub mod lsn;
pub mod name;
pub mod payload;
pub mod reader;
pub mod segment;
pub mod verify;
pub mod writer;

pub use decoder::{Decoder, EndOfWal, EndReason, Expect, Record, Step};
pub use error::WalError;
pub use lsn::{Lsn, PositionError, SegNo, SegmentSize, TimelineId};
pub use name::{SegmentName, WalFileName};
pub use writer::{Appended, Resumed, WalWriter, WriterConfig};
