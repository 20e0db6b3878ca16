//! Isolation self-fencing (`isolation_fence_timeout`): a primary that hears
//! from no standby for that long refuses writes, and takes them again as
//! soon as a standby reports — so an asynchronous primary cut off by a
//! partition stops taking writes a promotion elsewhere would lose.

mod common;

use std::time::Duration;

use common::{wait_until, Node};

/// Tries one write; `None` if it was taken, else the SQLSTATE and message.
fn write(node: &Node, key: &str) -> Option<(String, String)> {
    let sql = format!(
        "INSERT INTO kv VALUES ('{key}', 'v') ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    );
    let err = node.client().batch_execute(&sql).err()?;
    let db = err.as_db_error().expect("a server error");
    Some((db.code().code().to_string(), db.message().to_string()))
}

#[test]
fn a_primary_cut_off_from_its_standbys_stops_taking_writes_until_one_reports() {
    // Long enough that a slow start still takes the first write.
    let mut primary = Node::init("isolation_fence_timeout = 4s");
    primary.start();
    // Alone from the start: after the timeout, writes are refused.
    assert_eq!(write(&primary, "early"), None);
    wait_until("the lone primary to refuse writes", || {
        write(&primary, "alone").is_some()
    });
    let (code, msg) = write(&primary, "alone").unwrap();
    assert_eq!(code, "25006");
    assert!(
        msg.contains("isolated") && msg.contains("isolation_fence_timeout"),
        "{msg}"
    );

    // A standby connects: writes resume, and an idle but connected
    // standby keeps them going (keepalives ask it to report in time).
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start();
    wait_until("writes to resume once s1 reports", || {
        write(&primary, "with-s1").is_none()
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(write(&primary, "idle-but-connected"), None);

    // The standby goes silent (a partition): writes stop within the timeout
    // plus a report interval...
    s1.signal(nix::sys::signal::SIGSTOP);
    wait_until("the cut-off primary to refuse writes", || {
        write(&primary, "cut-off").is_some()
    });
    assert_eq!(write(&primary, "cut-off").unwrap().0, "25006");
    // ...and resume when it is heard again.
    s1.signal(nix::sys::signal::SIGCONT);
    wait_until("writes to resume after the partition heals", || {
        write(&primary, "healed").is_none()
    });
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s1.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '30s')"));
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'healed'"),
        "v"
    );
}
