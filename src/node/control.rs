//! `DIR/control`: what a node must know before it reads any WAL
//! (PostgreSQL's `pg_control`): the system identifier, segment size,
//! timeline, the last checkpoint and the state at the last shutdown.

use std::path::Path;

use crate::meta::{MetaError, MetaKind};
use crate::wal::format::LeReader;
use crate::wal::{Lsn, SegmentSize, TimelineId};

const KIND: MetaKind = MetaKind {
    what: "control",
    magic: 0x4643_5357, // "WSCF"
    version: 1,
};

/// How the node last stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Cleanly: the last checkpoint is the end of WAL.
    ShutDown,
    /// Running, or killed while running: recovery replays from the checkpoint.
    InProduction,
}

/// The control file's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFile {
    pub system_id: u64,
    pub seg_size: SegmentSize,
    pub timeline: TimelineId,
    /// The last checkpoint record; the store snapshot of it holds every
    /// change before it.
    pub checkpoint: Lsn,
    pub state: NodeState,
}

impl ControlFile {
    pub fn read(path: &Path) -> Result<ControlFile, MetaError> {
        let body = KIND.read(path)?;
        let damaged = || MetaError::Damaged {
            path: path.to_path_buf(),
            what: KIND.what,
        };
        let mut f = LeReader::new(&body);
        let (Some(system_id), Some(seg), Some(tli), Some(checkpoint), Some(state)) =
            (f.u64(), f.u32(), f.u32(), f.u64(), f.u32())
        else {
            return Err(damaged());
        };
        let seg_size = SegmentSize::new(u64::from(seg)).map_err(|_| damaged())?;
        let timeline = TimelineId::new(tli).map_err(|_| damaged())?;
        let state = match state {
            1 => NodeState::ShutDown,
            2 => NodeState::InProduction,
            _ => return Err(damaged()),
        };
        if !f.is_done() {
            return Err(damaged());
        }
        Ok(ControlFile {
            system_id,
            seg_size,
            timeline,
            checkpoint: Lsn(checkpoint),
            state,
        })
    }

    /// Atomically replaces the control file.
    pub fn write(&self, path: &Path) -> Result<(), MetaError> {
        let mut body = Vec::with_capacity(28);
        body.extend_from_slice(&self.system_id.to_le_bytes());
        body.extend_from_slice(&self.seg_size.as_u32().to_le_bytes());
        body.extend_from_slice(&self.timeline.get().to_le_bytes());
        body.extend_from_slice(&self.checkpoint.0.to_le_bytes());
        let state: u32 = match self.state {
            NodeState::ShutDown => 1,
            NodeState::InProduction => 2,
        };
        body.extend_from_slice(&state.to_le_bytes());
        KIND.write(path, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("control");
        let c = ControlFile {
            system_id: 42,
            seg_size: SegmentSize::DEFAULT,
            timeline: TimelineId::FIRST,
            checkpoint: Lsn(0x1000028),
            state: NodeState::InProduction,
        };
        c.write(&p).unwrap();
        assert_eq!(ControlFile::read(&p).unwrap(), c);
    }
}
