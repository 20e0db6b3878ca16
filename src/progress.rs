//! Progress of a long operation, shown the way operators expect: on a
//! terminal, one line on standard error rewritten in place (at most five
//! times a second); elsewhere — a log file, the journal — a plain line
//! every ten seconds, so a short run says nothing and a long one is never
//! silent. A server logs its progress through `tracing` instead.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a terminal line is redrawn.
const TERMINAL_EVERY: Duration = Duration::from_millis(200);
/// How often a plain line is written.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// What the operation counts towards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Total {
    /// So many bytes.
    Bytes(u64),
    /// So many files.
    Files(u64),
    /// Unknown: files and bytes are counted as they come.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Terminal,
    Lines,
    Log,
    Off,
}

/// A progress reporter. Invariant: `files` and `bytes` only grow.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: Total,
    files: u64,
    bytes: u64,
    output: Output,
    began: Instant,
    last: Instant,
    drawn: bool,
}

impl Progress {
    /// For a command: a line redrawn on a terminal, plain lines elsewhere;
    /// nothing at all unless `enabled`.
    pub fn for_command(label: &str, total: Total, enabled: bool) -> Progress {
        let output = match (enabled, std::io::stderr().is_terminal()) {
            (false, _) => Output::Off,
            (true, true) => Output::Terminal,
            (true, false) => Output::Lines,
        };
        Progress::new(label, total, output)
    }

    /// For a server: `tracing` log lines every ten seconds.
    pub fn for_log(label: &str, total: Total) -> Progress {
        Progress::new(label, total, Output::Log)
    }

    fn new(label: &str, total: Total, output: Output) -> Progress {
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            total,
            files: 0,
            bytes: 0,
            output,
            began: now,
            last: now,
            drawn: false,
        }
    }

    /// Sets what the operation counts towards, once it is known.
    pub fn set_total(&mut self, total: Total) {
        self.total = total;
    }

    /// Counts `files` more files and `bytes` more bytes done, and shows
    /// the progress if it is time to.
    pub fn advance(&mut self, files: u64, bytes: u64) {
        self.files += files;
        self.bytes += bytes;
        let every = match self.output {
            Output::Terminal => TERMINAL_EVERY,
            Output::Lines | Output::Log => LINE_EVERY,
            Output::Off => return,
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.show();
        }
    }

    /// Ends the report: a terminal line is completed (drawn once more, then
    /// a newline); plain lines say nothing more (the caller's summary does).
    pub fn finish(&mut self) {
        if self.output == Output::Terminal && (self.drawn || self.files + self.bytes > 0) {
            self.show();
            eprintln!();
        }
    }

    fn show(&mut self) {
        let line = self.line();
        match self.output {
            Output::Terminal => {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}\x1b[K");
                let _ = err.flush();
                self.drawn = true;
            }
            Output::Lines => eprintln!("{line}"),
            Output::Log => tracing::info!("{line}"),
            Output::Off => {}
        }
    }

    /// `LABEL: 512 of 2048 MiB (25%), 110 MiB/s` and the like.
    pub fn line(&self) -> String {
        const MIB: f64 = 1024.0 * 1024.0;
        let mib = self.bytes as f64 / MIB;
        let secs = self.began.elapsed().as_secs_f64().max(0.001);
        let rate = format!("{:.0} MiB/s", mib / secs);
        let pct = |done: u64, of: u64| (done * 100).checked_div(of).map_or(100, |p| p.min(100));
        match self.total {
            Total::Bytes(of) => format!(
                "{}: {mib:.0} of {:.0} MiB ({}%), {rate}",
                self.label,
                of as f64 / MIB,
                pct(self.bytes, of)
            ),
            Total::Files(of) => format!(
                "{}: {} of {of} files ({}%), {mib:.0} MiB, {rate}",
                self.label,
                self.files,
                pct(self.files, of)
            ),
            Total::Unknown => format!("{}: {} files, {mib:.0} MiB, {rate}", self.label, self.files),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_how_far_against_what() {
        let mut p = Progress::new("walship basebackup", Total::Bytes(4 << 20), Output::Off);
        p.advance(0, 1 << 20);
        assert!(
            p.line()
                .starts_with("walship basebackup: 1 of 4 MiB (25%), "),
            "{}",
            p.line()
        );
        let mut p = Progress::new("walship archive", Total::Files(8), Output::Off);
        p.advance(2, 32 << 20);
        assert!(
            p.line()
                .starts_with("walship archive: 2 of 8 files (25%), 32 MiB, "),
            "{}",
            p.line()
        );
        let mut p = Progress::new("restoring", Total::Unknown, Output::Off);
        p.advance(3, 48 << 20);
        assert!(
            p.line().starts_with("restoring: 3 files, 48 MiB, "),
            "{}",
            p.line()
        );
        // An empty total is complete, not a division by zero.
        let p = Progress::new("x", Total::Files(0), Output::Off);
        assert!(p.line().contains("(100%)"), "{}", p.line());
    }
}
