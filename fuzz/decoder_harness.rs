//! The decoding loop the `decoder` fuzz target runs, shared with
//! `tests/decoder_corpus.rs` (which includes this file by path) so that the
//! same code runs in CI without cargo-fuzz.
//!
//! An input is a [`HEADER_LEN`]-byte header followed by WAL bytes:
//!
//! ```text
//! 0      flags: bit 0 at_record (else at_page_start); bit 1 strict Expect
//!        (sysid SYSID, max_timeline 1); bit 2 prev known (at_record only);
//!        bits 5-7 chunk scale (see CHUNK_SCALES)
//! 1      segment number - 1 of the start (segments of 1 MiB)
//! 2..5   offset of the start within its segment, u24 little-endian, mod
//!        1 MiB (at_page_start rounds it down to its page; at_record takes it
//!        as it is, aligned or not)
//! 5      prev = start - 8 * (this + 1), when bit 2 is set
//! 6..14  chunk sizes: the decoder is fed chunk i of (byte[6 + i % 8] + 1) *
//!        scale bytes, so that every "need more" path is taken
//! 14..   the WAL stream, its first byte at the start LSN (at_page_start:
//!        at the start of the start's page)
//! ```
//!
//! [`decode_input`] decodes the stream twice, chunked and in one piece, and
//! asserts nothing about the WAL itself: only that the decoder neither
//! panics nor loops, keeps its API contract (a record is `tot_len` bytes
//! whose CRC checks, LSNs only go forward, "need more" means everything fed
//! was consumed) and gives the same answer however its input is split.

#![allow(dead_code)]

use walship::wal::format;
use walship::wal::{Decoder, EndOfWal, Expect, Lsn, SegmentSize, Step};

/// Bytes of the input header.
pub const HEADER_LEN: usize = 14;
/// The system identifier a strict `Expect` demands.
pub const SYSID: u64 = 7_400_000_000_000_000_001;
/// Multipliers of the chunk-size bytes; the last feeds everything at once.
pub const CHUNK_SCALES: [usize; 8] = [1, 3, 17, 61, 509, 4093, 8192, usize::MAX / 512];

/// Segment size of every fuzz input.
pub fn seg_size() -> SegmentSize {
    SegmentSize::from_mib(1).expect("1 MiB is a valid segment size")
}

/// Where and how decoding starts.
#[derive(Clone, Debug)]
pub enum Start {
    PageStart(Lsn),
    Record { lsn: Lsn, prev: Option<Lsn> },
}

/// One decoding run: where it starts, what it expects, how input is split.
#[derive(Clone, Debug)]
pub struct Setup {
    pub seg_size: SegmentSize,
    pub start: Start,
    pub expect: Expect,
    /// Chunk sizes, used in turn; each at least 1.
    pub chunks: Vec<usize>,
}

/// What a run produced, for comparing runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Each record's LSN, end, length and CRC.
    pub records: Vec<(Lsn, Lsn, u32, u32)>,
    /// `None` when the input ran out first.
    pub end: Option<EndOfWal>,
    /// The decoder's position when the run stopped.
    pub pos: Lsn,
}

/// The fuzz target's body: parses the header, decodes the stream chunked
/// and whole, and checks that both agree.
pub fn decode_input(data: &[u8]) -> Option<Outcome> {
    let (setup, stream) = parse_input(data)?;
    Some(decode_checked(&setup, stream))
}

/// Decodes `stream` in the setup's chunks and in one piece, and checks that
/// both give the same records and end.
pub fn decode_checked(setup: &Setup, stream: &[u8]) -> Outcome {
    let chunked = decode_stream(setup, stream);
    let whole = decode_stream(
        &Setup {
            chunks: vec![usize::MAX],
            ..setup.clone()
        },
        stream,
    );
    assert_eq!(
        chunked, whole,
        "the decoder's answer depends on how its input is split ({setup:?})"
    );
    chunked
}

/// Splits an input into its setup and its WAL stream.
pub fn parse_input(data: &[u8]) -> Option<(Setup, &[u8])> {
    if data.len() < HEADER_LEN {
        return None;
    }
    let (h, stream) = data.split_at(HEADER_LEN);
    let size = seg_size();
    let flags = h[0];
    let segno = u64::from(h[1]) + 1;
    let offset = u64::from(u32::from_le_bytes([h[2], h[3], h[4], 0])) % size.bytes();
    let lsn = Lsn(segno * size.bytes() + offset);
    let start = if flags & 1 == 0 {
        Start::PageStart(lsn)
    } else {
        let prev = (flags & 4 != 0).then(|| Lsn(lsn.0 - 8 * (u64::from(h[5]) + 1)));
        Start::Record { lsn, prev }
    };
    let expect = if flags & 2 != 0 {
        Expect {
            sysid: Some(SYSID),
            max_timeline: Some(1),
        }
    } else {
        Expect::default()
    };
    let scale = CHUNK_SCALES[usize::from(flags >> 5)];
    let chunks = h[6..14]
        .iter()
        .map(|&b| (usize::from(b) + 1).saturating_mul(scale))
        .collect();
    Some((
        Setup {
            seg_size: size,
            start,
            expect,
            chunks,
        },
        stream,
    ))
}

/// An input's header, for building seeds (the inverse of [`parse_input`]).
#[derive(Clone, Copy, Debug)]
pub struct InputHeader {
    pub at_record: bool,
    pub strict: bool,
    /// prev = start - 8 * (this + 1)
    pub prev_back: Option<u8>,
    /// 1 to 256.
    pub segno: u64,
    /// Within the segment, below 1 MiB.
    pub offset: u32,
    /// An index into [`CHUNK_SCALES`].
    pub scale: u8,
    pub chunks: [u8; 8],
}

impl InputHeader {
    /// The header followed by `stream`.
    pub fn with_stream(&self, stream: &[u8]) -> Vec<u8> {
        assert!((1..=256).contains(&self.segno) && self.offset < (1 << 20) && self.scale < 8);
        let flags = u8::from(self.at_record)
            | (u8::from(self.strict) << 1)
            | (u8::from(self.prev_back.is_some()) << 2)
            | (self.scale << 5);
        let mut out = Vec::with_capacity(HEADER_LEN + stream.len());
        out.push(flags);
        out.push((self.segno - 1) as u8);
        out.extend_from_slice(&self.offset.to_le_bytes()[..3]);
        out.push(self.prev_back.unwrap_or(0));
        out.extend_from_slice(&self.chunks);
        out.extend_from_slice(stream);
        out
    }
}

/// Feeds `stream` (its first byte at the start LSN) to a decoder in the
/// setup's chunks until the decoder ends or the stream runs out.
pub fn decode_stream(setup: &Setup, stream: &[u8]) -> Outcome {
    let mut decoder = match setup.start {
        Start::PageStart(lsn) => Decoder::at_page_start(setup.seg_size, lsn, setup.expect),
        Start::Record { lsn, prev } => Decoder::at_record(setup.seg_size, lsn, prev, setup.expect),
    };
    // The LSN of stream[0]: at_page_start begins at the page's first byte.
    let base = decoder.pos();
    let mut records = Vec::new();
    let mut end = None;
    let mut chunk = 0;
    // Every call consumes a byte or returns a record or the end, so this
    // bounds the loop; exceeding it means the decoder stopped progressing.
    let mut calls_left = 2 * stream.len() + 16;
    let mut last_lsn: Option<Lsn> = None;
    loop {
        calls_left = calls_left
            .checked_sub(1)
            .expect("the decoder makes no progress");
        let pos = decoder.pos();
        let at = pos
            .0
            .checked_sub(base.0)
            .expect("the decoder's position went back before its start");
        let Some(rest) = usize::try_from(at).ok().and_then(|at| stream.get(at..)) else {
            break; // a segment switch jumped past the end of the stream
        };
        let size = setup.chunks[chunk % setup.chunks.len()].max(1);
        chunk += 1;
        let input = &rest[..size.min(rest.len())];
        let (used, step) = decoder.decode(input);
        assert!(used <= input.len(), "consumed more than it was given");
        let mut record_end = None;
        match step {
            Step::NeedMore => {
                assert_eq!(
                    used,
                    input.len(),
                    "asked for more without consuming all it had"
                );
                if rest.is_empty() {
                    break;
                }
            }
            Step::Record(r) => {
                assert!(used > 0, "returned a record without consuming a byte");
                assert_eq!(r.bytes.len(), r.header().tot_len as usize);
                assert_eq!(
                    format::record_crc(r.bytes),
                    r.header().crc,
                    "CRC not checked"
                );
                assert!(r.lsn.0 % 8 == 0 && r.end.0 % 8 == 0, "unaligned record");
                assert!(r.end.0 >= r.lsn.0 + u64::from(r.header().tot_len));
                if let Some(last) = last_lsn {
                    assert!(last < r.lsn, "records out of order");
                }
                last_lsn = Some(r.lsn);
                let _ = r.main_data();
                records.push((r.lsn, r.end, r.header().tot_len, r.header().crc));
                record_end = Some(r.end);
            }
            Step::End(e) => {
                end = Some(e);
                break;
            }
        }
        let after = decoder.pos();
        match record_end {
            // A segment switch moves the position on to the next segment.
            Some(rec_end) if after.0 != pos.0 + used as u64 => {
                assert!(
                    after == rec_end && after.0 % setup.seg_size.bytes() == 0,
                    "position {after} after a record ending at {rec_end}"
                );
            }
            _ => assert_eq!(
                after.0,
                pos.0 + used as u64,
                "position and bytes consumed disagree"
            ),
        }
    }
    // Once ended, the decoder stays ended.
    if let Some(e) = &end {
        match decoder.decode(&[0; 64]) {
            (0, Step::End(again)) => assert_eq!(&again, e, "the end changed"),
            (used, step) => panic!("decoded on after the end: {used} bytes, {step:?}"),
        }
    }
    Outcome {
        records,
        end,
        pos: decoder.pos(),
    }
}
