//! `walship restore`: one file out of the archive, verified, written
//! where `restore_command`'s `%p` says — with prefetch.
//!
//! A recovering server asks for segments one at a time, each a new process.
//! So that it is not one-archive-round-trip-at-a-time slow, restoring a
//! segment starts (when none runs) a detached prefetch worker that fetches
//! the next `depth` segments of the same timeline, a few in parallel, into a
//! spool directory beside the destination (`DEST_DIR/.walship-prefetch`,
//! on the same file system, so a spooled segment is handed over by a
//! rename). The next request takes its segment from the spool, or waits for
//! the worker when the worker is fetching it.
//!
//! Invariants: every file handed over — fetched directly or from the spool
//! — has passed [`verify_file`] against the archive's system identifier
//! (a spooled one in the worker, which leaves the CRC-32C of what it
//! verified and the archive it came from beside it in `NAME.crc32c`: a
//! request takes a spooled file only when that CRC matches, a tenth of a
//! full verification, and the archive is its own; any other it fetches
//! itself), and is whole under `DEST` before success is reported; the spool
//! is only a cache (a file in it that fails those checks is discarded and
//! fetched again); at most one worker per spool (its lock), holding at
//! most `depth` segments.
//!
//! Neither `DEST` nor the spool is made durable (no fsync): `DEST` is a
//! recovering server's scratch file (PostgreSQL's `RECOVERYXLOG`, walship's
//! the same), read at once and asked for again after a crash, and whatever
//! the server keeps it makes durable itself. An fsync there cost a disk
//! round trip per segment for nothing; a spooled file a crash tore fails
//! its CRC and is fetched again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::archiver::verify_file;
use super::store::{Archive, ArchiveError, Content};
use crate::durable::{self, DirLock, FileError, LockError};
use crate::wal::{SegNo, SegmentName, WalFileName};

/// The spool directory's name, inside the destination's directory.
pub const SPOOL_DIR: &str = ".walship-prefetch";
/// The worker's plan inside the spool: "FIRST LAST" segment names.
const PLAN_FILE: &str = "plan";
/// How many segments a worker fetches at once.
const PARALLEL: usize = 4;
/// How long a request waits for the worker to deliver its segment.
const WAIT_FOR_WORKER: Duration = Duration::from_secs(60);
/// A worker whose spool stays full this long (nobody takes a segment) exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot write {}: its directory {} does not exist (check restore_command's %p)", dest.display(), dir.display())]
    NoDestDir { dest: PathBuf, dir: PathBuf },
    #[error("{0}; check restore_command's %f")]
    NotAWalFile(crate::wal::name::NameError),
    #[error("{} in archive {}: refusing to restore it: {why}", name, dir.display())]
    Invalid {
        name: String,
        dir: PathBuf,
        why: String,
    },
}

/// What [`restore`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// Written to DEST; `from_spool` when the prefetch worker had it ready.
    Written { from_spool: bool },
    /// The archive does not have the file.
    Absent,
}

/// Restores archived `name` to `dest`. With `depth` > 0 and `name` a
/// segment, takes it from the prefetch spool when it is there and starts
/// a worker for the following `depth` segments (see the module docs).
pub fn restore(
    archive_dir: &Path,
    name: &str,
    dest: &Path,
    depth: usize,
) -> Result<Restored, RestoreError> {
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|d| !d.is_dir()) {
        return Err(RestoreError::NoDestDir {
            dest: dest.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    let archive = Archive::open(archive_dir)?;
    // A name that is no WAL file's is a broken restore_command (a wrong
    // placeholder), not the end of the archive: recovery must stop, not
    // end quietly.
    let segment = match WalFileName::parse(name, archive.seg_size) {
        Ok(WalFileName::Segment(seg)) if depth > 0 => Some(seg),
        Ok(_) => None,
        Err(e) => return Err(RestoreError::NotAWalFile(e)),
    };
    let Some(seg) = segment else {
        return fetch(&archive, name, dest);
    };
    let spool = spool_of(dest);
    let from_spool = take_from_spool(&archive, &spool, name, dest)?;
    let restored = if from_spool {
        Restored::Written { from_spool: true }
    } else {
        // A copy the worker spooled meanwhile is of no more use.
        let restored = fetch(&archive, name, dest)?;
        let _ = std::fs::remove_file(spool.join(name));
        let _ = std::fs::remove_file(crc_path_of(&spool.join(name)));
        restored
    };
    if restored != Restored::Absent {
        start_worker(
            &archive,
            &spool,
            SegmentName::new(seg.timeline, seg.segno.next()),
            depth,
        );
    }
    Ok(restored)
}

/// Fetches `name` from the archive, verifies it and writes `dest` durably.
fn fetch(archive: &Archive, name: &str, dest: &Path) -> Result<Restored, RestoreError> {
    let Some(bytes) = archive.get(name)? else {
        return Ok(Restored::Absent);
    };
    verify(archive, name, &bytes)?;
    durable::replace_scratch_file(dest, &bytes)?;
    Ok(Restored::Written { from_spool: false })
}

fn verify(archive: &Archive, name: &str, bytes: &[u8]) -> Result<(), RestoreError> {
    verify_file(bytes, name, archive.seg_size, archive.system_id).map_err(|why| {
        RestoreError::Invalid {
            name: name.to_string(),
            dir: archive.dir.clone(),
            why,
        }
    })
}

fn spool_of(dest: &Path) -> PathBuf {
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
    parent.unwrap_or(Path::new(".")).join(SPOOL_DIR)
}

/// Moves `spool/name` to `dest` when the spool has it (waiting while the
/// worker is fetching it). A spooled file that fails verification is
/// discarded. Returns whether `dest` was written.
fn take_from_spool(
    archive: &Archive,
    spool: &Path,
    name: &str,
    dest: &Path,
) -> Result<bool, RestoreError> {
    let path = spool.join(name);
    let deadline = Instant::now() + WAIT_FOR_WORKER;
    while !path.exists() {
        if !worker_is_fetching(spool, name) || Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let Ok(bytes) = Content::map(&path) else {
        return Ok(false);
    };
    let crc_path = crc_path_of(&path);
    let verified_as = std::fs::read_to_string(&crc_path).ok();
    // Only what a worker verified against this very archive: another
    // archive of the same system (a fenced primary's, the new one's) may
    // hold other WAL under the same name.
    let intact =
        verified_as.is_some_and(|c| c.trim() == hint_text(&archive_identity(archive), &bytes));
    if !intact {
        let _ = std::fs::remove_file(&crc_path);
        let _ = std::fs::remove_file(&path);
        return Ok(false);
    }
    // Renamed before its hint goes: a worker starting now drops a spooled
    // segment without a hint as half-made. Should one take it anyway (a
    // worker that started just before), the request fetches it itself.
    let taken = match std::fs::rename(&path, dest) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(FileError::new("rename", &path, e).into()),
    };
    let _ = std::fs::remove_file(&crc_path);
    Ok(taken)
}

/// Where the worker leaves the CRC-32C of the spooled segment at `path`.
fn crc_path_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".crc32c");
    PathBuf::from(p)
}

/// What the worker leaves in `NAME.crc32c`: the spooled file's CRC-32C,
/// then the archive it came from (its [`archive_identity`]).
fn hint_text(identity: &str, bytes: &[u8]) -> String {
    format!("{:08x} {identity}", crc32c::crc32c(bytes))
}

/// The system identifier and the archive's directory, made absolute (one
/// archive named two ways is one archive).
fn archive_identity(archive: &Archive) -> String {
    let dir = archive
        .dir
        .canonicalize()
        .unwrap_or_else(|_| archive.dir.clone());
    format!("{} {}", archive.system_id, dir.display())
}

/// Whether the hint beside a spooled segment says it came from the
/// archive of `identity` (a spool may have served another).
fn spooled_for(identity: &str, segment: &Path) -> bool {
    std::fs::read_to_string(crc_path_of(segment)).is_ok_and(|hint| {
        hint.trim()
            .split_once(' ')
            .is_some_and(|(_, from)| from == identity)
    })
}

/// Whether a live worker holds the spool and has started fetching `name`.
fn worker_is_fetching(spool: &Path, name: &str) -> bool {
    let Ok(plan) = std::fs::read_to_string(spool.join(PLAN_FILE)) else {
        return false;
    };
    let mut range = plan.split_whitespace();
    let (Some(first), Some(last)) = (range.next(), range.next()) else {
        return false;
    };
    // Names of one timeline sort as their segment numbers do.
    let same_timeline = name.get(..8) == first.get(..8);
    same_timeline && first <= name && name <= last && matches!(DirLock::holder(spool), Ok(Some(_)))
}

/// Starts a detached `walship prefetch-worker` for the segments from
/// `first` on, unless one runs (it goes on past what was taken); one
/// started in a race with another exits at once.
fn start_worker(archive: &Archive, spool: &Path, first: SegmentName, depth: usize) {
    if matches!(DirLock::holder(spool), Ok(Some(_))) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = std::process::Command::new(exe)
        .arg("prefetch-worker")
        .arg("--archive")
        .arg(&archive.dir)
        .arg("--spool")
        .arg(spool)
        .arg("--depth")
        .arg(depth.to_string())
        .arg(first.file_name(archive.seg_size))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    // Not waited for: it outlives this request (init reaps it). Failing
    // to start it only costs speed.
    drop(spawned);
}

/// The prefetch worker: keeps the spool holding up to `depth` verified
/// segments from `first` on, [`PARALLEL`] fetches at a time, as the
/// requests take them; stops at the first segment the archive does not
/// have, or when nothing was taken for [`IDLE_EXIT`]. Exits quietly when
/// another worker holds the spool.
pub fn prefetch(
    archive_dir: &Path,
    spool: &Path,
    first: SegmentName,
    depth: usize,
) -> Result<(), RestoreError> {
    let archive = Archive::open(archive_dir)?;
    let identity = archive_identity(&archive);
    if !spool.exists() {
        durable::create_dir(spool)?;
    }
    let _lock = match DirLock::acquire(spool) {
        Ok(lock) => lock,
        Err(LockError::Busy { .. }) => return Ok(()),
        Err(LockError::Io(e)) => return Err(e.into()),
    };
    let size = archive.seg_size;
    let name_at =
        |i: u64| SegmentName::new(first.timeline, SegNo(first.segno.0 + i)).file_name(size);
    let head = name_at(0);
    // Segments behind the plan were skipped or taken: drop them, and
    // whatever an interrupted worker left half-written.
    let spooled = || -> Result<Vec<String>, FileError> {
        let entries =
            std::fs::read_dir(spool).map_err(|e| FileError::new("read directory", spool, e))?;
        Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| matches!(WalFileName::parse(n, size), Ok(WalFileName::Segment(_))))
            .collect())
    };
    for file in std::fs::read_dir(spool)
        .map_err(|e| FileError::new("read directory", spool, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
    {
        let segment = file.strip_suffix(".crc32c").unwrap_or(&file);
        let is_segment = matches!(
            WalFileName::parse(segment, size),
            Ok(WalFileName::Segment(_))
        );
        let stale = is_segment
            && (segment.get(..8) != head.get(..8)
                || segment < head.as_str()
                || !spooled_for(&identity, &spool.join(segment)));
        if stale || file.contains(".tmp.") {
            durable::remove_file(&spool.join(file))?;
        }
    }
    let next = std::sync::Mutex::new(0u64);
    let end = AtomicBool::new(false);
    let in_flight = AtomicUsize::new(0);
    let last_taken = std::sync::Mutex::new(Instant::now());
    let claim = || -> Option<String> {
        loop {
            if end.load(Ordering::Acquire) {
                return None;
            }
            let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
            // In flight first, then the spool: a fetch ends by renaming its
            // file into the spool before it leaves `in_flight`, so read in
            // this order every segment is counted at least once (the other
            // order could miss one between the two, and hold depth + 1).
            let fetching = in_flight.load(Ordering::Acquire);
            let held = spooled().ok()?.len() + fetching;
            if held < depth {
                let name = name_at(*next);
                *next += 1;
                in_flight.fetch_add(1, Ordering::AcqRel);
                let plan = format!("{head} {name}\n");
                // A hint for the running requests, worthless after a
                // crash: written plainly (a torn read just means "not
                // fetching", and the request fetches it itself).
                std::fs::write(spool.join(PLAN_FILE), plan).ok()?;
                *last_taken.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                return Some(name);
            }
            drop(next);
            let idle = last_taken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if idle > IDLE_EXIT {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(depth) {
            s.spawn(|| {
                while let Some(name) = claim() {
                    let path = spool.join(&name);
                    let ok = path.exists()
                        || match archive.get(&name) {
                            Ok(Some(bytes)) => {
                                // The CRC first, so a request that finds
                                // the segment finds it too. A hint, like
                                // the plan: without it the request
                                // fetches the segment itself.
                                verify(&archive, &name, &bytes).is_ok()
                                    && std::fs::write(
                                        crc_path_of(&path),
                                        hint_text(&identity, &bytes),
                                    )
                                    .is_ok()
                                    && durable::replace_scratch_file(&path, &bytes).is_ok()
                            }
                            // The end of the archive, or a failure the
                            // request itself will meet and report.
                            _ => false,
                        };
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    if !ok {
                        end.store(true, Ordering::Release);
                    }
                }
            });
        }
    });
    let _ = std::fs::remove_file(spool.join(PLAN_FILE));
    Ok(())
}
