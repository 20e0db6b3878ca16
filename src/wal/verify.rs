//! Verifying WAL as it arrives over the network, before a byte of it is
//! written: the stream is fed through a [`Decoder`], so every record's
//! headers, prev-link and CRC are checked the moment its last byte comes.
//!
//! Invariant: the bytes [`StreamVerifier::check`] accepts never include a
//! complete record that failed; the tail of a record still arriving is
//! accepted (it is checked when the rest comes, and a reader of the
//! segment stops at it if it never does).

use super::decoder::{Decoder, EndOfWal, Expect, Step};
use super::format::RM_WALSHIP_ID;
use super::lsn::{Lsn, SegmentSize};

/// A record failed verification; `valid` bytes of the chunk before it may
/// still be written.
#[derive(Debug)]
pub struct Rejected {
    pub valid: usize,
    pub end: EndOfWal,
}

/// A complete walship record (resource manager 200) seen in a chunk.
#[derive(Debug)]
pub struct OwnRecord {
    pub lsn: Lsn,
    pub end: Lsn,
    pub info: u8,
    pub data: Vec<u8>,
}

/// What one chunk held.
#[derive(Debug, Default)]
pub struct Checked {
    /// walship's own records completed in the chunk, in order (what a
    /// standby replays).
    pub own: Vec<OwnRecord>,
    /// The end of the last record completed in the chunk, of any kind.
    pub last_end: Option<Lsn>,
}

/// The last complete record of a stream: where it begins (the next
/// record's prev-link) and where the record after it may begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastRecord {
    pub lsn: Lsn,
    /// [`Lsn::INVALID`] until a record completes in the stream.
    pub next: Lsn,
}

/// See the module documentation.
pub struct StreamVerifier {
    decoder: Decoder,
    last: LastRecord,
}

impl StreamVerifier {
    /// Verifies a stream that begins at `start`. `prev` is the record
    /// before `start` when known. At a page's start the decoder skips the
    /// tail of a record begun on an earlier page (as pg_receivewal's
    /// segment-aligned streams begin).
    pub fn new(seg_size: SegmentSize, start: Lsn, prev: Option<Lsn>, expect: Expect) -> Self {
        let decoder = if start.page_offset() == 0 {
            Decoder::at_page_start(seg_size, start, expect)
        } else {
            Decoder::at_record(seg_size, start, prev, expect)
        };
        StreamVerifier {
            decoder,
            last: LastRecord {
                lsn: prev.unwrap_or(Lsn::INVALID),
                next: Lsn::INVALID,
            },
        }
    }

    /// The last complete record seen (or the `prev` given at the start).
    pub fn last_record(&self) -> LastRecord {
        self.last
    }

    /// Checks the bytes that begin at `at` (contiguous with the previous
    /// chunk). Bytes the decoder skips (the zeros after a segment switch)
    /// are accepted as they are.
    pub fn check(&mut self, at: Lsn, bytes: &[u8]) -> Result<Checked, Rejected> {
        let end = at.0 + bytes.len() as u64;
        let mut checked = Checked::default();
        loop {
            let pos = self.decoder.pos().0;
            if pos >= end {
                return Ok(checked);
            }
            let off = pos.saturating_sub(at.0) as usize;
            let (_, step) = self.decoder.decode(&bytes[off..]);
            match step {
                Step::Record(r) => {
                    self.last = LastRecord {
                        lsn: r.lsn,
                        next: r.end,
                    };
                    checked.last_end = Some(r.end);
                    if r.header().rmid == RM_WALSHIP_ID {
                        checked.own.push(OwnRecord {
                            lsn: r.lsn,
                            end: r.end,
                            info: r.header().info,
                            data: r.main_data().map(<[u8]>::to_vec).unwrap_or_default(),
                        });
                    }
                }
                Step::NeedMore => return Ok(checked),
                Step::End(eow) => {
                    return Err(Rejected {
                        valid: eow.lsn.0.saturating_sub(at.0).min(bytes.len() as u64) as usize,
                        end: eow,
                    })
                }
            }
        }
    }
}
