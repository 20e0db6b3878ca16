//! The `decoder` fuzz target's body (`fuzz/decoder_harness.rs`), run in CI
//! without cargo-fuzz: over the committed sample segments in `fixtures/wal/`
//! and thousands of mutations of them and of a small valid WAL stream
//! written here. The decoder must never panic or stop progressing, must keep
//! its API contract, and must answer the same however its input is split.
//!
//! `WALSHIP_FUZZ_SEEDS=DIR cargo test --test decoder_corpus` also writes the
//! valid seed inputs to DIR, for `cargo +nightly fuzz run decoder DIR`.

#[path = "../fuzz/decoder_harness.rs"]
mod decoder_harness;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use decoder_harness::{
    decode_checked, decode_input, parse_input, InputHeader, Outcome, Setup, Start, HEADER_LEN,
    SYSID,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walship::wal::format::{MAX_RECORD_LEN, PAGE_SIZE, RM_WALSHIP_ID, XLP_FIRST_IS_CONTRECORD};
use walship::wal::reader::{walk, SegmentFiles, WalkEnd};
use walship::wal::{
    Decoder, EndReason, Expect, Lsn, SegNo, SegmentSize, TimelineId, WalFileName, WalWriter,
    WriterConfig,
};

const SEG: u64 = 1 << 20;

/// A valid input and what decoding it must give.
struct Seed {
    name: &'static str,
    input: Vec<u8>,
    /// The LSNs of the records it holds, in order.
    records: Vec<Lsn>,
    /// Whether its WAL ends (zeros) inside the stream.
    ends_clean: bool,
}

/// Writes a small WAL: records of 0 to 300 bytes and some of 8 to 20 kB
/// (spanning pages) in segment 1, a segment switch near its end, and a
/// few more records at the start of segment 2.
/// Segments 1 and 2, and the LSN and end of every record, in order.
struct SmallWal {
    segs: BTreeMap<SegNo, Vec<u8>>,
    records: Vec<(Lsn, Lsn)>,
}

fn small_wal() -> SmallWal {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        dir: dir.path().to_path_buf(),
        seg_size: SegmentSize::from_mib(1).unwrap(),
        system_id: SYSID,
        timeline: TimelineId::FIRST,
        mark_ready: false,
    };
    let mut rng = StdRng::seed_from_u64(0xF022);
    let (w, _) = WalWriter::open(cfg, None, &mut |_| {}).unwrap();
    let mut records = Vec::new();
    let append = |w: &WalWriter, data: &[u8], records: &mut Vec<(Lsn, Lsn)>| {
        let a = w.append(RM_WALSHIP_ID, 0x10, 1, data).unwrap();
        records.push((a.lsn, a.end));
    };
    let random = |rng: &mut StdRng| -> Vec<u8> {
        let len = if rng.gen_bool(0.15) {
            rng.gen_range(8000..20_000)
        } else {
            rng.gen_range(0..300)
        };
        (0..len).map(|_| rng.gen()).collect()
    };
    while w.insert_lsn() < Lsn(SEG + 64 * 1024) {
        append(&w, &random(&mut rng), &mut records);
    }
    // Fill most of segment 1 with large records, then switch near its end.
    while w.insert_lsn() < Lsn(2 * SEG - 70_000) {
        append(&w, &[0xA5; 60_000], &mut records);
    }
    while w.insert_lsn() < Lsn(2 * SEG - 6000) {
        let len = rng.gen_range(0..300);
        append(&w, &vec![0x5A; len], &mut records);
    }
    let switch = w.next_record_lsn();
    // The end of the switch record (a bare header), as pg_switch_wal()
    // says; the next record begins segment 2.
    assert_eq!(w.switch_segment().unwrap(), Lsn(switch.0 + 24));
    assert_eq!(w.insert_lsn(), Lsn(2 * SEG));
    records.push((switch, Lsn(2 * SEG)));
    while w.insert_lsn() < Lsn(2 * SEG + 30_000) {
        append(&w, &random(&mut rng), &mut records);
    }
    w.flush_all().unwrap();
    drop(w);
    let segs = [SegNo(1), SegNo(2)]
        .into_iter()
        .map(|s| {
            let name = format!("0000000100000000000000{:02X}", s.0);
            (s, std::fs::read(dir.path().join(name)).unwrap())
        })
        .collect();
    records.sort();
    SmallWal { segs, records }
}

fn seeds() -> Vec<Seed> {
    let SmallWal {
        segs,
        records: written,
    } = small_wal();
    let (s1, s2) = (&segs[&SegNo(1)], &segs[&SegNo(2)]);
    let header = |at_record, strict, offset: u64, segno, scale| InputHeader {
        at_record,
        strict,
        prev_back: None,
        segno,
        offset: offset as u32,
        scale,
        chunks: [1, 7, 200, 3, 255, 0, 64, 9],
    };
    // The records that begin at or after `from` and end by `to`.
    let within = |from: u64, to: u64| -> Vec<Lsn> {
        written
            .iter()
            .filter(|(l, e)| l.0 >= from && e.0 <= to)
            .map(|(l, _)| *l)
            .collect()
    };
    let mut seeds = Vec::new();

    // Segment 1 from its start: records spanning pages, cut mid-WAL.
    let len = 48 * 1024;
    seeds.push(Seed {
        name: "segment-start",
        input: header(false, true, 0, 1, 2).with_stream(&s1[..len]),
        records: within(SEG, SEG + len as u64),
        ends_clean: false,
    });
    // From a page that begins with a record's continuation.
    let page = (1..6)
        .map(|p| p * PAGE_SIZE)
        .find(|&p| u16::from_le_bytes([s1[p + 2], s1[p + 3]]) & XLP_FIRST_IS_CONTRECORD != 0)
        .expect("no continued page");
    let len = 32 * 1024;
    seeds.push(Seed {
        name: "continued-page",
        input: header(false, false, page as u64, 1, 3).with_stream(&s1[page..page + len]),
        records: within(SEG + page as u64, SEG + (page + len) as u64),
        ends_clean: false,
    });
    // From a record in the middle, its predecessor known.
    let i = (1..written.len())
        .find(|&i| {
            let (lsn, prev) = (written[i].0 .0, written[i - 1].0 .0);
            lsn > SEG + 8192 && lsn - prev <= 8 * 256 && lsn < SEG + 40_000
        })
        .unwrap();
    let lsn = written[i].0;
    let off = lsn.0 - SEG;
    let mut h = header(true, true, off, 1, 1);
    h.prev_back = Some(((lsn.0 - written[i - 1].0 .0) / 8 - 1) as u8);
    let len = 16 * 1024;
    seeds.push(Seed {
        name: "mid-record",
        input: h.with_stream(&s1[off as usize..off as usize + len]),
        records: within(lsn.0, lsn.0 + len as u64),
        ends_clean: false,
    });
    // From the segment switch: the rest of segment 1 is skipped, and the
    // WAL ends in segment 2.
    let switch = written.iter().find(|(_, e)| *e == Lsn(2 * SEG)).unwrap().0;
    let off = (switch.0 - SEG) as usize;
    let mut stream = s1[off..].to_vec();
    stream.extend_from_slice(&s2[..48 * 1024]);
    seeds.push(Seed {
        name: "switch",
        input: header(true, false, off as u64, 1, 4).with_stream(&stream),
        records: within(switch.0, u64::MAX),
        ends_clean: true,
    });
    // Segment 2 from its start, to the end of WAL.
    seeds.push(Seed {
        name: "segment-2",
        input: header(false, true, 0, 2, 0).with_stream(&s2[..48 * 1024]),
        records: within(2 * SEG, u64::MAX),
        ends_clean: true,
    });
    seeds
}

#[test]
fn valid_seeds_decode_to_the_records_written() {
    let seeds = seeds();
    let out_dir = std::env::var_os("WALSHIP_FUZZ_SEEDS").map(PathBuf::from);
    for seed in &seeds {
        // Every chunk scale gives the same answer (decode_checked compares
        // each with the whole input at once).
        for scale in 0..8u8 {
            let mut input = seed.input.clone();
            input[0] = (input[0] & 0x1F) | (scale << 5);
            let out = decode_input(&input).unwrap();
            let got: Vec<Lsn> = out.records.iter().map(|r| r.0).collect();
            assert!(seed.records.len() > 2, "{}: a poor seed", seed.name);
            // A record whose bytes end in the stream but whose padding does
            // not may come last.
            assert!(
                got.starts_with(&seed.records) && got.len() <= seed.records.len() + 1,
                "{}: got {got:?}, wanted {:?}",
                seed.name,
                seed.records
            );
            match &out.end {
                Some(end) if seed.ends_clean => {
                    assert_eq!(end.reason, EndReason::Zeros, "{}: {end}", seed.name);
                    assert_eq!(got, seed.records, "{}", seed.name);
                }
                None if !seed.ends_clean => {}
                other => panic!("{}: ended with {other:?}", seed.name),
            }
        }
        if let Some(dir) = &out_dir {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(seed.name), &seed.input).unwrap();
        }
    }
}

/// Values that make a length, an LSN or a flag interesting.
const INTERESTING_U32: [u32; 12] = [
    0,
    1,
    23,
    24,
    25,
    8192,
    0xD110,
    0x0007_0000,
    MAX_RECORD_LEN,
    MAX_RECORD_LEN + 1,
    0x7FFF_FFFF,
    u32::MAX,
];

fn mutate(input: &mut Vec<u8>, other: &[u8], rng: &mut StdRng) {
    let body = HEADER_LEN..input.len().max(HEADER_LEN + 1);
    match rng.gen_range(0..10) {
        0 | 1 => {
            if input.len() > HEADER_LEN {
                let at = rng.gen_range(body);
                input[at] ^= 1 << rng.gen_range(0..8);
            }
        }
        2 => {
            if input.len() > HEADER_LEN {
                let at = rng.gen_range(body);
                input[at] = [0, 0xFF, 0x10, 0xD1, 0x01, 0x02, 0x03, 0x05][rng.gen_range(0..8)];
            }
        }
        3 => {
            // An interesting u32 at an 8-aligned stream position: record
            // lengths, page header fields.
            let n = input.len().saturating_sub(HEADER_LEN) / 8;
            if n > 0 {
                let at = HEADER_LEN + 8 * rng.gen_range(0..n) + 4 * rng.gen_range(0..2);
                let v = INTERESTING_U32[rng.gen_range(0..INTERESTING_U32.len())];
                let end = (at + 4).min(input.len());
                input[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
        }
        4 => {
            if input.len() > HEADER_LEN {
                let at = rng.gen_range(body);
                let end = (at + rng.gen_range(1..=9000)).min(input.len());
                input[at..end].fill(0);
            }
        }
        5 => {
            let at = rng.gen_range(0..=input.len());
            input.truncate(at);
        }
        6 => {
            if input.len() > HEADER_LEN {
                let at = rng.gen_range(body);
                let end = (at + rng.gen_range(1..=64)).min(input.len());
                input.drain(at..end);
            }
        }
        7 => {
            if input.len() > HEADER_LEN {
                let at = rng.gen_range(body);
                let end = (at + rng.gen_range(1..=64)).min(input.len());
                let copy = input[at..end].to_vec();
                let to = rng.gen_range(HEADER_LEN..=input.len());
                input.splice(to..to, copy);
            }
        }
        8 => {
            // The header: where decoding starts, how strictly, in what chunks.
            if !input.is_empty() {
                let at = rng.gen_range(0..HEADER_LEN.min(input.len()));
                input[at] = rng.gen();
            }
        }
        _ => {
            // Splice in a piece of another seed.
            if other.len() > HEADER_LEN && input.len() > HEADER_LEN {
                let from = rng.gen_range(HEADER_LEN..other.len());
                let len = rng.gen_range(1..=16_384).min(other.len() - from);
                let at = rng.gen_range(HEADER_LEN..input.len());
                let end = (at + len).min(input.len());
                input[at..end].copy_from_slice(&other[from..from + (end - at)]);
            }
        }
    }
}

fn tally(t: &mut BTreeMap<&'static str, u32>, out: &Outcome) {
    let kind = match out.end.as_ref().map(|e| &e.reason) {
        None => "ran out of input",
        Some(EndReason::Zeros) => "zeros",
        Some(EndReason::StalePage { .. }) => "stale page",
        Some(EndReason::TornRecord { .. }) => "torn record",
        Some(EndReason::BadPageHeader { .. }) => "bad page header",
        Some(EndReason::BadRecord { .. }) => "bad record",
    };
    *t.entry(kind).or_default() += 1;
}

#[test]
fn mutated_streams_never_panic_hang_or_depend_on_chunking() {
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(0xBAD_F00D);
    let mut t = BTreeMap::new();
    let mut records = 0;
    let started = std::time::Instant::now();
    let iterations = 20_000;
    for _ in 0..iterations {
        let seed = &seeds[rng.gen_range(0..seeds.len())];
        let other = &seeds[rng.gen_range(0..seeds.len())].input;
        let mut input = seed.input.clone();
        for _ in 0..rng.gen_range(1..=4) {
            mutate(&mut input, other, &mut rng);
        }
        let out = std::panic::catch_unwind(|| decode_input(&input));
        match out {
            Ok(Some(out)) => {
                records += out.records.len();
                tally(&mut t, &out);
            }
            Ok(None) => *t.entry("too short").or_default() += 1,
            Err(e) => {
                let path = std::env::temp_dir().join("walship-decoder-crash");
                std::fs::write(&path, &input).unwrap();
                eprintln!("input saved to {}", path.display());
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!(
        "{iterations} mutated inputs in {:.1?}: {records} records, {t:?}",
        started.elapsed()
    );
    for kind in [
        "ran out of input",
        "zeros",
        "torn record",
        "bad page header",
        "bad record",
    ] {
        assert!(t.contains_key(kind), "no input ended with {kind}: {t:?}");
    }
}

/// The committed sample segments: each directory of `fixtures/wal/` as one
/// stream, from its first segment's start.
struct Fixture {
    dir: PathBuf,
    setup: Setup,
    /// The directory's consecutive segments, one after the other.
    stream: Vec<u8>,
    files: SegmentFiles,
}

fn fixture_streams() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/wal");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dir in dirs {
        let dir = dir.unwrap().path();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .collect();
        files.sort();
        let Some(first) = files.first() else { continue };
        let head = std::fs::read(first).unwrap();
        let seg_bytes = u32::from_le_bytes(head[32..36].try_into().unwrap());
        let size = SegmentSize::new(u64::from(seg_bytes)).unwrap();
        let mut segs = BTreeMap::new();
        for f in &files {
            let name = f.file_name().unwrap().to_str().unwrap();
            let Ok(WalFileName::Segment(s)) = WalFileName::parse(name, size) else {
                panic!("{name}: not a segment name")
            };
            segs.insert(s.segno, f.clone());
        }
        let first_seg = *segs.keys().next().unwrap();
        // Consecutive segments only, so that they form one stream.
        let mut stream = Vec::new();
        let mut files_used = BTreeMap::new();
        for (i, (segno, path)) in segs.iter().enumerate() {
            if segno.0 != first_seg.0 + i as u64 {
                break;
            }
            stream.extend_from_slice(&std::fs::read(path).unwrap());
            files_used.insert(*segno, path.clone());
        }
        let setup = Setup {
            seg_size: size,
            start: Start::PageStart(first_seg.start_lsn(size)),
            expect: Expect::default(),
            chunks: vec![4093, 1, 8192, 24, 333, 65536, 7],
        };
        let files = SegmentFiles {
            size,
            files: files_used,
        };
        out.push(Fixture {
            dir,
            setup,
            stream,
            files,
        });
    }
    out
}

#[test]
fn fixtures_decode_as_the_reader_walks_them_and_survive_mutation() {
    let fixtures = fixture_streams();
    if fixtures.is_empty() {
        eprintln!("no fixtures/wal/ samples: nothing to do");
        return;
    }
    let mut rng = StdRng::seed_from_u64(0xF1C5);
    for Fixture {
        dir,
        setup,
        stream,
        files,
    } in &fixtures
    {
        let out = decode_checked(setup, stream);
        assert!(!out.records.is_empty(), "{}: no records", dir.display());
        // The harness and the library's reader agree.
        let Start::PageStart(start) = setup.start else {
            unreachable!()
        };
        let mut decoder = Decoder::at_page_start(setup.seg_size, start, setup.expect);
        let mut walked = Vec::new();
        let end = walk(files, &mut decoder, None, |r| {
            walked.push((r.lsn, r.end, r.header().tot_len, r.header().crc));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(walked == out.records, "{}", dir.display());
        match (&end, &out.end) {
            (WalkEnd::EndOfWal { end, .. }, Some(e)) => assert_eq!(end, e),
            (WalkEnd::MissingSegment { .. }, None) => {}
            (a, b) => panic!("{}: reader {a:?}, harness {b:?}", dir.display()),
        }
        eprintln!(
            "{}: {} records, {}",
            dir.display(),
            out.records.len(),
            out.end.as_ref().map_or("ran out".into(), |e| e.to_string())
        );
        // Mutations anywhere in the stream, and from a page or a record in
        // the middle of it.
        for i in 0..60 {
            let mut s = stream.clone();
            for _ in 0..rng.gen_range(1..=6) {
                let at = rng.gen_range(0..s.len());
                match rng.gen_range(0..3) {
                    0 => s[at] ^= 1 << rng.gen_range(0..8),
                    1 => {
                        let end = (at + rng.gen_range(1..20_000)).min(s.len());
                        s[at..end].fill(0);
                    }
                    _ => {
                        let at = at / 8 * 8;
                        let v = INTERESTING_U32[rng.gen_range(0..INTERESTING_U32.len())];
                        let end = (at + 4).min(s.len());
                        s[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                    }
                }
            }
            let mut setup = setup.clone();
            let mut from = 0;
            if i % 3 == 1 {
                let page = out.records[rng.gen_range(0..out.records.len())].0 .0 / 8192 * 8192;
                from = (page - start.0) as usize;
                setup.start = Start::PageStart(Lsn(page));
            } else if i % 3 == 2 {
                let r = out.records[rng.gen_range(0..out.records.len())];
                from = (r.0 .0 - start.0) as usize;
                setup.start = Start::Record {
                    lsn: r.0,
                    prev: None,
                };
            }
            decode_checked(&setup, &s[from..]);
        }
    }
}

#[test]
fn an_input_shorter_than_its_header_is_ignored() {
    for len in 0..HEADER_LEN {
        assert!(parse_input(&vec![0xFF; len]).is_none());
    }
    // The smallest inputs: a header and a few bytes, from every start.
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..2000 {
        let len = rng.gen_range(HEADER_LEN..HEADER_LEN + 64);
        let input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        decode_input(&input);
    }
}
