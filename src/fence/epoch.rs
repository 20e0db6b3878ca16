//! `DIR/epoch`: the generation this node writes in, with the timeline and
//! LSN where that generation began. It grows by one at every promotion; a
//! node never accepts writes in an epoch lower than one it has seen.

use std::fmt;
use std::path::Path;

use crate::meta::{MetaError, MetaKind};
use crate::wal::format::LeReader;
use crate::wal::{Lsn, TimelineId};

const KIND: MetaKind = MetaKind {
    what: "epoch",
    magic: 0x5045_5357, // "WSEP"
    version: 2,
};

/// A generation number. Epoch 1 is a new cluster's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const FIRST: Epoch = Epoch(1);
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The epoch file's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochFile {
    pub epoch: Epoch,
    /// The timeline the epoch began on.
    pub timeline: TimelineId,
    /// Where the epoch's WAL began.
    pub start: Lsn,
    /// A later epoch that fenced this node (a standby was promoted): it
    /// takes no writes, ever, in its own epoch.
    pub fenced_by: Option<Epoch>,
}

impl EpochFile {
    pub fn read(path: &Path) -> Result<EpochFile, MetaError> {
        let body = KIND.read(path)?;
        let damaged = || MetaError::Damaged {
            path: path.to_path_buf(),
            what: KIND.what,
        };
        let mut f = LeReader::new(&body);
        let (Some(epoch), Some(tli), Some(start), Some(fenced_by)) =
            (f.u64(), f.u32(), f.u64(), f.u64())
        else {
            return Err(damaged());
        };
        if !f.is_done() || epoch == 0 || (fenced_by != 0 && fenced_by <= epoch) {
            return Err(damaged());
        }
        Ok(EpochFile {
            epoch: Epoch(epoch),
            timeline: TimelineId::new(tli).map_err(|_| damaged())?,
            start: Lsn(start),
            fenced_by: (fenced_by != 0).then_some(Epoch(fenced_by)),
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), MetaError> {
        let mut body = Vec::with_capacity(28);
        body.extend_from_slice(&self.epoch.0.to_le_bytes());
        body.extend_from_slice(&self.timeline.get().to_le_bytes());
        body.extend_from_slice(&self.start.0.to_le_bytes());
        body.extend_from_slice(&self.fenced_by.map_or(0, |e| e.0).to_le_bytes());
        KIND.write(path, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epoch");
        let e = EpochFile {
            epoch: Epoch(3),
            timeline: TimelineId::new(2).unwrap(),
            start: Lsn(0x3000000),
            fenced_by: Some(Epoch(4)),
        };
        e.write(&p).unwrap();
        assert_eq!(EpochFile::read(&p).unwrap(), e);
    }
}
