//! `walship server`: opens (and recovers) a data directory, listens for
//! clients, runs the background WAL writer and checkpointer, and stops
//! cleanly on SIGTERM/SIGINT (sessions told, WAL flushed, a shutdown
//! checkpoint written). SIGHUP reloads `walship.conf` and `users`.
//!
//! Every client session is a thread, as every PostgreSQL backend is a
//! process: a commit runs append → flush → apply on the session's own
//! thread, with no hand-off to another thread on the way (group commit
//! shares the flush through the WAL writer's lock).

use std::collections::HashMap;
use std::io::BufWriter;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use thiserror::Error;
use tracing::{error, info, warn};

use super::archiving::ArchiveWatch;
use super::config::{ConfigError, Settings, SyncCommit};
use super::control::{ControlFile, NodeState};
use super::datadir::{self, DataDir, DataDirError};
use super::standby::StandbyState;
use super::users::{User, UserError, Users};
use crate::durable::{io_cause, DirLock, LockError};
use crate::fence::EpochFile;
use crate::replication::conninfo::ConnInfo;
use crate::replication::slots::Slots;
use crate::replication::syncrep::WalSenders;
use crate::replication::walreceiver::{self, ReceiverStatus, WalReceiverHost};
use crate::replication::walsender::{Backup, WalSenderHost};
use crate::sql::exec::{Host, Rights, Session, Value};
use crate::sql::interrupt::Interrupt;
use crate::sql::parse::RoleStatement;
use crate::sql::row_locks::RowLocks;
use crate::sql::views::SystemView;
use crate::sqlstate::PgError;
use crate::store::snapshot;
use crate::store::{Db, DbError};
use crate::wal::payload::Payload;
use crate::wal::segment::list_segments_upto;
use crate::wal::verify::OwnRecord;
use crate::wal::writer::{archive_mark, ArchiveMark};
use crate::wal::{Lsn, SegmentName, SegmentSize, TimelineId, WalFileName, WalWriter};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{source}")]
    Lock {
        dir: PathBuf,
        #[source]
        source: LockError,
    },
    #[error(
        "could not listen on {addr}: {}{}",
        io_cause(source),
        listen_hint(source)
    )]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::node::promote_journal::JournalError),
    #[error("{}", io_cause(.0))]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Signal(#[from] nix::Error),
    #[error("{0}; the standby stopped (cleanly, at its last restartpoint): fix the cause and start it again, or rebuild it with walship basebackup")]
    ReplayFailed(String),
}

/// What to do about a listen failure.
fn listen_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "; is another server using the port? (set port or listen_addresses in walship.conf, or --listen)",
        std::io::ErrorKind::AddrNotAvailable => "; that address is not one of this host's (check listen_addresses in walship.conf, or --listen)",
        std::io::ErrorKind::InvalidInput => "; expected HOST:PORT (check listen_addresses and port, or metrics_listen_address, in walship.conf, or --listen)",
        _ => "",
    }
}

/// A running session, as the node sees it (for cancel and shutdown).
struct SessionHandle {
    key: i32,
    replication: bool,
    cancel: Arc<AtomicBool>,
    socket: Option<TcpStream>,
}

/// A running node: what sessions and background threads share.
pub struct Node {
    dir: PathBuf,
    settings: RwLock<Arc<Settings>>,
    users: RwLock<Users>,
    /// A role change is in force but the users file does not have it (its
    /// write failed): the next checkpoint writes it first. Changed only
    /// under the roles guard.
    users_file_stale: AtomicBool,
    /// Whether `archive_directory` can be read as an archive, for
    /// [`Node::watch_archive_reachable`].
    archive_reach: Mutex<ArchiveReach>,
    db: Db,
    /// Row locks of transaction blocks.
    row_locks: Arc<RowLocks>,
    control: Mutex<ControlFile>,
    /// The control file's mock authentication nonce, which never changes:
    /// read without the control lock, so a login for a role that does not
    /// exist never waits on a checkpoint when a real role's does not.
    pub(crate) mock_auth_nonce: [u8; 32],
    pub(crate) epoch: Mutex<EpochFile>,
    slots: Mutex<Slots>,
    checkpointing: Mutex<()>,
    sessions: Mutex<HashMap<i32, SessionHandle>>,
    /// Connections with a thread, those starting up included.
    connection_threads: std::sync::atomic::AtomicUsize,
    /// Connections refused since that was last logged, and when it was.
    refused: Mutex<(u64, Option<Instant>)>,
    next_pid: AtomicI32,
    shutting_down: AtomicBool,
    /// Wakes the background threads (shutdown, reload).
    wake: (Mutex<()>, Condvar),
    /// The insert LSN at the last checkpoint, for checkpoints by WAL volume.
    last_checkpoint_lsn: AtomicU64,
    /// Present when the node started as a standby (it stays after a
    /// promotion, for the walreceiver's last status).
    standby_state: Option<StandbyState>,
    /// Set once a promotion has made this standby a primary.
    promoted: AtomicBool,
    /// Set while a promotion stops the walreceiver.
    promoting: AtomicBool,
    /// A promotion under way still streams (its fence step).
    promotion_streams: AtomicBool,
    pub(crate) senders: WalSenders,
    /// Set at shutdown once the last WAL (the shutdown checkpoint) is
    /// flushed: walsenders send the rest and end.
    final_wal_written: AtomicBool,
    archive_watch: ArchiveWatch,
}

/// What a node knows of its `archive_directory`'s reachability.
#[derive(Default)]
struct ArchiveReach {
    /// The directory this is about.
    dir: PathBuf,
    /// It has been read as an archive.
    seen: bool,
    /// Since when it cannot be, and when that was last said.
    lost: Option<(Instant, Instant)>,
    /// When it was last said that its epoch file cannot be read.
    epoch_unreadable_said: Option<Instant>,
}

impl Node {
    /// The settings in force: a shared snapshot, replaced whole on reload,
    /// so reading them on every message costs a reference count, not a copy.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `synchronous_standby_names` this node's walsenders answer to:
    /// none on a standby, which waits for nobody (its cascaded standbys
    /// are all async, as PostgreSQL shows a cascading walsender's).
    pub fn sync_names_in_effect(&self) -> crate::replication::syncrep::SyncStandbyNames {
        match self.standby() {
            Some(_) => Default::default(),
            None => self.settings().synchronous_standby_names.clone(),
        }
    }

    /// Puts the roles of the ROLES record at `lsn` in force and writes them
    /// to the users file. A failed write leaves them in force and the file
    /// marked stale: the next checkpoint or restartpoint writes it first,
    /// or fails. Call with the roles guard held.
    fn install_users(&self, users: Users, lsn: Lsn) -> Result<(), UserError> {
        let written = users.write(&DataDir::new(&self.dir).users());
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
        self.users_file_stale
            .store(written.is_err(), Ordering::Release);
        if let Err(e) = &written {
            error!(lsn = %lsn, "the role change is in force, but the users file was not written (checkpoints write it first, or fail): {e}");
        }
        written
    }

    /// Writes the roles in force to the users file if an earlier write
    /// failed. Call with the roles guard held.
    fn write_stale_users_file(&self) -> Result<(), UserError> {
        if self.users_file_stale.load(Ordering::Acquire) {
            self.users_now().write(&DataDir::new(&self.dir).users())?;
            self.users_file_stale.store(false, Ordering::Release);
            info!("wrote the users file a role change had failed to write");
        }
        Ok(())
    }

    /// The roles in force.
    fn users_now(&self) -> Users {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn user(&self, name: &str) -> Option<User> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Starts a clean shutdown: every loop sees it, and `wake` (the accept
    /// loop's pipe) ends its wait.
    fn begin_shutdown(&self, wake: &std::os::fd::OwnedFd) {
        self.shutting_down.store(true, Ordering::Release);
        let _ = nix::unistd::write(wake, b"x");
        self.wake_all();
        self.row_locks.shut_down();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Client sessions (walsenders not counted).
    pub fn session_count(&self) -> usize {
        self.lock_sessions()
            .values()
            .filter(|s| !s.replication)
            .count()
    }

    pub fn walsender_count(&self) -> usize {
        self.lock_sessions()
            .values()
            .filter(|s| s.replication)
            .count()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<i32, SessionHandle>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; returns its process id and cancel key.
    pub fn register(&self, writer: &BufWriter<TcpStream>, replication: bool) -> (i32, i32) {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        let key: i32 = rand::random();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                pid,
                SessionHandle {
                    key,
                    replication,
                    cancel: Arc::new(AtomicBool::new(false)),
                    socket: writer.get_ref().try_clone().ok(),
                },
            );
        (pid, key)
    }

    pub fn unregister(&self, pid: i32) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        self.wake.1.notify_all();
    }

    /// A CancelRequest: flags the session if the key matches.
    pub fn cancel(&self, pid: i32, key: i32) {
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
        {
            if s.key == key {
                s.cancel.store(true, Ordering::Release);
                info!(pid, "cancel request received");
            }
        }
    }

    /// The standby's state while the node is a standby (not after it was
    /// promoted).
    pub fn standby(&self) -> Option<&StandbyState> {
        if self.promoted.load(Ordering::Acquire) {
            None
        } else {
            self.standby_state.as_ref()
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// WAL waiting for the archiver, as last measured.
    pub fn archive_backlog(&self) -> crate::archive::archiver::Backlog {
        if self.settings().archive_mode && self.standby().is_none() {
            self.archive_watch.backlog()
        } else {
            Default::default()
        }
    }

    /// The first segment given up by `abandon_archive`, if any.
    pub fn archive_gap(&self) -> Option<String> {
        self.archive_watch.gap()
    }

    /// Why writes are refused for the archive backlog, if they are.
    pub fn archive_refusal(&self) -> Option<String> {
        self.archive_watch.refusal_reason()
    }

    /// The walreceiver's status, on a standby.
    pub fn receiver_snapshot(&self) -> Option<ReceiverStatus> {
        self.standby_state.as_ref().map(|s| s.receiver().clone())
    }

    /// The flag a CancelRequest for session `pid` raises.
    pub fn cancel_flag(&self, pid: i32) -> Option<Arc<AtomicBool>> {
        self.lock_sessions().get(&pid).map(|s| s.cancel.clone())
    }

    /// The ParameterStatus messages a PostgreSQL 15 server sends at startup.
    pub fn startup_parameters(&self, session: &Session) -> Vec<(String, String)> {
        let p = |n: &str| session.param(n).unwrap_or_default().to_string();
        vec![
            ("application_name".into(), p("application_name")),
            ("client_encoding".into(), p("client_encoding")),
            ("DateStyle".into(), p("datestyle")),
            ("default_transaction_read_only".into(), "off".into()),
            (
                "in_hot_standby".into(),
                if self.standby().is_some() {
                    "on"
                } else {
                    "off"
                }
                .into(),
            ),
            ("integer_datetimes".into(), "on".into()),
            ("IntervalStyle".into(), p("intervalstyle")),
            (
                "is_superuser".into(),
                if self.rights(session.user()).superuser {
                    "on"
                } else {
                    "off"
                }
                .into(),
            ),
            ("server_encoding".into(), "UTF8".into()),
            ("server_version".into(), SERVER_VERSION.into()),
            ("session_authorization".into(), session.user().into()),
            ("standard_conforming_strings".into(), "on".into()),
            ("TimeZone".into(), p("timezone")),
        ]
    }

    /// Shuts the read side of every client session's socket (with
    /// `replication`, of every walsender's) so its blocked read returns.
    fn shut_sessions(&self, replication: bool) {
        for s in self
            .lock_sessions()
            .values()
            .filter(|s| s.replication == replication)
        {
            if let Some(sock) = &s.socket {
                let _ = sock.shutdown(std::net::Shutdown::Read);
            }
        }
    }

    fn wake_all(&self) {
        let _g = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.1.notify_all();
    }

    /// Sleeps up to `d`, or until woken.
    pub(crate) fn nap(&self, d: Duration) {
        self.nap_unless(d, || false);
    }

    /// [`Node::nap`], but not at all if `done` says so. `done` is asked
    /// under the lock [`Node::wake_all`] takes, so a flag set before a
    /// wake-up is never missed.
    fn nap_unless(&self, d: Duration, done: impl Fn() -> bool) {
        let g = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_shutting_down() && !done() {
            let _ = self.wake.1.wait_timeout(g, d);
        }
    }

    /// Runs a checkpoint: record, snapshot, control file, then removes the
    /// snapshots and WAL segments it made unnecessary.
    pub fn checkpoint(&self, state: NodeState) -> Result<Lsn, DataDirError> {
        // One checkpoint at a time (checkpointer, CHECKPOINT, shutdown): an
        // older one finishing after a newer would move the control file
        // back to a checkpoint whose WAL the newer one removed.
        let _one_at_a_time = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_locked(state)
    }

    /// [`Node::checkpoint`], with the checkpoint lock held.
    fn checkpoint_locked(&self, state: NodeState) -> Result<Lsn, DataDirError> {
        let started = Instant::now();
        let roles = self.db.lock_roles();
        self.write_stale_users_file()?;
        let last = || {
            self.control
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .checkpoint
        };
        let (lsn, rows) = match self.standby() {
            // A fenced node writes no WAL, not a checkpoint record either:
            // its WAL ends where it told the promoter when fenced, which is
            // where the new primary's timeline begins, so the standbys
            // still streaming from it can follow the new primary.
            None => match self.db.checkpoint(&roles) {
                Err(DbError::Fenced(_)) => return Ok(last()),
                done => done?,
            },
            // A standby cannot write a checkpoint record: it makes a
            // restartpoint at the last checkpoint record it replayed.
            Some(standby) => match standby.take_restart_point() {
                Some(point) => point,
                None => return Ok(last()),
            },
        };
        drop(roles);
        let dir = DataDir::new(&self.dir);
        snapshot::write(&dir.checkpoints(), lsn, &rows)?;
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        datadir::record_checkpoint(&self.dir, &mut control, lsn, state)?;
        let keep_from = self.retention_start(lsn)?;
        let archived_here = self.settings().archive_mode && self.standby().is_none();
        let removed = remove_old_segments(&dir, &control, keep_from, archived_here)?;
        self.last_checkpoint_lsn
            .store(self.db.wal().insert_lsn().0, Ordering::Release);
        info!(
            checkpoint = %lsn,
            rows = rows.len(),
            removed_segments = removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint complete"
        );
        Ok(lsn)
    }

    /// The oldest WAL to keep after a checkpoint at `checkpoint`: what
    /// recovery, the slots, the connected standbys and `wal_keep_size`
    /// need — with slots past `max_slot_wal_keep_size` invalidated first,
    /// loudly, so a standby that is away can never fill the disk.
    fn retention_start(&self, checkpoint: Lsn) -> Result<Lsn, DataDirError> {
        let settings = self.settings();
        let insert = self.db.wal().insert_lsn();
        let mut slots = self.lock_slots();
        let mut floor = Lsn::INVALID;
        if let Some(max) = settings.max_slot_wal_keep_size {
            floor = Lsn(insert.0.saturating_sub(max));
            for (name, held) in slots.invalidate_before(floor)? {
                error!(
                    slot = %name,
                    restart_lsn = %held,
                    held_bytes = insert.0 - held.0,
                    "replication slot invalidated: it held more WAL than max_slot_wal_keep_size allows; its standby must be rebuilt (walship basebackup) or restored from the archive"
                );
            }
        }
        let mut keep = checkpoint;
        if let Some(slot) = slots.oldest_needed() {
            keep = keep.min(slot);
        }
        drop(slots);
        if let Some(standby) = self.senders.oldest_needed() {
            keep = keep.min(standby.max(floor));
        }
        if settings.wal_keep_size > 0 {
            keep = keep.min(Lsn(insert.0.saturating_sub(settings.wal_keep_size)));
        }
        Ok(keep)
    }

    fn reload(&self) {
        let dir = DataDir::new(&self.dir);
        match Settings::load(&dir.conf()) {
            Ok(new) => {
                let mut current = self.settings.write().unwrap_or_else(|p| p.into_inner());
                for name in new.restart_only_changes(&current) {
                    warn!(
                        setting = name,
                        "changed in walship.conf, but takes effect only after a restart"
                    );
                }
                *current = Arc::new(new.reloadable_from(&current));
                drop(current);
                info!("reloaded walship.conf");
                // Waiting commits look at synchronous_standby_names again.
                self.senders.wake_all();
            }
            Err(e) => error!("walship.conf not reloaded, the old settings stay in force: {e}"),
        }
        {
            // A file that lacks a change in force is written before it is
            // read, so a reload never undoes a role change.
            let roles = self.db.lock_roles();
            match self
                .write_stale_users_file()
                .and_then(|()| Users::read(&dir.users()))
            {
                Ok(users) if users == self.users_now() => {}
                // A standby's edit lasts until the primary's next change.
                Ok(users) if self.standby().is_some() => {
                    *self.users.write().unwrap_or_else(|p| p.into_inner()) = users
                }
                // A primary logs the edit as a role change, so that crash
                // recovery (which rewrites the file from the ROLES records
                // after the checkpoint) and the standbys keep it too.
                Ok(users) => match roles.log(&users.to_text()) {
                    Ok(end) => {
                        info!(lsn = %end, "the users file was edited by hand: its roles are in force and logged in the WAL, for the standbys and crash recovery");
                        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
                    }
                    Err(e) => error!("users file not reloaded: its roles could not be logged in the WAL ({e}), so the roles in force stay"),
                },
                Err(e) => error!("users file not reloaded, the roles in force stay: {e}"),
            }
        }
        warn_roles_without_password(
            &self.settings(),
            &self.users.read().unwrap_or_else(|p| p.into_inner()),
            &dir.users(),
        );
        self.wake_all();
    }
}

impl Node {
    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WalSenderHost for Node {
    fn wal(&self) -> &WalWriter {
        self.db.wal()
    }
    fn system_id(&self) -> u64 {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .system_id
    }
    fn timeline(&self) -> TimelineId {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .timeline
    }
    fn seg_size(&self) -> SegmentSize {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seg_size
    }
    fn wal_dir(&self) -> PathBuf {
        DataDir::new(&self.dir).wal()
    }
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.lock_slots()
    }
    fn show(&self, name: &str) -> Option<String> {
        Host::show(self, name).or_else(|| Node::settings(self).show(name))
    }
    fn sender_timeout(&self) -> Duration {
        Node::settings(self).wal_sender_timeout
    }
    /// Often enough that a live standby is never taken for a dead one,
    /// by wal_sender_timeout or by isolation self-fencing: half of each.
    fn keepalive_interval(&self) -> Duration {
        let s = Node::settings(self);
        [s.wal_sender_timeout, s.isolation_fence_timeout]
            .into_iter()
            .filter(|t| !t.is_zero())
            .map(|t| t / 2)
            .fold(Duration::from_secs(10), Duration::min)
    }
    fn max_message_size(&self) -> usize {
        Node::settings(self).max_message_size
    }
    fn is_shutting_down(&self) -> bool {
        Node::is_shutting_down(self)
    }
    fn senders(&self) -> &WalSenders {
        &self.senders
    }
    fn final_wal_written(&self) -> bool {
        self.final_wal_written.load(Ordering::Acquire)
    }
    fn base_backup_sent(&self, backup: &Backup) {
        // The archive restores from this backup on, past a gap before it
        // (a primary's gap: a standby's primary archives).
        if self.standby().is_some() {
            return;
        }
        let size = WalSenderHost::seg_size(self);
        let start = SegmentName::new(backup.timeline, backup.start.segno(size));
        self.archive_watch
            .base_backup_taken(&self.dir, &start.file_name(size));
    }
    /// A primary's backup begins at a checkpoint made for it; a standby's
    /// at a restartpoint (its last, if it has replayed no checkpoint
    /// record since), as PostgreSQL's from a standby does. Either way the
    /// copy holds the snapshot at its start and the WAL from there to the
    /// node's flush position.
    fn base_backup(&self) -> Result<Backup, PgError> {
        // Hold the checkpoint lock throughout: no later checkpoint may
        // remove the snapshot or the WAL this backup is made of.
        let _no_checkpoints = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let io = |e: String| PgError::new(crate::sqlstate::code::IO_ERROR, e);
        let started = std::time::SystemTime::now();
        let start = self
            .checkpoint_locked(NodeState::InProduction)
            .map_err(|e| io(format!("checkpoint for the base backup failed: {e}")))?;
        let dir = DataDir::new(&self.dir);
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| io(format!("could not read \"{}\": {e}", path.display())))
        };
        let mut files = Vec::new();
        for (name, path) in [
            ("walship.conf", dir.conf()),
            ("users", dir.users()),
            ("epoch", dir.epoch()),
        ] {
            files.push((name.to_string(), read(&path)?));
        }
        let snap = snapshot::path_for(&dir.checkpoints(), start);
        let snap_name = snap
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((format!("checkpoints/{snap_name}"), read(&snap)?));
        let (seg_size, timeline) = (WalSenderHost::seg_size(self), WalSenderHost::timeline(self));
        let end = self.db.wal().flushed_lsn();
        let last = Lsn(end.0 - 1).segno(seg_size);
        let mut segno = start.segno(seg_size);
        // A standby's restartpoint may lie before a timeline switch it
        // followed: those segments are named for the older timeline.
        let history = crate::wal::history::TimelineHistory::read_in(&dir.wal(), timeline);
        while segno <= last {
            let mut path = crate::wal::segment::segment_path(&dir.wal(), timeline, segno, seg_size);
            if let (false, Some(h)) = (path.exists(), &history) {
                let older = h.timeline_of(segno.start_lsn(seg_size), timeline);
                path = crate::wal::segment::segment_path(&dir.wal(), older, segno, seg_size);
            }
            let mut bytes = read(&path)?;
            if segno == last {
                // Only flushed WAL leaves the primary.
                let from = (end.0 - segno.start_lsn(seg_size).0) as usize;
                let from = from.min(bytes.len());
                bytes[from..].fill(0);
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((format!("wal/{name}"), bytes));
            segno = segno.next();
        }
        // Every timeline history file, as pg_basebackup's WAL has them: a
        // promotion of the copy extends the newest, which must list every
        // ancestor; and a standby of the copy may ask for any.
        let listing = std::fs::read_dir(dir.wal())
            .map_err(|e| io(format!("could not read \"{}\": {e}", dir.wal().display())))?;
        for entry in listing {
            let entry = entry
                .map_err(|e| io(format!("could not read \"{}\": {e}", dir.wal().display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(WalFileName::History(_)) = WalFileName::parse(&name, seg_size) {
                files.push((format!("wal/{name}"), read(&entry.path())?));
            }
        }
        if self.settings().archive_mode && self.standby().is_none() {
            self.write_backup_history(start, end, timeline, started)
                .map_err(|e| io(format!("could not write the backup history file: {e}")))?;
        }
        // The control file last: it is what makes the copy a data directory.
        files.push(("control".into(), read(&dir.control())?));
        Ok(Backup {
            start,
            end,
            timeline,
            files,
        })
    }
}

impl Node {
    /// Writes PostgreSQL's backup history file for a base backup from
    /// `start` to `end` (`wal/SEGNAME.OOOOOOOO.backup`) and marks it for the
    /// archiver: `walship cleanup` keeps everything the newest one needs.
    /// Older backup history files the archiver is done with are removed.
    fn write_backup_history(
        &self,
        start: Lsn,
        end: Lsn,
        timeline: TimelineId,
        started: std::time::SystemTime,
    ) -> Result<(), crate::durable::FileError> {
        let size = WalSenderHost::seg_size(self);
        let wal_dir = DataDir::new(&self.dir).wal();
        let seg_of = |lsn: Lsn| SegmentName::new(timeline, lsn.segno(size));
        let name = seg_of(start).backup_file_name(size, start.segment_offset(size) as u32);
        let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let text = format!(
            "START WAL LOCATION: {start} (file {})\nSTOP WAL LOCATION: {end} (file {})\n\
             CHECKPOINT LOCATION: {start}\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
             START TIME: {}\nLABEL: walship basebackup\nSTART TIMELINE: {timeline}\n\
             STOP TIME: {}\nSTOP TIMELINE: {timeline}\n",
            seg_of(start).file_name(size),
            seg_of(end).file_name(size),
            time(started),
            time(std::time::SystemTime::now()),
        );
        for entry in std::fs::read_dir(&wal_dir).into_iter().flatten().flatten() {
            let old = entry.file_name().to_string_lossy().into_owned();
            let done = archive_mark(&wal_dir, &old, ArchiveMark::Done);
            if matches!(WalFileName::parse(&old, size), Ok(WalFileName::Backup(..)))
                && done.exists()
            {
                crate::durable::remove_file(&entry.path())?;
                crate::durable::remove_file(&done)?;
            }
        }
        crate::durable::replace_file(&wal_dir.join(&name), text.as_bytes())?;
        crate::wal::writer::mark_ready(&wal_dir, &name)
    }

    /// Isolation self-fencing: with `isolation_fence_timeout` set, a
    /// primary that has heard from no standby that long (counted from its
    /// start or promotion until the first report) refuses writes until one
    /// reports.
    fn isolation(&self) -> Option<PgError> {
        let timeout = self.settings().isolation_fence_timeout;
        if timeout.is_zero() {
            return None;
        }
        let silent = self.senders.silent_for();
        (silent > timeout).then(|| {
            PgError::new(
                crate::sqlstate::code::READ_ONLY_TRANSACTION,
                format!(
                    "this primary is isolated: no standby has reported for {} s (isolation_fence_timeout = {} s), so it takes no writes a promotion elsewhere could lose",
                    silent.as_secs(),
                    timeout.as_secs()
                ),
            )
            .with_hint("writes resume as soon as a standby reports again; check the network between this node and its standbys")
        })
    }

    /// A primary fences itself when the archive (`archive_directory`)
    /// records a higher epoch than its own: a standby was promoted while
    /// this node was cut off or down. Checked at start and every second.
    fn check_archive_epoch(&self) {
        let settings = self.settings();
        if self.standby().is_some() || settings.archive_directory.is_empty() {
            return;
        }
        let adir = std::path::Path::new(&settings.archive_directory);
        self.watch_archive_reachable(adir);
        let highest = match crate::fence::archive::highest(adir) {
            Ok(Some(highest)) => highest,
            Ok(None) => return,
            Err(e) => {
                let mut reach = self.archive_reach.lock().unwrap_or_else(|p| p.into_inner());
                if reach
                    .epoch_unreadable_said
                    .is_none_or(|said| said.elapsed() >= Duration::from_secs(60))
                {
                    error!(archive = %adir.display(), "cannot tell from the archive whether this node is fenced: {e}");
                    reach.epoch_unreadable_said = Some(Instant::now());
                }
                match e.claimed {
                    Some(claimed) => claimed,
                    None => return,
                }
            }
        };
        let ep = *self.lock_epoch();
        if highest <= ep.epoch || ep.fenced_by.is_some_and(|f| f >= highest) {
            return;
        }
        warn!(archive = %adir.display(), epoch = %highest, "the archive records epoch {highest}, newer than this node's {}: fencing", ep.epoch);
        if let Err(e) = Host::fence(self, highest.0) {
            error!("could not fence this node for epoch {highest}: {e}");
        }
    }

    /// Says, loudly and every minute, when `adir` stops being readable as
    /// an archive (unmounted, removed, permissions), and when it is back:
    /// while it is gone, fencing through the archive cannot reach this
    /// node, and archiving fails.
    fn watch_archive_reachable(&self, adir: &std::path::Path) {
        const REPEAT: Duration = Duration::from_secs(60);
        let readable = adir.join(crate::archive::store::IDENTITY).is_file();
        let mut reach = self.archive_reach.lock().unwrap_or_else(|p| p.into_inner());
        if reach.dir != adir {
            // A new archive_directory (reloaded): nothing known of it yet.
            *reach = ArchiveReach {
                dir: adir.to_path_buf(),
                ..ArchiveReach::default()
            };
        }
        let now = Instant::now();
        match (reach.lost, readable) {
            (Some((since, _)), true) => {
                info!(archive = %adir.display(), "archive_directory is readable again (after {} s)", since.elapsed().as_secs());
                reach.lost = None;
            }
            (Some((since, said)), false) if now.duration_since(said) >= REPEAT => {
                warn!(archive = %adir.display(), "archive_directory still cannot be read as an archive ({} s now): mount it or fix its permissions", since.elapsed().as_secs());
                reach.lost = Some((since, now));
            }
            (None, false) if reach.seen => {
                warn!(archive = %adir.display(), "archive_directory cannot be read as an archive any more (unmounted, removed, or its permissions changed): archiving fails, and a promotion elsewhere cannot fence this node through it; mount it or fix its permissions");
                reach.lost = Some((now, now));
            }
            (None, true) => reach.seen = true,
            _ => {}
        }
    }

    pub(crate) fn lock_epoch(&self) -> std::sync::MutexGuard<'_, EpochFile> {
        self.epoch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `next` this node's epoch file: durably on disk first, then in
    /// `held` (the caller's lock on it), so a restart never reads less
    /// than this process acts on. When the file says the node is not
    /// fenced, the store takes writes again, as it would after a restart.
    pub(crate) fn persist_epoch(
        &self,
        held: &mut std::sync::MutexGuard<'_, EpochFile>,
        next: EpochFile,
    ) -> Result<(), crate::meta::MetaError> {
        next.write(&DataDir::new(&self.dir).epoch())?;
        // The store's fence follows the file, as at startup: a node that
        // is no longer fenced (promoted above the epoch that fenced it)
        // takes writes without a restart.
        if next.fenced_by.is_none() {
            self.db.lift_fence();
        }
        **held = next;
        Ok(())
    }

    pub(crate) fn lock_control(&self) -> std::sync::MutexGuard<'_, ControlFile> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn is_promoting(&self) -> bool {
        self.promoting.load(Ordering::Acquire)
    }

    /// Starts or ends a promotion: while one is under way the walreceiver
    /// stops (its connection is cut at once, unless the promotion streams
    /// on: see [`Node::set_promoting_streaming`]) and no write is taken.
    pub(crate) fn set_promoting(&self, on: bool) {
        self.promoting.store(on, Ordering::Release);
        if on && !self.promotion_streams.load(Ordering::Acquire) {
            if let Some(i) = self
                .standby_state
                .as_ref()
                .and_then(|s| s.receiver().interrupter.clone())
            {
                i.interrupt();
            }
        }
        self.wake_all();
    }

    /// Starts a promotion whose walreceiver streams on (`streaming`: its
    /// fence step, to receive what the old primary wrote before it was
    /// fenced), or stops that streaming. No write is taken either way.
    pub(crate) fn set_promoting_streaming(&self, streaming: bool) {
        self.promotion_streams.store(streaming, Ordering::Release);
        self.set_promoting(true);
    }

    pub(crate) fn set_promoted(&self) {
        self.promoted.store(true, Ordering::Release);
    }

    pub(crate) fn receiver_stopped(&self) -> bool {
        self.standby_state
            .as_ref()
            .is_none_or(|s| s.receiver().status == "stopped")
    }
}

impl WalReceiverHost for Node {
    fn wal(&self) -> &WalWriter {
        self.db.wal()
    }
    fn receiver_timeout(&self) -> Duration {
        Node::settings(self).wal_receiver_timeout
    }
    fn system_id(&self) -> u64 {
        WalSenderHost::system_id(self)
    }
    fn timeline(&self) -> TimelineId {
        WalSenderHost::timeline(self)
    }
    fn seg_size(&self) -> SegmentSize {
        WalSenderHost::seg_size(self)
    }
    fn primary(&self) -> Option<(ConnInfo, Option<String>)> {
        let s = Node::settings(self);
        if s.primary_conninfo.is_empty() {
            return None;
        }
        let mut info = ConnInfo::parse(&s.primary_conninfo).ok()?;
        if info.application_name.is_none() {
            info.application_name = Some(s.node_name.clone());
        }
        let slot = (!s.primary_slot_name.is_empty()).then(|| s.primary_slot_name.clone());
        Some((info, slot))
    }
    fn replay(&self, records: &[OwnRecord], upto: Lsn) -> Result<(), String> {
        let Some(standby) = &self.standby_state else {
            return Err("replay on a node that is not a standby".into());
        };
        // Taken before the rows' lock, as everywhere.
        let _roles = self.db.lock_roles();
        self.db.replay(|store| {
            for r in records {
                match Payload::decode(r.info, &r.data) {
                    Ok(Payload::Commit(ops)) => store
                        .apply_record(&ops, r.end)
                        .map_err(|e| format!("record at {}: {e}", r.lsn))?,
                    Ok(Payload::Checkpoint { .. }) => {
                        standby.offer_restart_point(r.lsn, store.clone())
                    }
                    // (A file left unwritten is written before the next
                    // restartpoint, past which this record is not replayed.)
                    Ok(Payload::Roles(text)) => {
                        let users = Users::from_record(text, r.lsn).map_err(|e| e.to_string())?;
                        info!(lsn = %r.end, roles = users.users.len(), "replayed a role change");
                        let _ = self.install_users(users, r.end);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("record at {}: {e}", r.lsn)),
                }
            }
            Ok(())
        })?;
        if upto != Lsn::INVALID {
            standby.set_replayed(upto);
        }
        Ok(())
    }
    fn epoch(&self) -> u64 {
        self.lock_epoch().epoch.0
    }
    fn adopt_epoch(&self, epoch: u64) -> Result<(), String> {
        let mut ep = self.lock_epoch();
        if epoch > ep.epoch.0 {
            let adopted = EpochFile {
                epoch: crate::fence::Epoch(epoch),
                fenced_by: None,
                ..*ep
            };
            self.persist_epoch(&mut ep, adopted)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    fn follow_timeline(&self, next: TimelineId, switch: Lsn) -> Result<(), String> {
        let wal = self.db.wal();
        let size = WalSenderHost::seg_size(self);
        // The upstream may have sent the first part of a record its
        // promotion then dropped (the new timeline begins where its last
        // whole record ends): that part is none of the new timeline's.
        if wal.insert_lsn() > switch
            && crate::wal::writer::ends_at(wal.complete_lsn(), switch, size)
        {
            wal.discard_partial_record().map_err(|e| e.to_string())?;
        }
        let end = wal.insert_lsn();
        if !crate::wal::writer::ends_at(end, switch, size) {
            return Err(format!(
                "the upstream switched to timeline {next} at {switch}, but this standby's WAL ends at {end}"
            ));
        }
        wal.switch_timeline(next).map_err(|e| e.to_string())?;
        let mut control = self.lock_control();
        control.timeline = next;
        control
            .write(&DataDir::new(&self.dir).control())
            .map_err(|e| e.to_string())?;
        Ok(())
    }
    fn restore_command(&self) -> Option<String> {
        let command = Node::settings(self).restore_command.clone();
        (!command.is_empty()).then_some(command)
    }
    fn restart_point(&self) -> Lsn {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .checkpoint
    }
    fn wal_dir(&self) -> PathBuf {
        DataDir::new(&self.dir).wal()
    }
    fn replayed_lsn(&self) -> Lsn {
        self.standby_state
            .as_ref()
            .map(StandbyState::replayed)
            .unwrap_or(Lsn::INVALID)
    }
    fn receiver_status(&self) -> std::sync::MutexGuard<'_, ReceiverStatus> {
        match &self.standby_state {
            Some(s) => s.receiver(),
            None => unreachable!("only a standby runs a walreceiver"),
        }
    }
    fn is_shutting_down(&self) -> bool {
        Node::is_shutting_down(self)
    }
    fn paused(&self) -> bool {
        (self.is_promoting() && !self.promotion_streams.load(Ordering::Acquire))
            || self.promoted.load(Ordering::Acquire)
    }
    fn nap(&self, d: Duration) {
        // A promotion that begins just before the walreceiver naps is not
        // missed.
        self.nap_unless(d, || self.paused());
    }
}

/// What `server_version` says: a PostgreSQL 15 server, so clients gated on
/// the version (pg_receivewal 15, psql) accept it.
pub const SERVER_VERSION: &str = "15.0";

impl Host for Node {
    fn db(&self) -> &Db {
        &self.db
    }
    fn row_locks(&self) -> &Arc<RowLocks> {
        &self.row_locks
    }
    fn settings(&self) -> Arc<Settings> {
        Node::settings(self)
    }
    fn in_recovery(&self) -> bool {
        self.standby().is_some()
    }
    fn write_refusal(&self) -> Option<PgError> {
        if self.is_promoting() {
            return Some(
                PgError::new(
                    crate::sqlstate::code::READ_ONLY_TRANSACTION,
                    "this node is being promoted: it takes writes once the promotion is finished",
                )
                .with_hint(
                    "retry in a moment; if it lasts, the node's log says why the promotion stopped",
                ),
            );
        }
        if self.standby().is_none() {
            return self.isolation().or_else(|| self.archive_watch.refusal());
        }
        // Its upstream may be the primary or, cascading, another standby:
        // it is named for what it is here.
        let upstream = self.settings().show("primary_conninfo").unwrap_or_default();
        let from = if upstream.is_empty() {
            "it has no upstream and restores from the archive".to_string()
        } else {
            format!("it streams from {upstream}")
        };
        Some(
            PgError::new(
                crate::sqlstate::code::READ_ONLY_TRANSACTION,
                format!("this node is a standby: it takes no writes ({from})"),
            )
            .with_hint("send writes to the primary; reads here see what the standby has replayed"),
        )
    }
    fn show(&self, name: &str) -> Option<String> {
        let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        Some(match name {
            "server_version" => SERVER_VERSION.into(),
            "server_version_num" => "150000".into(),
            "server_encoding" => "UTF8".into(),
            "integer_datetimes" => "on".into(),
            "standard_conforming_strings" => "on".into(),
            "wal_segment_size" => control.seg_size.to_string(),
            "wal_block_size" => "8192".into(),
            "block_size" => "8192".into(),
            "data_directory" => self.dir.display().to_string(),
            "data_directory_mode" => "0700".into(),
            "max_identifier_length" => "63".into(),
            "password_encryption" => "scram-sha-256".into(),
            "system_identifier" => control.system_id.to_string(),
            "timeline" => control.timeline.to_string(),
            "epoch" => self.lock_epoch().epoch.to_string(),
            "fenced_by" => self
                .lock_epoch()
                .fenced_by
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "in_hot_standby" => if self.standby().is_some() {
                "on"
            } else {
                "off"
            }
            .into(),
            _ => return None,
        })
    }
    fn last_receive_lsn(&self) -> Option<Lsn> {
        self.standby().as_ref().map(|_| self.db.wal().flushed_lsn())
    }
    fn last_replay_lsn(&self) -> Option<Lsn> {
        self.standby().map(StandbyState::replayed)
    }
    fn wait_for_lsn(
        &self,
        lsn: Lsn,
        timeout: Option<Duration>,
        interrupt: &Interrupt,
    ) -> Result<(), PgError> {
        if let Some(standby) = self.standby() {
            return standby.wait_for_replay(lsn, timeout, interrupt);
        }
        // A primary: wait for the flush (its WAL is its own, so only an
        // asynchronous commit's can be behind).
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let flushed = self.db.wal().flushed_lsn();
            if flushed >= lsn {
                return Ok(());
            }
            if lsn > self.db.wal().insert_lsn() {
                return Err(PgError::new(
                    crate::sqlstate::code::INVALID_PARAMETER_VALUE,
                    format!(
                        "LSN {lsn} is beyond the end of this primary's WAL ({})",
                        self.db.wal().insert_lsn()
                    ),
                ));
            }
            interrupt.check().map_err(|why| why.statement_error())?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(PgError::new(
                    crate::sqlstate::code::QUERY_CANCELED,
                    format!("timed out while waiting for target LSN {lsn} to be flushed; current flush LSN {flushed}"),
                ));
            }
            self.db
                .wal()
                .wait_flushed_beyond(flushed, interrupt.nap(Duration::from_millis(50)));
        }
    }
    fn view_rows(&self, view: SystemView) -> Vec<Vec<Option<Value>>> {
        self.rows_of(view)
    }
    fn fence(&self, epoch: u64) -> Result<(), PgError> {
        let io = |e: String| PgError::new(crate::sqlstate::code::IO_ERROR, e);
        // A node being promoted takes no writes yet, so there is nothing to
        // fence; and the order may be its own promotion's, come back to it
        // (its fence reached the address the old primary had).
        if self.is_promoting() {
            return Err(PgError::new(
                crate::sqlstate::code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("this node is being promoted: the fence order for epoch {epoch} is refused (it takes no writes until its promotion finishes)"),
            ));
        }
        let mut ep = self.lock_epoch();
        if epoch <= ep.epoch.0 {
            return Err(PgError::new(
                crate::sqlstate::code::INVALID_PARAMETER_VALUE,
                format!("epoch {epoch} is not newer than this node's epoch {}: the fence order is refused", ep.epoch),
            ));
        }
        if ep.fenced_by.is_none_or(|f| f.0 < epoch) {
            let fenced = EpochFile {
                fenced_by: Some(crate::fence::Epoch(epoch)),
                ..*ep
            };
            // Persisted before anything else: a restart stays fenced.
            self.persist_epoch(&mut ep, fenced)
                .map_err(|e| io(format!("could not persist the fence: {e}")))?;
        }
        // Under the epoch lock, so a promotion's lift cannot come between
        // the file and the store.
        self.db.fence(epoch).map_err(crate::sql::exec::db_error)?;
        drop(ep);
        // Commits waiting for standbys end now, unacknowledged.
        self.senders.wake_all();
        error!(
            epoch,
            "FENCED: a standby was promoted to epoch {epoch}; this node takes no more writes"
        );
        Ok(())
    }
    fn promote(&self, interrupt: &Interrupt) -> Result<(), PgError> {
        if self.standby().is_none() {
            return Err(PgError::new(
                crate::sqlstate::code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "recovery is not in progress",
            )
            .with_hint("pg_promote() promotes a standby; this node is a primary"));
        }
        let dir = DataDir::new(&self.dir);
        crate::node::promote::request(&dir.root, &Default::default())
            .map_err(|e| PgError::new(crate::sqlstate::code::IO_ERROR, e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.standby().is_none() && !self.is_promoting() {
                return Ok(());
            }
            if let Ok(why) =
                std::fs::read_to_string(dir.root.join(crate::node::promote::PROMOTE_FAILED))
            {
                return Err(PgError::new(
                    crate::sqlstate::code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    why,
                ));
            }
            // As PostgreSQL's: the wait ends, the promotion goes on.
            interrupt.check().map_err(|why| why.statement_error())?;
            std::thread::sleep(interrupt.nap(Duration::from_millis(20)));
        }
        Err(PgError::new(
            crate::sqlstate::code::QUERY_CANCELED,
            "the promotion did not finish within 60 s; see the log",
        ))
    }
    fn wait_for_sync(
        &self,
        lsn: Lsn,
        level: SyncCommit,
        interrupt: &Interrupt,
    ) -> Result<Option<PgError>, PgError> {
        if self.sync_names_in_effect().is_empty() {
            return Ok(None);
        }
        self.senders.wait(
            lsn,
            level,
            &|| self.sync_names_in_effect(),
            interrupt,
            &|| self.is_shutting_down(),
            &|| self.db.fenced_by(),
        )
    }
    fn change_roles(
        &self,
        by: &str,
        statements: &[RoleStatement],
    ) -> Result<(Option<Lsn>, Vec<PgError>), PgError> {
        // Checked first, so that no role can make the server hash a
        // password it may not set; hashed before the guard, so that no
        // checkpoint waits on PBKDF2.
        super::roles::check(&self.users_now(), by, statements)?;
        let statements = statements
            .iter()
            .map(super::roles::with_verifier)
            .collect::<Result<Vec<_>, _>>()?;
        let statements = &statements[..];
        let guard = self.db.lock_roles();
        let before = self.users_now();
        let (users, notices) = super::roles::apply(&before, by, statements)?;
        if users == before {
            return Ok((None, notices));
        }
        let end = guard
            .log(&users.to_text())
            .map_err(crate::sql::exec::db_error)?;
        for statement in statements {
            info!(by = %by, lsn = %end, "{statement}");
        }
        let mut notices = notices;
        // The change is made whatever the file: a warning, not an error a
        // client would retry.
        if let Err(e) = self.install_users(users, end) {
            notices.push(PgError::new(
                crate::sqlstate::code::IO_ERROR,
                format!("the role change is logged (at {end}) and in force, but {e}"),
            )
            .with_hint("free space or fix the file's directory: the next checkpoint writes the file, and fails until it can"));
        }
        Ok((Some(end), notices))
    }
    fn check_roles(
        &self,
        by: &str,
        done: &[RoleStatement],
        next: &RoleStatement,
    ) -> Result<(RoleStatement, Vec<PgError>), PgError> {
        let (users, _) = super::roles::apply(&self.users_now(), by, done)?;
        let notices = super::roles::check(&users, by, std::slice::from_ref(next))?;
        Ok((super::roles::with_verifier(next)?, notices))
    }
    fn rights(&self, name: &str) -> Rights {
        self.user(name).map_or_else(Rights::default, |u| Rights {
            superuser: u.superuser,
            replication: u.replication,
        })
    }
    fn checkpoint(&self) -> Result<Lsn, PgError> {
        Node::checkpoint(self, NodeState::InProduction).map_err(|e| {
            error!("checkpoint failed: {e}");
            PgError::new(
                crate::sqlstate::code::IO_ERROR,
                format!("checkpoint failed: {e}"),
            )
        })
    }
}

/// Removes WAL segments wholly before the checkpoint at `lsn`, keeping
/// those not yet archived when archiving is on. Returns how many went.
fn remove_old_segments(
    dir: &DataDir,
    control: &ControlFile,
    lsn: Lsn,
    archive_mode: bool,
) -> Result<usize, DataDirError> {
    let keep_from = lsn.segno(control.seg_size);
    let wal = dir.wal();
    let mut removed = 0;
    for path in list_segments_upto(&wal, control.seg_size, control.timeline)?
        .range(..keep_from)
        .map(|(_, p)| p)
    {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let done = archive_mark(&wal, &name, ArchiveMark::Done);
        if archive_mode && !done.exists() {
            continue;
        }
        crate::durable::remove_file(path)?;
        crate::durable::remove_file(&done)?;
        crate::durable::remove_file(&archive_mark(&wal, &name, ArchiveMark::Ready))?;
        removed += 1;
    }
    Ok(removed)
}

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub dir: PathBuf,
    /// `HOST:PORT`, overriding `listen_addresses` and `port`.
    pub listen: Option<String>,
}

/// Under SCRAM a role without a password can never log in: said at start
/// and at each reload, not first to a client refused for it.
fn warn_roles_without_password(settings: &Settings, users: &Users, file: &std::path::Path) {
    if settings.authentication != super::config::AuthMethod::ScramSha256 {
        return;
    }
    for user in users.users.iter().filter(|u| u.verifier.is_none()) {
        warn!(
            "role \"{}\" has no password in {}, so it cannot log in with authentication = scram-sha-256: give it one on the primary (ALTER ROLE name PASSWORD '…', or psql's \\password) while a role with a password, or trust, lets you in",
            user.name,
            file.display()
        );
    }
    if !users
        .users
        .iter()
        .any(|u| u.superuser && u.verifier.is_some())
    {
        error!(
            "no superuser has a password in {}, so with authentication = scram-sha-256 no superuser can log in (role changes, CHECKPOINT and promotion by SQL need one): set authentication = trust and reload, give a superuser a password (ALTER ROLE name PASSWORD '…'), then switch back",
            file.display()
        );
    }
}

/// Runs a node until SIGTERM or SIGINT. Blocks those signals and SIGHUP in
/// the calling thread (and so in every thread it starts) and waits for them
/// on a thread of its own.
pub fn run(opts: ServerOptions) -> Result<(), ServerError> {
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        signals.add(s);
    }
    signals.thread_block()?;

    let dir = DataDir::new(&opts.dir);
    dir.check()?;
    let _lock = DirLock::acquire(&dir.root).map_err(|source| ServerError::Lock {
        dir: dir.root.clone(),
        source,
    })?;
    let settings = Settings::load(&dir.conf())?;
    let slots = Slots::load(&dir.slots()).map_err(DataDirError::from)?;
    let started = Instant::now();
    let is_standby = dir.standby_signal().exists();
    // Recovery rewrites the users file when it replays a role change.
    let opened = datadir::open(&dir.root, &settings, is_standby)?;
    let users = Users::read(&dir.users()).map_err(DataDirError::from)?;
    warn_roles_without_password(&settings, &users, &dir.users());
    info!(
        system_identifier = opened.control.system_id,
        timeline = %opened.control.timeline,
        epoch = %opened.epoch.epoch,
        checkpoint = %opened.control.checkpoint,
        replayed = opened.replayed,
        end_of_wal = %opened.end,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovery complete"
    );
    match (&opened.end_note, &opened.discarded) {
        (Some(note), None) => warn!("WAL ends on an incomplete or damaged record: {note}; after a crash this is the write it interrupted, and recovery ends there, as PostgreSQL's does (anything after it is zeroed); otherwise check the disk"),
        (note, Some(kept)) => error!(
            kept = %kept.display(),
            "WAL ends at {}{}, but what lay past that end held data: it is kept in {} and the node goes on from the end of valid WAL. After a crash in the middle of a write, the damage may be that write, never acknowledged; but if walship dump --verify on the kept files shows valid records past it, or this node did not crash, its WAL was damaged on disk and commits acknowledged after {} were lost from this node: check the disk, and take this node's data from another node or the archive. Remove the directory only once you know",
            opened.end,
            note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(),
            kept.display(),
            opened.end,
        ),
        (None, None) => {}
    }
    // On a standby a segment not received or restored yet is no loss.
    if let (Some(missing), false) = (&opened.missing, is_standby) {
        error!(
            "WAL ends at {}: the record that begins there runs on into {}, which is missing. A crash never leaves that (a segment file exists before a byte of a record goes into it): the file was removed or lost, and commits acknowledged after {} may have been in it. Stop this node before it takes writes, put the file back (from the archive with walship restore, or from a standby), and start it again; or take this node's data from another node",
            opened.end,
            missing.display(),
            opened.end,
        );
    }
    let addrs: Vec<String> = match &opts.listen {
        Some(l) => vec![l.clone()],
        None => settings
            .listen_addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                let host = if a == "*" { "0.0.0.0" } else { a };
                if host.contains(':') {
                    format!("[{host}]:{}", settings.port)
                } else {
                    format!("{host}:{}", settings.port)
                }
            })
            .collect(),
    };
    let mut listeners = Vec::new();
    for addr in &addrs {
        let l = TcpListener::bind(addr).map_err(|source| ServerError::Listen {
            addr: addr.clone(),
            source,
        })?;
        info!(address = %l.local_addr()?, "listening");
        listeners.push(l);
    }
    let metrics_listener = match settings.metrics_listen_address.as_str() {
        "" => None,
        addr => {
            let l = TcpListener::bind(addr).map_err(|source| ServerError::Listen {
                addr: format!("{addr} (metrics_listen_address)"),
                source,
            })?;
            info!(address = %l.local_addr()?, "metrics endpoint listening (GET /metrics)");
            Some(l)
        }
    };
    let insert = opened.db.wal().insert_lsn();
    let node = Arc::new(Node {
        dir: dir.root.clone(),
        settings: RwLock::new(Arc::new(settings)),
        users: RwLock::new(users),
        users_file_stale: AtomicBool::new(false),
        archive_reach: Mutex::new(ArchiveReach::default()),
        db: opened.db,
        row_locks: Arc::default(),
        mock_auth_nonce: opened.control.mock_auth_nonce,
        control: Mutex::new(opened.control),
        epoch: Mutex::new(opened.epoch),
        slots: Mutex::new(slots),
        checkpointing: Mutex::new(()),
        sessions: Mutex::new(HashMap::new()),
        connection_threads: Default::default(),
        refused: Mutex::new((0, None)),
        next_pid: AtomicI32::new(std::process::id() as i32 * 100 % 1_000_000_000 + 1),
        shutting_down: AtomicBool::new(false),
        wake: (Mutex::new(()), Condvar::new()),
        last_checkpoint_lsn: AtomicU64::new(insert.0),
        standby_state: is_standby.then(|| StandbyState::new(opened.end)),
        promoted: AtomicBool::new(false),
        promoting: AtomicBool::new(false),
        promotion_streams: AtomicBool::new(false),
        senders: WalSenders::default(),
        final_wal_written: AtomicBool::new(false),
        archive_watch: ArchiveWatch::load(&dir.root, is_standby),
    });
    if let Some(by) = node.lock_epoch().fenced_by {
        node.db.fence(by.0).map_err(DataDirError::Db)?;
        if is_standby {
            // A rejoined old primary: the fence is its past, not a fault.
            info!(epoch = %by, "this node was fenced by epoch {by} as a primary; it starts as a standby");
        } else {
            error!(epoch = %by, "this node was FENCED by epoch {by}: it serves reads but takes no writes");
        }
    }
    node.check_interrupted_promotion()?;
    let adir = node.settings().archive_directory.clone();
    if !adir.is_empty()
        && !std::path::Path::new(&adir)
            .join(crate::archive::store::IDENTITY)
            .exists()
    {
        warn!(archive = %adir, "archive_directory is not an archive (yet): until it is, a promotion claims no epoch there and a primary cut off from its standbys cannot learn from it that it was fenced; the first walship archive run into it creates it");
    }
    node.check_archive_epoch();
    node.senders.mark_heard();
    if is_standby {
        info!(primary = %node.settings().show("primary_conninfo").unwrap_or_default(), "starting as a standby (standby.signal is present)");
    }
    let (wake_rx, wake_tx) = nix::unistd::pipe()?;
    let wake_tx = Arc::new(wake_tx);
    let replay_failure = Mutex::new(None);
    let replay_failure = &replay_failure;
    std::thread::scope(|scope| -> Result<(), ServerError> {
        let n = node.clone();
        scope.spawn(move || wal_writer(&n));
        let n = node.clone();
        scope.spawn(move || checkpointer(&n));
        if let Some(listener) = metrics_listener {
            let n = node.clone();
            scope.spawn(move || super::exporter::serve(&n, listener));
        }
        if node.standby().is_some() {
            let (n, wake) = (node.clone(), wake_tx.clone());
            scope.spawn(move || {
                if let Err(why) = walreceiver::run(&*n) {
                    error!("{why}: stopping the standby");
                    *replay_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    n.begin_shutdown(&wake);
                }
            });
        }
        let n = node.clone();
        scope.spawn(move || loop {
            match signals.wait() {
                Ok(Signal::SIGHUP) => {
                    info!("SIGHUP received: reloading configuration");
                    n.reload();
                }
                // walship promote asks the checkpointer to look for its
                // request now.
                Ok(Signal::SIGUSR1) => n.wake_all(),
                Ok(sig) => {
                    info!(signal = %sig, "shutdown requested: stopping");
                    n.begin_shutdown(&wake_tx);
                    return;
                }
                Err(e) => {
                    error!("waiting for signals failed: {e}");
                    return;
                }
            }
        });
        accept_loop(&node, &listeners, &wake_rx);
        // Tell every client session to end: shut their sockets so blocked
        // reads return, then wait for them to finish their current
        // statement. Walsenders go on until the shutdown checkpoint is sent.
        node.shut_sessions(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.session_count() > 0 && Instant::now() < deadline {
            node.nap(Duration::from_millis(50));
        }
        if node.standby().is_none() {
            node.db.flush_all().map_err(DataDirError::Db)?;
        }
        let lsn = node.checkpoint(NodeState::ShutDown)?;
        node.final_wal_written.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.walsender_count() > 0 && Instant::now() < deadline {
            node.nap(Duration::from_millis(20));
        }
        node.shut_sessions(true);
        info!(checkpoint = %lsn, "shut down cleanly");
        Ok(())
    })?;
    let failed = replay_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match failed {
        Some(why) => Err(ServerError::ReplayFailed(why)),
        None => Ok(()),
    }
}

fn accept_loop(node: &Arc<Node>, listeners: &[TcpListener], wake: &std::os::fd::OwnedFd) {
    loop {
        if node.is_shutting_down() {
            return;
        }
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                error!("poll failed: {e}");
                return;
            }
        }
        // POLLHUP counts: a wake pipe whose writer is gone must end the
        // loop, not spin it.
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            })
            .collect();
        drop(fds);
        if ready.last() == Some(&true) {
            return;
        }
        for (l, _) in listeners.iter().zip(&ready).filter(|(_, r)| **r) {
            match l.accept() {
                Ok((stream, _)) => {
                    let open = ConnectionThread::new(node);
                    let most = node.settings().max_connection_threads();
                    if open.count > most {
                        refuse_connection(node, stream, most);
                        continue;
                    }
                    let node = node.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("session".into())
                            .spawn(move || {
                                let _open = open;
                                super::session::serve(node, stream)
                            });
                    if let Err(e) = spawned {
                        error!("could not start a session thread: {}", io_cause(&e));
                    }
                }
                Err(e) => warn!("accept failed: {}", io_cause(&e)),
            }
        }
    }
}

/// A connection's claim to a thread, counted in
/// [`Node::connection_threads`] while it lives.
struct ConnectionThread {
    node: Arc<Node>,
    /// How many claims there are, this one included.
    count: usize,
}

impl ConnectionThread {
    fn new(node: &Arc<Node>) -> ConnectionThread {
        let count = node.connection_threads.fetch_add(1, Ordering::AcqRel) + 1;
        ConnectionThread {
            node: node.clone(),
            count,
        }
    }
}

impl Drop for ConnectionThread {
    fn drop(&mut self) {
        self.node.connection_threads.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refuses a connection as it is accepted (too many are open), as
/// PostgreSQL's postmaster does: "sorry, too many clients already", said
/// at once, without waiting for the client's startup packet. Logged at
/// most every 10 s, with how many were refused since.
fn refuse_connection(node: &Node, stream: TcpStream, most: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut w = BufWriter::new(stream);
    let mut out = crate::protocol::codec::Out::default();
    out.error(
        &PgError::fatal(
            crate::sqlstate::code::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
        .with_hint(format!(
            "{most} connections are open or starting (twice max_connections plus max_wal_senders); those that never log in are closed after authentication_timeout"
        )),
    );
    let _ = out.send(&mut w);
    let mut refused = node.refused.lock().unwrap_or_else(|p| p.into_inner());
    refused.0 += 1;
    if refused
        .1
        .is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(10))
    {
        warn!(
            refused = refused.0,
            open = most,
            "refusing connections: too many are open or starting"
        );
        *refused = (0, Some(Instant::now()));
    }
}

/// With `synchronous_commit = off`, commits are acknowledged before their
/// WAL is flushed: this thread flushes at least every `wal_writer_delay`.
/// It also ends a segment that has held WAL for `archive_timeout`, so the
/// archive is never further behind than that; not on a fenced node, which
/// writes no more WAL.
fn wal_writer(node: &Node) {
    let mut segment_seen: Option<(u64, Instant)> = None;
    while !node.is_shutting_down() {
        let settings = node.settings();
        let delay = settings.wal_writer_delay;
        node.nap(delay);
        if settings.archive_mode
            && !settings.archive_timeout.is_zero()
            && node.standby().is_none()
            && node.db.fenced_by().is_none()
        {
            let size = WalSenderHost::seg_size(node);
            let pos = node.db.wal().insert_lsn();
            let segno = pos.segno(size).0;
            match segment_seen {
                Some((s, since)) if s == segno => {
                    if pos.segment_offset(size) > 0 && since.elapsed() >= settings.archive_timeout {
                        match node.db.switch_wal() {
                            Ok(end) => {
                                info!(switch_end = %end, "archive_timeout: ended the segment so it can be archived")
                            }
                            Err(e) => error!("archive_timeout: could not switch segments: {e}"),
                        }
                    }
                }
                _ => segment_seen = Some((segno, Instant::now())),
            }
        }
        if node.db.wal().flushed_lsn() < node.db.wal().insert_lsn() {
            if let Err(e) = node.db.flush_all() {
                error!("WAL writer could not flush: {e}; no further commit will be acknowledged");
                return;
            }
        }
    }
}

/// Checkpoints every `checkpoint_timeout` (if anything was written), or
/// when `max_wal_size` of WAL was written since the last one.
fn checkpointer(node: &Node) {
    let mut last = Instant::now();
    while !node.is_shutting_down() {
        node.nap(Duration::from_secs(1));
        if node.is_shutting_down() {
            return;
        }
        node.check_promote_signal();
        node.check_archive_epoch();
        let s = node.settings();
        if s.archive_mode && node.standby().is_none() {
            node.archive_watch.check(
                &DataDir::new(&node.dir).wal(),
                WalSenderHost::seg_size(node),
                &s,
            );
        }
        let since = node
            .db
            .wal()
            .insert_lsn()
            .0
            .saturating_sub(node.last_checkpoint_lsn.load(Ordering::Acquire));
        let by_time = last.elapsed() >= s.checkpoint_timeout && since > 0;
        let by_volume = since >= s.max_wal_size;
        if by_time || by_volume {
            match node.checkpoint(NodeState::InProduction) {
                Ok(_) => last = Instant::now(),
                Err(e) => error!("checkpoint failed: {e}; will retry"),
            }
        }
    }
}
