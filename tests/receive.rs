//! `walship receive`, pg_receivewal's job: against a real PostgreSQL 15 its
//! segments are byte-identical to pg_receivewal's; against walship they are
//! the primary's own; it resumes where it stopped, and WAL that fails its
//! CRC on arrival is never written.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, PgCluster};

fn complete_segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

fn receive(from: &str, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["receive", "--from", from, "-D", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    common::walship(&args)
}

fn ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn walship_receive_matches_pg_receivewal_against_postgresql() {
    let mut pg = PgCluster::init(1);
    pg.start();
    let socket = pg.socket_dir().display().to_string();
    let from = format!("host={socket} port=5432 user=postgres");
    let pg_receivewal = |dir: &Path, extra: &[&str]| {
        let out = Command::new(common::pg_bin("pg_receivewal"))
            .args(["-h", &socket, "-U", "postgres", "--no-password", "-D"])
            .arg(dir)
            .args(extra)
            .output()
            .unwrap();
        ok("pg_receivewal", &out);
    };
    let theirs = tempfile::tempdir().unwrap();
    let ours = tempfile::tempdir().unwrap();
    // Slots that reserve WAL from now, so both receivers start at the same
    // segment (pg_receivewal --create-slot would not reserve it).
    pg.psql("SELECT pg_create_physical_replication_slot('theirs', true)");
    pg.psql("SELECT pg_create_physical_replication_slot('ours', true)");
    common::mixed_workload(&pg);
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("INSERT INTO t VALUES (300000, 'after the last switch')");
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()");
    pg_receivewal(
        theirs.path(),
        &["--slot", "theirs", "--endpos", &end, "--no-loop"],
    );
    ok(
        "walship receive",
        &receive(
            &from,
            ours.path(),
            &["--slot", "ours", "--endpos", &end, "--no-loop"],
        ),
    );
    let names = complete_segments(theirs.path());
    assert!(names.len() >= 3, "pg_receivewal wrote only {names:?}");
    assert_eq!(complete_segments(ours.path()), names);
    for name in &names {
        let a = std::fs::read(theirs.path().join(name)).unwrap();
        let b = std::fs::read(ours.path().join(name)).unwrap();
        assert!(a == b, "{name} differs from pg_receivewal's");
    }
    // A slot walship creates on PostgreSQL reports where it keeps WAL
    // from, as pg_replication_slots has it.
    let made = tempfile::tempdir().unwrap();
    let out = receive(&from, made.path(), &["--slot", "made", "--create-slot"]);
    ok("walship receive --create-slot", &out);
    let kept = pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'made'");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("(WAL kept from {kept})")),
        "{}; restart_lsn {kept}",
        String::from_utf8_lossy(&out.stdout)
    );
    // walship status and basebackup know a PostgreSQL server for what it
    // is, basebackup before it waits on PostgreSQL's checkpoint or leaves
    // anything behind.
    let out = common::walship(&["status", "--from", &from]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a walship node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clone = made.path().join("clone");
    let out = common::walship(&["basebackup", "--from", &from, "-D", clone.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("is not a walship node") && err.contains("pg_basebackup"),
        "{err}"
    );
    assert!(!clone.exists());
    // walship dump reads what it received.
    let out = common::walship(&["dump", "--verify", ours.path().to_str().unwrap()]);
    ok("walship dump --verify", &out);
}

#[test]
fn receive_from_walship_resumes_and_matches_the_primary() {
    let mut node = Node::init("");
    node.start();
    let from = format!("host=127.0.0.1 port={} user=tester", node.port);
    let dir = tempfile::tempdir().unwrap();
    // An end before anything it could receive is refused, not "reached".
    let early = tempfile::tempdir().unwrap();
    let out = receive(&from, early.path(), &["--endpos", "0/100", "--no-loop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("--endpos 0/100 lies before"),
        "{}",
        common::stderr(&out)
    );
    ok(
        "create slot",
        &receive(&from, dir.path(), &["--slot", "r", "--create-slot"]),
    );
    let mut c = node.client();
    let mut ends = Vec::new();
    for round in 0..3 {
        for i in 0..200 {
            c.execute(
                "INSERT INTO kv VALUES ($1, $2)",
                &[&format!("{round}-{i}"), &"v".repeat(i)],
            )
            .unwrap();
        }
        node.query_one("SELECT pg_switch_wal()");
        c.execute(
            "INSERT INTO kv VALUES ($1, 'x')",
            &[&format!("after-{round}")],
        )
        .unwrap();
        ends.push(node.query_one("SELECT pg_current_wal_flush_lsn()"));
    }
    // In two runs: the second resumes at the start of the first's partial.
    for end in [&ends[0], &ends[2]] {
        ok(
            "walship receive",
            &receive(
                &from,
                dir.path(),
                &["--slot", "r", "--endpos", end, "--no-loop"],
            ),
        );
    }
    let names = complete_segments(dir.path());
    assert!(names.len() >= 2, "{names:?}");
    for name in &names {
        let a = std::fs::read(dir.path().join(name)).unwrap();
        let b = std::fs::read(node.dir.join("wal").join(name)).unwrap();
        assert!(a == b, "{name} differs from the primary's");
    }
}

#[test]
fn wal_that_fails_its_crc_on_arrival_is_never_written() {
    let mut node = Node::init("");
    node.start();
    let from = format!("host=127.0.0.1 port={} user=tester", node.port);
    let dir = tempfile::tempdir().unwrap();
    ok(
        "create slot",
        &receive(&from, dir.path(), &["--slot", "r", "--create-slot"]),
    );
    let mut c = node.client();
    for i in 0..100 {
        c.execute(
            "INSERT INTO kv VALUES ($1, 'a value of some length')",
            &[&i.to_string()],
        )
        .unwrap();
    }
    let end = node.query_one("SELECT pg_current_wal_flush_lsn()");
    // Damage one record's payload in the primary's segment, as a bad disk would.
    let seg = node.dir.join("wal").join("000000010000000000000001");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(b"a value of some length".len())
        .rposition(|w| w == b"a value of some length")
        .unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let out = receive(
        &from,
        dir.path(),
        &["--slot", "r", "--endpos", &end, "--no-loop"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fails verification") && err.contains("CRC"),
        "{err}"
    );
    let partial = std::fs::read(dir.path().join("000000010000000000000001.partial")).unwrap();
    assert_eq!(partial[at], 0, "the damaged record reached the disk");
    assert!(
        partial[..at]
            .windows(22)
            .any(|w| w == b"a value of some length"),
        "the records before the damaged one were not written"
    );
}

#[test]
fn a_postgresql_primary_stops_cleanly_while_walship_receive_streams_from_it() {
    let mut pg = PgCluster::init(1);
    pg.start();
    let socket = pg.socket_dir().display().to_string();
    let from = format!("host={socket} port=5432 user=postgres");
    let dir = tempfile::tempdir().unwrap();
    ok(
        "walship receive --create-slot",
        &receive(&from, dir.path(), &["--slot", "s", "--create-slot"]),
    );
    let receiver = common::Background::walship(
        &[
            "receive",
            "--from",
            &from,
            "-D",
            dir.path().to_str().unwrap(),
            "--slot",
            "s",
        ],
        std::process::Stdio::null(),
    );
    common::mixed_workload(&pg);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // At shutdown PostgreSQL asks the receiver for replies until its flush
    // position reaches the shutdown checkpoint: each answer must carry a
    // flush that is true then, or the server waits for ever.
    let out = common::pg_command(&common::pg_bin("pg_ctl"))
        .arg("-D")
        .arg(&pg.data)
        .args(["-w", "-t", "20", "-m", "fast", "stop"])
        .output()
        .unwrap();
    drop(receiver);
    assert!(
        out.status.success(),
        "pg_ctl stop: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
