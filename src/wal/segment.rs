//! Segment files on disk: creating them zero-filled, mapping them for
//! writing or reading, and finding them in a directory.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use super::error::WalError;
use super::format::{PageHeader, LONG_PAGE_HEADER};
use super::lsn::{Lsn, SegNo, SegmentSize, TimelineId};
use super::name::{SegmentName, WalFileName};
use crate::durable::{self, FileError, IoContext};

/// Creates a zero-filled segment file under a temporary name and durably
/// renames it into place, unless a file of that name already exists.
pub fn create_zeroed(path: &Path, size: SegmentSize) -> Result<(), FileError> {
    durable::create_file_exclusive(path, |f| durable::fill_zeros(f, size.bytes()))?;
    Ok(())
}

/// Creates a segment file allocated but not written ([`durable::allocate`])
/// under a temporary name and durably renames it into place, unless a file
/// of that name already exists. For files synced seldom (a receiver's
/// segments between status intervals): it saves writing every segment
/// twice, while each sync pays for the extents written since the last.
pub fn create_allocated(path: &Path, size: SegmentSize) -> Result<(), FileError> {
    durable::create_file_exclusive(path, |f| durable::allocate(f, size.bytes()))?;
    Ok(())
}

/// Fails unless the open segment file is exactly one segment long.
pub(crate) fn check_size(path: &Path, file: &File, size: SegmentSize) -> Result<(), WalError> {
    let actual = file.metadata().at("stat", path)?.len();
    if actual != size.bytes() {
        return Err(WalError::SegmentFileSize {
            path: path.to_path_buf(),
            actual,
            expected: size.bytes(),
        });
    }
    Ok(())
}

/// A segment open for writing.
///
/// The writer appends into memory and writes each flushed range here with
/// `pwrite`, then `fdatasync`. (Writing through a shared mapping instead
/// costs about twice as much per sync on ext4: the first store to a clean
/// mapped page goes through `page_mkwrite`, which journals the inode, so
/// every `msync` also waits for a journal commit.)
///
/// Invariant: the file is exactly one segment long (preallocated).
pub struct OpenSegment {
    pub path: PathBuf,
    pub start: Lsn,
    len: u64,
    file: File,
}

impl OpenSegment {
    pub fn open(path: &Path, segno: SegNo, size: SegmentSize) -> Result<OpenSegment, WalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .at("open segment", path)?;
        check_size(path, &file, size)?;
        Ok(OpenSegment {
            path: path.to_path_buf(),
            start: segno.start_lsn(size),
            len: size.bytes(),
            file,
        })
    }

    /// One past the last LSN this segment holds.
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.len)
    }

    /// Writes `bytes` at LSN `at`, which must lie within the segment.
    pub fn write_at(&self, at: Lsn, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        debug_assert!(at >= self.start && at.0 + bytes.len() as u64 <= self.end().0);
        self.file.write_all_at(bytes, at.0 - self.start.0)
    }

    /// Makes what was written durable (`fdatasync`: for a zero-filled file
    /// no metadata goes with it; for an allocated one, the conversion of
    /// the extents written does).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// The (long) page header a segment file begins with: all a caller needs
/// to learn a file's system, segment size or own address, without reading
/// the segment.
pub fn first_page_header(path: &Path) -> io::Result<PageHeader> {
    let mut buf = [0u8; LONG_PAGE_HEADER];
    File::open(path)?.read_exact(&mut buf)?;
    Ok(PageHeader::decode(&buf))
}

/// The largest segment mapped with `MAP_POPULATE`.
const POPULATE_UP_TO: u64 = 64 << 20;

/// A segment's bytes, mapped read-only.
pub struct SegmentData {
    pub path: PathBuf,
    map: Mmap,
}

impl SegmentData {
    /// Maps a whole segment file, checking its size.
    pub fn open(path: &Path, size: SegmentSize) -> Result<SegmentData, WalError> {
        let file = File::open(path).at("open segment", path)?;
        check_size(path, &file, size)?;
        // Populated up front: readers walk most of a segment, and one bulk
        // fault costs less than thousands of small ones (8 % off `walship
        // dump --verify` of a 16 MiB segment). Not a huge segment, though:
        // a walsender starting near the end of a 1 GiB one would wait for
        // all of it.
        let mut options = MmapOptions::new();
        if size.bytes() <= POPULATE_UP_TO {
            options.populate();
        }
        // SAFETY: the mapping is read-only. Another process (the writer)
        // may append to the file while it is mapped: the decoder treats every
        // byte as untrusted and checks CRCs, so a concurrent write can at worst
        // look like the end of WAL. Nothing truncates segment files, so no
        // SIGBUS.
        let map = unsafe { options.map(&file) }.at("memory-map segment", path)?;
        Ok(SegmentData {
            path: path.to_path_buf(),
            map,
        })
    }
}

impl Deref for SegmentData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// The segments of one timeline in a directory, by number. A complete
/// segment is preferred over a `.partial` copy of it.
pub fn list_segments(
    dir: &Path,
    size: SegmentSize,
    timeline: TimelineId,
) -> Result<BTreeMap<SegNo, PathBuf>, FileError> {
    let mut found = BTreeMap::new();
    let mut partial = BTreeMap::new();
    for entry in fs::read_dir(dir).at("read directory", dir)? {
        let entry = entry.at("read directory", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match WalFileName::parse(name, size) {
            Ok(WalFileName::Segment(s)) if s.timeline == timeline => {
                found.insert(s.segno, entry.path());
            }
            Ok(WalFileName::Partial(s)) if s.timeline == timeline => {
                partial.insert(s.segno, entry.path());
            }
            _ => {}
        }
    }
    for (segno, path) in partial {
        found.entry(segno).or_insert(path);
    }
    Ok(found)
}

/// The segments of `timeline` and of every earlier one, by number: where
/// two timelines have a segment of one number (the segment a timeline
/// switch happened in), the later timeline's wins, as a reader following
/// the history wants.
pub fn list_segments_upto(
    dir: &Path,
    size: SegmentSize,
    timeline: TimelineId,
) -> Result<BTreeMap<SegNo, PathBuf>, FileError> {
    let mut found: BTreeMap<SegNo, (TimelineId, bool, PathBuf)> = BTreeMap::new();
    for entry in fs::read_dir(dir).at("read directory", dir)? {
        let entry = entry.at("read directory", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (seg, complete) = match WalFileName::parse(name, size) {
            Ok(WalFileName::Segment(s)) => (s, true),
            Ok(WalFileName::Partial(s)) => (s, false),
            _ => continue,
        };
        if seg.timeline > timeline {
            continue;
        }
        let better = match found.get(&seg.segno) {
            None => true,
            Some((t, c, _)) => (seg.timeline, complete) > (*t, *c),
        };
        if better {
            found.insert(seg.segno, (seg.timeline, complete, entry.path()));
        }
    }
    Ok(found.into_iter().map(|(s, (_, _, p))| (s, p)).collect())
}

/// The path of a segment in a WAL directory.
pub fn segment_path(dir: &Path, timeline: TimelineId, segno: SegNo, size: SegmentSize) -> PathBuf {
    dir.join(SegmentName::new(timeline, segno).file_name(size))
}
