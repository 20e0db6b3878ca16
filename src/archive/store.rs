//! An archive directory.
//!
//! ```text
//! ADIR/ARCHIVE            identity: system identifier, segment size,
//!                         compression (magic, version, CRC)
//! ADIR/SEGNAME[.zst]      archived segments
//! ADIR/TTTTTTTT.history   timeline history files
//! ADIR/walship.lock       held by the one archiver at work
//! ```
//!
//! Invariants: a file appears under its final name only complete and
//! fsynced (written under a temporary name, renamed with NOREPLACE); an
//! archived file is never overwritten — the same content again is success,
//! different content an error; every segment belongs to the system the
//! archive was created for.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::durable::{self, FileError};
use crate::meta::{MetaError, MetaKind};
use crate::wal::format::LeReader;
use crate::wal::{SegmentSize, WalFileName};

const KIND: MetaKind = MetaKind {
    what: "archive identity",
    magic: 0x5741_5243, // "WARC"
    version: 1,
};

/// A file's content: mapped where it lies, or read into memory.
///
/// Local files are mapped, not read: a 16 MiB segment read into a fresh
/// buffer paid a kernel copy and a page fault per 4 KiB of the buffer, and
/// that was most of what a `walship restore` cost. Only files on this
/// machine's own disks are mapped, and only ones nothing truncates or
/// rewrites while they are read: the prefetch spool's (replaced by rename,
/// removed whole), completed WAL segments being archived (a node removes
/// or reuses one only once it is archived), and an archive's (replaced by
/// rename, removed whole) when the archive is on a local disk. An archive
/// on a network file system is read: there a mapped file that another
/// host removes would kill the process with SIGBUS at its next page fault
/// instead of failing one read.
pub enum Content {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Content {
    /// Maps all of the local file at `path`, which nothing truncates or
    /// rewrites while it is read (see above), its pages read in up front:
    /// every caller reads it all. Read instead where it cannot be mapped
    /// (a file system without mmap).
    pub fn map(path: &Path) -> Result<Content, FileError> {
        let file = std::fs::File::open(path).map_err(|e| FileError::new("open", path, e))?;
        Content::of(file, path, true)
    }

    /// All of `file` (opened from `path`, for messages): mapped when
    /// `mappable` and the file system allows it, read otherwise.
    fn of(mut file: std::fs::File, path: &Path, mappable: bool) -> Result<Content, FileError> {
        let len = file
            .metadata()
            .map_err(|e| FileError::new("read the size of", path, e))?
            .len();
        if len == 0 {
            return Ok(Content::Owned(Vec::new()));
        }
        if mappable {
            // SAFETY: read-only, of a local file nothing truncates (see
            // above).
            if let Ok(map) = unsafe { memmap2::MmapOptions::new().populate().map(&file) } {
                return Ok(Content::Mapped(map));
            }
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| FileError::new("read", path, e))?;
        Ok(Content::Owned(bytes))
    }
}

/// Whether `dir` is on a local disk file system (ext4, XFS, Btrfs, F2FS,
/// tmpfs): not a network one, where a mapped file another host removes
/// turns the next page fault into SIGBUS.
fn is_local_disk(dir: &Path) -> bool {
    use nix::sys::statfs::{
        statfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, F2FS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
    };
    statfs(dir).is_ok_and(|fs| {
        [
            EXT4_SUPER_MAGIC,
            XFS_SUPER_MAGIC,
            BTRFS_SUPER_MAGIC,
            F2FS_SUPER_MAGIC,
            TMPFS_MAGIC,
        ]
        .contains(&fs.filesystem_type())
    })
}

impl std::ops::Deref for Content {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Content::Mapped(map) => map,
            Content::Owned(bytes) => bytes,
        }
    }
}

/// The identity file's name.
pub const IDENTITY: &str = "ARCHIVE";

/// How segments are stored; chosen when the archive is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!("expected none or zstd, got \"{s}\"")),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        })
    }
}

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{} is not a walship archive (no {IDENTITY} file); create it by archiving into it", .0.display())]
    Missing(PathBuf),
    #[error("archive {} belongs to system {archive}, not to system {ours}: never mix two systems' WAL; use another archive directory", dir.display())]
    OtherSystem {
        dir: PathBuf,
        archive: u64,
        ours: u64,
    },
    #[error("archive {} holds segments of {archive}, not {ours}", dir.display())]
    OtherSegmentSize {
        dir: PathBuf,
        archive: SegmentSize,
        ours: SegmentSize,
    },
    #[error("{} is already archived with different content; it was not overwritten. Two systems or two timelines may be writing to one archive: investigate before archiving again", .0.display())]
    Conflict(PathBuf),
    #[error("{}: could not decompress: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
}

/// An open archive directory. See the module documentation.
#[derive(Clone, Debug)]
pub struct Archive {
    pub dir: PathBuf,
    pub system_id: u64,
    pub seg_size: SegmentSize,
    pub compression: Compression,
    /// Whether the archive is on a local disk file system, where its
    /// files may be mapped (see [`Content`]).
    local: bool,
}

/// What [`Archive::put`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Stored,
    /// The same content was archived already.
    AlreadyThere,
}

impl Archive {
    /// Opens an existing archive.
    pub fn open(dir: &Path) -> Result<Archive, ArchiveError> {
        let path = dir.join(IDENTITY);
        if !Self::identity_exists(dir)? {
            return Err(ArchiveError::Missing(dir.to_path_buf()));
        }
        let body = KIND.read(&path)?;
        let damaged = || MetaError::Damaged {
            path: path.clone(),
            what: KIND.what,
        };
        let mut f = LeReader::new(&body);
        let system_id = f.u64().ok_or_else(damaged)?;
        let seg_size = f
            .u32()
            .and_then(|s| SegmentSize::new(u64::from(s)).ok())
            .ok_or_else(damaged)?;
        let compression = match f.u8().ok_or_else(damaged)? {
            0 => Compression::None,
            1 => Compression::Zstd,
            _ => return Err(damaged().into()),
        };
        Ok(Archive {
            dir: dir.to_path_buf(),
            system_id,
            seg_size,
            compression,
            local: is_local_disk(dir),
        })
    }

    /// Opens the archive at `dir` for system `system_id`, creating it (with
    /// `compression`) when it does not exist. An existing archive keeps the
    /// compression it was created with and must be of the same system.
    pub fn open_or_create(
        dir: &Path,
        system_id: u64,
        seg_size: SegmentSize,
        compression: Compression,
    ) -> Result<Archive, ArchiveError> {
        if !Self::identity_exists(dir)? {
            if !dir.exists() {
                durable::create_dir(dir)?;
            }
            let mut body = system_id.to_le_bytes().to_vec();
            body.extend_from_slice(&seg_size.as_u32().to_le_bytes());
            body.push(match compression {
                Compression::None => 0,
                Compression::Zstd => 1,
            });
            let file = KIND.encode(&body);
            // Two archivers creating it at once: one wins, both read it.
            durable::create_file_exclusive(&dir.join(IDENTITY), |f| f.write_all(&file))?;
        }
        let archive = Archive::open(dir)?;
        if archive.system_id != system_id {
            return Err(ArchiveError::OtherSystem {
                dir: dir.to_path_buf(),
                archive: archive.system_id,
                ours: system_id,
            });
        }
        if archive.seg_size != seg_size {
            return Err(ArchiveError::OtherSegmentSize {
                dir: dir.to_path_buf(),
                archive: archive.seg_size,
                ours: seg_size,
            });
        }
        Ok(archive)
    }

    /// Whether `dir` holds an archive's identity file. A directory that cannot
    /// be searched (its permissions) is an error that says so, not "no
    /// archive": that would send an operator looking for a missing archive,
    /// or have one made anew in its place.
    pub fn identity_exists(dir: &Path) -> Result<bool, FileError> {
        let path = dir.join(IDENTITY);
        path.try_exists()
            .map_err(|e| FileError::new("look for", &path, e))
    }

    /// History and backup history files: small text, never compressed.
    pub fn is_text_file(name: &str) -> bool {
        name.ends_with(".history") || name.ends_with(".backup")
    }

    /// Where `name` is stored (text files are never compressed).
    pub fn path_of(&self, name: &str) -> PathBuf {
        match self.compression {
            Compression::Zstd if !Self::is_text_file(name) => self.dir.join(format!("{name}.zst")),
            _ => self.dir.join(name),
        }
    }

    /// Archives `bytes` as `name` (see the module documentation), with
    /// `verify` (the file's checks) run on another thread beside the copy,
    /// so that its CPU overlaps the write and the fsync; nothing is
    /// published under `name` unless it passes (the inner `Err` says why it
    /// did not). A file already archived is verified before it is compared.
    pub fn put(
        &self,
        name: &str,
        bytes: &[u8],
        verify: impl FnOnce() -> Result<(), String> + Send,
    ) -> Result<Result<Put, String>, ArchiveError> {
        let path = self.path_of(name);
        if path.exists() {
            return match verify() {
                Ok(()) => self.same_or_conflict(name, bytes, &path).map(Ok),
                Err(why) => Ok(Err(why)),
            };
        }
        let mut failed = None;
        let created = std::thread::scope(|s| {
            // Never panics (a panic would leave the scope by unwinding):
            // a verification that does is a failed one.
            let check = s.spawn(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(verify))
                    .unwrap_or_else(|_| Err("its verification failed unexpectedly".into()))
            });
            let compressed;
            let stored = match self.compression {
                Compression::Zstd if !Self::is_text_file(name) => {
                    compressed = zstd::bulk::compress(bytes, 3)
                        .map_err(|e| FileError::new("compress", &path, e))?;
                    &compressed[..]
                }
                _ => bytes,
            };
            durable::create_file_exclusive(&path, |f| {
                f.write_all(stored)?;
                // Synced here, beside the check, not after it: the helper's
                // own fsync then finds nothing left to write.
                f.sync_data()?;
                let verdict = check
                    .join()
                    .unwrap_or_else(|_| Err("its verification failed unexpectedly".into()));
                verdict.map_err(|why| {
                    failed = Some(why);
                    std::io::Error::other("failed verification")
                })
            })
        });
        match (created, failed) {
            (_, Some(why)) => Ok(Err(why)),
            (Ok(true), None) => Ok(Ok(Put::Stored)),
            (Ok(false), None) => self.same_or_conflict(name, bytes, &path).map(Ok),
            (Err(e), None) => Err(e.into()),
        }
    }

    fn same_or_conflict(&self, name: &str, bytes: &[u8], path: &Path) -> Result<Put, ArchiveError> {
        match self.get(name)? {
            Some(existing) if *existing == *bytes => Ok(Put::AlreadyThere),
            _ => Err(ArchiveError::Conflict(path.to_path_buf())),
        }
    }

    /// The content archived as `name`, decompressed; `None` if absent.
    pub fn get(&self, name: &str) -> Result<Option<Content>, ArchiveError> {
        let path = self.path_of(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::new("open", &path, e).into()),
        };
        let raw = Content::of(file, &path, self.local)?;
        if path.extension().is_some_and(|e| e == "zst") {
            let limit = self.seg_size.bytes() as usize;
            return zstd::bulk::decompress(&raw, limit)
                .map(|bytes| Some(Content::Owned(bytes)))
                .map_err(|e| ArchiveError::Corrupt {
                    path,
                    why: e.to_string(),
                });
        }
        Ok(Some(raw))
    }

    /// Removes temporary files an interrupted archiver left (only while
    /// holding the archive's lock): those of archived files, never those
    /// of the epoch files a promotion writes without the lock.
    pub fn remove_stale_temporaries(&self) -> Result<usize, FileError> {
        // The identity's too: a run killed while it created the archive
        // leaves one (the next run creates the identity anew).
        durable::remove_stale_temporaries(&self.dir, |name| {
            let plain = name.strip_suffix(".zst").unwrap_or(name);
            plain == IDENTITY || WalFileName::parse(plain, self.seg_size).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_disk_file_systems_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            is_local_disk(dir.path()),
            "a temp dir is on a local disk here"
        );
        // procfs stands in for a file system that is not a local disk.
        assert!(!is_local_disk(Path::new("/proc")));
    }

    fn size() -> SegmentSize {
        SegmentSize::from_mib(1).unwrap()
    }

    #[test]
    fn put_never_overwrites_and_get_is_transparent() {
        for compression in [Compression::None, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let a = Archive::open_or_create(dir.path(), 42, size(), compression).unwrap();
            let seg = vec![7u8; 1 << 20];
            let passes = || Ok(());
            assert_eq!(
                a.put("000000010000000000000001", &seg, passes).unwrap(),
                Ok(Put::Stored)
            );
            assert_eq!(
                a.put("000000010000000000000001", &seg, passes).unwrap(),
                Ok(Put::AlreadyThere)
            );
            let mut other = seg.clone();
            other[100] = 8;
            assert!(matches!(
                a.put("000000010000000000000001", &other, passes),
                Err(ArchiveError::Conflict(_))
            ));
            // A file that fails its checks is never published, nor left
            // under a temporary name.
            assert_eq!(
                a.put("000000010000000000000002", &seg, || Err("bad".into()))
                    .unwrap(),
                Err("bad".to_string())
            );
            assert!(*a.get("000000010000000000000001").unwrap().unwrap() == *seg);
            assert!(a.get("000000010000000000000002").unwrap().is_none());
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                2,
                "ARCHIVE and one segment"
            );
            let again = Archive::open(dir.path()).unwrap();
            assert_eq!(again.compression, compression);
            assert!(matches!(
                Archive::open_or_create(dir.path(), 43, size(), compression),
                Err(ArchiveError::OtherSystem {
                    archive: 42,
                    ours: 43,
                    ..
                })
            ));
        }
    }
}
