//! The commit pipeline: decide, log, make durable, then apply.
//!
//! A write runs in three steps, and the order is the point:
//!
//! 1. Under the queue lock, the transaction's changes are decided against
//!    the latest state (applied rows plus changes logged but not yet
//!    applied), encoded as one COMMIT record and appended to the WAL. The
//!    lock makes decide-and-append atomic, so the WAL order is the order in
//!    which decisions were made.
//! 2. Outside every lock, the session waits for its record to be durable
//!    (one flush serves all the sessions waiting at the time: group commit).
//!    With `synchronous_commit = off` it does not wait.
//! 3. The changes of every record up to the durable point are applied, in
//!    WAL order, under the queue lock and then the rows' write lock (always
//!    in that order). Readers see a transaction only once it is durable (or
//!    at once, for `off`, as PostgreSQL does). Records apply in WAL order,
//!    so an `off` commit also makes visible the commits logged before it
//!    that are still waiting for their flush.
//!
//! A commit that waits for synchronous standbys is *held*: other sessions
//! do not see it until its wait ends ([`Db::release`]), as PostgreSQL keeps
//! such a transaction in progress until its standbys confirm it, so that a
//! row a failover would take away is never read. Visibility stays a prefix
//! of the WAL, so a held record is made visible early when a later record
//! that is not held must be (a `local` or `off` commit from another session
//! logged after it): that commit's own session must see its write, and
//! PostgreSQL, which can show commits out of order, has no such exception.
//!
//! Invariant: `queue` holds exactly the records appended but not applied,
//! in LSN order; `overlay` maps each key they touch to its newest value.
//! Every record before the last one applied has been applied.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use thiserror::Error;

use super::Store;
use crate::wal::format::RM_WALSHIP_ID;
use crate::wal::payload::{Op, Payload};
use crate::wal::{Appended, Lsn, WalError, WalWriter};

/// One change, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Put { key: String, value: String },
    Delete { key: String },
}

impl KvOp {
    pub fn key(&self) -> &str {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key } => key,
        }
    }

    fn as_op(&self) -> Op<'_> {
        match self {
            KvOp::Put { key, value } => Op::Put {
                key: key.as_bytes(),
                value: value.as_bytes(),
            },
            KvOp::Delete { key } => Op::Delete {
                key: key.as_bytes(),
            },
        }
    }

    /// From a decoded record; keys and values must be UTF-8 text.
    pub fn from_record(op: &Op<'_>) -> Result<KvOp, std::str::Utf8Error> {
        Ok(match op {
            Op::Put { key, value } => KvOp::Put {
                key: std::str::from_utf8(key)?.to_string(),
                value: std::str::from_utf8(value)?.to_string(),
            },
            Op::Delete { key } => KvOp::Delete {
                key: std::str::from_utf8(key)?.to_string(),
            },
        })
    }
}

/// How long a commit waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Until its WAL is flushed locally.
    Flushed,
    /// Not at all; the background WAL writer flushes it soon.
    Async,
}

#[derive(Debug, Error)]
pub enum DbError {
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A later epoch fenced this node: nothing more is written.
    #[error("this node was fenced by epoch {0}")]
    Fenced(u64),
}

struct Pending {
    end: Lsn,
    ops: Vec<KvOp>,
    /// Its session waits for standbys: not to be shown alone yet.
    held: bool,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// key → (end of the newest pending record touching it, its value then).
    overlay: HashMap<String, (Lsn, Option<String>)>,
}

/// The latest state, as a write decides against it.
pub struct View<'a> {
    rows: &'a Store,
    overlay: &'a HashMap<String, (Lsn, Option<String>)>,
}

impl View<'_> {
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.overlay.get(key) {
            Some((_, v)) => v.as_deref(),
            None => self.rows.get(key),
        }
    }
}

/// The store behind its WAL. See the module documentation.
pub struct Db {
    /// Nonzero once fenced: the epoch that fenced it. Checked under the
    /// queue lock, so no commit is appended after [`Db::fence`] returns.
    fenced_by: std::sync::atomic::AtomicU64,
    wal: WalWriter,
    rows: RwLock<Store>,
    queue: Mutex<Queue>,
    /// Held from deciding a role change to writing it out (see
    /// [`Db::lock_roles`]), and by a checkpoint; taken before `queue`.
    roles: Mutex<()>,
}

/// The right to change the roles: one change at a time, and no checkpoint
/// until the change is written out.
pub struct RolesGuard<'a> {
    db: &'a Db,
    _held: MutexGuard<'a, ()>,
}

impl RolesGuard<'_> {
    /// Logs a ROLES record carrying the users file's new `text` and waits
    /// until it is durable (and every commit before it visible, but for
    /// those still held); returns where it ends.
    pub fn log(&self, text: &str) -> Result<Lsn, DbError> {
        let db = self.db;
        let end = {
            let _queue = db.lock_queue();
            db.check_unfenced()?;
            let mut data = Vec::new();
            let info = Payload::Roles(text.as_bytes()).encode(&mut data);
            db.wal.append(RM_WALSHIP_ID, info, 0, &data)?.end
        };
        let flushed = db.wal.flush(end)?;
        db.apply_upto(flushed);
        Ok(end)
    }
}

impl Db {
    /// `rows` must reflect every record of `wal` (recovery has replayed it).
    pub fn new(wal: WalWriter, rows: Store) -> Db {
        Db {
            fenced_by: std::sync::atomic::AtomicU64::new(0),
            wal,
            rows: RwLock::new(rows),
            queue: Mutex::new(Queue::default()),
            roles: Mutex::new(()),
        }
    }

    /// For a role change: decide it while holding the guard, log it with
    /// [`RolesGuard::log`], then write the users file before letting go.
    /// A checkpoint needs the guard too, so its redo point never falls
    /// between a ROLES record and the users file it changed: crash
    /// recovery replays every ROLES record whose file may not be written.
    pub fn lock_roles(&self) -> RolesGuard<'_> {
        RolesGuard {
            db: self,
            _held: self.roles.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    pub fn wal(&self) -> &WalWriter {
        &self.wal
    }

    /// The rows readers see.
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.rows.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_rows(&self) -> RwLockWriteGuard<'_, Store> {
        self.rows.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a record logged but not yet visible (waiting for its flush,
    /// or held for synchronous standbys) changes one of `keys`.
    pub fn in_flight<'k>(&self, mut keys: impl Iterator<Item = &'k str>) -> bool {
        let queue = self.lock_queue();
        keys.any(|k| queue.overlay.contains_key(k))
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one write: `decide` sees the latest state and returns the
    /// changes (and a result for the caller); they are logged as one COMMIT
    /// record, made as durable as `durability` asks, and applied. Returns
    /// the caller's result and where the record ends. No changes, no record.
    ///
    /// With `held`, the record is not shown to readers on its own account
    /// (see the module documentation): the caller waits for its standbys,
    /// then must call [`Db::release`] with its end, however the wait ends.
    pub fn write<R, E: From<DbError>>(
        &self,
        durability: Durability,
        held: bool,
        decide: impl FnOnce(&View<'_>) -> Result<(Vec<KvOp>, R), E>,
    ) -> Result<(R, Option<Lsn>), E> {
        let end = {
            let mut queue = self.lock_queue();
            self.check_unfenced()?;
            let rows = self.read();
            let (ops, result) = decide(&View {
                rows: &rows,
                overlay: &queue.overlay,
            })?;
            drop(rows);
            if ops.is_empty() {
                // The decision may rest on commits not yet durable (an
                // "UPDATE 0", a unique violation): wait for them as a
                // commit would, so the client never sees a state a crash
                // could undo.
                let seen = queue.pending.back().map(|p| p.end);
                drop(queue);
                if let (Some(end), Durability::Flushed) = (seen, durability) {
                    let flushed = self.wal.flush(end).map_err(DbError::from)?;
                    self.apply_upto(flushed);
                }
                return Ok((result, None));
            }
            let appended = self.append_commit(&ops).map_err(DbError::from)?;
            for op in &ops {
                let value = match op {
                    KvOp::Put { value, .. } => Some(value.clone()),
                    KvOp::Delete { .. } => None,
                };
                queue
                    .overlay
                    .insert(op.key().to_string(), (appended.end, value));
            }
            queue.pending.push_back(Pending {
                end: appended.end,
                ops,
                held,
            });
            (result, appended.end)
        };
        let (result, end) = end;
        let visible = match durability {
            Durability::Flushed => match self.wal.flush(end) {
                Ok(flushed) => flushed,
                Err(e) => {
                    // The caller waits for no standby now: nothing else
                    // would end the hold.
                    if held {
                        self.release(end);
                    }
                    return Err(DbError::from(e).into());
                }
            },
            Durability::Async => end,
        };
        self.apply_upto(visible);
        Ok((result, Some(end)))
    }

    fn append_commit(&self, ops: &[KvOp]) -> Result<Appended, WalError> {
        let ops: Vec<Op<'_>> = ops.iter().map(KvOp::as_op).collect();
        let mut data = Vec::new();
        let info = Payload::Commit(ops).encode(&mut data);
        self.wal.append(RM_WALSHIP_ID, info, 0, &data)
    }

    /// Ends the hold on the record that ends at `end` (its wait for the
    /// standbys is over, however it ended) and shows what may now be shown.
    /// On a fenced node the hold stays: the new primary may lack the
    /// record, and this node's readers must not see what the failover took
    /// away (a restart shows it, from the WAL).
    pub fn release(&self, end: Lsn) {
        let mut queue = self.lock_queue();
        if self.fenced_by().is_some() {
            return;
        }
        if let Some(p) = queue.pending.iter_mut().find(|p| p.end == end) {
            p.held = false;
        }
        self.apply_locked(&mut queue, self.wal.flushed_lsn());
    }

    /// Applies the pending records that end at or before `upto`, but for
    /// held ones after the last that is not held.
    fn apply_upto(&self, upto: Lsn) {
        let mut queue = self.lock_queue();
        self.apply_locked(&mut queue, upto);
    }

    /// [`Db::apply_upto`] with the queue lock already held.
    fn apply_locked(&self, queue: &mut Queue, upto: Lsn) {
        let Some(last) = queue
            .pending
            .iter()
            .take_while(|p| p.end <= upto)
            .filter(|p| !p.held)
            .map(|p| p.end)
            .last()
        else {
            return;
        };
        let mut rows = self.write_rows();
        while queue.pending.front().is_some_and(|p| p.end <= last) {
            let Some(p) = queue.pending.pop_front() else {
                break;
            };
            rows.apply(&p.ops, p.end);
            for op in &p.ops {
                if queue
                    .overlay
                    .get(op.key())
                    .is_some_and(|(lsn, _)| *lsn == p.end)
                {
                    queue.overlay.remove(op.key());
                }
            }
        }
    }

    /// Applies replayed records (a standby's): `f` changes the store under
    /// the lock readers take, so a reader sees whole records.
    pub fn replay<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.write_rows())
    }

    /// Refuses every later write (a promotion elsewhere fenced this node),
    /// and makes everything appended before durable before it returns.
    pub fn fence(&self, epoch: u64) -> Result<(), DbError> {
        {
            let _queue = self.lock_queue();
            self.fenced_by
                .store(epoch, std::sync::atomic::Ordering::Release);
        }
        self.flush_all()?;
        Ok(())
    }

    /// Whether a write could still become durable here: not fenced, its
    /// WAL not failed.
    pub fn check_writable(&self) -> Result<(), DbError> {
        self.check_unfenced()?;
        self.wal.check_poisoned().map_err(DbError::Wal)
    }

    /// A fenced node appends nothing more to its WAL: its WAL ends where
    /// it told the promoter, which is where the new primary's timeline
    /// begins. Called with the queue lock held by every path that appends.
    fn check_unfenced(&self) -> Result<(), DbError> {
        match self.fenced_by() {
            Some(epoch) => Err(DbError::Fenced(epoch)),
            None => Ok(()),
        }
    }

    /// The epoch that fenced this node, if one did.
    pub fn fenced_by(&self) -> Option<u64> {
        match self.fenced_by.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            epoch => Some(epoch),
        }
    }

    /// Takes writes again: the node's own epoch file no longer says it is
    /// fenced (it was promoted, in an epoch above the one that fenced it).
    pub fn lift_fence(&self) {
        let _queue = self.lock_queue();
        self.fenced_by
            .store(0, std::sync::atomic::Ordering::Release);
    }

    /// Makes everything logged durable and visible (for the background WAL
    /// writer of `synchronous_commit = off` and for shutdown).
    pub fn flush_all(&self) -> Result<Lsn, DbError> {
        let flushed = self.wal.flush_all()?;
        self.apply_upto(flushed);
        Ok(flushed)
    }

    /// Ends the current segment (`pg_switch_wal()`), durably; returns where
    /// the switch record ends, as PostgreSQL's `pg_switch_wal()` does.
    /// Refused on a fenced node.
    pub fn switch_wal(&self) -> Result<Lsn, DbError> {
        let end = {
            let _queue = self.lock_queue();
            self.check_unfenced()?;
            self.wal.switch_segment()?
        };
        self.flush_all()?;
        Ok(end)
    }

    /// Writes a checkpoint record and returns its LSN with a snapshot of the
    /// rows holding exactly every change before it. The caller makes the
    /// snapshot durable and then records the checkpoint in the control file.
    /// It holds the roles guard, and has written out every role change.
    /// Refused on a fenced node.
    pub fn checkpoint(&self, _roles: &RolesGuard<'_>) -> Result<(Lsn, Store), DbError> {
        let queue = self.lock_queue();
        self.check_unfenced()?;
        let redo = self.wal.next_record_lsn();
        let mut data = Vec::new();
        let info = Payload::Checkpoint { redo }.encode(&mut data);
        let appended = self.wal.append(RM_WALSHIP_ID, info, 0, &data)?;
        debug_assert_eq!(appended.lsn, redo);
        self.wal.flush(appended.end)?;
        // Apply and copy under the queue lock: no commit may be appended (and,
        // if asynchronous, applied) between the record and the snapshot.
        // Records still held are in the snapshot, not yet in the rows.
        let mut queue = queue;
        self.apply_locked(&mut queue, appended.end);
        let mut snapshot = self.read().clone();
        for p in &queue.pending {
            snapshot.apply(&p.ops, p.end);
        }
        drop(queue);
        Ok((appended.lsn, snapshot))
    }
}
