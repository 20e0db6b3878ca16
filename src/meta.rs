//! Small metadata files (control, epoch, snapshots' headers): magic number,
//! format version, body, and a CRC-32C over all of it, so a torn or foreign
//! file is recognized rather than misread.
//!
//! ```text
//! u32 magic | u32 version | body … | u32 CRC-32C of everything before it
//! ```

use std::path::Path;

use thiserror::Error;

use crate::durable::{self, FileError, IoContext};

#[derive(Debug, Error)]
pub enum MetaError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: not a walship {what} file (bad magic number {found:#010x})", path.display())]
    Magic {
        path: std::path::PathBuf,
        what: &'static str,
        found: u32,
    },
    #[error("{}: {what} file format version {found}, but this walship reads version {expected}; use the walship release that wrote it", path.display())]
    Version {
        path: std::path::PathBuf,
        what: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("{}: the {what} file is missing; restore it from a backup of this data directory, or rebuild the node (walship basebackup)", path.display())]
    Missing {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error("{}: {what} file is damaged (CRC mismatch or wrong length); restore it from a backup", path.display())]
    Damaged {
        path: std::path::PathBuf,
        what: &'static str,
    },
}

/// One kind of metadata file.
pub struct MetaKind {
    pub what: &'static str,
    pub magic: u32,
    pub version: u32,
}

impl MetaKind {
    /// The whole file for `body`.
    pub fn encode(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Atomically replaces the file at `path` with `body`.
    pub fn write(&self, path: &Path, body: &[u8]) -> Result<(), MetaError> {
        durable::replace_file(path, &self.encode(body))?;
        Ok(())
    }

    /// Reads and checks the file; returns its body.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, MetaError> {
        Ok(self.read_since(path, self.version)?.1)
    }

    /// Reads and checks a file of any version from `oldest` to this one;
    /// returns its version and body.
    pub fn read_since(&self, path: &Path, oldest: u32) -> Result<(u32, Vec<u8>), MetaError> {
        let bytes = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MetaError::Missing {
                    path: path.to_path_buf(),
                    what: self.what,
                })
            }
            read => read.at("read", path)?,
        };
        self.decode(path, bytes, oldest)
    }

    fn decode(
        &self,
        path: &Path,
        mut bytes: Vec<u8>,
        oldest: u32,
    ) -> Result<(u32, Vec<u8>), MetaError> {
        let damaged = || MetaError::Damaged {
            path: path.to_path_buf(),
            what: self.what,
        };
        if bytes.len() < 12 {
            return Err(damaged());
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let (magic, version) = (word(0), word(4));
        if magic != self.magic {
            return Err(MetaError::Magic {
                path: path.to_path_buf(),
                what: self.what,
                found: magic,
            });
        }
        if !(oldest..=self.version).contains(&version) {
            return Err(MetaError::Version {
                path: path.to_path_buf(),
                what: self.what,
                found: version,
                expected: self.version,
            });
        }
        let body_end = bytes.len() - 4;
        if crc32c::crc32c(&bytes[..body_end]) != word(body_end) {
            return Err(damaged());
        }
        bytes.truncate(body_end);
        bytes.drain(..8);
        Ok((version, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: MetaKind = MetaKind {
        what: "test",
        magic: 0x5453_4554,
        version: 3,
    };

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        KIND.write(&p, b"body").unwrap();
        assert_eq!(KIND.read(&p).unwrap(), b"body");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(KIND.read(&p), Err(MetaError::Damaged { .. })));
        let other = MetaKind { version: 4, ..KIND };
        other.write(&p, b"x").unwrap();
        let e = KIND.read(&p).unwrap_err();
        assert!(e.to_string().contains("format version 4"), "{e}");
        std::fs::write(&p, b"short").unwrap();
        assert!(KIND.read(&p).is_err());
        let e = KIND.read(&dir.path().join("gone")).unwrap_err();
        assert!(
            matches!(e, MetaError::Missing { .. }) && e.to_string().contains("restore it"),
            "{e}"
        );
    }
}
