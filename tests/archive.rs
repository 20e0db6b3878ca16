//! `walship archive` and `walship restore`: segments reach the archive
//! verified and whole, never overwritten, from one system only; a failing
//! archiver's backlog is bounded as the operator chose; and the pair works
//! as PostgreSQL 15's own archive_command and restore_command.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{archive, file_names, restore, stderr, wait_until, Background, Node, PgCluster};

#[test]
fn archived_segments_are_verified_whole_and_restore_byte_for_byte() {
    for compression in ["none", "zstd"] {
        let mut node = Node::init("archive_mode = on");
        node.start();
        node.complete_segments(3, "a");
        let adir = tempfile::tempdir().unwrap();
        let out = archive(adir.path(), &node, &["--compression", compression]);
        assert!(out.status.success(), "{}", stderr(&out));
        let status = node.dir.join("wal/archive_status");
        assert_eq!(file_names(&status, ".ready"), Vec::<String>::new());
        let done = file_names(&status, ".done");
        assert_eq!(done.len(), 3, "{done:?}");
        let suffix = if compression == "zstd" { ".zst" } else { "" };
        let restored = tempfile::tempdir().unwrap();
        for d in &done {
            let seg = d.trim_end_matches(".done");
            assert!(adir.path().join(format!("{seg}{suffix}")).exists());
            let dest = restored.path().join("restored");
            let out = restore(adir.path(), seg, &dest, 8);
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(
                std::fs::read(&dest).unwrap()
                    == std::fs::read(node.dir.join("wal").join(seg)).unwrap(),
                "{seg} restored differently"
            );
        }
        // Nothing left: a second run succeeds doing nothing.
        let out = archive(adir.path(), &node, &[]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Nothing to archive"));
        assert_eq!(
            node.query_one("SELECT archived_count FROM pg_stat_archiver"),
            "3"
        );
        // A name the archive does not have: exit 1, as restore_command expects.
        let out = restore(
            adir.path(),
            "0000000100000000000000AA",
            Path::new("/tmp/nowhere"),
            8,
        );
        assert_eq!(out.status.code(), Some(1));
        // A real failure is not "absent": PostgreSQL stops on a status above 125.
        let out = common::walship(&["restore", "--archive", "/nonexistent", "x", "/tmp/nowhere"]);
        assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
        // So is a destination in a directory that does not exist.
        let out = restore(
            adir.path(),
            &done[0].replace(".done", ""),
            Path::new("/nonexistent/x"),
            8,
        );
        assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("its directory /nonexistent does not exist"),
            "{}",
            stderr(&out)
        );
        // So is a name no WAL file has: a broken restore_command.
        let out = restore(adir.path(), "garbage", Path::new("/tmp/nowhere"), 8);
        assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
        assert!(stderr(&out).contains("%f"), "{}", stderr(&out));
        if compression == "zstd" {
            let seg = done[0].trim_end_matches(".done");
            std::fs::write(adir.path().join(format!("{seg}.zst")), b"not zstd").unwrap();
            let dest = restored.path().join("damaged");
            let out = restore(adir.path(), seg, &dest, 8);
            assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
            assert!(stderr(&out).contains("decompress"), "{}", stderr(&out));
        }
    }
}

#[test]
fn damage_conflicts_and_other_systems_are_refused_and_nothing_is_overwritten() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    node.complete_segments(2, "d");
    let adir = tempfile::tempdir().unwrap();
    // A different file already under the first segment's name.
    let first = file_names(&node.dir.join("wal/archive_status"), ".ready")[0].replace(".ready", "");
    let out = archive(adir.path(), &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planted = adir.path().join(&first);
    let mut bytes = std::fs::read(&planted).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&planted, &bytes).unwrap();
    std::fs::rename(
        node.dir
            .join("wal/archive_status")
            .join(format!("{first}.done")),
        node.dir
            .join("wal/archive_status")
            .join(format!("{first}.ready")),
    )
    .unwrap();
    let out = archive(adir.path(), &node, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&planted).unwrap(),
        bytes,
        "the archived file was overwritten"
    );
    std::fs::remove_file(&planted).unwrap();

    // A damaged segment is never archived.
    let seg = node.dir.join("wal").join(&first);
    let mut damaged = std::fs::read(&seg).unwrap();
    let at = damaged.len() / 2;
    let good = damaged.clone();
    let hit = damaged[..at].iter().rposition(|b| *b != 0).unwrap_or(200);
    damaged[hit] ^= 0x40;
    std::fs::write(&seg, &damaged).unwrap();
    let out = archive(adir.path(), &node, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&first) && stderr(&out).contains("refusing to archive"),
        "{}",
        stderr(&out)
    );
    assert!(!adir.path().join(&first).exists());
    assert_eq!(
        node.query_one("SELECT failed_count FROM pg_stat_archiver"),
        "2"
    );
    // The failure under way shows, until a success follows it.
    let failing = || -> Option<String> {
        node.client()
            .query_one("SELECT current_failure FROM pg_stat_archiver", &[])
            .unwrap()
            .get(0)
    };
    assert!(failing().is_some_and(|why| why.contains("refusing to archive")));
    let status = common::walship(&["status", "--from", &node.conninfo()]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("FAILING: "),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    std::fs::write(&seg, &good).unwrap();
    let out = archive(adir.path(), &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(failing(), None);

    // Another system's node may not archive here.
    let mut other = Node::init("archive_mode = on");
    other.start();
    other.complete_segments(1, "o");
    let out = archive(adir.path(), &other, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("belongs to system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn follow_mode_with_archive_timeout_archives_within_seconds_and_holds_the_lock() {
    let mut node = Node::init("archive_mode = on\narchive_timeout = 1s");
    node.start();
    let adir = tempfile::tempdir().unwrap();
    let follower = Background::walship(
        &[
            "archive",
            "--archive",
            adir.path().to_str().unwrap(),
            "-D",
            node.dir.to_str().unwrap(),
            "--follow",
        ],
        std::process::Stdio::null(),
    );
    std::thread::sleep(Duration::from_millis(300));
    // One write, no switch: archive_timeout ends the segment, the follower ships it.
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('lonely', 'row')")
        .unwrap();
    let began = Instant::now();
    wait_until("the segment to be archived", || {
        file_names(adir.path(), "").iter().any(|n| n.len() == 24)
    });
    // archive_timeout (1 s) and the follower's polling take about 2 s;
    // the slack is for a slow disk.
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    // A reload (SIGHUP, as systemctl reload sends) does not kill it...
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.pid() as i32),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // ...and a second archiver on the same archive is refused, naming the holder.
    let out = archive(adir.path(), &node, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("pid {}", follower.pid())),
        "{}",
        stderr(&out)
    );
    let status = follower.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn a_killed_archiver_leaves_no_partial_file_and_the_next_run_finishes() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    node.complete_segments(12, "k");
    let adir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    for _ in 0..12 {
        let delay_ms = rand::Rng::gen_range(&mut rng, 0..40u64);
        let mut child = Command::new(env!("CARGO_BIN_EXE_walship"))
            .args([
                "archive",
                "--archive",
                adir.path().to_str().unwrap(),
                "--compression",
                "zstd",
                "-D",
            ])
            .arg(&node.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever has a final name is whole, whenever the kill came.
        let restored = tempfile::tempdir().unwrap();
        for a in file_names(adir.path(), ".zst") {
            let seg = a.trim_end_matches(".zst");
            let dest = restored.path().join(seg);
            let out = restore(adir.path(), seg, &dest, 0);
            assert!(
                out.status.success(),
                "killed after {delay_ms} ms: {seg}: {}",
                stderr(&out)
            );
        }
    }
    // What a run killed as it created the archive leaves (when no kill
    // above came that early).
    std::fs::write(adir.path().join(".ARCHIVE.tmp.4242"), b"half").unwrap();
    let out = archive(adir.path(), &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let archived = file_names(adir.path(), ".zst");
    assert_eq!(archived.len(), 12, "{archived:?}");
    assert!(
        file_names(adir.path(), "")
            .iter()
            .all(|n| !n.contains(".tmp.")),
        "temporaries left"
    );
    let restored = tempfile::tempdir().unwrap();
    for a in archived {
        let seg = a.trim_end_matches(".zst");
        let dest = restored.path().join("check");
        let out = restore(adir.path(), seg, &dest, 8);
        assert!(out.status.success());
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(node.dir.join("wal").join(seg)).unwrap()
        );
    }
}

#[test]
fn a_backlog_past_the_limit_refuses_writes_or_abandons_the_archive_as_configured() {
    let mut node = Node::init("archive_mode = on\narchive_backlog_limit = 2MB");
    node.start();
    node.complete_segments(4, "b");
    wait_until("writes to be refused", || {
        node.client()
            .batch_execute("INSERT INTO kv VALUES ('x', 'y') ON CONFLICT (key) DO NOTHING")
            .is_err()
    });
    let err = node
        .client()
        .batch_execute("INSERT INTO kv VALUES ('z', 'y')")
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "53100");
    assert!(
        db.message().contains("archive_backlog_limit"),
        "{}",
        db.message()
    );
    // Writes stop at three segments (past 2 MB); the backlog is measured
    // again once a second and soon counts the fourth.
    wait_until("the backlog to count four segments", || {
        node.query_one("SELECT backlog_segments FROM pg_stat_archiver") == "4"
    });
    assert!(node
        .query_one("SELECT writes_refused FROM pg_stat_archiver")
        .contains("archive_backlog_limit"));
    let status = common::walship(&["status", "--from", &node.conninfo()]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("WRITES REFUSED: "),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    // Reads go on; the archiver catches up and writes return.
    assert_eq!(
        node.query_one("SELECT value FROM kv WHERE key = 'b-0'"),
        "v"
    );
    let adir = tempfile::tempdir().unwrap();
    assert!(archive(adir.path(), &node, &[]).status.success());
    wait_until("writes to be accepted again", || {
        node.client()
            .batch_execute("INSERT INTO kv VALUES ('z', 'y') ON CONFLICT (key) DO NOTHING")
            .is_ok()
    });

    // abandon_archive: the service goes on, the gap is loud.
    node.configure("archive_backlog_policy = abandon_archive");
    node.reload();
    // A backup history file waits too; it frees nothing, so it is kept.
    let standby = Node::basebackup(&node, "s1", &[]);
    let status = node.dir.join("wal").join("archive_status");
    let backup_ready = || {
        common::file_names(&status, ".backup.ready")
            .first()
            .cloned()
    };
    let waiting = backup_ready().expect("the backup history file waits");
    drop(standby);
    node.complete_segments(4, "g");
    assert!(node.wait_log("ARCHIVE CONTINUITY LOST"), "{}", node.log());
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('still', 'writing')")
        .unwrap();
    let gap = node.query_one("SELECT archive_gap_since FROM pg_stat_archiver");
    assert_eq!(gap.len(), 24, "{gap}");
    assert_eq!(backup_ready().as_ref(), Some(&waiting));
    // A restart does not forget the gap; a base backup does.
    node.stop();
    node.start();
    assert_eq!(
        node.query_one("SELECT archive_gap_since FROM pg_stat_archiver"),
        gap
    );
    let _standby = Node::basebackup(&node, "s2", &[]);
    let gap: Option<String> = node
        .client()
        .query_one("SELECT archive_gap_since FROM pg_stat_archiver", &[])
        .unwrap()
        .get(0);
    assert_eq!(gap, None);
}

/// A copy of the walship binary the `postgres` user can run (PostgreSQL
/// runs archive_command and restore_command as itself), in a directory
/// removed on drop.
fn walship_for_postgres() -> (tempfile::TempDir, std::path::PathBuf) {
    let bin = tempfile::Builder::new()
        .prefix("walship-bin-")
        .tempdir_in("/tmp")
        .unwrap();
    let exe = bin.path().join("walship");
    std::fs::copy(env!("CARGO_BIN_EXE_walship"), &exe).unwrap();
    for p in [bin.path(), exe.as_path()] {
        let mut perm = std::fs::metadata(p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(p, perm).unwrap();
    }
    (bin, exe)
}

#[test]
fn walship_archive_and_restore_serve_postgresql_as_its_commands() {
    let (_bin, exe) = walship_for_postgres();
    let mut pg = PgCluster::init(1);
    let adir = pg.root.path().join("archive");
    std::fs::write(
        pg.data.join("postgresql.auto.conf"),
        format!(
            "archive_mode = on\narchive_command = '{} archive --archive {} %p'\n",
            exe.display(),
            adir.display()
        ),
    )
    .unwrap();
    pg.start();
    pg.psql("CREATE TABLE t (v text); INSERT INTO t SELECT 'x' FROM generate_series(1, 1000)");
    let seg = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    wait_until("PostgreSQL's archiver", || {
        pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= seg
    });
    assert_eq!(pg.psql("SELECT failed_count FROM pg_stat_archiver"), "0");
    let dest = pg.root.path().join("restored");
    let out = restore(&adir, &seg, &dest, 8);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(pg.wal_dir().join(&seg)).unwrap());

    // The archive vanishes (an unmounted file system): the command fails,
    // and makes no new archive in its place, since this cluster has
    // archived before.
    let away = pg.root.path().join("archive.unmounted");
    std::fs::rename(&adir, &away).unwrap();
    pg.psql("INSERT INTO t VALUES ('y')");
    pg.psql("SELECT pg_switch_wal()");
    wait_until("the archive_command to fail", || {
        pg.psql("SELECT failed_count FROM pg_stat_archiver") != "0"
    });
    assert!(!adir.join("ARCHIVE").exists());
    // By hand, --create starts a new one.
    let next = pg.psql("SELECT last_failed_wal FROM pg_stat_archiver");
    let path = pg.wal_dir().join(&next);
    let out = common::walship(&[
        "archive",
        "--archive",
        adir.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is gone"), "{}", stderr(&out));
    let out = common::walship(&[
        "archive",
        "--archive",
        adir.to_str().unwrap(),
        "--create",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(adir.join(&next).exists());
}

/// Flips a bit in the last record of a segment's first page (the rest of a
/// switched segment is unused, so damage there is no damage).
fn damage(segment: &mut [u8]) {
    let at = segment[..8192].iter().rposition(|b| *b != 0).unwrap();
    segment[at] ^= 0x10;
}

#[test]
fn restore_prefetches_verified_segments_and_cleanup_keeps_what_the_newest_backup_needs() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    node.complete_segments(12, "p");
    // A base backup leaves its backup history file for the archiver.
    let _standby = Node::basebackup(&node, "s1", &[]);
    node.complete_segments(2, "q");
    let adir = tempfile::tempdir().unwrap();
    let out = archive(adir.path(), &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let backups = file_names(adir.path(), ".backup");
    assert_eq!(backups.len(), 1, "{:?}", file_names(adir.path(), ""));
    let text = std::fs::read_to_string(adir.path().join(&backups[0])).unwrap();
    assert!(text.starts_with("START WAL LOCATION: "), "{text}");
    let segments: Vec<String> = file_names(adir.path(), "")
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    assert!(segments.len() >= 14, "{segments:?}");

    // Restoring in order: each request starts a worker that spools the
    // following segments; the next requests are served from the spool.
    let pg_wal = tempfile::tempdir().unwrap();
    let dest = pg_wal.path().join("RECOVERYXLOG");
    let spool = pg_wal.path().join(".walship-prefetch");
    let out = restore(adir.path(), &segments[0], &dest, 8);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("the worker to spool the next segments", || {
        file_names(&spool, "")
            .iter()
            .filter(|n| n.len() == 24)
            .count()
            >= 4
    });
    for seg in &segments[..10] {
        let out = restore(adir.path(), seg, &dest, 8);
        assert!(out.status.success(), "{seg}: {}", stderr(&out));
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(node.dir.join("wal").join(seg)).unwrap(),
            "{seg} restored differently"
        );
        let spooled = file_names(&spool, "")
            .iter()
            .filter(|n| n.len() == 24)
            .count();
        assert!(
            spooled <= 8,
            "the spool holds {spooled} segments, more than --prefetch"
        );
    }
    // A damaged file in the spool is discarded, never handed over.
    let next = &segments[10];
    wait_until("the worker to spool the next segment", || {
        spool.join(next).exists()
    });
    let mut damaged = std::fs::read(spool.join(next)).unwrap();
    damage(&mut damaged);
    std::fs::write(spool.join(next), &damaged).unwrap();
    let out = restore(adir.path(), next, &dest, 8);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == std::fs::read(node.dir.join("wal").join(next)).unwrap()
    );

    // A damaged segment in the archive is a real failure (126), not "absent".
    let victim = &segments[12];
    let path = adir.path().join(victim);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    damage(&mut bad);
    std::fs::write(&path, &bad).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = restore(adir.path(), victim, &elsewhere.path().join("x"), 0);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to restore"),
        "{}",
        stderr(&out)
    );
    assert!(!elsewhere.path().join("x").exists());
    std::fs::write(&path, &good).unwrap();

    // Cleanup: a dry run removes nothing; the real run stops at the
    // backup's start even when asked for more, and keeps history files.
    let last = segments.last().unwrap();
    let cleanup = |extra: &[&str]| {
        let mut args = vec![
            "cleanup",
            "--archive",
            adir.path().to_str().unwrap(),
            "--before",
            last,
        ];
        args.extend_from_slice(extra);
        common::walship(&args)
    };
    let before = file_names(adir.path(), "");
    let out = cleanup(&["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("would remove") && said.contains("needs it"),
        "{said}"
    );
    assert_eq!(file_names(adir.path(), ""), before);
    let out = cleanup(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let backup_start = &backups[0][..24];
    let left: Vec<String> = file_names(adir.path(), "")
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    assert_eq!(
        left.first().map(String::as_str),
        Some(backup_start),
        "{left:?}"
    );
    assert!(left.contains(last));
    assert_eq!(file_names(adir.path(), ".backup"), backups);
    // A --before that is no WAL file name at all is a usage error.
    let out = common::walship(&[
        "cleanup",
        "--archive",
        adir.path().to_str().unwrap(),
        "--before",
        "nonsense",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("expected a segment name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_new_standby_is_built_from_a_base_backup_and_the_archive_alone_while_the_primary_is_down() {
    let mut primary = Node::init("archive_mode = on");
    primary.start();
    primary.complete_segments(1, "before");
    let mut standby = Node::basebackup(&primary, "s1", &[]);
    primary.complete_segments(6, "after");
    // Rows large enough that records run from one segment into the next:
    // each must be restored and replayed whole.
    {
        let mut c = primary.client();
        let value = "x".repeat(3000);
        for i in 0..900 {
            c.execute(
                "INSERT INTO kv VALUES ($1, $2)",
                &[&format!("big-{i}"), &value],
            )
            .unwrap();
        }
    }
    primary.complete_segments(1, "last");
    let checksum = primary.query_one("SELECT walship_store_checksum()");
    let adir = tempfile::tempdir().unwrap();
    let out = archive(adir.path(), &primary, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    primary.kill9();
    standby.restore_from(adir.path());
    standby.start();
    wait_until("the standby to replay the archive", || {
        standby.query_one("SELECT count(*) FROM kv") == "908"
    });
    assert_eq!(
        standby.query_one("SELECT walship_store_checksum()"),
        checksum
    );
    assert!(
        standby.wait_log("restored WAL from the archive"),
        "{}",
        standby.log()
    );
    // Reads work; it stays a standby, waiting for its primary.
    assert_eq!(standby.query_one("SELECT pg_is_in_recovery()"), "t");
}

#[test]
fn a_standby_restoring_from_the_archive_alone_follows_a_promotion_found_there() {
    let mut primary = Node::init("archive_mode = on");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    // c has no upstream: the archive is all it reads.
    let mut c = Node::basebackup(&primary, "c", &[]);
    c.configure("primary_conninfo = ''");
    let adir = tempfile::tempdir().unwrap();
    c.restore_from(adir.path());
    primary.complete_segments(2, "tl1");
    let out = archive(adir.path(), &primary, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.start();
    wait_until("c to restore timeline 1", || {
        c.query_one("SELECT count(*) FROM kv WHERE key LIKE 'tl1%'") == "2"
    });
    // A last write the old primary never archives (its segment is not
    // complete); s1 is promoted (timeline 2) and archives.
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('tail', 'x')")
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s1.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '30s')"));
    let out = common::walship(&["promote", "-D", s1.dir.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    s1.complete_segments(2, "tl2");
    let out = archive(adir.path(), &s1, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(file_names(adir.path(), "").contains(&"00000002.history".to_string()));
    // As PostgreSQL's recovery_target_timeline = 'latest': c finds the
    // newer timeline's history in the archive and restores on along it.
    wait_until("c to follow timeline 2 from the archive", || {
        c.query_one("SELECT count(*) FROM kv WHERE key LIKE 'tl2%'") == "2"
    });
    assert_eq!(c.query_one("SELECT value FROM kv WHERE key = 'tail'"), "x");
    assert!(
        c.log()
            .contains("following timeline 2 found in the archive"),
        "{}",
        c.log()
    );
    assert!(c.dir.join("wal/00000002.history").exists());
    // Its WAL ended short of the switch (the old primary's last segment
    // was never archived): it took timeline 1's WAL up to the switch from
    // timeline 2's segment, so its timeline 1 is whole where its history
    // says it ends, as s1's is.
    let history = std::fs::read_to_string(c.dir.join("wal/00000002.history")).unwrap();
    let switch: walship::wal::Lsn = history.split('\t').nth(1).unwrap().parse().unwrap();
    let size = walship::wal::SegmentSize::from_mib(1).unwrap();
    let seg = walship::wal::SegmentName::new(walship::wal::TimelineId::FIRST, switch.segno(size))
        .file_name(size);
    let upto = switch.segment_offset(size) as usize;
    assert!(upto > 0, "{history}");
    let ours = std::fs::read(c.dir.join("wal").join(&seg)).unwrap();
    let theirs = std::fs::read(s1.dir.join("wal").join(&seg)).unwrap();
    assert!(
        ours[..upto] == theirs[..upto],
        "{seg} differs before {switch}"
    );
    assert!(
        !c.log().contains("restoring from the archive stopped"),
        "{}",
        c.log()
    );
    let status = common::walship(&["status", "--from", &c.conninfo()]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("timeline:  2"), "{said}");
    assert!(said.contains("upstream:  none (waiting)"), "{said}");
    assert_eq!(
        c.query_one("SELECT walship_store_checksum()"),
        s1.query_one("SELECT walship_store_checksum()")
    );
}

#[test]
fn a_postgresql_standby_replicates_through_a_walship_archive_alone() {
    let (_bin, exe) = walship_for_postgres();
    let mut primary = PgCluster::init(1);
    let adir = primary.root.path().join("archive");
    std::fs::write(
        primary.data.join("postgresql.auto.conf"),
        format!(
            "archive_mode = on\narchive_command = '{} archive --archive {} %p'\n",
            exe.display(),
            adir.display()
        ),
    )
    .unwrap();
    primary.start();
    primary.psql("CREATE TABLE t (id int primary key, v text)");
    // No primary_conninfo: the standby's only source is the archive.
    let mut standby = PgCluster::standby_of(
        &primary,
        &format!(
            "restore_command = '{} restore --archive {} %f %p'",
            exe.display(),
            adir.display()
        ),
    );
    standby.start();
    primary.psql(
        "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g; \
         UPDATE t SET v = 'changed' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0",
    );
    primary.psql("SELECT pg_switch_wal()");
    let want = primary.psql("SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM t");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = std::panic::catch_unwind(|| {
            standby.psql("SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM t")
        });
        if got.as_deref().ok() == Some(want.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never caught up through the archive: {got:?} vs {want}\n{}",
            std::fs::read_to_string(standby.root.path().join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        primary.psql("SELECT failed_count FROM pg_stat_archiver"),
        "0"
    );
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
}

#[test]
fn a_standby_refuses_another_systems_segments_from_its_restore_command() {
    let mut stranger = Node::init("archive_mode = on");
    stranger.start();
    stranger.complete_segments(4, "foreign");
    let adir = tempfile::tempdir().unwrap();
    let out = archive(adir.path(), &stranger, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut primary = Node::init("");
    primary.start();
    let mut standby = Node::basebackup(&primary, "s1", &[]);
    primary.kill9();
    standby.restore_from(adir.path());
    standby.start();
    assert!(
        standby.wait_log("the archive belongs to another system"),
        "{}",
        standby.log()
    );
    assert_eq!(
        standby.query_one("SELECT count(*) FROM kv WHERE key LIKE 'foreign-%'"),
        "0"
    );
}

/// Runs `walship ARGS` on a pseudo-terminal (script(1)); returns what it
/// wrote there.
fn on_terminal(args: &[&str]) -> String {
    let line = std::iter::once(env!("CARGO_BIN_EXE_walship"))
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("run script(1)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{line}: {text}");
    text
}

#[test]
fn archive_and_basebackup_show_progress_on_a_terminal_only() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    node.complete_segments(4, "p");
    let adir = tempfile::tempdir().unwrap();
    let dir = node.dir.to_str().unwrap().to_string();
    let shown = on_terminal(&[
        "archive",
        "--archive",
        adir.path().to_str().unwrap(),
        "-D",
        &dir,
    ]);
    assert!(
        shown.contains("walship archive: 4 of 4 files (100%), 4 MiB"),
        "{shown}"
    );
    assert!(shown.contains("Archived 4 file(s)"), "{shown}");
    // Not on a terminal, a run this short shows no progress at all.
    node.complete_segments(1, "q");
    let out = archive(adir.path(), &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("walship archive:"),
        "{}",
        stderr(&out)
    );

    let target = tempfile::tempdir().unwrap();
    let to = target.path().join("standby");
    let from = format!("host=127.0.0.1 port={} user=tester", node.port);
    let shown = on_terminal(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        to.to_str().unwrap(),
        "--node-name",
        "s1",
    ]);
    assert!(
        shown.contains("walship basebackup: ") && shown.contains("(100%)"),
        "{shown}"
    );
    let quiet = target.path().join("quiet");
    let out = common::walship(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        quiet.to_str().unwrap(),
        "--node-name",
        "s2",
        "--no-progress",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("walship basebackup:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_shows_the_archiver_once_a_backup_history_file_waits() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    let _standby = Node::basebackup(&node, "s1", &[]);
    let from = format!("host=127.0.0.1 port={} user=tester", node.port);
    // The backlog is measured again once a second.
    let mut stdout = String::new();
    wait_until("status to name the waiting file", || {
        let out = common::walship(&["status", "--from", &from]);
        stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        stdout.lines().any(|l| {
            l.starts_with("archiver:")
                && l.contains("backlog 0 segments")
                && l.contains("oldest waiting 00:")
                && l.contains(".backup)")
        })
    });
}

#[test]
fn archiving_a_node_with_archive_mode_off_says_why_nothing_goes() {
    let node = Node::init("");
    let root = tempfile::tempdir().unwrap();
    let out = archive(&root.path().join("a"), &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("archive_mode is off in") && text.contains("set archive_mode = on"),
        "{text}"
    );
}

#[test]
fn a_spool_left_by_another_systems_archive_is_never_handed_over() {
    let archived = || {
        let mut node = Node::init("archive_mode = on");
        node.start();
        node.complete_segments(4, "k");
        let adir = tempfile::tempdir().unwrap();
        let out = archive(adir.path(), &node, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let segments: Vec<String> = file_names(adir.path(), "")
            .into_iter()
            .filter(|n| n.len() == 24)
            .collect();
        (node, adir, segments)
    };
    let (_a, adir_a, segments_a) = archived();
    let (_b, adir_b, segments_b) = archived();
    let pg_wal = tempfile::tempdir().unwrap();
    let spool = pg_wal.path().join(".walship-prefetch");
    let out = restore(adir_a.path(), &segments_a[0], &pg_wal.path().join("x"), 8);
    assert!(out.status.success(), "{}", stderr(&out));
    let next = &segments_a[1];
    wait_until("A's worker to spool the next segment", || {
        spool.join(next).exists()
    });
    // The same name, restored into the same directory from B's archive,
    // is B's segment, not A's spooled one.
    assert!(segments_b.contains(next), "{segments_b:?}");
    let dest = pg_wal.path().join("y");
    let out = restore(adir_b.path(), next, &dest, 8);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == std::fs::read(adir_b.path().join(next)).unwrap(),
        "{next} came from the other system's spool"
    );

    // Another archive of the same system (a fenced primary's and the new
    // one's share it) that lacks a segment A's worker spooled: absent.
    let adir_c = tempfile::tempdir().unwrap();
    for name in file_names(adir_a.path(), "") {
        if name != segments_a[3] {
            std::fs::copy(adir_a.path().join(&name), adir_c.path().join(&name)).unwrap();
        }
    }
    let pg_wal = tempfile::tempdir().unwrap();
    let spool = pg_wal.path().join(".walship-prefetch");
    let out = restore(adir_a.path(), &segments_a[2], &pg_wal.path().join("x"), 8);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("A's worker to spool the next segment", || {
        spool.join(&segments_a[3]).exists()
    });
    let out = restore(adir_c.path(), &segments_a[3], &pg_wal.path().join("y"), 8);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!pg_wal.path().join("y").exists());
}

#[test]
fn archiving_one_file_removes_what_a_killed_run_left() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    node.complete_segments(2, "t");
    let adir = tempfile::tempdir().unwrap();
    let wal = node.dir.join("wal");
    let segments: Vec<String> = file_names(&wal, "")
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    let archive_one = |seg: &str| {
        common::walship(&[
            "archive",
            "--archive",
            adir.path().to_str().unwrap(),
            wal.join(seg).to_str().unwrap(),
        ])
    };
    let out = archive_one(&segments[0]);
    assert!(out.status.success(), "{}", stderr(&out));
    // What a run PostgreSQL killed mid-copy leaves behind.
    let left = adir.path().join(format!(".{}.tmp.4242", segments[1]));
    std::fs::write(&left, b"half a segment").unwrap();
    // A promotion's claim being written (without the archive's lock).
    let claiming = adir.path().join(".epoch.2.tmp.4243");
    std::fs::write(&claiming, b"s1 token\n").unwrap();
    let out = archive_one(&segments[1]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!left.exists());
    assert!(claiming.exists());
    assert!(adir.path().join(&segments[1]).exists());
    // The archive vanishes: with no .done mark beside the segments (this
    // command marks none; PostgreSQL removes its own as it recycles), the
    // command's own mark still tells it the archive was there.
    let away = tempfile::tempdir().unwrap();
    std::fs::rename(adir.path(), away.path().join("gone")).unwrap();
    assert!(common::file_names(&wal.join("archive_status"), ".done").is_empty());
    let out = archive_one(&segments[1]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is gone"), "{}", stderr(&out));
    assert!(!adir.path().exists());
}

#[test]
fn an_archive_the_user_cannot_search_is_said_to_be_unreadable_not_missing() {
    if !nix::unistd::geteuid().is_root() {
        return; // needs another user to be denied
    }
    let (_bin, exe) = walship_for_postgres();
    let mut node = Node::init("archive_mode = on");
    node.start();
    node.complete_segments(1, "p");
    let adir = tempfile::tempdir_in("/tmp").unwrap();
    let out = archive(adir.path(), &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let segment = file_names(adir.path(), "")
        .into_iter()
        .find(|n| n.len() == 24)
        .unwrap();
    // Only root may enter it; postgres may write the destination.
    let mut perm = std::fs::metadata(adir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o700);
    std::fs::set_permissions(adir.path(), perm).unwrap();
    // A place postgres may write, holding a copy of the segment it may read.
    let mine = tempfile::tempdir_in("/tmp").unwrap();
    let mut perm = std::fs::metadata(mine.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o777);
    std::fs::set_permissions(mine.path(), perm).unwrap();
    let out = common::pg_command(&exe)
        .args([
            "restore",
            "--archive",
            adir.path().to_str().unwrap(),
            &segment,
        ])
        .arg(mine.path().join("restored"))
        .output()
        .unwrap();
    let said = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert_ne!(
        out.status.code(),
        Some(1),
        "absent is not what happened: {said}"
    );
    assert!(
        said.contains("ermission denied") && !said.contains("not a walship archive"),
        "{said}"
    );
    // As archive_command: not "gone", however often it archived before.
    let wal = mine.path().join("pg_wal");
    std::fs::create_dir_all(wal.join("archive_status")).unwrap();
    std::fs::write(wal.join("archive_status").join("walship.archived"), "").unwrap();
    std::fs::copy(node.dir.join("wal").join(&segment), wal.join(&segment)).unwrap();
    let out = common::pg_command(&exe)
        .args(["archive", "--archive", adir.path().to_str().unwrap()])
        .arg(wal.join(&segment))
        .output()
        .unwrap();
    let said = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("ermission denied") && !said.contains("is gone"),
        "{said}"
    );
}
