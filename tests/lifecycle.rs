//! Running a node: SIGHUP reloads, JSON logs, CHECKPOINT and WAL retention
//! with and without archiving, cancel requests; commands whose standard
//! output is closed early; values on the command line that do not parse.

mod common;

use std::path::Path;

use common::Node;
use nix::sys::signal::Signal;

fn names(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn segments(dir: &Path) -> Vec<String> {
    names(&dir.join("wal"), "")
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect()
}

#[test]
fn sighup_reloads_what_can_change_live() {
    let mut node = Node::init("");
    node.start();
    let v: String = node
        .client()
        .query_one("SHOW synchronous_commit", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "on");
    node.configure("synchronous_commit = off");
    node.configure("port = 1");
    node.reload();
    assert!(
        node.log().contains("setting=\"port\"") || node.log().contains("setting=port"),
        "{}",
        node.log()
    );
    let v: String = node
        .client()
        .query_one("SHOW synchronous_commit", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "off");
    // A broken file keeps the old settings.
    node.configure("synchronous_commit = maybe");
    node.signal(Signal::SIGHUP);
    assert!(
        node.wait_log("old settings stay in force"),
        "{}",
        node.log()
    );
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('still', 'serving')")
        .unwrap();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut node = Node::init("");
    node.start_with(&["--log-format", "json"]);
    node.client().batch_execute("SELECT 1").unwrap();
    assert!(node.stop().success());
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("recovery complete"))
        .expect("a recovery line");
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    assert!(log.lines().all(|l| l.starts_with('{')), "{log}");
}

#[test]
fn checkpoints_remove_old_wal_unless_it_awaits_archiving() {
    for archive_mode in [false, true] {
        let mut node = Node::init(if archive_mode {
            "archive_mode = on"
        } else {
            ""
        });
        node.start();
        let mut c = node.client();
        for i in 0..4 {
            c.execute("INSERT INTO kv VALUES ($1, 'x')", &[&format!("k{i}")])
                .unwrap();
            c.batch_execute("SELECT pg_switch_wal()").unwrap();
        }
        c.batch_execute("INSERT INTO kv VALUES ('last', 'x')")
            .unwrap();
        let before = segments(&node.dir);
        assert!(before.len() >= 5, "{before:?}");
        let ready = names(&node.dir.join("wal/archive_status"), ".ready");
        if archive_mode {
            assert_eq!(
                ready.len(),
                4,
                "each completed segment is marked .ready: {ready:?}"
            );
        } else {
            assert!(ready.is_empty());
        }
        c.batch_execute("CHECKPOINT").unwrap();
        let after = segments(&node.dir);
        if archive_mode {
            assert_eq!(after, before, "segments awaiting archiving must stay");
        } else {
            assert_eq!(after.len(), 1, "old segments should be gone: {after:?}");
        }
        // Everything is still there after a crash and recovery from the new checkpoint.
        drop(c);
        node.kill9();
        node.start();
        let n: i64 = node
            .client()
            .query_one("SELECT count(*) FROM kv", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 5);
    }
}

#[test]
fn cancel_requests_are_accepted() {
    let mut node = Node::init("");
    node.start();
    let mut c = node.client();
    c.cancel_token().cancel_query(postgres::NoTls).unwrap();
    assert!(node.wait_log("cancel request received"), "{}", node.log());
    c.batch_execute("INSERT INTO kv VALUES ('after-cancel', 'ok')")
        .unwrap();
}

#[test]
fn a_command_whose_output_is_closed_early_exits_quietly() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let wal = dir.join("wal");
    for args in [
        vec!["init", "-D", dir.to_str().unwrap(), "-U", "tester"],
        vec!["dump", wal.to_str().unwrap()],
    ] {
        // A pipe whose reading end is already closed: every write fails.
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
            .args(&args)
            .stdout(std::process::Stdio::from(write))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn a_server_whose_log_pipe_closes_goes_on_and_stops_cleanly() {
    let node = Node::init("");
    let (read, write) = nix::unistd::pipe().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args([
            "server",
            "-D",
            node.dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(write))
        .spawn()
        .unwrap();
    // Read the log until it says where it listens, then stop reading.
    let mut log = std::io::BufReader::new(std::fs::File::from(read));
    let port = loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut log, &mut line).unwrap() > 0,
            "no log"
        );
        if let Some(p) = line.split("127.0.0.1:").nth(1) {
            break p
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u16>()
                .unwrap();
        }
    };
    drop(log);
    let info = format!("host=127.0.0.1 port={port} user=tester dbname=x");
    let mut c = postgres::Client::connect(&info, postgres::NoTls).unwrap();
    c.batch_execute("INSERT INTO kv VALUES ('logged', 'to nobody')")
        .unwrap();
    drop(c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not stop on SIGTERM with its log pipe closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn values_that_do_not_parse_are_usage_errors_and_never_echo_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["init", "-D", data, "--wal-segsize", "3"],
            "expected a power of two from 1 to 1024",
        ),
        (
            &["server", "-D", data, "--listen", "localhost"],
            "expected HOST:PORT",
        ),
        (
            &["status", "--from", "hots=127.0.0.1"],
            "unknown keyword \"hots\"",
        ),
        (
            &[
                "basebackup",
                "--from",
                "postgresql://u:s3cret@h:99999/",
                "-D",
                data,
            ],
            "\"99999\" is not a port number",
        ),
    ];
    for (args, why) in cases {
        let out = common::walship(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(
            !err.contains("s3cret"),
            "{args:?} echoed the password: {err}"
        );
    }
    assert!(
        !Path::new(data).exists(),
        "a refused command created {data}"
    );
}

#[test]
fn an_archive_directory_that_is_no_archive_is_warned_about() {
    let missing = tempfile::tempdir().unwrap();
    let adir = missing.path().join("not-yet");
    let mut node = Node::init(&format!("archive_directory = '{}'", adir.display()));
    node.start();
    assert!(
        node.wait_log("archive_directory is not an archive (yet)"),
        "{}",
        node.log()
    );
}
