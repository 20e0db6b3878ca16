//! `DIR/promote.journal`: how far a promotion has got, so that one
//! interrupted at any point (kill -9, power loss) is finished by the next
//! attempt — in the same epoch, and never on a timeline that may already
//! hold history or WAL.
//!
//! The steps, in order; the journal is durably replaced as each begins:
//! - [`Step::Fence`]: epoch E is chosen and the old primary is being
//!   fenced. Nothing of this node has changed yet, so a failure here ends
//!   the promotion cleanly (the journal goes; the node stays a standby).
//! - [`Step::Claim`]: the old primary is fenced and E is persisted as this
//!   node's epoch; E is being claimed in the archive, with the journal's
//!   token, so a rerun recognises its own claim.
//! - [`Step::Switch`]: E is this node's; the new timeline named in the
//!   journal is being started. A promotion resumed at this step abandons
//!   that timeline (its history file stays, so it is never reused) and
//!   starts the next free one.
//! - [`Step::Finish`]: the control file is on the new timeline; only
//!   `standby.signal` remains to be removed.
//!
//! The journal is removed once the node is a primary; a node that starts
//! with one and no `standby.signal` finished its promotion and removes it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::durable::{self, FileError};
use crate::fence::Epoch;
use crate::wal::TimelineId;

/// The journal's file name in the data directory.
pub const JOURNAL: &str = "promote.journal";

/// A promotion's steps, in the order they are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Fence,
    Claim,
    Switch,
    Finish,
}

impl Step {
    const ALL: [Step; 4] = [Step::Fence, Step::Claim, Step::Switch, Step::Finish];

    fn name(self) -> &'static str {
        match self {
            Step::Fence => "fence",
            Step::Claim => "claim",
            Step::Switch => "switch",
            Step::Finish => "finish",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A promotion in progress.
///
/// Invariant: `timeline` is set from [`Step::Switch`] on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journal {
    pub step: Step,
    /// The epoch this promotion takes.
    pub epoch: Epoch,
    /// Written into the archive's claim of `epoch`, to tell this
    /// promotion's claim from another's.
    pub token: String,
    /// The new timeline, once chosen.
    pub timeline: Option<TimelineId>,
}

/// Why a journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path} is damaged ({why}): a promotion was interrupted; check the node's epoch and timeline, then remove the file and promote again")]
    Damaged { path: PathBuf, why: String },
    #[error(transparent)]
    File(#[from] FileError),
}

impl Journal {
    /// A promotion to `epoch`, at its first step, with a fresh token.
    pub fn begin(epoch: Epoch) -> Journal {
        Journal {
            step: Step::Fence,
            epoch,
            token: format!("{:016x}", rand::random::<u64>()),
            timeline: None,
        }
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(JOURNAL)
    }

    /// The journal in data directory `dir`, if a promotion left one.
    pub fn read(dir: &Path) -> Result<Option<Journal>, JournalError> {
        let path = Journal::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::new("read", &path, e).into()),
        };
        Journal::parse(&text)
            .map(Some)
            .map_err(|why| JournalError::Damaged { path, why })
    }

    fn parse(text: &str) -> Result<Journal, String> {
        let (mut step, mut epoch, mut token, mut timeline) = (None, None, None, None);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line `{line}` is not key=value"))?;
            match key {
                "step" => {
                    step = Some(
                        *Step::ALL
                            .iter()
                            .find(|s| s.name() == value)
                            .ok_or_else(|| format!("unknown step `{value}`"))?,
                    )
                }
                "epoch" => {
                    epoch = Some(Epoch(
                        value.parse().map_err(|_| format!("bad epoch `{value}`"))?,
                    ))
                }
                "token" => token = Some(value.to_string()),
                "timeline" => {
                    timeline = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .and_then(|t| TimelineId::new(t).ok())
                            .ok_or_else(|| format!("bad timeline `{value}`"))?,
                    )
                }
                _ => return Err(format!("unknown key `{key}`")),
            }
        }
        let (Some(step), Some(epoch), Some(token)) = (step, epoch, token) else {
            return Err("step, epoch or token missing".into());
        };
        if step >= Step::Switch && timeline.is_none() {
            return Err(format!("step {step} without a timeline"));
        }
        Ok(Journal {
            step,
            epoch,
            token,
            timeline,
        })
    }

    fn to_text(&self) -> String {
        let mut s = format!(
            "step={}\nepoch={}\ntoken={}\n",
            self.step, self.epoch, self.token
        );
        if let Some(t) = self.timeline {
            s.push_str(&format!("timeline={}\n", t.get()));
        }
        s
    }

    /// Persists the journal in data directory `dir`, then passes the crash
    /// point `promote-STEP` (see [`crate::crashpoint`]).
    pub fn write(&self, dir: &Path) -> Result<(), FileError> {
        durable::replace_file(&Journal::path(dir), self.to_text().as_bytes())?;
        crate::crashpoint::reach(&format!("promote-{}", self.step));
        Ok(())
    }

    /// Moves on to `step`, durably.
    pub fn advance(&mut self, dir: &Path, step: Step) -> Result<(), FileError> {
        self.step = step;
        self.write(dir)
    }

    /// Removes the journal from data directory `dir`: no promotion is in
    /// progress.
    pub fn remove(dir: &Path) -> Result<(), FileError> {
        durable::remove_file(&Journal::path(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap(), None);
        let mut j = Journal::begin(Epoch(4));
        j.write(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap(), Some(j.clone()));
        j.timeline = TimelineId::new(3).ok();
        j.advance(dir.path(), Step::Switch).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap(), Some(j));
        for bad in [
            "step=switch\nepoch=4\ntoken=a\n",
            "step=jump\nepoch=4\ntoken=a\n",
            "step=fence\ntoken=a\n",
            "step=fence\nepoch=x\ntoken=a\n",
            "garbage",
        ] {
            std::fs::write(dir.path().join(JOURNAL), bad).unwrap();
            let err = Journal::read(dir.path()).unwrap_err().to_string();
            assert!(err.contains("promote.journal is damaged"), "{bad}: {err}");
        }
        Journal::remove(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap(), None);
    }
}
