//! PostgreSQL 15's own pg_waldump walks the WAL walship writes.

mod common;

use std::process::Command;

use walship::wal::format::RM_WALSHIP_ID;
use walship::wal::payload::{Op, Payload};
use walship::wal::{SegmentSize, TimelineId, WalWriter, WriterConfig};

#[test]
fn pg_waldump_walks_walship_segments() {
    let pg_waldump = common::pg_bin("pg_waldump");
    let dir = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        dir: dir.path().to_path_buf(),
        seg_size: SegmentSize::from_mib(1).unwrap(),
        system_id: 7_300_000_000_000_000_042,
        timeline: TimelineId::FIRST,
        mark_ready: false,
    };
    let (w, resumed) = WalWriter::open(cfg, None, &mut |_| {}).unwrap();
    let mut records = 0;
    let mut buf = Vec::new();
    let big = vec![b'x'; 20_000];
    for i in 0..4000u32 {
        buf.clear();
        let key = format!("key{i}");
        let info = match i % 50 {
            0 => Payload::Commit(vec![Op::Put {
                key: key.as_bytes(),
                value: &big,
            }])
            .encode(&mut buf),
            1 => Payload::Commit(vec![Op::Delete {
                key: key.as_bytes(),
            }])
            .encode(&mut buf),
            _ => Payload::Commit(vec![Op::Put {
                key: key.as_bytes(),
                value: b"value",
            }])
            .encode(&mut buf),
        };
        w.append(RM_WALSHIP_ID, info, i + 1, &buf).unwrap();
        records += 1;
        if i == 2000 {
            w.switch_segment().unwrap();
            records += 1;
        }
    }
    let end = w.flush_all().unwrap();
    drop(w);
    let out = Command::new(pg_waldump)
        .arg("--path")
        .arg(dir.path())
        .arg("--start")
        .arg(resumed.end.to_string())
        .arg("--end")
        .arg(end.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pg_waldump failed: {stderr}\n{}",
        stdout.lines().last().unwrap_or("")
    );
    let lines = stdout.lines().filter(|l| l.starts_with("rmgr:")).count();
    assert_eq!(
        lines, records,
        "pg_waldump saw {lines} records, walship wrote {records}\n{stderr}"
    );
    assert!(
        stdout.contains("rmgr: custom200"),
        "{}",
        &stdout[..stdout.len().min(500)]
    );
    assert!(stdout.contains("SWITCH"));
}
