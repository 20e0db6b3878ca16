//! walship reads WAL written by a real PostgreSQL 15.

mod common;

use common::{walship, PgCluster};

#[test]
fn walship_dump_verifies_wal_of_a_real_postgres_15() {
    let mut pg = PgCluster::init(1);
    pg.start();
    common::mixed_workload(&pg);
    pg.stop();
    let wal = pg.wal_dir();
    let out = walship(&["dump", "--verify", wal.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walship dump --verify failed: {stdout}{stderr}"
    );
    assert!(stdout.starts_with("verified "), "{stdout}");

    // Both tools see the same records.
    let out = walship(&["dump", wal.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let theirs = common::pg_waldump_records(&wal);
    assert!(ours.len() > 1000, "only {} records", ours.len());
    assert_eq!(
        ours.len(),
        theirs,
        "walship dump and pg_waldump disagree on the record count"
    );
    for rmgr in ["Heap ", "Btree", "Transaction", "XLOG"] {
        assert!(
            ours.iter().any(|l| l.starts_with(&format!("rmgr: {rmgr}"))),
            "no {rmgr} records shown"
        );
    }
    let switches = ours.iter().filter(|l| l.ends_with("desc: SWITCH")).count();
    assert!(
        switches >= 1,
        "no SWITCH record among {}:\n{}",
        ours.len(),
        ours.iter()
            .filter(|l| l.starts_with("rmgr: XLOG"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
