//! Checkpoint snapshots: `checkpoints/snapshot.LSN`, the whole store as of
//! the checkpoint record at LSN.
//!
//! ```text
//! u32 magic "WSSN" | u32 version | u64 checkpoint LSN | u64 rows
//! rows × (u32 key length, key, u32 value length, value)
//! u32 CRC-32C of everything before it
//! ```
//! Written under a temporary name, fsynced and renamed (`durable`), so a
//! crash leaves the previous snapshot or this one, whole.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use imbl::OrdMap;
use thiserror::Error;

use super::{KvText, Store};
use crate::durable::{self, FileError, IoContext};
use crate::wal::format::LeReader;
use crate::wal::Lsn;

const MAGIC: u32 = 0x4e53_5357; // "WSSN"
const VERSION: u32 = 1;
const PREFIX: &str = "snapshot.";

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: checkpoint snapshot is damaged ({why}); the node cannot recover from it: restore the data directory from a base backup", path.display())]
    Damaged { path: PathBuf, why: &'static str },
}

/// The snapshot file of the checkpoint at `lsn`.
pub fn path_for(dir: &Path, lsn: Lsn) -> PathBuf {
    dir.join(format!("{PREFIX}{:016X}", lsn.0))
}

/// Writes `store` as the snapshot of the checkpoint at `lsn`, durably.
pub fn write(dir: &Path, lsn: Lsn, store: &Store) -> Result<PathBuf, SnapshotError> {
    let path = path_for(dir, lsn);
    durable::replace_file_with(&path, |file| {
        let mut w = CrcWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: 0,
        };
        w.write_all(&MAGIC.to_le_bytes())?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&lsn.0.to_le_bytes())?;
        w.write_all(&(store.len() as u64).to_le_bytes())?;
        for (k, v) in store.rows() {
            w.write_all(&(k.len() as u32).to_le_bytes())?;
            w.write_all(k.as_bytes())?;
            w.write_all(&(v.len() as u32).to_le_bytes())?;
            w.write_all(v.as_bytes())?;
        }
        let crc = w.crc;
        w.inner.write_all(&crc.to_le_bytes())?;
        w.inner.flush()
    })?;
    Ok(path)
}

struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the snapshot of the checkpoint at `lsn`.
pub fn read(dir: &Path, lsn: Lsn) -> Result<Store, SnapshotError> {
    let path = path_for(dir, lsn);
    let bytes = fs::read(&path).at("read checkpoint snapshot", &path)?;
    let damaged = |why| SnapshotError::Damaged {
        path: path.clone(),
        why,
    };
    if bytes.len() < 28 {
        return Err(damaged("too short"));
    }
    let body_end = bytes.len() - 4;
    let stored = u32::from_le_bytes(
        bytes[body_end..]
            .try_into()
            .map_err(|_| damaged("too short"))?,
    );
    if crc32c::crc32c(&bytes[..body_end]) != stored {
        return Err(damaged("CRC mismatch"));
    }
    let mut r = LeReader::new(&bytes[..body_end]);
    if r.u32() != Some(MAGIC) {
        return Err(damaged("not a snapshot file"));
    }
    if r.u32() != Some(VERSION) {
        return Err(damaged("unknown snapshot format version"));
    }
    if r.u64() != Some(lsn.0) {
        return Err(damaged("snapshot is of another checkpoint"));
    }
    let count = r.u64().ok_or_else(|| damaged("truncated"))?;
    let mut rows = OrdMap::new();
    for _ in 0..count {
        let mut string = || std::str::from_utf8(r.prefixed()?).ok().map(KvText::from);
        let (Some(k), Some(v)) = (string(), string()) else {
            return Err(damaged("truncated or invalid row"));
        };
        rows.insert(k, v);
    }
    if !r.is_done() {
        return Err(damaged("trailing bytes"));
    }
    Ok(Store::from_rows(rows, lsn))
}

/// Removes every snapshot but the one at `keep`.
pub fn remove_others(dir: &Path, keep: Lsn) -> Result<(), FileError> {
    let keep = path_for(dir, keep);
    for entry in fs::read_dir(dir).at("read directory", dir)? {
        let entry = entry.at("read directory", dir)?;
        let is_snapshot = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX));
        if is_snapshot && entry.path() != keep {
            durable::remove_file(&entry.path())?;
        }
    }
    // A checkpoint killed while writing its snapshot left it half-written
    // under a temporary name; checkpoints are the only writers here, one
    // at a time.
    durable::remove_stale_temporaries(dir, |name| name.starts_with(PREFIX))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KvOp;

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::default();
        s.apply(
            &[
                KvOp::Put {
                    key: "a".into(),
                    value: "1".into(),
                },
                KvOp::Put {
                    key: "b".into(),
                    value: "".into(),
                },
            ],
            Lsn(100),
        );
        let p = write(dir.path(), Lsn(0x1000028), &s).unwrap();
        let back = read(dir.path(), Lsn(0x1000028)).unwrap();
        assert_eq!(back.checksum(), s.checksum());
        assert_eq!(back.len(), 2);
        let mut bytes = fs::read(&p).unwrap();
        bytes[30] ^= 1;
        fs::write(&p, &bytes).unwrap();
        assert!(read(dir.path(), Lsn(0x1000028)).is_err());
        assert!(read(dir.path(), Lsn(1)).is_err());
    }
}
