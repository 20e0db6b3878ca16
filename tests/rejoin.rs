//! `walship rejoin`: the old primary becomes a standby of the new one,
//! rewound to the switch point when it wrote past it — or told to be
//! rebuilt, with nothing changed, when its store cannot be rewound.

mod common;

use common::Node;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn rejoin(old: &Node, new: &Node) -> std::process::Output {
    common::walship(&[
        "rejoin",
        "-D",
        old.dir.to_str().unwrap(),
        "--from",
        &format!("host=127.0.0.1 port={} user=tester", new.port),
    ])
}

fn caught_up(primary: &Node, standby: &Node) {
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    let waited = standby
        .client()
        .simple_query(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    assert!(waited.is_ok(), "{waited:?}\n{}", standby.log());
    assert_eq!(
        standby.query_one("SELECT walship_store_checksum()"),
        primary.query_one("SELECT walship_store_checksum()")
    );
}

#[test]
fn a_fenced_primary_stopped_cleanly_rejoins_as_a_standby_of_the_new_one() {
    let mut old = Node::init("archive_mode = on");
    old.start();
    let mut new = Node::basebackup(&old, "s1", &[]);
    new.start();
    old.complete_segments(2, "before");
    let adir = tempfile::tempdir().unwrap();
    assert!(common::archive(adir.path(), &old, &[]).status.success());
    caught_up(&old, &new);
    let out = common::walship(&["promote", "-D", new.dir.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    // Fenced, then stopped: its shutdown checkpoint lies past the switch.
    old.stop();
    // Refused while it runs.
    old.start();
    let out = rejoin(&old, &new);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("stop the old primary first"),
        "{}",
        text(&out)
    );
    old.stop();
    // It streams through a slot --create-slot makes on the new primary.
    let out = common::walship(&[
        "rejoin",
        "-D",
        old.dir.to_str().unwrap(),
        "--from",
        &format!("host=127.0.0.1 port={} user=tester", new.port),
        "--slot",
        "old",
        "--create-slot",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is now a standby of"), "{}", text(&out));
    assert!(old.dir.join("standby.signal").exists());
    old.start();
    new.client()
        .batch_execute("INSERT INTO kv VALUES ('written', 'on the new primary')")
        .unwrap();
    caught_up(&new, &old);
    assert_eq!(
        new.query_one("SELECT slot_name FROM pg_replication_slots"),
        "old"
    );
    assert_eq!(
        new.query_one("SELECT active FROM pg_replication_slots"),
        "t"
    );
    assert_eq!(old.query_one("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(old.query_one("SHOW timeline"), "2");
    assert_eq!(old.query_one("SHOW epoch"), "2");
    // Its archiver's counters are from its time as the primary: status
    // does not show them for the standby it is now.
    let status = common::walship(&["status", "--from", &old.conninfo()]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("(standby)"), "{said}");
    assert!(!said.contains("archiver:"), "{said}");
    // Failback: promoted while it runs, it takes writes at once (the fence
    // of epoch 2 lies below its new epoch), without a restart.
    let out = common::walship(&["promote", "-D", old.dir.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    old.client()
        .batch_execute("INSERT INTO kv VALUES ('failed', 'back')")
        .unwrap();
    assert_eq!(old.query_one("SHOW epoch"), "3");
}

#[test]
fn commits_past_the_switch_point_are_rewound_or_the_node_is_sent_to_be_rebuilt() {
    let mut old = Node::init("");
    old.start();
    let mut new = Node::basebackup(&old, "s1", &[]);
    let link = common::Proxy::start(old.port);
    new.configure(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=tester application_name=s1'",
        link.port
    ));
    new.start();
    old.complete_segments(1, "shared");
    caught_up(&old, &new);
    // The standby is cut off; the old primary commits on alone (it
    // checkpointed last for the base backup, before all of this)...
    link.cut();
    old.complete_segments(3, "lost");
    let old_pid = old.pid();
    old.kill9();
    let out = common::walship(&[
        "promote",
        "-D",
        new.dir.to_str().unwrap(),
        "--fence-command",
        &format!("! kill -0 {old_pid}"),
        "--wait",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // Kept aside: a copy that checkpoints past the switch point later.
    let mut later = old.copy();
    let later_lost = {
        let mut probe = old.copy();
        std::fs::remove_file(probe.dir.join("standby.signal")).ok();
        probe.start();
        probe.query_one("SELECT count(*) FROM kv WHERE key LIKE 'lost-%'")
    };

    // ...so rejoin cuts its WAL back and recovery replays only what the
    // new primary has: the lost commits are gone.
    let out = rejoin(&old, &new);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Rewound"), "{}", text(&out));
    old.start();
    caught_up(&new, &old);
    let lost = "SELECT count(*) FROM kv WHERE key LIKE 'lost-%'";
    assert_eq!(old.query_one(lost), new.query_one(lost));
    assert_ne!(
        later_lost,
        new.query_one(lost),
        "nothing was lost to rewind"
    );
    assert_eq!(
        old.query_one("SELECT count(*) FROM kv WHERE key LIKE 'shared-%'"),
        "1"
    );

    // The copy, restarted and stopped, checkpoints past its own lost
    // commits: its store cannot be rewound; rejoin says so, changes nothing.
    later.start();
    later.stop();
    let before = std::fs::read(later.dir.join("walship.conf")).unwrap();
    let out = rejoin(&later, &new);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Rebuild it as a standby: walship basebackup"),
        "{}",
        text(&out)
    );
    assert!(!later.dir.join("standby.signal").exists());
    assert_eq!(
        std::fs::read(later.dir.join("walship.conf")).unwrap(),
        before
    );
}

#[test]
fn a_rejoined_node_promoted_before_it_streamed_writes_valid_wal() {
    let mut old = Node::init("archive_mode = on");
    old.start();
    let mut new = Node::basebackup(&old, "s1", &[]);
    new.start();
    old.complete_segments(1, "before");
    // The switch point in the middle of a segment, right after a
    // checkpoint record.
    old.client()
        .batch_execute("INSERT INTO kv VALUES ('mid', 'segment')")
        .unwrap();
    old.client().batch_execute("CHECKPOINT").unwrap();
    caught_up(&old, &new);
    let out = common::walship(&["promote", "-D", new.dir.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    // Its shutdown checkpoint lies past the switch: rejoin relabels the
    // snapshot at the switch point, where no record is yet.
    old.stop();
    // Restarted while fenced: a second shutdown checkpoint past it.
    old.start();
    old.stop();
    let out = rejoin(&old, &new);
    assert!(out.status.success(), "{}", text(&out));
    // Run again: nothing more to rewind.
    let out = rejoin(&old, &new);
    assert!(out.status.success(), "{}", text(&out));
    // Promoted again at once, before it streamed a byte: its first record
    // must link back to the last one before the switch point.
    let out = common::walship(&["promote", "-D", old.dir.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    old.start();
    old.client()
        .batch_execute(
            "INSERT INTO kv VALUES ('after', 'rejoin and promotion'); SELECT pg_switch_wal()",
        )
        .unwrap();
    old.stop();
    let out = common::walship(&["dump", "--verify", old.dir.join("wal").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let adir = tempfile::tempdir().unwrap();
    let out = common::archive(adir.path(), &old, &["--create"]);
    assert!(out.status.success(), "{}", text(&out));
}
