//! The WAL writer: appends records in PostgreSQL 15's layout into memory
//! (as PostgreSQL's WAL buffers do), and makes them durable with group
//! commit: one `pwrite` + `fdatasync` of preallocated segment files serves
//! every record appended before it. Readers map the segment files
//! (`segment::SegmentData`) and see everything flushed.
//!
//! Invariants:
//! - `flushed <= insert position`: every byte below `flushed` is durable;
//!   the bytes from `flushed` to the insert position are in `pending`.
//! - Records are appended under one insert lock, so the stream is a single
//!   chain of prev-links; the bytes below the insert position are complete.
//! - Segments are zero-filled under a temporary name and renamed into place
//!   before they are written, so a flush needs only an fdatasync (data,
//!   never metadata).
//! - After a failed flush the writer is poisoned: every later call fails and
//!   nothing more is acknowledged (the kernel may have dropped the pages).
//! - On open, the writer resumes exactly at the end of valid WAL and zeroes
//!   everything after it before writing, so stale bytes can never be read as
//!   a continuation of new WAL; what held data there (damage, not a clean
//!   end) is first kept in `wal/discarded/` (see [`discard_after`]).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::decoder::{Decoder, EndOfWal, EndReason, Expect, Record};
use super::error::WalError;
use super::format::{
    LongHeader, PageHeader, RecordParts, LONG_PAGE_HEADER, MAX_RECORD_LEN, PAGE_MAGIC, PAGE_SIZE,
    RECORD_HEADER, RM_XLOG_ID, SHORT_PAGE_HEADER, XLOG_SWITCH, XLP_BKP_REMOVABLE,
    XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
};
use super::history::TimelineHistory;
use super::lsn::{Lsn, SegNo, SegmentSize, TimelineId};
use super::reader::{walk, SegmentFiles, WalkEnd};
use super::segment::SegmentData;
use super::segment::{self, OpenSegment};
use super::verify::LastRecord;
use crate::durable::{self, DirLock, FileError, IoContext};

/// Appended bytes held in memory beyond which an append flushes them itself
/// (with `synchronous_commit = off` nothing else may flush for a while).
const MAX_PENDING: usize = 16 << 20;

/// The longest a flusher waits for the committers the last flush woke (a
/// slow disk's long flush must not make the next commit wait as long).
const MAX_REJOIN_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// How long a parked committer sleeps before it looks again by itself.
const LOST_WAKEUP_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The subdirectory of a WAL directory where archiving state lives
/// (PostgreSQL's `pg_wal/archive_status`).
pub const ARCHIVE_STATUS_DIR: &str = "archive_status";

/// What a writer needs to know about the cluster.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// The WAL directory (a node's `wal/`).
    pub dir: PathBuf,
    pub seg_size: SegmentSize,
    pub system_id: u64,
    pub timeline: TimelineId,
    /// Mark each segment `archive_status/SEGNAME.ready` once it is complete
    /// and durable, as PostgreSQL does with `archive_mode = on`.
    pub mark_ready: bool,
}

/// Where an appended record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The record's LSN (where its header begins).
    pub lsn: Lsn,
    /// Where the record ends (MAXALIGNed); flush up to here to make it
    /// durable. The next record begins here, except after a segment switch,
    /// which leaves the rest of its segment empty.
    pub end: Lsn,
}

/// What the writer found when it opened the directory.
#[derive(Clone, Debug)]
pub struct Resumed {
    /// Where the next record goes (past a page header when it begins a page).
    pub end: Lsn,
    /// The last valid record, if any.
    pub last_record: Option<Lsn>,
    /// Valid records found from the scan's start.
    pub records: u64,
    /// Why the scan stopped, and in which file, when it found anything but
    /// the end of the last segment.
    pub stopped_by: Option<(EndOfWal, PathBuf)>,
    /// Where what lay past the end of valid WAL is kept, when it was
    /// anything but zeros or a recycled segment's leftovers (see
    /// [`discard_after`]).
    pub discarded: Option<PathBuf>,
    /// The segment the last record runs on into, when that file is
    /// missing: never a torn write (a segment file exists, durably,
    /// before a byte of a record goes into it), so it was removed or lost.
    pub missing: Option<PathBuf>,
}

/// The subdirectory of the WAL directory where [`discard_after`] keeps
/// what it would otherwise destroy.
pub const DISCARDED_DIR: &str = "discarded";

/// See the module documentation.
pub struct WalWriter {
    config: WriterConfig,
    insert: Mutex<Insert>,
    flushed: AtomicU64,
    /// Everything below this LSN is in the files (handed to the OS), if not
    /// yet durable: at or past `flushed`.
    written: AtomicU64,
    poisoned: AtomicBool,
    /// The timeline new WAL is written on (the insert state's, readable
    /// without its lock). Changed before any WAL of the new timeline is
    /// appended, so a reader that loads `flushed` and then this sees the
    /// timeline of every byte below what it loaded.
    current_timeline: std::sync::atomic::AtomicU32,
    /// Whether completed segments are marked for the archiver: from the
    /// config at open, switched on when a standby is promoted.
    mark_ready: AtomicBool,
    /// Who flushes and who waits for a flush (committers); the condition
    /// variable is signalled whenever a flush ends (`flushed` advanced, or
    /// the writer is poisoned), for walsenders.
    flushed_signal: (Mutex<FlushState>, Condvar),
    _lock: DirLock,
}

/// Group commit's bookkeeping, under one mutex.
///
/// Invariant: a committer that finds a flush under way and its record not
/// yet durable registers here and parks; the flusher, when done, unparks
/// (and removes) every registered committer its flush covered, and one
/// that it did not, to take the next flush. So a committer wakes once,
/// when it has something to do, however many share the writer.
///
/// A flusher first lets the committers the last flush woke append again
/// (until as many are registered, for at most half the last flush's time
/// and never over [`MAX_REJOIN_WAIT`]),
/// so that one `fdatasync` serves them too: PostgreSQL's `commit_delay`,
/// sized by the writer itself. A lone committer never waits.
#[derive(Default)]
struct FlushState {
    flushing: bool,
    /// Each parked caller: the LSN it waits for, whether it waits for that
    /// to be durable (a flush) or only written ([`WalWriter::write_all`]).
    waiting: Vec<(Lsn, bool, std::thread::Thread)>,
    /// How many committers wait once the ones the last flush covered (and
    /// woke) are back with their next records.
    rejoining: usize,
    /// How long the last flush took.
    last_flush: std::time::Duration,
}

struct Insert {
    /// The next byte to write. Always MAXALIGNed between appends.
    pos: Lsn,
    /// The last record's LSN.
    prev: Lsn,
    /// Where the record after the last complete one may begin: `pos`,
    /// except on a standby that holds the first part of a record whose
    /// rest has not arrived (see [`WalWriter::discard_partial_record`]).
    complete: Lsn,
    /// Open segments, contiguous: the oldest may hold unflushed bytes, the
    /// newest is where `pos` falls (or about to be).
    segments: VecDeque<Arc<OpenSegment>>,
    /// Appended bytes not yet written to the files, as runs of contiguous
    /// bytes (a segment switch starts a new run), in LSN order.
    pending: Vec<(Lsn, Vec<u8>)>,
    /// Bytes in `pending`.
    pending_bytes: usize,
    /// The following segment's file, being zero-filled in the background.
    preallocating: Option<(SegNo, JoinHandle<Result<(), FileError>>)>,
    /// The timeline new WAL is written on (page headers, file names).
    timeline: TimelineId,
}

thread_local! {
    /// A record that does not fit in the rest of the current page (or
    /// begins a page) is laid out here whole, then copied in page by page.
    static RECORD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl WalWriter {
    /// Locks the WAL directory and resumes at the end of its valid WAL:
    /// scanned from `scan_from` (the LSN of a record known to be valid, such
    /// as a checkpoint's redo point) or, when `None`, from the start of the
    /// oldest segment. An empty directory starts at segment 1, as
    /// PostgreSQL does. Every valid record the scan passes is shown to
    /// `visit` (crash recovery replays them), in order.
    pub fn open(
        config: WriterConfig,
        scan_from: Option<Lsn>,
        visit: &mut dyn FnMut(&Record<'_>),
    ) -> Result<(WalWriter, Resumed), WalError> {
        let lock = DirLock::acquire(&config.dir)?;
        let size = config.seg_size;
        let files = SegmentFiles {
            size,
            files: segment::list_segments_upto(&config.dir, size, config.timeline)?
                .into_iter()
                .filter(|(_, p)| p.extension().is_none())
                .collect(),
        };
        let expect = Expect {
            sysid: Some(config.system_id),
            max_timeline: Some(config.timeline.get()),
        };
        let first = files.files.keys().next().copied();
        let (resumed, prev) = match (scan_from, first) {
            // Recovery must begin at `from`, and no segment is there at
            // all: starting a fresh WAL would drop every commit since.
            (Some(from), None) => {
                return Err(WalError::StartMissing {
                    path: segment::segment_path(
                        &config.dir,
                        config.timeline,
                        from.segno(size),
                        size,
                    ),
                    lsn: from,
                })
            }
            (None, None) => (
                Resumed {
                    end: Lsn(SegNo(1).start_lsn(size).0 + LONG_PAGE_HEADER as u64),
                    last_record: None,
                    records: 0,
                    stopped_by: None,
                    discarded: None,
                    missing: None,
                },
                Lsn::INVALID,
            ),
            (from, Some(first)) => {
                let mut decoder = match from {
                    Some(lsn) => Decoder::at_record(size, lsn, None, expect),
                    None => Decoder::at_page_start(size, first.start_lsn(size), expect),
                };
                let mut last = None;
                let mut missing = None;
                let mut end = decoder.pos();
                let mut records = 0;
                let outcome = walk(&files, &mut decoder, None, |r| {
                    visit(r);
                    last = Some(r.lsn);
                    end = r.end;
                    records += 1;
                    ControlFlow::Continue(())
                })?;
                // Resume where the next record would have begun: after the
                // last valid record, or at the first invalid one (which may
                // be the very first: a torn first append is overwritten).
                let stopped_by = match outcome {
                    // The record recovery must start from is in a segment
                    // that is not there: resuming anywhere would drop
                    // everything after it (and zero what it overwrote).
                    WalkEnd::MissingSegment { segno, lsn } if last.is_none() && from.is_some() => {
                        // The timeline that wrote the segment's end: in the
                        // segment of a switch, the new timeline's copy is
                        // the one readers take.
                        let last_byte = Lsn(segno.next().start_lsn(size).0 - 1);
                        let timeline = timeline_holding(&config.dir, config.timeline, last_byte);
                        return Err(WalError::StartMissing {
                            path: segment::segment_path(&config.dir, timeline, segno, size),
                            lsn,
                        });
                    }
                    WalkEnd::EndOfWal { end: eow, path } => {
                        end = eow.lsn;
                        Some((eow, path))
                    }
                    WalkEnd::MissingSegment { segno, .. } if !decoder.at_record_boundary() => {
                        let timeline = timeline_holding(
                            &config.dir,
                            config.timeline,
                            Lsn(segno.next().start_lsn(size).0 - 1),
                        );
                        missing = Some(segment::segment_path(&config.dir, timeline, segno, size));
                        None
                    }
                    _ => {
                        if last.is_none() {
                            end = decoder.next_record_lsn();
                        }
                        None
                    }
                };
                // Resuming exactly at `from` with no record there (a
                // rejoined node's relabelled checkpoint at its switch
                // point): the next record's prev-link is the record that
                // ends there, found by walking up to it.
                let prev = match (last, from) {
                    (Some(l), _) => l,
                    (None, Some(at)) if end == at => {
                        record_before(&files, expect, first, at)?.unwrap_or(Lsn::INVALID)
                    }
                    _ => Lsn::INVALID,
                };
                (
                    Resumed {
                        end,
                        last_record: last,
                        records,
                        stopped_by,
                        discarded: None,
                        missing,
                    },
                    prev,
                )
            }
        };
        // A page header followed by nothing may not have been written (the
        // page was never reached, or only zeros follow it): resume at the
        // page's start so the header is written (again) with the next record.
        let mut resumed = resumed;
        let page = Lsn(resumed.end.0 - resumed.end.page_offset());
        let header = page_header_len(size, page) as u64;
        let pos = match resumed.end.page_offset() {
            0 => {
                resumed.end.0 += header;
                page
            }
            off if off == header => page,
            _ => resumed.end,
        };
        let ended_by = resumed.stopped_by.as_ref().map(|(e, _)| e);
        resumed.discarded = discard_after(&config, &files, pos, ended_by)?;
        let writer = WalWriter {
            flushed: AtomicU64::new(pos.0),
            written: AtomicU64::new(pos.0),
            insert: Mutex::new(Insert {
                pos,
                prev,
                complete: pos,
                segments: VecDeque::new(),
                pending: Vec::new(),
                pending_bytes: 0,
                preallocating: None,
                timeline: config.timeline,
            }),
            poisoned: AtomicBool::new(false),
            current_timeline: config.timeline.get().into(),
            mark_ready: AtomicBool::new(config.mark_ready),
            flushed_signal: (Mutex::new(FlushState::default()), Condvar::new()),
            config,
            _lock: lock,
        };
        {
            let mut ins = writer.lock_insert();
            writer.map_segment(&mut ins, pos.segno(size))?;
        }
        Ok((writer, resumed))
    }

    fn lock_insert(&self) -> MutexGuard<'_, Insert> {
        // A panic while holding the lock cannot leave bytes below `pos`
        // incomplete (pos moves only after a copy), so the state is usable.
        self.insert.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An error once a failed flush has poisoned the writer.
    pub(crate) fn check_poisoned(&self) -> Result<(), WalError> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(WalError::Poisoned(self.flushed_lsn()))
        } else {
            Ok(())
        }
    }

    /// Everything below this LSN is durable.
    pub fn flushed_lsn(&self) -> Lsn {
        Lsn(self.flushed.load(Ordering::Acquire))
    }

    /// Everything below this LSN is in the files, durable or not.
    pub fn written_lsn(&self) -> Lsn {
        Lsn(self.written.load(Ordering::Acquire))
    }

    /// `lsn`, or the end of the last complete record if that is earlier:
    /// what a standby reports to its upstream. A commit's record is
    /// complete, so this never holds one back; and the upstream keeps the
    /// WAL from there, which is where the standby asks for it again if the
    /// stream breaks off mid-record (see
    /// [`WalWriter::discard_partial_record`]).
    pub fn reportable(&self, lsn: Lsn) -> Lsn {
        lsn.min(self.complete_lsn())
    }

    /// Where the last complete record ends: the insert position, except
    /// on a standby that holds the first part of a record whose rest has
    /// not arrived (see [`WalWriter::partial_record`]).
    pub fn complete_lsn(&self) -> Lsn {
        self.lock_insert().complete
    }

    /// Where the next byte will be written (possibly a page boundary,
    /// before the next page's header).
    pub fn insert_lsn(&self) -> Lsn {
        self.lock_insert().pos
    }

    /// Where the next record will begin (past a page header).
    pub fn next_record_lsn(&self) -> Lsn {
        self.record_start(self.lock_insert().pos)
    }

    /// Appends one record whose main data is `data`, under resource manager
    /// `rmid` with kind `info`. Returns where it landed; it is durable once
    /// [`WalWriter::flush`] up to `end` returns.
    pub fn append(&self, rmid: u8, info: u8, xid: u32, data: &[u8]) -> Result<Appended, WalError> {
        if data.len() + RECORD_HEADER + 5 > MAX_RECORD_LEN as usize {
            return Err(WalError::RecordTooLarge(data.len()));
        }
        self.insert_record(&RecordParts::new(xid, info, rmid, data), false)
    }

    /// The last complete record's LSN (the prev-link of the next one).
    pub fn last_record_lsn(&self) -> Lsn {
        self.lock_insert().prev
    }

    /// Writes WAL received from an upstream server at the insert position,
    /// byte for byte (page headers included), as a standby's walreceiver
    /// does; it is durable once [`WalWriter::flush`] returns. The caller
    /// has verified the bytes; `last_record` is the last complete record
    /// among everything written so far.
    pub fn write_received(
        &self,
        at: Lsn,
        bytes: &[u8],
        last_record: LastRecord,
    ) -> Result<(), WalError> {
        let mut ins = self.lock_insert();
        self.check_poisoned()?;
        if at != ins.pos {
            return Err(WalError::NotContiguous { at, local: ins.pos });
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let size = self.config.seg_size;
        let last = Lsn(at.0 + bytes.len() as u64 - 1).segno(size);
        let mut segno = at.segno(size);
        while segno <= last {
            if !ins.segments.iter().any(|s| s.start.segno(size) == segno) {
                self.map_segment(&mut ins, segno)?;
            }
            segno = segno.next();
        }
        push_pending(&mut ins, bytes);
        ins.prev = last_record.lsn;
        ins.complete = ins.complete.max(last_record.next);
        Ok(())
    }

    /// The first part of a record whose rest has not arrived (a standby's
    /// stream, or the last segment it restored, broke off in it): where
    /// the record begins and its bytes so far, read back from the files
    /// once they are flushed. `None` when the WAL ends at a complete
    /// record.
    pub fn partial_record(&self) -> Result<Option<(Lsn, Vec<u8>)>, WalError> {
        let (complete, pos) = {
            let ins = self.lock_insert();
            (ins.complete, ins.pos)
        };
        if complete >= pos {
            return Ok(None);
        }
        Ok(Some((complete, self.read_back(complete, pos)?)))
    }

    /// The WAL bytes from `from` to `to` (below the insert position), read
    /// back from the files once they are flushed.
    pub fn read_back(&self, from: Lsn, to: Lsn) -> Result<Vec<u8>, WalError> {
        self.flush_all()?;
        let size = self.config.seg_size;
        let timeline = self.timeline();
        let files = segment::list_segments_upto(&self.config.dir, size, timeline)?;
        let mut bytes = Vec::with_capacity(to.0.saturating_sub(from.0) as usize);
        let mut at = from;
        while at < to {
            let segno = at.segno(size);
            let Some(path) = files.get(&segno) else {
                let path = segment::segment_path(&self.config.dir, timeline, segno, size);
                let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
                return Err(FileError::new("read back WAL", &path, gone).into());
            };
            let data = SegmentData::open(path, size)?;
            let upto = to.min(segno.next().start_lsn(size));
            let offset = at.segment_offset(size) as usize;
            bytes.extend_from_slice(&data[offset..offset + (upto.0 - at.0) as usize]);
            at = upto;
        }
        Ok(bytes)
    }

    /// Forgets the first part of a record whose rest never arrived (a
    /// standby whose upstream stopped mid-record): the insert position goes
    /// back to where the last complete record ends, so that what comes next
    /// — the whole record again, from a new stream, or a new timeline's
    /// first record — begins there. PostgreSQL likewise ends recovery, and
    /// restarts streaming, at the end of the last valid record. The bytes
    /// past it stay on disk until they are overwritten; no reader takes
    /// them for WAL, as they are no complete record. Returns the insert
    /// position.
    pub fn discard_partial_record(&self) -> Result<Lsn, WalError> {
        let mut ins = loop {
            self.flush_all()?;
            let ins = self.lock_insert();
            self.check_poisoned()?;
            if ins.pending.is_empty() {
                break ins;
            }
        };
        if ins.complete < ins.pos {
            tracing::info!(
                from = %ins.complete,
                to = %ins.pos,
                "discarding the first part of a record whose rest never arrived"
            );
            ins.pos = ins.complete;
            self.flushed.fetch_min(ins.complete.0, Ordering::AcqRel);
            self.written.fetch_min(ins.complete.0, Ordering::AcqRel);
            // The open segments run up to the old position; reopen from
            // the new one's, which the last flush may have closed.
            ins.segments.clear();
            let segno = ins.pos.segno(self.config.seg_size);
            self.map_segment(&mut ins, segno)?;
        }
        Ok(ins.pos)
    }

    /// Continues the WAL on timeline `new` from the insert position, as a
    /// promotion does (PostgreSQL's `XLogInitNewTimeline`): the segment
    /// holding the switch point is copied under the new timeline's name
    /// (its bytes before the switch point; zeros after), and everything
    /// from here on is written there, with the new timeline in its page
    /// headers. The old timeline's files stay as they are. Returns the
    /// switch point.
    pub fn switch_timeline(&self, new: TimelineId) -> Result<Lsn, WalError> {
        self.flush_all()?;
        let mut ins = self.lock_insert();
        self.check_poisoned()?;
        let size = self.config.seg_size;
        let pos = ins.pos;
        let segno = pos.segno(size);
        let old = ins.timeline;
        if new <= old {
            return Ok(pos);
        }
        let off = pos.segment_offset(size) as usize;
        let old_path = segment::segment_path(&self.config.dir, old, segno, size);
        let new_path = segment::segment_path(&self.config.dir, new, segno, size);
        if let Some((_, handle)) = ins.preallocating.take() {
            let _ = handle.join();
        }
        let old_spare = spare_path(&segment::segment_path(
            &self.config.dir,
            old,
            segno.next(),
            size,
        ));
        // The old timeline's zero-filled spare becomes the new timeline's
        // segment: it is the old segment up to the switch point, zeros
        // after, so only that head is written, not a whole segment. Until
        // the head is durable the file keeps a spare's name.
        let new_spare = spare_path(&new_path);
        if old_spare.exists() {
            durable::rename(&old_spare, &new_spare)?;
        }
        if off > 0 {
            let mut head = vec![0; off];
            std::fs::File::open(&old_path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .at("read", &old_path)?;
            if !new_spare.exists() {
                segment::create_zeroed(&new_spare, size)?;
            }
            durable::write_head(&new_spare, &head)?;
            durable::rename(&new_spare, &new_path)?;
        }
        ins.segments.clear();
        ins.timeline = new;
        self.current_timeline.store(new.get(), Ordering::Release);
        self.map_segment(&mut ins, segno)?;
        Ok(pos)
    }

    /// Ends the current segment with an `XLOG_SWITCH` record, as
    /// `pg_switch_wal()` does, so the next record begins the next segment.
    /// Returns where the switch record ends, as PostgreSQL's does (the
    /// insert position, unchanged, when the current segment holds no WAL
    /// yet: nothing is written).
    pub fn switch_segment(&self) -> Result<Lsn, WalError> {
        let Appended { lsn, end } =
            self.insert_record(&RecordParts::new(0, XLOG_SWITCH, RM_XLOG_ID, &[]), true)?;
        if lsn == Lsn::INVALID || end.page_offset() != 0 {
            return Ok(end);
        }
        // A record that ends on a page boundary ends, as PostgreSQL counts
        // it, after the next page's header (XLogInsertRecord).
        let header = if end.segment_offset(self.config.seg_size) == 0 {
            LONG_PAGE_HEADER
        } else {
            SHORT_PAGE_HEADER
        };
        Ok(Lsn(end.0 + header as u64))
    }

    /// Links, seals and copies in one record under the insert lock. A
    /// `switch` record also moves the insert position to the next segment;
    /// in an empty segment it is not written at all.
    #[inline]
    fn insert_record(&self, record: &RecordParts<'_>, switch: bool) -> Result<Appended, WalError> {
        let size = self.config.seg_size;
        let mut ins = self.lock_insert();
        self.check_poisoned()?;
        if switch && ins.pos.segment_offset(size) == 0 {
            // Nothing written: no record, so no LSN.
            return Ok(Appended {
                lsn: Lsn::INVALID,
                end: ins.pos,
            });
        }
        let len = record.total_len();
        let padded = Lsn(len as u64).align().0 as usize;
        let page_offset = ins.pos.page_offset() as usize;
        let lsn = if page_offset != 0 && page_offset + padded <= PAGE_SIZE {
            // Most records: they fit, padding and all, in the page being
            // written, whose segment is open (it holds the page's first
            // bytes). Written straight into the pending run.
            let (lsn, prev) = (ins.pos, ins.prev);
            let run = pending_run(&mut ins);
            record.write_to(prev, run, padded);
            advance(&mut ins, padded);
            lsn
        } else {
            let lsn = self.record_start(ins.pos);
            self.reserve(&mut ins, len)?;
            RECORD.with(|cell| {
                let mut whole = cell.borrow_mut();
                whole.clear();
                record.write_to(ins.prev, &mut whole, len);
                self.copy_in(&mut ins, &whole);
            });
            let pad = (ins.pos.align().0 - ins.pos.0) as usize;
            push_pending(&mut ins, &[0; 8][..pad]);
            lsn
        };
        ins.prev = lsn;
        let end = ins.pos;
        if switch && ins.pos.segment_offset(size) != 0 {
            // The rest of the segment stays as it is on disk: zeros.
            ins.pos = ins.pos.segno(size).next().start_lsn(size);
        }
        ins.complete = ins.pos;
        let appended = Appended { lsn, end };
        let backlog = ins.pending_bytes;
        drop(ins);
        if backlog > MAX_PENDING {
            self.flush(appended.end)?;
        }
        Ok(appended)
    }

    /// The timeline new WAL is written on.
    pub fn timeline(&self) -> TimelineId {
        TimelineId::new(self.current_timeline.load(Ordering::Acquire)).unwrap_or(TimelineId::FIRST)
    }

    /// Starts marking completed segments for the archiver (a promoted
    /// standby with `archive_mode = on`): every segment completed from now
    /// on, the one in progress included.
    pub fn start_marking_ready(&self) {
        self.mark_ready.store(true, Ordering::Release);
    }

    fn page_header_len(&self, page: Lsn) -> usize {
        page_header_len(self.config.seg_size, page)
    }

    fn record_start(&self, pos: Lsn) -> Lsn {
        if pos.page_offset() == 0 {
            Lsn(pos.0 + self.page_header_len(pos) as u64)
        } else {
            pos
        }
    }

    /// Opens every segment a record of `len` bytes written at the insert
    /// position will touch, before a byte of it is written: a failure here
    /// (a full disk) leaves the WAL as it was.
    fn reserve(&self, ins: &mut Insert, len: usize) -> Result<(), WalError> {
        let mut pos = ins.pos;
        let mut left = len;
        while left > 0 {
            if pos.page_offset() == 0 {
                pos.0 += self.page_header_len(pos) as u64;
            }
            let n = left.min(PAGE_SIZE - pos.page_offset() as usize);
            pos.0 += n as u64;
            left -= n;
        }
        let last = Lsn(pos.0 - 1).segno(self.config.seg_size);
        let mut segno = ins.pos.segno(self.config.seg_size);
        while segno <= last {
            if !ins
                .segments
                .iter()
                .any(|s| s.start.segno(self.config.seg_size) == segno)
            {
                self.map_segment(ins, segno)?;
            }
            segno = segno.next();
        }
        Ok(())
    }

    /// Copies record bytes at the insert position into `pending`, adding
    /// page headers as pages begin. [`WalWriter::reserve`] has opened every
    /// segment the bytes fall in.
    fn copy_in(&self, ins: &mut Insert, bytes: &[u8]) {
        let size = self.config.seg_size;
        let mut done = 0;
        while done < bytes.len() {
            let pos = ins.pos;
            if pos.page_offset() == 0 {
                let long = (pos.segment_offset(size) == 0).then_some(LongHeader {
                    sysid: self.config.system_id,
                    seg_size: size.as_u32(),
                    blcksz: PAGE_SIZE as u32,
                });
                let cont = done > 0;
                let header = PageHeader {
                    magic: PAGE_MAGIC,
                    info: XLP_BKP_REMOVABLE
                        | if long.is_some() { XLP_LONG_HEADER } else { 0 }
                        | if cont { XLP_FIRST_IS_CONTRECORD } else { 0 },
                    tli: ins.timeline.get(),
                    pageaddr: pos,
                    rem_len: if cont { (bytes.len() - done) as u32 } else { 0 },
                    long,
                };
                let mut buf = [0u8; LONG_PAGE_HEADER];
                header.encode(&mut buf);
                push_pending(ins, &buf[..header.size()]);
            }
            let room = PAGE_SIZE - ins.pos.page_offset() as usize;
            let n = room.min(bytes.len() - done);
            push_pending(ins, &bytes[done..done + n]);
            done += n;
        }
    }

    /// Opens segment `segno`, creating it if absent, and starts zero-filling
    /// a spare for the one after it in the background.
    ///
    /// Spares live under a name no WAL reader takes for a segment
    /// (`SEGNAME.next`), so a file with a segment's name always holds WAL:
    /// pg_waldump and the archiver never meet an all-zero "segment".
    fn map_segment(&self, ins: &mut Insert, segno: SegNo) -> Result<(), WalError> {
        let size = self.config.seg_size;
        let path = segment::segment_path(&self.config.dir, ins.timeline, segno, size);
        if let Some((pending, handle)) = ins.preallocating.take() {
            let result = handle.join().unwrap_or_else(|_| {
                Err(FileError::new(
                    "zero-fill",
                    &path,
                    std::io::Error::other("preallocation thread panicked"),
                ))
            });
            // A failed spare is no failure of this segment: it is made below.
            if pending != segno {
                result.ok();
            }
        }
        if !path.exists() {
            let spare = spare_path(&path);
            if spare.exists() {
                durable::rename(&spare, &path)?;
            } else {
                segment::create_zeroed(&path, size)?;
            }
        }
        let seg = Arc::new(OpenSegment::open(&path, segno, size)?);
        ins.segments.push_back(seg);
        let next = segno.next();
        let next_spare = spare_path(&segment::segment_path(
            &self.config.dir,
            ins.timeline,
            next,
            size,
        ));
        if !next_spare.exists() {
            let handle = std::thread::Builder::new()
                .name("wal-prealloc".into())
                .spawn(move || segment::create_zeroed(&next_spare, size))
                .at("start preallocation thread for", &path)?;
            ins.preallocating = Some((next, handle));
        }
        Ok(())
    }

    /// Makes every record that ends at or before `upto` durable, and
    /// returns the LSN below which everything now is.
    ///
    /// Group commit: one caller at a time writes and syncs everything
    /// appended so far, so one `fdatasync` serves every record appended
    /// before it began. The others park until a flush covers their record
    /// or it is their turn to flush (see [`FlushState`]): waking only those
    /// a flush concerns, rather than every waiter after every flush, keeps
    /// 32 committers on 2 CPUs from spending their time in the scheduler.
    pub fn flush(&self, upto: Lsn) -> Result<Lsn, WalError> {
        self.write_or_flush(upto, true)
    }

    /// Hands everything appended so far to the files without waiting for
    /// it to be durable, and returns the LSN below which everything is
    /// written. A standby reports that as its write position before it
    /// syncs, as PostgreSQL's walreceiver does, so that commits waiting for
    /// `remote_write` do not wait for the standby's disk. A later
    /// [`WalWriter::flush`] syncs it.
    pub fn write_all(&self) -> Result<Lsn, WalError> {
        let pos = self.insert_lsn();
        self.write_or_flush(pos, false)
    }

    /// [`WalWriter::flush`] (`sync`) or [`WalWriter::write_all`]: either
    /// way one caller at a time writes, so nothing is called durable while
    /// another caller is still writing what lies below it.
    fn write_or_flush(&self, upto: Lsn, sync: bool) -> Result<Lsn, WalError> {
        let reached = || {
            if sync {
                self.flushed_lsn()
            } else {
                self.written_lsn()
            }
        };
        self.check_poisoned()?;
        if reached() >= upto {
            return Ok(reached());
        }
        let me = std::thread::current();
        let mut state = self.lock_flush_state();
        loop {
            self.check_poisoned()?;
            let done = reached();
            if done >= upto {
                return Ok(done);
            }
            if !state.flushing {
                state.flushing = true;
                let deadline =
                    std::time::Instant::now() + (state.last_flush / 2).min(MAX_REJOIN_WAIT);
                while sync
                    && state.waiting.len() < state.rejoining
                    && std::time::Instant::now() < deadline
                {
                    drop(state);
                    std::thread::yield_now();
                    state = self.lock_flush_state();
                }
                break;
            }
            // Registered once: a spurious wake-up finds itself still there.
            if !state.waiting.iter().any(|(_, _, t)| t.id() == me.id()) {
                state.waiting.push((upto, sync, me.clone()));
            }
            drop(state);
            // Woken when covered or it is this caller's turn to flush; the
            // timeout only bounds the wait should a wake-up ever go astray
            // (the loop then looks again, and takes a free flusher's role).
            std::thread::park_timeout(LOST_WAKEUP_RECHECK);
            // Covered: done, without queueing on the lock behind the others.
            if reached() >= upto {
                self.check_poisoned()?;
                return Ok(reached());
            }
            state = self.lock_flush_state();
        }
        drop(state);
        // Whatever happens in write_out (an error, even a panic), the next
        // flusher must be let in and the waiters woken.
        struct Done<'a>(&'a WalWriter, std::time::Instant, bool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let writer = self.0;
                // A panic part-way may have taken appended bytes out of the
                // pending runs without writing them: nothing after them may
                // ever be called durable.
                if std::thread::panicking() {
                    writer.poisoned.store(true, Ordering::Release);
                }
                let flushed = writer.flushed_lsn();
                let written = writer.written_lsn();
                let all = writer.poisoned.load(Ordering::Acquire);
                let mut state = writer.lock_flush_state();
                state.flushing = false;
                if self.2 {
                    state.last_flush = self.1.elapsed();
                }
                let mut wake = Vec::new();
                let mut next_flusher = false;
                state.waiting.retain(|(upto, sync, t)| {
                    let covered = all || *upto <= if *sync { flushed } else { written };
                    if covered || !next_flusher {
                        next_flusher |= !covered;
                        wake.push(t.clone());
                        return false;
                    }
                    true
                });
                // Those still waiting, and the covered ones once they are back.
                state.rejoining = state.waiting.len() + wake.len() - usize::from(next_flusher);
                drop(state);
                for t in wake {
                    t.unpark();
                }
                writer.flushed_signal.1.notify_all();
            }
        }
        let _done = Done(self, std::time::Instant::now(), sync);
        self.write_out(sync)
    }

    fn lock_flush_state(&self) -> MutexGuard<'_, FlushState> {
        self.flushed_signal
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Writes everything appended so far and, with `sync`, makes it
    /// durable; the caller is the only one doing either.
    fn write_out(&self, sync: bool) -> Result<Lsn, WalError> {
        let (target, pending, segments) = {
            let mut ins = self.lock_insert();
            ins.pending_bytes = 0;
            (
                ins.pos,
                std::mem::take(&mut ins.pending),
                ins.segments.iter().cloned().collect::<Vec<_>>(),
            )
        };
        for (start, bytes) in &pending {
            let mut at = *start;
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let Some(seg) = segments.iter().find(|s| s.start <= at && at < s.end()) else {
                    unreachable!("reserve() opened the segment for {at}")
                };
                let n = rest.len().min((seg.end().0 - at.0) as usize);
                if let Err(e) = seg.write_at(at, &rest[..n]) {
                    self.poisoned.store(true, Ordering::Release);
                    return Err(FileError::new("write", &seg.path, e).into());
                }
                at.0 += n as u64;
                rest = &rest[n..];
            }
        }
        self.written.fetch_max(target.0, Ordering::AcqRel);
        if !sync {
            return Ok(target);
        }
        // Every open segment holding bytes not yet durable: written just
        // now, or by a write without sync before (segments are closed only
        // once durable, so those are still open).
        let flushed = self.flushed_lsn();
        for seg in segments
            .iter()
            .filter(|s| s.end() > flushed && s.start < target)
        {
            let began = std::time::Instant::now();
            let synced = seg.sync();
            crate::metrics::FSYNC_LATENCY.observe(began.elapsed());
            if let Err(e) = synced {
                self.poisoned.store(true, Ordering::Release);
                return Err(FileError::new("fdatasync", &seg.path, e).into());
            }
        }
        let mut done = Vec::new();
        {
            let mut ins = self.lock_insert();
            // Never the segment the insert position is in, even should it
            // have gone back below `target` meanwhile
            // (`discard_partial_record` on a standby).
            let closed = target.min(ins.pos);
            while ins.segments.front().is_some_and(|s| s.end() <= closed) {
                done.extend(ins.segments.pop_front());
            }
        }
        // The WAL is durable whatever happens here: a failure to mark a
        // segment is reported loudly, never as a failed flush.
        if self.mark_ready.load(Ordering::Acquire) {
            for seg in done {
                if let Err(e) = self.mark_ready(&seg) {
                    tracing::error!(
                        "could not mark {} ready for archiving: {e}; create its .ready file by hand once the problem is fixed",
                        seg.path.display()
                    );
                }
            }
        }
        // Published last: whoever sees a segment's end flushed (a
        // pg_switch_wal() whose flush another thread did) finds it marked.
        self.flushed.store(target.0, Ordering::Release);
        Ok(target)
    }

    /// Creates `archive_status/SEGNAME.ready` for a complete, durable segment.
    fn mark_ready(&self, seg: &OpenSegment) -> Result<(), WalError> {
        let name = seg
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(mark_ready(&self.config.dir, &name)?)
    }

    /// Waits until the flushed position passes `after`, or `timeout`
    /// elapses; returns the flushed position either way.
    pub fn wait_flushed_beyond(&self, after: Lsn, timeout: std::time::Duration) -> Lsn {
        let g = self.lock_flush_state();
        if self.flushed_lsn() > after {
            return self.flushed_lsn();
        }
        let _ = self.flushed_signal.1.wait_timeout(g, timeout);
        self.flushed_lsn()
    }

    /// Flushes everything appended so far.
    pub fn flush_all(&self) -> Result<Lsn, WalError> {
        let pos = self.insert_lsn();
        self.flush(pos)
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        if let Some((_, handle)) = self.lock_insert().preallocating.take() {
            let _ = handle.join();
        }
    }
}

/// Appends bytes at the insert position to `pending` and advances it.
fn push_pending(ins: &mut Insert, bytes: &[u8]) {
    pending_run(ins).extend_from_slice(bytes);
    advance(ins, bytes.len());
}

/// The pending run that ends at the insert position, started if there is
/// none. Whatever is appended to it must then be passed to [`advance`].
#[inline(always)]
fn pending_run(ins: &mut Insert) -> &mut Vec<u8> {
    let pos = ins.pos;
    let contiguous =
        matches!(ins.pending.last(), Some((start, run)) if start.0 + run.len() as u64 == pos.0);
    if !contiguous {
        ins.pending.push((pos, Vec::with_capacity(64 << 10)));
    }
    let last = ins.pending.len() - 1;
    &mut ins.pending[last].1
}

/// Moves the insert position past `n` bytes just added to the pending run.
fn advance(ins: &mut Insert, n: usize) {
    ins.pending_bytes += n;
    ins.pos.0 += n as u64;
}

/// The timeline that wrote the byte at `lsn`, by the history file of
/// `current` in `dir`: an older one for WAL from before a promotion, else
/// `current` (also when the history cannot be read).
fn timeline_holding(dir: &Path, current: TimelineId, lsn: Lsn) -> TimelineId {
    TimelineHistory::read_in(dir, current).map_or(current, |h| h.timeline_of(lsn, current))
}

/// Where the zero-filled spare for the segment at `segment` waits
/// (`SEGMENT.next`).
fn spare_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// Whether WAL ending at `end` ends at `boundary` (a timeline's switch
/// point): the same LSN, or — for a boundary at a page's start — just past
/// that page's header, nothing written on the page yet.
pub fn ends_at(end: Lsn, boundary: Lsn, size: SegmentSize) -> bool {
    end == boundary
        || (boundary.page_offset() == 0
            && end.0 == boundary.0 + page_header_len(size, boundary) as u64)
}

pub(crate) fn page_header_len(size: SegmentSize, page: Lsn) -> usize {
    if page.segment_offset(size) == 0 {
        LONG_PAGE_HEADER
    } else {
        SHORT_PAGE_HEADER
    }
}

/// Clears the way for writing at `end`: zeros the rest of its segment and
/// removes the segments after it. What that would destroy is kept first,
/// in `DISCARDED_DIR/X-XXXXXXXX[.N]/` (named for `end`, a new one each
/// time), when it holds data: the rest of `end`'s segment when the WAL
/// ended on damage (`ended_by` is not clean), and any later segment not
/// all zeros unless the WAL ended at a recycled segment's leftovers.
/// After a crash that is the write it
/// interrupted; otherwise it is what damage cut off, which may hold
/// acknowledged commits: it is evidence, never silently gone. Returns the
/// directory when anything was kept.
fn discard_after(
    config: &WriterConfig,
    files: &SegmentFiles,
    end: Lsn,
    ended_by: Option<&EndOfWal>,
) -> Result<Option<PathBuf>, WalError> {
    let size = config.seg_size;
    let segno = end.segno(size);
    let damaged = ended_by.is_some_and(|e| !e.is_clean());
    let later = !ended_by.is_some_and(|e| matches!(e.reason, EndReason::StalePage { .. }));
    // A directory of its own each time: a second recovery that stops at
    // the same LSN (the same bad block) never replaces the first's copy.
    let mut keep_dir = None;
    let keeping = |source: FileError| WalError::KeepDiscarded { end, source };
    let mut keep_dir_for = || -> Result<PathBuf, WalError> {
        if let Some(dir) = &keep_dir {
            return Ok(PathBuf::clone(dir));
        }
        let parent = config.dir.join(DISCARDED_DIR);
        durable::create_dir_if_absent(&parent).map_err(keeping)?;
        let base = format!("{:X}-{:08X}", end.0 >> 32, end.0 as u32);
        let mut dir = parent.join(&base);
        let mut n = 1;
        while !durable::create_dir_if_absent(&dir).map_err(keeping)? {
            n += 1;
            dir = parent.join(format!("{base}.{n}"));
        }
        keep_dir = Some(dir.clone());
        Ok(dir)
    };
    for path in files.files.range(segno.next()..).map(|(_, p)| p) {
        match path.file_name() {
            // Unreadable counts as data: moved aside, never removed.
            Some(name) if later && holds_data(path, 0).unwrap_or(true) => {
                let dir = keep_dir_for()?;
                durable::rename(path, &dir.join(name)).map_err(keeping)?;
                unmark(&config.dir, &name.to_string_lossy()).map_err(keeping)?;
            }
            _ => durable::remove_file(path)?,
        }
    }
    if let Some(path) = files.files.get(&segno) {
        let offset = end.segment_offset(size);
        if let Some(name) = path.file_name().filter(|_| damaged) {
            if holds_data(path, offset).unwrap_or(true) {
                let dir = keep_dir_for()?;
                let mut source = File::open(path).at("open segment", path).map_err(keeping)?;
                durable::replace_file_with(&dir.join(name), |f| {
                    std::io::copy(&mut source, f).map(drop)
                })
                .map_err(keeping)?;
            }
        }
        zero_tail(path, offset, size)?;
    }
    Ok(keep_dir)
}

/// Whether the file at `path` holds anything but zeros from `offset` on
/// (read a block at a time: a segment may be 1 GiB).
fn holds_data(path: &Path, offset: u64) -> std::io::Result<bool> {
    let mut file = File::open(path)?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut block = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut block)? {
            0 => return Ok(false),
            n if block[..n].iter().any(|&b| b != 0) => return Ok(true),
            _ => {}
        }
    }
}

/// Zeros a segment file from `offset` to its end, durably (after checking
/// its size).
pub(crate) fn zero_tail(path: &Path, offset: u64, size: SegmentSize) -> Result<(), WalError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .at("open segment", path)?;
    segment::check_size(path, &file, size)?;
    durable::zero_range(&mut file, path, offset, size.bytes() - offset)?;
    Ok(())
}

/// Where a WAL file stands with the archiver, as PostgreSQL marks it in
/// `archive_status/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveMark {
    /// `NAME.ready`: complete, waiting for the archiver.
    Ready,
    /// `NAME.done`: archived (or given up on).
    Done,
}

impl ArchiveMark {
    /// The mark file's suffix, after the WAL file's name.
    fn suffix(self) -> &'static str {
        match self {
            ArchiveMark::Ready => ".ready",
            ArchiveMark::Done => ".done",
        }
    }
}

/// The path of `name`'s `mark` in `wal_dir/archive_status`.
pub fn archive_mark(wal_dir: &Path, name: &str, mark: ArchiveMark) -> PathBuf {
    wal_dir
        .join(ARCHIVE_STATUS_DIR)
        .join(format!("{name}{}", mark.suffix()))
}

/// The WAL files in `wal_dir` that carry `mark`, each with its mark's
/// directory entry (whose age is how long it has waited), in no order. No
/// status directory: nothing is marked.
pub fn marked(
    wal_dir: &Path,
    mark: ArchiveMark,
) -> Result<Vec<(String, std::fs::DirEntry)>, FileError> {
    let status = wal_dir.join(ARCHIVE_STATUS_DIR);
    let entries = match std::fs::read_dir(&status) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FileError::new("read directory", &status, e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let wal_name = name.strip_suffix(mark.suffix())?.to_string();
            Some((wal_name, entry))
        })
        .collect())
}

/// Marks `wal_dir/NAME` — a complete, durable segment, history or backup
/// history file — for the archiver: creates `archive_status/NAME.ready`
/// durably. Marking a file twice is harmless.
pub fn mark_ready(wal_dir: &Path, name: &str) -> Result<(), FileError> {
    let status = wal_dir.join(ARCHIVE_STATUS_DIR);
    if !status.exists() {
        durable::create_dir(&status)?;
    }
    durable::create_file_exclusive(&archive_mark(wal_dir, name, ArchiveMark::Ready), |_| Ok(()))?;
    Ok(())
}

/// Marks `wal_dir/NAME` archived (`.ready` → `.done`, durably): only once
/// its archived copy is durable, or when the archive is given up on.
pub fn mark_done(wal_dir: &Path, name: &str) -> Result<(), FileError> {
    durable::rename(
        &archive_mark(wal_dir, name, ArchiveMark::Ready),
        &archive_mark(wal_dir, name, ArchiveMark::Done),
    )
}

/// The LSN of the last record that ends at or before `at`, walking from
/// the start of the segment before `at` (then earlier ones, down to
/// `first`, while none is found): a record may begin segments earlier than
/// it ends.
fn record_before(
    files: &SegmentFiles,
    expect: Expect,
    first: SegNo,
    at: Lsn,
) -> Result<Option<Lsn>, WalError> {
    let size = files.size;
    let mut segno = Lsn(at.0.saturating_sub(1)).segno(size);
    loop {
        let mut decoder = Decoder::at_page_start(size, segno.start_lsn(size), expect);
        let mut found = None;
        walk(files, &mut decoder, Some(at), |r| {
            if r.end <= at {
                found = Some(r.lsn);
            }
            ControlFlow::Continue(())
        })?;
        if found.is_some() || segno <= first {
            return Ok(found);
        }
        segno = SegNo(segno.0 - 1);
    }
}

/// Forgets `wal_dir/NAME`'s archive status (`.ready` and `.done`), for a
/// file being removed before it was ever complete.
pub fn unmark(wal_dir: &Path, name: &str) -> Result<(), FileError> {
    for mark in [ArchiveMark::Ready, ArchiveMark::Done] {
        durable::remove_file(&archive_mark(wal_dir, name, mark))?;
    }
    Ok(())
}

/// Removes every segment of `timeline` from `wal_dir` — complete,
/// `.partial` or preallocated — with its archive status; its history file
/// stays, so the timeline is never used again. For a timeline abandoned
/// before it ever took a write. Returns how many files went.
pub fn remove_timeline(
    wal_dir: &Path,
    size: SegmentSize,
    timeline: TimelineId,
) -> Result<usize, FileError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(wal_dir).at("read directory", wal_dir)? {
        let entry = entry.at("read directory", wal_dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A spare is `SEGMENT.next` (see `spare_path`).
        let segment = name.strip_suffix(".next").unwrap_or(&name);
        let ours = match super::name::WalFileName::parse(segment, size) {
            Ok(super::name::WalFileName::Segment(s) | super::name::WalFileName::Partial(s)) => {
                s.timeline == timeline
            }
            _ => false,
        };
        if ours {
            durable::remove_file(&entry.path())?;
            unmark(wal_dir, &name)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::RM_WALSHIP_ID;
    use crate::wal::name::history_file_name;
    use crate::wal::payload::Payload;
    use rand::{Rng, SeedableRng};

    fn config(dir: &Path) -> WriterConfig {
        WriterConfig {
            dir: dir.to_path_buf(),
            seg_size: SegmentSize::from_mib(1).unwrap(),
            system_id: 7_000_000_000_000_000_001,
            timeline: TimelineId::FIRST,
            mark_ready: false,
        }
    }

    fn read_all(cfg: &WriterConfig) -> (Vec<(Lsn, Vec<u8>)>, WalkEnd) {
        let files = SegmentFiles {
            size: cfg.seg_size,
            files: segment::list_segments(&cfg.dir, cfg.seg_size, cfg.timeline).unwrap(),
        };
        let first = *files.files.keys().next().unwrap();
        let mut d = Decoder::at_page_start(
            cfg.seg_size,
            first.start_lsn(cfg.seg_size),
            Expect::default(),
        );
        let mut out = Vec::new();
        let end = walk(&files, &mut d, None, |r| {
            if r.header().rmid == RM_WALSHIP_ID {
                out.push((r.lsn, r.main_data().unwrap().to_vec()));
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        (out, end)
    }

    #[test]
    fn a_missing_start_segment_is_named_by_the_timeline_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (w, _) = WalWriter::open(cfg.clone(), None, &mut |_| {}).unwrap();
        let first = w.append(RM_WALSHIP_ID, 0x20, 0, &[1; 100]).unwrap();
        while w.insert_lsn().segno(cfg.seg_size) < SegNo(3) {
            w.append(RM_WALSHIP_ID, 0x20, 0, &[2; 4000]).unwrap();
        }
        let two = TimelineId::new(2).unwrap();
        let switch = w.switch_timeline(two).unwrap();
        w.append(RM_WALSHIP_ID, 0x20, 0, b"on two").unwrap();
        w.flush_all().unwrap();
        drop(w);
        let history = format!("1\t{switch}\tpromoted\n");
        std::fs::write(dir.path().join(history_file_name(two)), history).unwrap();
        let lost = segment::segment_path(dir.path(), TimelineId::FIRST, SegNo(1), cfg.seg_size);
        std::fs::remove_file(&lost).unwrap();
        let on_two = WriterConfig {
            timeline: two,
            ..cfg
        };
        match WalWriter::open(on_two, Some(first.lsn), &mut |_| {}) {
            Err(WalError::StartMissing { path, lsn }) => {
                assert_eq!((path, lsn), (lost, first.lsn));
            }
            other => panic!("expected StartMissing, got {:?}", other.map(|(_, r)| r)),
        }
    }

    /// A standby whose primary died part-way through sending a record (here
    /// one that runs into the next segment) holds its first part. A new
    /// timeline begins where the last complete record ends: what is written
    /// on it must read back after the records before, on a restart.
    #[test]
    fn a_record_cut_off_mid_stream_is_discarded_before_a_new_timeline() {
        let primary_dir = tempfile::tempdir().unwrap();
        let standby_dir = tempfile::tempdir().unwrap();
        let size = config(primary_dir.path()).seg_size;
        let (primary, _) = WalWriter::open(config(primary_dir.path()), None, &mut |_| {}).unwrap();
        let mut complete = Vec::new();
        while primary.insert_lsn().segment_offset(size) < size.bytes() - 6000 {
            complete.push(primary.append(RM_WALSHIP_ID, 0x20, 1, &[3; 500]).unwrap());
        }
        let big = primary
            .append(RM_WALSHIP_ID, 0x20, 2, &[9; 20_000])
            .unwrap();
        assert_eq!(
            big.end.segno(size),
            SegNo(2),
            "the record runs into segment 2"
        );
        primary.flush_all().unwrap();
        let mut stream = std::fs::read(segment::segment_path(
            primary_dir.path(),
            TimelineId::FIRST,
            SegNo(1),
            size,
        ))
        .unwrap();
        let second = std::fs::read(segment::segment_path(
            primary_dir.path(),
            TimelineId::FIRST,
            SegNo(2),
            size,
        ))
        .unwrap();
        stream.extend_from_slice(&second[..4000]);

        let (standby, _) = WalWriter::open(config(standby_dir.path()), None, &mut |_| {}).unwrap();
        let start = standby.insert_lsn();
        assert_eq!(start, SegNo(1).start_lsn(size));
        let mut verifier = super::super::verify::StreamVerifier::new(
            size,
            start,
            None,
            Expect {
                sysid: Some(config(standby_dir.path()).system_id),
                max_timeline: Some(1),
            },
        );
        verifier.check(start, &stream).unwrap();
        standby
            .write_received(start, &stream, verifier.last_record())
            .unwrap();
        standby.flush_all().unwrap();
        assert!(standby.insert_lsn() > big.lsn);
        // Upstream, it reports no further than the record it lacks the end
        // of, so the upstream keeps the WAL it will ask for again.
        assert_eq!(standby.reportable(standby.flushed_lsn()), big.lsn);
        // Its first part reads back as the stream sent it, across the
        // segment boundary.
        let (from, part) = standby.partial_record().unwrap().unwrap();
        assert_eq!(from, big.lsn);
        let offset = (big.lsn.0 - start.0) as usize;
        assert_eq!(part, stream[offset..]);
        assert_eq!(standby.discard_partial_record().unwrap(), big.lsn);
        assert!(standby.partial_record().unwrap().is_none());
        assert_eq!(standby.flushed_lsn(), big.lsn);
        let two = TimelineId::new(2).unwrap();
        assert_eq!(standby.switch_timeline(two).unwrap(), big.lsn);
        let after = standby.append(RM_WALSHIP_ID, 0x20, 3, b"on two").unwrap();
        standby.flush(after.end).unwrap();
        drop(standby);

        let on_two = WriterConfig {
            timeline: two,
            ..config(standby_dir.path())
        };
        let mut seen = Vec::new();
        let (_, resumed) = WalWriter::open(on_two, None, &mut |r| seen.push(r.lsn)).unwrap();
        let mut expected: Vec<Lsn> = complete.iter().map(|a| a.lsn).collect();
        expected.push(after.lsn);
        assert!(
            seen == expected,
            "read back {} records ending at {:?}, wrote {} ending at {:?}",
            seen.len(),
            seen.last(),
            expected.len(),
            expected.last()
        );
        assert_eq!(resumed.end, after.end);
    }

    #[test]
    fn a_write_without_sync_is_in_the_file_and_made_durable_by_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (w, _) = WalWriter::open(cfg.clone(), None, &mut |_| {}).unwrap();
        let before = w.flushed_lsn();
        let a = w.append(RM_WALSHIP_ID, 0x20, 0, &[1; 3000]).unwrap();
        assert_eq!(w.write_all().unwrap(), a.end);
        assert_eq!((w.written_lsn(), w.flushed_lsn()), (a.end, before));
        assert_eq!(read_all(&cfg).0, vec![(a.lsn, vec![1; 3000])]);
        assert_eq!(w.flush(a.end).unwrap(), a.end);
        assert_eq!((w.written_lsn(), w.flushed_lsn()), (a.end, a.end));
    }

    #[test]
    fn records_of_every_size_round_trip_across_pages_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut written = Vec::new();
        {
            let (w, resumed) = WalWriter::open(cfg.clone(), None, &mut |_| {}).unwrap();
            assert_eq!(resumed.end, Lsn(0x100028));
            for i in 0..3000 {
                let len = match i % 10 {
                    0 => rng.gen_range(8000..40000),
                    1 => 0,
                    _ => rng.gen_range(1..300),
                };
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let a = w.append(RM_WALSHIP_ID, 0x20, i, &data).unwrap();
                assert!(a.end > a.lsn);
                written.push((a.lsn, data));
                if i == 1500 {
                    w.switch_segment().unwrap();
                }
            }
            let flushed = w.flush_all().unwrap();
            assert_eq!(flushed, w.insert_lsn());
        }
        let (read, end) = read_all(&cfg);
        assert_eq!(read.len(), written.len());
        assert!(read == written, "records differ after reading back");
        assert!(
            matches!(end, WalkEnd::EndOfWal { ref end, .. } if end.is_clean()),
            "{end:?}"
        );
    }

    #[test]
    fn resuming_where_no_record_is_yet_links_to_the_record_before() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        // The last record begins in segment 1 and ends in segment 2.
        let end = {
            let (w, _) = WalWriter::open(cfg.clone(), None, &mut |_| {}).unwrap();
            w.append(RM_WALSHIP_ID, 0x20, 0, &[1u8; 1_000_000]).unwrap();
            let a = w.append(RM_WALSHIP_ID, 0x20, 0, &[2u8; 100_000]).unwrap();
            assert_ne!(a.lsn.segno(cfg.seg_size), a.end.segno(cfg.seg_size));
            w.flush(a.end).unwrap();
            a.end
        };
        // As after walship rejoin: resumed at a position that holds no
        // record (a snapshot relabelled at a switch point).
        let (w, resumed) = WalWriter::open(cfg.clone(), Some(end), &mut |_| {}).unwrap();
        assert_eq!((resumed.end, resumed.records), (end, 0));
        let c = w.append(RM_WALSHIP_ID, 0x20, 0, b"after").unwrap();
        w.flush(c.end).unwrap();
        drop(w);
        let (read, walked) = read_all(&cfg);
        assert_eq!(read.len(), 3, "the new record's prev-link is wrong");
        assert!(
            matches!(walked, WalkEnd::EndOfWal { ref end, .. } if end.is_clean()),
            "{walked:?}"
        );
    }

    #[test]
    fn reopening_resumes_at_the_end_and_zeroes_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let mut msg = Vec::new();
        Payload::Message(b"first").encode(&mut msg);
        let (first_end, tail) = {
            let (w, _) = WalWriter::open(cfg.clone(), None, &mut |_| {}).unwrap();
            let a = w.append(RM_WALSHIP_ID, 0x20, 0, &msg).unwrap();
            w.flush(a.end).unwrap();
            let b = w.append(RM_WALSHIP_ID, 0x20, 0, &[5u8; 20000]).unwrap();
            w.flush(b.end).unwrap();
            (a.end, b.lsn)
        };
        // Tear the second record: flip a byte in its middle.
        let seg = segment::segment_path(&cfg.dir, cfg.timeline, SegNo(1), cfg.seg_size);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[(tail.0 - 0x100000) as usize + 9000] ^= 0xFF;
        std::fs::write(&seg, &bytes).unwrap();
        let (w, resumed) = WalWriter::open(cfg.clone(), None, &mut |_| {}).unwrap();
        assert_eq!(resumed.end, first_end);
        assert_eq!(resumed.records, 1);
        assert!(resumed.stopped_by.is_some_and(|(e, _)| !e.is_clean()));
        let c = w.append(RM_WALSHIP_ID, 0x20, 0, b"after").unwrap();
        assert_eq!(c.lsn, first_end);
        w.flush(c.end).unwrap();
        drop(w);
        let (read, end) = read_all(&cfg);
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].1, b"after");
        assert!(
            matches!(end, WalkEnd::EndOfWal { ref end, .. } if end.is_clean()),
            "{end:?}"
        );
    }

    #[test]
    fn group_commit_serves_concurrent_appenders() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (w, _) = WalWriter::open(cfg.clone(), None, &mut |_| {}).unwrap();
        std::thread::scope(|s| {
            for t in 0..32u32 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..100u32 {
                        let a = w.append(RM_WALSHIP_ID, 0x20, t, &i.to_le_bytes()).unwrap();
                        assert!(w.flush(a.end).unwrap() >= a.end);
                    }
                });
            }
        });
        drop(w);
        let (read, _) = read_all(&cfg);
        assert_eq!(read.len(), 3200);
    }

    #[test]
    fn a_second_writer_on_one_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_w, _) = WalWriter::open(config(dir.path()), None, &mut |_| {}).unwrap();
        let err = WalWriter::open(config(dir.path()), None, &mut |_| {})
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }
}
