//! Synchronous replication: which standbys a commit waits for
//! (`synchronous_standby_names`), what every walsender's standby has
//! reported, and the wait itself.
//!
//! The commit path: a commit is appended, flushed locally (group commit),
//! and applied, exactly as with `synchronous_commit = local`; only then
//! does the committing session wait here. Walsenders wait on the WAL
//! writer's flush signal, so the moment a flush completes every walsender
//! sends the new WAL — the network round trip starts when the local fsync
//! ends, with no polling interval in between, and one standby reply
//! releases every commit it covers. Sending WAL before it is flushed
//! locally would overlap the two, but a standby could then hold WAL that a
//! primary crash loses, and a promoted standby would diverge from the
//! primary's own recovery; walship does not trade that safety for the
//! latency of one fsync.
//!
//! Invariant: a commit acknowledged at `on` is flushed on the primary and
//! on the synchronous standbys that `synchronous_standby_names` requires.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::info;

use super::walsender::Peer;
use crate::node::config::SyncCommit;
use crate::sql::interrupt::Interrupt;
use crate::sqlstate::{code, PgError};
use crate::wal::Lsn;

/// `synchronous_standby_names`, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncStandbyNames {
    pub method: SyncMethod,
    pub num: usize,
    /// Names in priority order; `*` matches any standby.
    pub names: Vec<String>,
    /// The setting as written, which SHOW gives back (as PostgreSQL's
    /// does); `Display` gives the canonical `FIRST n (…)` form instead.
    pub written: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// The `num` standbys of highest priority (first in the list).
    #[default]
    First,
    /// Any `num` of the listed standbys (a quorum).
    Any,
}

impl SyncStandbyNames {
    /// Parses PostgreSQL's syntax: `''` (none), `s1`, `s1, s2` (FIRST 1),
    /// `2 (s1, s2, s3)` (FIRST 2), `FIRST n (…)`, `ANY n (…)`, `*`.
    pub fn parse(s: &str) -> Result<SyncStandbyNames, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(SyncStandbyNames::default());
        }
        let (method, rest) = match s.split_once(|c: char| c.is_whitespace()) {
            Some((w, rest)) if w.eq_ignore_ascii_case("first") => (SyncMethod::First, rest.trim()),
            Some((w, rest)) if w.eq_ignore_ascii_case("any") => (SyncMethod::Any, rest.trim()),
            _ => (SyncMethod::First, s),
        };
        let (num, list) = match rest.find('(') {
            Some(open) => {
                let num: usize = rest[..open].trim().parse().map_err(|_| {
                    format!("expected a number of standbys before \"(\" in \"{s}\"")
                })?;
                let list = rest[open + 1..]
                    .trim_end()
                    .strip_suffix(')')
                    .ok_or_else(|| format!("missing \")\" in \"{s}\""))?;
                (num, list)
            }
            None if method == SyncMethod::Any || rest.len() != s.len() => {
                return Err(format!(
                    "expected FIRST n (name, …) or ANY n (name, …), got \"{s}\""
                ))
            }
            None => (1, rest),
        };
        let names: Vec<String> = list
            .split(',')
            .map(|n| n.trim().trim_matches('"').to_string())
            .collect();
        if names.iter().any(String::is_empty) {
            return Err(format!("empty standby name in \"{s}\""));
        }
        if num == 0 || num > names.len() {
            return Err(format!(
                "the number of synchronous standbys ({num}) must be between 1 and the number of names ({})",
                names.len()
            ));
        }
        Ok(SyncStandbyNames {
            method,
            num,
            names,
            written: s.to_string(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The priority of a standby (1 is highest), or `None` when it is not
    /// a candidate.
    pub fn priority(&self, application_name: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|n| n == "*" || n.eq_ignore_ascii_case(application_name))
            .map(|i| i + 1)
    }
}

impl std::fmt::Display for SyncStandbyNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return Ok(());
        }
        let method = match self.method {
            SyncMethod::First => "FIRST",
            SyncMethod::Any => "ANY",
        };
        write!(f, "{method} {} ({})", self.num, self.names.join(", "))
    }
}

/// Samples of (LSN sent, when) to turn reported positions into lag times.
#[derive(Default)]
struct LagTracker {
    samples: VecDeque<(Lsn, Instant)>,
}

const MAX_LAG_SAMPLES: usize = 4096;

impl LagTracker {
    fn sent(&mut self, upto: Lsn, now: Instant) {
        let full = self.samples.len() >= MAX_LAG_SAMPLES;
        match self.samples.back_mut() {
            Some((lsn, _)) if *lsn >= upto => {}
            Some((lsn, _)) if full => *lsn = upto,
            _ => self.samples.push_back((upto, now)),
        }
    }

    /// How long ago the oldest WAL beyond `pos` was sent; zero when `pos`
    /// covers everything sent (an idle, caught-up standby has no lag).
    fn lag(&self, pos: Lsn, now: Instant) -> Duration {
        self.samples
            .iter()
            .find(|(lsn, _)| *lsn > pos)
            .map_or(Duration::ZERO, |(_, t)| now.saturating_duration_since(*t))
    }

    fn forget_upto(&mut self, pos: Lsn) {
        while self.samples.front().is_some_and(|(lsn, _)| *lsn <= pos) {
            self.samples.pop_front();
        }
    }
}

/// One walsender, as `pg_stat_replication` shows it.
struct Sender {
    peer: Peer,
    streaming: bool,
    /// It has sent all WAL flushed when it looked, once since it began
    /// streaming: PostgreSQL's `catchup` state ends then, for good, and
    /// only then may the standby be synchronous.
    caught_up: bool,
    /// The replication slot it streams through.
    slot: Option<String>,
    sent: Lsn,
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    reply_time: Option<i64>,
    lag: LagTracker,
}

/// A row of `pg_stat_replication`.
#[derive(Clone, Debug)]
pub struct SenderStatus {
    pub peer: Peer,
    pub state: &'static str,
    pub sent: Lsn,
    pub write: Lsn,
    pub flush: Lsn,
    pub replay: Lsn,
    pub write_lag: Duration,
    pub flush_lag: Duration,
    pub replay_lag: Duration,
    pub sync_priority: usize,
    pub sync_state: &'static str,
    pub reply_time: Option<i64>,
}

/// Every walsender of the node, and the commits waiting on them.
#[derive(Default)]
pub struct WalSenders {
    senders: Mutex<Vec<Sender>>,
    /// One per position a commit can wait for (write, flush, apply; see
    /// [`position_class`]): a standby's report wakes only the commits
    /// waiting for a position it moved. (A standby reports its write
    /// position before it syncs, and that must not wake every commit
    /// waiting for the flush.)
    changed: [Condvar; 3],
    /// When a standby last reported, or the node began to be a primary
    /// (see [`WalSenders::mark_heard`]): what isolation self-fencing
    /// measures.
    last_heard: Mutex<Option<Instant>>,
}

impl WalSenders {
    fn lock(&self) -> MutexGuard<'_, Vec<Sender>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, peer: Peer) {
        self.lock().push(Sender {
            peer,
            streaming: false,
            caught_up: false,
            slot: None,
            sent: Lsn::INVALID,
            write: Lsn::INVALID,
            flush: Lsn::INVALID,
            apply: Lsn::INVALID,
            reply_time: None,
            lag: LagTracker::default(),
        });
    }

    /// Restarts the silence clock: on every standby report, and when the
    /// node starts or is promoted (its standbys get a full timeout to
    /// connect).
    pub fn mark_heard(&self) {
        *self.last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// How long since a standby reported (or [`WalSenders::mark_heard`]).
    pub fn silent_for(&self) -> Duration {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    pub fn unregister(&self, pid: i32) {
        self.lock().retain(|s| s.peer.pid != pid);
        for changed in &self.changed {
            changed.notify_all();
        }
    }

    fn with(&self, pid: i32, f: impl FnOnce(&mut Sender)) {
        if let Some(s) = self.lock().iter_mut().find(|s| s.peer.pid == pid) {
            f(s);
        }
    }

    /// The walsender began streaming from `start`.
    pub fn streaming(&self, pid: i32, start: Lsn, slot: Option<&str>) {
        self.with(pid, |s| {
            s.streaming = true;
            s.caught_up = false;
            s.sent = start;
            s.slot = slot.map(str::to_string);
        });
    }

    /// The walsender has sent all the WAL there is, for the first time
    /// since it began streaming.
    pub fn caught_up(&self, pid: i32) {
        self.with(pid, |s| s.caught_up = true);
        // A new synchronous standby may release commits.
        for changed in &self.changed {
            changed.notify_all();
        }
    }

    /// The walsender streaming through `slot` (`pg_replication_slots`'
    /// `active_pid`).
    pub fn pid_of_slot(&self, slot: &str) -> Option<i32> {
        self.lock()
            .iter()
            .find(|s| s.streaming && s.slot.as_deref() == Some(slot))
            .map(|s| s.peer.pid)
    }

    /// WAL up to `upto` went out.
    pub fn sent(&self, pid: i32, upto: Lsn) {
        self.with(pid, |s| {
            s.sent = upto;
            s.lag.sent(upto, Instant::now());
        });
    }

    /// The standby's status update; wakes waiting commits.
    pub fn reply(&self, pid: i32, write: Lsn, flush: Lsn, apply: Lsn, reply_time: i64) {
        let mut moved = [false; 3];
        self.with(pid, |s| {
            moved = [write != s.write, flush != s.flush, apply != s.apply];
            s.write = write;
            s.flush = flush;
            s.apply = apply;
            s.reply_time = Some(reply_time);
            s.lag.forget_upto(write.min(flush).min(apply));
        });
        self.mark_heard();
        for (changed, moved) in self.changed.iter().zip(moved) {
            if moved {
                changed.notify_all();
            }
        }
    }

    /// The oldest WAL a streaming walsender still reads or its standby
    /// may ask for again.
    pub fn oldest_needed(&self) -> Option<Lsn> {
        self.lock()
            .iter()
            .filter(|s| s.streaming)
            .map(|s| {
                if s.flush == Lsn::INVALID {
                    s.sent
                } else {
                    s.flush.min(s.sent)
                }
            })
            .min()
    }

    /// `pg_stat_replication`'s rows.
    pub fn status(&self, names: &SyncStandbyNames) -> Vec<SenderStatus> {
        let senders = self.lock();
        let now = Instant::now();
        let sync = sync_members(&senders, names);
        senders
            .iter()
            .map(|s| {
                // In a quorum every listed standby is alike: PostgreSQL
                // shows them all at priority 1.
                let priority = match names.priority(&s.peer.application_name) {
                    Some(_) if s.streaming && names.method == SyncMethod::Any => 1,
                    Some(p) if s.streaming => p,
                    _ => 0,
                };
                let sync_state = if priority == 0 {
                    "async"
                } else if !s.caught_up {
                    "potential"
                } else if names.method == SyncMethod::Any {
                    "quorum"
                } else if sync.contains(&s.peer.pid) {
                    "sync"
                } else {
                    "potential"
                };
                let state = match (s.streaming, s.caught_up) {
                    (false, _) => "startup",
                    (true, false) => "catchup",
                    (true, true) => "streaming",
                };
                SenderStatus {
                    peer: s.peer.clone(),
                    state,
                    sent: s.sent,
                    write: s.write,
                    flush: s.flush,
                    replay: s.apply,
                    write_lag: s.lag.lag(s.write, now),
                    flush_lag: s.lag.lag(s.flush, now),
                    replay_lag: s.lag.lag(s.apply, now),
                    sync_priority: priority,
                    sync_state,
                    reply_time: s.reply_time,
                }
            })
            .collect()
    }

    /// Wakes every waiting commit, to look again at what ends its wait
    /// (a fence, a reload).
    pub fn wake_all(&self) {
        let _senders = self.lock();
        for changed in &self.changed {
            changed.notify_all();
        }
    }

    /// Waits until the synchronous standbys that `names` gives (read again
    /// each time the wait looks, so a reload applies to waiting commits as
    /// in PostgreSQL; none, and the wait ends) have reached `lsn` at
    /// `level`. Returns a warning for the client when the wait was cancelled (the
    /// commit stands locally, as in PostgreSQL), an error when the node
    /// is shutting down, or when `fenced` names the epoch of a promotion
    /// that fenced it: then the commit is never acknowledged, even if a
    /// standby confirms it later (the new primary may not have it), and
    /// that is looked at first, before any standby's position.
    pub fn wait(
        &self,
        lsn: Lsn,
        level: SyncCommit,
        names: &dyn Fn() -> SyncStandbyNames,
        interrupt: &Interrupt,
        shutting_down: &dyn Fn() -> bool,
        fenced: &dyn Fn() -> Option<u64>,
    ) -> Result<Option<PgError>, PgError> {
        let began = Instant::now();
        let mut logged = false;
        let mut senders = self.lock();
        loop {
            if let Some(epoch) = fenced() {
                return Err(PgError::new(
                    code::READ_ONLY_TRANSACTION,
                    format!("this node was fenced by epoch {epoch} while the commit waited for synchronous replication: it is not acknowledged"),
                )
                .with_detail("The transaction has already committed locally, but might not have been replicated to the standby, and the new primary may not have it.")
                .with_hint("write to the new primary"));
            }
            let names = names();
            if names.is_empty()
                || synced_position(&senders, &names, level).is_some_and(|p| p >= lsn)
            {
                if logged {
                    info!(lsn = %lsn, waited_ms = began.elapsed().as_millis() as u64, "synchronous replication caught up");
                }
                return Ok(None);
            }
            if let Err(why) = interrupt.check() {
                return Ok(Some(
                    PgError::new(
                        code::QUERY_CANCELED,
                        format!("canceling wait for synchronous replication due to {why}"),
                    )
                    .with_detail("The transaction has already committed locally, but might not have been replicated to the standby."),
                ));
            }
            if shutting_down() {
                return Err(PgError::fatal(
                    code::ADMIN_SHUTDOWN,
                    "canceling the wait for synchronous replication and terminating connection due to administrator command",
                )
                .with_detail("The transaction has already committed locally, but might not have been replicated to the standby."));
            }
            if !logged && began.elapsed() >= Duration::from_secs(1) {
                logged = true;
                info!(
                    lsn = %lsn,
                    level = %level,
                    synchronous_standby_names = %names,
                    standbys = %describe(&senders, &names),
                    "commit is waiting for synchronous replication"
                );
            }
            senders = self.changed[position_class(level)]
                .wait_timeout(senders, interrupt.nap(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Which of a standby's positions a commit at `level` waits for, as an
/// index into [`WalSenders`]' condition variables: write, flush, apply.
fn position_class(level: SyncCommit) -> usize {
    match level {
        SyncCommit::RemoteWrite => 0,
        SyncCommit::RemoteApply => 2,
        _ => 1,
    }
}

fn level_position(s: &Sender, level: SyncCommit) -> Lsn {
    [s.write, s.flush, s.apply][position_class(level)]
}

/// The candidates, streaming and caught up (as PostgreSQL's walsenders in
/// state `streaming`), by priority (then by connection order).
fn candidates<'a>(senders: &'a [Sender], names: &SyncStandbyNames) -> Vec<(usize, &'a Sender)> {
    let mut c: Vec<(usize, &Sender)> = senders
        .iter()
        .filter(|s| s.streaming && s.caught_up)
        .filter_map(|s| names.priority(&s.peer.application_name).map(|p| (p, s)))
        .collect();
    c.sort_by_key(|(p, _)| *p);
    c
}

/// With FIRST, the pids of the standbys that are synchronous now.
fn sync_members(senders: &[Sender], names: &SyncStandbyNames) -> Vec<i32> {
    match names.method {
        SyncMethod::First => candidates(senders, names)
            .iter()
            .take(names.num)
            .map(|(_, s)| s.peer.pid)
            .collect(),
        SyncMethod::Any => Vec::new(),
    }
}

/// The position every commit below which is synchronously replicated, or
/// `None` when too few synchronous standbys are connected.
fn synced_position(senders: &[Sender], names: &SyncStandbyNames, level: SyncCommit) -> Option<Lsn> {
    let c = candidates(senders, names);
    if c.len() < names.num {
        return None;
    }
    match names.method {
        SyncMethod::First => c[..names.num]
            .iter()
            .map(|(_, s)| level_position(s, level))
            .min(),
        SyncMethod::Any => {
            let mut positions: Vec<Lsn> = c.iter().map(|(_, s)| level_position(s, level)).collect();
            positions.sort_unstable_by(|a, b| b.cmp(a));
            positions.get(names.num - 1).copied()
        }
    }
}

/// Who is connected, for the log line of a waiting commit.
fn describe(senders: &[Sender], names: &SyncStandbyNames) -> String {
    let listed: Vec<&Sender> = senders
        .iter()
        .filter(|s| s.streaming && names.priority(&s.peer.application_name).is_some())
        .collect();
    if listed.is_empty() {
        return "none of them is connected".into();
    }
    listed
        .iter()
        .map(|s| {
            let catching_up = if s.caught_up { "" } else { ", catching up" };
            format!(
                "{} flushed to {}{catching_up}",
                s.peer.application_name, s.flush
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_gives_the_setting_as_written_and_logs_the_canonical_form() {
        let names = SyncStandbyNames::parse("  s1, s2 ").unwrap();
        assert_eq!(names.written, "s1, s2");
        assert_eq!(names.to_string(), "FIRST 1 (s1, s2)");
        assert_eq!(SyncStandbyNames::parse("").unwrap().written, "");
    }

    #[test]
    fn parses_postgresql_syntax() {
        let p = |s| SyncStandbyNames::parse(s).unwrap();
        assert!(p("").is_empty());
        assert_eq!(p("s1").to_string(), "FIRST 1 (s1)");
        assert_eq!(p("s1, s2").to_string(), "FIRST 1 (s1, s2)");
        assert_eq!(p("2 (s1, s2, s3)").to_string(), "FIRST 2 (s1, s2, s3)");
        assert_eq!(p("FIRST 1 (s1, s2)").to_string(), "FIRST 1 (s1, s2)");
        assert_eq!(p("any 2 (a, \"b\", c)").to_string(), "ANY 2 (a, b, c)");
        assert_eq!(p("*").priority("anything"), Some(1));
        assert_eq!(p("s1, s2").priority("S2"), Some(2));
        assert_eq!(p("s1, s2").priority("s3"), None);
        for bad in [
            "ANY 3 (a, b)",
            "FIRST x (a)",
            "ANY 1 a",
            "2 (a, b",
            "0 (a)",
            "a,,b",
        ] {
            assert!(SyncStandbyNames::parse(bad).is_err(), "{bad}");
        }
    }

    fn sender(pid: i32, name: &str, flush: u64) -> Sender {
        Sender {
            peer: Peer {
                pid,
                application_name: name.into(),
                ..Peer::default()
            },
            streaming: true,
            caught_up: true,
            slot: None,
            sent: Lsn(flush),
            write: Lsn(flush),
            flush: Lsn(flush),
            apply: Lsn(flush),
            reply_time: None,
            lag: LagTracker::default(),
        }
    }

    #[test]
    fn first_and_any_pick_the_right_position() {
        let senders = vec![
            sender(1, "s2", 200),
            sender(2, "s1", 100),
            sender(3, "s3", 300),
        ];
        let names = |s: &str| SyncStandbyNames::parse(s).unwrap();
        let pos = |n: &str| synced_position(&senders, &names(n), SyncCommit::On);
        assert_eq!(pos("FIRST 1 (s1, s2)"), Some(Lsn(100)));
        assert_eq!(pos("FIRST 2 (s3, s2, s1)"), Some(Lsn(200)));
        assert_eq!(pos("ANY 1 (s1, s2, s3)"), Some(Lsn(300)));
        assert_eq!(pos("ANY 2 (s1, s2, s3)"), Some(Lsn(200)));
        assert_eq!(pos("FIRST 1 (nobody)"), None);
        assert_eq!(pos("FIRST 2 (s1, nobody)"), None);
        // One still catching up is no candidate: the next one is sync.
        let mut senders = senders;
        senders[1].caught_up = false;
        let pos = |n: &str| synced_position(&senders, &names(n), SyncCommit::On);
        assert_eq!(pos("FIRST 1 (s1, s2)"), Some(Lsn(200)));
    }

    /// A standby reports its write position before its flush: a commit at
    /// `remote_write` goes on then, one at `on` waits for the flush.
    #[test]
    fn each_level_is_released_by_its_own_position() {
        let senders = std::sync::Arc::new(WalSenders::default());
        senders.register(Peer {
            pid: 1,
            usename: "rep".into(),
            application_name: "s1".into(),
            ..Peer::default()
        });
        senders.streaming(1, Lsn(0), None);
        senders.caught_up(1);
        let names = SyncStandbyNames::parse("s1").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for level in [SyncCommit::RemoteWrite, SyncCommit::On] {
            let (senders, names, tx) = (senders.clone(), names.clone(), tx.clone());
            std::thread::spawn(move || {
                let waited = senders.wait(
                    Lsn(100),
                    level,
                    &|| names.clone(),
                    &Interrupt::default(),
                    &|| false,
                    &|| None,
                );
                tx.send((level, waited.is_ok())).unwrap();
            });
        }
        senders.reply(1, Lsn(100), Lsn(50), Lsn(50), 0);
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, (SyncCommit::RemoteWrite, true));
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a commit at `on` went on before the standby's flush"
        );
        senders.reply(1, Lsn(100), Lsn(100), Lsn(50), 0);
        let second = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(second, (SyncCommit::On, true));
    }

    #[test]
    fn lag_grows_while_unacknowledged_and_is_zero_when_caught_up() {
        let mut t = LagTracker::default();
        let start = Instant::now();
        t.sent(Lsn(100), start);
        t.sent(Lsn(200), start + Duration::from_millis(50));
        let now = start + Duration::from_millis(80);
        assert_eq!(t.lag(Lsn(50), now), Duration::from_millis(80));
        assert_eq!(t.lag(Lsn(100), now), Duration::from_millis(30));
        assert_eq!(t.lag(Lsn(200), now), Duration::ZERO);
        t.forget_upto(Lsn(200));
        assert_eq!(
            t.lag(Lsn(200), now + Duration::from_secs(60)),
            Duration::ZERO
        );
    }
}
