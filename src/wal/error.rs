//! Errors of the WAL layer; each names the file or LSN involved.

use std::path::PathBuf;

use thiserror::Error;

use super::decoder::EndOfWal;
use super::lsn::{Lsn, PositionError};
use crate::durable::{FileError, LockError};

#[derive(Debug, Error)]
pub enum WalError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Position(#[from] PositionError),
    #[error("segment file {} is {actual} bytes, but its segments are {expected} bytes: the file is truncated or not a WAL segment", path.display())]
    SegmentFileSize {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("{}: {end}", path.display())]
    Corrupt { path: PathBuf, end: EndOfWal },
    #[error("{}: not a WAL segment: {why}", path.display())]
    NotASegment { path: PathBuf, why: String },
    #[error("WAL segment {} is missing: it holds {lsn}, where recovery must begin (the last checkpoint); put it back (walship restore from the archive) or rebuild this node with walship basebackup", path.display())]
    StartMissing { path: PathBuf, lsn: Lsn },
    #[error("WAL record of {0} bytes is larger than the maximum WAL record size")]
    RecordTooLarge(usize),
    #[error("received WAL at {at} does not continue the local WAL, which ends at {local}")]
    NotContiguous { at: Lsn, local: Lsn },
    #[error("could not keep what lies past the end of valid WAL at {end} before writing over it: {source}; free space (it needs up to a segment), or move the segment files after {end} out of wal/ yourself, and start again")]
    KeepDiscarded { end: Lsn, source: FileError },
    #[error("the WAL writer stopped after a failed flush at {0}: nothing after it can be acknowledged; restart the server so that recovery finds the end of durable WAL")]
    Poisoned(Lsn),
}
