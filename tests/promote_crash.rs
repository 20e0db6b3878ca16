//! A promotion killed (SIGKILL) at every one of its steps is finished by
//! running `walship promote` again, or by restarting the node: one epoch
//! claimed, the old primary fenced, every replicated row kept, and a
//! timeline never used before — never a half-promoted node.

mod common;

use std::time::{Duration, Instant};

use common::Node;

/// Every crash point of a promotion, in the order it passes them, with
/// the timeline the finished promotion ends on: a promotion resumed at
/// its switch step abandons the timeline it began (2) for the next (3).
const POINTS: &[(&str, u32)] = &[
    ("promote-fence", 2),
    ("promote-fenced", 2),
    ("promote-claim", 2),
    ("promote-claimed", 2),
    ("promote-switch", 3),
    ("promote-history", 3),
    ("promote-switched", 3),
    ("promote-checkpointed", 2),
    ("promote-finish", 2),
    ("promote-promoted", 2),
];

const ROWS: usize = 20;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn promote(node: &Node) -> std::process::Output {
    common::walship(&["promote", "-D", node.dir.to_str().unwrap(), "--wait"])
}

/// Polls until `node` takes a write.
fn wait_writable(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match node
            .client()
            .batch_execute("INSERT INTO kv VALUES ('after', 'promotion')")
        {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("the node never took a write: {e}\n{}", node.log()),
        }
    }
}

fn crash_and_finish(point: &str, timeline: u32, by_rerun: bool) {
    let adir = tempfile::tempdir().unwrap();
    let conf = format!(
        "archive_mode = on\narchive_directory = '{}'",
        adir.path().display()
    );
    let mut primary = Node::init(&conf);
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.start_env(&[], &[(walship::crashpoint::ENV, point)]);
    let mut c = primary.client();
    for i in 0..ROWS {
        c.execute("INSERT INTO kv VALUES ($1, 'v')", &[&format!("row-{i}")])
            .unwrap();
    }
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s1.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));

    // The promotion dies at `point`; walship promote --wait says so (or,
    // killed after standby.signal went, may already report success).
    let out = promote(&s1);
    assert!(
        s1.wait_log("crash point reached"),
        "{point}: not reached\n{}\n{}",
        text(&out),
        s1.log()
    );
    if point != "promote-promoted" {
        assert_eq!(out.status.code(), Some(1), "{point}: {}", text(&out));
        assert!(
            text(&out).contains("stopped before the promotion finished"),
            "{point}: {}",
            text(&out)
        );
    }
    s1.kill9();

    // Finished by a rerun on the stopped node, or by a plain restart
    // (promote.signal is still there).
    if by_rerun {
        let out = promote(&s1);
        if point == "promote-promoted" {
            assert!(text(&out).contains("not a standby"), "{}", text(&out));
        } else {
            assert!(out.status.success(), "{point}: {}", text(&out));
            assert!(
                text(&out).contains(&format!("epoch 2 on timeline {timeline}")),
                "{point}: {}",
                text(&out)
            );
        }
    }
    s1.start();
    wait_writable(&s1);

    // One epoch, claimed once, by s1; the old primary fenced by it.
    assert_eq!(s1.query_one("SHOW epoch"), "2", "{point}");
    assert_eq!(
        s1.query_one("SHOW timeline"),
        timeline.to_string(),
        "{point}\n{}",
        s1.log()
    );
    let claim = std::fs::read_to_string(adir.path().join("epoch.2")).unwrap();
    assert!(claim.starts_with("s1 "), "{point}: {claim}");
    assert!(!adir.path().join("epoch.3").exists(), "{point}");
    let err = primary
        .client()
        .batch_execute("INSERT INTO kv VALUES ('split', 'brain')")
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("25006"),
        "{point}: {err}"
    );
    // Every replicated row, on a timeline that branches from timeline 1
    // alone; an abandoned timeline keeps only its history file.
    assert_eq!(
        s1.query_one("SELECT count(*) FROM kv WHERE key LIKE 'row-%'"),
        ROWS.to_string(),
        "{point}"
    );
    let history =
        std::fs::read_to_string(s1.dir.join(format!("wal/{timeline:08X}.history"))).unwrap();
    assert_eq!(history.lines().count(), 1, "{point}: {history}");
    assert!(history.starts_with("1\t"), "{point}: {history}");
    for name in common::file_names(&s1.dir.join("wal"), "") {
        if timeline == 3 && name.starts_with("00000002") {
            assert_eq!(name, "00000002.history", "{point}: abandoned WAL left");
        }
    }
    assert!(!s1.dir.join("promote.journal").exists(), "{point}");
    assert!(!s1.dir.join("standby.signal").exists(), "{point}");
    // And it stays the primary across a clean restart.
    s1.stop();
    s1.start();
    assert_eq!(s1.query_one("SELECT pg_is_in_recovery()"), "f", "{point}");
    assert_eq!(
        s1.query_one("SELECT value FROM kv WHERE key = 'after'"),
        "promotion"
    );
}

#[test]
fn a_promotion_killed_at_any_step_is_finished_by_a_rerun_or_a_restart() {
    for (i, (point, timeline)) in POINTS.iter().enumerate() {
        crash_and_finish(point, *timeline, i % 2 == 0);
    }
}
