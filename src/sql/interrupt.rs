//! Why a running statement must stop early: a CancelRequest for its
//! session, or its `statement_timeout`. Every wait a statement can make
//! (row locks, commits in flight, `WAIT FOR LSN`, and — a cancel only —
//! synchronous standbys) looks here between naps, as PostgreSQL's waits
//! look at `QueryCancelPending`.
//!
//! Invariant: a raised cancel is seen by at most one statement (looking
//! lowers it), and the deadline belongs to the statement running now: it
//! is set when the statement starts and lifted when it ends.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sqlstate::{code, PgError};

/// What ended a wait early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// A CancelRequest.
    UserRequest,
    /// `statement_timeout` passed.
    StatementTimeout,
}

impl fmt::Display for Interruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interruption::UserRequest => "user request",
            Interruption::StatementTimeout => "statement timeout",
        })
    }
}

impl Interruption {
    /// PostgreSQL's error for a statement stopped so: 57014, "canceling
    /// statement due to …".
    pub fn statement_error(self) -> PgError {
        PgError::new(
            code::QUERY_CANCELED,
            format!("canceling statement due to {self}"),
        )
    }
}

/// One session's interrupts.
#[derive(Clone, Debug, Default)]
pub struct Interrupt {
    /// Raised by a CancelRequest (shared with the node, which raises it).
    cancel: Arc<AtomicBool>,
    /// When the running statement's `statement_timeout` passes.
    deadline: Option<Instant>,
}

impl Interrupt {
    /// Interrupts raised through `cancel`.
    pub fn new(cancel: Arc<AtomicBool>) -> Interrupt {
        Interrupt {
            cancel,
            deadline: None,
        }
    }

    /// Starts a statement's clock: it is stopped once `timeout` has
    /// passed (`None`: never).
    pub fn start(&mut self, timeout: Option<Duration>) {
        self.deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    }

    /// These interrupts without the statement's deadline: a commit's wait
    /// for synchronous standbys, which PostgreSQL lets only a cancel end
    /// (it stops `statement_timeout` before it commits).
    pub fn cancel_only(&self) -> Interrupt {
        Interrupt::new(self.cancel.clone())
    }

    /// Stops the clock: the statement ended.
    pub fn stop(&mut self) {
        self.deadline = None;
    }

    /// Whether a wait must end now, and why. A cancel is lowered when it
    /// is seen: it stops one wait.
    pub fn check(&self) -> Result<(), Interruption> {
        if self.cancel.load(Ordering::Relaxed) && self.cancel.swap(false, Ordering::AcqRel) {
            return Err(Interruption::UserRequest);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Interruption::StatementTimeout);
        }
        Ok(())
    }

    /// `nap`, or less if the statement's time runs out sooner: how long a
    /// wait may sleep before it looks again.
    pub fn nap(&self, nap: Duration) -> Duration {
        match self.deadline {
            Some(d) => nap.min(d.saturating_duration_since(Instant::now())),
            None => nap,
        }
    }

    /// Forgets a cancel that came while nothing ran: it cancelled what
    /// was running then, not what comes next.
    pub fn forget_cancel(&self) {
        if self.cancel.load(Ordering::Relaxed) {
            self.cancel.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_stops_one_wait_and_a_deadline_every_wait_until_stopped() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut i = Interrupt::new(flag.clone());
        assert_eq!(i.check(), Ok(()));
        flag.store(true, Ordering::Release);
        assert_eq!(i.check(), Err(Interruption::UserRequest));
        assert_eq!(i.check(), Ok(()), "a cancel is seen once");

        i.start(Some(Duration::ZERO));
        assert_eq!(i.check(), Err(Interruption::StatementTimeout));
        assert_eq!(i.check(), Err(Interruption::StatementTimeout));
        assert_eq!(i.cancel_only().check(), Ok(()), "no deadline");
        flag.store(true, Ordering::Release);
        assert_eq!(i.cancel_only().check(), Err(Interruption::UserRequest));
        i.start(Some(Duration::MAX));
        assert_eq!(i.check(), Ok(()), "a deadline past Instant's range is none");
        i.start(Some(Duration::ZERO));
        assert_eq!(i.nap(Duration::from_secs(1)), Duration::ZERO);
        i.stop();
        assert_eq!(i.check(), Ok(()));
        assert_eq!(i.nap(Duration::from_secs(1)), Duration::from_secs(1));

        i.start(Some(Duration::from_secs(3600)));
        assert_eq!(i.check(), Ok(()));
        assert!(i.nap(Duration::from_secs(7200)) <= Duration::from_secs(3600));
        assert_eq!(
            Interruption::StatementTimeout.statement_error().message,
            "canceling statement due to statement timeout"
        );
    }
}
