//! Failover under load, many times, with random fault timings, each run
//! judged by a history checker.
//!
//! A primary with two standbys (each streaming through a proxy the test
//! can cut) takes writes from three clients; at a random moment the primary
//! crashes (SIGKILL), or is first partitioned from its standbys and then
//! crashed (power-off fencing). The most advanced standby is promoted, the
//! other follows it, and the old primary comes back. The checker then
//! reads the old primary's WAL with `walship dump` and the new primary's
//! table and holds them to the promises: every commit before the switch
//! point is on the new primary and none after it; with synchronous
//! replication no acknowledged write is lost; asynchronously, the lost ones
//! are exactly the old primary's commits past the switch point, counted;
//! the old primary, back, takes no write (it is fenced by the epoch in the
//! archive); epochs never repeat; the other standby converges.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Node, Proxy};
use rand::Rng;

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// One COMMIT record of the old primary: where it starts and ends, and the
/// keys it wrote.
struct Commit {
    lsn: u64,
    end: u64,
    keys: Vec<String>,
}

/// The commits in a node's WAL, read with `walship dump`.
fn commits_in(node: &Node) -> Vec<Commit> {
    let out = common::walship(&["dump", node.dir.join("wal").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut commits = Vec::new();
    for line in text.lines().filter(|l| l.contains("desc: COMMIT")) {
        let field = |name: &str| {
            let rest = &line[line.find(name).expect(name) + name.len()..];
            rest[..rest.find(',').unwrap_or(rest.len())]
                .trim()
                .to_string()
        };
        let lsn = parse_lsn(&field("lsn: "));
        let total: u64 = field("len (rec/tot):")
            .rsplit('/')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let keys = line
            .split("put '")
            .skip(1)
            .map(|p| p[..p.find('\'').unwrap()].to_string())
            .collect();
        commits.push(Commit {
            lsn,
            end: lsn + total,
            keys,
        });
    }
    commits
}

/// Clients writing unique keys until stopped; each returns what was
/// acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(primary: &Node, run: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..3)
            .map(|c| {
                let (conninfo, stop) = (primary.conninfo(), stop.clone());
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let Ok(mut client) = postgres::Client::connect(&conninfo, postgres::NoTls)
                    else {
                        return acked;
                    };
                    for i in 0.. {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let key = format!("w{run}-c{c}-{i:06}");
                        match client.execute("INSERT INTO kv VALUES ($1, 'v')", &[&key]) {
                            Ok(_) => acked.push(key),
                            Err(_) => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        Load { stop, clients }
    }

    fn stop(self) -> HashSet<String> {
        self.stop.store(true, Ordering::Release);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client panicked"))
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Crash,
    PartitionThenPowerOff,
}

/// One failover, checked. Returns how many acknowledged writes were lost.
fn run_once(run: usize, synchronous: bool, fault: Fault, delay: Duration) -> usize {
    let adir = tempfile::tempdir().unwrap();
    let mut conf = format!("archive_directory = '{}'", adir.path().display());
    if synchronous {
        conf.push_str("\nsynchronous_standby_names = 'ANY 1 (s1, s2)'");
    }
    let mut primary = Node::init(&conf);
    primary.start();
    let mut standbys = Vec::new();
    for name in ["s1", "s2"] {
        let mut s = Node::basebackup(&primary, name, &[]);
        let proxy = Proxy::start(primary.port);
        s.configure(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=tester application_name={name}'",
            proxy.port
        ));
        s.start();
        standbys.push((s, proxy));
    }
    primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('warm', 'up')")
        .unwrap();
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    for (s, _) in &standbys {
        s.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    }

    let load = Load::start(&primary, run);
    std::thread::sleep(delay);
    let old_pid = primary.pid();
    if let Fault::PartitionThenPowerOff = fault {
        for (_, proxy) in &standbys {
            proxy.cut();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    primary.kill9();
    let acked = load.stop();
    assert!(!acked.is_empty(), "run {run}: no write was acknowledged");

    // Promote the most advanced standby (the other follows it), once what
    // the dead primary's sockets and the proxies still held has arrived.
    let receive_lsns = || -> Vec<u64> {
        standbys
            .iter()
            .map(|(s, _)| parse_lsn(&s.query_one("SELECT pg_last_wal_receive_lsn()")))
            .collect()
    };
    let mut received = receive_lsns();
    wait_until("the standbys' receive positions to settle", || {
        std::thread::sleep(Duration::from_millis(200));
        let before = std::mem::replace(&mut received, receive_lsns());
        before == received
    });
    let winner = usize::from(received[1] > received[0]);
    let (new_primary, _) = &standbys[winner];
    let (other, _) = &standbys[1 - winner];
    let out = common::walship(&[
        "promote",
        "-D",
        new_primary.dir.to_str().unwrap(),
        "--fence-command",
        &format!("! kill -0 {old_pid} 2>/dev/null"),
        "--wait",
    ]);
    assert!(out.status.success(), "run {run}: {}", common::stderr(&out));
    let history = std::fs::read_to_string(new_primary.dir.join("wal/00000002.history")).unwrap();
    let switch = parse_lsn(history.split('\t').nth(1).expect("a switch point"));

    // The history checker.
    let commits = commits_in(&primary);
    let written: HashSet<&String> = commits.iter().flat_map(|c| &c.keys).collect();
    for key in &acked {
        assert!(
            written.contains(key),
            "run {run}: acknowledged {key} is not in the old primary's WAL"
        );
    }
    let on_new: HashSet<String> = new_primary
        .client()
        .query(
            "SELECT key FROM kv WHERE key LIKE $1",
            &[&format!("w{run}-%")],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in &commits {
        assert!(
            c.end <= switch || c.lsn >= switch,
            "run {run}: a commit straddles the switch point"
        );
        for key in c.keys.iter().filter(|k| k.starts_with(&format!("w{run}-"))) {
            let kept = on_new.contains(key);
            if c.end <= switch {
                assert!(
                    kept,
                    "run {run}: {key}, committed before the switch point, is lost"
                );
            } else {
                assert!(
                    !kept,
                    "run {run}: {key}, committed after the switch point, came back"
                );
            }
        }
    }
    let lost = acked.iter().filter(|k| !on_new.contains(*k)).count();
    if synchronous {
        assert_eq!(
            lost, 0,
            "run {run}: synchronous replication lost acknowledged writes"
        );
    }

    // The other standby follows the new primary and converges.
    let out = common::walship(&[
        "follow",
        "-D",
        other.dir.to_str().unwrap(),
        "--from",
        &format!("host=127.0.0.1 port={} user=tester", new_primary.port),
    ]);
    assert!(out.status.success(), "run {run}: {}", common::stderr(&out));
    new_primary
        .client()
        .batch_execute(&format!(
            "INSERT INTO kv VALUES ('w{run}-after', 'failover')"
        ))
        .unwrap();
    let lsn = new_primary.query_one("SELECT pg_current_wal_flush_lsn()");
    other.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));
    assert_eq!(
        other.query_one("SELECT walship_store_checksum()"),
        new_primary.query_one("SELECT walship_store_checksum()"),
        "run {run}: the other standby diverged from the new primary"
    );

    // The old primary comes back: fenced before its first write, it adds
    // nothing to its WAL. Two primaries never share an epoch.
    primary.start();
    let refused = primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('split', 'brain')")
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("25006"),
        "run {run}: {refused}"
    );
    assert_eq!(primary.query_one("SHOW fenced_by"), "2");
    assert_eq!(primary.query_one("SHOW epoch"), "1");
    assert_eq!(new_primary.query_one("SHOW epoch"), "2");
    primary.kill9();
    assert_eq!(
        commits_in(&primary).len(),
        commits.len(),
        "run {run}: the fenced primary wrote"
    );
    lost
}

#[test]
fn failovers_with_random_faults_keep_every_promise() {
    let mut rng = rand::thread_rng();
    let mut report = Vec::new();
    for run in 0..6 {
        let synchronous = run % 2 == 0;
        let fault = if run % 3 == 2 {
            Fault::PartitionThenPowerOff
        } else {
            Fault::Crash
        };
        let delay = Duration::from_millis(rng.gen_range(300..1200));
        let lost = run_once(run, synchronous, fault, delay);
        report.push(format!(
            "run {run}: {} {fault:?} after {delay:?}: {lost} acknowledged write(s) lost",
            if synchronous { "sync" } else { "async" }
        ));
    }
    println!("{}", report.join("\n"));
}
