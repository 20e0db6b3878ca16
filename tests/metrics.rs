//! The Prometheus metrics endpoint (`metrics_listen_address`): LSNs, role,
//! epoch, timeline, per-standby lag, archive backlog, and the commit and
//! fsync latency histograms, in the text exposition format.

mod common;

use std::io::{Read, Write};

use common::{wait_until, Node};

fn get(port: u16, path: &str) -> String {
    request(port, "GET", path)
}

fn request(port: u16, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample line starting with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

#[test]
fn the_metrics_endpoint_reports_lsns_lag_backlog_and_latencies() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut primary = Node::init(&format!(
        "metrics_listen_address = '127.0.0.1:{port}'\narchive_mode = on"
    ));
    primary.start();
    let mut s1 = Node::basebackup(&primary, "s1", &[]);
    s1.configure("metrics_listen_address = ''");
    s1.start();
    primary.complete_segments(2, "m");
    let lsn = primary.query_one("SELECT pg_current_wal_flush_lsn()");
    s1.query_one(&format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '20s')"));

    // The backlog is measured again once a second: wait for it to see both.
    wait_until("the backlog to count both segments", || {
        value(&get(port, "/metrics"), "walship_archive_backlog_segments ") == 2.0
    });
    let text = get(port, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    assert_eq!(value(&text, "walship_epoch "), 1.0);
    assert_eq!(value(&text, "walship_is_standby "), 0.0);
    assert_eq!(value(&text, "walship_timeline "), 1.0);
    assert!(value(&text, "walship_wal_flush_lsn_bytes ") > 0.0);
    assert!(
        text.contains(
            "walship_standby_replay_lag_bytes{application_name=\"s1\",sync_state=\"async\"}"
        ),
        "{text}"
    );
    assert!(value(&text, "walship_commit_latency_seconds_count ") >= 2.0);
    assert!(value(&text, "walship_wal_fsync_latency_seconds_count ") >= 2.0);
    assert_eq!(
        value(&text, "walship_commit_latency_seconds_bucket{le=\"+Inf\"} "),
        value(&text, "walship_commit_latency_seconds_count ")
    );
    assert!(get(port, "/").starts_with("HTTP/1.1 404"));
    // HEAD: GET's status and headers, no body; other methods: 405.
    let head = request(port, "HEAD", "/metrics");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    assert!(request(port, "POST", "/metrics").starts_with("HTTP/1.1 405"));
}
