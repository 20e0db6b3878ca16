//! Row locks of transaction blocks: writers of one key wait for each other,
//! as PostgreSQL's row locks make them, instead of both deciding on the
//! same committed row and one of them failing at COMMIT.
//!
//! A block that writes a key (INSERT, UPDATE, DELETE) locks it before it
//! decides the write, and holds it until the block ends: committed (once
//! the commit is visible to other sessions, after any wait for standbys),
//! rolled back, failed, or abandoned by its client. Another block that
//! writes the key waits, then decides on what the first one committed. A
//! statement outside a block waits likewise, but takes no lock: it decides
//! and commits at once. A wait that would close a cycle of blocks waiting
//! for each other fails at once with 40P01 (PostgreSQL finds the cycle
//! after `deadlock_timeout`); a CancelRequest ends a wait with 57014.
//!
//! Invariants: a key has at most one owner. A waiting owner waits for one
//! key and releases nothing meanwhile, so the waits form chains that the
//! deadlock check can walk through the current owners.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::interrupt::Interrupt;
use crate::sqlstate::{code, PgError};

/// Who holds or waits for locks: one transaction block.
type Owner = u64;

/// How often a waiter looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// The node's row locks.
#[derive(Default)]
pub struct RowLocks {
    state: Mutex<State>,
    released: Condvar,
    /// How many keys are locked: statements outside blocks skip the table
    /// while none is.
    locked: AtomicUsize,
    next_owner: AtomicU64,
    shutting_down: AtomicBool,
}

#[derive(Default)]
struct State {
    owners: HashMap<String, Owner>,
    /// The key each waiting owner waits for.
    waiting: HashMap<Owner, String>,
}

/// The keys one transaction block has locked; released when dropped.
pub struct LockSet {
    locks: Arc<RowLocks>,
    owner: Owner,
    keys: Vec<String>,
}

impl RowLocks {
    /// A new, empty set of locks for a block.
    pub fn lock_set(self: &Arc<Self>) -> LockSet {
        LockSet {
            locks: self.clone(),
            owner: self.next_owner.fetch_add(1, Ordering::Relaxed),
            keys: Vec::new(),
        }
    }

    /// Waits until no block holds any of `keys` (for a statement outside a
    /// block), or the wait must end (see [`RowLocks::may_wait`]).
    pub fn wait_unlocked<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
        interrupt: &Interrupt,
        deadline: Option<Instant>,
    ) -> Result<(), PgError> {
        if self.locked.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let keys: Vec<&str> = keys.into_iter().collect();
        let mut st = self.lock_state();
        // All free at one look: after a wait, a key found free before may
        // have been locked meanwhile.
        while keys.iter().any(|k| st.owners.contains_key(*k)) {
            st = self.wait(st, interrupt, deadline)?;
        }
        Ok(())
    }

    /// Whether a block holds one of `keys` now.
    pub fn any_locked(&self, keys: &[&str]) -> bool {
        if self.locked.load(Ordering::Acquire) == 0 {
            return false;
        }
        let st = self.lock_state();
        keys.iter().any(|k| st.owners.contains_key(*k))
    }

    /// Whether a wait may go on: not past `deadline` (`lock_timeout`,
    /// 55P03), not cancelled nor past `statement_timeout` (57014), the
    /// node not stopping (57P01).
    pub fn may_wait(
        &self,
        interrupt: &Interrupt,
        deadline: Option<Instant>,
    ) -> Result<(), PgError> {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(PgError::new(
                code::LOCK_NOT_AVAILABLE,
                "canceling statement due to lock timeout",
            ));
        }
        interrupt.check().map_err(|why| why.statement_error())?;
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(PgError::fatal(
                code::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            ));
        }
        Ok(())
    }

    /// The node is stopping: every wait ends (57P01), so no session waits
    /// for a lock past the shutdown.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let _st = self.lock_state();
        self.released.notify_all();
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One wait for a release, or a canceled one, or one past `deadline`
    /// (`lock_timeout`) or `statement_timeout`.
    fn wait<'a>(
        &self,
        st: MutexGuard<'a, State>,
        interrupt: &Interrupt,
        deadline: Option<Instant>,
    ) -> Result<MutexGuard<'a, State>, PgError> {
        self.may_wait(interrupt, deadline)?;
        let nap = deadline.map_or(CANCEL_POLL, |d| {
            CANCEL_POLL.min(d.saturating_duration_since(Instant::now()))
        });
        let (st, _) = self
            .released
            .wait_timeout(st, interrupt.nap(nap))
            .unwrap_or_else(|p| p.into_inner());
        Ok(st)
    }
}

impl State {
    /// Whether `me` waiting for `holder` would close a cycle: `holder`
    /// waits, through the owners of the keys waited for, for `me`.
    fn closes_cycle(&self, me: Owner, holder: Owner) -> bool {
        let mut at = holder;
        for _ in 0..=self.waiting.len() {
            if at == me {
                return true;
            }
            let Some(next) = self.waiting.get(&at).and_then(|key| self.owners.get(key)) else {
                return false;
            };
            at = *next;
        }
        false
    }
}

impl LockSet {
    /// Releases `key` if this block holds it (a statement that locked it
    /// and then wrote nothing there: PostgreSQL locks no row it does not
    /// change), waking the blocks that wait.
    pub fn unlock(&mut self, key: &str) {
        let Some(at) = self.keys.iter().position(|k| k == key) else {
            return;
        };
        let key = self.keys.swap_remove(at);
        let mut st = self.locks.lock_state();
        if st.owners.get(&key) == Some(&self.owner) {
            st.owners.remove(&key);
            self.locks.locked.fetch_sub(1, Ordering::Release);
        }
        drop(st);
        self.locks.released.notify_all();
    }

    /// Locks `keys` for this block, in order, waiting for other blocks
    /// that hold them. Returns those it did not hold before.
    pub fn lock<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
        interrupt: &Interrupt,
        deadline: Option<Instant>,
    ) -> Result<Vec<String>, PgError> {
        let mut fresh = Vec::new();
        let locks = self.locks.clone();
        let mut st = locks.lock_state();
        for key in keys {
            let taken = loop {
                match st.owners.get(key) {
                    None => break true,
                    Some(&o) if o == self.owner => break false,
                    Some(&holder) => {
                        if st.closes_cycle(self.owner, holder) {
                            st.waiting.remove(&self.owner);
                            return Err(PgError::new(code::DEADLOCK_DETECTED, "deadlock detected")
                                .with_detail(format!(
                                    "Key \"{key}\" is locked by another transaction block, which waits for a key this one has locked."
                                ))
                                .with_hint("This transaction was aborted; run it again."));
                        }
                        st.waiting.insert(self.owner, key.to_string());
                        st = match locks.wait(st, interrupt, deadline) {
                            Ok(st) => st,
                            Err(e) => {
                                locks.lock_state().waiting.remove(&self.owner);
                                return Err(e);
                            }
                        };
                    }
                }
            };
            st.waiting.remove(&self.owner);
            if taken {
                st.owners.insert(key.to_string(), self.owner);
                self.keys.push(key.to_string());
                fresh.push(key.to_string());
                locks.locked.fetch_add(1, Ordering::Release);
            }
        }
        Ok(fresh)
    }

    /// Releases every key this block holds, waking the blocks that wait.
    pub fn release(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut st = self.locks.lock_state();
        for key in self.keys.drain(..) {
            if st.owners.get(&key) == Some(&self.owner) {
                st.owners.remove(&key);
                self.locks.locked.fetch_sub(1, Ordering::Release);
            }
        }
        drop(st);
        self.locks.released.notify_all();
    }
}

impl Drop for LockSet {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of<T: std::fmt::Debug>(r: Result<T, PgError>) -> String {
        r.unwrap_err().code.to_string()
    }

    #[test]
    fn a_second_block_waits_until_the_first_releases() {
        let locks = Arc::new(RowLocks::default());
        let no = Interrupt::default();
        let mut a = locks.lock_set();
        a.lock(["k"], &no, None).unwrap();
        a.lock(["k"], &no, None).unwrap();
        let waiter = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                let mut b = locks.lock_set();
                b.lock(["k"], &Interrupt::default(), None).unwrap();
                b.keys.clone()
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "the second block did not wait");
        drop(a);
        assert_eq!(waiter.join().unwrap(), ["k"]);
        assert_eq!(locks.locked.load(Ordering::Acquire), 0);
        locks.wait_unlocked(["k"], &no, None).unwrap();
    }

    #[test]
    fn a_wait_that_closes_a_cycle_fails_and_a_canceled_one_ends() {
        let locks = Arc::new(RowLocks::default());
        let no = Interrupt::default();
        let (mut a, mut b) = (locks.lock_set(), locks.lock_set());
        a.lock(["1"], &no, None).unwrap();
        b.lock(["2"], &no, None).unwrap();
        let waiter = std::thread::spawn(move || {
            a.lock(["2"], &Interrupt::default(), None).unwrap();
            a
        });
        while locks.lock_state().waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(code_of(b.lock(["1"], &no, None)), "40P01");
        b.release();
        let a = waiter.join().unwrap();
        assert_eq!(a.keys, ["1", "2"]);
        let cancel = Interrupt::new(Arc::new(AtomicBool::new(true)));
        assert_eq!(
            code_of(locks.lock_set().lock(["1"], &cancel, None)),
            "57014"
        );
        let soon = Some(Instant::now() + Duration::from_millis(100));
        assert_eq!(code_of(locks.lock_set().lock(["1"], &no, soon)), "55P03");
        assert_eq!(
            code_of(locks.wait_unlocked(
                ["2"],
                &Interrupt::new(Arc::new(AtomicBool::new(true))),
                None
            )),
            "57014"
        );
        let mut timed = Interrupt::default();
        timed.start(Some(Duration::from_millis(50)));
        let e = locks.lock_set().lock(["1"], &timed, None).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("57014", "canceling statement due to statement timeout")
        );
        assert!(locks.lock_state().waiting.is_empty());
        // At shutdown every wait ends.
        let waiter = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                code_of(locks.lock_set().lock(["1"], &Interrupt::default(), None))
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        locks.shut_down();
        assert_eq!(waiter.join().unwrap(), "57P01");
        drop(a);
    }
}
