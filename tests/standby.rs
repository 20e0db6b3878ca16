//! Standbys: cloned with `walship basebackup`, streaming from a primary
//! under a concurrent write load. Their WAL is byte-identical to the
//! primary's, their stores equal the primary's at the same LSN, they serve
//! reads and refuse writes, and they survive kill -9 and a vanishing
//! primary.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{wait_until, Node};

fn message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

/// Runs `threads` writers, each committing `commits` upserts and deletes.
fn write_load(node: &Node, threads: usize, commits: usize, tag: &str) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut c = node.client();
                for i in 0..commits {
                    let key = format!("{tag}-{t}-{}", i % 50);
                    if i % 7 == 6 {
                        c.execute("DELETE FROM kv WHERE key = $1", &[&key]).unwrap();
                    } else {
                        c.execute(
                            "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            &[&key, &format!("value {i} {}", "x".repeat(i % 300))],
                        )
                        .unwrap();
                    }
                }
            });
        }
    });
}

/// Waits until `standby` has replayed everything `primary` flushed.
fn catch_up(primary: &Node, standby: &Node) -> String {
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    let status = standby.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '30s')"));
    assert_eq!(status, "success");
    lsn
}

/// Segment files both directories hold are identical, byte for byte;
/// returns how many were compared.
fn assert_same_wal(primary: &Path, standby: &Path) -> usize {
    let mut compared = 0;
    for entry in std::fs::read_dir(standby.join("wal")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.len() != 24 {
            continue;
        }
        let Ok(theirs) = std::fs::read(primary.join("wal").join(&name)) else {
            continue;
        };
        let ours = std::fs::read(standby.join("wal").join(&name)).unwrap();
        assert!(
            ours == theirs,
            "segment {name} differs between primary and standby"
        );
        compared += 1;
    }
    compared
}

#[test]
fn two_standbys_replay_a_concurrent_load_byte_for_byte() {
    let mut primary = Node::init("checkpoint_timeout = 2s");
    primary.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('before', 'the backup')")
        .unwrap();
    let mut s1 = Node::basebackup(&primary, "s1", &["--slot", "s1", "--create-slot"]);
    let mut s2 = Node::basebackup(&primary, "s2", &[]);
    assert!(s1.dir.join("standby.signal").exists());
    let conf = std::fs::read_to_string(s1.dir.join("walship.conf")).unwrap();
    assert!(conf.contains("application_name=s1"), "{conf}");
    assert!(conf.contains("primary_slot_name = 's1'"), "{conf}");
    s1.start();
    s2.start();
    write_load(&primary, 4, 300, "load");
    // Cross a segment switch too.
    primary.query_one("SELECT pg_switch_wal()");
    write_load(&primary, 2, 50, "after-switch");
    for s in [&s1, &s2] {
        catch_up(&primary, s);
        assert_eq!(
            s.query_one("SELECT walship_store_checksum()"),
            primary.query_one("SELECT walship_store_checksum()"),
            "standby's store differs from the primary's at the same LSN\n{}",
            s.log()
        );
        assert_eq!(
            s.query_one("SELECT value FROM kv WHERE key = 'before'"),
            "the backup"
        );
        assert_eq!(s.query_one("SELECT pg_is_in_recovery()"), "t");
        let compared = assert_same_wal(&primary.dir, &s.dir);
        assert!(compared >= 2, "only {compared} segments in common");
    }
    // Reads see replayed state; writes are refused with 25006.
    let err = s1
        .client()
        .batch_execute("INSERT INTO kv VALUES ('no', 'writes')")
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err:?}");
    // It names its upstream (the primary here; another standby when it
    // cascades) as what it is.
    assert!(
        message(&err).contains("standby") && message(&err).contains("it streams from host="),
        "{err:?}"
    );
    let err = s1
        .client()
        .batch_execute("SELECT pg_current_wal_lsn()")
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("55000"), "{err:?}");
    // pg_last_wal_receive_lsn / replay_lsn report where the standby is
    // (polled: a timed checkpoint may have written since the catch-up).
    wait_until("s2 to receive and replay all the primary flushed", || {
        let flushed = primary.query_one("SELECT pg_current_wal_flush_lsn()");
        s2.query_one("SELECT pg_last_wal_receive_lsn()") == flushed
            && s2.query_one("SELECT pg_last_wal_replay_lsn()") == flushed
    });
}

#[test]
fn wait_for_lsn_times_out_with_a_clear_error() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    let err = s1
        .client()
        .batch_execute("WAIT FOR LSN '5/0' WITH (TIMEOUT '200ms')")
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    assert!(message(&err).contains("5/0"), "{err:?}");
    let err = s1
        .client()
        .batch_execute("WAIT FOR LSN 'nonsense'")
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22P02"), "{err:?}");
    // Read-your-writes across nodes.
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('ryw', 'seen')")
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_lsn()");
    s1.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT 10000)"));
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'ryw'"),
        "seen"
    );
    // Caught up, the standby does not call itself behind: the LSN lies
    // past anything its primary has written.
    let err = s1
        .client()
        .batch_execute("WAIT FOR LSN '5/0' WITH (TIMEOUT '200ms')")
        .unwrap_err();
    let hint = err
        .as_db_error()
        .and_then(|d| d.hint())
        .unwrap_or_default()
        .to_string();
    assert!(hint.contains("past the primary's WAL"), "{hint}");
}

#[test]
fn a_standby_killed_under_load_catches_up() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &["--slot", "s1", "--create-slot"]);
    s1.start();
    for round in 0..5 {
        std::thread::scope(|s| {
            s.spawn(|| write_load(&primary, 2, 100, &format!("round{round}")));
            std::thread::sleep(Duration::from_millis(30 + 20 * round as u64));
            s1.kill9();
        });
        s1.start();
        catch_up(&primary, &s1);
        assert_eq!(
            s1.query_one("SELECT walship_store_checksum()"),
            primary.query_one("SELECT walship_store_checksum()"),
            "round {round}\n{}",
            s1.log()
        );
    }
    assert_same_wal(&primary.dir, &s1.dir);
}

#[test]
fn a_standby_reconnects_to_a_restarted_primary_and_refuses_another_system() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('before', 'stop')")
        .unwrap();
    catch_up(&primary, &s1);
    // A clean stop sends the standby everything, the shutdown checkpoint
    // included, and waits for it to be confirmed.
    primary.stop();
    assert!(
        primary.log().contains("walsender done at shutdown"),
        "{}",
        primary.log()
    );
    assert!(assert_same_wal(&primary.dir, &s1.dir) >= 1);
    primary.start();
    // The primary came back on another port: point the standby at it.
    s1.configure(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=tester'",
        primary.port
    ));
    s1.signal(nix::sys::signal::SIGHUP);
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('after', 'restart')")
        .unwrap();
    catch_up(&primary, &s1);
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'after'"),
        "restart"
    );

    // A primary of another system is never followed.
    let mut other = Node::init("");
    other.start();
    s1.configure(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=tester'",
        other.port
    ));
    s1.signal(nix::sys::signal::SIGHUP);
    assert!(
        s1.wait_log("is of another system"),
        "no refusal in the log:\n{}",
        s1.log()
    );
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'after'"),
        "restart"
    );
}

#[test]
fn basebackup_refuses_a_non_empty_directory_and_an_unreachable_primary() {
    let mut primary = Node::init("");
    primary.start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("something"), b"x").unwrap();
    let from = format!("host=127.0.0.1 port={} user=tester", primary.port);
    let out = common::walship(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert!(
        dir.path().join("something").exists(),
        "a refused directory is left as it was"
    );
    let empty = tempfile::tempdir().unwrap();
    let target = empty.path().join("s");
    let out = common::walship(&[
        "basebackup",
        "--from",
        "host=127.0.0.1 port=1 user=tester",
        "-D",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not connect to 127.0.0.1:1"), "{err:?}");
    assert!(err.contains("removed the data directory"), "{err:?}");
    assert!(!target.exists(), "a failed backup leaves nothing behind");
    // A backup that fails in a directory that was there, empty, leaves it
    // as it found it (nothing written, its mode given back), and the same
    // command then simply works.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(empty.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = common::walship(&[
        "basebackup",
        "--from",
        &from,
        "--slot",
        "nosuch",
        "-D",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(err.contains("nosuch") && !err.contains("removed"), "{err}");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    let mode = std::fs::metadata(empty.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let out = common::walship(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(target.join("control").exists() && target.join("standby.signal").exists());
}

#[test]
fn a_basebackup_that_fails_after_creating_its_slot_drops_it() {
    let mut primary = Node::init("");
    primary.start();
    primary.complete_segments(2, "filler");
    let root = tempfile::tempdir().unwrap();
    let Some(_small) = common::Tmpfs::mount(root.path(), "256k") else {
        eprintln!("skipping: cannot mount a tmpfs here (not root?)");
        return;
    };
    let target = root.path().join("bb");
    let from = format!("host=127.0.0.1 port={} user=tester", primary.port);
    let out = common::walship(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        target.to_str().unwrap(),
        "--slot",
        "bb",
        "--create-slot",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    // One error line: the cause, then what was undone.
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("removed the data directory"), "{err}");
    assert!(err.contains("dropped the replication slot \"bb\""), "{err}");
    assert!(!target.exists());
    let slots = primary
        .client()
        .simple_query("SELECT slot_name FROM pg_replication_slots")
        .unwrap()
        .into_iter()
        .filter(|m| matches!(m, postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(slots, 0, "the slot it created is gone");
}

#[test]
fn a_standby_serves_a_cascaded_standby() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    // A standby waits for nobody: its cascaded standbys are async whatever
    // it inherited (a base backup copies the primary's settings).
    s1.configure("synchronous_standby_names = 'ANY 1 (s2)'");
    s1.start();
    // s2 is cloned from s1, as PostgreSQL's pg_basebackup clones a
    // standby to spare the primary, after s1 has replayed a checkpoint
    // (its restartpoint is where the backup begins) and more writes.
    write_load(&primary, 2, 100, "before");
    primary.client().batch_execute("CHECKPOINT").unwrap();
    write_load(&primary, 2, 50, "after");
    catch_up(&primary, &s1);
    let mut s2 = Node::basebackup(&s1, "s2", &[]);
    // s2 streams from s1, the node it was cloned from.
    let conf = std::fs::read_to_string(s2.dir.join("walship.conf")).unwrap();
    assert!(conf.contains(&format!("port={}", s1.port)), "{conf}");
    s2.start();
    write_load(&primary, 2, 200, "cascade");
    catch_up(&primary, &s1);
    catch_up(&primary, &s2);
    assert_eq!(
        s2.query_one("SELECT walship_store_checksum()"),
        primary.query_one("SELECT walship_store_checksum()")
    );
    assert_same_wal(&primary.dir, &s2.dir);
    let rows = s1
        .client()
        .simple_query(
            "SELECT application_name, state, sync_state, usename, client_port, backend_start FROM pg_stat_replication",
        )
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("s1 shows its cascaded standby");
    assert_eq!(row.get(0), Some("s2"));
    assert_eq!(row.get(1), Some("streaming"));
    assert_eq!(row.get(2), Some("async"));
    // PostgreSQL's columns about the connection, too.
    assert_eq!(row.get(3), Some("tester"));
    assert!(row
        .get(4)
        .and_then(|p| p.parse::<u16>().ok())
        .is_some_and(|p| p > 0));
    assert!(
        row.get(5).is_some_and(|t| t.starts_with("20")),
        "{:?}",
        row.get(5)
    );
}

/// Writes a few rows and ends the segment, `n` times; then checkpoints so
/// the primary removes what nothing keeps.
fn fill_segments(primary: &Node, n: usize, tag: &str) {
    let mut c = primary.client();
    for i in 0..n {
        c.execute("INSERT INTO kv VALUES ($1, 'x')", &[&format!("{tag}-{i}")])
            .unwrap();
        c.batch_execute("SELECT pg_switch_wal()").unwrap();
    }
    c.batch_execute("CHECKPOINT").unwrap();
}

#[test]
fn slots_and_wal_keep_size_hold_wal_for_standbys_that_are_away() {
    let mut primary = Node::init("");
    primary.start();
    let mut slotted = Node::basebackup(&primary, "s1", &["--slot", "s1", "--create-slot"]);
    let mut kept = Node::basebackup(&primary, "s2", &[]);
    let mut bare = Node::basebackup(&primary, "s3", &[]);
    // All three are away while the primary writes and checkpoints.
    primary.configure("wal_keep_size = 64MB");
    primary.reload();
    fill_segments(&primary, 4, "away");
    // s1 comes back through its slot, s2 thanks to wal_keep_size.
    slotted.start();
    kept.start();
    catch_up(&primary, &slotted);
    catch_up(&primary, &kept);
    // The slot names the walsender streaming through it.
    let s1_pid = primary
        .client()
        .simple_query("SELECT application_name, pid FROM pg_stat_replication")
        .unwrap()
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("s1") => {
                r.get(1).map(str::to_string)
            }
            _ => None,
        });
    assert_eq!(
        Some(primary.query_one("SELECT active_pid FROM pg_replication_slots")),
        s1_pid
    );
    // Without a slot and with wal_keep_size = 0, the WAL s3 needs is gone,
    // and the log says so.
    primary.configure("wal_keep_size = 0");
    primary.reload();
    fill_segments(&primary, 3, "gone");
    bare.start();
    assert!(bare.wait_log("has already been removed"), "{}", bare.log());

    // A slot that holds more than max_slot_wal_keep_size is invalidated.
    slotted.kill9();
    let safe_wal_size = |node: &Node| {
        node.client()
            .simple_query("SELECT safe_wal_size FROM pg_replication_slots")
            .unwrap()
            .into_iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        safe_wal_size(&primary),
        None,
        "no limit: NULL, as in PostgreSQL"
    );
    primary.configure("max_slot_wal_keep_size = 2MB");
    primary.signal(nix::sys::signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let safe = loop {
        if let Some(v) = safe_wal_size(&primary) {
            break v.parse::<i64>().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "SIGHUP not taken");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(safe <= 2 << 20, "{safe}");
    fill_segments(&primary, 5, "too-far");
    assert!(
        primary.wait_log("replication slot invalidated"),
        "{}",
        primary.log()
    );
    assert_eq!(
        primary.query_one("SELECT wal_status FROM pg_replication_slots"),
        "lost"
    );
    assert_eq!(safe_wal_size(&primary), None, "a lost slot: NULL");
    slotted.start();
    assert!(
        slotted.wait_log("can no longer get changes from replication slot"),
        "{}",
        slotted.log()
    );
}

#[test]
fn walship_status_shows_roles_positions_and_standbys() {
    let mut primary = Node::init("node_name = 'p1'");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &["--slot", "s1", "--create-slot"]);
    s1.start();
    write_load(&primary, 1, 20, "status");
    let flushed = catch_up(&primary, &s1);
    let status = |node: &Node, json: bool| {
        let from = format!("host=127.0.0.1 port={} user=tester", node.port);
        let mut args = vec!["status", "--from", from.as_str()];
        if json {
            args.push("--json");
        }
        let out = common::walship(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Wait for s1's reply to reach the primary.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut text = status(&primary, false);
    while !text.contains(&format!("replayed {flushed}")) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        text = status(&primary, false);
    }
    assert!(text.contains("node:      p1 (primary)"), "{text}");
    assert!(text.contains(&format!("flushed to {flushed}")), "{text}");
    assert!(text.contains("standbys:  1"), "{text}");
    assert!(
        text.contains("s1") && text.contains("streaming") && text.contains("lag 0 B"),
        "{text}"
    );
    let json = status(&s1, true);
    assert!(json.contains("\"role\":\"standby\""), "{json}");
    assert!(
        json.contains(&format!("\"replay_lsn\":\"{flushed}\"")),
        "{json}"
    );
    assert!(json.contains("\"slot_name\":\"s1\""), "{json}");
    primary.kill9();
    let from = format!("host=127.0.0.1 port={} user=tester", primary.port);
    let out = common::walship(&["status", "--from", &from]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("could not connect to 127.0.0.1:{}", primary.port)));
}

#[test]
fn a_standby_restores_from_the_archive_what_the_primary_no_longer_has() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    let archive = tempfile::tempdir().unwrap();
    let restart_points = archive.path().join("restart-points");
    // The command leaves a process behind that holds its output open (as
    // an ssh control master would): the standby goes on when the command
    // exits, not when its output ends.
    s1.configure(&format!(
        "restore_command = 'sleep 60 & echo %r %f >> {} && cp {}/%f %p'",
        restart_points.display(),
        archive.path().display()
    ));
    // While s1 is away the primary fills segments; an archiver (here, a
    // copy) keeps them before the checkpoint removes them.
    let mut c = primary.client();
    for i in 0..4 {
        c.execute(
            "INSERT INTO kv VALUES ($1, 'archived')",
            &[&format!("a-{i}")],
        )
        .unwrap();
        c.batch_execute("SELECT pg_switch_wal()").unwrap();
    }
    for entry in std::fs::read_dir(primary.dir.join("wal")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.len() == 24 {
            std::fs::copy(
                primary.dir.join("wal").join(&name),
                archive.path().join(&name),
            )
            .unwrap();
        }
    }
    c.batch_execute("CHECKPOINT").unwrap();
    c.execute("INSERT INTO kv VALUES ('streamed', 'after')", &[])
        .unwrap();
    s1.start();
    catch_up(&primary, &s1);
    assert!(
        s1.log().contains("restored segment from the archive"),
        "{}",
        s1.log()
    );
    // What restore_command printed (cp, on the segment the archive does
    // not have) is a field of the line that says so, not a loose line.
    let log = s1.log();
    assert!(
        log.lines().all(|l| l.is_empty() || l.starts_with("20")),
        "{log}"
    );
    assert!(log.contains("said=cp: cannot stat"), "{log}");
    assert!(!s1.dir.join("wal/RECOVERYXLOG.said").exists());
    // %r names the segment of s1's last restartpoint (its base backup's
    // checkpoint), as PostgreSQL's does: a segment of the timeline, at or
    // before the one asked for.
    let calls = std::fs::read_to_string(&restart_points).unwrap();
    assert!(!calls.is_empty());
    for call in calls.lines() {
        let (point, asked) = call.split_once(' ').unwrap();
        assert!(
            point.starts_with("00000001") && point.len() == 24,
            "{calls}"
        );
        assert!(point.bytes().all(|b| b.is_ascii_hexdigit()), "{calls}");
        assert!(
            point <= asked && point != "000000010000000000000000",
            "{calls}"
        );
    }
    assert_eq!(
        s1.query_one("SELECT count(*) FROM kv WHERE key LIKE 'a-%'"),
        "4"
    );
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'streamed'"),
        "after"
    );
    assert_eq!(
        s1.query_one("SELECT walship_store_checksum()"),
        primary.query_one("SELECT walship_store_checksum()")
    );
}

/// The last segment a standby restores ends in the middle of a record
/// whose rest is in the primary's current segment, and the primary has
/// removed the restored one: the standby streams from where its WAL
/// ends, not from where that record begins (which only the archive has).
#[test]
fn a_standby_streams_the_rest_of_a_record_its_last_restored_segment_broke_off_in() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    let archive = tempfile::tempdir().unwrap();
    s1.configure(&format!(
        "restore_command = 'cp {}/%f %p'",
        archive.path().display()
    ));
    let wal = primary.dir.join("wal");
    let current = common::write_until_a_record_crosses_segments(&primary, 7);
    for entry in std::fs::read_dir(&wal).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.len() == 24 && name < current {
            std::fs::copy(wal.join(&name), archive.path().join(&name)).unwrap();
        }
    }
    let mut c = primary.client();
    c.batch_execute("CHECKPOINT").unwrap();
    c.execute("INSERT INTO kv VALUES ('streamed', 'after')", &[])
        .unwrap();
    // The segment the record begins in (LSNs here stay under 4 GiB).
    let before = format!(
        "{}{:08X}",
        &current[..16],
        u64::from_str_radix(&current[16..], 16).unwrap() - 1
    );
    assert!(!wal.join(&before).exists(), "the primary kept {before}");
    s1.start();
    catch_up(&primary, &s1);
    assert!(
        s1.log().contains("restored segment from the archive"),
        "{}",
        s1.log()
    );
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'streamed'"),
        "after"
    );
    assert_eq!(
        s1.query_one("SELECT walship_store_checksum()"),
        primary.query_one("SELECT walship_store_checksum()")
    );
}

/// A record that passes its CRC but does not replay (here a ROLES record
/// whose text is not a users file, put into the primary's WAL before its
/// last checkpoint, so that only the standby replays it) stops the
/// standby with an error naming it, and its recovery refuses it again:
/// nothing after it is skipped, and nothing builds on a store that lacks it.
#[test]
fn a_record_that_does_not_replay_stops_the_standby() {
    use walship::node::{config::Settings, control::NodeState, datadir};
    use walship::store::snapshot;

    let mut primary = Node::init("");
    primary.keep_port().start();
    let mut standby = Node::basebackup(&primary, "s1", &[]);
    primary.stop();
    let bad = {
        let settings = Settings::load(&primary.dir.join("walship.conf")).unwrap();
        let opened = datadir::open(&primary.dir, &settings, false).unwrap();
        let before = opened.db.wal().insert_lsn();
        opened.db.lock_roles().log("tester:wizard:\n").unwrap();
        let roles = opened.db.lock_roles();
        let (lsn, rows) = opened.db.checkpoint(&roles).unwrap();
        snapshot::write(&primary.dir.join("checkpoints"), lsn, &rows).unwrap();
        let mut control = opened.control;
        datadir::record_checkpoint(&primary.dir, &mut control, lsn, NodeState::ShutDown).unwrap();
        before
    };
    primary.start();
    standby.start();
    assert!(standby.wait_log("replay failed"), "{}", standby.log());
    assert_eq!(standby.stop().code(), Some(1));
    let log = standby.log();
    assert!(
        log.contains(&format!("ROLES record at {bad}")) && log.contains("unknown attribute"),
        "{log}"
    );
    let out = common::walship(&["server", "-D", standby.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains(&format!("WAL record at {bad} could not be replayed")),
        "{}",
        common::stderr(&out)
    );
}

/// The primary's recovery cut its WAL short (damage) and it wrote other
/// records where a stopped standby already had WAL, on the same timeline:
/// the standby compares the last record it holds with what the primary
/// sends again, and refuses to follow, naming what to do.
#[test]
fn a_standby_refuses_a_primary_whose_wal_differs_from_its_own() {
    let mut primary = Node::init("");
    primary.start();
    primary.keep_port();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    let mut c = primary.client();
    c.batch_execute("CHECKPOINT").unwrap();
    let insert = |c: &mut postgres::Client, range: std::ops::Range<usize>, tag: &str| {
        for i in range {
            c.batch_execute(&format!("INSERT INTO kv VALUES ('{tag}{i:04}', 'v')"))
                .unwrap();
        }
    };
    insert(&mut c, 0..10, "a");
    let at = primary.query_one("SELECT pg_current_wal_lsn()");
    insert(&mut c, 10..40, "a");
    catch_up(&primary, &s1);
    s1.stop();
    primary.kill9();
    // A byte of the 11th commit's body: recovery ends before it.
    let name = common::segment_of(&at);
    let (_, lo) = at.split_once('/').unwrap();
    let offset = (u64::from_str_radix(lo, 16).unwrap() % (1 << 20)) as usize;
    let path = primary.dir.join("wal").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset + 30] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    primary.start();
    assert_eq!(primary.query_one("SELECT count(*) FROM kv"), "10");
    // Other rows of the same size, past where s1's WAL ends.
    let mut c = primary.client();
    insert(&mut c, 0..60, "b");
    s1.start();
    assert!(
        s1.wait_log("differs from this standby's, on the same timeline"),
        "{}",
        s1.log()
    );
    assert!(
        s1.log().contains(" ERROR walreceiver: the WAL"),
        "{}",
        s1.log()
    );
    assert_eq!(
        s1.query_one("SELECT count(*) FROM kv WHERE key LIKE 'b%'"),
        "0"
    );
}

#[test]
fn a_standby_pings_an_idle_primary_and_reconnects_to_a_silent_one() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.configure("wal_receiver_timeout = 3s");
    s1.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('a', '1')")
        .unwrap();
    catch_up(&primary, &s1);
    // Idle, the primary sends a keepalive only every 10 s; the standby
    // asks for one after 1.5 s of silence, so a live primary is never
    // taken for a dead one.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !s1.log().contains("terminating walreceiver"),
        "{}",
        s1.log()
    );
    // A primary that answers nothing (a hung host) is given up on after
    // 3 s, and streamed from again once it answers.
    primary.signal(nix::sys::signal::SIGSTOP);
    let found = s1.wait_log("terminating walreceiver due to timeout");
    primary.signal(nix::sys::signal::SIGCONT);
    assert!(found, "{}", s1.log());
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('b', '2')")
        .unwrap();
    catch_up(&primary, &s1);
    assert_eq!(s1.query_one("SELECT value FROM kv WHERE key = 'b'"), "2");
}

#[test]
fn client_commands_give_up_on_a_silent_server_after_connect_timeout() {
    // A server that accepts connections and never answers (a hung host).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let from = format!("host=127.0.0.1 port={port} connect_timeout=1");
    let began = std::time::Instant::now();
    let out = common::walship(&["status", "--from", &from]);
    let took = began.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("timed out") && err.contains("connect_timeout"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn a_standby_catching_up_replays_and_reports_as_it_goes() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &["--slot", "s1", "--create-slot"]);
    s1.start();
    catch_up(&primary, &s1);
    s1.stop();
    // A backlog of about 200 MB of WAL.
    let value = "x".repeat(8000);
    let mut c = primary.client();
    for batch in 0..250 {
        let rows: Vec<String> = (0..100)
            .map(|i| format!("('k{}', '{value}')", batch * 100 + i))
            .collect();
        c.batch_execute(&format!("INSERT INTO kv VALUES {}", rows.join(", ")))
            .unwrap();
    }
    let end = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s1.start();
    // Replay moves while WAL keeps arriving, not only once it has all
    // arrived: some replay position lies strictly inside the backlog.
    let mut standby = s1.client();
    let mut seen = Vec::new();
    let end: walship::wal::Lsn = end.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let replayed = standby
            .simple_query("SELECT pg_last_wal_replay_lsn()")
            .unwrap()
            .iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default();
        // At or past: the primary may log a checkpoint after `end`.
        let done = replayed
            .parse::<walship::wal::Lsn>()
            .is_ok_and(|r| r >= end);
        seen.push(replayed);
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never caught up: {:?}",
            seen.last()
        );
    }
    seen.dedup();
    assert!(seen.len() >= 3, "replay jumped from {seen:?} to the end");
}

/// An upstream that goes silent in the middle of a message (a partition
/// while a message is on the wire) is given up on after
/// wal_receiver_timeout, as one silent between messages is, and the
/// standby streams again once it can reconnect.
#[test]
fn an_upstream_silent_in_the_middle_of_a_message_is_given_up_on_after_wal_receiver_timeout() {
    let mut primary = Node::init("");
    primary.start();
    // Once told to, the proxy passes the first half of the next message
    // from the primary and nothing more, holding both connections open.
    let proxy = common::MessageProxy::start(primary.port, 0, true);
    let proxy_port = proxy.port;
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.configure(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={proxy_port} user=tester application_name=s1'\nwal_receiver_timeout = 2s"
    ));
    s1.start();
    write_load(&primary, 1, 20, "before");
    catch_up(&primary, &s1);
    proxy.stall.store(true, std::sync::atomic::Ordering::SeqCst);
    let began = std::time::Instant::now();
    write_load(&primary, 1, 20, "during");
    assert!(
        s1.wait_log("sent part of a message, then nothing for 2000 ms"),
        "{}",
        s1.log()
    );
    assert!(began.elapsed() < std::time::Duration::from_secs(20));
    // It reconnects (through the proxy, which now passes everything).
    catch_up(&primary, &s1);
    assert_eq!(
        s1.query_one("SELECT walship_store_checksum()"),
        primary.query_one("SELECT walship_store_checksum()")
    );
}
