//! `DIR/control`: what a node must know before it reads any WAL
//! (PostgreSQL's `pg_control`): the system identifier, segment size,
//! timeline, the last checkpoint, the state at the last shutdown, and the
//! secret behind mock authentication.

use std::path::Path;

use crate::meta::{MetaError, MetaKind};
use crate::wal::format::LeReader;
use crate::wal::{Lsn, SegmentSize, TimelineId};

const KIND: MetaKind = MetaKind {
    what: "control",
    magic: 0x4643_5357, // "WSCF"
    version: 2,
};

/// Version 1 had no mock authentication nonce: read, it gets a new one,
/// which the node's next control write keeps.
const OLDEST: u32 = 1;

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
    /// Random at `walship init`, copied by base backups (as the file
    /// is), kept by every later write: the salt a role that does not
    /// exist is offered is derived from it (see
    /// [`ScramVerifier::mock`](crate::protocol::scram::ScramVerifier::mock)),
    /// so it is the same on every node of a system and across restarts,
    /// as a real role's is (PostgreSQL's `mock_authentication_nonce`).
    pub mock_auth_nonce: [u8; 32],
}

impl ControlFile {
    pub fn read(path: &Path) -> Result<ControlFile, MetaError> {
        let (version, body) = KIND.read_since(path, OLDEST)?;
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
        let mock_auth_nonce = if version < 2 {
            rand::random()
        } else {
            f.take(32)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(damaged)?
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
            mock_auth_nonce,
        })
    }

    /// Atomically replaces the control file.
    pub fn write(&self, path: &Path) -> Result<(), MetaError> {
        let mut body = Vec::with_capacity(60);
        body.extend_from_slice(&self.system_id.to_le_bytes());
        body.extend_from_slice(&self.seg_size.as_u32().to_le_bytes());
        body.extend_from_slice(&self.timeline.get().to_le_bytes());
        body.extend_from_slice(&self.checkpoint.0.to_le_bytes());
        let state: u32 = match self.state {
            NodeState::ShutDown => 1,
            NodeState::InProduction => 2,
        };
        body.extend_from_slice(&state.to_le_bytes());
        body.extend_from_slice(&self.mock_auth_nonce);
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
            mock_auth_nonce: [7; 32],
        };
        c.write(&p).unwrap();
        assert_eq!(ControlFile::read(&p).unwrap(), c);
    }

    #[test]
    fn a_version_1_file_is_read_and_gets_a_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("control");
        let mut body = Vec::new();
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(&SegmentSize::DEFAULT.as_u32().to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0x1000028u64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        MetaKind { version: 1, ..KIND }.write(&p, &body).unwrap();
        let c = ControlFile::read(&p).unwrap();
        assert_eq!((c.system_id, c.checkpoint), (42, Lsn(0x1000028)));
        assert_eq!(c.state, NodeState::ShutDown);
        assert_ne!(c.mock_auth_nonce, [0; 32]);
        c.write(&p).unwrap();
        assert_eq!(ControlFile::read(&p).unwrap(), c);
    }
}
