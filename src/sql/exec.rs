//! Executing statements for one session: autocommit writes through the
//! store's commit pipeline, transaction blocks that buffer their writes and
//! commit them as one record, reads, SET/SHOW and functions.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::interrupt::Interrupt;
use super::parse::{
    Column, Expr, Filter, Func, OnConflict, Projection, RoleStatement, Select, Statement,
};
use super::row_locks::{LockSet, RowLocks};
use super::views::SystemView;
use crate::node::config::{
    format_timeout, parse_timeout, BadTimeout, Settings, SyncCommit, TIMEOUT_UNITS_HINT,
};
use crate::sqlstate::{code, PgError};
use crate::store::{Db, DbError, Durability, KvOp, Store, View};
use crate::wal::{Lsn, WalError};

/// Type OIDs of the values walship returns (PostgreSQL's `pg_type`).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const XID: u32 = 28;
    pub const PG_LSN: u32 = 3220;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
}

/// A value in a result row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    Lsn(Lsn),
    Interval(std::time::Duration),
    /// Microseconds since 2000-01-01 UTC (PostgreSQL's `timestamptz`).
    Timestamp(i64),
}

impl Value {
    /// PostgreSQL's text output form.
    pub fn to_text(&self) -> String {
        match self {
            Value::Text(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => if *b { "t" } else { "f" }.into(),
            Value::Lsn(l) => l.to_string(),
            Value::Interval(d) => {
                let us = d.as_micros();
                let secs = us / 1_000_000;
                format!(
                    "{:02}:{:02}:{:02}.{:06}",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60,
                    us % 1_000_000
                )
            }
            Value::Timestamp(t) => format_timestamp(*t),
        }
    }

    /// PostgreSQL's binary output form for a column of type `oid`.
    pub fn to_binary(&self, type_oid: u32) -> Vec<u8> {
        match (self, type_oid) {
            (Value::Int(i), oid::INT4 | oid::OID | oid::XID) => (*i as i32).to_be_bytes().to_vec(),
            (Value::Int(i), _) => i.to_be_bytes().to_vec(),
            (Value::Bool(b), _) => vec![u8::from(*b)],
            (Value::Lsn(l), _) => l.0.to_be_bytes().to_vec(),
            (Value::Interval(d), _) => {
                let mut b = (d.as_micros() as i64).to_be_bytes().to_vec();
                b.extend_from_slice(&[0; 8]);
                b
            }
            (Value::Timestamp(t), _) => t.to_be_bytes().to_vec(),
            (Value::Text(s), _) => s.as_bytes().to_vec(),
        }
    }
}

/// PostgreSQL's text form of a `timestamptz` in UTC:
/// `2026-11-28 19:12:01.123456+00`.
fn format_timestamp(pg_micros: i64) -> String {
    let unix_us = pg_micros.saturating_add(946_684_800_000_000).max(0) as u64;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(unix_us);
    let rfc = humantime::format_rfc3339_micros(t).to_string();
    format!("{}+00", rfc.replace('T', " ").trim_end_matches('Z'))
}

/// A result column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDesc {
    pub name: String,
    pub type_oid: u32,
}

/// What a statement returns.
#[derive(Clone, Debug, Default)]
pub struct QueryResult {
    /// `Some` for statements that return rows (even zero rows).
    pub columns: Option<Vec<ColumnDesc>>,
    pub rows: Vec<Vec<Option<Value>>>,
    /// The CommandComplete tag, e.g. `INSERT 0 1`.
    pub tag: String,
    /// Warnings for the client (NoticeResponse), sent before the result.
    pub notices: Vec<PgError>,
}

/// A role's attributes, as they bear on what it may run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    pub superuser: bool,
    /// May stream WAL, and fence an old primary (`walship promote` does,
    /// with its standby's `primary_conninfo`).
    pub replication: bool,
}

/// What the session needs of the node it runs on.
pub trait Host: Send + Sync {
    fn db(&self) -> &Db;
    fn row_locks(&self) -> &Arc<RowLocks>;
    /// The settings now in force (reloaded on SIGHUP).
    fn settings(&self) -> Arc<Settings>;
    fn in_recovery(&self) -> bool;
    /// Why writes are refused right now (a standby, a fenced primary), if
    /// they are.
    fn write_refusal(&self) -> Option<PgError>;
    /// Read-only parameters SHOW knows beyond the settings: those of
    /// [`READ_ONLY_PARAMS`].
    fn show(&self, name: &str) -> Option<String>;
    /// `pg_last_wal_receive_lsn()` / `pg_last_wal_replay_lsn()` on a standby.
    fn last_receive_lsn(&self) -> Option<Lsn>;
    fn last_replay_lsn(&self) -> Option<Lsn>;
    /// Runs a checkpoint now (the CHECKPOINT command).
    fn checkpoint(&self) -> Result<Lsn, PgError>;
    /// After a commit at `lsn` is flushed and visible locally: waits for
    /// the synchronous standbys as `level` asks. A wait cut short by
    /// `interrupt` returns a warning (the commit stands locally); sessions
    /// pass a cancel only, as PostgreSQL lets no `statement_timeout` end
    /// this wait.
    fn wait_for_sync(
        &self,
        lsn: Lsn,
        level: SyncCommit,
        interrupt: &Interrupt,
    ) -> Result<Option<PgError>, PgError>;
    /// A system view's rows, values in [`SystemView::columns`] order.
    fn view_rows(&self, view: SystemView) -> Vec<Vec<Option<Value>>>;
    /// `walship_fence(epoch)`: persist the newer epoch, then refuse every
    /// write (before answering).
    fn fence(&self, epoch: u64) -> Result<(), PgError>;
    /// `pg_promote()`: promote this standby and wait for it, or until
    /// `interrupt` stops the statement (the promotion goes on).
    fn promote(&self, interrupt: &Interrupt) -> Result<(), PgError>;
    /// CREATE / ALTER / DROP ROLE statements (one, or a transaction's),
    /// run by the role `by`: logged as one record, durable and in force
    /// when it returns. Returns where its record ends (none when nothing
    /// changed) and the notices for the client.
    fn change_roles(
        &self,
        by: &str,
        statements: &[RoleStatement],
    ) -> Result<(Option<Lsn>, Vec<PgError>), PgError>;
    /// Whether `next` would succeed after `done` (a transaction's role
    /// changes so far): `next` as the transaction keeps it (its password
    /// hashed) and its notices. Changes nothing.
    fn check_roles(
        &self,
        by: &str,
        done: &[RoleStatement],
        next: &RoleStatement,
    ) -> Result<(RoleStatement, Vec<PgError>), PgError>;
    /// What the role `name` may do now (nothing, if it is gone).
    fn rights(&self, name: &str) -> Rights;
    /// `WAIT FOR LSN`: until `lsn` is replayed (standby) or flushed
    /// (primary), `timeout` passes, or `interrupt` stops the statement.
    fn wait_for_lsn(
        &self,
        lsn: Lsn,
        timeout: Option<std::time::Duration>,
        interrupt: &Interrupt,
    ) -> Result<(), PgError>;
}

/// A commit hidden from other sessions while it waits for standbys: shown
/// when this is dropped, however the wait ended.
struct Held {
    host: Arc<dyn Host>,
    end: Lsn,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.host.db().release(self.end);
    }
}

/// A transaction block's buffered writes.
struct Txn {
    /// The keys it writes, locked until it ends (see [`super::row_locks`]).
    locks: LockSet,
    /// Each key's newest value in this transaction (`None`: deleted).
    writes: BTreeMap<String, Option<String>>,
    ops: Vec<KvOp>,
    /// Keys a plain INSERT found absent: still absent at COMMIT, or the
    /// commit fails with a unique violation.
    must_be_absent: Vec<String>,
    /// What other buffered writes rest on, checked again at COMMIT: keys
    /// an UPDATE or DELETE found, and keys an INSERT … ON CONFLICT DO
    /// NOTHING found absent. The row locks (see [`super::row_locks`] and
    /// [`Session::commit_unlocked`]) keep other writers off these keys;
    /// this is the last guard should one get through: the block's write
    /// would undo that session's acknowledged one (bring a deleted row
    /// back, overwrite an inserted one), so the commit fails with a
    /// serialization failure instead.
    must_still_exist: Vec<String>,
    must_still_be_absent: Vec<String>,
    /// Role changes, made at COMMIT as one ROLES record. A block changes
    /// rows or roles, not both: the two are different records, which no
    /// one commit could make atomic.
    roles: Vec<RoleStatement>,
    failed: bool,
    /// The settings at BEGIN (a ROLLBACK returns to them), and as the
    /// block's SETs without LOCAL leave them (its COMMIT does).
    saved: SessionSettings,
    kept: SessionSettings,
    /// BEGIN READ ONLY: writes are refused.
    read_only: bool,
    /// Not begun by BEGIN: a query string's or a batch's, ended by the
    /// session at the end of the string or at Sync.
    implicit: bool,
}

fn rows_and_roles() -> PgError {
    PgError::new(
        code::FEATURE_NOT_SUPPORTED,
        "a transaction block cannot both write rows and change roles",
    )
    .with_hint("commit the one before the other")
}

/// Session parameters a client may SET, with PostgreSQL's defaults;
/// `None`: walship.conf's setting of the same name, as it is now.
const SESSION_PARAMS: &[(&str, Option<&str>)] = &[
    ("application_name", Some("")),
    ("client_encoding", Some("UTF8")),
    ("datestyle", Some("ISO, MDY")),
    ("timezone", Some("UTC")),
    ("extra_float_digits", Some("1")),
    ("search_path", Some("\"$user\", public")),
    ("statement_timeout", None),
    ("lock_timeout", None),
    ("idle_in_transaction_session_timeout", None),
    ("intervalstyle", Some("postgres")),
    ("default_transaction_isolation", Some("read committed")),
    ("transaction_isolation", Some("read committed")),
];

/// What SET changes in a session.
#[derive(Clone, Debug, Default)]
struct SessionSettings {
    /// Parameters with a value of the session's own; one with
    /// walship.conf's value is absent.
    params: HashMap<String, String>,
    /// `None`: walship.conf's, as it is now.
    synchronous_commit: Option<SyncCommit>,
}

/// One SET, checked.
enum SettingChange {
    SynchronousCommit(Option<SyncCommit>),
    /// `None`: back to walship.conf's value.
    Param(String, Option<String>),
}

impl SessionSettings {
    fn apply(&mut self, change: &SettingChange) {
        match change {
            SettingChange::SynchronousCommit(level) => self.synchronous_commit = *level,
            SettingChange::Param(name, Some(value)) => {
                self.params.insert(name.clone(), value.clone());
            }
            SettingChange::Param(name, None) => {
                self.params.remove(name);
            }
        }
    }
}

/// One client session's state.
pub struct Session {
    host: Arc<dyn Host>,
    /// The role the session authenticated as.
    user: String,
    settings: SessionSettings,
    /// The settings RESET returns to: as the session began.
    baseline: SessionSettings,
    txn: Option<Txn>,
    /// A CancelRequest for this session, and the running statement's
    /// `statement_timeout`.
    interrupt: Interrupt,
    /// walship.conf's settings as the current message found them (see
    /// [`Session::use_settings`]).
    conf: Arc<Settings>,
    /// Warnings raised while running the current statement.
    notices: Vec<PgError>,
}

fn resolve(e: &Expr, params: &[Option<String>]) -> Result<Option<String>, PgError> {
    match e {
        Expr::Lit(s) => Ok(Some(s.clone())),
        Expr::Null => Ok(None),
        Expr::Param(i) => params.get(*i).cloned().ok_or_else(|| {
            PgError::new(
                code::PROTOCOL_VIOLATION,
                format!("there is no parameter ${}", i + 1),
            )
        }),
    }
}

fn resolve_key(e: &Expr, params: &[Option<String>]) -> Result<String, PgError> {
    resolve(e, params)?.ok_or_else(|| {
        PgError::new(
            code::NOT_NULL_VIOLATION,
            "null value in column \"key\" of relation \"kv\" violates not-null constraint",
        )
    })
}

fn resolve_value(e: &Expr, params: &[Option<String>]) -> Result<String, PgError> {
    resolve(e, params)?.ok_or_else(|| {
        PgError::new(
            code::FEATURE_NOT_SUPPORTED,
            "walship's kv does not store NULL values",
        )
        .with_hint("store an empty string, or DELETE the key")
    })
}

fn unique_violation(key: &str) -> PgError {
    PgError::new(
        code::UNIQUE_VIOLATION,
        "duplicate key value violates unique constraint \"kv_pkey\"",
    )
    .with_detail(format!("Key (key)=({key}) already exists."))
}

/// The SQLSTATE for a failure of the write path.
pub fn db_error(e: DbError) -> PgError {
    let wal = match e {
        DbError::Wal(wal) => wal,
        DbError::Fenced(epoch) => {
            return PgError::new(
                code::READ_ONLY_TRANSACTION,
                format!("this node is fenced: epoch {epoch} was promoted elsewhere, so it takes no writes"),
            )
            .with_hint("send writes to the new primary; stop it and make it a standby of the new primary with walship rejoin (or, if rejoin refuses, rebuild it with walship basebackup)")
        }
    };
    let disk_full = match &wal {
        WalError::File(f) => {
            f.source.raw_os_error() == Some(nix::libc::ENOSPC)
                || f.source.kind() == io::ErrorKind::StorageFull
        }
        _ => false,
    };
    if disk_full {
        tracing::error!(
            "could not write to the WAL, the disk is full: {wal}; writes fail with SQLSTATE 53100 until there is room"
        );
        PgError::new(
            code::DISK_FULL,
            format!("could not write to the WAL: {wal}"),
        )
        .with_hint(
            "free space on the WAL's file system; writes resume once there is room, reads go on",
        )
    } else {
        tracing::error!("could not write to the WAL: {wal}");
        PgError::new(code::IO_ERROR, format!("could not write to the WAL: {wal}"))
    }
}

impl From<DbError> for PgError {
    fn from(e: DbError) -> PgError {
        db_error(e)
    }
}

impl Session {
    pub fn new(host: Arc<dyn Host>, startup_params: &[(String, String)]) -> Session {
        let mut params: HashMap<String, String> = SESSION_PARAMS
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), (*v)?.to_string())))
            .collect();
        for (k, v) in startup_params {
            let k = k.to_ascii_lowercase();
            if SESSION_PARAMS.iter().any(|(name, _)| *name == k) {
                params.insert(k, v.clone());
            }
        }
        let user = startup_params
            .iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let settings = SessionSettings {
            params,
            synchronous_commit: None,
        };
        let conf = host.settings();
        Session {
            host,
            user,
            baseline: settings.clone(),
            settings,
            txn: None,
            interrupt: Interrupt::default(),
            conf,
            notices: Vec::new(),
        }
    }

    /// Takes the settings now in force (after those the client sent at
    /// startup) as the ones RESET and DISCARD ALL return to.
    pub fn mark_baseline(&mut self) {
        self.baseline = self.settings.clone();
    }

    /// walship.conf's settings for the message about to run: read once
    /// per message by the connection, so that a statement does not take
    /// the node's settings lock for each setting it consults, and a
    /// reload reaches the session from its next message.
    pub fn use_settings(&mut self, conf: Arc<Settings>) {
        self.conf = conf;
    }

    /// The settings the last message ran with.
    pub fn conf(&self) -> &Settings {
        &self.conf
    }

    /// Shares the flag a CancelRequest for this session raises, so long
    /// waits (row locks, WAIT FOR LSN, synchronous commit) can end early.
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Interrupt::new(flag);
    }

    /// The canonical name of a session setting a client may send at
    /// startup or SET, if `name` is one.
    pub fn startup_param_known(name: &str) -> Option<&'static str> {
        SESSION_PARAMS
            .iter()
            .map(|(n, _)| *n)
            .chain(["synchronous_commit"])
            .find(|n| n.eq_ignore_ascii_case(name))
    }

    /// `I` (idle), `T` (in a transaction block) or `E` (in a failed one),
    /// for ReadyForQuery.
    pub fn status(&self) -> u8 {
        match &self.txn {
            None => b'I',
            Some(t) if t.failed => b'E',
            Some(_) => b'T',
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.settings.params.get(name).map(String::as_str)
    }

    /// When a row-lock wait that begins now must end: `lock_timeout`
    /// (milliseconds, or a duration with a unit; 0 or unset: never).
    fn lock_deadline(&self) -> Option<std::time::Instant> {
        self.timeout_param("lock_timeout")
            .and_then(|t| std::time::Instant::now().checked_add(t))
    }

    /// A timeout setting's value, the session's or walship.conf's; `None`
    /// for 0 (never).
    fn timeout_param(&self, name: &str) -> Option<std::time::Duration> {
        match self.param(name) {
            Some(v) => parse_timeout(v).ok(),
            None => self.conf.session_timeout(name),
        }
        .filter(|t| !t.is_zero())
    }

    /// `idle_in_transaction_session_timeout`, when the session sits in a
    /// transaction block the client began (not a query string's or a
    /// batch's, which the session ends itself).
    pub fn idle_in_block_timeout(&self) -> Option<std::time::Duration> {
        self.txn.as_ref().filter(|t| !t.implicit)?;
        self.timeout_param("idle_in_transaction_session_timeout")
    }

    /// The role the session authenticated as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The session's effective `synchronous_commit`.
    pub fn synchronous_commit(&self) -> SyncCommit {
        self.settings
            .synchronous_commit
            .unwrap_or(self.conf.synchronous_commit)
    }

    fn durability(&self) -> Durability {
        match self.synchronous_commit() {
            SyncCommit::Off => Durability::Async,
            _ => Durability::Flushed,
        }
    }

    /// Commits the changes `decide` returns as one record, made as durable
    /// as `synchronous_commit` asks: flushed locally, then confirmed by the
    /// synchronous standbys for `remote_write`, `on` and `remote_apply`.
    ///
    /// A commit that waits for standbys is hidden from other sessions until
    /// the wait ends, however it ends (see [`crate::store::db`]).
    fn commit_write<R>(
        &mut self,
        decide: impl FnOnce(&View<'_>) -> Result<(Vec<KvOp>, R), PgError>,
    ) -> Result<R, PgError> {
        let began = std::time::Instant::now();
        let held = self.synchronous_commit().waits_for_standbys()
            && !self.conf.synchronous_standby_names.is_empty();
        let (result, end) = self.host.db().write(self.durability(), held, decide)?;
        if let Some(end) = end {
            let _hold = held.then(|| Held {
                host: self.host.clone(),
                end,
            });
            self.wait_for_standbys(end)?;
            crate::metrics::COMMIT_LATENCY.observe(began.elapsed());
        }
        Ok(result)
    }

    /// After a record ending at `end` is flushed locally: waits for the
    /// synchronous standbys as `synchronous_commit` asks.
    fn wait_for_standbys(&mut self, end: Lsn) -> Result<(), PgError> {
        let level = self.synchronous_commit();
        if level.waits_for_standbys() {
            // Only a cancel ends it: the commit is made, and PostgreSQL
            // stops statement_timeout before it commits.
            let cancel = self.interrupt.cancel_only();
            if let Some(warning) = self.host.wait_for_sync(end, level, &cancel)? {
                self.notices.push(warning);
            }
        }
        Ok(())
    }

    /// Marks the current transaction block failed (after any error in it).
    pub fn fail_transaction(&mut self) {
        if let Some(t) = &mut self.txn {
            // Aborted now, as PostgreSQL aborts it: the rows it locked are
            // free for others while the client has yet to say ROLLBACK.
            t.failed = true;
            t.locks.release();
        }
    }

    /// Forgets a CancelRequest that came while the session was idle: it
    /// cancels what was running then, not the next command. Called for
    /// every message, so it writes the shared flag only when it is set.
    pub fn forget_cancel(&self) {
        self.interrupt.forget_cancel();
    }

    fn new_txn(&self, read_only: bool, implicit: bool) -> Txn {
        Txn {
            locks: self.host.row_locks().lock_set(),
            writes: BTreeMap::new(),
            ops: Vec::new(),
            must_be_absent: Vec::new(),
            must_still_exist: Vec::new(),
            must_still_be_absent: Vec::new(),
            roles: Vec::new(),
            failed: false,
            saved: self.settings.clone(),
            kept: self.settings.clone(),
            read_only,
            implicit,
        }
    }

    /// Before a block's write of `keys` is decided: locks them (waiting
    /// for blocks that hold them), then waits for commits in flight on
    /// those it did not hold before, and returns them. Outside a block,
    /// nothing: [`Session::commit_unlocked`] waits.
    fn lock_keys<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<Vec<String>, PgError> {
        if self.txn.is_none() {
            return Ok(Vec::new());
        }
        let deadline = self.lock_deadline();
        let Some(t) = &mut self.txn else {
            return Ok(Vec::new());
        };
        // A key held before was waited for when it was taken, and no
        // write outside blocks gets past a held key since.
        let fresh = t.locks.lock(keys, &self.interrupt, deadline)?;
        // A statement outside any block takes no lock: one that committed
        // a change to these keys just before may not be visible yet (its
        // flush, or its synchronous standbys, still to come). The block
        // decides on the row once that commit shows, as PostgreSQL's
        // would wait for the row's lock. The record may never show: the
        // node was fenced while it waited for standbys, or the WAL failed;
        // those end the wait with their own errors. The wait backs off, as
        // each look takes the lock that orders commits.
        let mut nap = std::time::Duration::from_micros(200);
        while !fresh.is_empty() && self.host.db().in_flight(fresh.iter().map(String::as_str)) {
            self.host.row_locks().may_wait(&self.interrupt, deadline)?;
            self.host.db().check_writable().map_err(db_error)?;
            std::thread::sleep(self.interrupt.nap(nap));
            nap = (nap * 2).min(std::time::Duration::from_millis(5));
        }
        Ok(fresh)
    }

    /// Starts an implicit transaction block, unless a block is open: the
    /// statements of a query string of several, or of an extended-protocol
    /// batch up to its Sync, are one transaction, as PostgreSQL makes them.
    pub fn begin_implicit(&mut self) {
        if self.txn.is_none() {
            self.txn = Some(self.new_txn(false, true));
        }
    }

    /// Ends the implicit block, if one is open: commits it, or rolls it
    /// back when a statement in it failed. Returns the commit's notices
    /// (a synchronous commit's warning) for the client; the error is the
    /// commit's.
    pub fn end_implicit(&mut self) -> Result<Vec<PgError>, PgError> {
        let Some(txn) = self.txn.take_if(|t| t.implicit) else {
            return Ok(Vec::new());
        };
        let ended = self.end_block(txn, true, false);
        let notices = std::mem::take(&mut self.notices);
        ended.map(|_| notices)
    }

    /// Ends the block `txn` (taken out of the session): COMMIT (`commit`,
    /// unless it failed) or ROLLBACK, then with `chain` a new block like it.
    fn end_block(&mut self, txn: Txn, commit: bool, chain: bool) -> Result<QueryResult, PgError> {
        let tag = |t: &str| QueryResult {
            tag: t.into(),
            ..Default::default()
        };
        let read_only = txn.read_only;
        let ended = if !commit || txn.failed {
            self.settings = txn.saved;
            Ok(tag("ROLLBACK"))
        } else {
            // The block's settings (SET LOCAL too) rule its commit; then
            // its SET LOCALs end, and a failed commit is a rollback, which
            // ends its SETs as well.
            let (saved, kept) = (txn.saved.clone(), txn.kept.clone());
            let committed = self.commit_block(txn);
            self.settings = if committed.is_ok() { kept } else { saved };
            committed.map(|()| tag("COMMIT"))
        };
        // A COMMIT that fails ends the block with no new one chained, as
        // in PostgreSQL: the session is idle, not in a failed block.
        if chain && ended.is_ok() {
            self.txn = Some(self.new_txn(read_only, false));
        }
        ended
    }

    /// COMMIT of a block that did not fail: its role changes or its rows,
    /// checked against what other sessions committed meanwhile.
    fn commit_block(&mut self, txn: Txn) -> Result<(), PgError> {
        if !txn.roles.is_empty() {
            self.check_writable()?;
            self.change_roles(&txn.roles)?;
        }
        if txn.ops.is_empty() {
            return Ok(());
        }
        self.check_writable()?;
        let concurrent = |key: &str| {
            PgError::new(
                code::SERIALIZATION_FAILURE,
                "could not serialize access due to concurrent update",
            )
            .with_detail(format!(
                "Another session inserted or deleted key \"{key}\" after this transaction decided its write on it."
            ))
            .with_hint("The transaction was rolled back; run it again.")
        };
        self.commit_write(|view| {
            if let Some(k) = txn.must_be_absent.iter().find(|k| view.get(k).is_some()) {
                return Err(unique_violation(k));
            }
            if let Some(k) = txn.must_still_exist.iter().find(|k| view.get(k).is_none()) {
                return Err(concurrent(k));
            }
            if let Some(k) = txn
                .must_still_be_absent
                .iter()
                .find(|k| view.get(k).is_some())
            {
                return Err(concurrent(k));
            }
            Ok((txn.ops, ()))
        })
    }

    /// Ends any open transaction block without committing (the client went away).
    pub fn abandon(&mut self) {
        self.txn = None;
    }

    /// The columns a statement returns, without running it (Describe).
    pub fn describe(&self, stmt: &Statement) -> Option<Vec<ColumnDesc>> {
        let col = |name: &str, type_oid| ColumnDesc {
            name: name.into(),
            type_oid,
        };
        match stmt {
            Statement::Select(s) => Some(select_columns(s)),
            Statement::Functions(items) => Some(
                items
                    .iter()
                    .map(|i| {
                        let t = match &i.func {
                            Func::CurrentWalLsn
                            | Func::CurrentWalInsertLsn
                            | Func::CurrentWalFlushLsn
                            | Func::SwitchWal
                            | Func::LastWalReceiveLsn
                            | Func::LastWalReplayLsn => oid::PG_LSN,
                            Func::IsInRecovery | Func::Promote => oid::BOOL,
                            Func::Literal(Expr::Lit(s)) if s.parse::<i32>().is_ok() => oid::INT4,
                            _ => oid::TEXT,
                        };
                        col(&i.name, t)
                    })
                    .collect(),
            ),
            Statement::Show { name } if name == "all" => Some(vec![
                col("name", oid::TEXT),
                col("setting", oid::TEXT),
                col("description", oid::TEXT),
            ]),
            Statement::Show { name } => Some(vec![col(name, oid::TEXT)]),
            Statement::WaitForLsn { .. } => Some(vec![col("status", oid::TEXT)]),
            Statement::View { view, columns } => Some(
                columns
                    .iter()
                    .filter_map(|c| view.columns().iter().find(|(n, _)| n == c))
                    .map(|(n, t)| col(n, *t))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The types of a statement's parameters: `LIMIT $n` is bigint, every
    /// other parameter text.
    pub fn param_types(stmt: &Statement) -> Vec<u32> {
        let mut types = vec![oid::TEXT; stmt.param_count()];
        match stmt {
            Statement::Select(Select {
                limit: Some(Expr::Param(i)),
                ..
            }) => types[*i] = oid::INT8,
            // current_setting's missing_ok is a boolean, so a driver may
            // bind one.
            Statement::Functions(items) => {
                for item in items {
                    if let Func::CurrentSetting {
                        missing_ok: Some(Expr::Param(i)),
                        ..
                    } = &item.func
                    {
                        types[*i] = oid::BOOL;
                    }
                }
            }
            _ => {}
        }
        types
    }

    /// Runs one statement. On error inside a transaction block the caller
    /// must call [`Session::fail_transaction`].
    pub fn execute(
        &mut self,
        stmt: &Statement,
        params: &[Option<String>],
    ) -> Result<QueryResult, PgError> {
        self.interrupt
            .start(self.timeout_param("statement_timeout"));
        let mut result = self.run(stmt, params);
        self.interrupt.stop();
        if let Ok(r) = &mut result {
            r.notices.append(&mut self.notices);
        }
        self.notices.clear();
        result
    }

    fn run(&mut self, stmt: &Statement, params: &[Option<String>]) -> Result<QueryResult, PgError> {
        if let Some(t) = &self.txn {
            if t.failed && !matches!(stmt, Statement::Commit { .. } | Statement::Rollback { .. }) {
                return Err(PgError::new(
                    code::IN_FAILED_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
        }
        let tag = |t: &str| QueryResult {
            tag: t.into(),
            ..Default::default()
        };
        match stmt {
            Statement::Begin { read_only } => {
                match &mut self.txn {
                    // BEGIN in an implicit block makes it an explicit one,
                    // the statements before it included, as in PostgreSQL.
                    Some(t) if t.implicit => {
                        t.implicit = false;
                        t.read_only = *read_only;
                    }
                    Some(_) => self.notices.push(PgError::new(
                        code::ACTIVE_TRANSACTION,
                        "there is already a transaction in progress",
                    )),
                    None => self.txn = Some(self.new_txn(*read_only, false)),
                }
                Ok(tag("BEGIN"))
            }
            Statement::Commit { chain } | Statement::Rollback { chain } => {
                let commit = matches!(stmt, Statement::Commit { .. });
                let what = if commit { "COMMIT" } else { "ROLLBACK" };
                // No block, or an implicit one (which it ends): PostgreSQL's
                // warning that no BEGIN began one, and no AND CHAIN.
                if self.txn.as_ref().is_none_or(|t| t.implicit) {
                    if *chain {
                        return Err(PgError::new(
                            code::NO_ACTIVE_TRANSACTION,
                            format!("{what} AND CHAIN can only be used in transaction blocks"),
                        ));
                    }
                    self.notices.push(PgError::new(
                        code::NO_ACTIVE_TRANSACTION,
                        "there is no transaction in progress",
                    ));
                }
                match self.txn.take() {
                    Some(txn) => self.end_block(txn, commit, *chain),
                    None => Ok(tag(what)),
                }
            }
            Statement::Insert { rows, on_conflict } => self.insert(rows, *on_conflict, params),
            Statement::Update { key, value } => {
                let key = resolve_key(key, params)?;
                let value = resolve_value(value, params)?;
                let n = self.write_one(key, Some(value), |exists| exists)?;
                Ok(tag(&format!("UPDATE {n}")))
            }
            Statement::Delete { key } => {
                let key = resolve_key(key, params)?;
                let n = self.write_one(key, None, |exists| exists)?;
                Ok(tag(&format!("DELETE {n}")))
            }
            Statement::Select(s) => {
                if s.for_update {
                    self.lock_for_update(s, params)?;
                }
                self.select(s, params)
            }
            Statement::Functions(items) => self.functions(stmt, items, params),
            Statement::Set { name, value, local } => {
                if *local && self.txn.is_none() {
                    self.notices.push(PgError::new(
                        code::NO_ACTIVE_TRANSACTION,
                        "SET LOCAL can only be used in transaction blocks",
                    ));
                    // Checked all the same, as PostgreSQL does.
                    self.setting_change(name, value.as_deref())?;
                    return Ok(tag("SET"));
                }
                self.set(name, value.as_deref(), *local)?;
                Ok(tag("SET"))
            }
            Statement::Reset { name } => {
                let changes = match name {
                    Some(name) => vec![self.reset_change(name)?],
                    None => self.reset_all(),
                };
                for change in &changes {
                    self.apply_setting(change, false);
                }
                Ok(tag("RESET"))
            }
            // The session's prepared statements are its connection's:
            // the caller drops them.
            Statement::Deallocate { .. } => Ok(tag("DEALLOCATE")),
            Statement::DiscardAll => {
                if self.txn.is_some() {
                    return Err(PgError::new(
                        code::ACTIVE_TRANSACTION,
                        "DISCARD ALL cannot run inside a transaction block",
                    ));
                }
                for change in self.reset_all() {
                    self.apply_setting(&change, false);
                }
                Ok(tag("DISCARD ALL"))
            }
            Statement::Checkpoint => {
                self.require_superuser("CHECKPOINT", false)?;
                self.host.checkpoint()?;
                Ok(tag("CHECKPOINT"))
            }
            Statement::Role(role) => {
                self.check_writes_allowed(role.command())?;
                let mut notices = match &mut self.txn {
                    // Checked now against the roles as the block left
                    // them, made at COMMIT (and checked again then).
                    Some(t) if !t.ops.is_empty() => return Err(rows_and_roles()),
                    Some(t) => {
                        let (kept, notices) = self.host.check_roles(&self.user, &t.roles, role)?;
                        t.roles.push(kept);
                        notices
                    }
                    None => self.change_roles(std::slice::from_ref(role))?,
                };
                self.notices.append(&mut notices);
                Ok(tag(role.tag()))
            }
            Statement::View { view, columns } => {
                let all = view.columns();
                let picks: Vec<usize> = columns
                    .iter()
                    .filter_map(|c| all.iter().position(|(n, _)| n == c))
                    .collect();
                let rows: Vec<Vec<Option<Value>>> = self
                    .host
                    .view_rows(*view)
                    .into_iter()
                    .map(|row| {
                        picks
                            .iter()
                            .map(|i| row.get(*i).cloned().flatten())
                            .collect()
                    })
                    .collect();
                Ok(QueryResult {
                    columns: self.describe(stmt),
                    tag: format!("SELECT {}", rows.len()),
                    rows,
                    ..Default::default()
                })
            }
            Statement::WaitForLsn { lsn, timeout } => {
                self.host.wait_for_lsn(*lsn, *timeout, &self.interrupt)?;
                Ok(QueryResult {
                    columns: self.describe(stmt),
                    rows: vec![vec![Some(Value::Text("success".into()))]],
                    tag: "WAIT".into(),
                    ..Default::default()
                })
            }
            Statement::Show { name } if name == "all" => {
                // As PostgreSQL's: every setting, by name, with its value as
                // SHOW gives it and what it does. Documented settings come
                // first, so that one also set per session (synchronous_commit)
                // keeps its description through the stable sort and dedup.
                let mut rows: Vec<[String; 3]> = Settings::documented()
                    .chain(READ_ONLY_PARAMS.iter().copied())
                    .chain(
                        SESSION_PARAMS
                            .iter()
                            .map(|(name, _)| (*name, "session setting")),
                    )
                    .filter_map(|(name, help)| {
                        Some([name.to_string(), self.show(name).ok()?, help.to_string()])
                    })
                    .collect();
                rows.sort_by(|a, b| a[0].cmp(&b[0]));
                rows.dedup_by(|a, b| a[0] == b[0]);
                Ok(QueryResult {
                    columns: self.describe(stmt),
                    rows: rows
                        .into_iter()
                        .map(|r| r.into_iter().map(|v| Some(Value::Text(v))).collect())
                        .collect(),
                    tag: "SHOW".into(),
                    ..Default::default()
                })
            }
            Statement::Show { name } => {
                let value = self.show(name)?;
                Ok(QueryResult {
                    columns: self.describe(stmt),
                    rows: vec![vec![Some(Value::Text(value))]],
                    tag: "SHOW".into(),
                    ..Default::default()
                })
            }
        }
    }

    /// Refuses `what` (42501) unless the session's role is a superuser, or,
    /// with `or_replication`, a role that may replicate.
    fn require_superuser(&self, what: &str, or_replication: bool) -> Result<(), PgError> {
        let rights = self.host.rights(&self.user);
        if rights.superuser || (or_replication && rights.replication) {
            return Ok(());
        }
        let who = if or_replication {
            "a superuser or a role with REPLICATION"
        } else {
            "a superuser"
        };
        Err(PgError::new(
            code::INSUFFICIENT_PRIVILEGE,
            format!("permission denied to run {what}"),
        )
        .with_hint(format!("only {who} may run it")))
    }

    /// Makes role changes, as a commit is made: logged, in force, and
    /// waited for as `synchronous_commit` says. Returns their notices.
    fn change_roles(&mut self, statements: &[RoleStatement]) -> Result<Vec<PgError>, PgError> {
        let (end, notices) = self.host.change_roles(&self.user, statements)?;
        if let Some(end) = end {
            self.wait_for_standbys(end)?;
        }
        Ok(notices)
    }

    /// Refuses a row write in a block that changes roles.
    fn check_no_roles(&self) -> Result<(), PgError> {
        match &self.txn {
            Some(t) if !t.roles.is_empty() => Err(rows_and_roles()),
            _ => Ok(()),
        }
    }

    fn check_writable(&self) -> Result<(), PgError> {
        match self.host.write_refusal() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Refuses `what` (a command) in a READ ONLY block, then as
    /// [`Session::check_writable`].
    fn check_writes_allowed(&self, what: &str) -> Result<(), PgError> {
        if self.txn.as_ref().is_some_and(|t| t.read_only) {
            return Err(PgError::new(
                code::READ_ONLY_TRANSACTION,
                format!("cannot execute {what} in a read-only transaction"),
            ));
        }
        self.check_writable()
    }

    /// A key's value as this session sees it.
    fn lookup(&self, store: &Store, key: &str) -> Option<String> {
        if let Some(t) = &self.txn {
            if let Some(v) = t.writes.get(key) {
                return v.clone();
            }
        }
        store.get(key).map(str::to_string)
    }

    fn insert(
        &mut self,
        rows: &[(Expr, Expr)],
        on_conflict: OnConflict,
        params: &[Option<String>],
    ) -> Result<QueryResult, PgError> {
        self.check_writes_allowed("INSERT")?;
        self.check_no_roles()?;
        let mut resolved = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            resolved.push((resolve_key(k, params)?, resolve_value(v, params)?));
        }
        let fresh = self.lock_keys(resolved.iter().map(|(k, _)| k.as_str()))?;
        // Decide each row against `exists`, which sees earlier rows of this
        // statement too.
        let decide =
            |exists: &dyn Fn(&str) -> bool| -> Result<(Vec<KvOp>, Vec<String>, usize), PgError> {
                let mut ops = Vec::new();
                let mut absent = Vec::new();
                let mut mine: HashMap<&str, ()> = HashMap::new();
                let mut n = 0;
                for (key, value) in &resolved {
                    let present = mine.contains_key(key.as_str()) || exists(key);
                    if present {
                        match on_conflict {
                        OnConflict::Error => return Err(unique_violation(key)),
                        OnConflict::DoNothing => continue,
                        OnConflict::DoUpdate if mine.contains_key(key.as_str()) => {
                            return Err(PgError::new(
                                code::CARDINALITY_VIOLATION,
                                "ON CONFLICT DO UPDATE command cannot affect row a second time",
                            )
                            .with_hint("Ensure that no rows proposed for insertion within the same command have duplicate constrained values."))
                        }
                        OnConflict::DoUpdate => {}
                    }
                    } else if on_conflict == OnConflict::Error {
                        absent.push(key.clone());
                    }
                    mine.insert(key, ());
                    ops.push(KvOp::Put {
                        key: key.clone(),
                        value: value.clone(),
                    });
                    n += 1;
                }
                Ok((ops, absent, n))
            };
        let n = if let Some(t) = &self.txn {
            let (ops, absent, n) = {
                let store = self.host.db().read();
                decide(&|k| self.lookup(&store, k).is_some())?
            };
            // A plain INSERT's key must still be absent at COMMIT, unless
            // this block wrote it before: a key it deleted is absent by
            // its own doing (the DELETE rests on the row it found).
            let absent: Vec<String> = absent
                .into_iter()
                .filter(|k| !t.writes.contains_key(k))
                .collect();
            // A DO NOTHING insert rests on the key's absence from the
            // store, unless this block wrote the key before.
            let still_absent = if on_conflict == OnConflict::DoNothing {
                ops.iter()
                    .map(|op| op.key())
                    .filter(|k| !t.writes.contains_key(*k))
                    .map(str::to_string)
                    .collect()
            } else {
                Vec::new()
            };
            self.unlock_unwritten(&fresh, &ops);
            self.buffer(ops, absent);
            if let Some(t) = &mut self.txn {
                t.must_still_be_absent.extend(still_absent);
            }
            n
        } else {
            let keys: Vec<&str> = resolved.iter().map(|(k, _)| k.as_str()).collect();
            self.commit_unlocked(&keys, |view| {
                let (ops, _, n) = decide(&|k| view.get(k).is_some())?;
                Ok((ops, n))
            })?
        };
        Ok(QueryResult {
            tag: format!("INSERT 0 {n}"),
            ..Default::default()
        })
    }

    /// UPDATE (value `Some`) or DELETE (`None`) of one key, if `applies`
    /// to whether it exists. Returns the row count.
    fn write_one(
        &mut self,
        key: String,
        value: Option<String>,
        applies: impl Fn(bool) -> bool,
    ) -> Result<usize, PgError> {
        self.check_writes_allowed(if value.is_some() { "UPDATE" } else { "DELETE" })?;
        self.check_no_roles()?;
        let op = match value {
            Some(value) => KvOp::Put {
                key: key.clone(),
                value,
            },
            None => KvOp::Delete { key: key.clone() },
        };
        let fresh = self.lock_keys([key.as_str()])?;
        if let Some(t) = &self.txn {
            let exists = self.lookup(&self.host.db().read(), &key).is_some();
            if !applies(exists) {
                self.unlock_unwritten(&fresh, &[]);
                return Ok(0);
            }
            // An UPDATE or DELETE rests on the row being in the store
            // (another session deleting it too would make both say
            // "DELETE 1"), unless this block wrote the key before.
            let rests_on_row = !t.writes.contains_key(&key);
            self.buffer(vec![op], vec![]);
            if let Some(t) = &mut self.txn {
                if rests_on_row {
                    t.must_still_exist.push(key);
                }
            }
            return Ok(1);
        }
        self.commit_unlocked(&[key.as_str()], |view| {
            if applies(view.get(&key).is_some()) {
                Ok((vec![op], 1))
            } else {
                Ok((vec![], 0))
            }
        })
    }

    /// `SELECT … FOR UPDATE` by key: in a block, locks the key as a write
    /// would (until the block ends); outside one, waits until no block
    /// holds it, as PostgreSQL's lock for the statement would.
    fn lock_for_update(&mut self, s: &Select, params: &[Option<String>]) -> Result<(), PgError> {
        self.check_writes_allowed("SELECT FOR UPDATE/SHARE")?;
        let Filter::Key(k) = &s.filter else {
            return Ok(());
        };
        let Some(key) = resolve(k, params)? else {
            return Ok(());
        };
        if self.txn.is_some() {
            // As PostgreSQL locks no row that is not there, a missing key
            // is not kept locked.
            let fresh = self.lock_keys([key.as_str()])?;
            if self.lookup(&self.host.db().read(), &key).is_none() {
                self.unlock_unwritten(&fresh, &[]);
            }
            Ok(())
        } else {
            let deadline = self.lock_deadline();
            self.host
                .row_locks()
                .wait_unlocked([key.as_str()], &self.interrupt, deadline)
        }
    }

    /// After a block's statement locked `fresh` keys (held by the block
    /// only since the statement began): frees those it wrote nothing to,
    /// as PostgreSQL locks no row it does not change.
    fn unlock_unwritten(&mut self, fresh: &[String], ops: &[KvOp]) {
        if let Some(t) = &mut self.txn {
            for key in fresh {
                if !ops.iter().any(|op| op.key() == key) {
                    t.locks.unlock(key);
                }
            }
        }
    }

    /// Commits a statement outside any block that writes `keys`, when no
    /// block holds any of them. The lock table is looked at again as the
    /// write is decided, under the lock that orders commits: a block that
    /// locked a key after the first look sees this write as in flight and
    /// waits for it, and one that locked it before makes this write wait
    /// and decide again. So no block decides on a row such a write is
    /// about to change.
    fn commit_unlocked<R>(
        &mut self,
        keys: &[&str],
        decide: impl FnOnce(&View<'_>) -> Result<(Vec<KvOp>, R), PgError>,
    ) -> Result<R, PgError> {
        let locks = self.host.row_locks().clone();
        // Decided once: a try that finds a key locked returns before.
        let mut decide = Some(decide);
        // lock_timeout is read only when there is something to wait for.
        let mut deadline = None;
        loop {
            if locks.any_locked(keys) {
                let d = *deadline.get_or_insert_with(|| self.lock_deadline());
                locks.wait_unlocked(keys.iter().copied(), &self.interrupt, d)?;
            }
            let decided = self.commit_write(|view| {
                if locks.any_locked(keys) {
                    return Ok((Vec::new(), None));
                }
                let decide = decide.take().expect("a write is decided at most once");
                let (ops, r) = decide(view)?;
                Ok((ops, Some(r)))
            })?;
            if let Some(r) = decided {
                return Ok(r);
            }
        }
    }

    fn buffer(&mut self, ops: Vec<KvOp>, absent: Vec<String>) {
        if let Some(t) = &mut self.txn {
            for op in &ops {
                let v = match op {
                    KvOp::Put { value, .. } => Some(value.clone()),
                    KvOp::Delete { .. } => None,
                };
                t.writes.insert(op.key().to_string(), v);
            }
            t.ops.extend(ops);
            t.must_be_absent.extend(absent);
        }
    }

    fn select(&self, s: &Select, params: &[Option<String>]) -> Result<QueryResult, PgError> {
        let limit = match &s.limit {
            None => None,
            Some(e) => match resolve(e, params)? {
                None => None,
                Some(v) => Some(
                    v.trim()
                        .parse::<i64>()
                        .ok()
                        .map(|n| {
                            if n < 0 {
                                Err(PgError::new(
                                    code::INVALID_ROW_COUNT_IN_LIMIT,
                                    "LIMIT must not be negative",
                                ))
                            } else {
                                Ok(n)
                            }
                        })
                        .transpose()?
                        .ok_or_else(|| {
                            PgError::new(
                                code::INVALID_TEXT_REPRESENTATION,
                                format!(
                                    "invalid LIMIT \"{v}\": expected a non-negative whole number"
                                ),
                            )
                        })? as usize,
                ),
            },
        };
        let store = self.host.db().read();
        let (lo, hi, prefix): (Bound<String>, Bound<String>, Option<String>) = match &s.filter {
            Filter::All => (Bound::Unbounded, Bound::Unbounded, None),
            Filter::Key(k) => match resolve(k, params)? {
                None => (
                    Bound::Excluded(String::new()),
                    Bound::Excluded(String::new()),
                    None,
                ),
                Some(k) => (Bound::Included(k.clone()), Bound::Included(k), None),
            },
            Filter::Range { lo, hi } => {
                let b = |x: &Option<(Expr, bool)>| -> Result<Bound<String>, PgError> {
                    Ok(match x {
                        None => Bound::Unbounded,
                        Some((e, incl)) => match resolve(e, params)? {
                            None => Bound::Excluded(String::new()),
                            Some(v) if *incl => Bound::Included(v),
                            Some(v) => Bound::Excluded(v),
                        },
                    })
                };
                (b(lo)?, b(hi)?, None)
            }
            Filter::Like(p) => {
                let pattern = resolve(p, params)?.unwrap_or_default();
                match like_prefix(&pattern) {
                    Some(prefix) => (
                        Bound::Included(prefix.clone()),
                        Bound::Unbounded,
                        Some(prefix),
                    ),
                    None => {
                        return Err(PgError::new(
                            code::FEATURE_NOT_SUPPORTED,
                            format!("LIKE pattern '{pattern}' is not supported"),
                        )
                        .with_hint("walship supports exact keys and prefixes: key LIKE 'prefix%'"))
                    }
                }
            }
        };
        let empty_range = matches!((&lo, &hi), (Bound::Excluded(a), Bound::Excluded(b)) if a.is_empty() && b.is_empty())
            || matches!((&lo, &hi), (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) if a > b);
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut counted = 0usize;
        if !empty_range {
            let in_prefix = |k: &str| prefix.as_deref().is_none_or(|p| k.starts_with(p));
            let own = self
                .txn
                .as_ref()
                .map(|t| &t.writes)
                .filter(|w| !w.is_empty());
            let lo_ref = bound_ref(&lo);
            let hi_ref = bound_ref(&hi);
            let count_only = s.projection == Projection::Count;
            let point = match (&lo, &hi) {
                (Bound::Included(a), Bound::Included(b)) if a == b => Some(a),
                _ => None,
            };
            match own {
                None if point.is_some() => {
                    // One key: a lookup, not a walk over a range.
                    if let Some((k, v)) = point.and_then(|k| store.get(k).map(|v| (k, v))) {
                        counted = 1;
                        if !count_only && limit != Some(0) {
                            rows.push((k.clone(), v.to_string()));
                        }
                    }
                }
                None if count_only => {
                    counted = store
                        .range(lo_ref, hi_ref)
                        .take_while(|(k, _)| in_prefix(k))
                        .count();
                }
                None => {
                    let iter = store.range(lo_ref, hi_ref);
                    let want = limit.unwrap_or(usize::MAX);
                    let push = |(k, v): (&str, &str)| rows.push((k.to_string(), v.to_string()));
                    if s.descending {
                        iter.rev()
                            .filter(|(k, _)| in_prefix(k))
                            .take(want)
                            .for_each(push);
                    } else {
                        iter.take_while(|(k, _)| in_prefix(k))
                            .take(want)
                            .for_each(push);
                    }
                }
                Some(own) => {
                    let mut merged: BTreeMap<String, String> = store
                        .range(lo_ref, hi_ref)
                        .filter(|(k, _)| in_prefix(k))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    for (k, v) in own
                        .range::<String, _>((lo.clone(), hi.clone()))
                        .filter(|(k, _)| in_prefix(k))
                    {
                        match v {
                            Some(v) => merged.insert(k.clone(), v.clone()),
                            None => merged.remove(k),
                        };
                    }
                    counted = merged.len();
                    rows = merged.into_iter().collect();
                    if s.descending {
                        rows.reverse();
                    }
                    if !count_only {
                        rows.truncate(limit.unwrap_or(usize::MAX));
                    }
                }
            }
        }
        drop(store);
        let columns = Some(select_columns(s));
        let result_rows: Vec<Vec<Option<Value>>> = match &s.projection {
            Projection::Count if limit == Some(0) => vec![],
            Projection::Count => vec![vec![Some(Value::Int(counted as i64))]],
            Projection::Columns(cols) => rows
                .into_iter()
                .map(|(k, v)| {
                    cols.iter()
                        .map(|c| {
                            Some(Value::Text(match c {
                                Column::Key => k.clone(),
                                Column::Value => v.clone(),
                            }))
                        })
                        .collect()
                })
                .collect(),
        };
        Ok(QueryResult {
            tag: format!("SELECT {}", result_rows.len()),
            columns,
            rows: result_rows,
            ..Default::default()
        })
    }

    fn functions(
        &mut self,
        stmt: &Statement,
        items: &[super::parse::FuncItem],
        params: &[Option<String>],
    ) -> Result<QueryResult, PgError> {
        let db = self.host.db();
        let mut row = Vec::with_capacity(items.len());
        for item in items {
            // Permission first, as PostgreSQL checks it before recovery.
            if matches!(item.func, Func::SwitchWal) {
                self.require_superuser("pg_switch_wal()", false)?;
            }
            let v = match &item.func {
                Func::CurrentWalLsn
                | Func::CurrentWalInsertLsn
                | Func::CurrentWalFlushLsn
                | Func::SwitchWal
                    if self.host.in_recovery() =>
                {
                    return Err(PgError::new(
                        code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                        "recovery is in progress",
                    )
                    .with_hint("WAL control functions cannot be executed during recovery; use pg_last_wal_receive_lsn() and pg_last_wal_replay_lsn()"));
                }
                Func::CurrentWalLsn | Func::CurrentWalInsertLsn => {
                    Some(Value::Lsn(db.wal().insert_lsn()))
                }
                Func::CurrentWalFlushLsn => Some(Value::Lsn(db.wal().flushed_lsn())),
                Func::SwitchWal => {
                    self.check_writable()?;
                    Some(Value::Lsn(db.switch_wal()?))
                }
                Func::Fence(e) => {
                    self.require_superuser("walship_fence()", true)?;
                    let text = resolve(e, params)?.unwrap_or_default();
                    let epoch: u64 = text.parse().map_err(|_| {
                        PgError::new(
                            code::INVALID_TEXT_REPRESENTATION,
                            format!("invalid epoch \"{text}\": expected a positive integer"),
                        )
                    })?;
                    self.host.fence(epoch)?;
                    Some(Value::Text("fenced".into()))
                }
                Func::Promote => {
                    self.require_superuser("pg_promote()", false)?;
                    self.host.promote(&self.interrupt)?;
                    Some(Value::Bool(true))
                }
                Func::StoreChecksum => {
                    let store = db.read();
                    Some(Value::Text(format!(
                        "{} {:08x}",
                        store.applied(),
                        store.checksum()
                    )))
                }
                Func::IsInRecovery => Some(Value::Bool(self.host.in_recovery())),
                Func::LastWalReceiveLsn => self.host.last_receive_lsn().map(Value::Lsn),
                Func::LastWalReplayLsn => self.host.last_replay_lsn().map(Value::Lsn),
                Func::CurrentUser => Some(Value::Text(self.user.clone())),
                Func::Version => Some(Value::Text(format!(
                    "PostgreSQL 15.0 (walship {})",
                    env!("CARGO_PKG_VERSION")
                ))),
                Func::CurrentSetting { name, missing_ok } => {
                    let name = resolve(name, params)?.unwrap_or_default();
                    // NULL in, NULL out: PostgreSQL's function is strict.
                    let missing_ok = match missing_ok {
                        None => Some(false),
                        Some(e) => resolve(e, params)?
                            .map(|v| {
                                crate::node::config::parse_bool(&v).map_err(|_| {
                                    PgError::new(
                                        code::INVALID_TEXT_REPRESENTATION,
                                        format!("invalid input syntax for type boolean: \"{v}\""),
                                    )
                                })
                            })
                            .transpose()?,
                    };
                    match missing_ok {
                        None => None,
                        Some(missing_ok) => match self.show(&name.to_ascii_lowercase()) {
                            Ok(v) => Some(Value::Text(v)),
                            Err(e) if missing_ok && e.code == code::UNDEFINED_OBJECT => None,
                            Err(e) => return Err(e),
                        },
                    }
                }
                Func::Literal(e) => resolve(e, params)?.map(|s| match s.parse::<i32>() {
                    Ok(i) => Value::Int(i64::from(i)),
                    Err(_) => Value::Text(s),
                }),
            };
            row.push(v);
        }
        Ok(QueryResult {
            columns: self.describe(stmt),
            rows: vec![row],
            tag: "SELECT 1".into(),
            ..Default::default()
        })
    }

    /// SET, or SET LOCAL (`local`): in a transaction block, a ROLLBACK
    /// undoes either, and its end undoes SET LOCAL, as in PostgreSQL.
    fn set(&mut self, name: &str, value: Option<&str>, local: bool) -> Result<(), PgError> {
        // SET … TO DEFAULT is RESET, as in PostgreSQL: back to the value
        // the session began with (its startup options included).
        let change = match value {
            Some(v) if !v.eq_ignore_ascii_case("default") => self.setting_change(name, Some(v))?,
            _ => self.reset_change(name)?,
        };
        self.apply_setting(&change, local);
        Ok(())
    }

    /// Makes a checked SET (or RESET): in force now, and, unless `local`,
    /// what the block's COMMIT keeps.
    fn apply_setting(&mut self, change: &SettingChange, local: bool) {
        if let Some(t) = &mut self.txn {
            if !local {
                t.kept.apply(change);
            }
        }
        self.settings.apply(change);
    }

    /// RESET `name`: back to its value as the session began.
    fn reset_change(&self, name: &str) -> Result<SettingChange, PgError> {
        if name == "synchronous_commit" {
            return Ok(SettingChange::SynchronousCommit(
                self.baseline.synchronous_commit,
            ));
        }
        match self.baseline.params.get(name) {
            Some(value) => Ok(SettingChange::Param(name.to_string(), Some(value.clone()))),
            // Says why it cannot be (unknown, or not a session setting).
            None => self.setting_change(name, None),
        }
    }

    /// RESET ALL.
    fn reset_all(&self) -> Vec<SettingChange> {
        let mut changes: Vec<SettingChange> = SESSION_PARAMS
            .iter()
            .map(|(name, _)| {
                let value = self.baseline.params.get(*name).cloned();
                SettingChange::Param(name.to_string(), value)
            })
            .collect();
        changes.push(SettingChange::SynchronousCommit(
            self.baseline.synchronous_commit,
        ));
        changes
    }

    /// What SET `name` to `value` would change, if it may.
    fn setting_change(&self, name: &str, value: Option<&str>) -> Result<SettingChange, PgError> {
        let value = value.filter(|v| !v.eq_ignore_ascii_case("default"));
        if name == "synchronous_commit" {
            return Ok(SettingChange::SynchronousCommit(match value {
                None => None,
                Some(v) => Some(v.parse().map_err(|why: String| {
                    PgError::new(
                        code::INVALID_PARAMETER_VALUE,
                        format!("invalid value for parameter \"synchronous_commit\": \"{v}\""),
                    )
                    .with_hint(why)
                })?),
            }));
        }
        if name == "client_encoding" {
            return Ok(SettingChange::Param(
                name.to_string(),
                Some(client_encoding(value.unwrap_or("UTF8"))?.to_string()),
            ));
        }
        let is_timeout = self.conf.session_timeout(name).is_some();
        if let (Some(v), true) = (value, is_timeout) {
            // Kept as SHOW prints it.
            let timeout = parse_timeout(v).map_err(|bad| {
                let e = PgError::new(code::INVALID_PARAMETER_VALUE, bad.message(name, v));
                match bad {
                    BadTimeout::NotATime => e.with_hint(TIMEOUT_UNITS_HINT),
                    BadTimeout::OutOfRange(_) => e,
                }
            })?;
            return Ok(SettingChange::Param(
                name.to_string(),
                Some(format_timeout(timeout)),
            ));
        }
        let Some((_, default)) = SESSION_PARAMS.iter().find(|(n, _)| *n == name) else {
            return Err(if self.conf.show(name).is_some() {
                PgError::new(
                    code::CANT_CHANGE_RUNTIME_PARAM,
                    format!("parameter \"{name}\" cannot be changed now"),
                )
                .with_hint("set it in walship.conf; settings marked (reload) change on SIGHUP")
            } else {
                PgError::new(
                    code::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                )
            });
        };
        Ok(SettingChange::Param(
            name.to_string(),
            value.or(*default).map(str::to_string),
        ))
    }

    fn show(&self, name: &str) -> Result<String, PgError> {
        match name {
            "synchronous_commit" => return Ok(self.synchronous_commit().to_string()),
            "is_superuser" => {
                let on = self.host.rights(&self.user).superuser;
                return Ok(if on { "on" } else { "off" }.into());
            }
            "session_authorization" => return Ok(self.user.clone()),
            _ => {}
        }
        if let Some(v) = self.settings.params.get(name) {
            return Ok(v.clone());
        }
        if let Some(v) = self.conf.show(name) {
            return Ok(v);
        }
        self.host.show(name).ok_or_else(|| {
            PgError::new(
                code::UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"{name}\""),
            )
        })
    }
}

/// `client_encoding` as PostgreSQL shows it, for the encodings walship
/// speaks: UTF8, and SQL_ASCII (bytes as they are, which UTF-8 text is).
/// walship converts nothing, so any other is refused rather than have its
/// text read as UTF-8.
fn client_encoding(name: &str) -> Result<&'static str, PgError> {
    let plain: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_uppercase();
    match plain.as_str() {
        "UTF8" | "UNICODE" => Ok("UTF8"),
        "SQLASCII" => Ok("SQL_ASCII"),
        _ => Err(PgError::new(
            code::FEATURE_NOT_SUPPORTED,
            format!("client_encoding \"{name}\" is not supported: walship speaks UTF8 only"),
        )
        .with_hint("set client_encoding to UTF8 (PGCLIENTENCODING=UTF8 for libpq clients)")),
    }
}

/// The read-only parameters [`Host::show`] answers, with what they say
/// (for `SHOW ALL`).
pub const READ_ONLY_PARAMS: &[(&str, &str)] = &[
    ("block_size", "the size of a WAL page"),
    ("data_directory", "the node's data directory"),
    ("data_directory_mode", "the data directory's permissions"),
    ("epoch", "the epoch this node writes in"),
    ("fenced_by", "the epoch that fenced this node, if one did"),
    (
        "in_hot_standby",
        "whether this node is a standby serving reads",
    ),
    ("integer_datetimes", "PostgreSQL's integer timestamps"),
    ("is_superuser", "whether this session's role is a superuser"),
    ("max_identifier_length", "the longest name"),
    (
        "password_encryption",
        "how a password given to CREATE or ALTER ROLE is hashed",
    ),
    (
        "session_authorization",
        "the role this session authenticated as",
    ),
    ("server_encoding", "the server's character set"),
    ("server_version", "the PostgreSQL version walship speaks as"),
    ("server_version_num", "the same, as a number"),
    (
        "standard_conforming_strings",
        "backslashes in strings are literal",
    ),
    ("system_identifier", "the system this node belongs to"),
    ("timeline", "the timeline this node is on"),
    ("wal_block_size", "the size of a WAL page"),
    ("wal_segment_size", "the size of a WAL segment"),
];

/// The columns a SELECT returns.
fn select_columns(s: &Select) -> Vec<ColumnDesc> {
    let col = |name: &str| ColumnDesc {
        name: name.into(),
        type_oid: oid::TEXT,
    };
    let mut columns = match &s.projection {
        Projection::Count => vec![ColumnDesc {
            name: "count".into(),
            type_oid: oid::INT8,
        }],
        Projection::Columns(cols) => cols
            .iter()
            .map(|c| match c {
                Column::Key => col("key"),
                Column::Value => col("value"),
            })
            .collect(),
    };
    for (column, alias) in columns.iter_mut().zip(&s.names) {
        if let Some(alias) = alias {
            column.name = alias.clone();
        }
    }
    columns
}

fn bound_ref(b: &Bound<String>) -> Bound<&str> {
    match b {
        Bound::Included(s) => Bound::Included(s.as_str()),
        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// `'abc%'` → `abc`: the only LIKE patterns walship serves are a literal
/// prefix followed by one `%` (with `\` escaping `%`, `_` and `\`).
fn like_prefix(pattern: &str) -> Option<String> {
    let mut prefix = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => prefix.push(chars.next()?),
            '%' => return chars.as_str().is_empty().then_some(prefix),
            '_' => return None,
            c => prefix.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_intervals_print_as_postgresql_does() {
        assert_eq!(format_timestamp(0), "2000-01-01 00:00:00.000000+00");
        assert_eq!(
            format_timestamp(848_000_000_000_000 + 1),
            "2026-11-14 19:33:20.000001+00"
        );
        assert_eq!(
            Value::Interval(std::time::Duration::from_micros(3_723_000_042)).to_text(),
            "01:02:03.000042"
        );
    }

    #[test]
    fn like_prefixes() {
        assert_eq!(like_prefix("abc%"), Some("abc".into()));
        assert_eq!(like_prefix("%"), Some("".into()));
        assert_eq!(like_prefix("a\\%b%"), Some("a%b".into()));
        assert_eq!(like_prefix("a%b"), None);
        assert_eq!(like_prefix("a_%"), None);
        assert_eq!(like_prefix("abc"), None);
    }
}
