//! Walking WAL stored in segment files: the I/O half of reading, feeding
//! segments to the [`Decoder`].

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use super::decoder::{Decoder, EndOfWal, EndReason, Record, Step};
use super::error::WalError;
use super::lsn::{Lsn, SegNo, SegmentSize};
use super::segment::SegmentData;

/// Where the segments of one walk come from.
pub struct SegmentFiles {
    pub size: SegmentSize,
    pub files: BTreeMap<SegNo, PathBuf>,
}

/// How a walk stopped.
#[derive(Debug)]
pub enum WalkEnd {
    /// The decoder found the end of valid WAL in the named file.
    EndOfWal { end: EndOfWal, path: PathBuf },
    /// The WAL continues into a segment that is not there.
    MissingSegment { segno: SegNo, lsn: Lsn },
    /// The next record would begin at or after the requested end LSN.
    ReachedEnd { lsn: Lsn },
    /// The visitor asked to stop.
    Stopped,
}

/// Walks records from where `decoder` stands until the end of valid WAL,
/// a missing segment, `end` or the visitor's `Break`.
pub fn walk(
    files: &SegmentFiles,
    decoder: &mut Decoder,
    end: Option<Lsn>,
    mut visit: impl FnMut(&Record<'_>) -> ControlFlow<()>,
) -> Result<WalkEnd, WalError> {
    let mut current: Option<(SegNo, SegmentData)> = None;
    loop {
        let pos = decoder.pos();
        if decoder.at_record_boundary() && end.is_some_and(|end| decoder.next_record_lsn() >= end) {
            return Ok(WalkEnd::ReachedEnd { lsn: pos });
        }
        let segno = pos.segno(files.size);
        let data = match &mut current {
            Some((open, data)) if *open == segno => data,
            slot => {
                let Some(path) = files.files.get(&segno) else {
                    return Ok(WalkEnd::MissingSegment { segno, lsn: pos });
                };
                &slot.insert((segno, SegmentData::open(path, files.size)?)).1
            }
        };
        let offset = pos.segment_offset(files.size) as usize;
        let (_, step) = decoder.decode(&data[offset..]);
        match step {
            Step::Record(record) => {
                if visit(&record).is_break() {
                    return Ok(WalkEnd::Stopped);
                }
            }
            Step::NeedMore => {}
            Step::End(end) => {
                // Name the file where the damage is: a bad page's, or the
                // one where the failed record begins.
                let at = match &end.reason {
                    EndReason::BadPageHeader { page, .. } => *page,
                    _ => end.lsn,
                };
                let path = files
                    .files
                    .get(&at.segno(files.size))
                    .unwrap_or(&data.path)
                    .clone();
                return Ok(WalkEnd::EndOfWal { end, path });
            }
        }
    }
}
