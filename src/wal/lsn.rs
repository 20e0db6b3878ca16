//! Positions in the log: [`Lsn`], [`SegNo`], [`TimelineId`] and [`SegmentSize`].
//!
//! These mirror PostgreSQL's `XLogRecPtr`, `XLogSegNo`, `TimeLineID` and
//! `wal_segment_size`. An LSN is a byte position in the one infinite WAL
//! stream of a timeline; it is shown as two 32-bit hex halves, `X/XXXXXXXX`,
//! exactly as PostgreSQL shows it.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A byte position in the WAL stream (PostgreSQL's `XLogRecPtr`).
///
/// `Lsn(0)` is PostgreSQL's `InvalidXLogRecPtr`: no record ever starts there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A segment's number in the stream (PostgreSQL's `XLogSegNo`): the LSN
/// divided by the segment size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegNo(pub u64);

/// A timeline (PostgreSQL's `TimeLineID`). Timeline 0 does not exist; a new
/// cluster starts on timeline 1 and each promotion moves to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(u32);

/// The size of every segment file of one cluster: a power of two from 1 MiB
/// to 1 GiB (PostgreSQL's `IsValidWalSegSize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentSize(u32);

/// Why a string or number is not a valid position, timeline or size.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PositionError {
    #[error("invalid LSN {0:?}: expected two hexadecimal numbers of at most 8 digits each, as in 0/16B3748")]
    LsnSyntax(String),
    #[error("invalid timeline {0}: timelines start at 1")]
    ZeroTimeline(u32),
    #[error("invalid timeline {0:?}: expected a decimal number from 1 to 4294967295")]
    TimelineSyntax(String),
    #[error("invalid WAL segment size {0} bytes: expected a power of two from 1 MiB to 1 GiB")]
    SegmentSize(u64),
    #[error("LSN arithmetic overflows: {0} + {1}")]
    Overflow(Lsn, u64),
}

impl Lsn {
    /// PostgreSQL's `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);

    /// True for every LSN but [`Lsn::INVALID`].
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// `self + bytes`, or an error instead of wrapping past 2^64.
    pub fn checked_add(self, bytes: u64) -> Result<Lsn, PositionError> {
        self.0
            .checked_add(bytes)
            .map(Lsn)
            .ok_or(PositionError::Overflow(self, bytes))
    }

    /// The number of bytes from `earlier` to `self`, or `None` when
    /// `earlier` is the later of the two.
    pub fn checked_sub(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// The segment this byte falls in.
    pub fn segno(self, size: SegmentSize) -> SegNo {
        SegNo(self.0 >> size.shift())
    }

    /// This byte's offset within its segment.
    pub fn segment_offset(self, size: SegmentSize) -> u64 {
        self.0 & (size.bytes() - 1)
    }

    /// This byte's offset within its 8 KiB WAL page.
    pub fn page_offset(self) -> u64 {
        self.0 % super::format::PAGE_SIZE as u64
    }

    /// Rounded up to the next multiple of 8 (PostgreSQL's `MAXALIGN`), where
    /// every record starts.
    pub fn align(self) -> Lsn {
        Lsn((self.0 + 7) & !7)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = PositionError;

    /// Parses PostgreSQL's `X/X` form strictly: each half is one to eight hex
    /// digits, nothing else (no sign, no spaces, no `0x`).
    fn from_str(s: &str) -> Result<Lsn, PositionError> {
        let bad = || PositionError::LsnSyntax(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl SegNo {
    /// The LSN of this segment's first byte.
    pub fn start_lsn(self, size: SegmentSize) -> Lsn {
        Lsn(self.0 * size.bytes())
    }

    /// The following segment.
    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }
}

impl fmt::Display for SegNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TimelineId {
    /// The timeline every new cluster starts on.
    pub const FIRST: TimelineId = TimelineId(1);

    pub fn new(id: u32) -> Result<TimelineId, PositionError> {
        if id == 0 {
            Err(PositionError::ZeroTimeline(id))
        } else {
            Ok(TimelineId(id))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The timeline a promotion from this one moves to.
    pub fn next(self) -> Option<TimelineId> {
        self.0.checked_add(1).map(TimelineId)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<TimelineId, PositionError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PositionError::TimelineSyntax(s.to_string()));
        }
        let id: u32 = s
            .parse()
            .map_err(|_| PositionError::TimelineSyntax(s.to_string()))?;
        TimelineId::new(id)
    }
}

impl SegmentSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);
    const MIN: u64 = 1 << 20;
    const MAX: u64 = 1 << 30;

    pub fn new(bytes: u64) -> Result<SegmentSize, PositionError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(SegmentSize(bytes as u32))
        } else {
            Err(PositionError::SegmentSize(bytes))
        }
    }

    /// From a size in MiB, as `--wal-segsize` takes it.
    pub fn from_mib(mib: u64) -> Result<SegmentSize, PositionError> {
        SegmentSize::new(mib.saturating_mul(1 << 20))
    }

    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    pub fn as_u32(self) -> u32 {
        self.0
    }

    /// log2 of the size (the size is a power of two, so LSN arithmetic on
    /// segments is shifts and masks, not divisions).
    pub fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// Segments per 4 GiB of LSN space (PostgreSQL's `XLogSegmentsPerXLogId`),
    /// used to split a segment number in file names.
    pub fn segments_per_xlog_id(self) -> u64 {
        0x1_0000_0000 / self.bytes()
    }
}

impl Default for SegmentSize {
    fn default() -> Self {
        SegmentSize::DEFAULT
    }
}

impl fmt::Display for SegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}MB", self.0 >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_form() {
        for v in [
            0u64,
            1,
            0x16B3748,
            0x1_0000_0000,
            u64::MAX,
            0xABCD_EF01_2345_6789,
        ] {
            let s = Lsn(v).to_string();
            assert_eq!(s.parse::<Lsn>().unwrap(), Lsn(v), "{s}");
        }
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0x1_0000_00FF).to_string(), "1/FF");
        assert_eq!("0/16b3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
    }

    #[test]
    fn lsn_parsing_rejects_near_misses() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0x0/0",
            "0/0x1",
            "1/2/3",
            " 0/1",
            "0/1 ",
            "+0/1",
            "-0/1",
            "123456789/0",
            "0/123456789",
            "g/0",
            "0:1",
            "0/1\n",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn lsn_arithmetic_is_checked() {
        assert!(Lsn(u64::MAX).checked_add(1).is_err());
        assert_eq!(Lsn(5).checked_add(3).unwrap(), Lsn(8));
        assert_eq!(Lsn(5).checked_sub(Lsn(8)), None);
        assert_eq!(Lsn(8).checked_sub(Lsn(5)), Some(3));
        assert_eq!(Lsn(9).align(), Lsn(16));
        assert_eq!(Lsn(16).align(), Lsn(16));
    }

    #[test]
    fn segments_for_every_valid_size() {
        for shift in 20..=30 {
            let size = SegmentSize::new(1 << shift).unwrap();
            let lsn = Lsn((5 << shift) + 123);
            assert_eq!(lsn.segno(size), SegNo(5));
            assert_eq!(lsn.segment_offset(size), 123);
            assert_eq!(SegNo(5).start_lsn(size), Lsn(5 << shift));
        }
        for bad in [0u64, 1 << 19, (1 << 20) + 1, 3 << 20, 1 << 31] {
            assert!(SegmentSize::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timelines_start_at_one() {
        assert!(TimelineId::new(0).is_err());
        assert_eq!("7".parse::<TimelineId>().unwrap().get(), 7);
        for bad in ["", "0", "-1", "+1", "1.0", "4294967296", " 1"] {
            assert!(bad.parse::<TimelineId>().is_err(), "{bad:?}");
        }
        assert_eq!(TimelineId::new(u32::MAX).unwrap().next(), None);
    }
}
