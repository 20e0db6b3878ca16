//! `walship rejoin`: make a stopped old primary a standby of the new one,
//! rewinding it to the switch point when it wrote past it.
//!
//! The new primary's timeline history says where the old timeline ended
//! for it: the switch point S. Whatever the old primary wrote past S never
//! reached the new primary and must go. Its WAL is cut back to S (the
//! segment holding S zeroed from S on, later segments of its timeline
//! removed); its store must then be the state at S:
//!
//! - its last checkpoint is at or before S: recovery replays from it to S;
//! - its last checkpoint is past S but no commit lies past S (only
//!   checkpoints — a shutdown or the restart of a fenced primary): the
//!   snapshot already is the state at S, and is recorded as S's;
//! - otherwise its store holds changes past S that cannot be undone: it
//!   must be rebuilt with `walship basebackup`, and rejoin says so,
//!   changing nothing.
//!
//! Invariants: nothing is changed until the rewind is known to be
//! possible; the node is stopped (its lock is held throughout); the first
//! change is standby.signal, so a node whose rejoin was interrupted never
//! starts as a primary; every change goes through the durable helpers, so
//! an interrupted rejoin can simply be run again.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::client::SlotChoice;
use super::conninfo::ConnInfo;
use super::follow::{self, FollowError};
use crate::durable::{self, DirLock, FileError, LockError};
use crate::meta::MetaError;
use crate::node::control::ControlFile;
use crate::node::datadir::DataDir;
use crate::store::snapshot::{self, SnapshotError};
use crate::wal::format::RM_WALSHIP_ID;
use crate::wal::history::TimelineHistory;
use crate::wal::payload::Payload;
use crate::wal::reader::{walk, SegmentFiles, WalkEnd};
use crate::wal::segment::list_segments_upto;
use crate::wal::writer::{unmark, zero_tail};
use crate::wal::{Decoder, Expect, Lsn, SegmentName, WalError};

#[derive(Debug, Error)]
pub enum RejoinError {
    #[error("{} is in use (pid {holder}): stop the old primary first", dir.display())]
    Running { dir: PathBuf, holder: String },
    #[error(transparent)]
    Upstream(#[from] FollowError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    DataDir(#[from] crate::node::datadir::DataDirError),
    #[error("{peer}'s timeline history does not contain this node's timeline {ours}: they share no history to rejoin; rebuild this node with walship basebackup")]
    NoCommonHistory { peer: String, ours: String },
    #[error("{peer} is on this node's timeline {timeline} at {theirs}, behind this node's WAL end {ours}: it was not promoted past this node; nothing to rejoin")]
    NotAhead {
        peer: String,
        timeline: crate::wal::TimelineId,
        theirs: Lsn,
        ours: Lsn,
    },
    #[error("this node committed past the switch point {switch} (first at {first}) and its last checkpoint {checkpoint} is past it too: its store cannot be rewound. Rebuild it as a standby: walship basebackup --from <new primary> -D <new directory>")]
    CannotRewind {
        switch: Lsn,
        first: Lsn,
        checkpoint: Lsn,
    },
    #[error("this node changed its roles past the switch point {switch} (at {lsn}): its users file cannot be rewound. Rebuild it as a standby: walship basebackup --from <new primary> -D <new directory>")]
    RolesChanged { switch: Lsn, lsn: Lsn },
    #[error("the segment {name} holding the switch point {switch} is gone from this node (recycled by its checkpoints): it cannot be cut back there. Rebuild it as a standby: walship basebackup --from <new primary> -D <new directory>")]
    SegmentGone { name: String, switch: Lsn },
    #[error("{0}")]
    Protocol(String),
}

/// What `walship rejoin` did.
#[derive(Debug)]
pub struct Rejoined {
    pub peer: String,
    pub epoch: u64,
    /// Where this node's timeline ends in the new primary's history.
    pub switch: Option<Lsn>,
    /// The end of WAL cut back to the switch point, when it was past it.
    pub rewound_from: Option<Lsn>,
    pub removed_segments: usize,
}

/// Makes the stopped node in `dir` a standby of `from`.
pub fn rejoin(
    dir: &Path,
    from: &ConnInfo,
    slot: Option<SlotChoice<'_>>,
) -> Result<Rejoined, RejoinError> {
    let _lock = DirLock::acquire(dir).map_err(|e| match e {
        LockError::Busy { holder, .. } => RejoinError::Running {
            dir: dir.to_path_buf(),
            holder,
        },
        LockError::Io(e) => RejoinError::File(e),
    })?;
    let data = DataDir::new(dir);
    let mut control = ControlFile::read(&data.control())?;
    let mut upstream = follow::check_upstream(dir, from)?;
    let size = control.seg_size;
    let ours = control.timeline;
    let theirs = upstream.timeline;
    let wal_dir = data.wal();
    let files = SegmentFiles {
        size,
        files: list_segments_upto(&wal_dir, size, ours)?
            .into_iter()
            .filter(|(_, p)| p.extension().is_none())
            .collect(),
    };
    let expect = Expect {
        sysid: Some(control.system_id),
        max_timeline: Some(ours.get()),
    };
    let switch = if theirs == ours {
        None
    } else {
        let history = TimelineHistory::parse(&String::from_utf8_lossy(&upstream.history))
            .map_err(|e| RejoinError::Protocol(format!("{}: {e}", upstream.peer)))?;
        let (switch, _) =
            history
                .switch_of(ours, theirs)
                .ok_or_else(|| RejoinError::NoCommonHistory {
                    peer: upstream.peer.clone(),
                    ours: ours.to_string(),
                })?;
        Some(switch)
    };
    // Walk our WAL from the earlier of the checkpoint and the switch point:
    // where it ends, and the first commit past the switch point.
    let from_lsn = switch.map_or(control.checkpoint, |s| s.min(control.checkpoint));
    // (A switch point on a page boundary has the page's header after it.)
    let mut decoder = if from_lsn.page_offset() == 0 {
        Decoder::at_page_start(size, from_lsn, expect)
    } else {
        Decoder::at_record(size, from_lsn, None, expect)
    };
    let mut end = from_lsn;
    let mut first_past = None;
    let mut roles_past = None;
    let outcome = walk(&files, &mut decoder, None, |r| {
        end = r.end;
        let payload = (r.header().rmid == RM_WALSHIP_ID)
            .then(|| r.main_data())
            .flatten()
            .and_then(|d| Payload::decode(r.header().info, d).ok());
        if switch.is_some_and(|s| r.lsn >= s) {
            match payload {
                Some(Payload::Commit(_)) => {
                    first_past.get_or_insert(r.lsn);
                }
                Some(Payload::Roles(_)) => {
                    roles_past.get_or_insert(r.lsn);
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    })?;
    match &outcome {
        WalkEnd::EndOfWal { end: eow, .. } => end = eow.lsn,
        // Past the switch point's segment, a segment never created is
        // simply where the WAL ends...
        // (At the switch point itself only when the walk began before it:
        // with the checkpoint past it, that segment existed once.)
        WalkEnd::MissingSegment { segno, lsn }
            if switch.is_some_and(|s| {
                *segno > s.segno(size) || (*lsn >= s && control.checkpoint <= s)
            }) =>
        {
            end = *lsn
        }
        // ...up to it, one recycled by this node's checkpoints: its WAL
        // cannot be judged (nor cut back) there.
        WalkEnd::MissingSegment { segno, lsn } => {
            return Err(RejoinError::SegmentGone {
                name: SegmentName::new(ours, *segno).file_name(size),
                switch: switch.unwrap_or(*lsn),
            })
        }
        _ => {}
    }
    // Decide before changing anything: follow as is, or cut back first.
    let rewind = match switch {
        None => {
            let ident = upstream
                .client
                .query("IDENTIFY_SYSTEM")
                .map_err(FollowError::from)?;
            let at = ident
                .text(0, "xlogpos")
                .and_then(|p| p.parse::<Lsn>().ok())
                .unwrap_or(Lsn::INVALID);
            if at < end {
                return Err(RejoinError::NotAhead {
                    peer: upstream.peer,
                    timeline: theirs,
                    theirs: at,
                    ours: end,
                });
            }
            None
        }
        Some(switch) if end <= switch => None,
        Some(switch) => {
            // Diverged: the WAL is cut back inside the segment holding the
            // switch point, which must be here.
            let holding = SegmentName::new(ours, switch.segno(size)).file_name(size);
            let present = files.files.get(&switch.segno(size));
            if !present.is_some_and(|p| p.ends_with(&holding)) {
                return Err(RejoinError::SegmentGone {
                    name: holding,
                    switch,
                });
            }
            // The users file has no history to cut back to.
            if let Some(lsn) = roles_past {
                return Err(RejoinError::RolesChanged { switch, lsn });
            }
            if let (true, Some(first)) = (control.checkpoint > switch, first_past) {
                return Err(RejoinError::CannotRewind {
                    switch,
                    first,
                    checkpoint: control.checkpoint,
                });
            }
            Some(switch)
        }
    };
    // The slot is checked with the other refusals and created last. Then
    // the changes, standby.signal first, so a rejoin stopped half-way
    // leaves a node that takes no writes.
    upstream.check_slot(slot)?;
    durable::replace_file(&data.standby_signal(), b"")?;
    let mut removed_segments = 0;
    if let Some(switch) = rewind {
        if control.checkpoint > switch {
            // No commit past the switch point: the snapshot is the state at it.
            let store = snapshot::read(&data.checkpoints(), control.checkpoint)?;
            snapshot::write(&data.checkpoints(), switch, &store)?;
            let state = control.state;
            crate::node::datadir::record_checkpoint(dir, &mut control, switch, state)?;
        }
        removed_segments = cut_back(&wal_dir, size, ours, switch, &files)?;
    }
    follow::point_at(dir, &upstream, slot.map(|s| s.name), "walship rejoin")?;
    upstream.create_slot(slot)?;
    let follow::Upstream {
        client,
        peer,
        epoch,
        ..
    } = upstream;
    client.close();
    Ok(Rejoined {
        peer,
        epoch,
        switch,
        rewound_from: rewind.map(|_| end),
        removed_segments,
    })
}

/// Cuts the WAL of timeline `tli` back to `switch`: removes the later
/// segments and their archive status first, then zeros the segment
/// holding it from there on — in that order, so a rejoin interrupted
/// half-way still finds WAL past the switch point and cuts again. Returns
/// how many segments went.
fn cut_back(
    wal_dir: &Path,
    size: crate::wal::SegmentSize,
    tli: crate::wal::TimelineId,
    switch: Lsn,
    files: &SegmentFiles,
) -> Result<usize, RejoinError> {
    let first = switch.segno(size);
    let ours = |segno| {
        let name = SegmentName::new(tli, segno).file_name(size);
        // An earlier timeline's segment of that number is not ours to cut.
        let path = files.files.get(&segno).filter(|p| p.ends_with(&name))?;
        Some((path, name))
    };
    let mut removed = 0;
    for segno in files.files.range(first.next()..).map(|(s, _)| *s) {
        if let Some((path, name)) = ours(segno) {
            durable::remove_file(path)?;
            unmark(wal_dir, &name)?;
            removed += 1;
        }
    }
    if let Some((path, name)) = ours(first) {
        // Keep the segment's long header: a switch point at the segment's
        // start still has its header before it.
        let offset = switch
            .segment_offset(size)
            .max(crate::wal::format::LONG_PAGE_HEADER as u64);
        zero_tail(path, offset, size)?;
        unmark(wal_dir, &name)?;
    }
    Ok(removed)
}
