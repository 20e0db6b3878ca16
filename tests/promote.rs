//! Promotion and fencing: the promoted standby takes writes on a new
//! timeline in a new epoch only after the old primary is fenced (directly,
//! by command, or with --force said out loud); the fenced primary refuses
//! every write, across restarts; two promoters cannot both win.

mod common;

use std::time::Duration;

use common::{wait_until, Node};

fn promote(node: &Node, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["promote", "-D", node.dir.to_str().unwrap(), "--wait"];
    args.extend_from_slice(extra);
    common::walship(&args)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sqlstate(node: &Node, sql: &str) -> (String, String) {
    let err = node.client().batch_execute(sql).unwrap_err();
    let db = err.as_db_error().expect("a server error");
    (db.code().code().to_string(), db.message().to_string())
}

fn standby_of(primary: &Node, name: &str) -> Node {
    let mut s = Node::basebackup(primary, name, &[]);
    s.start();
    primary
        .client()
        .batch_execute(&format!("INSERT INTO kv VALUES ('hello-{name}', 'x')"))
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    s
}

#[test]
fn promotion_fences_the_old_primary_and_starts_a_new_timeline() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = standby_of(&primary, "s1");
    let out = promote(&s1, &[]);
    assert!(out.status.success(), "{}\n{}", text(&out), s1.log());
    assert!(
        text(&out).contains("epoch 2 on timeline 2"),
        "{}",
        text(&out)
    );
    // The new primary.
    assert_eq!(s1.query_one("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(s1.query_one("SHOW timeline"), "2");
    assert_eq!(s1.query_one("SHOW epoch"), "2");
    s1.client()
        .batch_execute("INSERT INTO kv VALUES ('after', 'promotion')")
        .unwrap();
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'hello-s1'"),
        "x"
    );
    let history = std::fs::read_to_string(s1.dir.join("wal/00000002.history")).unwrap();
    assert!(history.starts_with("1\t0/"), "{history}");
    assert!(!s1.dir.join("standby.signal").exists());
    // The old primary was fenced before the new one took a write.
    let (code, msg) = sqlstate(&primary, "INSERT INTO kv VALUES ('split', 'brain')");
    assert_eq!(code, "25006");
    assert!(msg.contains("fenced") && msg.contains("epoch 2"), "{msg}");
    assert_eq!(
        primary.query_one("SELECT value FROM kv WHERE key = 'hello-s1'"),
        "x"
    );
    // It stays fenced across a restart; the new primary stays a primary.
    primary.stop();
    primary.start();
    assert_eq!(
        sqlstate(&primary, "INSERT INTO kv VALUES ('split', 'brain')").0,
        "25006"
    );
    // No base backup of a fenced old primary: it would follow a dead branch.
    let clone = tempfile::tempdir().unwrap();
    let out = common::walship(&[
        "basebackup",
        "--from",
        &format!("host=127.0.0.1 port={} user=tester", primary.port),
        "-D",
        clone.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is a fenced old primary"),
        "{}",
        text(&out)
    );
    // Nor is its WAL archived; the refusal names where the fence is.
    let adir = tempfile::tempdir().unwrap();
    let out = common::archive(adir.path(), &primary, &["--create"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("records a fence order of epoch 2"),
        "{}",
        text(&out)
    );
    s1.stop();
    s1.start();
    assert_eq!(s1.query_one("SHOW timeline"), "2");
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'after'"),
        "promotion"
    );
    s1.client()
        .batch_execute("INSERT INTO kv VALUES ('after', 'restart') ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .unwrap();
    // A fence order from an older epoch is refused.
    assert_eq!(sqlstate(&s1, "SELECT walship_fence(1)").0, "22023");
}

#[test]
fn without_a_fence_promotion_is_refused_unless_forced_or_fenced_by_command() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = standby_of(&primary, "s1");
    primary.kill9();
    let out = promote(&s1, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // The refusal says why the direct fence failed.
    assert!(
        text(&out).contains("could not be fenced directly (could not connect to 127.0.0.1:")
            && text(&out).contains("refusing to promote"),
        "{}",
        text(&out)
    );
    assert_eq!(s1.query_one("SELECT pg_is_in_recovery()"), "t");
    let out = promote(&s1, &["--fence-command", "exit 3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("fence command"), "{}", text(&out));
    assert_eq!(s1.query_one("SELECT pg_is_in_recovery()"), "t");
    let marker = s1.root.path().join("fenced-epoch");
    let cmd = format!("echo $WALSHIP_EPOCH > {}", marker.display());
    let out = promote(&s1, &["--fence-command", &cmd]);
    assert!(out.status.success(), "{}\n{}", text(&out), s1.log());
    // Refused attempts leave the standby as it was: the promotion that
    // went ahead took epoch 2, and told the fence command so.
    let epoch = s1.query_one("SHOW epoch");
    assert_eq!(epoch, "2");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), epoch);
    s1.client()
        .batch_execute("INSERT INTO kv VALUES ('new', 'primary')")
        .unwrap();
    let _ = &mut s1;
}

#[test]
fn forced_promotion_says_what_it_risks_and_pg_promote_works() {
    let mut primary = Node::init("");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    let s2 = standby_of(&primary, "s2");
    // pg_promote() on s1 fences the running primary directly.
    assert_eq!(s1.query_one("SELECT pg_promote()"), "t");
    assert_eq!(
        sqlstate(&primary, "INSERT INTO kv VALUES ('a', 'b')").0,
        "25006"
    );
    primary.kill9();
    // s2's primary is gone: only --force promotes it, loudly.
    let out = promote(&s2, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("WARNING"), "{}", text(&out));
    assert!(s2.wait_log("PROMOTING WITHOUT A FENCE"));
    assert_eq!(sqlstate(&s1, "SELECT pg_promote()").0, "55000");
}

#[test]
fn statement_timeout_ends_the_wait_of_pg_promote_not_the_promotion() {
    let mut primary = Node::init("");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    // A primary that answers nothing: fencing it waits.
    primary.signal(nix::sys::signal::SIGSTOP);
    let began = std::time::Instant::now();
    let (code, message) = sqlstate(&s1, "SET statement_timeout = 300; SELECT pg_promote()");
    primary.signal(nix::sys::signal::SIGCONT);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("57014", "canceling statement due to statement timeout")
    );
    assert!(began.elapsed() < Duration::from_secs(15));
    // The promotion went on: it fences the primary, now awake.
    assert!(
        s1.wait_log("promoted: this node is the primary"),
        "{}",
        s1.log()
    );
}

#[test]
fn two_promoters_claiming_in_one_archive_cannot_both_win() {
    let adir = tempfile::tempdir().unwrap();
    let mut primary = Node::init("");
    primary.start();
    let conf = format!("archive_directory = '{}'", adir.path().display());
    let s1 = standby_of(&primary, "s1");
    let s2 = standby_of(&primary, "s2");
    for s in [&s1, &s2] {
        s.configure(&conf);
        s.reload();
    }
    primary.kill9();
    let out = promote(&s1, &["--fence-command", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = promote(&s2, &["--fence-command", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("already claimed") && text(&out).contains("s1"),
        "{}",
        text(&out)
    );
    assert_eq!(s2.query_one("SELECT pg_is_in_recovery()"), "t");
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(
        std::fs::read_to_string(adir.path().join("epoch"))
            .unwrap()
            .trim(),
        "2"
    );
    // The old primary (epoch 1) may not archive into it any more.
    let out = common::walship(&[
        "archive",
        "--archive",
        adir.path().to_str().unwrap(),
        "-D",
        primary.dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("this node is fenced"), "{}", text(&out));
    // Nor when the epoch file is lost (s1's claim, epoch.2, still fences)
    // or damaged (then nothing can be told, and nothing is archived).
    let archive_old_primary = || {
        common::walship(&[
            "archive",
            "--archive",
            adir.path().to_str().unwrap(),
            "-D",
            primary.dir.to_str().unwrap(),
        ])
    };
    std::fs::remove_file(adir.path().join("epoch")).unwrap();
    let out = archive_old_primary();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("this node is fenced"), "{}", text(&out));
    std::fs::write(adir.path().join("epoch"), "2 garbage\n").unwrap();
    let out = archive_old_primary();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot tell whether this node is fenced")
            && text(&out).contains("epoch.2"),
        "{}",
        text(&out)
    );
}

#[test]
fn another_standby_follows_the_new_primary_across_the_timeline_switch() {
    let mut primary = Node::init("");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    let mut s2 = standby_of(&primary, "s2");
    let out = promote(&s1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut c = s1.client();
    for i in 0..200 {
        c.execute(
            "INSERT INTO kv VALUES ($1, 'on timeline 2')",
            &[&format!("t2-{i}")],
        )
        .unwrap();
    }
    // walship follow refuses another system's node, then points s2 at the
    // new primary: it crosses the switch by itself.
    let s2_dir = s2.dir.clone();
    let follow = |to: &Node| {
        common::walship(&[
            "follow",
            "-D",
            s2_dir.to_str().unwrap(),
            "--from",
            &format!("host=127.0.0.1 port={} user=tester", to.port),
        ])
    };
    let mut stranger = Node::init("");
    stranger.start();
    let out = follow(&stranger);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("belongs to system"), "{}", text(&out));
    let out = follow(&s2);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is this standby itself"),
        "{}",
        text(&out)
    );
    // A slot the new primary does not have is refused before anything
    // changes, by follow and by basebackup alike.
    let s1_from = format!("host=127.0.0.1 port={} user=tester", s1.port);
    let out = common::walship(&[
        "follow",
        "-D",
        s2_dir.to_str().unwrap(),
        "--from",
        &s1_from,
        "--slot",
        "nosuch",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("has no replication slot \"nosuch\""),
        "{}",
        text(&out)
    );
    let conf = std::fs::read_to_string(s2_dir.join("walship.conf")).unwrap();
    assert!(!conf.contains("nosuch"), "{conf}");
    let clone = tempfile::tempdir().unwrap();
    let out = common::walship(&[
        "basebackup",
        "--from",
        &s1_from,
        "-D",
        clone.path().join("d").to_str().unwrap(),
        "--slot",
        "nosuch",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("add --create-slot"), "{}", text(&out));
    // Without --slot, the slot s2 keeps (primary_slot_name) must be on the
    // new primary too, or s2 would retry "does not exist" for ever.
    s2.configure("primary_slot_name = 'kept'");
    let out = follow(&s1);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("has no replication slot \"kept\"")
            && text(&out).contains("primary_slot_name")
            && text(&out).contains("--slot kept --create-slot"),
        "{}",
        text(&out)
    );
    // --create-slot makes the slot on the new primary, and s2 streams
    // through it; asked again, it refuses the slot that now exists.
    let follow_creating = || {
        common::walship(&[
            "follow",
            "-D",
            s2_dir.to_str().unwrap(),
            "--from",
            &s1_from,
            "--slot",
            "s2",
            "--create-slot",
        ])
    };
    let out = follow_creating();
    assert!(out.status.success(), "{}", text(&out));
    let again = follow_creating();
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("has a replication slot \"s2\" already"),
        "{}",
        text(&again)
    );
    assert!(
        text(&out).contains("epoch 2, timeline 2") && text(&out).contains("reload"),
        "{}",
        text(&out)
    );
    let lsn = s1.query_one("SELECT pg_current_wal_flush_lsn()");
    s2.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    // s1's only slot: s2's, in use.
    assert_eq!(
        s1.query_one("SELECT slot_name FROM pg_replication_slots"),
        "s2"
    );
    assert_eq!(s1.query_one("SELECT active FROM pg_replication_slots"), "t");
    assert!(
        s2.log().contains("followed the upstream to a new timeline"),
        "{}",
        s2.log()
    );
    assert_eq!(s2.query_one("SHOW timeline"), "2");
    assert_eq!(s2.query_one("SHOW epoch"), "2");
    assert_eq!(
        s2.query_one("SELECT walship_store_checksum()"),
        s1.query_one("SELECT walship_store_checksum()")
    );
    let mut compared = 0;
    for entry in std::fs::read_dir(s2.dir.join("wal")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.len() == 24 && name.starts_with("00000002") {
            compared += 1;
            assert!(
                std::fs::read(s2.dir.join("wal").join(&name)).unwrap()
                    == std::fs::read(s1.dir.join("wal").join(&name)).unwrap(),
                "{name} differs between the new primary and its standby"
            );
        }
    }
    assert!(compared >= 1, "s2 has no segment of timeline 2");
    assert!(s2.dir.join("wal/00000002.history").exists());
    // It restarts on the new timeline.
    s2.stop();
    s2.start();
    c.execute("INSERT INTO kv VALUES ('after', 'restart')", &[])
        .unwrap();
    let lsn = s1.query_one("SELECT pg_current_wal_flush_lsn()");
    s2.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    assert_eq!(
        s2.query_one("SELECT value FROM kv WHERE key = 'after'"),
        "restart"
    );
    // walship follow refuses the fenced old primary (epoch 1)...
    let out = follow(&primary);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("older than this standby's epoch 2"),
        "{}",
        text(&out)
    );
    // ...and so does the standby itself, pointed there by hand.
    s2.configure(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=tester'",
        primary.port
    ));
    s2.signal(nix::sys::signal::SIGHUP);
    assert!(
        s2.wait_log("behind this standby's timeline")
            || s2.wait_log("lower than this standby's epoch"),
        "{}",
        s2.log()
    );
}

#[test]
fn walship_receive_follows_the_timeline_switch_of_a_promotion() {
    let mut primary = Node::init("");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    let dir = tempfile::tempdir().unwrap();
    let from_primary = format!("host=127.0.0.1 port={} user=tester", primary.port);
    let end = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    let out = common::walship(&[
        "receive",
        "--from",
        &from_primary,
        "-D",
        dir.path().to_str().unwrap(),
        "--endpos",
        &end,
        "--no-loop",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(promote(&s1, &[]).status.success());
    let mut c = s1.client();
    for i in 0..50 {
        c.execute("INSERT INTO kv VALUES ($1, 'v')", &[&format!("r-{i}")])
            .unwrap();
    }
    c.batch_execute("SELECT pg_switch_wal()").unwrap();
    let end = s1.query_one("SELECT pg_current_wal_flush_lsn()");
    let from_s1 = format!("host=127.0.0.1 port={} user=tester", s1.port);
    let out = common::walship(&[
        "receive",
        "--from",
        &from_s1,
        "-D",
        dir.path().to_str().unwrap(),
        "--endpos",
        &end,
        "--no-loop",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("00000002.history").exists());
    let mut compared = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.len() == 24 && name.starts_with("00000002") {
            compared += 1;
            assert!(
                std::fs::read(dir.path().join(&name)).unwrap()
                    == std::fs::read(s1.dir.join("wal").join(&name)).unwrap(),
                "{name} differs"
            );
        }
    }
    assert!(compared >= 1, "no timeline 2 segment was received");
    // A new directory that starts on timeline 2 gets its history too, as
    // pg_receivewal's does.
    let fresh = tempfile::tempdir().unwrap();
    let out = common::walship(&[
        "receive",
        "--from",
        &from_s1,
        "-D",
        fresh.path().to_str().unwrap(),
        "--endpos",
        &end,
        "--no-loop",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(fresh.path().join("00000002.history")).unwrap(),
        std::fs::read(s1.dir.join("wal/00000002.history")).unwrap()
    );
}

#[test]
fn receivers_streaming_from_a_standby_follow_its_promotion_without_a_break() {
    let mut primary = Node::init("");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('before', 'promotion')")
        .unwrap();
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let from_s1 = format!("host=127.0.0.1 port={} user=tester", s1.port);
    let receiver = common::Background::walship(
        &[
            "receive",
            "--from",
            &from_s1,
            "-D",
            ours.path().to_str().unwrap(),
        ],
        std::process::Stdio::null(),
    );
    let port = s1.port.to_string();
    let log = theirs.path().join("pg_receivewal.log");
    let mut pg_receivewal = std::process::Command::new(common::pg_bin("pg_receivewal"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "tester",
            "--no-password",
            "-v",
            "-D",
        ])
        .arg(theirs.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until("both receivers to stream from s1", || {
        s1.query_column("SELECT state FROM pg_stat_replication") == ["streaming", "streaming"]
    });
    assert!(promote(&s1, &[]).status.success());
    let mut c = s1.client();
    for i in 0..50 {
        c.execute("INSERT INTO kv VALUES ($1, 'v')", &[&format!("r-{i}")])
            .unwrap();
    }
    c.batch_execute("SELECT pg_switch_wal()").unwrap();
    // The walsender that streamed timeline 1 ends it at the switch point
    // and says where timeline 2 begins; both receivers follow on the
    // same connection's end, and get timeline 2's first segment whole.
    let name = "000000020000000000000001";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(ours.path().join(name).exists() && theirs.path().join(name).exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "timeline 2 not received; pg_receivewal said: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = pg_receivewal.kill();
    let _ = pg_receivewal.wait();
    drop(receiver);
    let primarys = std::fs::read(s1.dir.join("wal").join(name)).unwrap();
    assert!(std::fs::read(ours.path().join(name)).unwrap() == primarys);
    assert!(std::fs::read(theirs.path().join(name)).unwrap() == primarys);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("switched to timeline 2"), "{said}");
    // A primary shows no walreceiver, a promoted standby included.
    assert!(s1
        .client()
        .simple_query("SELECT status FROM pg_stat_wal_receiver")
        .unwrap()
        .iter()
        .all(|m| !matches!(m, postgres::SimpleQueryMessage::Row(_))));
}

#[test]
fn a_primary_that_sees_a_newer_epoch_in_the_archive_fences_itself_running_or_restarted() {
    let adir = tempfile::tempdir().unwrap();
    let conf = format!("archive_directory = '{}'", adir.path().display());
    let mut primary = Node::init(&conf);
    primary.start();
    let s1 = standby_of(&primary, "s1");
    // The promoter cannot reach the old primary, which keeps running: only
    // the epoch it claims in the archive can stop it.
    s1.configure("primary_conninfo = 'host=127.0.0.1 port=1 user=tester connect_timeout=1'");
    s1.signal(nix::sys::signal::SIGHUP);
    // Refused (no fence, no --force): it claims nothing in the archive, so
    // the primary watching it goes on taking writes; the standby is left as
    // it was, so the forced promotion below takes epoch 2.
    let out = promote(&s1, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        !adir.path().join("epoch").exists(),
        "a refused promotion claimed an epoch"
    );
    std::thread::sleep(Duration::from_millis(1500));
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('still', 'primary')")
        .unwrap();
    let out = promote(&s1, &["--force"]);
    assert!(out.status.success(), "{}\n{}", text(&out), s1.log());
    assert_eq!(
        std::fs::read_to_string(adir.path().join("epoch"))
            .unwrap()
            .trim(),
        "2"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match primary
            .client()
            .batch_execute("INSERT INTO kv VALUES ('late', 'write') ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        {
            Err(e) => {
                let db = e.as_db_error().expect("a server error");
                assert_eq!(db.code().code(), "25006", "{db:?}");
                assert!(db.message().contains("epoch 2"), "{}", db.message());
                break;
            }
            Ok(()) => assert!(
                std::time::Instant::now() < deadline,
                "the old primary still takes writes\n{}",
                primary.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let from = format!("host=127.0.0.1 port={} user=tester", primary.port);
    let out = common::walship(&["status", "--from", &from]);
    assert!(
        text(&out).contains("fenced primary") && text(&out).contains("FENCED:    by epoch 2"),
        "{}",
        text(&out)
    );

    // A primary that was down during the promotion is fenced as it starts,
    // before it takes a single write.
    // (Its own fence mark is erased here to stand for a primary that was
    // down while the promotion happened.)
    primary.kill9();
    let epoch_path = primary.dir.join("epoch");
    let mut epoch = walship::fence::EpochFile::read(&epoch_path).unwrap();
    assert_eq!(epoch.fenced_by, Some(walship::fence::Epoch(2)));
    epoch.fenced_by = None;
    epoch.write(&epoch_path).unwrap();
    primary.start();
    assert_eq!(
        sqlstate(&primary, "INSERT INTO kv VALUES ('x', 'y')").0,
        "25006"
    );
    assert!(
        primary.log().contains("the archive records epoch 2"),
        "{}",
        primary.log()
    );
}

#[test]
fn a_stopped_standby_is_promoted_at_once_and_left_stopped() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = standby_of(&primary, "s1");
    s1.stop();
    // Its configured port (the default) taken by someone else does not
    // matter: the temporary server listens on a port of its own.
    let _taken = std::net::TcpListener::bind("127.0.0.1:5433");
    let out = promote(&s1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("epoch 2 on timeline 2") && text(&out).contains("It is stopped"),
        "{}",
        text(&out)
    );
    assert!(!s1.dir.join("standby.signal").exists());
    // It fenced the old primary while it ran, and stopped cleanly.
    assert_eq!(
        sqlstate(&primary, "INSERT INTO kv VALUES ('a', 'b')").0,
        "25006"
    );
    walship::durable::DirLock::acquire(&s1.dir).expect("the temporary server is gone");
    s1.start();
    assert_eq!(s1.query_one("SHOW timeline"), "2");
    s1.client()
        .batch_execute("INSERT INTO kv VALUES ('on', 'the new primary')")
        .unwrap();

    // Refused (no fence, no --force): it stays a stopped standby.
    let s2 = Node::basebackup(&s1, "s2", &[]);
    s1.kill9();
    let out = promote(&s2, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("refusing to promote"), "{}", text(&out));
    assert!(s2.dir.join("standby.signal").exists());
    walship::durable::DirLock::acquire(&s2.dir).expect("the temporary server is gone");
}

/// A standby cloned from a promoted primary gets its timeline's history
/// (from the base backup; and its walreceiver fetches it when missing),
/// so its own promotion writes a history that lists every ancestor.
#[test]
fn a_second_promotion_writes_the_whole_timeline_history() {
    let mut primary = Node::init("");
    primary.start();
    let mut s1 = standby_of(&primary, "s1");
    let out = promote(&s1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut s2 = Node::basebackup(&s1, "s2", &[]);
    let history = s2.dir.join("wal/00000002.history");
    assert_eq!(
        std::fs::read(&history).unwrap(),
        std::fs::read(s1.dir.join("wal/00000002.history")).unwrap()
    );
    std::fs::remove_file(&history).unwrap();
    s2.start();
    s1.client()
        .batch_execute("INSERT INTO kv VALUES ('on', 'timeline 2')")
        .unwrap();
    let lsn = s1.query_one("SELECT pg_current_wal_flush_lsn()");
    s2.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    assert!(history.exists(), "{}", s2.log());
    let out = promote(&s2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let three = std::fs::read_to_string(s2.dir.join("wal/00000003.history")).unwrap();
    let timelines: Vec<&str> = three
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(timelines, ["1", "2"], "{three}");
    s1.kill9();
    primary.kill9();
}

#[test]
fn a_promoted_standby_marks_every_segment_of_its_new_timeline_for_the_archiver() {
    let mut primary = Node::init("archive_mode = on");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    let out = promote(&s1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    s1.complete_segments(3, "t2");
    let wal = s1.dir.join("wal");
    let status = common::file_names(&wal.join("archive_status"), "");
    let mut segments: Vec<String> = common::file_names(&wal, "")
        .into_iter()
        .filter(|n| n.len() == 24 && n.starts_with("00000002"))
        .collect();
    segments.pop(); // the one being filled
    assert!(segments.len() >= 2, "{segments:?}");
    for seg in &segments {
        assert!(
            status.contains(&format!("{seg}.ready")) || status.contains(&format!("{seg}.done")),
            "{seg} (timeline 2) is not marked for the archiver: {status:?}"
        );
    }
    assert!(
        status.contains(&"00000002.history.ready".to_string()),
        "{status:?}"
    );
}

/// The old primary archived some of its segments and died before the
/// rest: the new primary archives the segments it received as a standby,
/// so the archive has no gap, and then its checkpoints remove them.
#[test]
fn a_promoted_standby_archives_what_the_old_primary_had_not() {
    let mut primary = Node::init("archive_mode = on");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    let archive = tempfile::tempdir().unwrap();
    let adir = archive.path().join("a");
    let archive_from = |node: &Node| {
        let out = common::walship(&[
            "archive",
            "--archive",
            adir.to_str().unwrap(),
            "-D",
            node.dir.to_str().unwrap(),
            "--no-progress",
        ]);
        assert!(out.status.success(), "{}", text(&out));
    };
    primary.complete_segments(2, "archived");
    archive_from(&primary);
    primary.complete_segments(3, "not-archived");
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s1.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    let old: Vec<String> = common::file_names(&primary.dir.join("wal"), "")
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    primary.kill9();
    let out = promote(&s1, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    archive_from(&s1);
    let archived = common::file_names(&adir, "");
    let before_switch = &old[..old.len() - 1];
    for seg in before_switch {
        assert!(
            archived.contains(seg),
            "{seg} is not archived: {archived:?}"
        );
    }
    s1.client().batch_execute("CHECKPOINT").unwrap();
    let left = common::file_names(&s1.dir.join("wal"), "");
    for seg in before_switch {
        assert!(!left.contains(seg), "{seg} stays in wal/: {left:?}");
    }
}

#[test]
fn a_fenced_primary_writes_no_more_wal_for_archive_timeout_a_switch_or_a_checkpoint() {
    let mut primary = Node::init("archive_mode = on\narchive_timeout = 1s");
    primary.start();
    let mut c = primary.client();
    c.batch_execute("INSERT INTO kv VALUES ('a', '1')").unwrap();
    c.batch_execute("SELECT walship_fence(2)").unwrap();
    let end = primary.query_one("SELECT pg_current_wal_lsn()");
    // archive_timeout would have ended the partly filled segment by now.
    std::thread::sleep(Duration::from_secs(3));
    let (code, message) = sqlstate(&primary, "SELECT pg_switch_wal()");
    assert_eq!(code, "25006", "{message}");
    primary.client().batch_execute("CHECKPOINT").unwrap();
    assert_eq!(primary.query_one("SELECT pg_current_wal_lsn()"), end);
    assert!(
        !primary.log().contains("archive_timeout"),
        "{}",
        primary.log()
    );
}

/// With ANY 1 (b, c), b confirms commits c has not received: promoting
/// c while the primary runs fences it first, then streams the WAL it
/// wrote before the fence, so every commit it acknowledged is on c.
#[test]
fn a_promotion_receives_the_fenced_primarys_last_commits_before_it_switches() {
    promote_a_lagging_quorum_member(&[]);
    // With a fence command too: the direct fence still says where the old
    // primary's WAL ended.
    promote_a_lagging_quorum_member(&["--fence-command", "true"]);
}

fn promote_a_lagging_quorum_member(extra: &[&str]) {
    let mut primary = Node::init("synchronous_standby_names = 'ANY 1 (b, c)'");
    primary.start();
    let mut b = Node::basebackup(&primary, "b", &[]);
    b.start();
    let mut c = Node::basebackup(&primary, "c", &[]);
    let proxy = common::Proxy::start(primary.port);
    c.configure(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=tester application_name=c'",
        proxy.port
    ));
    c.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('warm', 'up')")
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    c.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    // c hears nothing more; b alone confirms these.
    proxy.cut();
    let mut client = primary.client();
    for i in 0..20 {
        client
            .execute(
                "INSERT INTO kv VALUES ($1, 'acknowledged')",
                &[&format!("k{i}")],
            )
            .unwrap();
    }
    proxy.heal();
    let out = promote(&c, extra);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        c.query_one("SELECT count(*) FROM kv WHERE key LIKE 'k%'"),
        "20",
        "{}",
        c.log()
    );
    // The fenced old primary, stopped cleanly, writes nothing past where
    // c's timeline begins: b, which streamed from it, follows c.
    assert!(primary.stop().success());
    let out = common::walship(&[
        "follow",
        "-D",
        b.dir.to_str().unwrap(),
        "--from",
        &format!("host=127.0.0.1 port={} user=tester", c.port),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    c.client()
        .batch_execute("INSERT INTO kv VALUES ('after', 'promotion')")
        .unwrap();
    let lsn = c.query_one("SELECT pg_current_wal_flush_lsn()");
    b.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    b.kill9();
}

#[test]
fn promoting_a_cascaded_standby_fences_the_primary_not_its_upstream() {
    let mut primary = Node::init("");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    // Base backups come from the primary; s2 then streams through s1.
    let mut s2 = Node::basebackup(&primary, "s2", &[]);
    let out = common::walship(&[
        "follow",
        "-D",
        s2.dir.to_str().unwrap(),
        "--from",
        &format!("host=127.0.0.1 port={} user=tester", s1.port),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    s2.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('through', 's1')")
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s2.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    // After a segment switch s2 asks s1 for WAL from the start of a
    // segment s1 has not begun yet: it waits for it, no error.
    primary
        .client()
        .batch_execute("SELECT pg_switch_wal()")
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s1.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    s2.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    s2.stop();
    s2.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('after', 'the switch')")
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s2.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    assert!(
        !s1.log().contains("already been removed") && !s2.log().contains("already been removed"),
        "{}\n{}",
        s1.log(),
        s2.log()
    );
    let out = promote(&s2, &[]);
    assert!(out.status.success(), "{}\n{}", text(&out), s2.log());
    // The primary two levels up is fenced: one node takes writes.
    let (code, msg) = sqlstate(&primary, "INSERT INTO kv VALUES ('split', 'brain')");
    assert_eq!(code, "25006", "{msg}");
    s2.client()
        .batch_execute("INSERT INTO kv VALUES ('on', 's2')")
        .unwrap();
    assert!(
        s2.wait_log("the upstream is a standby: fencing its primary"),
        "{}",
        s2.log()
    );
    assert_eq!(s1.query_one("SELECT pg_is_in_recovery()"), "t");
}

#[test]
fn a_standby_pointed_at_a_newer_timeline_never_promotes_onto_its_number() {
    let mut primary = Node::init("");
    primary.start();
    let s1 = standby_of(&primary, "s1");
    let s2 = Node::basebackup(&primary, "s2", &[]);
    let out = promote(&s1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // s2 is pointed at s1 (timeline 2) while stopped, and promoted before
    // it ever streams: it must take timeline 3, not a second timeline 2.
    let out = common::walship(&[
        "follow",
        "-D",
        s2.dir.to_str().unwrap(),
        "--from",
        &format!("host=127.0.0.1 port={} user=tester", s1.port),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(s2.dir.join("wal/00000002.history")).unwrap(),
        std::fs::read(s1.dir.join("wal/00000002.history")).unwrap()
    );
    let out = promote(&s2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("on timeline 3"), "{}", text(&out));
}

#[test]
fn an_unreadable_archive_refuses_the_promotion_before_anything_is_fenced() {
    let adir = tempfile::tempdir().unwrap();
    let gone = adir.path().join("archive");
    let conf = format!("archive_directory = '{}'", gone.display());
    let mut primary = Node::init(&conf);
    primary.start();
    let mut s1 = standby_of(&primary, "s1");
    let out = promote(&s1, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("for timeline history files")
            && text(&out).contains("nothing was fenced")
            && !text(&out).contains("os error"),
        "{}",
        text(&out)
    );
    // The old primary still takes writes; the standby is still one.
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('after', 'refusal')")
        .unwrap();
    assert_eq!(s1.query_one("SELECT pg_is_in_recovery()"), "t");
    std::fs::create_dir(&gone).unwrap();
    let out = promote(&s1, &[]);
    assert!(out.status.success(), "{}\n{}", text(&out), s1.log());
    assert_eq!(s1.query_one("SHOW epoch"), "2");
    let _ = &mut s1;
}

#[test]
fn cascaded_standbys_follow_a_promotion_that_drops_a_record_they_began() {
    let mut primary = Node::init("");
    primary.start();
    let proxy = common::MessageProxy::start(primary.port, 2, false);
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.configure(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=tester application_name=s1'",
        proxy.port
    ));
    s1.start();
    let chain = |upstream: &Node, name: &str| {
        let mut s = Node::basebackup(&primary, name, &[]);
        s.configure(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=tester'",
            upstream.port
        ));
        s.start();
        s
    };
    let s2 = chain(&s1, "s2");
    let s3 = chain(&s2, "s3");
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('a', '1')")
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s3.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    // s1, and s2 through it, get only the first parts of a large record.
    proxy.stall.store(true, std::sync::atomic::Ordering::SeqCst);
    primary
        .client()
        .execute(
            "INSERT INTO kv VALUES ('big', $1)",
            &[&"v".repeat(1_000_000)],
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // s1's promotion drops that part: timeline 2 begins before it, and s2
    // and s3 follow, the part gone, with the history of timeline 2.
    assert!(promote(&s1, &["--force"]).status.success());
    s1.client()
        .batch_execute("INSERT INTO kv VALUES ('b', '2')")
        .unwrap();
    let lsn = s1.query_one("SELECT pg_current_wal_flush_lsn()");
    for s in [&s2, &s3] {
        s.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
        assert_eq!(s.query_one("SELECT value FROM kv WHERE key = 'b'"), "2");
        assert!(!s.log().contains("stopping the standby"), "{}", s.log());
        assert!(
            !s.log().contains("history does not say where"),
            "{}",
            s.log()
        );
    }
}
