//! kill -9 of a walship server under a concurrent write load from several
//! clients, many times: after each restart every write a client saw
//! acknowledged is there, and no transaction is half there.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Node;
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
        h.acked.len() > rounds * 20,
        "too few acknowledged writes ({}) to mean anything",
        h.acked.len()
    );
}
