//! A primary's side of archiving: watching the backlog of WAL the
//! archiver has not taken yet, and bounding it as the operator chose
//! (`archive_backlog_limit`, `archive_backlog_policy`), so a failing
//! archiver never fills the disk by surprise.
//!
//! Invariant: while writes are refused for the backlog, every commit gets
//! SQLSTATE 53100 saying why; once a segment is abandoned, the alarm
//! repeats (every minute, across restarts: `DIR/archive_gap` remembers
//! the gap) until a base backup is taken from the node.
//!
//! The backlog is measured once a second, so it can pass
//! `archive_backlog_limit` by up to a second's worth of WAL.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::config::{BacklogPolicy, Settings};
use crate::archive::archiver::{backlog, ready_segments, Backlog};
use crate::sqlstate::{code, PgError};
use crate::wal::writer::mark_done;
use crate::wal::SegmentSize;

const ALARM_EVERY: Duration = Duration::from_secs(60);

/// The file in the data directory that names the first and the last
/// segment given up (a line each), while the archive has that gap.
pub const GAP_FILE: &str = "archive_gap";

/// Segments given up: the archive cannot restore across them.
struct Gap {
    first: String,
    last: String,
    /// When the alarm last sounded.
    said: Instant,
}

impl Gap {
    fn record(&self, data_dir: &Path) -> Result<(), crate::durable::FileError> {
        let text = format!("{}\n{}\n", self.first, self.last);
        crate::durable::replace_file(&data_dir.join(GAP_FILE), text.as_bytes())
    }
}

#[derive(Default)]
struct State {
    backlog: Backlog,
    /// The refusal in force, if writes are refused.
    refusal: Option<String>,
    gap: Option<Gap>,
}

/// See the module documentation.
#[derive(Default)]
pub struct ArchiveWatch {
    state: Mutex<State>,
}

impl ArchiveWatch {
    /// The watch of the node in `data_dir`, with the gap it remembers
    /// (a standby's is kept, not sounded: its primary archives).
    pub fn load(data_dir: &Path, standby: bool) -> ArchiveWatch {
        let text = std::fs::read_to_string(data_dir.join(GAP_FILE)).unwrap_or_default();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let gap = lines.next().map(|first| Gap {
            first: first.to_string(),
            last: lines.next().unwrap_or(first).to_string(),
            said: Instant::now(),
        });
        if let Some(g) = gap.as_ref().filter(|_| !standby) {
            error!("ARCHIVE CONTINUITY LOST since {}: the archive cannot restore past it; take a new base backup", g.first);
        }
        ArchiveWatch {
            state: Mutex::new(State {
                gap,
                ..State::default()
            }),
        }
    }

    /// A base backup starting in segment `start` was taken: the archive
    /// restores from it, past a gap that ended before it (a segment given
    /// up since it began lies in the backup's own WAL, and the gap stays).
    pub fn base_backup_taken(&self, data_dir: &Path, start: &str) {
        let mut state = self.lock();
        if state.gap.as_ref().is_some_and(|g| g.last.as_str() >= start) {
            return;
        }
        if let Some(g) = state.gap.take() {
            match crate::durable::remove_file(&data_dir.join(GAP_FILE)) {
                Ok(()) => info!("a base backup was taken after the archive gap since {}: the archive restores from it again", g.first),
                Err(e) => warn!("could not forget the archive gap since {}: {e}", g.first),
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-measures the backlog and applies the policy (every second, from
    /// the checkpointer).
    pub fn check(&self, wal_dir: &Path, seg_size: SegmentSize, settings: &Settings) {
        let mut b = backlog(wal_dir, seg_size);
        let limit = settings.archive_backlog_limit;
        let over = settings.archive_mode && limit > 0 && b.bytes > limit;
        let mut state = self.lock();
        match (over, settings.archive_backlog_policy) {
            (true, BacklogPolicy::RefuseWrites) => {
                let why = format!(
                    "writes are refused: {} segments ({} MB) wait to be archived, more than archive_backlog_limit ({} MB); the oldest, {}, has waited {} s",
                    b.segments,
                    b.bytes >> 20,
                    limit >> 20,
                    b.oldest.clone().unwrap_or_default(),
                    b.oldest_age.map_or(0, |d| d.as_secs())
                );
                if state.refusal.is_none() {
                    error!("{why}; fix the archiver (walship archive) or raise the limit");
                }
                state.refusal = Some(why);
            }
            (true, BacklogPolicy::AbandonArchive) => {
                // The oldest segments, as many as bring the backlog under
                // the limit: each counts a whole segment.
                let excess = (b.bytes - limit).div_ceil(seg_size.bytes()) as usize;
                let give_up: Vec<String> =
                    ready_segments(wal_dir).into_iter().take(excess).collect();
                if let (Some(oldest), Some(newest)) = (give_up.first(), give_up.last()) {
                    // The gap is recorded, once for them all, before any
                    // is given up, so no crash between the two forgets it.
                    let gap = match state.gap.take() {
                        Some(g) => Gap {
                            last: newest.clone(),
                            ..g
                        },
                        None => Gap {
                            first: oldest.clone(),
                            last: newest.clone(),
                            said: Instant::now(),
                        },
                    };
                    let data_dir = wal_dir.parent().unwrap_or(wal_dir);
                    let recorded = gap.record(data_dir);
                    state.gap = Some(gap);
                    match recorded {
                        Err(e) => {
                            error!("could not record the archive gap: {e}; nothing is given up")
                        }
                        Ok(()) => give_up_segments(wal_dir, &give_up),
                    }
                    b = backlog(wal_dir, seg_size);
                }
                state.refusal = None;
            }
            (false, _) => {
                if state.refusal.take().is_some() {
                    info!("the archive backlog is under archive_backlog_limit again: writes are accepted");
                }
            }
        }
        if let Some(g) = &mut state.gap {
            if g.said.elapsed() >= ALARM_EVERY {
                error!("ARCHIVE CONTINUITY LOST since {}: the archive cannot restore past it; take a new base backup", g.first);
                g.said = Instant::now();
            }
        }
        state.backlog = b;
    }

    /// Why writes are refused for the backlog, if they are.
    pub fn refusal_reason(&self) -> Option<String> {
        self.lock().refusal.clone()
    }

    /// The error every write gets while the backlog refuses writes.
    pub fn refusal(&self) -> Option<PgError> {
        self.refusal_reason().map(|why| {
            PgError::new(code::DISK_FULL, why)
                .with_hint("archive_backlog_policy = refuse_writes keeps the archive complete; see pg_stat_archiver and the archiver's log")
        })
    }

    pub fn backlog(&self) -> Backlog {
        self.lock().backlog.clone()
    }

    /// The first segment given up, if the archive has a gap.
    pub fn gap(&self) -> Option<String> {
        self.lock().gap.as_ref().map(|g| g.first.clone())
    }
}

/// Marks `segments` archived, though they never were, so that the
/// checkpointer removes them; stops at the first that cannot be.
fn give_up_segments(wal_dir: &Path, segments: &[String]) {
    for segment in segments {
        if let Err(e) = mark_done(wal_dir, segment) {
            error!("could not give up {segment}: {e}");
            return;
        }
        error!(
            segment = %segment,
            "ARCHIVE CONTINUITY LOST: {segment} was never archived and will be removed (archive_backlog_policy = abandon_archive); the archive cannot restore past it: take a new base backup once the archiver works"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_remembered_and_forgotten_only_for_a_backup_after_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(GAP_FILE),
            "000000010000000000000003\n000000010000000000000005\n",
        )
        .unwrap();
        let on_standby = ArchiveWatch::load(dir.path(), true);
        assert_eq!(
            on_standby.gap().as_deref(),
            Some("000000010000000000000003")
        );
        let watch = ArchiveWatch::load(dir.path(), false);
        assert_eq!(watch.gap().as_deref(), Some("000000010000000000000003"));
        // A backup that began before the gap ended, or in its last
        // segment, needs the WAL the gap lacks.
        for start in ["000000010000000000000004", "000000010000000000000005"] {
            watch.base_backup_taken(dir.path(), start);
            assert!(watch.gap().is_some(), "{start}");
        }
        watch.base_backup_taken(dir.path(), "000000010000000000000006");
        assert_eq!(watch.gap(), None);
        assert!(!dir.path().join(GAP_FILE).exists());
    }
}
