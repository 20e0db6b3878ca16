//! The Prometheus metrics endpoint (`metrics_listen_address`, off by
//! default): `GET /metrics` on its own listener answers with the node's
//! LSNs, role, epoch and timeline, each standby's lag, the archive
//! backlog, and the commit and fsync latency histograms.
//!
//! A deliberately tiny HTTP/1.1 responder: one request per connection,
//! answered and closed; `HEAD /metrics` gets GET's headers, another
//! method on `/metrics` 405, any other path 404. A slow or
//! broken scraper costs one connection, bounded by a read timeout.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use tracing::warn;

use super::server::Node;
use crate::durable::io_cause;
use crate::metrics::{self, label, Sample};
use crate::replication::walsender::WalSenderHost;
use crate::sql::exec::Host;
use crate::wal::Lsn;

impl Node {
    /// The node's gauges, for the metrics endpoint.
    fn metric_samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut gauge = |name, help, labels: String, value: f64| {
            out.push(Sample {
                name,
                help,
                labels,
                value,
            })
        };
        let epoch = *self.lock_epoch();
        let standby = self.standby().is_some();
        gauge("walship_up", "1 while the node serves", String::new(), 1.0);
        gauge(
            "walship_is_standby",
            "1 on a standby, 0 on a primary",
            String::new(),
            f64::from(u8::from(standby)),
        );
        gauge(
            "walship_epoch",
            "the epoch this node writes in",
            String::new(),
            epoch.epoch.0 as f64,
        );
        gauge(
            "walship_fenced_by_epoch",
            "the epoch that fenced this node (0: not fenced)",
            String::new(),
            epoch.fenced_by.map_or(0.0, |e| e.0 as f64),
        );
        gauge(
            "walship_timeline",
            "the timeline this node's WAL is on",
            String::new(),
            f64::from(WalSenderHost::timeline(self).get()),
        );
        let wal = self.wal();
        // One reading: the flush gauge and the standbys' lag agree.
        let flushed = wal.flushed_lsn();
        gauge(
            "walship_wal_insert_lsn_bytes",
            "where the next WAL record goes (an LSN, as a byte position)",
            String::new(),
            wal.insert_lsn().0 as f64,
        );
        gauge(
            "walship_wal_flush_lsn_bytes",
            "WAL durable up to here",
            String::new(),
            flushed.0 as f64,
        );
        if standby {
            let at = |l: Option<Lsn>| l.map_or(0.0, |l| l.0 as f64);
            gauge(
                "walship_receive_lsn_bytes",
                "WAL received from the primary up to here",
                String::new(),
                at(self.last_receive_lsn()),
            );
            gauge(
                "walship_replay_lsn_bytes",
                "WAL replayed up to here",
                String::new(),
                at(self.last_replay_lsn()),
            );
        }
        let standbys = self.senders().status(&self.sync_names_in_effect());
        for s in &standbys {
            let who = format!(
                "{},{}",
                label("application_name", &s.peer.application_name),
                label("sync_state", s.sync_state)
            );
            // A standby that has not reported a position yet has no lag to
            // show (pg_stat_replication says NULL): the series is left out,
            // not shown as all the WAL there is.
            let behind = |pos: Lsn| flushed.0.saturating_sub(pos.0) as f64;
            if s.flush != Lsn::INVALID {
                gauge(
                    "walship_standby_flush_lag_bytes",
                    "WAL flushed here but not yet on the standby",
                    who.clone(),
                    behind(s.flush),
                );
            }
            if s.replay != Lsn::INVALID {
                gauge(
                    "walship_standby_replay_lag_bytes",
                    "WAL flushed here but not yet replayed by the standby",
                    who.clone(),
                    behind(s.replay),
                );
            }
            gauge(
                "walship_standby_replay_lag_seconds",
                "how long the standby takes to replay what is sent (PostgreSQL's replay_lag)",
                who,
                s.replay_lag.as_secs_f64(),
            );
        }
        let backlog = self.archive_backlog();
        gauge(
            "walship_archive_backlog_segments",
            "completed segments waiting for the archiver",
            String::new(),
            backlog.segments as f64,
        );
        gauge(
            "walship_archive_backlog_bytes",
            "bytes waiting for the archiver",
            String::new(),
            backlog.bytes as f64,
        );
        gauge(
            "walship_archive_backlog_oldest_seconds",
            "how long the oldest waiting file has waited",
            String::new(),
            backlog.oldest_age.map_or(0.0, |d| d.as_secs_f64()),
        );
        out
    }
}

/// Serves the endpoint on `listener` until the node stops.
pub fn serve(node: &Node, listener: TcpListener) {
    if let Err(e) = listener.set_nonblocking(true) {
        warn!("metrics endpoint disabled: {}", io_cause(&e));
        return;
    }
    while !node.is_shutting_down() {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(node, stream) {
                    warn!("metrics request failed: {}", io_cause(&e));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                node.nap(Duration::from_millis(100));
            }
            Err(e) => {
                warn!("metrics endpoint: accept failed: {}", io_cause(&e));
                node.nap(Duration::from_millis(100));
            }
        }
    }
}

fn answer(node: &Node, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut first = line.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", metrics::render(&node.metric_samples())),
        (_, "/metrics") => (
            "405 Method Not Allowed",
            "only GET and HEAD are served here\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "only /metrics is served here\n".to_string(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    // HEAD: the headers a GET would get, without the body.
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}
