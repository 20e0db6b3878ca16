//! kill -9 of a walship server under a concurrent write load from several
//! clients, many times: after each restart every write a client saw
//! acknowledged is there, and no transaction is half there.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, Node};
use rand::{Rng, SeedableRng};

const CLIENTS: usize = 4;

#[derive(Default)]
struct History {
    /// key → value, for every write whose commit was acknowledged.
    acked: HashMap<String, String>,
    /// Pairs written by one transaction (acknowledged or not).
    pairs: Vec<(String, String)>,
}

#[test]
fn acknowledged_writes_survive_kill_9_under_load() {
    // Small checkpoint intervals so crashes also land around checkpoints.
    let mut node = Node::init("checkpoint_timeout = 1s\nmax_wal_size = 1MB");
    let history = Arc::new(Mutex::new(History::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let rounds = 12;
    for round in 0..rounds {
        node.start();
        let before = history.lock().unwrap().acked.len();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..CLIENTS {
            let (conninfo, history, stop) = (node.conninfo(), history.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let Ok(mut c) = postgres::Client::connect(&conninfo, postgres::NoTls) else { return };
                for seq in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let key = format!("r{round}-c{t}-{seq}");
                    if seq % 5 == 4 {
                        let (a, b) = (format!("{key}-a"), format!("{key}-b"));
                        history.lock().unwrap().pairs.push((a.clone(), b.clone()));
                        let sql = format!("BEGIN; INSERT INTO kv VALUES ('{a}', 'pair'); INSERT INTO kv VALUES ('{b}', 'pair'); COMMIT");
                        if c.batch_execute(&sql).is_err() {
                            return;
                        }
                        let mut h = history.lock().unwrap();
                        h.acked.insert(a, "pair".into());
                        h.acked.insert(b, "pair".into());
                    } else {
                        let value = format!("v{seq}");
                        if c.execute("INSERT INTO kv VALUES ($1, $2)", &[&key, &value]).is_err() {
                            return;
                        }
                        history.lock().unwrap().acked.insert(key, value);
                    }
                }
            }));
        }
        // The kill comes at a random moment once writes are being
        // acknowledged, however slowly the node started.
        wait_until("a write acknowledged in this round", || {
            history.lock().unwrap().acked.len() > before
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }

        node.start();
        let mut c = node.client();
        let rows: HashMap<String, String> = c
            .query("SELECT key, value FROM kv", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let h = history.lock().unwrap();
        for (k, v) in &h.acked {
            match rows.get(k) {
                Some(found) => assert_eq!(found, v, "round {round}: {k} has the wrong value"),
                None => panic!(
                    "round {round}: acknowledged write {k} lost after kill -9\n{}",
                    node.log()
                ),
            }
        }
        let present: HashSet<&String> = rows.keys().collect();
        for (a, b) in &h.pairs {
            assert_eq!(
                present.contains(a),
                present.contains(b),
                "round {round}: transaction {a}/{b} is half there"
            );
        }
        drop(h);
        drop(c);
        node.kill9();
    }
    let h = history.lock().unwrap();
    eprintln!(
        "{} acknowledged writes survived {rounds} kill -9s",
        h.acked.len()
    );
    assert!(
        h.acked.len() > rounds * 4,
        "too few acknowledged writes ({}) to mean anything",
        h.acked.len()
    );
}

/// Damage in the middle of the WAL (not a torn last write): recovery ends
/// before it, as PostgreSQL's does, but what lay past it is kept and the
/// log says where and what it may hold.
#[test]
fn wal_cut_off_by_damage_is_kept_not_silently_zeroed() {
    let mut node = Node::init("");
    node.start();
    let mut c = node.client();
    c.batch_execute("CHECKPOINT").unwrap();
    for i in 0..10 {
        c.batch_execute(&format!("INSERT INTO kv VALUES ('k{i}', 'v')"))
            .unwrap();
    }
    let at = node.query_one("SELECT pg_current_wal_lsn()");
    for i in 10..40 {
        c.batch_execute(&format!("INSERT INTO kv VALUES ('k{i}', 'v')"))
            .unwrap();
    }
    node.kill9();
    // A byte of the 11th commit's body (past its 24-byte header).
    let (hi, lo) = at.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let seg = 1u64 << 20;
    let name = format!(
        "00000001{:08X}{:08X}",
        (lsn / seg) >> 32,
        (lsn / seg) & 0xffff_ffff
    );
    let path = node.dir.join("wal").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(lsn % seg) as usize + 30] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    node.start();
    assert_eq!(node.query_one("SELECT count(*) FROM kv"), "10");
    assert!(node.wait_log("held data: it is kept in"), "{}", node.log());
    let kept = node
        .dir
        .join("wal/discarded")
        .join(format!("{hi}-{:0>8}", lo));
    let copy = kept.join(&name);
    assert_eq!(std::fs::read(&copy).unwrap(), bytes, "{}", node.log());
    // The kept segment is WAL walship's tools read: the damage is named.
    let out = common::walship(&["dump", "--verify", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains(&format!("invalid record at {at}")),
        "{}",
        common::stderr(&out)
    );
    // The same block goes bad again: a second copy beside the first.
    let mut c = node.client();
    for i in 10..20 {
        c.batch_execute(&format!("INSERT INTO kv VALUES ('k{i}', 'again')"))
            .unwrap();
    }
    node.kill9();
    let mut again = std::fs::read(&path).unwrap();
    again[(lsn % seg) as usize + 30] ^= 0xff;
    std::fs::write(&path, &again).unwrap();
    node.start();
    assert_eq!(node.query_one("SELECT count(*) FROM kv"), "10");
    assert_eq!(std::fs::read(&copy).unwrap(), bytes);
    let second = kept.with_extension("2").join(&name);
    assert_eq!(std::fs::read(&second).unwrap(), again, "{}", node.log());
}

/// The newest segment is lost while a record runs on into it: a crash
/// never leaves that, so recovery says at error level what is missing.
#[test]
fn a_missing_segment_a_record_runs_into_is_an_error() {
    let mut node = Node::init("");
    node.start();
    let mut c = node.client();
    c.batch_execute("CHECKPOINT").unwrap();
    let current = common::write_until_a_record_crosses_segments(&node, 1);
    node.kill9();
    std::fs::remove_file(node.dir.join("wal").join(&current)).unwrap();
    node.start();
    assert!(node.wait_log("which is missing"), "{}", node.log());
    assert!(node.log().contains(&current), "{}", node.log());
}

#[test]
fn a_missing_segment_holding_the_checkpoint_stops_the_start() {
    let mut node = Node::init("");
    node.start();
    let mut c = node.client();
    c.batch_execute("CHECKPOINT").unwrap();
    let lsn = node.query_one("SELECT pg_current_wal_lsn()");
    for i in 0..50 {
        c.execute("INSERT INTO kv VALUES ($1, 'v')", &[&format!("k{i}")])
            .unwrap();
    }
    node.kill9();
    let segment = common::segment_of(&lsn);
    std::fs::remove_file(node.dir.join("wal").join(&segment)).unwrap();
    // Before, it started with none of the 50 rows and said nothing.
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["server", "-D", node.dir.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            server.kill().unwrap();
            panic!("the server started without the checkpoint's segment");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{segment} is missing")) && stderr.contains("the last checkpoint"),
        "{stderr}"
    );
}

#[test]
fn a_checkpoint_removes_the_snapshot_a_killed_checkpoint_left_half_written() {
    let mut node = Node::init("");
    node.start();
    let left = node
        .dir
        .join("checkpoints")
        .join(".snapshot.0-200000.tmp.4242");
    std::fs::write(&left, b"half a snapshot").unwrap();
    node.client().batch_execute("CHECKPOINT").unwrap();
    assert!(!left.exists());
}
