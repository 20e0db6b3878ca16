//! Promotion: a standby becomes the primary, and the old primary is fenced
//! first, so two primaries never take writes at once.
//!
//! `walship promote` (or `SELECT pg_promote()`) leaves a request in
//! `DIR/promote.signal`; the running standby's checkpointer picks it up —
//! at once when `walship promote` wakes it with SIGUSR1, else within a
//! second — and runs [`Node::promote`]:
//!
//! 1. stop streaming (everything received is flushed and replayed: the
//!    walreceiver replays each batch right after its fsync);
//! 2. take epoch E+1 (persisted locally at once);
//! 3. fence the old primary: directly (`SELECT walship_fence(E+1)` on
//!    `primary_conninfo`: it persists the epoch before it answers and
//!    refuses every write from then on) and/or with `--fence-command`,
//!    which must exit 0; with neither, refuse unless `--force`; then claim
//!    the epoch in the archive too, when `archive_directory` is set, by
//!    creating `ADIR/epoch.E+1` exclusively, so of two promoters racing
//!    only one wins and the other says who did (a refused promotion
//!    claims nothing there);
//! 4. switch to timeline T+1 (history file, the switch segment copied
//!    under the new timeline's name) and checkpoint on it;
//! 5. persist the epoch, then the control file (new timeline and
//!    checkpoint together), then remove `standby.signal`; accept writes.
//!
//! Crash safety comes from that order instead of a journal: a promotion
//! killed at any step leaves a standby (its `standby.signal` is the last
//! thing removed) that accepts no writes; running it again claims a higher
//! epoch and a higher timeline, so neither is ever reused.

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::control::NodeState;
use super::datadir::DataDir;
use super::server::Node;
use crate::durable;
use crate::fence::{self, Epoch, EpochFile};
use crate::replication::client::Client;
use crate::replication::walreceiver::WalReceiverHost;
use crate::wal::history::{HistoryEntry, TimelineHistory};
use crate::wal::name::history_file_name;
use crate::wal::writer::mark_ready;

/// The request file a promotion is asked for with.
pub const PROMOTE_SIGNAL: &str = "promote.signal";
/// Where a failed promotion says why (for `walship promote --wait`).
pub const PROMOTE_FAILED: &str = "promote.failed";

/// What the operator asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromoteRequest {
    pub fence_command: Option<String>,
    pub force: bool,
}

impl PromoteRequest {
    pub fn to_text(&self) -> String {
        let mut s = format!("force={}\n", u8::from(self.force));
        if let Some(c) = &self.fence_command {
            s.push_str(&format!("fence_command={}\n", c.replace('\n', " ")));
        }
        s
    }

    pub fn parse(text: &str) -> PromoteRequest {
        let mut r = PromoteRequest::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("force", v)) => r.force = v.trim() == "1",
                Some(("fence_command", v)) if !v.trim().is_empty() => {
                    r.fence_command = Some(v.to_string())
                }
                _ => {}
            }
        }
        r
    }
}

/// Asks the standby in `dir` to promote (it acts within a second, or at
/// once when woken with SIGUSR1).
pub fn request(dir: &Path, req: &PromoteRequest) -> Result<(), durable::FileError> {
    durable::remove_file(&dir.join(PROMOTE_FAILED))?;
    durable::replace_file(&dir.join(PROMOTE_SIGNAL), req.to_text().as_bytes())
}

impl Node {
    /// Runs a promotion request left in `promote.signal`, if any; a failure
    /// is logged and left in `promote.failed`.
    pub(crate) fn check_promote_signal(&self) {
        if self.standby().is_none() {
            return;
        }
        let dir = DataDir::new(self.data_dir());
        let signal = dir.root.join(PROMOTE_SIGNAL);
        let Ok(text) = std::fs::read_to_string(&signal) else {
            return;
        };
        let req = PromoteRequest::parse(&text);
        let outcome = self.promote(&req);
        if let Err(e) = durable::remove_file(&signal) {
            error!("could not remove the promotion request: {e}; remove it by hand, or it is run again");
        }
        if let Err(why) = outcome {
            error!("promotion failed: {why}");
            let failed = dir.root.join(PROMOTE_FAILED);
            if let Err(e) = durable::replace_file(&failed, why.as_bytes()) {
                error!("could not record the failure for walship promote: {e}");
            }
        }
    }

    /// See the module documentation.
    pub(crate) fn promote(&self, req: &PromoteRequest) -> Result<(), String> {
        let dir = DataDir::new(self.data_dir());
        info!(force = req.force, fence_command = ?req.fence_command, "promotion requested");
        // 1. Stop streaming (set_promoting wakes the walreceiver from a
        // reconnect backoff that may be seconds long).
        self.set_promoting(true);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.receiver_stopped() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let result = self.promote_stopped(&dir, req);
        if result.is_err() {
            // Stay a standby: streaming resumes.
            self.set_promoting(false);
        }
        result
    }

    fn promote_stopped(&self, dir: &DataDir, req: &PromoteRequest) -> Result<(), String> {
        let wal = self.db().wal();
        let end = wal.flush_all().map_err(|e| e.to_string())?;
        // 2. Claim the next epoch.
        let current = *self.lock_epoch();
        let seen = current
            .fenced_by
            .unwrap_or(current.epoch)
            .max(current.epoch);
        let epoch = Epoch(seen.0 + 1);
        let settings = self.settings();
        // Persist the epoch as seen at once: this node never writes in a
        // lower one again, whatever happens next.
        let mut claimed = current;
        claimed.fenced_by = None;
        claimed.epoch = epoch;
        claimed
            .write(&dir.epoch())
            .map_err(|e| format!("could not persist epoch {epoch}: {e}"))?;
        *self.lock_epoch() = claimed;
        // 3. Fence the old primary.
        let direct = match self.primary() {
            Some((info, _)) => match fence_directly(&info, epoch) {
                Ok(()) => {
                    info!(old_primary = %info, epoch = %epoch, "fenced the old primary directly");
                    true
                }
                Err(e) => {
                    warn!(old_primary = %info, "could not fence the old primary directly: {e}");
                    false
                }
            },
            None => false,
        };
        if let Some(cmd) = &req.fence_command {
            let status = std::process::Command::new("sh")
                .args(["-c", cmd])
                .env("WALSHIP_EPOCH", epoch.to_string())
                .status()
                .map_err(|e| format!("could not run the fence command: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "the fence command `{cmd}` failed ({status}): refusing to promote; the old primary may still take writes"
                ));
            }
            info!(command = %cmd, "fence command succeeded");
        } else if !direct {
            if !req.force {
                return Err("the old primary could be neither reached to fence it nor fenced by command: refusing to promote (give --fence-command, or --force if you know it is down for good)".into());
            }
            error!("PROMOTING WITHOUT A FENCE (--force): if the old primary is still alive it may take writes that will be lost, and clients may see two primaries");
        }
        // Claimed in the archive only once the promotion is going ahead: a
        // refused promotion leaves no claim there for primaries watching
        // the archive to fence themselves by, with no one promoted. Of two
        // promoters racing, exactly one creates the claim; the other
        // (having fenced the same old primary) stays a standby.
        if !settings.archive_directory.is_empty() {
            fence::archive::claim(
                Path::new(&settings.archive_directory),
                epoch,
                &settings.node_name,
            )?;
        }
        // 4. A new timeline, from the end of received WAL.
        let old_tli = self.lock_control().timeline;
        let new_tli = old_tli
            .next()
            .ok_or_else(|| format!("timeline {old_tli} is the last there can be"))?;
        let mut history = match std::fs::read_to_string(dir.wal().join(history_file_name(old_tli)))
        {
            Ok(text) => TimelineHistory::parse(&text).map_err(|e| e.to_string())?,
            Err(_) => TimelineHistory::default(),
        };
        history
            .push(HistoryEntry {
                timeline: old_tli,
                switchpoint: end,
                reason: format!("promoted to epoch {epoch}"),
            })
            .map_err(|e| format!("could not extend the timeline history: {e}"))?;
        let name = history_file_name(new_tli);
        durable::replace_file(&dir.wal().join(&name), history.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        if settings.archive_mode {
            mark_ready(&dir.wal(), &name).map_err(|e| e.to_string())?;
        }
        let switch = wal.switch_timeline(new_tli).map_err(|e| e.to_string())?;
        if settings.archive_mode {
            wal.start_marking_ready();
        }
        let new_epoch = EpochFile {
            epoch,
            timeline: new_tli,
            start: switch,
            fenced_by: None,
        };
        new_epoch
            .write(&dir.epoch())
            .map_err(|e| format!("could not persist epoch {epoch}: {e}"))?;
        *self.lock_epoch() = new_epoch;
        // 5. The control file gets the new timeline with the checkpoint on it.
        self.lock_control().timeline = new_tli;
        self.senders.mark_heard();
        self.set_promoted();
        self.checkpoint(NodeState::InProduction)
            .map_err(|e| format!("checkpoint after the timeline switch failed: {e}"))?;
        durable::remove_file(&dir.standby_signal()).map_err(|e| e.to_string())?;
        self.set_promoting(false);
        info!(epoch = %epoch, timeline = %new_tli, switchpoint = %switch, "promoted: this node is the primary and accepts writes");
        Ok(())
    }
}

/// Tells the old primary that epoch `epoch` now rules.
fn fence_directly(
    info: &crate::replication::conninfo::ConnInfo,
    epoch: Epoch,
) -> Result<(), String> {
    let mut info = info.clone();
    info.connect_timeout = Some(info.connect_timeout.unwrap_or(5).min(5));
    let mut client = Client::connect(&info, None).map_err(|e| e.to_string())?;
    client
        .query(&format!("SELECT walship_fence({})", epoch.0))
        .map_err(|e| e.to_string())?;
    client.close();
    Ok(())
}
