//! Promotion: a standby becomes the primary, and the old primary is fenced
//! first, so two primaries never take writes at once.
//!
//! `walship promote` (or `SELECT pg_promote()`) leaves a request in
//! `DIR/promote.signal`; the running standby's checkpointer picks it up —
//! at once when `walship promote` wakes it with SIGUSR1, else within a
//! second — and runs [`Node::promote`]. Its steps, each begun by a durable
//! entry in `DIR/promote.journal` (see [`super::promote_journal`]):
//!
//! 1. choose epoch E+1 (and refuse fence orders: this node's own may
//!    come back to it);
//! 2. **fence**, streaming on: fence the old primary directly (`SELECT
//!    walship_fence(E+1)` on `primary_conninfo`: it persists the epoch
//!    before it answers and refuses every write from then on, and ends
//!    every commit still waiting for standbys unacknowledged) and/or with
//!    `--fence-command`, which must exit 0; with neither, refuse unless
//!    `--force`. A direct fence says where the old primary's WAL ended:
//!    receive it all (10 s at most), since another standby — a quorum's
//!    other member, or this node's upstream — may have confirmed commits
//!    this node had not received yet. Then persist E+1 as this node's
//!    epoch, and stop streaming (everything received is flushed and
//!    replayed: the walreceiver replays each batch right after its fsync);
//! 3. **claim**: when `archive_directory` is set, claim E+1 there by
//!    creating `ADIR/epoch.E+1` exclusively, so of two promoters racing
//!    only one wins and the other says who did (a refused promotion
//!    claims nothing there);
//! 4. **switch**: start a new timeline — one above every timeline this
//!    node or its archive has a history file of — from the end of received
//!    WAL (history file, the switch segment copied under the new
//!    timeline's name); persist the epoch with it; checkpoint on it, which
//!    puts it in the control file;
//! 5. **finish**: remove `standby.signal`; accept writes.
//!
//! Writes are refused until the last step is done. A promotion that fails
//! before the switch leaves a standby that streams again. One interrupted
//! at any point (kill -9) is finished by the next attempt — a rerun of
//! `walship promote`, or just a restart while `promote.signal` is still
//! there — from the journal: the same epoch and claim, and a timeline
//! never used before.

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::control::{ControlFile, NodeState};
use super::datadir::DataDir;
use super::promote_journal::{Journal, JournalError, Step, JOURNAL};
use super::server::Node;
use crate::durable::FileError;
use crate::fence::{self, Epoch, EpochFile};
use crate::replication::client::Client;
use crate::replication::conninfo::{is_local_host, ConnInfo};
use crate::replication::walreceiver::WalReceiverHost;
use crate::wal::history::{HistoryEntry, TimelineHistory};
use crate::wal::name::{history_file_name, WalFileName};
use crate::wal::segment::list_segments_upto;
use crate::wal::writer::{archive_mark, mark_ready, remove_timeline, ArchiveMark};
use crate::wal::{Lsn, SegmentSize, TimelineId};
use crate::{crashpoint, durable};

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

/// How a promotion failed.
enum Failure {
    /// Before the timeline switch: the node stays a standby and streams
    /// again (its epoch may have risen: it never goes back).
    Refused(String),
    /// During the switch or after: the node neither streams nor takes
    /// writes until a rerun (or a restart) finishes from the journal.
    Stuck(String),
    /// As `Stuck`, but this process's state is past what is on disk: only
    /// a restart can go on.
    NeedsRestart(String),
}

fn refused(e: impl ToString) -> Failure {
    Failure::Refused(e.to_string())
}

fn stuck(e: impl ToString) -> Failure {
    Failure::Stuck(e.to_string())
}

impl Node {
    /// Runs a promotion request left in `promote.signal`, if any — on a
    /// standby, or on a node whose promotion stopped part-way (already
    /// switched in memory, not yet finished); a failure is logged and left
    /// in `promote.failed`.
    pub(crate) fn check_promote_signal(&self) {
        if self.standby().is_none() && !self.is_promoting() {
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

    /// A node that starts with a promotion journal: a promotion was
    /// interrupted. A standby holds still (no streaming, no writes) until
    /// the promotion is finished; a primary finished it and the journal
    /// goes.
    pub(crate) fn check_interrupted_promotion(&self) -> Result<(), JournalError> {
        let Some(journal) = Journal::read(&self.data_dir())? else {
            return Ok(());
        };
        if self.standby().is_none() {
            info!("removing the journal of a promotion that finished");
            return Ok(Journal::remove(&self.data_dir())?);
        }
        self.set_promoting(true);
        warn!(
            step = %journal.step,
            epoch = %journal.epoch,
            "a promotion was interrupted at its {} step: this node neither streams nor takes writes until it is finished (at once if promote.signal is present, else by walship promote -D {})",
            journal.step,
            self.data_dir().display()
        );
        Ok(())
    }

    /// See the module documentation.
    pub(crate) fn promote(&self, req: &PromoteRequest) -> Result<(), String> {
        let dir = DataDir::new(self.data_dir());
        info!(
            force = req.force,
            fence_command = req.fence_command.as_deref().unwrap_or("none"),
            "promotion requested"
        );
        // No write is taken from here on, but streaming goes on through
        // the fence (of a new promotion, or one resumed at its fence), so
        // that this node gets what the old primary wrote before it was
        // fenced. A promotion resumed past its fence streams no more.
        let at_fence = matches!(
            Journal::read(&dir.root),
            Ok(None)
                | Ok(Some(Journal {
                    step: Step::Fence,
                    ..
                }))
        );
        if at_fence {
            self.set_promoting_streaming(true);
        } else {
            self.set_promoting(true);
        }
        let fenced = self.fence_and_catch_up(&dir, req);
        // Stop streaming (set_promoting wakes the walreceiver from a
        // reconnect backoff that may be seconds long).
        self.set_promoting_streaming(false);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.receiver_stopped() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let outcome = fenced.and_then(|(journal, resumed_at)| {
            if self.receiver_stopped() {
                self.run_promotion(&dir, journal, resumed_at)
            } else {
                Err(stuck("the walreceiver did not stop within 30 s (a hung connection to the primary?): the end of received WAL is not known"))
            }
        });
        match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Refused(why)) => {
                if let Err(e) = Journal::remove(&dir.root) {
                    error!("could not remove the journal of the refused promotion: {e}");
                }
                self.set_promoting(false);
                Err(why)
            }
            Err(Failure::Stuck(why)) => Err(format!(
                "{why}; the promotion stopped part-way, so this node neither streams nor takes writes: fix the cause, then run walship promote again (or restart the node) to finish it from {JOURNAL}"
            )),
            Err(Failure::NeedsRestart(why)) => Err(format!(
                "{why}; the promotion stopped part-way, so this node neither streams nor takes writes: restart the node (walship server), which finishes it from {JOURNAL}"
            )),
        }
    }

    /// The promotion's first step, while the walreceiver still streams:
    /// the journal, then the fence, then the old primary's last WAL.
    /// Returns the journal and the step it was resumed at, if it was.
    fn fence_and_catch_up(
        &self,
        dir: &DataDir,
        req: &PromoteRequest,
    ) -> Result<(Journal, Option<Step>), Failure> {
        let (mut journal, resumed_at) = match Journal::read(&dir.root).map_err(stuck)? {
            Some(j) => {
                info!(step = %j.step, epoch = %j.epoch, "resuming an interrupted promotion");
                let at = j.step;
                (j, Some(at))
            }
            None => {
                let j = Journal::begin(self.next_epoch());
                j.write(&dir.root).map_err(refused)?;
                (j, None)
            }
        };
        let epoch = journal.epoch;
        if journal.step == Step::Fence {
            // What the steps after the fence read is checked before it: a
            // promotion refused once the old primary is fenced leaves no
            // node that takes writes.
            self.next_timeline(dir, None).map_err(|e| {
                refused(format!(
                    "{e}: nothing was fenced; make it readable (mount the archive, or set archive_directory = '' if this node should not use one) and run walship promote again"
                ))
            })?;
            let old_end = self
                .fence_old_primary(epoch, req)
                .map_err(Failure::Refused)?;
            crashpoint::reach("promote-fenced");
            if let Some(old_end) = old_end {
                self.catch_up(old_end);
            }
            // This node never writes in a lower epoch again, whatever
            // happens next. A fence order of this epoch or a later one that
            // came in while the epoch was chosen (before fence orders were
            // refused) means another node was promoted: it is never
            // overwritten.
            let mut ep = self.lock_epoch();
            if let Some(by) = ep.fenced_by.filter(|by| *by >= epoch) {
                return Err(Failure::Refused(format!("a fence order for epoch {by} arrived while this promotion chose epoch {epoch}: another node was promoted; this node stays fenced")));
            }
            // Nor an epoch this node adopted from its upstream while it
            // streamed through the fence: another promotion took it.
            if ep.epoch >= epoch {
                return Err(Failure::Refused(format!("this node adopted epoch {} from its upstream while this promotion chose epoch {epoch}: another node was promoted; promote again to take a later epoch", ep.epoch)));
            }
            let ours = EpochFile {
                epoch,
                fenced_by: None,
                ..*ep
            };
            self.persist_epoch(&mut ep, ours)
                .map_err(|e| refused(format!("could not persist epoch {epoch}: {e}")))?;
            drop(ep);
            journal.advance(&dir.root, Step::Claim).map_err(refused)?;
        }
        Ok((journal, resumed_at))
    }

    /// Waits, a few seconds at most, until this node holds the fenced old
    /// primary's WAL up to `old_end`, where it ended once fenced: every
    /// commit it acknowledged is in it, and another standby may have
    /// confirmed one this node had not received yet (a quorum's other
    /// member, or this node's own upstream when it cascades).
    fn catch_up(&self, old_end: Lsn) {
        let wal = self.db().wal();
        // Whole records, durable here (the epoch is persisted next).
        let held = || wal.reportable(wal.flushed_lsn());
        if held() >= old_end {
            return;
        }
        info!(old_primary_end = %old_end, held = %held(), "receiving the fenced old primary's last WAL before switching");
        let deadline = Instant::now() + CATCH_UP_MAX;
        while held() < old_end && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if held() < old_end {
            error!(
                old_primary_end = %old_end,
                held = %held(),
                "the fenced old primary's WAL did not all arrive within {} s: promoting with what came; a commit it acknowledged past {} is not on this node",
                CATCH_UP_MAX.as_secs(),
                held()
            );
        }
    }

    fn run_promotion(
        &self,
        dir: &DataDir,
        mut journal: Journal,
        resumed_at: Option<Step>,
    ) -> Result<(), Failure> {
        let wal = self.db().wal();
        // The new timeline begins where the last complete record ends: the
        // first part of a record the old primary never finished sending is
        // no WAL of either timeline.
        let end = wal.discard_partial_record().map_err(refused)?;
        let settings = self.settings();
        let epoch = journal.epoch;
        if journal.step == Step::Claim {
            // Claimed in the archive only once the promotion is going
            // ahead: a refused promotion leaves no claim there for
            // primaries watching the archive to fence themselves by. So
            // the timeline is chosen first, and a failure after the claim
            // keeps the journal (its token recognises the claim on rerun).
            let fenced = |e: String| {
                refused(format!("{e}; the old primary is fenced already (epoch {epoch}), so no node takes writes until this is fixed: fix it and run walship promote again"))
            };
            journal.timeline = Some(self.next_timeline(dir, None).map_err(fenced)?);
            if !settings.archive_directory.is_empty() {
                fence::archive::claim(
                    Path::new(&settings.archive_directory),
                    epoch,
                    &settings.node_name,
                    &journal.token,
                )
                .map_err(|e| match e {
                    fence::archive::ClaimError::Lost(why) => refused(why),
                    fence::archive::ClaimError::Failed(why) => fenced(why),
                })?;
                crashpoint::reach("promote-claimed");
            }
            journal.advance(&dir.root, Step::Switch).map_err(stuck)?;
        } else if resumed_at == Some(Step::Switch) {
            self.resume_switch(dir, &mut journal)?;
        }
        if journal.step == Step::Switch {
            let new_tli = journal
                .timeline
                .ok_or_else(|| stuck("journal without a timeline"))?;
            self.start_timeline(dir, new_tli, end, epoch)
                .map_err(stuck)?;
            journal.advance(&dir.root, Step::Finish).map_err(stuck)?;
        }
        // Finish.
        if settings.archive_mode {
            let size = self.lock_control().seg_size;
            let marked = mark_unarchived_before(&dir.wal(), size, wal.timeline(), end)
                .map_err(|e| stuck(e.to_string()))?;
            if marked > 0 {
                info!(
                    segments = marked,
                    "marked the complete segments received as a standby for the archiver (those the old primary archived are found there)"
                );
            }
            wal.start_marking_ready();
        }
        self.set_promoted();
        durable::remove_file(&dir.standby_signal()).map_err(stuck)?;
        crashpoint::reach("promote-promoted");
        self.set_promoting(false);
        // Last: walship promote --wait waits for it to go, and finds writes
        // accepted.
        if let Err(e) = Journal::remove(&dir.root) {
            error!("could not remove the promotion journal: {e} (harmless: the node removes it at its next start)");
        }
        let ep = *self.lock_epoch();
        info!(epoch = %ep.epoch, timeline = %ep.timeline, switchpoint = %ep.start, "promoted: this node is the primary and accepts writes");
        Ok(())
    }

    /// The epoch a new promotion takes: one above every epoch this node
    /// has seen (a fence order's is always above its own).
    fn next_epoch(&self) -> Epoch {
        let current = *self.lock_epoch();
        Epoch(current.fenced_by.unwrap_or(current.epoch).0 + 1)
    }

    /// Fences the old primary for `epoch`: directly when it answers, by
    /// the fence command when one is given (it must succeed); with
    /// neither, only `--force` goes on.
    ///
    /// The direct attempt runs beside the fence command: a dead primary's
    /// host may take its whole connect timeout to not answer, and once the
    /// command has fenced it there is nothing to wait for (the attempt
    /// finishes on its own).
    fn fence_old_primary(&self, epoch: Epoch, req: &PromoteRequest) -> Result<Option<Lsn>, String> {
        let system_id = self.lock_control().system_id;
        let direct = self.primary().map(|(info, _)| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let fenced = fence_directly(&info, system_id, epoch);
                match &fenced {
                    Ok((primary, end)) => {
                        let end = end.map_or("unknown".to_string(), |e| e.to_string());
                        info!(old_primary = %primary, epoch = %epoch, wal_end = %end, "fenced the old primary directly")
                    }
                    Err(e) => {
                        warn!(upstream = %info, "could not fence the old primary directly: {e}")
                    }
                }
                let _ = tx.send(fenced.map(|(_, end)| end));
            });
            rx
        });
        if let Some(cmd) = &req.fence_command {
            let status = std::process::Command::new("sh")
                .args(["-c", cmd])
                .env("WALSHIP_EPOCH", epoch.to_string())
                .status()
                .map_err(|e| format!("could not run the fence command: {e}"))?;
            if !status.success() {
                let why = crate::shell::ended(status);
                // Whether the old primary may still take writes depends on
                // the direct attempt: wait for it to say.
                let fenced_directly = direct.is_some_and(|rx| rx.recv().is_ok_and(|r| r.is_ok()));
                let state = if fenced_directly {
                    format!("the old primary was fenced directly all the same (epoch {epoch}), so no node takes writes now: fix the command and run walship promote again")
                } else {
                    "the old primary may still take writes".to_string()
                };
                return Err(format!(
                    "the fence command `{cmd}` failed ({why}): refusing to promote; {state}"
                ));
            }
            info!(command = %cmd, "fence command succeeded");
            // A direct fence that reached a live old primary says where its
            // WAL ended (it answers within milliseconds; a dead one never).
            Ok(direct
                .and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
                .and_then(Result::ok)
                .flatten())
        } else {
            // Why the direct fence did not happen, from the attempt itself
            // (which may have climbed past this node's upstream).
            let why = match direct.map(|rx| rx.recv()) {
                None => "no primary_conninfo is set".to_string(),
                Some(Ok(Ok(end))) => return Ok(end),
                Some(Ok(Err(e))) => e,
                Some(Err(_)) => "the attempt ended without an answer".to_string(),
            };
            if !req.force {
                return Err(format!("the old primary could not be fenced directly ({why}), and no fence command was given: refusing to promote (give --fence-command, or --force if you know it is down for good)"));
            }
            error!("PROMOTING WITHOUT A FENCE (--force): if the old primary is still alive it may take writes that will be lost, and clients may see two primaries");
            Ok(None)
        }
    }

    /// A promotion resumed at its switch step. If the control file already
    /// names the journal's timeline, the switch was complete; if this
    /// process switched in memory only, only a restart can go on; else the
    /// journal's timeline — which may hold a history file, archived or not,
    /// and WAL — is abandoned for the next free one.
    fn resume_switch(&self, dir: &DataDir, journal: &mut Journal) -> Result<(), Failure> {
        let on_disk = ControlFile::read(&dir.control()).map_err(stuck)?.timeline;
        if journal.timeline == Some(on_disk) {
            return journal.advance(&dir.root, Step::Finish).map_err(stuck);
        }
        if self.db().wal().timeline() != on_disk {
            return Err(Failure::NeedsRestart(
                "this process switched timelines but its control file did not".into(),
            ));
        }
        let abandoned = journal.timeline;
        if let Some(t) = abandoned {
            let removed =
                remove_timeline(&dir.wal(), self.lock_control().seg_size, t).map_err(stuck)?;
            warn!(timeline = %t, removed_segments = removed, "abandoning the timeline the interrupted promotion began: it is never used again");
        }
        journal.timeline = Some(self.next_timeline(dir, abandoned).map_err(stuck)?);
        journal.write(&dir.root).map_err(stuck)
    }

    /// One above the highest timeline this node's control file, `also`, or
    /// a history file in its `wal/` or its `archive_directory` names — as
    /// PostgreSQL chooses — so a new timeline never collides with one
    /// begun elsewhere or abandoned.
    fn next_timeline(&self, dir: &DataDir, also: Option<TimelineId>) -> Result<TimelineId, String> {
        let (mut highest, size) = {
            let control = self.lock_control();
            (control.timeline, control.seg_size)
        };
        highest = highest.max(also.unwrap_or(highest));
        let settings = self.settings();
        let mut dirs = vec![dir.wal()];
        if !settings.archive_directory.is_empty() {
            dirs.push(settings.archive_directory.clone().into());
        }
        for d in &dirs {
            let entries = std::fs::read_dir(d).map_err(|e| {
                format!(
                    "could not list {} for timeline history files: {}",
                    d.display(),
                    crate::durable::io_cause(&e)
                )
            })?;
            for entry in entries.flatten() {
                if let Ok(WalFileName::History(t)) =
                    WalFileName::parse(&entry.file_name().to_string_lossy(), size)
                {
                    highest = highest.max(t);
                }
            }
        }
        highest
            .next()
            .ok_or_else(|| format!("timeline {highest} is the last there can be"))
    }

    /// Starts timeline `new_tli` at `end` in epoch `epoch`: its history
    /// file, the switch, the epoch file, then a checkpoint on it (the
    /// control file's timeline changes with that checkpoint, never before).
    fn start_timeline(
        &self,
        dir: &DataDir,
        new_tli: TimelineId,
        end: Lsn,
        epoch: Epoch,
    ) -> Result<(), String> {
        let settings = self.settings();
        let wal = self.db().wal();
        let old_tli = self.lock_control().timeline;
        let old_path = dir.wal().join(history_file_name(old_tli));
        let mut history = match std::fs::read_to_string(&old_path) {
            Ok(text) => TimelineHistory::parse(&text).map_err(|e| e.to_string())?,
            Err(e) => {
                // Timeline 1 has none. Past it, the new history cannot list
                // the ancestors; promoting anyway keeps a writable node.
                if old_tli > TimelineId::FIRST {
                    tracing::error!(
                        path = %old_path.display(),
                        "cannot read the history of timeline {old_tli} ({}): the history of timeline {new_tli} lists timeline {old_tli} alone, so nodes on earlier timelines cannot rejoin this one (rebuild them with walship basebackup)",
                        crate::durable::io_cause(&e)
                    );
                }
                TimelineHistory::default()
            }
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
        crashpoint::reach("promote-history");
        let switch = wal.switch_timeline(new_tli).map_err(|e| e.to_string())?;
        crashpoint::reach("promote-switched");
        let new_epoch = EpochFile {
            epoch,
            timeline: new_tli,
            start: switch,
            fenced_by: None,
        };
        self.persist_epoch(&mut self.lock_epoch(), new_epoch)
            .map_err(|e| format!("could not persist epoch {epoch}: {e}"))?;
        // A primary's checkpoint writes a checkpoint record on the new
        // timeline; writes stay refused while the promotion is under way.
        self.lock_control().timeline = new_tli;
        self.senders.mark_heard();
        self.set_promoted();
        self.checkpoint(NodeState::InProduction)
            .map_err(|e| format!("checkpoint after the timeline switch failed: {e}"))?;
        crashpoint::reach("promote-checkpointed");
        Ok(())
    }
}

/// Standbys a direct fence climbs through, from the promoted node's
/// upstream, looking for the primary.
const MAX_CASCADE: usize = 8;

/// How long a promotion waits, once it fenced the old primary, for the
/// WAL that primary wrote before (see `Node::catch_up`).
const CATCH_UP_MAX: Duration = Duration::from_secs(10);

/// Tells the primary of system `system_id` that epoch `epoch` now rules;
/// returns where it was, and where its WAL ends once fenced (it takes no
/// write after that). `upstream` is this node's: when it is itself a
/// standby (cascading replication), the primary is its upstream's, and so
/// on: fencing a standby would leave the real primary taking writes. The
/// climb keeps this node's credentials and takes each standby's host and
/// port (a loopback host or a socket meaning that standby's own host), and
/// every node on the way must belong to this node's system: an address
/// that reaches another cluster is never fenced.
fn fence_directly(
    upstream: &ConnInfo,
    system_id: u64,
    epoch: Epoch,
) -> Result<(ConnInfo, Option<Lsn>), String> {
    let mut target = upstream.clone();
    target.connect_timeout = Some(target.connect_timeout.unwrap_or(5).min(5));
    for _ in 0..MAX_CASCADE {
        let mut client = Client::connect(&target, None).map_err(|e| e.to_string())?;
        let peer = client.peer().to_string();
        let show = |client: &mut Client, name: &str| {
            client
                .show(name)
                .map(Option::unwrap_or_default)
                .map_err(|e| e.to_string())
        };
        let theirs = show(&mut client, "system_identifier")?;
        if theirs != system_id.to_string() {
            return Err(format!("{peer} belongs to system {theirs}, not to this node's system {system_id}: not fencing it"));
        }
        if client.in_recovery().map_err(|e| e.to_string())? {
            let text = show(&mut client, "primary_conninfo")?;
            client.close();
            if text.is_empty() {
                return Err(format!("{peer} is a standby with no upstream of its own: the primary cannot be found from it"));
            }
            let above = ConnInfo::parse(&text).map_err(|e| {
                format!("{peer} is a standby whose primary_conninfo does not parse ({e}): the primary cannot be found from it")
            })?;
            info!(standby = %peer, upstream = %above, "the upstream is a standby: fencing its primary");
            // A standby's loopback address is its own host, not ours.
            if !is_local_host(&above.host) || is_local_host(&target.host) {
                target.host = above.host;
            }
            target.port = above.port;
            continue;
        }
        client
            .query(&format!("SELECT walship_fence({})", epoch.0))
            .map_err(|e| format!("{peer}: {e}"))?;
        // The fence made all it had appended durable: this is its end.
        let end = client
            .query("SELECT pg_current_wal_flush_lsn() AS lsn")
            .ok()
            .and_then(|rows| rows.text(0, "lsn"))
            .and_then(|text| text.parse::<Lsn>().ok());
        if end.is_none() {
            warn!(old_primary = %peer, "the fenced old primary did not say where its WAL ends: commits it acknowledged that this node has not received yet may be lost");
        }
        client.close();
        return Ok((target, end));
    }
    Err(format!(
        "no primary found within {MAX_CASCADE} standbys up from {upstream}"
    ))
}

/// Marks for the archiver (`.ready`) every complete segment before the
/// switch point `end` that `wal_dir` holds with no archive status: WAL
/// this node received or restored as a standby, which only the old
/// primary archived. What the old primary did archive is found identical
/// in the archive and marked done for the cost of a read; what it had not
/// yet (it died first) would otherwise be a gap in the archive for good,
/// and would stay in `wal/` for good, as a primary keeps what it has not
/// archived. The segment of the switch point is left alone: the old
/// primary's copy of it may hold more than this node's. Returns how many
/// were marked.
fn mark_unarchived_before(
    wal_dir: &Path,
    size: SegmentSize,
    timeline: TimelineId,
    end: Lsn,
) -> Result<usize, FileError> {
    let mut marked = 0;
    for (_, path) in list_segments_upto(wal_dir, size, timeline)?.range(..end.segno(size)) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let unmarked = [ArchiveMark::Ready, ArchiveMark::Done]
            .iter()
            .all(|m| !archive_mark(wal_dir, &name, *m).exists());
        if path.extension().is_none() && unmarked {
            mark_ready(wal_dir, &name)?;
            marked += 1;
        }
    }
    Ok(marked)
}
