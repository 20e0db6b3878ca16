//! `walship archive`: ships a node's completed segments — those the node
//! marked `wal/archive_status/NAME.ready` — and its timeline history files
//! to the archive, oldest first (history files before segments, as
//! PostgreSQL's archiver does), and marks each `NAME.done`.
//!
//! Invariants: a segment is archived only after its size, every page
//! header, record CRC and prev-link, and its system identifier are
//! verified; `.done` is written only after the archived copy is durable,
//! in order; a failure stops the run at that file (the next run retries
//! it), so `.done` marks never pass a gap. (Files are copied a few at a
//! time, so a file after a failed one may already be in the archive,
//! whole and unmarked; the next run finds it there.)

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use thiserror::Error;

use super::store::{Archive, ArchiveError, Compression, Content, Put, IDENTITY};
use crate::durable::{self, DirLock, FileError, LockError};
use crate::fence::EpochFile;
use crate::meta::MetaError;
use crate::node::control::ControlFile;
use crate::node::datadir::DataDir;
use crate::replication::walsender::pg_now;
use crate::wal::history::TimelineHistory;
use crate::wal::writer::{archive_mark, marked, ArchiveMark, ARCHIVE_STATUS_DIR};
use crate::wal::{Decoder, Expect, SegmentName, SegmentSize, Step, WalFileName};

#[derive(Debug, Error)]
pub enum ArchiverError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("archive {0}")]
    Lock(#[from] LockError),
    #[error("{}: refusing to archive it: {why}. Archiving stops here until it is whole: if a standby holds it intact (walship dump --verify on its copy), copy that over this one and run again; if no intact copy exists, take a new base backup, then rename its archive_status/NAME.ready to NAME.done to go on past the gap", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("archive {} is gone (no {IDENTITY} file), yet this node has archived before (last {last}): the archive was removed, its file system is not mounted, or --archive names another directory than before. Mount it again; if it is lost for good, start a new one with --create and take a new base backup (the new archive begins with a gap)", dir.display())]
    Vanished { dir: PathBuf, last: String },
    /// As `Vanished`, for one file given by path (archive_command).
    #[error("archive {} is gone (no {IDENTITY} file), yet this cluster has archived before ({} holds its marks): the archive was removed, its file system is not mounted, or the command names another directory than before. Mount it again; if it is lost for good, run the command once by hand with --create to start a new one, and take a new base backup (the new archive begins with a gap)", dir.display(), status.display())]
    VanishedUnderCommand { dir: PathBuf, status: PathBuf },
    /// The archive was removed and made again while this archiver ran:
    /// its lock no longer keeps another archiver out.
    #[error("archive {} was made again under this archiver (its {} is not the file this process locked), so another archiver may be writing it too: this one stops; start it again", dir.display(), DirLock::FILE_NAME)]
    Replaced { dir: PathBuf },
    #[error("this node is fenced: {source_of_fence} epoch {newer}, but the node writes in epoch {node}; a fenced node's WAL is never archived (a standby was promoted: archive from the new primary)")]
    Fenced {
        /// Where the newer epoch was found: the archive or the node's own
        /// epoch file (a fence order).
        source_of_fence: String,
        newer: u64,
        node: u64,
    },
    #[error(transparent)]
    DataDir(#[from] crate::node::datadir::DataDirError),
    /// The archive's epoch file is damaged: whether the node is fenced
    /// cannot be told, so nothing is archived.
    #[error("cannot tell whether this node is fenced, so nothing is archived: {why}")]
    EpochUnknown { why: String },
}

/// How many files one pass copies at once (fewer for large segments).
const ARCHIVE_PARALLEL: usize = 4;

/// The file that keeps the archiver's counters for `pg_stat_archiver`.
pub const STATS_FILE: &str = "archiver.status";

/// `pg_stat_archiver`'s counters, kept in `DIR/archiver.status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    /// Microseconds since 2000-01-01 (PostgreSQL's timestamptz).
    pub last_archived_time: Option<i64>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<i64>,
    /// Why the last failure happened.
    pub last_failure: Option<String>,
}

impl ArchiverStats {
    pub fn read(data_dir: &Path) -> ArchiverStats {
        let text = std::fs::read_to_string(data_dir.join(STATS_FILE)).unwrap_or_default();
        let mut s = ArchiverStats::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.to_string();
            match k {
                "archived_count" => s.archived_count = v.parse().unwrap_or(0),
                "last_archived_wal" => s.last_archived_wal = Some(v),
                "last_archived_time" => s.last_archived_time = v.parse().ok(),
                "failed_count" => s.failed_count = v.parse().unwrap_or(0),
                "last_failed_wal" => s.last_failed_wal = Some(v),
                "last_failed_time" => s.last_failed_time = v.parse().ok(),
                "last_failure" => s.last_failure = Some(v),
                _ => {}
            }
        }
        s
    }

    fn write(&self, data_dir: &Path) -> Result<(), FileError> {
        let mut text = format!(
            "archived_count={}\nfailed_count={}\n",
            self.archived_count, self.failed_count
        );
        let mut line = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                text.push_str(&format!("{k}={}\n", v.replace('\n', " ")));
            }
        };
        line("last_archived_wal", self.last_archived_wal.clone());
        line(
            "last_archived_time",
            self.last_archived_time.map(|t| t.to_string()),
        );
        line("last_failed_wal", self.last_failed_wal.clone());
        line(
            "last_failed_time",
            self.last_failed_time.map(|t| t.to_string()),
        );
        line("last_failure", self.last_failure.clone());
        durable::replace_file(&data_dir.join(STATS_FILE), text.as_bytes())
    }
}

/// Checks a file named `name` before it is archived or after it is
/// restored: a segment's size, page headers, record CRCs, prev-links and
/// system identifier (a `.partial` segment may end early, cleanly); a
/// history file's syntax; a backup history file's start line.
pub fn verify_file(
    bytes: &[u8],
    name: &str,
    size: SegmentSize,
    system_id: u64,
) -> Result<(), String> {
    let text = || std::str::from_utf8(bytes).map_err(|e| e.to_string());
    match WalFileName::parse(name, size).map_err(|e| e.to_string())? {
        WalFileName::Segment(seg) => verify_segment(bytes, seg, size, system_id, false),
        WalFileName::Partial(seg) => verify_segment(bytes, seg, size, system_id, true),
        WalFileName::History(_) => TimelineHistory::parse(text()?)
            .map(drop)
            .map_err(|e| e.to_string()),
        WalFileName::Backup(..) if text()?.starts_with("START WAL LOCATION: ") => Ok(()),
        WalFileName::Backup(..) => Err("it is not a backup history file".into()),
    }
}

fn verify_segment(
    bytes: &[u8],
    seg: SegmentName,
    size: SegmentSize,
    system_id: u64,
    partial: bool,
) -> Result<(), String> {
    if bytes.len() as u64 != size.bytes() {
        return Err(format!("it is {} bytes, not a {size} segment", bytes.len()));
    }
    let mut decoder = Decoder::at_page_start(
        size,
        seg.segno.start_lsn(size),
        Expect {
            sysid: Some(system_id),
            max_timeline: Some(seg.timeline.get()),
        },
    );
    loop {
        let pos = decoder.pos();
        if pos.segno(size) != seg.segno {
            return Ok(());
        }
        let off = pos.segment_offset(size) as usize;
        let (_, step) = decoder.decode(&bytes[off..]);
        match step {
            Step::Record(_) => {}
            Step::NeedMore => return Ok(()),
            Step::End(end) if partial && end.is_clean() => return Ok(()),
            Step::End(end) => return Err(end.to_string()),
        }
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    pub archived: Vec<String>,
    /// Found in the archive already, identical.
    pub already: usize,
}

/// An archiver of one data directory into one archive, holding the
/// archive's lock while it lives (two archivers never collide).
pub struct Archiver {
    data_dir: PathBuf,
    archive: Archive,
    lock: DirLock,
    /// When an idle pass last looked for a fence: at most once a second
    /// (before any promotion that reads the whole archive directory).
    fence_checked: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Archiver {
    /// Opens the archiver. A node that has archived before does not
    /// silently start a new, empty archive where its archive vanished,
    /// unless `create` says the operator wants exactly that.
    pub fn new(
        data_dir: &Path,
        archive_dir: &Path,
        compression: Compression,
        create: bool,
    ) -> Result<Archiver, ArchiverError> {
        let dir = DataDir::new(data_dir);
        dir.check()?;
        let control = ControlFile::read(&dir.control())?;
        if !create && !Archive::identity_exists(archive_dir)? {
            if let Some(last) = ArchiverStats::read(data_dir).last_archived_wal {
                return Err(ArchiverError::Vanished {
                    dir: archive_dir.to_path_buf(),
                    last,
                });
            }
        }
        let archive = Archive::open_or_create(
            archive_dir,
            control.system_id,
            control.seg_size,
            compression,
        )?;
        let lock = DirLock::acquire(archive_dir)?;
        let archiver = Archiver {
            data_dir: data_dir.to_path_buf(),
            archive,
            lock,
            fence_checked: std::sync::Mutex::new(None),
        };
        archiver.check_not_fenced()?;
        archiver.archive.remove_stale_temporaries()?;
        Ok(archiver)
    }

    /// Refuses when the node is fenced: the archive records a newer epoch
    /// than the node's (a promotion claimed it), or the node was fenced.
    /// Checked at start and at every pass, so a running daemon archives
    /// nothing more once its node is fenced, and stops. A standby is not
    /// fenced, whatever its epoch: it has nothing to archive (its primary
    /// archives its WAL) until it is promoted.
    fn check_not_fenced(&self) -> Result<(), ArchiverError> {
        let dir = DataDir::new(&self.data_dir);
        if dir.standby_signal().exists() {
            return Ok(());
        }
        let node = EpochFile::read(&dir.epoch())?;
        let archive_epoch = crate::fence::archive::highest(&self.archive.dir)
            .map_err(|e| ArchiverError::EpochUnknown { why: e.to_string() })?
            .map_or(0, |e| e.0);
        let ordered = node.fenced_by.map_or(0, |e| e.0);
        let (source_of_fence, newer) = if archive_epoch >= ordered {
            (
                format!("archive {} knows", self.archive.dir.display()),
                archive_epoch,
            )
        } else {
            (
                format!(
                    "its epoch file {} records a fence order of",
                    dir.epoch().display()
                ),
                ordered,
            )
        };
        if newer > node.epoch.0 {
            return Err(ArchiverError::Fenced {
                source_of_fence,
                newer,
                node: node.epoch.0,
            });
        }
        Ok(())
    }

    /// The names marked `.ready`, in archiving order.
    fn ready(&self) -> Result<Vec<String>, FileError> {
        let wal = DataDir::new(&self.data_dir).wal();
        let mut names: Vec<String> = marked(&wal, ArchiveMark::Ready)?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort_by_key(|n| (!n.ends_with(".history"), n.clone()));
        Ok(names)
    }

    /// Archives everything marked ready, a few files at a time (reads,
    /// verification and fsyncs overlap); marks them `.done` in order and
    /// stops at the first failure. A later file copied before the failure
    /// stays in the archive unmarked: the next run finds it there, the same.
    pub fn pass(&self) -> Result<Pass, ArchiverError> {
        self.pass_reporting(&|_, _| {})
    }

    /// [`Archiver::pass`], telling `copied` of every file copied, as it
    /// is: how many files the pass has, and this one's size.
    pub fn pass_reporting(
        &self,
        copied: &(dyn Fn(usize, u64) + Sync),
    ) -> Result<Pass, ArchiverError> {
        let pass = Pass::default();
        // Checked even with nothing to do, so an idle daemon stops too.
        let dir = &self.archive.dir;
        if dir.join(IDENTITY).exists() && !self.lock.guards(dir) {
            return Err(ArchiverError::Replaced { dir: dir.clone() });
        }
        // So is the fence, once a second: a fenced node writes no WAL, so
        // its daemon would otherwise idle for ever, holding the lock the
        // new primary's archiver needs.
        let names = self.ready()?;
        if names.is_empty() {
            let mut checked = self.fence_checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1)) {
                *checked = Some(std::time::Instant::now());
                self.check_not_fenced()?;
            }
            return Ok(pass);
        }
        self.check_not_fenced()?;
        let stats = ArchiverStats::read(&self.data_dir);
        // About 256 MiB of segments in memory at once (one, if larger).
        let parallel = (256 << 20) / self.archive.seg_size.bytes().max(1);
        let parallel = (parallel as usize).clamp(1, ARCHIVE_PARALLEL);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<std::sync::Mutex<Option<Result<Put, ArchiverError>>>> =
            names.iter().map(|_| std::sync::Mutex::new(None)).collect();
        // Files are marked `.done` in order, each as soon as it and every
        // file before it are in the archive, not when the whole pass ends:
        // a long pass (or one killed part-way) leaves nothing archived
        // still marked `.ready`, for the backlog policy to give up on.
        struct Marking {
            next: usize,
            pass: Pass,
            failure: Option<ArchiverError>,
        }
        let marking = std::sync::Mutex::new(Marking {
            next: 0,
            pass,
            failure: None,
        });
        let stats_at_start = stats.clone();
        let stats = std::sync::Mutex::new(stats);
        let mark_in_order = || {
            let mut m = marking.lock().unwrap_or_else(|p| p.into_inner());
            let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
            while m.failure.is_none() && m.next < names.len() {
                let Some(copied) = results[m.next]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                else {
                    break; // not done yet, or not tried: another file failed first
                };
                let name = &names[m.next];
                match copied.and_then(|put| self.mark_done(name).map(|()| put)) {
                    Ok(put) => {
                        if put == Put::AlreadyThere {
                            m.pass.already += 1;
                        }
                        stats.archived_count += 1;
                        stats.last_archived_wal = Some(name.clone());
                        stats.last_archived_time = Some(pg_now());
                        m.pass.archived.push(name.clone());
                        m.next += 1;
                    }
                    Err(e) => {
                        stats.failed_count += 1;
                        stats.last_failed_wal = Some(name.clone());
                        stats.last_failed_time = Some(pg_now());
                        stats.last_failure = Some(e.to_string());
                        failed.store(true, std::sync::atomic::Ordering::Release);
                        m.failure = Some(e);
                    }
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 0..parallel.min(names.len()) {
                s.spawn(|| loop {
                    // Checked before claiming: a claimed file always gets a
                    // result, so the in-order marking meets every failure.
                    if failed.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    let Some(name) = names.get(i) else { return };
                    let result = self
                        .check_present(&stats_at_start)
                        .and_then(|()| self.copy_one(name));
                    match &result {
                        Ok((_, len)) => copied(names.len(), *len),
                        Err(_) => failed.store(true, std::sync::atomic::Ordering::Release),
                    }
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(result.map(|(put, _)| put));
                    mark_in_order();
                });
            }
        });
        let m = marking.into_inner().unwrap_or_else(|p| p.into_inner());
        stats
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .write(&self.data_dir)?;
        match m.failure {
            Some(e) => Err(e),
            None => Ok(m.pass),
        }
    }

    /// Fails when the archive vanished under a running archiver (removed,
    /// or its file system unmounted) rather than writing into nothing.
    fn check_present(&self, stats: &ArchiverStats) -> Result<(), ArchiverError> {
        let dir = &self.archive.dir;
        if !Archive::identity_exists(dir)? {
            return Err(ArchiverError::Vanished {
                dir: dir.clone(),
                last: stats.last_archived_wal.clone().unwrap_or_default(),
            });
        }
        if !self.lock.guards(dir) {
            return Err(ArchiverError::Replaced { dir: dir.clone() });
        }
        Ok(())
    }

    /// Verifies `wal/NAME` and copies it durably into the archive; returns
    /// how it went and the file's size.
    fn copy_one(&self, name: &str) -> Result<(Put, u64), ArchiverError> {
        let path = DataDir::new(&self.data_dir).wal().join(name);
        let bytes = Content::map(&path)?;
        let archive = &self.archive;
        let put = archive.put(name, &bytes, || {
            verify_file(&bytes, name, archive.seg_size, archive.system_id)
        })?;
        let put = put.map_err(|why| ArchiverError::Invalid { path, why })?;
        Ok((put, bytes.len() as u64))
    }

    /// Marks `NAME` archived (`.ready` → `.done`), once its copy is durable.
    /// Already `.done` is no failure: the node's backlog policy gave it up
    /// while it was being copied.
    fn mark_done(&self, name: &str) -> Result<(), ArchiverError> {
        let wal = DataDir::new(&self.data_dir).wal();
        match crate::wal::writer::mark_done(&wal, name) {
            Err(_) if archive_mark(&wal, name, ArchiveMark::Done).exists() => Ok(()),
            marked => Ok(marked?),
        }
    }
}

/// WAL waiting to be archived.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub segments: u64,
    pub bytes: u64,
    /// How long the oldest waiting file has waited.
    pub oldest_age: Option<std::time::Duration>,
    /// Its name.
    pub oldest: Option<String>,
}

/// The segments marked `.ready` in a WAL directory, oldest first (by
/// name: WAL order): the order a backlog policy gives them up in. History
/// and backup history files are never given up: they free no space, and
/// a lost history file could let a later promotion reuse its timeline.
pub fn ready_segments(wal_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = marked(wal_dir, ArchiveMark::Ready)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !Archive::is_text_file(name))
        .collect();
    names.sort_unstable();
    names
}

/// The backlog of a WAL directory: its `.ready` files.
pub fn backlog(wal_dir: &Path, seg_size: SegmentSize) -> Backlog {
    let mut b = Backlog::default();
    let Ok(ready) = marked(wal_dir, ArchiveMark::Ready) else {
        return b;
    };
    let mut oldest: Option<(SystemTime, String)> = None;
    for (wal_name, entry) in ready {
        if !Archive::is_text_file(&wal_name) {
            b.segments += 1;
            b.bytes += seg_size.bytes();
        }
        if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
            if oldest.as_ref().is_none_or(|(o, _)| t < *o) {
                oldest = Some((t, wal_name));
            }
        }
    }
    if let Some((t, name)) = oldest {
        b.oldest_age = SystemTime::now().duration_since(t).ok();
        b.oldest = Some(name);
    }
    b
}

/// Left in the `archive_status/` beside the files `walship archive ADIR
/// PATH` archived (PostgreSQL ignores files there that are not `.ready` or
/// `.done` marks): this cluster has archived, so an archive that is gone
/// vanished rather than was never made.
const ARCHIVED_MARK: &str = "walship.archived";

fn status_dir_of(path: &Path) -> PathBuf {
    path.parent()
        .unwrap_or(Path::new("."))
        .join(ARCHIVE_STATUS_DIR)
}

/// Archives one file given by path, as PostgreSQL's `archive_command`
/// does (`walship archive --archive ADIR %p`): the archive's system
/// identifier and segment size come from the segment's own long header.
///
/// A missing archive is created, unless the segment's directory shows that
/// its cluster has archived before (a `.done` mark in `archive_status/`,
/// which PostgreSQL and walship leave after each success) and `create` is
/// not given: then the archive vanished (an unmounted file system), and a
/// new one made in its place would take segments nobody will find.
pub fn archive_file(
    path: &Path,
    archive_dir: &Path,
    compression: Compression,
    create: bool,
) -> Result<Put, ArchiverError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = Content::map(path)?;
    let invalid = |why: String| ArchiverError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    // History and backup history files need an archive that exists; a
    // segment creates it, with the identity in its own long header.
    let archive = if Archive::is_text_file(&name) {
        Archive::open(archive_dir)?
    } else {
        if bytes.len() < crate::wal::format::LONG_PAGE_HEADER {
            return Err(invalid(format!("it is only {} bytes long", bytes.len())));
        }
        let long = crate::wal::format::PageHeader::decode(&bytes)
            .long
            .ok_or_else(|| invalid("its first page has no long header".into()))?;
        let size =
            SegmentSize::new(u64::from(long.seg_size)).map_err(|e| invalid(e.to_string()))?;
        if !create && !Archive::identity_exists(archive_dir)? {
            let status = status_dir_of(path);
            // PostgreSQL removes `.done` marks with the segments it
            // recycles, so this command leaves a mark of its own too.
            let archived_before = status.join(ARCHIVED_MARK).exists()
                || std::fs::read_dir(&status).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".done"))
                });
            if archived_before {
                return Err(ArchiverError::VanishedUnderCommand {
                    dir: archive_dir.to_path_buf(),
                    status,
                });
            }
        }
        Archive::open_or_create(archive_dir, long.sysid, size, compression)?
    };
    let _lock = DirLock::acquire(archive_dir)?;
    // What a run killed part-way left (PostgreSQL kills archive_command at
    // a fast shutdown); the lock keeps any other archiver out meanwhile.
    archive.remove_stale_temporaries()?;
    let put = archive
        .put(&name, &bytes, || {
            verify_file(&bytes, &name, archive.seg_size, archive.system_id)
        })?
        .map_err(invalid)?;
    let status = status_dir_of(path);
    let mark = status.join(ARCHIVED_MARK);
    if status.is_dir() && !mark.exists() {
        let text = format!("{}\n", archive_dir.display());
        if let Err(e) = durable::replace_file(&mark, text.as_bytes()) {
            tracing::warn!(
                "could not leave {}: {e}; a vanished archive may go unnoticed",
                mark.display()
            );
        }
    }
    Ok(put)
}
