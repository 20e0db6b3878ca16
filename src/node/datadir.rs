//! The data directory: its layout, `walship init`, and opening it (crash
//! recovery included).
//!
//! ```text
//! DIR/walship.conf      settings
//! DIR/control           system identifier, segment size, timeline, last checkpoint, state
//! DIR/epoch             the generation this node writes in
//! DIR/users             roles: name, attributes, SCRAM verifier
//! DIR/wal/              segments; wal/archive_status/
//! DIR/checkpoints/      snapshot.LSN of the last checkpoint
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

use super::config::{ConfigError, Settings};
use super::control::{ControlFile, NodeState};
use super::users::{UserError, Users};
use crate::durable::{self, DirLock, FileError, IoContext, LockError};
use crate::fence::{Epoch, EpochFile};
use crate::meta::MetaError;
use crate::protocol::scram::ScramVerifier;
use crate::store::snapshot::{self, SnapshotError};
use crate::store::{Db, Store};
use crate::wal::format::RM_WALSHIP_ID;
use crate::wal::payload::Payload;
use crate::wal::writer::ARCHIVE_STATUS_DIR;
use crate::wal::{Lsn, SegmentSize, TimelineId, WalError, WalWriter, WriterConfig};

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }
    /// Fails unless this is a data directory this user can read: says
    /// whether it is missing, unreadable, or no data directory at all.
    pub fn check(&self) -> Result<(), DataDirError> {
        match std::fs::metadata(self.control()) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(DataDirError::Unreadable {
                    path: self.root.clone(),
                    source: e,
                })
            }
            Err(_) if !self.root.exists() => Err(DataDirError::Missing(self.root.clone())),
            Err(_) => Err(DataDirError::NotDataDir(self.root.clone())),
        }
    }

    pub fn conf(&self) -> PathBuf {
        self.root.join("walship.conf")
    }
    pub fn control(&self) -> PathBuf {
        self.root.join("control")
    }
    pub fn epoch(&self) -> PathBuf {
        self.root.join("epoch")
    }
    pub fn users(&self) -> PathBuf {
        self.root.join("users")
    }
    pub fn wal(&self) -> PathBuf {
        self.root.join("wal")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn slots(&self) -> PathBuf {
        self.root.join("slots")
    }
    /// Present on a standby, as PostgreSQL's `standby.signal`.
    pub fn standby_signal(&self) -> PathBuf {
        self.root.join("standby.signal")
    }
}

#[derive(Debug, Error)]
pub enum DataDirError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Users(#[from] UserError),
    #[error(transparent)]
    Db(#[from] crate::store::DbError),
    #[error("directory {} exists but is not empty; remove it or give another one", .0.display())]
    NotEmpty(PathBuf),
    #[error("{} is not a walship data directory (no control file); create one with walship init", .0.display())]
    NotDataDir(PathBuf),
    #[error("role name {0:?} is not allowed: it must be non-empty, without ':' or line breaks (give another with -U)")]
    BadRoleName(String),
    #[error("{} does not exist; create a data directory with walship init (or walship basebackup for a standby)", .0.display())]
    Missing(PathBuf),
    #[error("cannot read data directory {}: {}; run walship as the user that owns it", path.display(), crate::durable::io_cause(source))]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("WAL record at {lsn} could not be replayed: {why}; the WAL is damaged — restore from a base backup")]
    Replay { lsn: Lsn, why: String },
    /// A command gave up on a new data directory and removed it.
    #[error("{cause}; {undone}")]
    Undone {
        cause: Box<DataDirError>,
        undone: String,
    },
}

/// What `walship init` needs.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub seg_size: SegmentSize,
    pub node_name: String,
    /// The first role: a superuser allowed to replicate.
    pub user: String,
    /// Its password, if it gets one (stored only as a SCRAM verifier).
    pub password: Option<String>,
}

/// A new system identifier, as PostgreSQL makes one: seconds since the epoch
/// in the high 32 bits, microseconds and process id bits below, plus
/// randomness so two inits in one microsecond differ.
fn new_system_id() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let random: u64 = rand::random::<u64>() & 0xFFF;
    (now.as_secs() << 32) | (u64::from(now.subsec_micros()) << 12) | random
}

/// Makes `root` a new, empty data directory only its owner may enter (as
/// PostgreSQL keeps its own): created if absent, refused unless empty.
pub fn create_empty(root: &Path) -> Result<NewDataDir, DataDirError> {
    let dir = DataDir::new(root);
    let created = durable::create_dir_if_absent(&dir.root)?;
    let mut found_mode = None;
    if !created {
        let mut entries = fs::read_dir(&dir.root).at("read directory", &dir.root)?;
        if entries.next().is_some() {
            return Err(DataDirError::NotEmpty(dir.root.clone()));
        }
        found_mode = Some(
            fs::metadata(&dir.root)
                .at("read the permissions of", &dir.root)?
                .permissions(),
        );
    }
    // Held until the directory is kept or discarded: another init or
    // basebackup into it finds it not empty, or (in a race) busy, and so
    // never removes what this one makes.
    let lock = DirLock::acquire(&dir.root).map_err(|e| match e {
        // Another process has it now: it is theirs, left alone.
        LockError::Busy { .. } => DataDirError::NotEmpty(dir.root.clone()),
        LockError::Io(e) => {
            if created {
                let _ = fs::remove_dir(&dir.root);
            }
            DataDirError::File(e)
        }
    })?;
    let new = NewDataDir {
        dir,
        found_mode,
        settled: false,
        _lock: lock,
    };
    fs::set_permissions(
        &new.root,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .at("set permissions of", &new.root)?;
    Ok(new)
}

/// A data directory being made by `init` or `basebackup`. Discarded (the
/// command failed), it is removed again, or emptied when it was there,
/// empty, before: as pg_basebackup does, so the command can simply be run
/// again, and no half-made node is left to start. Dropped without either
/// (a panic), it is discarded with a warning.
#[must_use = "a NewDataDir that is dropped removes the directory: keep() it"]
pub struct NewDataDir {
    dir: DataDir,
    /// The permissions of the empty directory `create_empty` found, which
    /// a discard gives back; `None` when it made the directory itself.
    found_mode: Option<fs::Permissions>,
    /// Kept or discarded already.
    settled: bool,
    /// The directory's lock, until it is kept or discarded.
    _lock: DirLock,
}

impl NewDataDir {
    /// The directory is complete: keep it.
    pub fn keep(mut self) {
        self.settled = true;
    }

    /// Removes what was made; says what it did, for the error that made
    /// the command give up (nothing when there was nothing to remove).
    pub fn discard(mut self) -> Option<String> {
        self.settled = true;
        self.remove()
    }

    fn remove(&self) -> Option<String> {
        let root = &self.dir.root;
        // Files written, besides the lock file this value holds.
        let mut written = 0;
        let removed = match &self.found_mode {
            None => fs::remove_dir_all(root),
            // The lock file goes last: until then the directory is not
            // empty, so no other init or basebackup starts in it while
            // this one is still removing.
            Some(mode) => fs::read_dir(root)
                .and_then(|list| {
                    list.into_iter().try_for_each(|entry| {
                        let entry = entry?;
                        if entry.file_name() == DirLock::FILE_NAME {
                            return Ok(());
                        }
                        written += 1;
                        let path = entry.path();
                        if path.is_dir() {
                            fs::remove_dir_all(&path)
                        } else {
                            fs::remove_file(&path)
                        }
                    })
                })
                .and_then(|()| fs::remove_file(root.join(DirLock::FILE_NAME)))
                .and_then(|()| fs::set_permissions(root, mode.clone())),
        };
        match removed {
            Ok(()) if self.found_mode.is_none() => Some(format!(
                "removed the data directory {} it had created",
                root.display()
            )),
            Ok(()) if written == 0 => None,
            Ok(()) => Some(format!(
                "removed what it had written into the data directory {}",
                root.display()
            )),
            Err(e) => Some(format!(
                "could not remove the unfinished data directory {} ({}): remove it before trying again",
                root.display(),
                durable::io_cause(&e)
            )),
        }
    }
}

impl std::ops::Deref for NewDataDir {
    type Target = DataDir;
    fn deref(&self) -> &DataDir {
        &self.dir
    }
}

impl Drop for NewDataDir {
    fn drop(&mut self) {
        if !self.settled {
            if let Some(what) = self.remove() {
                tracing::warn!("{what}");
            }
        }
    }
}

/// Creates a new primary's data directory, with its first checkpoint.
pub fn init(opts: &InitOptions) -> Result<ControlFile, DataDirError> {
    // The users file is `name:attributes:verifier`, a line each.
    if opts.user.is_empty() || opts.user.contains([':', '\n', '\r']) {
        return Err(DataDirError::BadRoleName(opts.user.clone()));
    }
    let dir = create_empty(&opts.dir)?;
    match fill_new(&dir, opts) {
        Ok(control) => {
            dir.keep();
            Ok(control)
        }
        Err(cause) => Err(match dir.discard() {
            Some(undone) => DataDirError::Undone {
                cause: Box::new(cause),
                undone,
            },
            None => cause,
        }),
    }
}

/// `init`'s files, written into the new, empty `dir`.
fn fill_new(dir: &DataDir, opts: &InitOptions) -> Result<ControlFile, DataDirError> {
    durable::create_dir(&dir.wal())?;
    durable::create_dir(&dir.wal().join(ARCHIVE_STATUS_DIR))?;
    durable::create_dir(&dir.checkpoints())?;
    durable::replace_file(
        &dir.conf(),
        Settings::default_file(&[("node_name", opts.node_name.clone())]).as_bytes(),
    )?;
    let mut users = Users::first(&opts.user);
    if let Some(pw) = &opts.password {
        users.users[0].verifier = Some(ScramVerifier::new(pw));
    }
    users.write(&dir.users())?;
    let mut control = ControlFile {
        system_id: new_system_id(),
        seg_size: opts.seg_size,
        timeline: TimelineId::FIRST,
        checkpoint: Lsn::INVALID,
        state: NodeState::ShutDown,
        mock_auth_nonce: rand::random(),
    };
    EpochFile {
        epoch: Epoch::FIRST,
        timeline: TimelineId::FIRST,
        start: Lsn::INVALID,
        fenced_by: None,
    }
    .write(&dir.epoch())?;
    let (wal, _) = WalWriter::open(writer_config(dir, &control, false), None, &mut |_| {})?;
    let db = Db::new(wal, Store::default());
    let (lsn, rows) = db.checkpoint(&db.lock_roles())?;
    snapshot::write(&dir.checkpoints(), lsn, &rows)?;
    control.checkpoint = lsn;
    control.write(&dir.control())?;
    Ok(control)
}

fn writer_config(dir: &DataDir, control: &ControlFile, mark_ready: bool) -> WriterConfig {
    WriterConfig {
        dir: dir.wal(),
        seg_size: control.seg_size,
        system_id: control.system_id,
        timeline: control.timeline,
        mark_ready,
    }
}

/// A data directory opened for running: recovered, its WAL writer locked.
pub struct Opened {
    pub control: ControlFile,
    pub epoch: EpochFile,
    pub db: Db,
    /// How many records recovery replayed after the checkpoint.
    pub replayed: u64,
    /// Where the WAL ended, and why, when it ended on damage.
    pub end: Lsn,
    pub end_note: Option<String>,
    /// Where what lay past the end of valid WAL was kept (see
    /// `WalWriter::open`), when it held data.
    pub discarded: Option<PathBuf>,
    /// The missing segment the WAL ran on into (see `Resumed::missing`).
    pub missing: Option<PathBuf>,
}

/// Opens a data directory: reads the control and epoch files, loads the
/// last checkpoint's snapshot, replays the WAL after it, and resumes the
/// WAL writer exactly at the end of valid WAL.
///
/// A standby (`standby` true) never marks segments for archiving: its WAL
/// is its primary's, archived there.
pub fn open(root: &Path, settings: &Settings, standby: bool) -> Result<Opened, DataDirError> {
    let dir = DataDir::new(root);
    dir.check()?;
    let control = ControlFile::read(&dir.control())?;
    let epoch = EpochFile::read(&dir.epoch())?;
    let mut rows = snapshot::read(&dir.checkpoints(), control.checkpoint)?;
    let mut replayed = 0;
    let mut replay_error = None;
    // The roles of the last ROLES record replayed: its users file may not
    // have been written before the crash.
    let mut roles = None;
    let checkpoint = control.checkpoint;
    let (wal, resumed) = WalWriter::open(
        writer_config(&dir, &control, settings.archive_mode && !standby),
        Some(checkpoint),
        &mut |r| {
            // The record at the checkpoint LSN is the checkpoint itself
            // (ignored below), or — after walship rejoin labelled a
            // snapshot with a switch point — the first record it lacks.
            if r.lsn < checkpoint || r.header().rmid != RM_WALSHIP_ID || replay_error.is_some() {
                return;
            }
            let payload = r
                .main_data()
                .ok_or_else(|| "record has block references".to_string())
                .and_then(|d| Payload::decode(r.header().info, d).map_err(|e| e.to_string()));
            match payload {
                Ok(Payload::Commit(ops)) => match rows.apply_record(&ops, r.end) {
                    Ok(()) => replayed += 1,
                    Err(e) => replay_error = Some((r.lsn, e.to_string())),
                },
                Ok(Payload::Roles(text)) => match Users::from_record(text, r.lsn) {
                    Ok(users) => {
                        roles = Some(users);
                        replayed += 1;
                    }
                    Err(e) => replay_error = Some((r.lsn, e.to_string())),
                },
                Ok(_) => {}
                Err(e) => replay_error = Some((r.lsn, e)),
            }
        },
    )?;
    if let Some((lsn, why)) = replay_error {
        return Err(DataDirError::Replay { lsn, why });
    }
    if let Some(users) = roles {
        users.write(&dir.users())?;
    }
    let mut control = control;
    control.state = NodeState::InProduction;
    control.write(&dir.control())?;
    Ok(Opened {
        control,
        epoch,
        db: Db::new(wal, rows),
        replayed,
        end: resumed.end,
        end_note: resumed
            .stopped_by
            .filter(|(e, _)| !e.is_clean())
            .map(|(e, path)| format!("{e} (in {})", path.display())),
        discarded: resumed.discarded,
        missing: resumed.missing,
    })
}

/// Records a completed checkpoint: its snapshot is durable, so the control
/// file may point at it; older snapshots go.
pub fn record_checkpoint(
    root: &Path,
    control: &mut ControlFile,
    lsn: Lsn,
    state: NodeState,
) -> Result<(), DataDirError> {
    let dir = DataDir::new(root);
    control.checkpoint = lsn;
    control.state = state;
    control.write(&dir.control())?;
    snapshot::remove_others(&dir.checkpoints(), lsn)?;
    Ok(())
}
