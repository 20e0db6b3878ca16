//! Damaged WAL: truncated segment files, zeroed ranges and flipped bits,
//! read back by the walker, by `walship dump --verify` and by a reopening
//! writer.
//!
//! The contract under test (`src/wal/decoder.rs`): a record is returned only
//! when all of its bytes were fed and every check passed, and after the first
//! failed check nothing more is returned. So, whatever the damage, the
//! records a walk returns are exactly the first k records written, byte for
//! byte; every record that lies wholly before the first damaged byte is among
//! them; and no damaged record, nor anything after it, is.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walship::wal::format::{
    LONG_PAGE_HEADER, PAGE_SIZE, RECORD_HEADER, RM_WALSHIP_ID, RM_XLOG_ID, SHORT_PAGE_HEADER,
};
use walship::wal::reader::{walk, SegmentFiles, WalkEnd};
use walship::wal::segment::list_segments;
use walship::wal::{
    Decoder, EndReason, Expect, Lsn, SegNo, SegmentSize, TimelineId, WalError, WalWriter,
    WriterConfig,
};

const SYSID: u64 = 7_100_000_000_000_000_017;
const SEG: u64 = 1 << 20;
const PAGE: u64 = PAGE_SIZE as u64;

fn seg_size() -> SegmentSize {
    SegmentSize::from_mib(1).unwrap()
}

fn config(dir: &Path) -> WriterConfig {
    WriterConfig {
        dir: dir.to_path_buf(),
        seg_size: seg_size(),
        system_id: SYSID,
        timeline: TimelineId::FIRST,
        mark_ready: false,
    }
}

/// What the writer's own reopening scan expects; the strictest check.
fn strict() -> Expect {
    Expect {
        sysid: Some(SYSID),
        max_timeline: Some(1),
    }
}

fn header_len(page: u64) -> u64 {
    if page % SEG == 0 {
        LONG_PAGE_HEADER as u64
    } else {
        SHORT_PAGE_HEADER as u64
    }
}

/// Where a record written at `pos` begins: past the page header when `pos`
/// begins a page.
fn record_start(pos: Lsn) -> Lsn {
    if pos.page_offset() == 0 {
        Lsn(pos.0 + header_len(pos.0))
    } else {
        pos
    }
}

/// The LSN ranges a record of `len` bytes at `lsn` occupies, page headers
/// left out.
fn content_ranges(lsn: Lsn, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut pos, mut left) = (lsn.0, len);
    while left > 0 {
        if pos % PAGE == 0 {
            pos += header_len(pos);
        }
        let n = left.min(PAGE - pos % PAGE);
        out.push((pos, pos + n));
        pos += n;
        left -= n;
    }
    out
}

/// One record as written.
struct Written {
    lsn: Lsn,
    /// Where the next record may begin (`Appended::end`; for the segment
    /// switch, the next segment's start).
    end: Lsn,
    rmid: u8,
    /// The main data given to `append`.
    data: Vec<u8>,
    /// The whole record, header first, as the intact WAL holds it.
    bytes: Vec<u8>,
}

/// The intact WAL, written once and shared by every test.
struct Wal {
    /// Segment files by number: file name and contents.
    segments: BTreeMap<SegNo, (String, Vec<u8>)>,
    records: Vec<Written>,
    /// Where the record after the last would begin.
    final_next: Lsn,
    /// Content ranges of every record, in LSN order: (start, end, index).
    content: Vec<(u64, u64, usize)>,
}

impl Wal {
    /// Where record `k` begins; for `k == n`, where the next one would.
    fn next_lsn(&self, k: usize) -> Lsn {
        self.records.get(k).map_or(self.final_next, |r| r.lsn)
    }

    /// The index of the record whose content holds `lsn`, if any.
    fn record_at(&self, lsn: u64) -> Option<usize> {
        let i = self.content.partition_point(|&(start, _, _)| start <= lsn);
        let &(start, end, idx) = self.content.get(i.checked_sub(1)?)?;
        (start..end).contains(&lsn).then_some(idx)
    }

    /// The LSN of byte `off` of record `idx`.
    fn content_lsn(&self, idx: usize, off: u64) -> u64 {
        let r = &self.records[idx];
        let mut off = off;
        for (start, end) in content_ranges(r.lsn, r.bytes.len() as u64) {
            if off < end - start {
                return start + off;
            }
            off -= end - start;
        }
        panic!("offset {off} is past record {idx}");
    }

    /// Pages that hold record bytes (so a reader reads their headers).
    fn live_pages(&self) -> Vec<u64> {
        let mut pages: Vec<u64> = self
            .content
            .iter()
            .flat_map(|&(s, e, _)| [s / PAGE * PAGE, (e - 1) / PAGE * PAGE])
            .collect();
        pages.dedup();
        pages
    }

    fn path_in(&self, dir: &Path, segno: SegNo) -> PathBuf {
        dir.join(&self.segments[&segno].0)
    }
}

fn wal() -> &'static Wal {
    static WAL: OnceLock<Wal> = OnceLock::new();
    WAL.get_or_init(write_wal)
}

/// Writes about 3.5 segments of records of random sizes (0 to 20000 bytes,
/// a quarter of them under 100), with a segment switch in segment 2.
fn write_wal() -> Wal {
    let dir = tempfile::tempdir().unwrap();
    let size = seg_size();
    let mut rng = StdRng::seed_from_u64(0x5EED_C0DE);
    let mut records = Vec::new();
    let (w, resumed) = WalWriter::open(config(dir.path()), None, &mut |_| {}).unwrap();
    assert_eq!(resumed.end, Lsn(SEG + LONG_PAGE_HEADER as u64));
    let mut switched = false;
    let mut xid = 0;
    while w.insert_lsn() < Lsn(4 * SEG + SEG / 2) {
        if !switched && w.insert_lsn() >= Lsn(2 * SEG + SEG / 3) {
            let before = w.insert_lsn();
            let switch_end = w.switch_segment().unwrap();
            // pg_switch_wal()'s answer, the end of the switch record
            // itself; the next record begins the next segment.
            assert!(
                switch_end > before && switch_end < Lsn(3 * SEG),
                "{switch_end}"
            );
            assert_eq!(w.insert_lsn(), Lsn(3 * SEG));
            records.push(Written {
                lsn: record_start(before),
                end: Lsn(3 * SEG),
                rmid: RM_XLOG_ID,
                data: Vec::new(),
                bytes: Vec::new(),
            });
            switched = true;
            continue;
        }
        let len = if rng.gen_bool(0.25) {
            rng.gen_range(0..100)
        } else {
            rng.gen_range(0..20_000)
        };
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        xid += 1;
        let a = w.append(RM_WALSHIP_ID, 0x10, xid, &data).unwrap();
        records.push(Written {
            lsn: a.lsn,
            end: a.end,
            rmid: RM_WALSHIP_ID,
            data,
            bytes: Vec::new(),
        });
    }
    assert_eq!(w.flush_all().unwrap(), w.insert_lsn());
    let final_next = record_start(w.insert_lsn());
    drop(w);

    let files = list_segments(dir.path(), size, TimelineId::FIRST).unwrap();
    assert_eq!(
        files.keys().copied().collect::<Vec<_>>(),
        [SegNo(1), SegNo(2), SegNo(3), SegNo(4)]
    );
    let segments = files
        .iter()
        .map(|(s, p)| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            (*s, (name, std::fs::read(p).unwrap()))
        })
        .collect();

    // The intact WAL reads back as written, and ends cleanly.
    let read = walk_dir(dir.path(), Expect::default());
    assert_eq!(read.records.len(), records.len());
    for (w, (lsn, bytes, main)) in records.iter_mut().zip(read.records) {
        assert_eq!(w.lsn, lsn);
        assert_eq!(main.as_deref(), Some(&w.data[..]), "record at {lsn}");
        assert_eq!(bytes[17], w.rmid);
        w.bytes = bytes;
    }
    match read.outcome {
        Ok(WalkEnd::EndOfWal { end, .. }) => {
            assert!(end.is_clean() && end.lsn == final_next, "{end}")
        }
        other => panic!("intact WAL ends with {other:?}"),
    }
    let mut content: Vec<(u64, u64, usize)> = records
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            content_ranges(r.lsn, r.bytes.len() as u64)
                .into_iter()
                .map(move |(s, e)| (s, e, i))
        })
        .collect();
    content.sort_unstable();
    eprintln!(
        "wrote {} records, {} to {}",
        records.len(),
        records[0].lsn,
        final_next
    );
    Wal {
        segments,
        records,
        final_next,
        content,
    }
}

struct WalkResult {
    /// LSN, whole record, main data.
    records: Vec<(Lsn, Vec<u8>, Option<Vec<u8>>)>,
    outcome: Result<WalkEnd, WalError>,
}

/// Walks every segment in `dir` from the first segment's start.
fn walk_dir(dir: &Path, expect: Expect) -> WalkResult {
    let size = seg_size();
    let files = SegmentFiles {
        size,
        files: list_segments(dir, size, TimelineId::FIRST).unwrap(),
    };
    let first = *files.files.keys().next().expect("no segments");
    let mut decoder = Decoder::at_page_start(size, first.start_lsn(size), expect);
    let mut records = Vec::new();
    let outcome = walk(&files, &mut decoder, None, |r| {
        records.push((r.lsn, r.bytes.to_vec(), r.main_data().map(<[u8]>::to_vec)));
        ControlFlow::Continue(())
    });
    WalkResult { records, outcome }
}

/// Damage done to a copy of the WAL.
#[derive(Clone, Debug)]
enum Damage {
    /// Cut segment `segno` to `len` bytes.
    Truncate { segno: SegNo, len: u64 },
    /// Zero `len` bytes from `lsn` on.
    Zero { lsn: u64, len: u64 },
    /// Flip bit `.1` of the byte at LSN `.0`, for each pair.
    Flip(Vec<(u64, u8)>),
}

/// What damage did to a copy of the segments.
struct Damaged {
    /// The segments that differ from the intact ones, as they now are.
    modified: BTreeMap<SegNo, Vec<u8>>,
    /// The LSNs whose bytes changed.
    changed: Vec<u64>,
}

fn apply(wal: &Wal, damage: &Damage) -> Damaged {
    let mut modified = BTreeMap::new();
    let mut touched = Vec::new();
    match damage {
        Damage::Truncate { segno, len } => {
            modified.insert(*segno, wal.segments[segno].1[..*len as usize].to_vec());
        }
        Damage::Zero { lsn, len } => touched.extend(*lsn..lsn + len),
        Damage::Flip(bits) => touched.extend(bits.iter().map(|b| b.0)),
    }
    touched.sort_unstable();
    touched.dedup();
    for &at in &touched {
        let segno = SegNo(at / SEG);
        let Some((_, orig)) = wal.segments.get(&segno) else {
            continue;
        };
        let bytes = modified.entry(segno).or_insert_with(|| orig.clone());
        let b = &mut bytes[(at % SEG) as usize];
        match damage {
            Damage::Flip(bits) => {
                for &(_, bit) in bits.iter().filter(|b| b.0 == at) {
                    *b ^= 1 << bit;
                }
            }
            _ => *b = 0,
        }
    }
    // Flipping a bit twice, or zeroing a zero, changes nothing.
    let changed = touched
        .into_iter()
        .filter(|&at| {
            let (segno, off) = (SegNo(at / SEG), (at % SEG) as usize);
            modified
                .get(&segno)
                .is_some_and(|now| now[off] != wal.segments[&segno].1[off])
        })
        .collect();
    Damaged { modified, changed }
}

/// Lays out a damaged copy of the WAL in `dir`: the damaged segments
/// written anew, the others copied (or, when `intact` names a directory
/// holding the intact segments, hard-linked from it: the walker only reads).
fn write_copy(dir: &Path, wal: &Wal, damaged: &Damaged, intact: Option<&Path>) {
    for (segno, (name, bytes)) in &wal.segments {
        let path = dir.join(name);
        match (damaged.modified.get(segno), intact) {
            (Some(bytes), _) => std::fs::write(&path, bytes).unwrap(),
            (None, Some(from)) => std::fs::hard_link(from.join(name), &path).unwrap(),
            (None, None) => std::fs::write(&path, bytes).unwrap(),
        }
    }
}

/// No damage at all.
fn intact() -> Damaged {
    Damaged {
        modified: BTreeMap::new(),
        changed: Vec::new(),
    }
}

fn random_damage(wal: &Wal, rng: &mut StdRng) -> Damage {
    let first = wal.records[0].lsn.0 / SEG * SEG;
    // Mostly where the WAL is, a little past its end.
    let span = first..wal.final_next.0 + 2 * PAGE;
    let pages = wal.live_pages();
    let record = |rng: &mut StdRng| rng.gen_range(0..wal.records.len());
    match rng.gen_range(0..12) {
        0 => {
            let segno = SegNo(rng.gen_range(1..=4));
            let len = match rng.gen_range(0..4) {
                0 => [0, 1, 39, 40, 8192, SEG - 1][rng.gen_range(0..6)],
                1 => rng.gen_range(0..SEG / PAGE) * PAGE,
                _ => rng.gen_range(0..SEG),
            };
            Damage::Truncate { segno, len }
        }
        1 | 2 => Damage::Zero {
            lsn: rng.gen_range(span),
            len: match rng.gen_range(0..3) {
                0 => rng.gen_range(1..=8),
                1 => rng.gen_range(1..=PAGE),
                _ => rng.gen_range(PAGE..=3 * PAGE),
            },
        },
        3 => {
            // From a record's start: its length becomes zero, which reads as
            // the end of WAL.
            let i = record(rng);
            Damage::Zero {
                lsn: wal.records[i].lsn.0,
                len: rng.gen_range(4..=64),
            }
        }
        4 => {
            let page = pages[rng.gen_range(0..pages.len())];
            Damage::Zero {
                lsn: page,
                len: header_len(page),
            }
        }
        5 | 6 => Damage::Flip(
            (0..rng.gen_range(1..=8))
                .map(|_| (rng.gen_range(span.clone()), rng.gen_range(0..8)))
                .collect(),
        ),
        7 | 8 => {
            // In a record's header, prev-link and CRC included.
            let i = record(rng);
            let off = rng.gen_range(0..RECORD_HEADER as u64);
            Damage::Flip(vec![(wal.content_lsn(i, off), rng.gen_range(0..8))])
        }
        9 | 10 => {
            let page = pages[rng.gen_range(0..pages.len())];
            let off = rng.gen_range(0..header_len(page));
            Damage::Flip(vec![(page + off, rng.gen_range(0..8))])
        }
        _ => {
            let at = rng.gen_range(span);
            Damage::Flip(
                (0..rng.gen_range(2..=16))
                    .map(|_| (at + rng.gen_range(0..16), rng.gen_range(0..8)))
                    .collect(),
            )
        }
    }
}

/// Aborts the test process, saying what it was doing, when one step takes
/// over a minute: a decoder stuck in a loop fails instead of hanging CI.
struct Watchdog {
    state: Arc<Mutex<(Instant, String)>>,
    stop: Arc<AtomicBool>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let state = Arc::new(Mutex::new((Instant::now(), String::from("starting"))));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                if s.0.elapsed() > Duration::from_secs(60) {
                    eprintln!("no progress for 60 s while: {}", s.1);
                    std::process::abort();
                }
            }
        });
        Watchdog { state, stop }
    }

    fn step(&self, what: String) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), what);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Walks `dir`, naming `ctx` if the walk panics.
fn walk_checked(dir: &Path, expect: Expect, ctx: &str) -> WalkResult {
    match panic::catch_unwind(AssertUnwindSafe(|| walk_dir(dir, expect))) {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("the walk panicked ({msg}) on {ctx}");
        }
    }
}

/// How a checked walk ended, for the tally.
fn end_kind(r: &WalkResult) -> &'static str {
    match &r.outcome {
        Err(WalError::SegmentFileSize { .. }) => "segment file size error",
        Err(_) => "other error",
        Ok(WalkEnd::EndOfWal { end, .. }) => match end.reason {
            EndReason::Zeros => "end: zeros",
            EndReason::StalePage { .. } => "end: stale page",
            EndReason::TornRecord { .. } => "end: torn record",
            EndReason::BadPageHeader { .. } => "end: bad page header",
            EndReason::BadRecord { .. } => "end: bad record",
        },
        Ok(WalkEnd::MissingSegment { .. }) => "missing segment",
        Ok(_) => "other",
    }
}

/// Checks a walk over a damaged copy against the contract; returns k, the
/// number of records it returned.
fn check_walk(wal: &Wal, dir: &Path, damage: &Damage, damaged: &Damaged, r: &WalkResult) -> usize {
    let ctx = format!("{damage:?}");
    let n = wal.records.len();
    let k = r.records.len();
    // Exactly the first k records, byte for byte.
    assert!(k <= n, "{k} records returned, {n} written: {ctx}");
    for (i, (lsn, bytes, main)) in r.records.iter().enumerate() {
        let w = &wal.records[i];
        assert_eq!(*lsn, w.lsn, "record {i} returned at the wrong LSN: {ctx}");
        assert!(*bytes == w.bytes, "record {i} at {lsn} differs: {ctx}");
        assert!(
            main.as_deref() == Some(&w.data[..]),
            "record {i} at {lsn}: main data differs: {ctx}"
        );
    }
    // Nothing from the first damaged record on.
    if let Some(j) = damaged
        .changed
        .iter()
        .filter_map(|&c| wal.record_at(c))
        .min()
    {
        assert!(
            k <= j,
            "record {j} at {} was damaged, yet {k} records were returned: {ctx}",
            wal.records[j].lsn
        );
    }
    // Every record wholly before the first damage.
    let wanted = match (damage, damaged.changed.first()) {
        (Damage::Truncate { segno, .. }, _) => {
            let start = segno.0 * SEG;
            let m = wal.records.partition_point(|w| w.end.0 <= start);
            assert_eq!(k, m, "records before the truncated segment: {ctx}");
            m
        }
        (_, Some(&first)) => wal.records.partition_point(|w| w.end.0 <= first),
        (_, None) => n,
    };
    assert!(
        k >= wanted,
        "only {k} records returned, but the first {wanted} are intact: {ctx}"
    );
    match (&r.outcome, damage) {
        (
            Err(WalError::SegmentFileSize {
                path,
                actual,
                expected,
            }),
            Damage::Truncate { segno, len },
        ) => {
            assert_eq!(*path, wal.path_in(dir, *segno), "{ctx}");
            assert_eq!((*actual, *expected), (*len, SEG), "{ctx}");
        }
        (Err(e), _) => panic!("walk failed with {e}: {ctx}"),
        (Ok(end), Damage::Truncate { .. }) => {
            panic!("a truncated segment was walked, ending with {end:?}: {ctx}")
        }
        (Ok(WalkEnd::EndOfWal { end, path }), _) => {
            assert!(path.starts_with(dir), "{path:?}: {ctx}");
            if damaged.changed.is_empty() {
                assert!(
                    k == n && end.is_clean() && end.lsn == wal.final_next,
                    "undamaged copy ended with {end} after {k} records: {ctx}"
                );
            }
            let next = wal.next_lsn(k);
            // Valid WAL ends where the first record not returned begins,
            // whatever the reason: that is where a writer resumes.
            assert_eq!(
                end.lsn, next,
                "{end} after {k} records: the next record is at {next}: {ctx}"
            );
            if let EndReason::BadPageHeader { page, .. } = end.reason {
                assert!(
                    page.0 % PAGE == 0 && page.0 >= (next.0 - 1) / PAGE * PAGE,
                    "bad page header at {page}, before record {k} at {next}: {ctx}"
                );
            }
        }
        (Ok(WalkEnd::MissingSegment { segno, .. }), _) => {
            assert!(*segno > SegNo(4), "segment {segno} missing: {ctx}")
        }
        (Ok(other), _) => panic!("unexpected {other:?}: {ctx}"),
    }
    k
}

#[test]
fn damaged_wal_yields_only_the_intact_prefix() {
    let wal = wal();
    let watchdog = Watchdog::start();
    let mut rng = StdRng::seed_from_u64(0xDA_3A_6E);
    let mut tally: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut lost = 0;
    let iterations = 500;
    let started = Instant::now();
    let pristine = tempfile::tempdir().unwrap();
    write_copy(pristine.path(), wal, &intact(), None);
    for i in 0..iterations {
        let damage = random_damage(wal, &mut rng);
        let ctx = format!("iteration {i}: {damage:?}");
        watchdog.step(ctx.clone());
        let damaged = apply(wal, &damage);
        let dir = tempfile::tempdir().unwrap();
        write_copy(dir.path(), wal, &damaged, Some(pristine.path()));
        let expect = if i % 2 == 0 {
            Expect::default()
        } else {
            strict()
        };
        let r = walk_checked(dir.path(), expect, &ctx);
        let k = check_walk(wal, dir.path(), &damage, &damaged, &r);
        lost += wal.records.len() - k;
        *tally.entry(end_kind(&r)).or_default() += 1;
    }
    eprintln!(
        "{iterations} damaged copies in {:.1?}: {tally:?}; {lost} records lost in all",
        started.elapsed()
    );
    // The damage reached every way a walk can stop.
    for kind in [
        "segment file size error",
        "end: zeros",
        "end: torn record",
        "end: bad page header",
        "end: bad record",
    ] {
        assert!(tally.contains_key(kind), "no walk ended with {kind}");
    }
}

#[test]
fn truncated_segments_are_a_clear_error() {
    let wal = wal();
    for segno in 1..=4 {
        for len in [0, 1, 40, 8191, 8192, 500_000, SEG - 1] {
            let damage = Damage::Truncate {
                segno: SegNo(segno),
                len,
            };
            let damaged = apply(wal, &damage);
            let dir = tempfile::tempdir().unwrap();
            write_copy(dir.path(), wal, &damaged, None);
            let r = walk_checked(dir.path(), Expect::default(), &format!("{damage:?}"));
            check_walk(wal, dir.path(), &damage, &damaged, &r);
            let msg = r.outcome.unwrap_err().to_string();
            let path = wal.path_in(dir.path(), SegNo(segno));
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains(&format!("is {len} bytes"))
                    && msg.contains("truncated"),
                "{msg}"
            );
        }
    }
}

/// The first token of `s` that parses as an LSN in PostgreSQL's X/X form.
fn find_lsn(s: &str) -> Option<Lsn> {
    s.split(|c: char| !(c.is_ascii_hexdigit() || c == '/'))
        .find_map(|t| t.trim_matches('/').parse::<Lsn>().ok())
}

struct DumpRun {
    code: i32,
    stdout: String,
    stderr: String,
}

fn dump_verify(dir: &Path) -> DumpRun {
    let out = Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["dump", "--verify"])
        .arg(dir)
        .output()
        .unwrap();
    DumpRun {
        code: out.status.code().expect("killed by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Asserts a failed dump's stderr is one line naming `path` and `lsn`.
fn assert_one_line_naming(run: &DumpRun, path: &Path, lsn: Option<Lsn>) {
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let line = run.stderr.strip_suffix('\n').unwrap_or(&run.stderr);
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "not one line: {:?}",
        run.stderr
    );
    let path = path.display().to_string();
    assert!(line.contains(&path), "{line:?} does not name {path}");
    if let Some(lsn) = lsn {
        assert!(
            line.contains(&format!(" {lsn}")),
            "{line:?} does not name {lsn}"
        );
        let without_path = line.replace(&path, "");
        assert_eq!(find_lsn(&without_path), Some(lsn), "{line:?}");
    }
}

#[test]
fn dump_verify_reports_damage_with_file_and_lsn() {
    let wal = wal();
    let n = wal.records.len();

    // Intact: exit 0.
    let dir = tempfile::tempdir().unwrap();
    write_copy(dir.path(), wal, &intact(), None);
    let run = dump_verify(dir.path());
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("verified {n} records")),
        "{}",
        run.stdout
    );

    // A flipped bit in the body of a record in the middle of the WAL.
    let j = (n / 2..n)
        .find(|&j| {
            let w = &wal.records[j];
            w.data.len() > 100 && w.lsn.0 / SEG == (w.end.0 - 1) / SEG
        })
        .unwrap();
    let target = &wal.records[j];
    let damage = Damage::Flip(vec![(wal.content_lsn(j, RECORD_HEADER as u64 + 50), 3)]);
    let damaged = apply(wal, &damage);
    let dir = tempfile::tempdir().unwrap();
    write_copy(dir.path(), wal, &damaged, None);
    let run = dump_verify(dir.path());
    let path = wal.path_in(dir.path(), SegNo(target.lsn.0 / SEG));
    assert_one_line_naming(&run, &path, Some(target.lsn));
    assert!(run.stderr.contains("CRC"), "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("verified {j} records"))
            && run
                .stdout
                .contains("up to where the WAL breaks off (see the error)")
            && !run.stdout.contains("CRC"),
        "the damage is said once, on standard error: {}",
        run.stdout
    );

    // A flipped bit in the magic number of a page header in segment 3.
    let page = *wal
        .live_pages()
        .iter()
        .find(|&&p| p > 3 * SEG + SEG / 2)
        .unwrap();
    let damaged = apply(wal, &Damage::Flip(vec![(page, 0)]));
    let dir = tempfile::tempdir().unwrap();
    write_copy(dir.path(), wal, &damaged, None);
    let run = dump_verify(dir.path());
    assert_one_line_naming(&run, &wal.path_in(dir.path(), SegNo(3)), Some(Lsn(page)));
    assert!(run.stderr.contains("magic"), "{}", run.stderr);

    // A truncated segment in the middle.
    let damaged = apply(
        wal,
        &Damage::Truncate {
            segno: SegNo(3),
            len: 777_777,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    write_copy(dir.path(), wal, &damaged, None);
    let run = dump_verify(dir.path());
    assert_one_line_naming(&run, &wal.path_in(dir.path(), SegNo(3)), None);
    assert!(
        run.stderr.contains("is 777777 bytes")
            && run.stderr.contains(&format!("{SEG} bytes"))
            && run.stderr.contains("truncated"),
        "{}",
        run.stderr
    );

    // A first segment too short to hold its own header.
    let damaged = apply(
        wal,
        &Damage::Truncate {
            segno: SegNo(1),
            len: 10,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    write_copy(dir.path(), wal, &damaged, None);
    let run = dump_verify(dir.path());
    assert_one_line_naming(&run, &wal.path_in(dir.path(), SegNo(1)), None);
}

/// Reopens a writer on a damaged copy and checks that it resumes right after
/// the last valid record, and that what it appends is read back with nothing
/// from beyond the damage.
fn reopen_and_append(wal: &Wal, damage: &Damage, rng: &mut StdRng) {
    let ctx = format!("{damage:?}");
    let damaged = apply(wal, damage);
    let dir = tempfile::tempdir().unwrap();
    write_copy(dir.path(), wal, &damaged, None);
    let before = walk_checked(dir.path(), strict(), &ctx);
    let k = check_walk(wal, dir.path(), damage, &damaged, &before);
    let next = wal.next_lsn(k);

    let (w, resumed) = WalWriter::open(config(dir.path()), None, &mut |_| {}).unwrap();
    assert_eq!(resumed.end, next, "resumed after {k} valid records: {ctx}");
    assert_eq!(resumed.records, k as u64, "{ctx}");
    assert_eq!(
        resumed.last_record,
        k.checked_sub(1).map(|i| wal.records[i].lsn),
        "{ctx}"
    );
    assert!(resumed.stopped_by.is_some(), "{ctx}");
    let data: Vec<u8> = (0..rng.gen_range(0..20_000)).map(|_| rng.gen()).collect();
    let a = w.append(RM_WALSHIP_ID, 0x10, 99, &data).unwrap();
    assert_eq!(a.lsn, next, "{ctx}");
    w.flush(a.end).unwrap();
    drop(w);

    let after = walk_checked(dir.path(), strict(), &ctx);
    assert_eq!(after.records.len(), k + 1, "{ctx}");
    for (i, (lsn, bytes, _)) in after.records[..k].iter().enumerate() {
        assert!(
            *lsn == wal.records[i].lsn && *bytes == wal.records[i].bytes,
            "record {i}: {ctx}"
        );
    }
    let (lsn, _, main) = &after.records[k];
    assert_eq!(*lsn, a.lsn, "{ctx}");
    assert!(main.as_deref() == Some(&data[..]), "{ctx}");
    match &after.outcome {
        Ok(WalkEnd::EndOfWal { end, .. }) => assert!(
            end.is_clean() && end.lsn == record_start(a.end),
            "{end}: {ctx}"
        ),
        other => panic!("{other:?}: {ctx}"),
    }
    // Later segments were removed, so nothing beyond the damage survives.
    let last = list_segments(dir.path(), seg_size(), TimelineId::FIRST)
        .unwrap()
        .into_keys()
        .next_back()
        .unwrap();
    assert!(
        last.0 <= (a.lsn.0 / SEG).max((a.end.0 - 1) / SEG),
        "segment {last} left behind: {ctx}"
    );
}

#[test]
fn a_reopened_writer_resumes_at_the_end_of_the_valid_prefix() {
    let wal = wal();
    let watchdog = Watchdog::start();
    let mut rng = StdRng::seed_from_u64(0x000E_0E11);
    let n = wal.records.len();
    let pages = wal.live_pages();
    for i in 0..60 {
        // Damage after the first record (see
        // `a_damaged_first_record_is_overwritten_on_reopen` for that case).
        let damage = match i % 4 {
            0 => {
                let j = rng.gen_range(1..n);
                let off = rng.gen_range(0..wal.records[j].bytes.len() as u64);
                Damage::Flip(vec![(wal.content_lsn(j, off), rng.gen_range(0..8))])
            }
            1 => Damage::Zero {
                lsn: rng.gen_range(wal.records[1].lsn.0..wal.final_next.0),
                len: rng.gen_range(1..=2 * PAGE),
            },
            2 => {
                let page = pages[rng.gen_range(1..pages.len())];
                Damage::Flip(vec![(
                    page + rng.gen_range(0..header_len(page)),
                    rng.gen_range(0..8),
                )])
            }
            _ => Damage::Flip(vec![(
                rng.gen_range(wal.records[1].lsn.0..wal.final_next.0 + 64),
                rng.gen_range(0..8),
            )]),
        };
        watchdog.step(format!("reopen {i}: {damage:?}"));
        reopen_and_append(wal, &damage, &mut rng);
    }

    // A truncated segment is refused, not read around.
    let damaged = apply(
        wal,
        &Damage::Truncate {
            segno: SegNo(2),
            len: 4096,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    write_copy(dir.path(), wal, &damaged, None);
    match WalWriter::open(config(dir.path()), None, &mut |_| {}) {
        Err(WalError::SegmentFileSize { path, actual, .. }) => {
            assert_eq!(path, wal.path_in(dir.path(), SegNo(2)));
            assert_eq!(actual, 4096);
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a writer opened on a truncated segment"),
    }
}

/// When the very first record is damaged the writer must resume where that
/// record began, or readers starting at the segment stop at the damaged
/// record forever and never see what is appended.
///
/// Known bug: with no valid record, `WalWriter::open` resumes at the
/// decoder's position after the failed record (`decoder.next_record_lsn()`),
/// not at the record's LSN: past a first record whose CRC fails, or 8 bytes
/// on (0/100030) when the first record's length reads zero, so everything
/// appended afterwards is unreachable. Resuming at the `EndOfWal`'s `lsn`
/// (for a bad page header, that page's first record position) fixes it.
#[test]
fn a_damaged_first_record_is_overwritten_on_reopen() {
    let wal = wal();
    let mut rng = StdRng::seed_from_u64(1);
    // A flipped bit in the first record's CRC.
    let first = wal.records[0].lsn.0;
    reopen_and_append(wal, &Damage::Flip(vec![(first + 20, 0)]), &mut rng);
    // The first record's length zeroed.
    reopen_and_append(wal, &Damage::Zero { lsn: first, len: 4 }, &mut rng);
}
