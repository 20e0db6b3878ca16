//! `walship cleanup`: pg_archivecleanup's job on a walship archive.
//!
//! Invariants: only segments and `.partial` segments are ever removed
//! (compressed or not) — never a history file, a backup history file, the
//! identity, the epoch or the lock; and never a segment from the start of
//! the newest base backup recorded in the archive on. Segments are compared
//! as pg_archivecleanup compares them: by name, timeline aside.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::store::{Archive, ArchiveError};
use crate::durable::{self, FileError};
use crate::wal::{SegmentName, SegmentSize, WalFileName};

#[derive(Debug, Error)]
pub enum CleanupError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "--before {0:?} names no segment of this archive's segment size; give the name of one of its segments (or of a backup history file)"
    )]
    BadName(String),
}

/// What a cleanup removes, decided before anything is touched.
#[derive(Debug)]
pub struct Plan {
    /// The oldest segment kept (timeline aside).
    pub keep_from: String,
    /// The newest base backup's history file, when it moved `keep_from`
    /// back from what the operator asked for.
    pub kept_for_backup: Option<String>,
    /// Files to remove, oldest first.
    pub remove: Vec<PathBuf>,
}

/// A segment's position, timeline aside: the name's last 16 digits.
fn position(seg: &SegmentName, size: SegmentSize) -> String {
    seg.file_name(size)[8..].to_string()
}

/// Decides what `walship cleanup --archive ADIR --before NAME` removes.
pub fn plan(archive_dir: &Path, before: &str) -> Result<Plan, CleanupError> {
    let archive = Archive::open(archive_dir)?;
    let size = archive.seg_size;
    let asked = match WalFileName::parse(before, size) {
        Ok(WalFileName::Segment(s) | WalFileName::Partial(s) | WalFileName::Backup(s, _)) => s,
        _ => return Err(CleanupError::BadName(before.to_string())),
    };
    let mut files = Vec::new();
    let mut newest_backup: Option<(SegmentName, u32, String)> = None;
    let entries = std::fs::read_dir(archive_dir)
        .map_err(|e| FileError::new("read directory", archive_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| FileError::new("read directory", archive_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".zst").unwrap_or(&name);
        match WalFileName::parse(stem, size) {
            Ok(WalFileName::Segment(s) | WalFileName::Partial(s)) => {
                files.push((position(&s, size), entry.path()));
            }
            Ok(WalFileName::Backup(s, offset)) => {
                let newer = newest_backup
                    .as_ref()
                    .is_none_or(|(n, o, _)| (s.segno, offset) > (n.segno, *o));
                if newer {
                    newest_backup = Some((s, offset, name));
                }
            }
            _ => {}
        }
    }
    let mut keep_from = asked;
    let mut kept_for_backup = None;
    if let Some((start, _, backup)) = newest_backup {
        if position(&start, size) < position(&asked, size) {
            keep_from = start;
            kept_for_backup = Some(backup);
        }
    }
    let keep = position(&keep_from, size);
    files.retain(|(pos, _)| *pos < keep);
    files.sort();
    Ok(Plan {
        keep_from: keep_from.file_name(size),
        kept_for_backup,
        remove: files.into_iter().map(|(_, path)| path).collect(),
    })
}

/// Removes the plan's files durably; returns how many bytes went. A file
/// already gone (another cleanup) is not an error.
pub fn execute(plan: &Plan) -> Result<u64, FileError> {
    let mut bytes = 0;
    for path in &plan.remove {
        bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        durable::remove_file(path)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Compression;

    #[test]
    fn removes_only_older_segments_and_keeps_what_the_newest_backup_needs() {
        let dir = tempfile::tempdir().unwrap();
        let size = SegmentSize::from_mib(1).unwrap();
        let archive = Archive::open_or_create(dir.path(), 7, size, Compression::Zstd).unwrap();
        for name in [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003.partial",
            "000000020000000000000003",
            "000000020000000000000004",
        ] {
            archive.put(name, &[1u8; 64], || Ok(())).unwrap().unwrap();
        }
        archive
            .put("00000002.history", b"1\t0/3000000\tpromoted\n", || Ok(()))
            .unwrap()
            .unwrap();
        let removed = |p: &Plan| -> Vec<String> {
            p.remove
                .iter()
                .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };

        let p = plan(dir.path(), "000000020000000000000004").unwrap();
        assert_eq!(p.keep_from, "000000020000000000000004");
        assert_eq!(p.kept_for_backup, None);
        assert_eq!(
            removed(&p),
            [
                "000000010000000000000001.zst",
                "000000010000000000000002.zst",
                "000000010000000000000003.partial.zst",
                "000000020000000000000003.zst",
            ]
        );

        // A base backup that started in segment 2 holds the line there.
        archive
            .put(
                "000000010000000000000002.00000028.backup",
                b"START WAL LOCATION: 0/200028 (file 000000010000000000000002)\n",
                || Ok(()),
            )
            .unwrap()
            .unwrap();
        let p = plan(dir.path(), "000000020000000000000004").unwrap();
        assert_eq!(p.keep_from, "000000010000000000000002");
        assert_eq!(
            p.kept_for_backup.as_deref(),
            Some("000000010000000000000002.00000028.backup")
        );
        assert_eq!(removed(&p), ["000000010000000000000001.zst"]);
        execute(&p).unwrap();
        assert!(archive.get("000000010000000000000001").unwrap().is_none());
        assert!(archive.get("000000010000000000000002").unwrap().is_some());
        assert!(archive.get("00000002.history").unwrap().is_some());

        assert!(matches!(
            plan(dir.path(), "00000002.history"),
            Err(CleanupError::BadName(_))
        ));
    }
}
