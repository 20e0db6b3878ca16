//! WAL benchmarks (see BENCHMARKS.md for results and how to read them).
//!
//! - `append`: `WalWriter::append` of 100-byte records (128 bytes each in the
//!   WAL) with no flush, against a plain copy of the same bytes into a
//!   memory-mapped, zero-filled 16 MiB file. Goal: walship >= 40 % of the copy.
//! - `group_commit`: append + flush(end) per commit, 1 thread against 32
//!   threads sharing one writer, on the real disk. Goal: 32 threads commit
//!   >= 10x the records per second of one.
//! - `decode`: `walship dump --verify` (`walship::dump::run`) over a 16 MiB
//!   segment written by PostgreSQL 15. The segment comes from
//!   `$WALSHIP_PG_SEGMENT`, or from `target/bench-pg-wal/`, where
//!   `benches/dump_vs_pg_waldump.sh` leaves one; without either the group is
//!   skipped.
//!
//! Every file is made under cargo's `CARGO_TARGET_TMPDIR` (`target/tmp`), on
//! the project's own (real) filesystem, never on a tmpfs `/tmp`. After the
//! groups run, the goal ratios are printed from criterion's estimates.

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode, Throughput};
use memmap2::MmapMut;
use walship::dump::{self, DumpMode, DumpOptions, DumpOutcome};
use walship::wal::format::RM_WALSHIP_ID;
use walship::wal::{
    Decoder, Expect, SegNo, SegmentName, SegmentSize, Step, TimelineId, WalWriter, WriterConfig,
};

const SEG_MIB: u64 = 16;
const SEG_BYTES: usize = (SEG_MIB as usize) << 20;
/// 24-byte record header + 2-byte short main-data header + 100 bytes of
/// data = 126, MAXALIGNed.
const RECORD_BYTES: usize = 128;
const PAYLOAD: [u8; 100] = [0xA5; 100];
/// Records per measured batch: 130,000 x 128 B = 16.64 MB, which fits in
/// one 16 MiB segment after its page headers (16,728,048 usable bytes), so
/// a batch never switches segments; with those headers (16.69 MB) it also
/// stays under the 16 MiB of unflushed backlog past which the writer
/// flushes by itself (both asserted).
const BATCH_RECORDS: usize = 130_000;

fn bench_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("walship-bench");
    fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

fn seg_size() -> SegmentSize {
    SegmentSize::from_mib(SEG_MIB).unwrap()
}

fn config(dir: &Path) -> WriterConfig {
    WriterConfig {
        dir: dir.to_path_buf(),
        seg_size: seg_size(),
        system_id: 7_000_000_000_000_000_001,
        timeline: TimelineId::FIRST,
        mark_ready: false,
    }
}

/// A writer on a new, empty WAL directory.
fn open_writer(dir: &Path) -> WalWriter {
    WalWriter::open(config(dir), None, &mut |_| {}).unwrap().0
}

/// A zero-filled file of one segment, written the way the writer makes
/// segments (write(2) of zeros, fsync), so its pages are in the page cache,
/// clean, as a fresh segment's are.
fn zeroed_file(path: &Path) -> File {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SEG_MIB {
        f.write_all(&zeros).unwrap();
    }
    f.sync_all().unwrap();
    f
}

/// A 128-byte stand-in for one record, as the baseline copies it.
fn record_image() -> [u8; RECORD_BYTES] {
    let mut r = [0u8; RECORD_BYTES];
    r[..4].copy_from_slice(&126u32.to_le_bytes());
    r[26..126].copy_from_slice(&PAYLOAD);
    r
}

fn copy_records(dst: &mut [u8], record: &[u8; RECORD_BYTES]) {
    for chunk in dst[..BATCH_RECORDS * RECORD_BYTES].chunks_exact_mut(RECORD_BYTES) {
        chunk.copy_from_slice(black_box(record));
    }
}

/// One measured batch: `BATCH_RECORDS` appends into a fresh writer whose
/// first segment was just created (untimed). The spare for segment 2 is made
/// beforehand, so no background zero-fill competes with the timed loop.
fn walship_batch(root: &Path) -> Duration {
    let dir = tempfile::tempdir_in(root).unwrap();
    let next = SegmentName::new(TimelineId::FIRST, SegNo(2)).file_name(seg_size());
    File::create(dir.path().join(format!("{next}.next")))
        .unwrap()
        .set_len(SEG_BYTES as u64)
        .unwrap();
    let w = open_writer(dir.path());
    let flushed = w.flushed_lsn();
    let start = Instant::now();
    for i in 0..BATCH_RECORDS {
        black_box(w.append(RM_WALSHIP_ID, 0x20, i as u32, &PAYLOAD).unwrap());
    }
    let elapsed = start.elapsed();
    assert_eq!(
        w.insert_lsn().segno(seg_size()),
        SegNo(1),
        "batch left segment 1"
    );
    assert_eq!(w.flushed_lsn(), flushed, "the batch flushed by itself");
    elapsed
}

/// The baseline's batch: the same bytes, 128 at a time, into a fresh
/// mapping of a fresh zero-filled file (so it pays the first-write page
/// faults that writing new WAL into fresh memory costs).
fn memcpy_batch(root: &Path) -> Duration {
    let dir = tempfile::tempdir_in(root).unwrap();
    let file = zeroed_file(&dir.path().join("seg"));
    // SAFETY: the file is ours alone, in a private temp dir.
    let mut map = unsafe { MmapMut::map_mut(&file) }.unwrap();
    let record = record_image();
    let start = Instant::now();
    copy_records(&mut map, &record);
    let elapsed = start.elapsed();
    black_box(&map[..]);
    elapsed
}

fn bench_append(c: &mut Criterion) {
    let root = bench_root();
    let mut g = c.benchmark_group("append");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes((BATCH_RECORDS * RECORD_BYTES) as u64));

    // One batch per iteration (see `walship_batch`); segment switches are
    // measured apart, in `walship_4_segments`.
    g.bench_function("walship", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| walship_batch(&root)).sum())
    });

    // The baseline (see `memcpy_batch`).
    g.bench_function("memcpy_fresh_mmap", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| memcpy_batch(&root)).sum())
    });

    // For reference only: the same copy into a mapping whose pages are
    // already faulted in and dirty (no page faults: memory bandwidth).
    {
        let dir = tempfile::tempdir_in(&root).unwrap();
        let file = zeroed_file(&dir.path().join("seg"));
        // SAFETY: the file is ours alone, in a private temp dir.
        let mut map = unsafe { MmapMut::map_mut(&file) }.unwrap();
        map.fill(1);
        let record = record_image();
        g.bench_function("memcpy_warm_mmap", |b| {
            b.iter(|| {
                copy_records(&mut map, &record);
                black_box(&map[..]);
            })
        });
    }

    // Segment switches included: 4 segments' worth of records into a fresh
    // writer, with all it does on the way: zero-filling (write + fsync) each
    // next segment in the background, waiting for it when the insert
    // position gets there, and anything it does by itself as its unflushed
    // backlog grows (see BENCHMARKS.md).
    g.throughput(Throughput::Bytes((4 * BATCH_RECORDS * RECORD_BYTES) as u64));
    g.measurement_time(Duration::from_secs(6));
    g.bench_function("walship_4_segments", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir_in(&root).unwrap();
                let w = open_writer(dir.path());
                let start = Instant::now();
                for i in 0..4 * BATCH_RECORDS {
                    black_box(w.append(RM_WALSHIP_ID, 0x20, i as u32, &PAYLOAD).unwrap());
                }
                total += start.elapsed();
                drop(w);
            }
            total
        })
    });
    g.finish();
}

/// `iters` commits (append + flush to the record's end) shared among
/// `threads` threads; the clock runs from when all threads are ready until
/// the last commit returns.
fn commit(w: &WalWriter, threads: usize, iters: u64) -> Duration {
    let barrier = Barrier::new(threads + 1);
    let mut start = None;
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let n = iters / threads as u64 + u64::from(t < iters % threads as u64);
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for i in 0..n {
                    let a = w.append(RM_WALSHIP_ID, 0x20, i as u32, &PAYLOAD).unwrap();
                    assert!(w.flush(a.end).unwrap() >= a.end);
                }
            });
        }
        barrier.wait();
        start = Some(Instant::now());
    });
    start.unwrap().elapsed()
}

fn bench_group_commit(c: &mut Criterion) {
    let root = bench_root();
    let mut g = c.benchmark_group("group_commit");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(1));
    for threads in [1usize, 32] {
        let dir = tempfile::tempdir_in(&root).unwrap();
        let w = open_writer(dir.path());
        g.bench_function(format!("{threads}_appenders"), |b| {
            b.iter_custom(|iters| commit(&w, threads, iters))
        });
    }
    g.finish();
}

/// The PostgreSQL-written segment to decode, if there is one.
fn pg_segment() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WALSHIP_PG_SEGMENT") {
        return Some(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()?
        .join("bench-pg-wal");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    files.sort();
    files.into_iter().next()
}

fn bench_decode(c: &mut Criterion) {
    let Some(segment) = pg_segment() else {
        eprintln!(
            "decode: skipped; no PostgreSQL segment (set WALSHIP_PG_SEGMENT or run \
             benches/dump_vs_pg_waldump.sh, which leaves one in target/bench-pg-wal/)"
        );
        return;
    };
    let opts = DumpOptions {
        paths: vec![segment.clone()],
        mode: DumpMode::Verify,
        ..DumpOptions::default()
    };
    let records = match dump::run(&opts, &mut std::io::sink()).unwrap() {
        DumpOutcome::Clean { records, message } => {
            eprintln!(
                "decode: {} holds {records} records ({message})",
                segment.display()
            );
            records
        }
        DumpOutcome::Damaged { message } => panic!("{}: {message}", segment.display()),
    };
    assert!(records > 0);
    let data = fs::read(&segment).unwrap();
    assert_eq!(data.len(), SEG_BYTES);
    let name = segment
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let start_lsn = SegmentName::parse(name, seg_size())
        .expect("a segment file name")
        .segno
        .start_lsn(seg_size());

    let mut g = c.benchmark_group("decode");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(SEG_BYTES as u64));
    // What `walship dump --verify SEGMENT` does, minus process start-up.
    g.bench_function("dump_verify", |b| {
        b.iter(|| {
            let outcome = dump::run(&opts, &mut std::io::sink()).unwrap();
            assert!(matches!(outcome, DumpOutcome::Clean { records: r, .. } if r == records));
        })
    });
    // For reference: the decoder alone over the segment in memory (no
    // file, no mmap), and CRC-32C over the whole segment, the floor any
    // verifying reader pays.
    g.bench_function("decoder_in_memory", |b| {
        b.iter(|| {
            let mut d = Decoder::at_page_start(seg_size(), start_lsn, Expect::default());
            let mut n = 0u64;
            loop {
                let off = (d.pos().0 - start_lsn.0) as usize;
                if off >= data.len() {
                    break;
                }
                match d.decode(&data[off..]).1 {
                    Step::Record(_) => n += 1,
                    Step::NeedMore => break,
                    Step::End(e) => panic!("{e}"),
                }
            }
            assert_eq!(n, records);
        })
    });
    g.bench_function("crc32c_whole_segment", |b| {
        b.iter(|| black_box(crc32c::crc32c(black_box(&data))))
    });
    g.finish();
}

/// The mean (or, in linear sampling, the slope) time per iteration, in ns,
/// of a benchmark measured by this process.
fn estimate(criterion_dir: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir.join(id).join("new/estimates.json");
    if fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json = fs::read_to_string(path).ok()?;
    let field = |name: &str| -> Option<f64> {
        let at = json.find(&format!("\"{name}\":{{"))?;
        let rest = &json[at..];
        let v = &rest[rest.find("\"point_estimate\":")? + 17..];
        v[..v.find([',', '}'])?].trim().parse().ok()
    };
    field("slope").or_else(|| field("mean"))
}

/// Where criterion keeps its estimates (as criterion itself decides).
fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../criterion"))
}

fn print_ratios(since: SystemTime) {
    let dir = criterion_dir();
    let batch = (BATCH_RECORDS * RECORD_BYTES) as f64;
    println!("\n== goal ratios (from this run's criterion estimates)");
    match (
        estimate(&dir, "append/walship", since),
        estimate(&dir, "append/memcpy_fresh_mmap", since),
    ) {
        (Some(w), Some(m)) => println!(
            "append: walship {:.3} GB/s, memcpy into a fresh mapping {:.3} GB/s: {:.1} % (goal >= 40 %: {})",
            batch / w,
            batch / m,
            100.0 * m / w,
            if m / w >= 0.4 { "met" } else { "NOT met" }
        ),
        _ => println!("append: not measured in this run"),
    }
    if let (Some(w), Some(m)) = (
        estimate(&dir, "append/walship", since),
        estimate(&dir, "append/memcpy_warm_mmap", since),
    ) {
        println!(
            "        (against memcpy into an already-faulted mapping, {:.3} GB/s: {:.1} %)",
            batch / m,
            100.0 * m / w
        );
    }
    match (
        estimate(&dir, "group_commit/1_appenders", since),
        estimate(&dir, "group_commit/32_appenders", since),
    ) {
        (Some(one), Some(many)) => println!(
            "group_commit: 1 appender {:.0} commits/s, 32 appenders {:.0} commits/s: {:.1}x (goal >= 10x: {})",
            1e9 / one,
            1e9 / many,
            one / many,
            if one / many >= 10.0 { "met" } else { "NOT met" }
        ),
        _ => println!("group_commit: not measured in this run"),
    }
    if let Some(t) = estimate(&dir, "decode/dump_verify", since) {
        println!(
            "decode: dump --verify {:.1} MiB/s ({:.2} ms per 16 MiB segment)",
            SEG_MIB as f64 * 1e9 / t,
            t / 1e6
        );
    }
}

/// The median of some durations.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The goal ratios measured again with the two sides alternating, round by
/// round, so that load from other processes on a shared machine hits both
/// alike; medians over the rounds. Only for the groups this run measured.
fn interleaved_ratios(measured: impl Fn(&str) -> bool) {
    let root = bench_root();
    if measured("append/walship") && measured("append/memcpy_fresh_mmap") {
        let (mut w, mut m) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            w.push(walship_batch(&root));
            m.push(memcpy_batch(&root));
        }
        let (w, m) = (median(w), median(m));
        let bytes = (BATCH_RECORDS * RECORD_BYTES) as f64;
        println!(
            "append, interleaved (15 rounds, medians): walship {:.3} GB/s, memcpy {:.3} GB/s: {:.1} % (goal >= 40 %: {})",
            bytes / w.as_nanos() as f64,
            bytes / m.as_nanos() as f64,
            100.0 * m.as_secs_f64() / w.as_secs_f64(),
            if m.as_secs_f64() / w.as_secs_f64() >= 0.4 { "met" } else { "NOT met" }
        );
    }
    if measured("group_commit/1_appenders") && measured("group_commit/32_appenders") {
        let dir = tempfile::tempdir_in(&root).unwrap();
        let w = open_writer(dir.path());
        let (mut one, mut many) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            one.push(commit(&w, 1, 100) / 100);
            many.push(commit(&w, 32, 1600) / 1600);
        }
        let (one, many) = (median(one), median(many));
        println!(
            "group_commit, interleaved (5 rounds, medians): 1 appender {:.0} commits/s, 32 appenders {:.0} commits/s: {:.1}x (goal >= 10x: {})",
            1.0 / one.as_secs_f64(),
            1.0 / many.as_secs_f64(),
            one.as_secs_f64() / many.as_secs_f64(),
            if one.as_secs_f64() / many.as_secs_f64() >= 10.0 { "met" } else { "NOT met" }
        );
    }
}

fn main() {
    let since = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    bench_append(&mut c);
    bench_group_commit(&mut c);
    bench_decode(&mut c);
    c.final_summary();
    print_ratios(since);
    let dir = criterion_dir();
    interleaved_ratios(|id| estimate(&dir, id, since).is_some());
}
