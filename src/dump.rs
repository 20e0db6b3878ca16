//! `walship dump`: pg_waldump's job. Prints, verifies or summarizes the
//! records of a set of segment files.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::durable::{FileError, IoContext};
use crate::wal::format::{self, RM_WALSHIP_ID, RM_XLOG_ID, XLOG_SWITCH};
use crate::wal::payload::Payload;
use crate::wal::reader::{walk, SegmentFiles, WalkEnd};
use crate::wal::segment;
use crate::wal::{
    Decoder, EndOfWal, Expect, Lsn, Record, SegNo, SegmentName, SegmentSize, WalError, WalFileName,
};

/// What to dump.
#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// Segment files, or directories holding them.
    pub paths: Vec<PathBuf>,
    /// Begin with the first record at or after this LSN.
    pub start: Option<Lsn>,
    /// Stop before the first record at or after this LSN.
    pub end: Option<Lsn>,
    pub mode: DumpMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DumpMode {
    /// One line per record.
    #[default]
    Records,
    /// Walk silently; print one summary line.
    Verify,
    /// Per resource manager counts and bytes.
    Stats,
}

/// How the walk ended, for the exit status: only [`DumpOutcome::Damaged`]
/// is a failure.
#[derive(Debug)]
pub enum DumpOutcome {
    Clean { records: u64, message: String },
    Damaged { message: String },
}

#[derive(Debug, Error)]
pub enum DumpError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("--start {start} is after --end {end}: swap them")]
    Inverted { start: Lsn, end: Lsn },
    #[error("no WAL segment files found in {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoSegments(Vec<PathBuf>),
    #[error("{}: not a WAL segment file name (expected 24 upper-case hex digits, optionally followed by .partial)", .0.display())]
    NotSegmentName(PathBuf),
    #[error("start LSN {start} is not in any of the given segments ({first} to {last})")]
    StartOutside {
        start: Lsn,
        first: String,
        last: String,
    },
}

/// Runs a dump, writing its report to `out`.
pub fn run(opts: &DumpOptions, out: &mut dyn Write) -> Result<DumpOutcome, DumpError> {
    if let (Some(start), Some(end)) = (opts.start, opts.end) {
        if start > end {
            return Err(DumpError::Inverted { start, end });
        }
    }
    let set = collect(&opts.paths)?;
    let size = set.size;
    let (Some(&first), Some(&last)) = (set.files.keys().next(), set.files.keys().next_back())
    else {
        return Err(DumpError::NoSegments(opts.paths.clone()));
    };
    let start = opts.start.unwrap_or(first.start_lsn(size));
    let start_seg = start.segno(size);
    if start_seg < first || start_seg > last {
        let name = |s: SegNo| SegmentName::new(set.timeline_of(s), s).file_name(size);
        return Err(DumpError::StartOutside {
            start,
            first: name(first),
            last: name(last),
        });
    }
    let expect = Expect {
        sysid: None,
        max_timeline: set.max_timeline,
    };
    let mut decoder = Decoder::at_page_start(size, start, expect);
    let files = SegmentFiles {
        size,
        files: set
            .files
            .iter()
            .map(|(s, (_, p))| (*s, p.clone()))
            .collect(),
    };
    let mut stats: BTreeMap<u8, (u64, u64)> = BTreeMap::new();
    let mut records = 0u64;
    let mut first_lsn = None;
    let mut write_error = None;
    let outcome = walk(&files, &mut decoder, opts.end, |r| {
        if r.lsn < start {
            return ControlFlow::Continue(());
        }
        records += 1;
        first_lsn.get_or_insert(r.lsn);
        let line = match opts.mode {
            DumpMode::Records => writeln!(out, "{}", RecordLine(r)),
            DumpMode::Stats => {
                let e = stats.entry(r.header().rmid).or_default();
                e.0 += 1;
                e.1 += u64::from(r.header().tot_len);
                Ok(())
            }
            DumpMode::Verify => Ok(()),
        };
        match line {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(FileError::new("write to", "standard output", e).into());
    }
    let (clean, how) = match outcome {
        WalkEnd::EndOfWal { end, path } => {
            let (clean, how) = describe_end(&end, &path);
            // Later given segments of this timeline (or a later one) that
            // hold WAL of their own (not a recycled or preallocated file's
            // leftovers) should have been reached: the WAL before them is
            // damaged or missing. An older timeline's are an abandoned
            // branch's, as in an archive after a failover.
            let ended_on = set.timeline_of(end.lsn.segno(size));
            let unread: Vec<String> = set
                .files
                .range(end.lsn.segno(size).next()..)
                .filter(|(segno, (name, p))| {
                    name.timeline >= ended_on && holds_own_wal(p, **segno, size)
                })
                .map(|(_, (name, _))| name.file_name(size))
                .collect();
            match unread.first() {
                Some(first) if clean => (
                    false,
                    format!(
                        "{how}, but the WAL in {} later given segment file(s), from {first}, was never reached: the WAL before it is damaged or missing",
                        unread.len(),
                    ),
                ),
                _ => (clean, how),
            }
        }
        WalkEnd::MissingSegment { segno, lsn } => match set.files.range(segno..).next() {
            Some((later, _)) => (
                false,
                format!(
                    "WAL continues at {lsn} into segment {}, which is missing, though later segment {} was given",
                    SegmentName::new(set.timeline_of(segno), segno).file_name(size),
                    SegmentName::new(set.timeline_of(*later), *later).file_name(size),
                ),
            ),
            None => (
                true,
                format!(
                    "end of the given segments at {lsn} (WAL may continue in {})",
                    SegmentName::new(set.timeline_of(segno), segno).file_name(size)
                ),
            ),
        },
        WalkEnd::ReachedEnd { lsn } => (true, format!("reached end LSN at {lsn}")),
        WalkEnd::Stopped => (true, "stopped".to_string()),
    };
    let report = match opts.mode {
        DumpMode::Stats => stats_table(&stats),
        // Damage is said once, by the caller on standard error; the summary
        // only counts what checked out before it.
        DumpMode::Verify => {
            let files = format!(
                "{} segment file{}",
                set.files.len(),
                if set.files.len() == 1 { "" } else { "s" }
            );
            let first = first_lsn.map_or_else(|| start.to_string(), |l| l.to_string());
            let s = if records == 1 { "" } else { "s" };
            if clean {
                format!("verified {records} record{s} from {first} in {files}: {how}\n")
            } else {
                format!("verified {records} record{s} from {first}, up to where the WAL breaks off (see the error); {files} given\n")
            }
        }
        DumpMode::Records => String::new(),
    };
    out.write_all(report.as_bytes())
        .map_err(|e| FileError::new("write to", "standard output", e))?;
    Ok(if clean {
        DumpOutcome::Clean {
            records,
            message: how,
        }
    } else {
        DumpOutcome::Damaged { message: how }
    })
}

/// Whether the segment file at `path` begins with a page written for its
/// own place (segment `segno`): not zeros, not a recycled file's old pages.
fn holds_own_wal(path: &Path, segno: SegNo, size: SegmentSize) -> bool {
    segment::first_page_header(path).is_ok_and(|header| {
        header.magic == format::PAGE_MAGIC && header.pageaddr == segno.start_lsn(size)
    })
}

fn describe_end(end: &EndOfWal, path: &Path) -> (bool, String) {
    if end.is_clean() {
        (true, end.to_string())
    } else {
        (false, format!("{}: {end}", path.display()))
    }
}

/// One pg_waldump-style line.
struct RecordLine<'a, 'r>(&'a Record<'r>);

impl std::fmt::Display for RecordLine<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0;
        let h = r.header();
        write!(
            f,
            "rmgr: {:<11} len (rec/tot): {:>6}/{:>8}, tx: {:>10}, lsn: {:X}/{:08X}, prev {:X}/{:08X}, desc: ",
            format::rmgr_name(h.rmid),
            h.tot_len,
            h.tot_len,
            h.xid,
            r.lsn.0 >> 32,
            r.lsn.0 & 0xFFFF_FFFF,
            h.prev.0 >> 32,
            h.prev.0 & 0xFFFF_FFFF,
        )?;
        match (h.rmid, r.main_data()) {
            (RM_WALSHIP_ID, Some(data)) => match Payload::decode(h.info, data) {
                Ok(p) => write!(f, "{p}"),
                Err(e) => write!(f, "{e}"),
            },
            (RM_XLOG_ID, _) if h.info & 0xF0 == XLOG_SWITCH => write!(f, "SWITCH"),
            _ => write!(f, "info {:#04x}", h.info),
        }
    }
}

fn stats_table(stats: &BTreeMap<u8, (u64, u64)>) -> String {
    let total_n: u64 = stats.values().map(|v| v.0).sum();
    let total_b: u64 = stats.values().map(|v| v.1).sum();
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let mut s = format!(
        "{:<20} {:>10} {:>8} {:>14} {:>8}\n",
        "Type", "N", "(%)", "Record size", "(%)"
    );
    s.push_str(&format!(
        "{:<20} {:>10} {:>8} {:>14} {:>8}\n",
        "----", "-", "---", "-----------", "---"
    ));
    for (rmid, (n, b)) in stats {
        s.push_str(&format!(
            "{:<20} {:>10} {:>7.2}% {:>14} {:>7.2}%\n",
            format::rmgr_name(*rmid),
            n,
            pct(*n, total_n),
            b,
            pct(*b, total_b)
        ));
    }
    s.push_str(&format!(
        "{:<20} {:>10} {:>8} {:>14}\n",
        "Total", total_n, "", total_b
    ));
    s
}

/// The segment files of one dump, by number; the highest timeline wins
/// where two files hold the same segment.
struct SegmentSet {
    size: SegmentSize,
    files: BTreeMap<SegNo, (SegmentName, PathBuf)>,
    max_timeline: Option<u32>,
}

impl SegmentSet {
    fn timeline_of(&self, segno: SegNo) -> crate::wal::TimelineId {
        self.files
            .range(..=segno)
            .next_back()
            .or_else(|| self.files.iter().next())
            .map_or(crate::wal::TimelineId::FIRST, |(_, (n, _))| n.timeline)
    }
}

fn looks_like_segment(name: &str) -> bool {
    let stem = name.strip_suffix(".partial").unwrap_or(name);
    stem.len() == 24 && stem.bytes().all(|b| b.is_ascii_hexdigit())
}

fn collect(paths: &[PathBuf]) -> Result<SegmentSet, DumpError> {
    let mut candidates = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).at("read", path)?;
        if meta.is_dir() {
            for entry in fs::read_dir(path).at("read directory", path)? {
                let entry = entry.at("read directory", path)?;
                if entry.file_name().to_str().is_some_and(looks_like_segment) {
                    candidates.push(entry.path());
                }
            }
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(looks_like_segment)
        {
            candidates.push(path.clone());
        } else {
            return Err(DumpError::NotSegmentName(path.clone()));
        }
    }
    candidates.sort();
    let Some(first) = candidates.first() else {
        return Err(DumpError::NoSegments(paths.to_vec()));
    };
    let size = segment_size_of(first)?;
    let mut files: BTreeMap<SegNo, (SegmentName, PathBuf)> = BTreeMap::new();
    for path in candidates {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let seg = match WalFileName::parse(name, size) {
            Ok(WalFileName::Segment(s) | WalFileName::Partial(s)) => s,
            _ => return Err(DumpError::NotSegmentName(path.clone())),
        };
        let len = fs::metadata(&path).at("stat", &path)?.len();
        if len != size.bytes() {
            return Err(WalError::SegmentFileSize {
                path,
                actual: len,
                expected: size.bytes(),
            }
            .into());
        }
        let replace = match files.get(&seg.segno) {
            Some((have, have_path)) => {
                seg.timeline > have.timeline
                    || (seg.timeline == have.timeline && have_path.extension().is_some())
            }
            None => true,
        };
        if replace {
            files.insert(seg.segno, (seg, path));
        }
    }
    let max_timeline = files.values().map(|(n, _)| n.timeline.get()).max();
    Ok(SegmentSet {
        size,
        files,
        max_timeline,
    })
}

/// Reads the segment size from a segment's long page header.
fn segment_size_of(path: &Path) -> Result<SegmentSize, DumpError> {
    let not_segment = |why: String| WalError::NotASegment {
        path: path.to_path_buf(),
        why,
    };
    let header = match segment::first_page_header(path) {
        Ok(header) => header,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(not_segment("shorter than a long page header".into()).into())
        }
        Err(e) => return Err(FileError::new("read", path, e).into()),
    };
    let Some(long) = header.long.filter(|_| header.magic == format::PAGE_MAGIC) else {
        return Err(not_segment(format!(
            "its first page has no long header with PostgreSQL 15's magic number (magic {:04X}, info {:04X})",
            header.magic, header.info
        ))
        .into());
    };
    SegmentSize::new(u64::from(long.seg_size))
        .map_err(|e| not_segment(format!("header gives {e}")).into())
}
