//! WAL file names, exactly as PostgreSQL spells them.
//!
//! A segment is `TTTTTTTTXXXXXXXXYYYYYYYY`: the timeline, then the segment
//! number split into "log id" and "segment within log id"
//! (PostgreSQL's `XLogFileName`), 24 upper-case hex digits. A copy still
//! being filled carries `.partial`; a timeline's history is
//! `TTTTTTTT.history`; a base backup's history file is
//! `SEGNAME.OOOOOOOO.backup`, the offset of its start within the segment.

use std::fmt;

use thiserror::Error;

use super::lsn::{SegNo, SegmentSize, TimelineId};

/// A segment's identity: which timeline, which segment number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub timeline: TimelineId,
    pub segno: SegNo,
}

/// What kind of WAL file a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalFileName {
    Segment(SegmentName),
    Partial(SegmentName),
    History(TimelineId),
    /// A backup history file: the segment and offset the backup started at.
    Backup(SegmentName, u32),
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{name:?} is not a WAL file name: {why}")]
pub struct NameError {
    pub name: String,
    pub why: &'static str,
}

const SUFFIX_PARTIAL: &str = ".partial";
const SUFFIX_HISTORY: &str = ".history";
const SUFFIX_BACKUP: &str = ".backup";

impl SegmentName {
    pub fn new(timeline: TimelineId, segno: SegNo) -> SegmentName {
        SegmentName { timeline, segno }
    }

    /// PostgreSQL's `XLogFileName`.
    pub fn file_name(&self, size: SegmentSize) -> String {
        let per = size.segments_per_xlog_id();
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline.get(),
            self.segno.0 / per,
            self.segno.0 % per
        )
    }

    /// The name of the same segment while it is still being filled.
    pub fn partial_file_name(&self, size: SegmentSize) -> String {
        format!("{}{SUFFIX_PARTIAL}", self.file_name(size))
    }

    /// PostgreSQL's `BackupHistoryFileName`: the backup started `offset`
    /// bytes into this segment.
    pub fn backup_file_name(&self, size: SegmentSize, offset: u32) -> String {
        format!("{}.{offset:08X}{SUFFIX_BACKUP}", self.file_name(size))
    }

    /// Parses exactly 24 upper-case hex digits, as PostgreSQL writes them,
    /// rejecting timeline 0 and a segment part too large for `size`.
    pub fn parse(name: &str, size: SegmentSize) -> Result<SegmentName, NameError> {
        let err = |why| NameError {
            name: name.to_string(),
            why,
        };
        if name.len() != 24 {
            return Err(err("expected 24 hexadecimal digits"));
        }
        if !is_upper_hex(name) {
            return Err(err("expected only the digits 0-9 and upper-case A-F"));
        }
        let field = |i: usize| u32::from_str_radix(&name[i * 8..i * 8 + 8], 16);
        let (tli, log, seg) = match (field(0), field(1), field(2)) {
            (Ok(t), Ok(l), Ok(s)) => (t, l, s),
            _ => return Err(err("expected hexadecimal digits")),
        };
        let timeline = TimelineId::new(tli).map_err(|_| err("timeline 0 does not exist"))?;
        let per = size.segments_per_xlog_id();
        if u64::from(seg) >= per {
            return Err(err("segment part too large for this segment size"));
        }
        Ok(SegmentName {
            timeline,
            segno: SegNo(u64::from(log) * per + u64::from(seg)),
        })
    }
}

impl WalFileName {
    /// Classifies a directory entry, or says why it is not a WAL file.
    pub fn parse(name: &str, size: SegmentSize) -> Result<WalFileName, NameError> {
        if let Some(stem) = name.strip_suffix(SUFFIX_PARTIAL) {
            return SegmentName::parse(stem, size).map(WalFileName::Partial);
        }
        if let Some(stem) = name.strip_suffix(SUFFIX_HISTORY) {
            return parse_history_stem(name, stem).map(WalFileName::History);
        }
        if let Some(stem) = name.strip_suffix(SUFFIX_BACKUP) {
            let (seg, offset) = stem
                .split_once('.')
                .filter(|(_, o)| o.len() == 8 && is_upper_hex(o))
                .and_then(|(s, o)| Some((s, u32::from_str_radix(o, 16).ok()?)))
                .ok_or(NameError {
                    name: name.to_string(),
                    why: "expected SEGNAME.OOOOOOOO.backup",
                })?;
            return SegmentName::parse(seg, size).map(|s| WalFileName::Backup(s, offset));
        }
        SegmentName::parse(name, size).map(WalFileName::Segment)
    }
}

/// `TTTTTTTT.history`.
pub fn history_file_name(timeline: TimelineId) -> String {
    format!("{:08X}{SUFFIX_HISTORY}", timeline.get())
}

/// Only the digits 0-9 and A-F, as PostgreSQL's `%08X` writes them.
fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fn parse_history_stem(name: &str, stem: &str) -> Result<TimelineId, NameError> {
    let err = |why| NameError {
        name: name.to_string(),
        why,
    };
    if stem.len() != 8 || !is_upper_hex(stem) {
        return Err(err(
            "expected 8 upper-case hexadecimal digits before .history",
        ));
    }
    let tli = u32::from_str_radix(stem, 16).map_err(|_| err("expected hexadecimal digits"))?;
    TimelineId::new(tli).map_err(|_| err("timeline 0 does not exist"))
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timeline {} segment {}", self.timeline, self.segno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    #[test]
    fn names_match_postgres() {
        let mb16 = SegmentSize::DEFAULT;
        let n = SegmentName::new(tli(1), SegNo(1));
        assert_eq!(n.file_name(mb16), "000000010000000000000001");
        let n = SegmentName::new(tli(2), SegNo(0x1_23));
        assert_eq!(n.file_name(mb16), "000000020000000100000023");
        let mb1 = SegmentSize::from_mib(1).unwrap();
        let n = SegmentName::new(tli(0xA), SegNo(4096 + 0xFF));
        assert_eq!(n.file_name(mb1), "0000000A00000001000000FF");
        assert_eq!(
            SegmentName::parse("0000000A00000001000000FF", mb1).unwrap(),
            n
        );
        assert_eq!(n.partial_file_name(mb1), "0000000A00000001000000FF.partial");
        assert_eq!(history_file_name(tli(0x1F)), "0000001F.history");
    }

    #[test]
    fn near_misses_are_rejected() {
        let mb16 = SegmentSize::DEFAULT;
        for bad in [
            "00000001000000000000001",
            "0000000100000000000000011",
            "00000001000000000000000a",
            "00000001000000000000000G",
            "000000000000000000000001",
            "000000010000000000000100",
            " 00000001000000000000001",
            "00000001-000000000000001",
        ] {
            assert!(SegmentName::parse(bad, mb16).is_err(), "{bad:?}");
        }
        for bad in [
            "0000000.history",
            "0000000a.history",
            "00000000.history",
            "00000001.History",
        ] {
            assert!(WalFileName::parse(bad, mb16).is_err(), "{bad:?}");
        }
        assert_eq!(
            WalFileName::parse("00000003.history", mb16).unwrap(),
            WalFileName::History(tli(3))
        );
        assert!(matches!(
            WalFileName::parse("000000010000000000000002.partial", mb16).unwrap(),
            WalFileName::Partial(_)
        ));
        let seg = SegmentName::new(tli(1), SegNo(2));
        assert_eq!(
            seg.backup_file_name(mb16, 0x28),
            "000000010000000000000002.00000028.backup"
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000002.00000028.backup", mb16).unwrap(),
            WalFileName::Backup(seg, 0x28)
        );
        for bad in [
            "000000010000000000000002.0000002.backup",
            "000000010000000000000002.0000002a.backup",
            "000000010000000000000002.backup",
            "00000001000000000000002.00000028.backup",
        ] {
            assert!(WalFileName::parse(bad, mb16).is_err(), "{bad:?}");
        }
    }
}
