//! The fsync discipline: every file that must survive a crash is created,
//! replaced, renamed or removed through these helpers, and nowhere else.
//!
//! The rules, each for a reason:
//! - New contents go to a temporary file in the same directory, which is
//!   fsynced before it is renamed over the final name: a crash leaves either
//!   the old file or the new one, never a torn mix.
//! - The directory is fsynced after a rename or unlink: until then the new
//!   name itself may vanish in a crash.
//! - A failed fsync is reported, never retried: after it the kernel may have
//!   dropped the dirty pages, so retrying can "succeed" with data lost.
//! - [`DirLock`] (an `flock` on a lock file) keeps two processes from
//!   writing one directory.
//! - Scratch files that a crash may lose, because their reader asks again
//!   after one (a `restore_command`'s output, a cache checked before use),
//!   skip the fsyncs but keep the temporary name and the rename
//!   ([`replace_scratch_file`]): a reader never sees one torn.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

/// What an I/O error says, without Rust's `(os error N)` suffix: the
/// message already names the condition, and the number helps no operator.
pub fn io_cause(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// An I/O failure on a named file, saying what was being done.
#[derive(Debug, Error)]
#[error("could not {action} {}: {}", path.display(), io_cause(source))]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> FileError {
        FileError {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for attaching a path and an action to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, FileError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, FileError> {
        self.map_err(|e| FileError::new(action, path, e))
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!(".{name}.tmp.{}", std::process::id()))
}

/// Makes a directory's entries (new names, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FileError> {
    let d = File::open(dir).at("open directory", dir)?;
    d.sync_all().at("fsync directory", dir)
}

/// Creates `dir` itself (its parents as needed) and makes its name
/// durable; `false` when it was there already. Unlike [`create_dir`] it
/// tells which, race-free: only the process that made it gets `true`.
pub fn create_dir_if_absent(dir: &Path) -> Result<bool, FileError> {
    let parent = parent_of(dir);
    fs::create_dir_all(parent).at("create directory", parent)?;
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(FileError::new("create directory", dir, e)),
    }
}

/// Creates a directory (and its parents) and makes its name durable.
pub fn create_dir(dir: &Path) -> Result<(), FileError> {
    fs::create_dir_all(dir).at("create directory", dir)?;
    fsync_dir(parent_of(dir))
}

/// Atomically replaces (or creates) `path` with `contents`: temp file,
/// fsync, rename, fsync of the directory.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_new_file(path, |f| f.write_all(contents), Publish::Replace)
}

/// Atomically replaces (or creates) `path` with what `fill` writes, for
/// contents too large to build in memory first.
pub fn replace_file_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), FileError> {
    write_new_file(path, fill, Publish::Replace)
}

/// Creates `path` with contents written by `fill` under a temporary name,
/// fsynced, then renamed into place only if `path` does not exist yet.
/// Returns `Ok(false)` (and removes the temporary file) when it did.
pub fn create_file_exclusive(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<bool, FileError> {
    match write_new_file(path, fill, Publish::NoReplace) {
        Ok(()) => Ok(true),
        Err(e) if e.source.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Atomically replaces (or creates) `path` with `contents`, without making
/// it durable: for scratch files a crash may lose because whoever reads
/// them asks again after one (a `restore_command`'s output, which a
/// recovering server reads at once and fetches again after a crash) and
/// caches checked before use. A reader never sees it torn.
pub fn replace_scratch_file(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_new_file(path, |f| f.write_all(contents), Publish::Scratch)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    Replace,
    NoReplace,
    /// Replace, without any fsync.
    Scratch,
}

fn write_new_file(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
    publish: Publish,
) -> Result<(), FileError> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .at("create", &tmp)?;
        fill(&mut f).at("write", &tmp)?;
        if publish != Publish::Scratch {
            f.sync_all().at("fsync", &tmp)?;
        }
        match publish {
            Publish::Replace | Publish::Scratch => {
                fs::rename(&tmp, path).at("rename into place", path)
            }
            Publish::NoReplace => rename_noreplace(&tmp, path),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if publish == Publish::Scratch {
        return Ok(());
    }
    fsync_dir(parent_of(path))
}

fn rename_noreplace(from: &Path, to: &Path) -> Result<(), FileError> {
    nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| FileError::new("rename into place", to, io::Error::from(e)))
}

/// Renames a file whose contents are already durable, then fsyncs the
/// directory (or both, when they differ).
pub fn rename(from: &Path, to: &Path) -> Result<(), FileError> {
    fs::rename(from, to).at("rename", from)?;
    fsync_dir(parent_of(to))?;
    if parent_of(from) != parent_of(to) {
        fsync_dir(parent_of(from))?;
    }
    Ok(())
}

/// Removes the temporaries (`.NAME.tmp.PID`) that writers of the files
/// `ours(NAME)` names in `dir`, killed part-way, left behind; returns how
/// many. Only for a caller that keeps every other writer of those files
/// out (their lock, or being their only writer), since a live writer's
/// temporary looks the same; temporaries of other files are left alone.
pub fn remove_stale_temporaries(
    dir: &Path,
    ours: impl Fn(&str) -> bool,
) -> Result<usize, FileError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).at("read directory", dir)? {
        let entry = entry.at("read directory", dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp."))
            .map(|(target, _)| target);
        if target.is_some_and(&ours) {
            remove_file(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a file and makes the removal durable. A file already gone is fine.
pub fn remove_file(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FileError::new("remove", path, e)),
    }
}

/// Writes `bytes` over the start of the existing file `path` (the rest is
/// left as it is) and fdatasyncs it.
pub fn write_head(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut f = OpenOptions::new().write(true).open(path).at("open", path)?;
    f.write_all(bytes).at("write", path)?;
    f.sync_data().at("fdatasync", path)
}

/// Writes zeros over `file[offset..offset + len]` and fdatasyncs it.
pub fn zero_range(file: &mut File, path: &Path, offset: u64, len: u64) -> Result<(), FileError> {
    file.seek(SeekFrom::Start(offset)).at("seek in", path)?;
    fill_zeros(file, len).at("write zeros to", path)?;
    file.sync_data().at("fdatasync", path)
}

/// Writes `len` zero bytes at the file's position (into a new file: so that
/// every block is allocated and later writes need no metadata update, and
/// fdatasync suffices).
pub fn fill_zeros(file: &mut File, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Allocates `len` bytes of a new file without writing them (`fallocate`):
/// they read as zeros, at the cost of no copy and no writeback, but the
/// first write to each block makes its next fdatasync also commit the
/// extent's conversion. Falls back to [`fill_zeros`] where the filesystem
/// cannot allocate.
pub fn allocate(file: &mut File, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let Ok(signed_len) = i64::try_from(len) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    loop {
        return match fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, signed_len) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS) => fill_zeros(file, len),
            Err(e) => Err(io::Error::from(e)),
        };
    }
}

/// An exclusive lock on a directory, held as long as this value lives.
///
/// The lock file records the holder's pid, so a refused process can say
/// who holds it, and is emptied when the lock is released, so that a
/// script's `kill $(cat walship.lock)` on a stopped node signals nothing
/// rather than whatever process has that pid now. (A killed holder leaves
/// its pid, as PostgreSQL's postmaster.pid stays after a crash.)
pub struct DirLock {
    lock: Flock<File>,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Still locked here: the flock goes with the field, after this.
        let _ = self.lock.set_len(0);
    }
}

#[derive(Debug, Error)]
pub enum LockError {
    #[error("{} is in use by another process (pid {holder}); stop it first, or use another directory", dir.display())]
    Busy { dir: PathBuf, holder: String },
    #[error(transparent)]
    Io(#[from] FileError),
}

impl DirLock {
    /// The name of the lock file inside a locked directory.
    pub const FILE_NAME: &'static str = "walship.lock";

    /// Takes the lock or fails at once, naming the holder.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(Self::FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .at("open lock file", &path)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "not written yet".to_string(),
                    pid => pid.to_string(),
                };
                return Err(LockError::Busy {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err((_, e)) => return Err(FileError::new("lock", &path, io::Error::from(e)).into()),
        };
        lock.set_len(0).at("truncate lock file", &path)?;
        lock.write_all(format!("{}\n", std::process::id()).as_bytes())
            .at("write lock file", &path)?;
        Ok(DirLock { lock })
    }

    /// Whether `dir`'s lock file is still the one this lock holds: false
    /// once the directory was removed (and perhaps made again) under it,
    /// when the lock no longer keeps anyone out.
    pub fn guards(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(ours) = self.lock.metadata() else {
            return false;
        };
        std::fs::metadata(dir.join(Self::FILE_NAME))
            .is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino())
    }

    /// Who holds `dir`'s lock (the pid its holder wrote), if anyone: asks
    /// without rewriting the file, so the holder's pid stays in it. (It
    /// takes a shared lock for an instant: a process trying to lock `dir`
    /// in that instant is refused as if the directory were busy.)
    pub fn holder(dir: &Path) -> Result<Option<String>, FileError> {
        let path = dir.join(Self::FILE_NAME);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::new("open lock file", &path, e)),
        };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_) => Ok(None),
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Ok(Some(holder.trim().to_string()))
            }
            Err((_, e)) => Err(FileError::new("lock", &path, io::Error::from(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_say_the_cause_without_the_os_error_number() {
        let e = FileError::new(
            "open",
            "/no/such/file",
            io::Error::from_raw_os_error(nix::libc::ENOENT),
        );
        assert_eq!(
            e.to_string(),
            "could not open /no/such/file: No such file or directory"
        );
        let custom = io::Error::other("disk on fire (really)");
        assert_eq!(io_cause(&custom), "disk on fire (really)");
    }

    #[test]
    fn replace_is_atomic_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("control");
        replace_file(&p, b"one").unwrap();
        replace_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_allocated_file_has_its_length_and_reads_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seg");
        assert!(create_file_exclusive(&p, |f| allocate(f, 1 << 20)).unwrap());
        let bytes = fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn exclusive_create_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epoch");
        assert!(create_file_exclusive(&p, |f| f.write_all(b"1")).unwrap());
        assert!(!create_file_exclusive(&p, |f| f.write_all(b"2")).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"1");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DirLock::acquire(dir.path()).unwrap();
        match DirLock::acquire(dir.path()) {
            Err(LockError::Busy { holder, .. }) => {
                assert_eq!(holder, std::process::id().to_string())
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("second lock was granted"),
        }
    }
}
