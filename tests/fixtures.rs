//! The committed sample segments in fixtures/wal: both verify cleanly, both
//! tools agree on them, and walship's are exactly what the writer writes
//! today (so a change to the on-disk layout cannot slip in unnoticed).
//!
//! `WALSHIP_BLESS=1 cargo test --test fixtures` rewrites fixtures/wal/walship.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::walship;
use walship::wal::format::RM_WALSHIP_ID;
use walship::wal::payload::{Op, Payload};
use walship::wal::{Lsn, SegmentSize, TimelineId, WalWriter, WriterConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/wal")
        .join(name)
}

/// Writes the walship sample: commits of one to three operations with keys
/// and values of growing size, a 20 kB value that spans pages, a segment
/// switch, and records across the next segment boundary; ends mid-segment.
/// Returns the end of the WAL.
fn write_walship_sample(dir: &Path) -> Lsn {
    let cfg = WriterConfig {
        dir: dir.to_path_buf(),
        seg_size: SegmentSize::from_mib(1).unwrap(),
        system_id: 7_312_345_678_901_234_567,
        timeline: TimelineId::FIRST,
        mark_ready: false,
    };
    let (w, _) = WalWriter::open(cfg, None, &mut |_| {}).unwrap();
    let mut buf = Vec::new();
    let big = vec![b'v'; 20_000];
    for i in 0..6000u32 {
        buf.clear();
        let key = format!("key{:05}", i);
        let value = "x".repeat((i % 97) as usize);
        let ops = match i % 3 {
            0 => vec![Op::Put {
                key: key.as_bytes(),
                value: value.as_bytes(),
            }],
            1 => vec![
                Op::Put {
                    key: key.as_bytes(),
                    value: value.as_bytes(),
                },
                Op::Delete { key: b"key00000" },
            ],
            _ => vec![Op::Put {
                key: key.as_bytes(),
                value: if i % 150 == 2 { &big } else { b"y" },
            }],
        };
        let info = Payload::Commit(ops).encode(&mut buf);
        w.append(RM_WALSHIP_ID, info, i + 1, &buf).unwrap();
        if i == 1000 {
            w.switch_segment().unwrap();
        }
        if i % 1000 == 999 {
            buf.clear();
            let info = Payload::Checkpoint {
                redo: Lsn(0x100028),
            }
            .encode(&mut buf);
            w.append(RM_WALSHIP_ID, info, 0, &buf).unwrap();
        }
    }
    w.flush_all().unwrap()
}

fn segment_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            (name.len() == 24).then(|| (name, std::fs::read(e.path()).unwrap()))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn walship_fixture_matches_what_the_writer_writes() {
    let tmp = tempfile::tempdir().unwrap();
    write_walship_sample(tmp.path());
    let fresh = segment_files(tmp.path());
    assert!(fresh.len() >= 3, "sample should span segments");
    if std::env::var_os("WALSHIP_BLESS").is_some() {
        let dir = fixture("walship");
        for (name, _) in segment_files(&dir) {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        for (name, bytes) in &fresh {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let committed = segment_files(&fixture("walship"));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&committed), names(&fresh));
    for ((name, a), (_, b)) in committed.iter().zip(&fresh) {
        let first_diff = a.iter().zip(b).position(|(x, y)| x != y);
        assert!(
            first_diff.is_none(),
            "{name} differs from the writer's output at offset {first_diff:?}: the on-disk format changed (WALSHIP_BLESS=1 to accept)"
        );
    }
}

#[test]
fn both_fixtures_verify_cleanly() {
    for (name, records) in [("walship", 6007), ("postgres15", 8088)] {
        let dir = fixture(name);
        let out = walship(&["dump", "--verify", dir.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with(&format!("verified {records} records")),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn pg_waldump_walks_the_walship_fixture() {
    let dir = fixture("walship");
    let files = segment_files(&dir);
    let (first, last) = (&files[0].0, &files[files.len() - 1].0);
    // The WAL ends inside the last segment: find where, and stop pg_waldump there.
    let out = walship(&["dump", "--verify", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let end = stdout
        .split("end of WAL at ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap();
    let out = Command::new(common::pg_bin("pg_waldump"))
        .arg("--path")
        .arg(&dir)
        .args(["--end", end, first, last])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("rmgr: custom200"))
        .count();
    assert_eq!(lines, 6006);
}

#[test]
fn dump_prints_walship_records_and_stats() {
    let dir = fixture("walship");
    let out = walship(&["dump", "--end", "0/100200", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap();
    assert_eq!(
        first,
        "rmgr: walship     len (rec/tot):     47/      47, tx:          1, lsn: 0/00100028, prev 0/00000000, desc: COMMIT 1 op: put 'key00000'=''"
    );
    assert!(stdout.lines().all(|l| l.starts_with("rmgr: walship")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reached end LSN"), "{stderr}");

    let out = walship(&["dump", "--stats", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("walship") && l.contains("6006")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("XLOG") && l.split_whitespace().nth(1) == Some("1")),
        "{stdout}"
    );
}

#[test]
fn wal_that_stops_before_later_given_segments_is_not_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in segment_files(&fixture("walship")) {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    // Zeros from a record of the second segment on look like the end of
    // WAL (0/2002E0 begins a record), but the third holds WAL of its own.
    let second = dir.path().join("000000010000000000000002");
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[0x2E0..].fill(0);
    std::fs::write(&second, bytes).unwrap();
    let out = walship(&["dump", "--verify", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // The summary counts; the error, once, on standard error, says why.
    assert!(
        stdout.contains("up to where the WAL breaks off"),
        "{stdout}"
    );
    assert!(
        stderr.contains("end of WAL at 0/2002E0")
            && stderr.contains("from 000000010000000000000003, was never reached"),
        "{stderr}"
    );
}
