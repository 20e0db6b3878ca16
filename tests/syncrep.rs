//! Synchronous replication and the monitoring of standbys: commits wait
//! for the standbys synchronous_standby_names names, other sessions see
//! them only once the wait ends, a waiting commit can be cancelled, kill -9 of the primary never loses an acknowledged commit
//! from the synchronous standby, and pg_stat_replication's lag neither
//! freezes nor lies.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Node};

/// The rows of `pg_stat_replication` as (application_name, column) text.
fn replication_column(primary: &Node, column: &str) -> Vec<(String, String)> {
    let rows = primary
        .client()
        .simple_query(&format!(
            "SELECT application_name, {column} FROM pg_stat_replication"
        ))
        .unwrap();
    let mut out: Vec<(String, String)> = rows
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap_or_default().to_string(),
                r.get(1).unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// The first column of the one row `sql` returns, as text.
fn one_row(c: &mut postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .unwrap()
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} returned no row"))
}

#[test]
fn commits_wait_for_the_synchronous_standby_and_can_be_cancelled() {
    let mut primary = Node::init("synchronous_standby_names = 'FIRST 1 (s1)'");
    primary.start();
    primary.keep_port();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    let mut s2 = Node::basebackup(&primary, "s2", &[]);
    s1.start();
    s2.start();
    wait_until("both standbys streaming", || {
        replication_column(&primary, "state")
            == vec![
                ("s1".into(), "streaming".into()),
                ("s2".into(), "streaming".into()),
            ]
    });
    assert_eq!(
        replication_column(&primary, "sync_state"),
        vec![("s1".into(), "sync".into()), ("s2".into(), "async".into())]
    );
    // synchronous_commit = on (the default): acknowledged means flushed on
    // s1; visible there once replayed, as in PostgreSQL.
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('a', '1')")
        .unwrap();
    s1.query_one(&format!(
        "WAIT FOR LSN '{}' WITH (TIMEOUT '30s')",
        s1.query_one("SELECT pg_last_wal_receive_lsn()")
    ));
    assert_eq!(s1.query_one("SELECT value FROM kv WHERE key = 'a'"), "1");

    // Without s1, a commit waits (and the log says for whom); s2 does not count.
    s1.kill9();
    let mut waiting = primary.client();
    let cancel = waiting.cancel_token();
    let writer = std::thread::spawn(move || {
        let began = Instant::now();
        let r = waiting.batch_execute("INSERT INTO kv VALUES ('b', '2')");
        (r.map_err(|e| e.to_string()), began.elapsed())
    });
    assert!(
        primary.wait_log("commit is waiting for synchronous replication"),
        "{}",
        primary.log()
    );
    assert!(primary.log().contains("none of them is connected"));
    // The commit is durable locally, but other sessions do not see it
    // until its wait ends, as in PostgreSQL: a failover now would take
    // it away.
    assert_eq!(
        primary.query_one("SELECT count(*) FROM kv WHERE key = 'b'"),
        "0"
    );
    // A cancel ends the wait with a warning; the commit stands, and shows.
    cancel.cancel_query(postgres::NoTls).unwrap();
    let (result, waited) = writer.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert_eq!(
        primary.query_one("SELECT count(*) FROM kv WHERE key = 'b'"),
        "1"
    );

    // local commits do not wait; remote ones resume when s1 returns.
    let mut c = primary.client();
    c.batch_execute("SET synchronous_commit = local; INSERT INTO kv VALUES ('c', '3')")
        .unwrap();
    let writer = std::thread::spawn(move || {
        c.batch_execute("SET synchronous_commit = remote_apply; INSERT INTO kv VALUES ('d', '4')")
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !writer.is_finished(),
        "a remote_apply commit returned without s1"
    );
    assert_eq!(
        primary.query_one("SELECT count(*) FROM kv WHERE key = 'd'"),
        "0"
    );
    // What other sessions see is a prefix of the WAL: a local commit
    // logged after the waiting one shows both, without waiting itself.
    let mut local = primary.client();
    local
        .batch_execute("SET synchronous_commit = local; INSERT INTO kv VALUES ('x', '9')")
        .unwrap();
    assert_eq!(
        one_row(
            &mut local,
            "SELECT count(*) FROM kv WHERE key >= 'd' AND key < 'y'"
        ),
        "2"
    );
    assert!(!writer.is_finished());
    s1.start();
    writer.join().unwrap().unwrap();
    assert_eq!(s1.query_one("SELECT value FROM kv WHERE key = 'd'"), "4");

    // SIGHUP: ANY 1 (s1, s2) lets s2 alone confirm.
    s1.kill9();
    primary.configure("synchronous_standby_names = 'ANY 1 (s1, s2)'");
    primary.reload();
    wait_until("s2 is a quorum member", || {
        replication_column(&primary, "sync_state") == vec![("s2".into(), "quorum".into())]
    });
    // Every quorum member has priority 1, as PostgreSQL shows them.
    assert_eq!(
        replication_column(&primary, "sync_priority"),
        vec![("s2".into(), "1".into())]
    );
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('e', '5')")
        .unwrap();
    s2.query_one(&format!(
        "WAIT FOR LSN '{}' WITH (TIMEOUT '30s')",
        primary.query_one("SELECT pg_current_wal_flush_lsn()")
    ));

    // A fence ends a waiting commit with an error, never success, even
    // when the standby confirms it afterwards: the new primary may not
    // have it.
    s2.signal(nix::sys::signal::SIGSTOP);
    let waits = || {
        primary
            .log()
            .matches("commit is waiting for synchronous replication")
            .count()
    };
    let waited_before = waits();
    let mut waiting = primary.client();
    let writer = std::thread::spawn(move || {
        waiting
            .batch_execute("INSERT INTO kv VALUES ('f', '6')")
            .map_err(|e| {
                e.as_db_error()
                    .map(|d| (d.code().code().to_string(), d.message().to_string()))
            })
    });
    wait_until("the commit to wait", || waits() > waited_before);
    primary
        .client()
        .batch_execute("SELECT walship_fence(2)")
        .unwrap();
    let result = writer.join().unwrap();
    s2.signal(nix::sys::signal::SIGCONT);
    let (code, message) = result.unwrap_err().expect("a server error");
    assert_eq!(code, "25006", "{message}");
    assert!(
        message.contains("fenced by epoch 2 while the commit waited"),
        "{message}"
    );
    // The new primary may lack it: the fenced node keeps it hidden.
    assert_eq!(
        primary.query_one("SELECT count(*) FROM kv WHERE key = 'f'"),
        "0"
    );
}

#[test]
fn kill9_of_the_primary_never_loses_a_commit_from_the_synchronous_standby() {
    let mut primary = Node::init("synchronous_standby_names = 's1'");
    primary.start();
    primary.keep_port();
    let mut s1 = Node::basebackup(&primary, "s1", &["--slot", "s1", "--create-slot"]);
    s1.start();
    for round in 0..6 {
        wait_until("s1 streaming", || {
            replication_column(&primary, "state") == vec![("s1".into(), "streaming".into())]
        });
        let acked = std::sync::Mutex::new(Vec::<String>::new());
        std::thread::scope(|s| {
            for t in 0..4 {
                let acked = &acked;
                let conninfo = primary.conninfo();
                s.spawn(move || {
                    let Ok(mut c) = postgres::Client::connect(&conninfo, postgres::NoTls) else {
                        return;
                    };
                    for i in 0.. {
                        let key = format!("r{round}-t{t}-{i}");
                        match c.execute("INSERT INTO kv VALUES ($1, 'v')", &[&key]) {
                            Ok(_) => acked.lock().unwrap().push(key),
                            Err(_) => return,
                        }
                    }
                });
            }
            // The kill comes once commits are being acknowledged, however
            // slowly the clients start (the node dies either way, so the
            // clients end and the assertion below speaks).
            let deadline = Instant::now() + Duration::from_secs(30);
            while acked.lock().unwrap().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(150 + 40 * round));
            primary.kill9();
        });
        let acked = acked.into_inner().unwrap();
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");
        // Acknowledged means flushed on s1: wait for it to replay that.
        s1.query_one(&format!(
            "WAIT FOR LSN '{}' WITH (TIMEOUT '30s')",
            s1.query_one("SELECT pg_last_wal_receive_lsn()")
        ));
        for key in &acked {
            let n = s1.query_one(&format!("SELECT count(*) FROM kv WHERE key = '{key}'"));
            assert_eq!(
                n,
                "1",
                "round {round}: acknowledged {key} is not on s1\n{}",
                s1.log()
            );
        }
        primary.start();
    }
}

#[test]
fn replication_lag_is_zero_when_idle_and_grows_when_a_standby_stalls() {
    let mut primary = Node::init("wal_sender_timeout = 0");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('a', '1')")
        .unwrap();
    wait_until("s1 caught up", || {
        replication_column(&primary, "replay_lag_bytes") == vec![("s1".into(), "0".into())]
    });
    std::thread::sleep(Duration::from_millis(300));
    // Idle and caught up: zero lag, not the last value frozen.
    assert_eq!(
        replication_column(&primary, "flush_lag"),
        vec![("s1".into(), "00:00:00.000000".into())]
    );
    // A stalled standby: the lag grows while it does not answer.
    s1.signal(nix::sys::signal::SIGSTOP);
    primary
        .client()
        .batch_execute("SET synchronous_commit = local; INSERT INTO kv VALUES ('b', '2')")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let first = replication_column(&primary, "flush_lag");
    std::thread::sleep(Duration::from_millis(300));
    let second = replication_column(&primary, "flush_lag");
    let bytes = replication_column(&primary, "flush_lag_bytes");
    s1.signal(nix::sys::signal::SIGCONT);
    assert!(first[0].1.as_str() > "00:00:00.100000", "{first:?}");
    assert!(second[0].1 > first[0].1, "{first:?} then {second:?}");
    assert_ne!(bytes[0].1, "0", "{bytes:?}");
    wait_until("s1 caught up again", || {
        replication_column(&primary, "flush_lag") == vec![("s1".into(), "00:00:00.000000".into())]
    });
    // The standby's side.
    let rows = s1
        .client()
        .simple_query("SELECT status, sender_port, flushed_lsn FROM pg_stat_wal_receiver")
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(row.get(0), Some("streaming"));
    assert_eq!(row.get(1), Some(primary.port.to_string().as_str()));
    let slots = primary
        .client()
        .simple_query("SELECT * FROM pg_replication_slots")
        .unwrap();
    assert!(slots
        .iter()
        .all(|m| !matches!(m, postgres::SimpleQueryMessage::Row(_))));
}

#[test]
fn a_checkpoint_keeps_a_commit_still_waiting_for_standbys() {
    // No standby ever connects: the commit waits, hidden, for good.
    let mut primary = Node::init("synchronous_standby_names = 'FIRST 1 (s1)'");
    primary.start();
    let mut waiting = primary.client();
    let writer = std::thread::spawn(move || {
        waiting
            .batch_execute("INSERT INTO kv VALUES ('h', '1')")
            .map_err(|e| e.to_string())
    });
    assert!(
        primary.wait_log("commit is waiting for synchronous replication"),
        "{}",
        primary.log()
    );
    assert_eq!(
        primary.query_one("SELECT count(*) FROM kv WHERE key = 'h'"),
        "0"
    );
    // The checkpoint's snapshot holds the commit (its redo point is past
    // the commit's record), though no reader sees it yet.
    primary.client().batch_execute("CHECKPOINT").unwrap();
    assert_eq!(
        primary.query_one("SELECT count(*) FROM kv WHERE key = 'h'"),
        "0"
    );
    primary.kill9();
    assert!(writer.join().unwrap().is_err());
    primary.start();
    assert_eq!(
        primary.query_one("SELECT value FROM kv WHERE key = 'h'"),
        "1"
    );
}

#[test]
fn a_reload_applies_to_waiting_commits_and_to_streaming_walsenders() {
    let mut primary = Node::init("synchronous_standby_names = 's1'");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    wait_until("s1 streaming", || {
        replication_column(&primary, "sync_state") == vec![("s1".into(), "sync".into())]
    });
    s1.signal(nix::sys::signal::SIGSTOP);
    let mut waiting = primary.client();
    let writer =
        std::thread::spawn(move || waiting.batch_execute("INSERT INTO kv VALUES ('a', '1')"));
    assert!(
        primary.wait_log("commit is waiting for synchronous replication"),
        "{}",
        primary.log()
    );
    // No synchronous standby any more: the waiting commit goes on, as in
    // PostgreSQL.
    primary.configure("synchronous_standby_names = ''");
    primary.configure("wal_sender_timeout = 1s");
    primary.signal(nix::sys::signal::SIGHUP);
    wait_until("the waiting commit to end", || writer.is_finished());
    let result = writer.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    // The walsender streaming to the stalled s1 since before the reload
    // keeps to the new wal_sender_timeout (it was 60 s).
    let cut = primary.wait_log("terminating walsender");
    s1.signal(nix::sys::signal::SIGCONT);
    assert!(cut, "{}", primary.log());
}

#[test]
fn a_block_waits_for_a_commit_still_waiting_for_its_standby_before_deciding_on_its_row() {
    let mut primary = Node::init("synchronous_standby_names = 's1'");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('h', 'old')")
        .unwrap();
    s1.signal(nix::sys::signal::SIGSTOP);
    // A DELETE outside any block is logged, then held for s1.
    let mut a = primary.client();
    let deleting = std::thread::spawn(move || a.execute("DELETE FROM kv WHERE key = 'h'", &[]));
    assert!(
        primary.wait_log("commit is waiting for synchronous replication"),
        "{}",
        primary.log()
    );
    // A block updating the row waits for that commit to show, then finds
    // no row (it used to update the row it could still see, and fail at
    // COMMIT).
    let mut b = primary.client();
    b.batch_execute("SET synchronous_commit = local; BEGIN")
        .unwrap();
    let updating = std::thread::spawn(move || {
        let n = b.execute("UPDATE kv SET value = 'B' WHERE key = 'h'", &[]);
        (b, n)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !updating.is_finished(),
        "the block decided before the held commit showed"
    );
    s1.signal(nix::sys::signal::SIGCONT);
    assert_eq!(deleting.join().unwrap().unwrap(), 1);
    let (mut b, n) = updating.join().unwrap();
    assert_eq!(n.unwrap(), 0);
    b.batch_execute("COMMIT").unwrap();
}

#[test]
fn a_block_does_not_wait_for_ever_on_a_commit_a_fence_keeps_hidden() {
    let mut primary = Node::init("synchronous_standby_names = 's1'");
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('h', 'old')")
        .unwrap();
    s1.signal(nix::sys::signal::SIGSTOP);
    let mut a = primary.client();
    let deleting = std::thread::spawn(move || a.execute("DELETE FROM kv WHERE key = 'h'", &[]));
    assert!(
        primary.wait_log("commit is waiting for synchronous replication"),
        "{}",
        primary.log()
    );
    // The fence ends that wait unacknowledged, and the commit stays hidden
    // for good; a block that wants its row is told of the fence.
    primary
        .client()
        .batch_execute("SELECT walship_fence(2)")
        .unwrap();
    assert!(deleting.join().unwrap().is_err());
    let mut b = primary.client();
    let updating = std::thread::spawn(move || {
        b.batch_execute(
            "SET synchronous_commit = local; BEGIN; UPDATE kv SET value = 'B' WHERE key = 'h'",
        )
    });
    wait_until("the block to be refused", || updating.is_finished());
    s1.signal(nix::sys::signal::SIGCONT);
    let err = updating.join().unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err:?}");
}
