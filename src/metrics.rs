//! Prometheus metrics: the latency histograms the write path records, and
//! the text exposition format (version 0.0.4) the node's metrics endpoint
//! serves. Small enough to need no client library: a histogram is a fixed
//! set of atomic counters.
//!
//! Invariant: recording never blocks or fails (relaxed atomic adds), so
//! instrumenting the commit and fsync paths costs nothing that matters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: 50 µs to 10 s.
const BOUNDS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0,
];

/// A latency histogram with [`BOUNDS`] buckets.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len()],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Appends the histogram in the exposition format (cumulative buckets).
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Time from a write's start to its acknowledgement, synchronous
/// replication waits included.
pub static COMMIT_LATENCY: Histogram = Histogram::new();
/// Time of each WAL fdatasync.
pub static FSYNC_LATENCY: Histogram = Histogram::new();

/// One gauge sample: a name, its labels (already escaped) and a value.
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: String,
    pub value: f64,
}

/// Renders `samples` (grouped by name, in the order given) and the two
/// histograms.
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::new();
    let mut last = "";
    for s in samples {
        if s.name != last {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", s.name, s.help, s.name);
            last = s.name;
        }
        let labels = if s.labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", s.labels)
        };
        let _ = writeln!(out, "{}{labels} {}", s.name, s.value);
    }
    COMMIT_LATENCY.render(
        &mut out,
        "walship_commit_latency_seconds",
        "time from a write's start to its acknowledgement, synchronous replication included",
    );
    FSYNC_LATENCY.render(
        &mut out,
        "walship_wal_fsync_latency_seconds",
        "time of each WAL fdatasync",
    );
    out
}

/// A label value escaped as the exposition format asks.
pub fn label(name: &str, value: &str) -> String {
    let v = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{name}=\"{v}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_gauges_grouped() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        let text = render(&[
            Sample {
                name: "a",
                help: "h",
                labels: label("n", "s\"1"),
                value: 1.0,
            },
            Sample {
                name: "a",
                help: "h",
                labels: label("n", "s2"),
                value: 2.0,
            },
        ]);
        assert_eq!(text.matches("# TYPE a gauge").count(), 1, "{text}");
        assert!(text.contains("a{n=\"s\\\"1\"} 1\n"), "{text}");
    }
}
