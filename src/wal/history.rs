//! Timeline history files (`TTTTTTTT.history`) in PostgreSQL's text format.
//!
//! Each line names a parent timeline, the LSN where the child switched away
//! from it, and a free-text reason, separated by tabs; `#` comments and blank
//! lines are ignored (PostgreSQL's `readTimeLineHistory`). The history of
//! timeline N lists every ancestor of N, oldest first.

use std::fmt;

use thiserror::Error;

use super::lsn::{Lsn, TimelineId};

/// One ancestor: WAL of `timeline` is valid up to (not including) `switchpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub timeline: TimelineId,
    pub switchpoint: Lsn,
    pub reason: String,
}

/// The ancestry of one timeline.
///
/// Invariant: timelines and switch points both strictly increase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineHistory {
    entries: Vec<HistoryEntry>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("timeline history line {line}: {why}")]
pub struct HistoryError {
    pub line: usize,
    pub why: String,
}

impl TimelineHistory {
    pub fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }

    /// Timeline `tli`'s history file in WAL directory `dir`, when there is
    /// one that parses (timeline 1 has none).
    pub fn read_in(dir: &std::path::Path, tli: TimelineId) -> Option<TimelineHistory> {
        let text = std::fs::read_to_string(dir.join(super::name::history_file_name(tli))).ok()?;
        TimelineHistory::parse(&text).ok()
    }

    /// Parses a history file's text.
    pub fn parse(text: &str) -> Result<TimelineHistory, HistoryError> {
        let mut history = TimelineHistory::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: String| HistoryError { line: i + 1, why };
            let mut fields = line.splitn(3, '\t');
            let tli = fields.next().unwrap_or_default();
            let lsn = fields.next().ok_or_else(|| {
                err("expected a tab and a switch point LSN after the timeline".into())
            })?;
            let reason = fields.next().unwrap_or_default().trim_end().to_string();
            let timeline: TimelineId = tli.parse().map_err(|e| err(format!("{e}")))?;
            let switchpoint: Lsn = lsn.trim_end().parse().map_err(|e| err(format!("{e}")))?;
            history
                .push(HistoryEntry {
                    timeline,
                    switchpoint,
                    reason,
                })
                .map_err(err)?;
        }
        Ok(history)
    }

    /// Appends the switch away from the newest timeline, keeping the invariant.
    pub fn push(&mut self, entry: HistoryEntry) -> Result<(), String> {
        if let Some(last) = self.entries.last() {
            if entry.timeline <= last.timeline {
                return Err(format!(
                    "timeline {} does not follow timeline {}: timeline IDs must increase",
                    entry.timeline, last.timeline
                ));
            }
            if entry.switchpoint < last.switchpoint {
                return Err(format!(
                    "switch point {} precedes the previous one, {}",
                    entry.switchpoint, last.switchpoint
                ));
            }
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The timeline that wrote the byte at `lsn`, given that the history
    /// belongs to `current`.
    pub fn timeline_of(&self, lsn: Lsn, current: TimelineId) -> TimelineId {
        self.entries
            .iter()
            .find(|e| lsn < e.switchpoint)
            .map_or(current, |e| e.timeline)
    }

    /// Where ancestor `tli` ended (its switch point) and the timeline that
    /// followed it, given that the history belongs to `current`; `None`
    /// if `tli` is not an ancestor.
    pub fn switch_of(&self, tli: TimelineId, current: TimelineId) -> Option<(Lsn, TimelineId)> {
        let i = self.entries.iter().position(|e| e.timeline == tli)?;
        let next = self.entries.get(i + 1).map_or(current, |e| e.timeline);
        Some((self.entries[i].switchpoint, next))
    }
}

impl fmt::Display for TimelineHistory {
    /// The file's text as PostgreSQL's `writeTimeLineHistory` lays it out:
    /// one line per ancestor, separated by blank lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{}\t{}\t{}", e.timeline, e.switchpoint, e.reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG_HISTORY: &str = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000060\tno recovery target specified\n";

    #[test]
    fn round_trips_postgres_text() {
        let h = TimelineHistory::parse(PG_HISTORY).unwrap();
        assert_eq!(h.entries().len(), 2);
        assert_eq!(h.entries()[1].switchpoint, Lsn(0x5000060));
        assert_eq!(h.to_string(), PG_HISTORY);
        let three = TimelineId::new(3).unwrap();
        assert_eq!(h.timeline_of(Lsn(0x3000157), three).get(), 1);
        assert_eq!(h.timeline_of(Lsn(0x3000158), three).get(), 2);
        assert_eq!(h.timeline_of(Lsn(0x6000000), three).get(), 3);
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let h = TimelineHistory::parse("# made by hand\n\n  1\t0/10\tx\n").unwrap();
        assert_eq!(h.entries().len(), 1);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = TimelineHistory::parse("1\t0/10\tx\n1\t0/20\ty\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(TimelineHistory::parse("1 0/10\n").is_err());
        assert!(TimelineHistory::parse("1\t0/zz\n").is_err());
        assert!(TimelineHistory::parse("0\t0/10\n").is_err());
        assert!(TimelineHistory::parse("1\t0/20\n2\t0/10\n").is_err());
    }
}
