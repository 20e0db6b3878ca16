//! The walsender, as PostgreSQL 15's own pg_receivewal uses it: segments
//! streamed from walship are byte-identical to walship's, slots keep WAL,
//! and bad requests get clear errors.

mod common;

use std::path::Path;
use std::process::Command;

use common::{wait_until, Node};

fn pg_receivewal(node: &Node, dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(common::pg_bin("pg_receivewal"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &node.port.to_string(),
            "-U",
            "tester",
            "--no-loop",
            "--no-password",
            "-D",
        ])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

fn current_lsn(node: &Node) -> String {
    let rows = node
        .client()
        .simple_query("SELECT pg_current_wal_lsn()")
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap()
}

fn create_slot(node: &Node, name: &str) {
    let repl = format!(
        "host=127.0.0.1 port={} user=tester replication=true",
        node.port
    );
    let out = Command::new(common::pg_bin("psql"))
        .args([
            "-X",
            "-d",
            &repl,
            "-c",
            &format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wal_segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

#[test]
fn pg_receivewal_streams_byte_identical_segments() {
    let mut node = Node::init("");
    node.start();
    // A slot from the start, so pg_receivewal begins at the first segment.
    create_slot(&node, "recv");
    let mut c = node.client();
    let value = "v".repeat(500);
    for i in 0..3000 {
        c.execute(
            "INSERT INTO kv VALUES ($1, $2)",
            &[&format!("k{i}"), &value],
        )
        .unwrap();
        if i == 1000 {
            c.batch_execute("SELECT pg_switch_wal()").unwrap();
        }
    }
    let end = current_lsn(&node);
    // pg_receivewal stops once it has received WAL beyond --endpos.
    c.batch_execute("INSERT INTO kv VALUES ('beyond', 'endpos')")
        .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = pg_receivewal(&node, out_dir.path(), &["--slot", "recv", "--endpos", &end]);
    assert!(
        out.status.success(),
        "pg_receivewal failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut compared = 0;
    for entry in std::fs::read_dir(out_dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let segment = name.trim_end_matches(".partial");
        let theirs = std::fs::read(entry.path()).unwrap();
        let ours = std::fs::read(node.dir.join("wal").join(segment)).unwrap();
        assert!(theirs == ours, "{name} differs from walship's {segment}");
        compared += 1;
    }
    assert_eq!(
        compared,
        wal_segments(&node.dir.join("wal")).len(),
        "every segment streamed"
    );
    assert!(compared >= 3, "only {compared} segments streamed");
}

#[test]
fn a_slot_keeps_wal_for_a_receiver_that_is_away() {
    let mut node = Node::init("");
    node.start();
    create_slot(&node, "away");
    let mut c = node.client();
    for i in 0..5 {
        c.execute("INSERT INTO kv VALUES ($1, 'x')", &[&format!("k{i}")])
            .unwrap();
        c.batch_execute("SELECT pg_switch_wal()").unwrap();
    }
    c.batch_execute("CHECKPOINT").unwrap();
    // The slot held every segment since it was created.
    assert_eq!(wal_segments(&node.dir.join("wal")).len(), 6);
    let end = current_lsn(&node);
    c.batch_execute("INSERT INTO kv VALUES ('beyond', 'endpos')")
        .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = pg_receivewal(&node, out_dir.path(), &["--slot", "away", "--endpos", &end]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 6);
    // Dropping the slot lets the next checkpoint remove them.
    let drop = Command::new(common::pg_bin("pg_receivewal"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &node.port.to_string(),
            "-U",
            "tester",
            "--slot",
            "away",
            "--drop-slot",
        ])
        .output()
        .unwrap();
    assert!(
        drop.status.success(),
        "{}",
        String::from_utf8_lossy(&drop.stderr)
    );
    node.client().batch_execute("CHECKPOINT").unwrap();
    assert_eq!(wal_segments(&node.dir.join("wal")).len(), 1);
}

#[test]
fn bad_replication_requests_get_clear_errors() {
    let mut node = Node::init("");
    node.start();
    let repl = format!(
        "host=127.0.0.1 port={} user=tester replication=true",
        node.port
    );
    let run = |sql: &str| -> String {
        let out = Command::new(common::pg_bin("psql"))
            .args(["-X", "-A", "-t", "-d", &repl, "-c", sql])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ident = run("IDENTIFY_SYSTEM");
    assert!(ident.contains("|1|0/"), "{ident}");
    assert!(run("START_REPLICATION 7/0").contains("ahead of the WAL flush position"));
    assert!(run("START_REPLICATION SLOT nosuch 0/0")
        .contains("replication slot \"nosuch\" does not exist"));
    assert!(run("START_REPLICATION 0/1000000 TIMELINE 5")
        .contains("timeline 5 is not in this server's history"));
    let history = run("TIMELINE_HISTORY 7");
    assert!(
        history.contains("no history file for timeline 7") && !history.contains("os error"),
        "{history}"
    );
    assert!(run("UPLOAD_MANIFEST").contains("not supported"));
    assert!(run("SHOW wal_segment_size").contains("1MB"));
    // A walsender streams only to roles allowed to replicate.
    let users = node.dir.join("users");
    let text = std::fs::read_to_string(&users).unwrap() + "plain::\n";
    std::fs::write(&users, text).unwrap();
    node.signal(nix::sys::signal::Signal::SIGHUP);
    // The roles are in force once the edit is logged, after the reload.
    assert!(node.wait_log("edited by hand"), "{}", node.log());
    let out = Command::new(common::pg_bin("psql"))
        .args([
            "-X",
            "-d",
            &format!(
                "host=127.0.0.1 port={} user=plain replication=true",
                node.port
            ),
            "-c",
            "IDENTIFY_SYSTEM",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not start a walsender"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_receiver_that_stops_reading_times_out_and_its_slot_keeps_the_wal() {
    /// The receiver, killed however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut node = Node::init("wal_sender_timeout = 1s");
    node.start();
    create_slot(&node, "r");
    let dir = tempfile::tempdir().unwrap();
    let from = format!("host=127.0.0.1 port={} user=tester", node.port);
    let receiver = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_walship"))
            .args(["receive", "--from", &from, "-D"])
            .arg(dir.path())
            .args(["--slot", "r"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut c = node.client();
    c.batch_execute("INSERT INTO kv VALUES ('first', 'x')")
        .unwrap();
    let sent = |node: &Node| {
        node.client()
            .simple_query("SELECT sent_lsn FROM pg_stat_replication")
            .unwrap()
            .iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
    };
    wait_until("the receiver to catch up", || {
        sent(&node) == Some(current_lsn(&node))
    });
    // It names itself, as pg_receivewal does.
    assert_eq!(
        node.query_one("SELECT application_name FROM pg_stat_replication"),
        "walship receive"
    );
    let held = node.query_one("SELECT restart_lsn FROM pg_replication_slots");
    // The receiver stops reading; the primary keeps writing, past what the
    // socket buffers hold.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(receiver.0.id() as i32),
        nix::sys::signal::SIGSTOP,
    )
    .unwrap();
    let big = "v".repeat(8000);
    for i in 0..600 {
        c.execute("INSERT INTO kv VALUES ($1, $2)", &[&format!("k{i}"), &big])
            .unwrap();
    }
    assert!(node.wait_log("terminating walsender"), "{}", node.log());
    c.batch_execute("CHECKPOINT").unwrap();
    assert_eq!(
        node.query_one("SELECT restart_lsn FROM pg_replication_slots"),
        held
    );
    // Released as the walsender ends, just after it logs why.
    wait_until("the slot to be released", || {
        node.query_one("SELECT active FROM pg_replication_slots") == "f"
    });
    let first = node.dir.join("wal").join("000000010000000000000001");
    assert!(first.exists(), "the slot's WAL was removed");
    drop(receiver);
}

#[test]
fn a_standby_behind_is_in_catchup_and_not_synchronous_until_it_has_caught_up() {
    use std::io::{Read, Write};
    let mut node = Node::init("synchronous_standby_names = 'r1'\nsynchronous_commit = local\n");
    node.start();
    create_slot(&node, "r");
    let start = node.query_one("SELECT restart_lsn FROM pg_replication_slots");
    // More WAL than the socket buffers between them hold.
    let mut c = node.client();
    c.batch_execute("SET synchronous_commit = off").unwrap();
    let big = "v".repeat(8000);
    for i in 0..3000 {
        c.execute("INSERT INTO kv VALUES ($1, $2)", &[&format!("k{i}"), &big])
            .unwrap();
    }
    // A standby that asks for it all and reads none of it yet.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    for kv in [
        "user",
        "tester",
        "replication",
        "true",
        "application_name",
        "r1",
    ] {
        startup.extend_from_slice(kv.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    s.write_all(&packet).unwrap();
    // Up to ReadyForQuery.
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).unwrap();
        assert_ne!(head[0], b'E', "{}", String::from_utf8_lossy(&body));
        if head[0] == b'Z' {
            break;
        }
    }
    let query = format!("START_REPLICATION SLOT r PHYSICAL {start}\0");
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((query.len() + 4) as i32).to_be_bytes());
    q.extend_from_slice(query.as_bytes());
    s.write_all(&q).unwrap();
    let row = |node: &Node| {
        node.client()
            .simple_query("SELECT state, sync_priority, sync_state FROM pg_stat_replication")
            .unwrap()
            .iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..3)
                        .map(|i| r.get(i).unwrap_or_default().to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
    };
    // As PostgreSQL shows it: catching up (after a moment in startup),
    // and not yet a synchronous standby, however it is named in
    // synchronous_standby_names.
    wait_until("the walsender to be catching up", || {
        row(&node).is_some_and(|r| r == ["catchup", "1", "potential"])
    });
    // Once it has read everything, it streams and is synchronous.
    std::thread::spawn(move || {
        let mut buf = vec![0; 1 << 20];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while row(&node).unwrap() != ["streaming", "1", "sync"] {
        assert!(std::time::Instant::now() < deadline, "{:?}", row(&node));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
