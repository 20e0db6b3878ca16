//! What a standby node keeps beside the primary's machinery: how far it
//! has received and replayed, the walreceiver's status, the latest
//! restartpoint candidate, and waiting for replay (`WAIT FOR LSN`).
//!
//! Invariant: `replayed` only grows, and every walship record that ends at
//! or before it has been applied to the store readers see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::replication::walreceiver::ReceiverStatus;
use crate::sql::interrupt::Interrupt;
use crate::sqlstate::{code, PgError};
use crate::store::Store;
use crate::wal::Lsn;

/// See the module documentation.
pub struct StandbyState {
    replayed: AtomicU64,
    replay_signal: (Mutex<()>, Condvar),
    /// The latest checkpoint record replayed, with the store as it was just
    /// before it: what the next restartpoint may snapshot.
    restart_point: Mutex<Option<(Lsn, Store)>>,
    receiver: Mutex<ReceiverStatus>,
}

impl StandbyState {
    /// A standby whose store reflects every record up to `replayed`.
    pub fn new(replayed: Lsn) -> StandbyState {
        StandbyState {
            replayed: AtomicU64::new(replayed.0),
            replay_signal: (Mutex::new(()), Condvar::new()),
            restart_point: Mutex::new(None),
            receiver: Mutex::new(ReceiverStatus {
                status: "starting",
                ..Default::default()
            }),
        }
    }

    pub fn replayed(&self) -> Lsn {
        Lsn(self.replayed.load(Ordering::Acquire))
    }

    /// Records that replay reached `lsn` and wakes everyone waiting for it.
    pub fn set_replayed(&self, lsn: Lsn) {
        self.replayed.fetch_max(lsn.0, Ordering::AcqRel);
        let _g = self.lock_signal();
        self.replay_signal.1.notify_all();
    }

    fn lock_signal(&self) -> MutexGuard<'_, ()> {
        self.replay_signal
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn receiver(&self) -> MutexGuard<'_, ReceiverStatus> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn offer_restart_point(&self, lsn: Lsn, store: Store) {
        *self.restart_point.lock().unwrap_or_else(|p| p.into_inner()) = Some((lsn, store));
    }

    /// The latest restartpoint candidate, taken.
    pub fn take_restart_point(&self) -> Option<(Lsn, Store)> {
        self.restart_point
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Waits until replay reaches `target` (`WAIT FOR LSN`), the timeout
    /// expires (an error naming both LSNs) or `cancel` is raised.
    pub fn wait_for_replay(
        &self,
        target: Lsn,
        timeout: Option<Duration>,
        interrupt: &Interrupt,
    ) -> Result<(), PgError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.lock_signal();
        loop {
            let replayed = self.replayed();
            if replayed >= target {
                return Ok(());
            }
            if let Err(why) = interrupt.check() {
                return Err(PgError::new(
                    code::QUERY_CANCELED,
                    format!(
                        "canceling wait for LSN {target} due to {why} (replayed up to {replayed})"
                    ),
                ));
            }
            let mut nap = interrupt.nap(Duration::from_millis(50));
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    drop(g);
                    // A standby that has replayed all its primary has
                    // written is not behind: the LSN lies past that.
                    let upstream_end = self.receiver().latest_end_lsn;
                    let hint = if upstream_end != Lsn::INVALID && replayed >= upstream_end {
                        format!("the standby has replayed all the WAL its primary has sent ({upstream_end}): LSN {target} lies past the primary's WAL; was it taken from another node?")
                    } else {
                        "the standby is behind its primary; see pg_stat_wal_receiver".into()
                    };
                    return Err(PgError::new(
                        code::QUERY_CANCELED,
                        format!("timed out while waiting for target LSN {target} to be replayed; current replay LSN {replayed}"),
                    )
                    .with_hint(hint));
                }
                nap = nap.min(left);
            }
            g = self
                .replay_signal
                .1
                .wait_timeout(g, nap)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
