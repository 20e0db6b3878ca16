//! walship server as PostgreSQL clients see it: the SQL subset, transactions,
//! SQLSTATEs, the extended protocol, authentication, restarts.

mod common;

use common::Node;
use postgres::error::SqlState;

fn code(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[test]
fn sql_subset_through_a_real_client() {
    let mut node = Node::init("");
    node.start();
    let mut c = node.client();
    c.batch_execute("INSERT INTO kv VALUES ('a', '1'), ('b', '2'), ('c', '3')")
        .unwrap();
    assert_eq!(
        c.execute(
            "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&"a", &"x"]
        )
        .unwrap(),
        0
    );
    assert_eq!(
        c.execute(
            "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&"a", &"10"]
        )
        .unwrap(),
        1
    );
    let v: String = c
        .query_one("SELECT value FROM kv WHERE key = $1", &[&"a"])
        .unwrap()
        .get(0);
    assert_eq!(v, "10");
    // One-key lookups: counted, limited, and inside a transaction that has
    // written the key itself.
    let count = |c: &mut postgres::Client, key: &str| -> i64 {
        c.query_one("SELECT count(*) FROM kv WHERE key = $1", &[&key])
            .unwrap()
            .get(0)
    };
    assert_eq!((count(&mut c, "a"), count(&mut c, "nope")), (1, 0));
    assert!(c
        .query("SELECT value FROM kv WHERE key = 'a' LIMIT 0", &[])
        .unwrap()
        .is_empty());
    c.batch_execute("BEGIN; UPDATE kv SET value = 'mine' WHERE key = 'c'")
        .unwrap();
    let mine: String = c
        .query_one("SELECT value FROM kv WHERE key = 'c'", &[])
        .unwrap()
        .get(0);
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(mine, "mine");
    assert_eq!(
        c.execute("UPDATE kv SET value = 'z' WHERE key = 'nope'", &[])
            .unwrap(),
        0
    );
    assert_eq!(
        c.execute("DELETE FROM kv WHERE key = $1", &[&"b"]).unwrap(),
        1
    );
    let n: i64 = c.query_one("SELECT count(*) FROM kv", &[]).unwrap().get(0);
    assert_eq!(n, 2);
    for i in 0..20 {
        c.execute("INSERT INTO kv VALUES ($1, 'p')", &[&format!("p{i:02}")])
            .unwrap();
    }
    let keys: Vec<String> = c
        .query(
            "SELECT key FROM kv WHERE key LIKE 'p%' ORDER BY key DESC LIMIT $1",
            &[&3i64],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["p19", "p18", "p17"]);
    let rows = c
        .query(
            "SELECT key, value FROM kv WHERE key >= 'p05' AND key < 'p08'",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 3);
    let lsn: String = c
        .simple_query("SELECT pg_current_wal_lsn()")
        .unwrap()
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    assert!(lsn.contains('/'), "{lsn}");
    let in_recovery: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(!in_recovery);

    // SQLSTATEs.
    let e = c
        .execute("INSERT INTO kv VALUES ('a', 'dup')", &[])
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION));
    assert_eq!(
        code(&c.batch_execute("SELECT * FROM accounts").unwrap_err()),
        "42P01"
    );
    assert_eq!(
        code(&c.batch_execute("CREATE TABLE t (a int)").unwrap_err()),
        "0A000"
    );
    assert_eq!(code(&c.batch_execute("SELEKT 1").unwrap_err()), "42601");
    assert_eq!(
        code(&c.batch_execute("SET no_such_thing = 1").unwrap_err()),
        "42704"
    );
}

#[test]
fn transactions_are_atomic_and_fail_as_postgres_does() {
    let mut node = Node::init("");
    node.start();
    let mut c = node.client();
    let mut other = node.client();
    c.batch_execute("BEGIN; INSERT INTO kv VALUES ('t1', 'a'); INSERT INTO kv VALUES ('t2', 'b')")
        .unwrap();
    // Not visible to others before COMMIT, visible to itself.
    assert!(other
        .query_opt("SELECT value FROM kv WHERE key = 't1'", &[])
        .unwrap()
        .is_none());
    let n: i64 = c.query_one("SELECT count(*) FROM kv", &[]).unwrap().get(0);
    assert_eq!(n, 2);
    c.batch_execute("COMMIT").unwrap();
    let n: i64 = other
        .query_one("SELECT count(*) FROM kv", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // A block that deletes a row and inserts its key again commits, as in
    // PostgreSQL: the key is absent by the block's own doing. So does one
    // statement string that does the same (an implicit block).
    c.batch_execute(
        "BEGIN; DELETE FROM kv WHERE key = 't1'; INSERT INTO kv VALUES ('t1', 'again'); COMMIT",
    )
    .unwrap();
    c.batch_execute("DELETE FROM kv WHERE key = 't2'; INSERT INTO kv VALUES ('t2', 'again')")
        .unwrap();
    for key in ["t1", "t2"] {
        let v: String = other
            .query_one("SELECT value FROM kv WHERE key = $1", &[&key])
            .unwrap()
            .get(0);
        assert_eq!(v, "again", "{key}");
    }
    // Inserting it a second time is still a unique violation.
    let err = c
        .batch_execute("BEGIN; DELETE FROM kv WHERE key = 't1'; INSERT INTO kv VALUES ('t1', 'x'); INSERT INTO kv VALUES ('t1', 'y')")
        .unwrap_err();
    assert_eq!(code(&err), "23505", "{err:?}");
    c.batch_execute("ROLLBACK").unwrap();

    c.batch_execute("BEGIN; INSERT INTO kv VALUES ('t3', 'c')")
        .unwrap();
    c.batch_execute("ROLLBACK").unwrap();
    assert!(other
        .query_opt("SELECT value FROM kv WHERE key = 't3'", &[])
        .unwrap()
        .is_none());

    // A failed statement aborts the block; COMMIT then rolls back.
    c.batch_execute("BEGIN; INSERT INTO kv VALUES ('t4', 'd')")
        .unwrap();
    assert_eq!(
        code(
            &c.batch_execute("INSERT INTO kv VALUES ('t1', 'dup')")
                .unwrap_err()
        ),
        "23505"
    );
    assert_eq!(code(&c.batch_execute("SELECT 1").unwrap_err()), "25P02");
    c.batch_execute("COMMIT").unwrap();
    assert!(other
        .query_opt("SELECT value FROM kv WHERE key = 't4'", &[])
        .unwrap()
        .is_none());

    // A multi-statement simple query is one implicit transaction.
    assert!(c
        .batch_execute("INSERT INTO kv VALUES ('t5', 'e'); INSERT INTO kv VALUES ('t1', 'dup')")
        .is_err());
    assert!(other
        .query_opt("SELECT value FROM kv WHERE key = 't5'", &[])
        .unwrap()
        .is_none());

    // After a block's COMMIT, the rest of the string is another implicit
    // transaction; a BEGIN makes the implicit one explicit, the statements
    // before it included (PostgreSQL's rules).
    let absent = |other: &mut postgres::Client, key: &str| {
        other
            .query_opt("SELECT value FROM kv WHERE key = $1", &[&key])
            .unwrap()
            .is_none()
    };
    assert!(c
        .batch_execute(
            "BEGIN; INSERT INTO kv VALUES ('ms1', 'a'); COMMIT; \
             INSERT INTO kv VALUES ('ms2', 'b'); INSERT INTO kv VALUES ('ms1', 'dup')"
        )
        .is_err());
    assert!(!absent(&mut other, "ms1") && absent(&mut other, "ms2"));
    c.batch_execute(
        "INSERT INTO kv VALUES ('ms3', 'c'); BEGIN; INSERT INTO kv VALUES ('ms4', 'd')",
    )
    .unwrap();
    c.batch_execute("ROLLBACK").unwrap();
    assert!(absent(&mut other, "ms3") && absent(&mut other, "ms4"));
    // READ ONLY, AND CHAIN, ABORT.
    c.batch_execute("BEGIN READ ONLY").unwrap();
    assert_eq!(
        code(
            &c.batch_execute("INSERT INTO kv VALUES ('ro', 'x')")
                .unwrap_err()
        ),
        "25006"
    );
    c.batch_execute("ABORT").unwrap();
    c.batch_execute("BEGIN; INSERT INTO kv VALUES ('ch1', 'x'); COMMIT AND CHAIN")
        .unwrap();
    c.batch_execute("INSERT INTO kv VALUES ('ch2', 'y'); ROLLBACK")
        .unwrap();
    assert!(!absent(&mut other, "ch1") && absent(&mut other, "ch2"));

    // A client that vanishes mid-transaction leaves nothing behind.
    {
        let mut gone = node.client();
        gone.batch_execute("BEGIN; INSERT INTO kv VALUES ('t6', 'f')")
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(other
        .query_opt("SELECT value FROM kv WHERE key = 't6'", &[])
        .unwrap()
        .is_none());

    // Session settings.
    c.batch_execute("SET synchronous_commit = off").unwrap();
    let v: String = c.query_one("SHOW synchronous_commit", &[]).unwrap().get(0);
    assert_eq!(v, "off");
    c.execute("INSERT INTO kv VALUES ('async', 'x')", &[])
        .unwrap();
    assert_eq!(
        code(
            &c.batch_execute("SET synchronous_commit = sometimes")
                .unwrap_err()
        ),
        "22023"
    );

    // SHOW among other statements of one string.
    let shown = c
        .simple_query("SHOW synchronous_commit; SELECT 1 AS x; SET synchronous_commit = off")
        .unwrap();
    let rows = shown
        .iter()
        .filter(|m| matches!(m, postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 2);

    // In a block, SET LOCAL lasts to its end, and a ROLLBACK undoes SET.
    let show = |c: &mut postgres::Client| -> String {
        c.query_one("SHOW synchronous_commit", &[]).unwrap().get(0)
    };
    c.batch_execute("SET synchronous_commit = local").unwrap();
    c.batch_execute("BEGIN; SET LOCAL synchronous_commit = off")
        .unwrap();
    assert_eq!(show(&mut c), "off");
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(show(&mut c), "local");
    c.batch_execute("BEGIN; SET synchronous_commit = off; ROLLBACK")
        .unwrap();
    assert_eq!(show(&mut c), "local");
    c.batch_execute("BEGIN; SET synchronous_commit = off; INSERT INTO kv VALUES ('t1', 'dup')")
        .unwrap_err();
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(show(&mut c), "local");
    c.batch_execute("BEGIN; SET synchronous_commit = on; COMMIT")
        .unwrap();
    assert_eq!(show(&mut c), "on");
    // Outside a block SET LOCAL does nothing (with PostgreSQL's warning).
    c.batch_execute("SET LOCAL synchronous_commit = off")
        .unwrap();
    assert_eq!(show(&mut c), "on");
}

#[test]
fn aliases_name_columns_and_a_quoted_name_is_exact() {
    let mut node = Node::init("");
    node.start();
    let mut c = node.client();
    c.batch_execute("INSERT INTO kv VALUES ('a', '1')").unwrap();
    for (sql, names) in [
        ("SELECT value AS v, key AS k FROM kv", vec!["v", "k"]),
        ("SELECT count(*) AS n FROM kv", vec!["n"]),
        ("SELECT key, value FROM kv", vec!["key", "value"]),
    ] {
        // Both protocols: RowDescription comes from the same place.
        let row = c.query_one(sql, &[]).unwrap();
        let got: Vec<&str> = row.columns().iter().map(|col| col.name()).collect();
        assert_eq!(got, names, "{sql}");
    }
    assert_eq!(
        code(&c.batch_execute("SELECT value FROM \"KV\"").unwrap_err()),
        "42P01"
    );
    c.batch_execute("SELECT value FROM \"kv\"").unwrap();
    // Column names too: quoted, exact; unquoted, folded.
    c.batch_execute("SELECT VALUE FROM kv WHERE KEY = 'a'")
        .unwrap();
    c.batch_execute("SELECT \"value\" FROM kv").unwrap();
    for sql in [
        "SELECT \"VALUE\" FROM kv",
        "INSERT INTO kv (\"KEY\", value) VALUES ('b', '2')",
        "UPDATE kv SET \"Value\" = 'x' WHERE key = 'a'",
    ] {
        assert!(c.batch_execute(sql).is_err(), "{sql}");
    }
}

#[test]
fn reset_deallocate_and_discard_all_as_connection_poolers_use_them() {
    let mut node = Node::init("");
    node.start();
    // The session began with synchronous_commit = local (its startup
    // options): RESET returns there, not to walship.conf's.
    let conninfo = format!("{} options='-c synchronous_commit=local'", node.conninfo());
    let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
    let show = |c: &mut postgres::Client, name: &str| -> String {
        c.query_one(&format!("SHOW {name}"), &[]).unwrap().get(0)
    };
    c.batch_execute("SET synchronous_commit = off; SET application_name = 'app'")
        .unwrap();
    c.batch_execute("RESET synchronous_commit").unwrap();
    assert_eq!(show(&mut c, "synchronous_commit"), "local");
    assert_eq!(show(&mut c, "application_name"), "app");
    c.batch_execute("RESET ALL").unwrap();
    assert_eq!(show(&mut c, "application_name"), "");
    // A prepared statement (extended protocol), dropped by name, by
    // DEALLOCATE ALL, or by DISCARD ALL, which also resets settings.
    assert_eq!(
        code(&c.batch_execute("DEALLOCATE nope").unwrap_err()),
        "26000"
    );
    let stmt = c.prepare("SELECT value FROM kv WHERE key = $1").unwrap();
    c.query(&stmt, &[&"k"]).unwrap();
    // A failed block refuses DEALLOCATE, and keeps the statement.
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute("SELECT nope FROM kv").unwrap_err();
    assert_eq!(
        code(&c.batch_execute("DEALLOCATE ALL").unwrap_err()),
        "25P02"
    );
    c.batch_execute("ROLLBACK").unwrap();
    c.query(&stmt, &[&"k"]).unwrap();
    c.batch_execute("DEALLOCATE ALL").unwrap();
    assert_eq!(code(&c.query(&stmt, &[&"k"]).unwrap_err()), "26000");
    c.batch_execute("SET synchronous_commit = off").unwrap();
    c.batch_execute("DISCARD ALL").unwrap();
    assert_eq!(show(&mut c, "synchronous_commit"), "local");
    // Not in a block, nor in a string of several (an implicit block), as
    // in PostgreSQL.
    assert_eq!(
        code(&c.batch_execute("SELECT 1; DISCARD ALL").unwrap_err()),
        "25001"
    );
}

#[test]
fn a_left_out_or_default_value_is_null_which_kv_does_not_hold() {
    let mut node = Node::init("");
    node.start();
    let mut c = node.client();
    for sql in [
        "INSERT INTO kv VALUES ('h')",
        "INSERT INTO kv VALUES ('h', DEFAULT)",
        "INSERT INTO kv (key) VALUES ('h')",
    ] {
        assert_eq!(code(&c.batch_execute(sql).unwrap_err()), "0A000", "{sql}");
    }
    assert_eq!(
        code(
            &c.batch_execute("INSERT INTO kv VALUES (DEFAULT, 'v')")
                .unwrap_err()
        ),
        "23502"
    );
    for sql in [
        "INSERT INTO kv VALUES ('h', 'v', 'w')",
        // Fewer values than the columns it names, rows of two lengths.
        "INSERT INTO kv (key, value) VALUES ('h')",
        "INSERT INTO kv VALUES ('a', '1'), ('h')",
    ] {
        assert_eq!(code(&c.batch_execute(sql).unwrap_err()), "42601", "{sql}");
    }
}

/// Runs `sql` on `c` in a thread of its own, which must still be waiting
/// after a while: a writer blocked by another block's row lock.
fn blocked(
    mut c: postgres::Client,
    sql: &'static str,
) -> std::thread::JoinHandle<(postgres::Client, Result<u64, postgres::Error>)> {
    let waiting = std::thread::spawn(move || {
        let r = c.execute(sql, &[]);
        (c, r)
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "{sql} did not wait for the block's lock"
    );
    waiting
}

#[test]
fn writers_of_a_key_a_block_wrote_wait_for_it_as_in_postgresql() {
    let mut node = Node::init("");
    node.start();
    let mut a = node.client();
    let b = node.client();
    let value = |c: &mut postgres::Client, key: &str| -> Option<String> {
        c.query_opt("SELECT value FROM kv WHERE key = $1", &[&key])
            .unwrap()
            .map(|r| r.get(0))
    };
    a.batch_execute("INSERT INTO kv VALUES ('u', 'old'), ('d', 'job'), ('c', '0')")
        .unwrap();
    // A's DO NOTHING inserted the key: B's plain INSERT waits, then finds it.
    a.batch_execute("BEGIN; INSERT INTO kv VALUES ('n', 'A') ON CONFLICT (key) DO NOTHING")
        .unwrap();
    let waiting = blocked(b, "INSERT INTO kv VALUES ('n', 'B')");
    a.batch_execute("COMMIT").unwrap();
    let (mut b, r) = waiting.join().unwrap();
    assert_eq!(code(&r.unwrap_err()), "23505");
    assert_eq!(value(&mut b, "n").as_deref(), Some("A"));
    // A's UPDATE holds the row: B's DELETE waits, then deletes A's row.
    a.batch_execute("BEGIN; UPDATE kv SET value = 'A' WHERE key = 'u'")
        .unwrap();
    let waiting = blocked(b, "DELETE FROM kv WHERE key = 'u'");
    a.batch_execute("COMMIT").unwrap();
    let (mut b, r) = waiting.join().unwrap();
    assert_eq!(r.unwrap(), 1);
    assert_eq!(value(&mut b, "u"), None);
    // Both delete the row: only one says so.
    a.batch_execute("BEGIN; DELETE FROM kv WHERE key = 'd'")
        .unwrap();
    let waiting = blocked(b, "DELETE FROM kv WHERE key = 'd'");
    a.batch_execute("COMMIT").unwrap();
    let (mut b, r) = waiting.join().unwrap();
    assert_eq!(r.unwrap(), 0);
    // Two blocks update one row: the second waits and commits after the
    // first, with no serialization failure.
    a.batch_execute("BEGIN; UPDATE kv SET value = 'A' WHERE key = 'c'")
        .unwrap();
    b.batch_execute("BEGIN").unwrap();
    let waiting = blocked(b, "UPDATE kv SET value = 'B' WHERE key = 'c'");
    a.batch_execute("COMMIT").unwrap();
    let (mut b, r) = waiting.join().unwrap();
    assert_eq!(r.unwrap(), 1);
    b.batch_execute("COMMIT").unwrap();
    assert_eq!(value(&mut a, "c").as_deref(), Some("B"));
    // SELECT … FOR UPDATE locks the row for the block, as in PostgreSQL.
    a.batch_execute("BEGIN; SELECT value FROM kv WHERE key = 'c' FOR UPDATE")
        .unwrap();
    let waiting = blocked(b, "UPDATE kv SET value = 'after' WHERE key = 'c'");
    a.batch_execute("UPDATE kv SET value = 'A2' WHERE key = 'c'; COMMIT")
        .unwrap();
    let (mut b, r) = waiting.join().unwrap();
    assert_eq!(r.unwrap(), 1);
    assert_eq!(value(&mut a, "c").as_deref(), Some("after"));
    // A statement that changes no row locks none: after a block's UPDATE
    // of a missing key and DO NOTHING on a present one, nobody waits.
    a.batch_execute(
        "BEGIN; UPDATE kv SET value = 'x' WHERE key = 'missing'; \
         INSERT INTO kv VALUES ('c', 'x') ON CONFLICT (key) DO NOTHING; \
         SELECT value FROM kv WHERE key = 'absent' FOR UPDATE",
    )
    .unwrap();
    b.batch_execute(
        "SET lock_timeout = '2s'; INSERT INTO kv VALUES ('missing', 'b'); \
         UPDATE kv SET value = 'b' WHERE key = 'c'; INSERT INTO kv VALUES ('absent', 'b'); \
         RESET lock_timeout",
    )
    .unwrap();
    a.batch_execute("ROLLBACK").unwrap();
    // A block that rolls back lets the waiting INSERT through.
    a.batch_execute("BEGIN; INSERT INTO kv VALUES ('r', 'A')")
        .unwrap();
    let waiting = blocked(b, "INSERT INTO kv VALUES ('r', 'B')");
    a.batch_execute("ROLLBACK").unwrap();
    let (mut b, r) = waiting.join().unwrap();
    assert_eq!(r.unwrap(), 1);
    assert_eq!(value(&mut b, "r").as_deref(), Some("B"));
    // What the block wrote itself, or what nobody touched, commits.
    a.batch_execute(
        "BEGIN; INSERT INTO kv VALUES ('m', '1'); UPDATE kv SET value = '2' WHERE key = 'm'; \
         UPDATE kv SET value = 'A' WHERE key = 'n'; COMMIT",
    )
    .unwrap();
    assert_eq!(value(&mut b, "m").as_deref(), Some("2"));
    assert_eq!(value(&mut b, "n").as_deref(), Some("A"));
}

#[test]
fn a_deadlock_fails_one_block_and_a_lock_wait_ends_on_cancel_or_disconnect() {
    let mut node = Node::init("");
    node.start();
    let mut a = node.client();
    let mut b = node.client();
    a.batch_execute("INSERT INTO kv VALUES ('1', '0'), ('2', '0')")
        .unwrap();
    // A and B each hold a row and want the other's: the wait that closes
    // the cycle fails at once, and aborting B frees its row for A before
    // B's client says ROLLBACK.
    a.batch_execute("BEGIN; UPDATE kv SET value = 'A' WHERE key = '1'")
        .unwrap();
    b.batch_execute("BEGIN; UPDATE kv SET value = 'B' WHERE key = '2'")
        .unwrap();
    // A normally waits first and B closes the cycle; on a loaded machine
    // A's request may come second. Either way exactly one fails, and the
    // other goes on once the failed block has freed its row.
    let waiting = blocked(a, "UPDATE kv SET value = 'A' WHERE key = '2'");
    let from_b = b.execute("UPDATE kv SET value = 'B' WHERE key = '1'", &[]);
    let (mut a, from_a) = waiting.join().unwrap();
    let (winner, loser, value) = match (from_a, from_b) {
        (Ok(1), Err(e)) => {
            assert_eq!(code(&e), "40P01", "{e:?}");
            (&mut a, &mut b, "A")
        }
        (Err(e), Ok(1)) => {
            assert_eq!(code(&e), "40P01", "{e:?}");
            (&mut b, &mut a, "B")
        }
        other => panic!("one block must fail with 40P01, the other go on: {other:?}"),
    };
    winner.batch_execute("COMMIT").unwrap();
    loser.batch_execute("ROLLBACK").unwrap();
    let values: Vec<String> = b
        .query("SELECT value FROM kv ORDER BY key", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(values, [value, value]);
    // lock_timeout bounds a lock wait, as in PostgreSQL.
    a.batch_execute("BEGIN; UPDATE kv SET value = 'x' WHERE key = '2'")
        .unwrap();
    let err = b
        .batch_execute("SET lock_timeout = '200ms'; UPDATE kv SET value = 'y' WHERE key = '2'")
        .unwrap_err();
    assert_eq!(code(&err), "55P03", "{err:?}");
    b.batch_execute("RESET lock_timeout").unwrap();
    let err = b.batch_execute("SET lock_timeout = 'soon'").unwrap_err();
    assert_eq!(code(&err), "22023", "{err:?}");
    a.batch_execute("ROLLBACK").unwrap();
    // A CancelRequest ends a lock wait.
    a.batch_execute("BEGIN; UPDATE kv SET value = 'x' WHERE key = '1'")
        .unwrap();
    let cancel = b.cancel_token();
    let waiting = blocked(b, "UPDATE kv SET value = 'y' WHERE key = '1'");
    // Sent again until it lands: a cancel that comes before the statement
    // starts is forgotten, as in PostgreSQL, and the wait would go on.
    while !waiting.is_finished() {
        cancel.cancel_query(postgres::NoTls).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (b, r) = waiting.join().unwrap();
    assert_eq!(code(&r.unwrap_err()), "57014");
    // A client that goes away in its block frees its rows.
    let waiting = blocked(b, "UPDATE kv SET value = 'y' WHERE key = '1'");
    drop(a);
    let (mut b, r) = waiting.join().unwrap();
    assert_eq!(r.unwrap(), 1);
    let v: String = b
        .query_one("SELECT value FROM kv WHERE key = '1'", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "y");
}

#[test]
fn statement_timeout_ends_waits_and_an_idle_block_past_its_timeout_ends_the_session() {
    // Commits at `on` wait for a standby that never comes. Sessions idle
    // in a block are ended after 300ms, unless they SET otherwise.
    let mut node = Node::init(
        "synchronous_standby_names = 'nobody'\nsynchronous_commit = local\n\
         idle_in_transaction_session_timeout = 300ms\n",
    );
    node.start();
    let mut a = node.client();
    let mut b = node.client();
    a.batch_execute(
        "SET idle_in_transaction_session_timeout = 0; \
         INSERT INTO kv VALUES ('1', '0'), ('3', '0')",
    )
    .unwrap();
    // statement_timeout ends a row-lock wait with 57014, as in PostgreSQL.
    a.batch_execute("BEGIN; UPDATE kv SET value = 'A' WHERE key = '1'")
        .unwrap();
    // (lock_timeout only so that a regression fails rather than hangs.)
    b.batch_execute("SET statement_timeout = '300ms'; SET lock_timeout = '5s'")
        .unwrap();
    let began = std::time::Instant::now();
    let err = b
        .batch_execute("UPDATE kv SET value = 'B' WHERE key = '1'")
        .unwrap_err();
    assert_eq!(code(&err), "57014", "{err:?}");
    let message = err.as_db_error().unwrap().message();
    assert_eq!(message, "canceling statement due to statement timeout");
    assert!(began.elapsed() >= std::time::Duration::from_millis(300));
    // The clock is the statement's: a later one gets its whole timeout.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let began = std::time::Instant::now();
    let err = b
        .batch_execute("UPDATE kv SET value = 'B' WHERE key = '1'")
        .unwrap_err();
    assert_eq!(code(&err), "57014", "{err:?}");
    assert!(began.elapsed() >= std::time::Duration::from_millis(300));
    // Values as PostgreSQL takes and shows them; none past INT_MAX ms.
    b.batch_execute("SET statement_timeout = 90000").unwrap();
    let shown: String = b.query_one("SHOW statement_timeout", &[]).unwrap().get(0);
    assert_eq!(shown, "90s");
    let shown: String = b.query_one("SHOW lock_timeout", &[]).unwrap().get(0);
    assert_eq!(shown, "5s");
    for bad in ["'soon'", "2147483648", "'10000000000000000000s'"] {
        let err = b
            .batch_execute(&format!("SET statement_timeout = {bad}"))
            .unwrap_err();
        assert_eq!(code(&err), "22023", "{bad}: {err:?}");
    }
    a.batch_execute("ROLLBACK").unwrap();
    // statement_timeout does not end a commit's wait for synchronous
    // standbys: PostgreSQL stops it before it commits. A cancel does,
    // with a warning; the commit stands locally.
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = notices.clone();
    let mut c = node
        .conninfo()
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |n| seen.lock().unwrap().push(n.message().to_string()))
        .connect(postgres::NoTls)
        .unwrap();
    c.batch_execute("SET synchronous_commit = on; SET statement_timeout = '300ms'")
        .unwrap();
    let cancel = c.cancel_token();
    let waiting = std::thread::spawn(move || {
        let r = c.batch_execute("INSERT INTO kv VALUES ('s', 'stands')");
        (c, r)
    });
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(!waiting.is_finished(), "statement_timeout ended the wait");
    // Sent again until it lands (one sent before the statement started
    // would be forgotten).
    while !waiting.is_finished() {
        cancel.cancel_query(postgres::NoTls).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_c, r) = waiting.join().unwrap();
    r.unwrap();
    assert_eq!(
        *notices.lock().unwrap(),
        ["canceling wait for synchronous replication due to user request"]
    );
    let v: String = a
        .query_one("SELECT value FROM kv WHERE key = 's'", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "stands");
    // A client idle in a block it began past
    // idle_in_transaction_session_timeout loses its session (25P03) and
    // its row locks; one idle outside a block keeps its session.
    let mut idle = node.client();
    let shown: String = idle
        .query_one("SHOW idle_in_transaction_session_timeout", &[])
        .unwrap()
        .get(0);
    assert_eq!(shown, "300ms", "walship.conf's value");
    idle.batch_execute("BEGIN; UPDATE kv SET value = 'idle' WHERE key = '3'")
        .unwrap();
    let mut outside = node.client();
    outside.batch_execute("SELECT 1").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(900));
    assert!(node.wait_log("idle_in_transaction_session_timeout"));
    b.batch_execute("SET statement_timeout = 0; SET lock_timeout = '2s'; UPDATE kv SET value = 'b' WHERE key = '3'")
        .unwrap();
    let err = idle.batch_execute("COMMIT").unwrap_err();
    if let Some(db) = err.as_db_error() {
        assert_eq!(db.code().code(), "25P03", "{err:?}");
    }
    outside.batch_execute("SELECT 1").unwrap();
    let v: String = a
        .query_one("SELECT value FROM kv WHERE key = '3'", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "b", "the idle block's update was rolled back");
}

#[test]
fn data_survives_a_clean_restart_and_a_second_server_is_refused() {
    let mut node = Node::init("");
    node.start();
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('k', 'v')")
        .unwrap();
    let second = common::walship(&[
        "server",
        "-D",
        node.dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("in use by another process") && err.contains(&format!("pid {}", node.pid())),
        "{err}"
    );
    let lock_file = node.dir.join("walship.lock");
    assert_eq!(
        std::fs::read_to_string(&lock_file).unwrap().trim(),
        node.pid().to_string()
    );
    assert!(node.stop().success(), "{}", node.log());
    assert!(node.log().contains("shut down cleanly"));
    // A stopped node's lock file names no process for a script to signal.
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), "");
    node.start();
    let v: String = node
        .client()
        .query_one("SELECT value FROM kv WHERE key = 'k'", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "v");
}

#[test]
fn scram_sha_256_accepts_the_password_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let pw = root.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let mut node = Node::init_with(
        "authentication = scram-sha-256",
        &["--pwfile", pw.to_str().unwrap()],
    );
    node.start();
    let ok = postgres::Client::connect(
        &format!("{} password=s3cret", node.conninfo()),
        postgres::NoTls,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
    let bad = postgres::Client::connect(
        &format!("{} password=wrong", node.conninfo()),
        postgres::NoTls,
    )
    .err()
    .unwrap();
    assert_eq!(code(&bad), "28P01");
    // A role that does not exist fails as a wrong password does, so a
    // client cannot tell which roles exist.
    let users = format!("host=127.0.0.1 port={} user=nobody password=x", node.port);
    let nobody = postgres::Client::connect(&users, postgres::NoTls)
        .err()
        .unwrap();
    assert_eq!(code(&nobody), "28P01");
    assert_eq!(
        nobody.as_db_error().unwrap().message(),
        "password authentication failed for user \"nobody\""
    );
    assert!(!std::fs::read_to_string(node.dir.join("users"))
        .unwrap()
        .contains("s3cret"));

    // walship's own clients find the password as libpq's do: PGPASSWORD,
    // then a password file only its owner can read.
    let status = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_walship"));
        cmd.args(["status", "--from", &node.conninfo()])
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env("HOME", root.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set PGPASSWORD"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = status(&[("PGPASSWORD", "s3cret")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passfile = root.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{}:walship:nobody:wrong\n127.0.0.1:{}:*:tester:s3cret\n",
            node.port, node.port
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = passfile.to_str().unwrap();
    let out = status(&[("PGPASSFILE", file)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The connection string's passfile= comes before PGPASSFILE.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["status", "--from"])
        .arg(format!("{} passfile={file}", node.conninfo()))
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", root.path().join("none"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = status(&[("PGPASSFILE", file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has group or world access"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A receiver refused its password stops at once (exit 1), as
    // pg_receivewal does, rather than retrying what cannot succeed.
    let recv_dir = root.path().join("recv");
    let out = std::process::Command::new("timeout")
        .args(["30", env!("CARGO_BIN_EXE_walship"), "receive", "--from"])
        .arg(node.conninfo())
        .arg("-D")
        .arg(&recv_dir)
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", root.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("asks for a password"));
    // ~/.pgpass by default.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&passfile, root.path().join(".pgpass")).unwrap();
    assert!(status(&[]).status.success());
}

#[test]
fn bad_configuration_and_directories_are_refused_clearly() {
    let node = Node::init("bogus_setting = 1");
    let out = common::walship(&["server", "-D", node.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("walship.conf:")
            && err.contains("unrecognized configuration parameter \"bogus_setting\""),
        "{err}"
    );

    let out = common::walship(&["init", "-D", node.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    let empty = tempfile::tempdir().unwrap();
    let out = common::walship(&["server", "-D", empty.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a walship data directory"));
    let gone = empty.path().join("gone");
    let out = common::walship(&["server", "-D", gone.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("gone does not exist"));
    // A role name the users file cannot hold: refused before anything is made.
    let out = common::walship(&["init", "-D", gone.to_str().unwrap(), "-U", "a:b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("role name \"a:b\" is not allowed"));
    assert!(!gone.exists());
    let out = common::walship(&[
        "dump",
        "--start",
        "0/200000",
        "--end",
        "0/100000",
        node.dir.join("wal").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is after --end"));

    // A control file of another format version.
    let node = Node::init("");
    let control = node.dir.join("control");
    let mut bytes = std::fs::read(&control).unwrap();
    bytes[4] = 9;
    std::fs::write(&control, &bytes).unwrap();
    let out = common::walship(&["server", "-D", node.dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("format version 9"), "{err}");

    // The segment holding the last checkpoint is gone: refused, and the
    // WAL after it left as it was, not zeroed.
    let mut node = Node::init("");
    node.start();
    node.complete_segments(2, "gone");
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('after', 'checkpoint')")
        .unwrap();
    node.client().batch_execute("CHECKPOINT").unwrap();
    node.complete_segments(1, "later");
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('in', 'the next segment')")
        .unwrap();
    node.kill9();
    let wal = node.dir.join("wal");
    let segments = common::file_names(&wal, "");
    let segments: Vec<&String> = segments.iter().filter(|n| n.len() == 24).collect();
    let victim = segments[segments.len() - 2].clone();
    let last = std::fs::read(wal.join(segments[segments.len() - 1])).unwrap();
    std::fs::remove_file(wal.join(&victim)).unwrap();
    let out = common::walship(&["server", "-D", node.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{victim} is missing")) && err.contains("last checkpoint"),
        "{err}"
    );
    assert!(std::fs::read(wal.join(segments[segments.len() - 1])).unwrap() == last);

    // A damaged record after the checkpoint: recovery ends before it, and
    // the log names the LSN and the file.
    let mut node = Node::init("");
    node.start();
    let at: walship::wal::Lsn = node
        .query_one("SELECT pg_current_wal_lsn()")
        .parse()
        .unwrap();
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('damaged', 'record')")
        .unwrap();
    node.kill9();
    let size = walship::wal::SegmentSize::from_mib(1).unwrap(); // as Node::init makes it
    let name = walship::wal::SegmentName::new(walship::wal::TimelineId::FIRST, at.segno(size))
        .file_name(size);
    let path = node.dir.join("wal").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at.segment_offset(size) as usize + 30] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    node.start();
    assert_eq!(
        node.query_one("SELECT count(*) FROM kv WHERE key = 'damaged'"),
        "0"
    );
    let log = node.log();
    assert!(
        log.contains(&format!("invalid record at {at}"))
            && log.contains(&format!("(in {}", path.display())),
        "{log}"
    );
}

#[test]
fn psql_and_pgbench_work_unchanged() {
    let mut node = Node::init("");
    node.start();
    let psql = std::process::Command::new(common::pg_bin("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &node.port.to_string(),
            "-U",
            "tester",
            "-d",
            "anydb",
        ])
        .args([
            "-c",
            "INSERT INTO kv VALUES ('from-psql', 'yes')",
            "-c",
            "SELECT value FROM kv WHERE key = 'from-psql'",
        ])
        .output()
        .unwrap();
    assert!(
        psql.status.success(),
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert!(String::from_utf8_lossy(&psql.stdout).contains("yes"));
    let script = node.root.path().join("upsert.sql");
    std::fs::write(&script, "\\set k random(1, 1000)\nINSERT INTO kv VALUES (:k, 'v') ON CONFLICT (key) DO UPDATE SET value = excluded.value;\nSELECT value FROM kv WHERE key = CAST(:k AS text);\n").unwrap();
    for mode in ["simple", "prepared"] {
        let out = std::process::Command::new(common::pg_bin("pgbench"))
            .args([
                "-n",
                "-h",
                "127.0.0.1",
                "-p",
                &node.port.to_string(),
                "-U",
                "tester",
                "-c",
                "4",
                "-t",
                "50",
                "-M",
                mode,
                "-f",
            ])
            .arg(&script)
            .arg("anydb")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench -M {mode}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 200/200"),
            "{stdout}"
        );
    }
}

#[test]
fn startup_options_set_session_parameters() {
    let mut node = Node::init("");
    node.start();
    let conninfo = format!(
        "{} options='-c synchronous_commit=off -c statement_timeout=5s'",
        node.conninfo()
    );
    let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
    let v: String = c.query_one("SHOW synchronous_commit", &[]).unwrap().get(0);
    assert_eq!(v, "off");
    // SET … TO DEFAULT returns to the session's own start, as RESET does.
    c.batch_execute("SET statement_timeout = 1000; SET synchronous_commit = local")
        .unwrap();
    c.batch_execute("SET statement_timeout TO DEFAULT; SET synchronous_commit TO DEFAULT")
        .unwrap();
    let v: String = c.query_one("SHOW statement_timeout", &[]).unwrap().get(0);
    assert_eq!(v, "5s");
    let v: String = c.query_one("SHOW synchronous_commit", &[]).unwrap().get(0);
    assert_eq!(v, "off");
    let bad = format!("{} options='-c synchronous_commit=never'", node.conninfo());
    let e = postgres::Client::connect(&bad, postgres::NoTls)
        .err()
        .unwrap();
    assert_eq!(code(&e), "22023");
    // walship converts no text: another client encoding is refused, not
    // taken for UTF-8.
    let latin1 = format!("{} options='-c client_encoding=LATIN1'", node.conninfo());
    let e = postgres::Client::connect(&latin1, postgres::NoTls)
        .err()
        .unwrap();
    assert_eq!(code(&e), "0A000");
    let mut c = node.client();
    assert_eq!(
        code(
            &c.batch_execute("SET client_encoding = 'WIN1252'")
                .unwrap_err()
        ),
        "0A000"
    );
    c.batch_execute("SET client_encoding = 'utf-8'").unwrap();
    let v: String = c.query_one("SHOW client_encoding", &[]).unwrap().get(0);
    assert_eq!(v, "UTF8");
}

#[test]
fn pg_switch_wal_returns_the_end_of_its_switch_record_as_postgresql_does() {
    use walship::wal::Lsn;
    let mut node = Node::init("");
    node.start();
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('k', 'v')")
        .unwrap();
    let lsn = |sql: &str| node.query_one(sql).parse::<Lsn>().unwrap();
    let before = lsn("SELECT pg_current_wal_lsn()");
    let end = lsn("SELECT pg_switch_wal()");
    let next = lsn("SELECT pg_current_wal_lsn()");
    // The switch record is a bare 24-byte header at the insert position;
    // the next record begins the next segment.
    assert_eq!(end.0, before.0 + 24, "{before} {end} {next}");
    assert!(next > end);
    assert_eq!(next.0 % (1 << 20), 0, "{next} begins a segment");
    // A segment with no WAL yet is not switched: the position comes back.
    assert_eq!(lsn("SELECT pg_switch_wal()"), next);
}

#[test]
fn show_all_lists_every_setting_as_postgresql_does() {
    let mut node = Node::init("checkpoint_timeout = 7min");
    node.start();
    let rows: Vec<(String, String)> = node
        .client()
        .query("SHOW ALL", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>("name"), r.get::<_, String>("setting")))
        .collect();
    let setting = |name: &str| {
        rows.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    // Each as SHOW of it alone gives it.
    let alone = node.query_one("SHOW checkpoint_timeout");
    assert_eq!(setting("checkpoint_timeout"), Some(alone.as_str()));
    assert_ne!(alone, "5m", "the file's value, not the default");
    assert_eq!(setting("synchronous_commit"), Some("on"));
    assert!(setting("application_name").is_some());
    assert_eq!(setting("server_version_num"), Some("150000"));
    // Every name listed is one SHOW knows, with the same value.
    let mut c = node.client();
    for (name, value) in rows.iter().filter(|(n, _)| n != "application_name") {
        let alone: String = c.query_one(&format!("SHOW {name}"), &[]).unwrap().get(0);
        assert_eq!(&alone, value, "{name}");
    }
    let mut names: Vec<&String> = rows.iter().map(|(n, _)| n).collect();
    let listed = names.clone();
    names.sort();
    names.dedup();
    assert_eq!(names, listed, "sorted by name, each once");
    // current_setting as PostgreSQL's: missing_ok gives NULL for a name
    // it does not know, and only then.
    let row = c
        .query_one(
            "SELECT current_setting('checkpoint_timeout', true), current_setting('no_such', true)",
            &[],
        )
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some(alone.as_str())
    );
    assert_eq!(row.get::<_, Option<String>>(1), None);
    // Booleans as PostgreSQL reads them; NULL in, NULL out.
    let row = c
        .query_one(
            "SELECT current_setting('no_such', 't'), current_setting('no_such', ' Y '), current_setting('checkpoint_timeout', NULL)",
            &[],
        )
        .unwrap();
    for i in 0..3 {
        assert_eq!(row.get::<_, Option<String>>(i), None, "column {i}");
    }
    // missing_ok is described as a boolean, so a driver binds one.
    let row = c
        .query_one("SELECT current_setting($1, $2)", &[&"no_such", &true])
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    for sql in [
        "SELECT current_setting('no_such')",
        "SELECT current_setting('no_such', false)",
    ] {
        let err = c.query_one(sql, &[]).unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42704"),
            "{sql}: {err:?}"
        );
    }
}

#[test]
fn a_block_never_overwrites_a_write_acknowledged_outside_blocks() {
    let mut node = Node::init("");
    node.start();
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('c', '0')")
        .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let mut undone = Vec::new();
    std::thread::scope(|s| {
        // Blocks: read c FOR UPDATE, write it plus one.
        for _ in 0..4 {
            s.spawn(|| {
                let mut c = node.client();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c.batch_execute("BEGIN").and_then(|()| {
                        let v: String = c
                            .query_one("SELECT value FROM kv WHERE key = 'c' FOR UPDATE", &[])?
                            .get(0);
                        let next = (v.parse::<u64>().unwrap() + 1).to_string();
                        c.execute("UPDATE kv SET value = $1 WHERE key = 'c'", &[&next])?;
                        c.batch_execute("COMMIT")
                    });
                    if r.is_err() {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = c.batch_execute("ROLLBACK");
                    }
                }
            });
        }
        // Outside any block: set c to j million; once acknowledged, no
        // block may bring it below that.
        let mut w = node.client();
        let began = std::time::Instant::now();
        for j in 1.. {
            if began.elapsed() >= std::time::Duration::from_secs(3) {
                break;
            }
            let floor: u64 = j * 1_000_000;
            w.execute(
                "UPDATE kv SET value = $1 WHERE key = 'c'",
                &[&floor.to_string()],
            )
            .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            let v: String = w
                .query_one("SELECT value FROM kv WHERE key = 'c'", &[])
                .unwrap()
                .get(0);
            if v.parse::<u64>().unwrap() < floor {
                undone.push((floor, v));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(undone.is_empty(), "acknowledged values undone: {undone:?}");
    assert_eq!(failures.into_inner(), 0);
}

#[test]
fn a_commit_and_chain_that_fails_leaves_the_session_idle() {
    let mut node = Node::init("");
    node.start();
    let mut a = node.client();
    a.batch_execute("BEGIN; INSERT INTO kv VALUES ('k', 'v')")
        .unwrap();
    node.client()
        .batch_execute("SELECT walship_fence(2)")
        .unwrap();
    let err = a.batch_execute("COMMIT AND CHAIN").unwrap_err();
    assert_eq!(code(&err), "25006", "{err:?}");
    // No new block was chained to the failed one: the session is idle
    // and runs statements again, as PostgreSQL's is.
    a.batch_execute("SELECT 1").unwrap();
}
