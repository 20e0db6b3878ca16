//! The walreceiver of a standby: streams WAL from the primary named by
//! `primary_conninfo`, verifies every record as it arrives, writes it byte
//! for byte into the node's own `wal/`, fsyncs it, hands the flushed
//! records to replay, and reports write/flush/apply positions back — after
//! every flush, so a synchronous primary waits no longer than it must.
//!
//! It reconnects with backoff (100 ms doubling to 5 s) whenever the
//! primary goes away, and never follows a primary of another system.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::client::{Client, ClientError, CopyMessage, Interrupter};
use super::conninfo::ConnInfo;
use super::walsender::pg_now;
use crate::durable::{self, io_cause, FileError};
use crate::progress::{Progress, Total};
use crate::wal::format::PageHeader;
use crate::wal::history::TimelineHistory;
use crate::wal::name::history_file_name;
use crate::wal::verify::{OwnRecord, StreamVerifier};
use crate::wal::{
    EndOfWal, Expect, Lsn, SegmentName, SegmentSize, TimelineId, WalError, WalWriter,
};

/// How often the standby reports its positions when nothing else makes it.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// How long WAL received may wait for its flush and replay while more
/// keeps arriving (a standby catching up).
const CATCH_UP_FLUSH: Duration = Duration::from_millis(100);

/// What a command printed, as one log field: its lines joined with " | ",
/// at most [`SAID_MAX`] bytes of them.
fn said(output: &[u8]) -> String {
    let mut said = String::from_utf8_lossy(output)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if said.len() > SAID_MAX {
        let cut = (0..=SAID_MAX)
            .rev()
            .find(|&i| said.is_char_boundary(i))
            .unwrap_or(0);
        said.truncate(cut);
        said.push_str(" …");
    }
    said
}

/// The most of a command's output one log line carries.
const SAID_MAX: usize = 4096;

/// Runs `cmd` with `sh -c`, its stdin empty and its stdout and stderr both
/// going, in the order written, to `capture` (unlinked as soon as it is
/// open, so nothing is left behind). Returns how it ended and what it said.
///
/// The output goes to a file, not a pipe, so that the command's end is its
/// exit: a background process it started that keeps the output open (an
/// ssh control master, a prefetcher) does not hold the standby up, as it
/// would a reader waiting for a pipe's end. The file is opened to append,
/// so what such a process writes later lands after what is read here; and
/// what cannot be read is only missing from the log line.
fn run_capturing(cmd: &str, capture: &Path) -> std::io::Result<(ExitStatus, String)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(capture)?;
    std::fs::remove_file(capture)?;
    file.set_len(0)?;
    let status = std::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file.try_clone()?)
        .status()?;
    let mut output = vec![0; 4 * SAID_MAX];
    let read = file.read_at(&mut output, 0).unwrap_or(0);
    output.truncate(read);
    Ok((status, said(&output)))
}

impl ReceiverStatus {
    /// A message from the primary, sent at `sent`, saying its WAL ends at
    /// `end` (as PostgreSQL's ProcessWalSndrMessage records it).
    fn heard(&mut self, end: Lsn, sent: i64) {
        if end > self.latest_end_lsn {
            self.latest_end_time = sent;
        }
        self.latest_end_lsn = end;
        self.last_msg_send_time = sent;
        self.last_msg_receipt_time = pg_now();
    }
}

/// What `pg_stat_wal_receiver` shows.
#[derive(Clone, Debug, Default)]
pub struct ReceiverStatus {
    /// `streaming`, `starting`, `waiting` (between attempts), or `stopped`.
    pub status: &'static str,
    pub receive_start_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub latest_end_lsn: Lsn,
    /// The sender's time of the message that last moved `latest_end_lsn`
    /// forward (microseconds since 2000): still while the primary is idle.
    pub latest_end_time: i64,
    /// When the primary last sent something (microseconds since 2000).
    pub last_msg_send_time: i64,
    pub last_msg_receipt_time: i64,
    pub slot_name: Option<String>,
    pub sender_host: Option<String>,
    pub sender_port: Option<u16>,
    pub conninfo: Option<String>,
    /// Ends the stream's connection at once (for a promotion).
    pub interrupter: Option<Arc<Interrupter>>,
}

/// What the walreceiver needs of the node it runs in.
pub trait WalReceiverHost: Send + Sync {
    fn wal(&self) -> &WalWriter;
    fn system_id(&self) -> u64;
    fn timeline(&self) -> TimelineId;
    fn seg_size(&self) -> SegmentSize;
    /// The primary to stream from and the slot to use, from the settings
    /// in force (they may change on SIGHUP).
    fn primary(&self) -> Option<(ConnInfo, Option<String>)>;
    /// Applies walship records that are flushed, in WAL order; `upto` is
    /// the end of the last record of any kind among them.
    fn replay(&self, records: &[OwnRecord], upto: Lsn) -> Result<(), String>;
    /// The end of the last replayed record.
    fn replayed_lsn(&self) -> Lsn;
    /// `restore_command`, if one is set.
    fn restore_command(&self) -> Option<String>;
    /// Where the last restartpoint's redo begins: WAL before it is not
    /// needed to restart (`restore_command`'s `%r`).
    fn restart_point(&self) -> Lsn;
    /// The node's WAL directory.
    fn wal_dir(&self) -> PathBuf;
    fn receiver_status(&self) -> MutexGuard<'_, ReceiverStatus>;
    /// This node's epoch.
    fn epoch(&self) -> u64;
    /// Adopts the upstream's (higher) epoch, durably.
    fn adopt_epoch(&self, epoch: u64) -> Result<(), String>;
    /// Continues on timeline `next` from `switch` (the end of the local
    /// WAL, or of its last whole record: a first part past it is dropped),
    /// durably: the upstream was promoted or followed a promotion.
    fn follow_timeline(&self, next: TimelineId, switch: Lsn) -> Result<(), String>;
    fn is_shutting_down(&self) -> bool;
    /// `wal_receiver_timeout` as now in force (zero: never).
    fn receiver_timeout(&self) -> Duration;
    /// Streaming must stop for now (a promotion is under way or done).
    fn paused(&self) -> bool;
    /// Sleeps up to `d`, or until the node is told to stop or reload, or
    /// streaming is paused; returns at once if it is stopping or paused.
    fn nap(&self, d: Duration);
}

#[derive(Debug, Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{peer} is of another system (system identifier {theirs}, this standby's is {ours}); this standby never follows it: check primary_conninfo")]
    WrongSystem {
        peer: String,
        theirs: String,
        ours: u64,
    },
    #[error("{peer} is on timeline {theirs}, behind this standby's timeline {ours}: it is not this standby's upstream any more (an old primary?)")]
    WrongTimeline {
        peer: String,
        theirs: TimelineId,
        ours: TimelineId,
    },
    #[error("{peer} is in epoch {theirs}, lower than this standby's epoch {ours}: a standby never follows an older generation (a fenced old primary?)")]
    LowerEpoch {
        peer: String,
        theirs: u64,
        ours: u64,
    },
    #[error("{peer}'s timeline {theirs} does not descend from this standby's timeline {ours}: rebuild the standby with walship basebackup")]
    NotAncestor {
        peer: String,
        theirs: TimelineId,
        ours: TimelineId,
    },
    #[error("this standby's WAL on timeline {ours} goes to {local_end}, past {peer}'s switch point {switch}: it has WAL the new primary never had; rebuild it (walship basebackup) or rewind it (walship rejoin)")]
    Diverged {
        peer: String,
        ours: TimelineId,
        local_end: Lsn,
        switch: Lsn,
    },
    #[error("{peer} sent WAL that fails verification: {end}; nothing from that record on was written or replayed")]
    BadWal { peer: String, end: EndOfWal },
    #[error("terminating walreceiver due to timeout: {peer} has sent nothing for {silent_ms} ms (wal_receiver_timeout), not even a keepalive; reconnecting")]
    Silent { peer: String, silent_ms: u64 },
    #[error("{peer} sent WAL at {got}, but the standby expected {expected}")]
    OutOfOrder {
        peer: String,
        got: Lsn,
        expected: Lsn,
    },
    #[error("the WAL {peer} has at {at} differs from this standby's, on the same timeline: the upstream lost WAL this standby holds (its recovery cut its WAL short after damage?) and wrote other WAL there, so this standby cannot follow it. Rebuild it with walship basebackup; or, if it holds commits the upstream lost, promote it instead (walship promote)")]
    Differs { peer: String, at: Lsn },
    #[error("{peer} sent a malformed replication message: {what}")]
    Malformed { peer: String, what: String },
    #[error("could not write received WAL: {0}")]
    Wal(#[from] WalError),
    #[error("replay failed: {0}")]
    Replay(String),
    #[error("{0}")]
    Restore(String),
}

/// `restore_command` for one standby's restoring: where it puts what it
/// fetches, and where what it prints is caught.
struct Fetcher<'a> {
    command: &'a str,
    scratch: PathBuf,
    said_file: PathBuf,
}

impl Fetcher<'_> {
    /// Runs the command for the file `name` (`%r` is `restart`): the
    /// file's bytes, or `None` when the archive does not have it (an exit
    /// status from 1 to 125, logged at info if `say_absent`, else at
    /// debug; or a command that could not run, a warning). Above 125 is a
    /// real failure (walship restore: corrupt, another system's,
    /// unreadable), not "not in the archive": an error.
    fn fetch(
        &self,
        name: &str,
        restart: &str,
        say_absent: bool,
    ) -> Result<Option<Vec<u8>>, ReceiveError> {
        let _ = std::fs::remove_file(&self.scratch);
        let cmd = self
            .command
            .replace("%%", "\u{0}")
            .replace("%f", name)
            .replace("%p", &self.scratch.to_string_lossy())
            .replace("%r", restart)
            .replace('\u{0}', "%");
        // What it prints is kept, to go into this log as one field of the
        // line that says how the command ended, not as loose lines.
        match run_capturing(&cmd, &self.said_file) {
            Ok((status, said)) if status.success() => {
                if !said.is_empty() {
                    info!(file = %name, said = %said, "restore_command");
                }
            }
            Ok((status, said)) if status.code().is_none_or(|c| c > 125) => {
                let said = if said.is_empty() {
                    String::new()
                } else {
                    format!(" (it said: {said})")
                };
                return Err(ReceiveError::Restore(format!(
                    "restore_command failed for {name} ({}): not an absent file but a real failure; fix the archive, then the standby retries: {cmd}{said}",
                    crate::shell::ended(status)
                )));
            }
            // Absent: the usual answer at the archive's end.
            Ok((status, said)) => {
                let ended = crate::shell::ended(status);
                if say_absent {
                    info!(file = %name, command = %cmd, ended = %ended, said = %said, "restore_command did not restore the file");
                } else {
                    debug!(file = %name, command = %cmd, ended = %ended, said = %said, "restore_command did not restore the file");
                }
                return Ok(None);
            }
            Err(e) => {
                warn!(command = %cmd, "could not run restore_command: {}", io_cause(&e));
                return Ok(None);
            }
        }
        let bytes = std::fs::read(&self.scratch)
            .map_err(|e| WalError::from(FileError::new("read restored file", &self.scratch, e)))?;
        let _ = std::fs::remove_file(&self.scratch);
        Ok(Some(bytes))
    }

    /// [`Fetcher::fetch`] for a segment, saying it is absent at info only
    /// the first time in a row it is asked for.
    fn fetch_segment(
        &self,
        name: &str,
        restart: &str,
        said: &mut Said,
    ) -> Result<Option<Vec<u8>>, ReceiveError> {
        let first_ask = said.absent.as_deref() != Some(name);
        let fetched = self.fetch(name, restart, first_ask)?;
        if fetched.is_none() {
            said.absent = Some(name.to_string());
        }
        Ok(fetched)
    }

    /// The next timeline this standby can follow from the archive once
    /// its own timeline `tli` has no more there (its primary was promoted
    /// away, as PostgreSQL's recovery_target_timeline = 'latest' follows
    /// it): the newest `TTTTTTTT.history` above `tli` (probed upwards
    /// until one is absent), if its history branches off `tli` at or
    /// after `complete`, where the last whole record of local WAL ends.
    fn next_timeline(
        &self,
        tli: TimelineId,
        complete: Lsn,
        restart: &str,
    ) -> Result<Next, ReceiveError> {
        let mut found: Vec<(TimelineId, String)> = Vec::new();
        let mut probe = tli;
        while let Some(t) = probe
            .get()
            .checked_add(1)
            .and_then(|t| TimelineId::new(t).ok())
        {
            let name = history_file_name(t);
            let Some(bytes) = self.fetch(&name, restart, false)? else {
                break;
            };
            found.push((t, String::from_utf8_lossy(&bytes).into_owned()));
            probe = t;
        }
        let Some((newest, text)) = found.last() else {
            return Ok(Next::None);
        };
        let history = TimelineHistory::parse(text).map_err(|e| {
            ReceiveError::Restore(format!(
                "the archive's {} is damaged: {e}",
                history_file_name(*newest)
            ))
        })?;
        let Some((switch, next)) = history.switch_of(tli, *newest) else {
            return Ok(Next::Refused(format!("the archive holds timeline {newest}, which does not descend from this standby's timeline {tli}: not followed")));
        };
        if complete > switch {
            return Ok(Next::Refused(format!("the archive holds timeline {newest}, which left timeline {tli} at {switch}, but this standby's WAL goes on to {complete}: not followed (walship rejoin, or a new base backup)")));
        }
        Ok(found
            .iter()
            .find(|(t, _)| *t == next)
            .map_or(Next::None, |(_, text)| Next::Follow {
                next,
                switch,
                history: text.clone(),
            }))
    }
}

/// What [`Fetcher::next_timeline`] found.
enum Next {
    /// No newer timeline (or not all of its path) in the archive.
    None,
    /// `next` branched off at `switch`; `history` is its history's text.
    Follow {
        next: TimelineId,
        switch: Lsn,
        history: String,
    },
    /// One that this standby cannot follow, and why.
    Refused(String),
}

/// What the restore loop said last, so that retries that find the same do
/// not say it again above debug.
#[derive(Default)]
struct Said {
    /// The segment last logged as absent.
    absent: Option<String>,
    /// The last reason a newer timeline was not followed.
    refused: Option<String>,
}

/// Restores segments with `restore_command`, from the one holding the end
/// of local WAL on, until the command fails (the archive has no more);
/// then follows a newer timeline the archive holds, if one branched off
/// this standby's at or after where its WAL ends, and restores on. Each
/// restored segment is verified like streamed WAL, written through the
/// WAL writer, flushed and replayed. Returns how many were restored.
/// `said` is what the last retries logged.
///
/// Following a timeline that branched off past the end of local WAL, the
/// WAL up to the switch point is first taken from the new timeline's
/// segment (which holds the old timeline's WAL up to there) and written on
/// this one, as a stream would deliver it: so this standby's old timeline
/// is whole up to where its history says it ends, for standbys of its own.
fn restore(
    host: &dyn WalReceiverHost,
    command: &str,
    said: &mut Said,
) -> Result<usize, ReceiveError> {
    let size = host.seg_size();
    let wal = host.wal();
    let fetcher = Fetcher {
        command,
        scratch: host.wal_dir().join("RECOVERYXLOG"),
        said_file: host.wal_dir().join("RECOVERYXLOG.said"),
    };
    let mut restored = 0;
    // A long catch-up says how it goes every ten seconds.
    let mut progress = Progress::for_log("restoring WAL from the archive", Total::Unknown);
    // One verifier for every segment restored in a row, so a record that
    // runs from one segment into the next is checked and replayed whole.
    let (_, mut verifier) = resume(host, true)?;
    // The timeline restored, and its history (for %r's timeline): fixed
    // until the loop follows a newer timeline.
    let mut tli = host.timeline();
    let mut history = TimelineHistory::read_in(&host.wal_dir(), tli);
    loop {
        if host.is_shutting_down() || host.paused() {
            return Ok(restored);
        }
        let pos = wal.insert_lsn();
        let segno = pos.segno(size);
        let mut name = SegmentName::new(tli, segno).file_name(size);
        // Where this segment's WAL is taken to: its end, or the switch
        // point of a newer timeline whose segment it comes from.
        let mut upto = None;
        // %r as PostgreSQL gives it: the segment of the last restartpoint,
        // the oldest one a restart still needs (pg_archivecleanup's cut),
        // named with the timeline it was written on.
        let restart_lsn = host.restart_point();
        let restart_tli = history
            .as_ref()
            .map_or(tli, |history| history.timeline_of(restart_lsn, tli));
        let restart = SegmentName::new(restart_tli, restart_lsn.segno(size)).file_name(size);
        let bytes = match fetcher.fetch_segment(&name, &restart, said)? {
            Some(bytes) => bytes,
            None => match fetcher.next_timeline(tli, wal.complete_lsn(), &restart)? {
                Next::None => return Ok(restored),
                Next::Refused(why) => {
                    if said.refused.as_deref() != Some(why.as_str()) {
                        warn!(timeline = %tli, "{why}");
                        said.refused = Some(why);
                    }
                    return Ok(restored);
                }
                // At the switch point (or past it by the first part of
                // a record the new timeline does not have, which the
                // switch drops): on to the new timeline.
                Next::Follow {
                    next,
                    switch,
                    history: text,
                } if pos >= switch => {
                    save_history(host, next, &text)?;
                    host.follow_timeline(next, switch)
                        .map_err(ReceiveError::Restore)?;
                    info!(timeline = %next, switch = %switch, "following timeline {next} found in the archive");
                    tli = next;
                    history = TimelineHistory::read_in(&host.wal_dir(), tli);
                    verifier = resume(host, true)?.1;
                    said.refused = None;
                    continue;
                }
                // Short of it: this timeline's WAL up to there, from
                // the new timeline's segment.
                Next::Follow { next, switch, .. } => {
                    name = SegmentName::new(next, segno).file_name(size);
                    if switch.segno(size) == segno {
                        upto = Some(switch);
                    }
                    match fetcher.fetch_segment(&name, &restart, said)? {
                        Some(bytes) => bytes,
                        None => return Ok(restored),
                    }
                }
            },
        };
        if bytes.len() as u64 != size.bytes() {
            return Err(ReceiveError::Restore(format!(
                "restore_command produced {} bytes for {name}, not a {size} segment",
                bytes.len()
            )));
        }
        // The segment's own long header names its system: checked even
        // when only its tail is new to us.
        let theirs = PageHeader::decode(&bytes).long.map(|l| l.sysid);
        if theirs != Some(host.system_id()) {
            return Err(ReceiveError::Restore(format!(
                "restore_command produced {name} of system {}, not this standby's system {}: the archive belongs to another system",
                theirs.map_or("unknown".to_string(), |s| s.to_string()),
                host.system_id()
            )));
        }
        let from = pos.segment_offset(size) as usize;
        // What this standby holds of the segment already (from its last
        // record, or the segment's start) must be the archive's too, as
        // a stream's is compared: else the archive took WAL written where
        // this standby's was, after its upstream lost this one's.
        let last = wal.last_record_lsn();
        let held_from = if last != Lsn::INVALID && last.segno(size) == segno {
            last.segment_offset(size) as usize
        } else {
            0
        };
        if held_from < from {
            let seg_start = segno.start_lsn(size);
            let ours = wal.read_back(Lsn(seg_start.0 + held_from as u64), pos)?;
            if bytes[held_from..from] != ours[..] {
                return Err(ReceiveError::Differs {
                    peer: format!("the archive ({name})"),
                    at: Lsn(seg_start.0 + held_from as u64),
                });
            }
        }
        let to = upto.map_or(bytes.len(), |s: Lsn| s.segment_offset(size) as usize);
        let chunk = &bytes[from..to.max(from)];
        let checked = match verifier.check(pos, chunk) {
            Ok(c) => c,
            Err(rejected) if rejected.end.is_clean() => {
                // The archived copy ends where WAL ends (a partial segment):
                // take what is valid and stop restoring.
                wal.write_received(pos, &chunk[..rejected.valid], verifier.last_record())?;
                let mut own = Vec::new();
                flush_and_replay(host, &mut own, Lsn::INVALID)?;
                return Ok(restored);
            }
            Err(rejected) => {
                return Err(ReceiveError::Restore(format!(
                    "archived segment {name} fails verification: {}",
                    rejected.end
                )));
            }
        };
        wal.write_received(pos, chunk, verifier.last_record())?;
        let mut own = checked.own;
        flush_and_replay(host, &mut own, checked.last_end.unwrap_or(Lsn::INVALID))?;
        info!(segment = %name, "restored segment from the archive");
        progress.advance(1, size.bytes());
        restored += 1;
    }
}

/// Timeline `tli`'s history, as the upstream `peer` has it, and its text.
fn fetch_history(
    client: &mut Client,
    peer: &str,
    tli: TimelineId,
) -> Result<(TimelineHistory, String), ReceiveError> {
    let content = client.timeline_history(tli)?;
    let text = String::from_utf8_lossy(&content).into_owned();
    let history = TimelineHistory::parse(&text).map_err(|e| ReceiveError::Malformed {
        peer: peer.to_string(),
        what: format!("timeline history {tli}: {e}"),
    })?;
    Ok((history, text))
}

fn save_history(
    host: &dyn WalReceiverHost,
    tli: TimelineId,
    text: &str,
) -> Result<(), ReceiveError> {
    durable::replace_file(
        &host.wal_dir().join(history_file_name(tli)),
        text.as_bytes(),
    )
    .map_err(|e| ReceiveError::Wal(e.into()))
}

/// Where WAL from an upstream or the archive resumes on this node's
/// timeline, and the verifier for what comes from there.
///
/// With `keep_partial`, the first part of a record that the last stream
/// or restored segment broke off in stays, and WAL resumes at the end of
/// what is local. Those bytes were flushed upstream with the whole record
/// before any of them was sent (a flush ends at a record's end), so what
/// comes next on the same timeline is that record's rest; and nothing is
/// asked for again that the upstream may have removed since — the
/// segment the record begins in, restored from the archive, while the
/// primary has only the next. The kept bytes go through the verifier
/// again, so the record is still checked whole. Otherwise (its rest would
/// come from past a timeline switch) the first part is dropped and WAL
/// resumes where the record began, as PostgreSQL's does.
fn resume(
    host: &dyn WalReceiverHost,
    keep_partial: bool,
) -> Result<(Lsn, StreamVerifier), ReceiveError> {
    let wal = host.wal();
    let expect = Expect {
        sysid: Some(host.system_id()),
        max_timeline: Some(host.timeline().get()),
    };
    let last = wal.last_record_lsn();
    let prev = (last != Lsn::INVALID).then_some(last);
    if keep_partial {
        if let Some((from, bytes)) = wal.partial_record()? {
            let mut verifier = StreamVerifier::new(host.seg_size(), from, prev, expect);
            match verifier.check(from, &bytes) {
                Ok(_) => return Ok((wal.insert_lsn(), verifier)),
                Err(rejected) => warn!(
                    at = %from,
                    "dropping the first part of a record the last stream broke off in: {}",
                    rejected.end
                ),
            }
        }
    }
    let start = wal.discard_partial_record()?;
    Ok((
        start,
        StreamVerifier::new(host.seg_size(), start, prev, expect),
    ))
}

/// Restores what the archive has with `restore_command`, if one is set;
/// returns how many segments came, or the replay failure that must stop
/// the standby. `said`: as [`restore`]'s, kept across retries.
fn restore_from_archive(host: &dyn WalReceiverHost, said: &mut Said) -> Result<usize, String> {
    let Some(command) = host.restore_command() else {
        return Ok(0);
    };
    let before = host.wal().insert_lsn();
    match restore(host, &command, said) {
        // Restoring nothing new is no progress: the caller must still back
        // off before it tries the primary again.
        Ok(_) if host.wal().insert_lsn() <= before => Ok(0),
        Ok(n) => {
            info!(segments = n, "restored WAL from the archive");
            Ok(n)
        }
        Err(ReceiveError::Replay(why)) => Err(why),
        Err(e) => {
            error!("restoring from the archive stopped: {e}");
            Ok(0)
        }
    }
}

/// A record that does not replay stops the standby: the records after
/// it are written, so going on would skip them for good.
fn stop_replaying(host: &dyn WalReceiverHost, why: String) -> Result<(), String> {
    host.receiver_status().status = "stopped";
    Err(format!("replay failed: {why}"))
}

/// Runs until the node stops: stream, and on any failure try the archive,
/// wait and retry. Returns an error only when a record does not replay:
/// then the node must stop, as PostgreSQL's startup process does, so that
/// nothing (a promotion) builds on a store that lacks records its WAL has.
pub fn run(host: &dyn WalReceiverHost) -> Result<(), String> {
    let mut backoff = Duration::from_millis(100);
    let mut said = Said::default();
    while !host.is_shutting_down() {
        if host.paused() {
            host.receiver_status().status = "stopped";
            // (Not host.nap: that returns at once while paused.)
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let Some((info, slot)) = host.primary() else {
            // No primary to stream from: an archive-only standby.
            host.receiver_status().status = "waiting";
            if let Err(why) = restore_from_archive(host, &mut said) {
                return stop_replaying(host, why);
            }
            host.nap(Duration::from_secs(1));
            continue;
        };
        let began = Instant::now();
        let outcome = stream(host, &info, slot.as_deref());
        host.receiver_status().interrupter = None;
        if host.paused() {
            // However it ended: the promotion cut the connection itself.
            info!(primary = %info, "streaming stopped for the promotion");
            continue;
        }
        match outcome {
            // An end the upstream chose (a timeline's end, its shutdown)
            // is no failure: reconnect soon, whatever earlier failures
            // had grown the backoff to (a standby just pointed at a new
            // primary by walship follow streams within 100 ms, not 5 s).
            Ok(()) => {
                info!(primary = %info, "streaming ended");
                backoff = Duration::from_millis(100);
            }
            Err(ReceiveError::Replay(why)) => return stop_replaying(host, why),
            Err(e) => {
                // A divergence lasts until an operator acts: said as an error.
                if matches!(e, ReceiveError::Differs { .. }) {
                    error!(primary = %info, retry_in_ms = backoff.as_millis() as u64, "walreceiver: {e}");
                } else {
                    warn!(primary = %info, retry_in_ms = backoff.as_millis() as u64, "walreceiver: {e}");
                }
                // The primary is down or no longer has the WAL we need: the
                // archive may have it. Then back to streaming.
                match restore_from_archive(host, &mut said) {
                    Err(why) => return stop_replaying(host, why),
                    Ok(0) => {}
                    Ok(_) => {
                        backoff = Duration::from_millis(100);
                        continue;
                    }
                }
            }
        }
        host.receiver_status().status = "waiting";
        if began.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        host.nap(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    host.receiver_status().status = "stopped";
    Ok(())
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// One streaming session, until the connection ends or fails.
fn stream(
    host: &dyn WalReceiverHost,
    info: &ConnInfo,
    slot: Option<&str>,
) -> Result<(), ReceiveError> {
    {
        // What this attempt uses, shown while it connects and if it fails.
        let mut st = host.receiver_status();
        st.status = "starting";
        st.slot_name = slot.map(str::to_string);
        st.sender_host = Some(info.host.clone());
        st.sender_port = Some(info.port);
        st.conninfo = Some(info.to_string());
    }
    let mut client = Client::connect(info, Some("true"))?;
    // From here a promotion can cut the connection, handshake included;
    // `run` drops the handle when the stream ends, however it ends.
    host.receiver_status().interrupter = client.interrupter().ok().map(Arc::new);
    let peer = client.peer().to_string();
    let ident = client.query("IDENTIFY_SYSTEM")?;
    let theirs = ident.text(0, "systemid").unwrap_or_default();
    if theirs != host.system_id().to_string() {
        return Err(ReceiveError::WrongSystem {
            peer,
            theirs,
            ours: host.system_id(),
        });
    }
    let their_tli = ident
        .text(0, "timeline")
        .and_then(|t| t.parse::<u32>().ok())
        .and_then(|t| TimelineId::new(t).ok())
        .ok_or_else(|| ReceiveError::Malformed {
            peer: peer.clone(),
            what: "IDENTIFY_SYSTEM returned no timeline".into(),
        })?;
    let ours = host.timeline();
    if their_tli < ours {
        return Err(ReceiveError::WrongTimeline {
            peer,
            theirs: their_tli,
            ours,
        });
    }
    // A walship upstream says its epoch; a standby never follows a lower one.
    if let Ok(epoch) = client.show("epoch") {
        if let Some(theirs) = epoch.and_then(|t| t.parse::<u64>().ok()) {
            if theirs < host.epoch() {
                return Err(ReceiveError::LowerEpoch {
                    peer,
                    theirs,
                    ours: host.epoch(),
                });
            }
            if theirs > host.epoch() {
                host.adopt_epoch(theirs).map_err(ReceiveError::Replay)?;
                info!(epoch = theirs, "adopted the upstream's epoch");
            }
        }
    }
    let wal = host.wal();
    // Where the last complete record ends: past it, perhaps, the first
    // part of a record the last stream or restored segment broke off in.
    let complete = wal.complete_lsn();
    let mut keep_partial = true;
    let mut switch_at = None;
    if their_tli > ours {
        // The upstream is on a later timeline: stream ours up to its switch
        // point (the upstream ends it there), then follow.
        let (history, text) = fetch_history(&mut client, &peer, their_tli)?;
        let (switch, _) =
            history
                .switch_of(ours, their_tli)
                .ok_or_else(|| ReceiveError::NotAncestor {
                    peer: peer.clone(),
                    theirs: their_tli,
                    ours,
                })?;
        // Our WAL may end just past the (empty) page header at a
        // page-aligned switch point: that is still the switch point.
        let at_switch = crate::wal::writer::ends_at(complete, switch, host.seg_size());
        if complete > switch && !at_switch {
            return Err(ReceiveError::Diverged {
                peer,
                ours,
                local_end: complete,
                switch,
            });
        }
        // A record begun at the switch point is none of the upstream's: its
        // timeline begins there.
        keep_partial = !at_switch;
        switch_at = at_switch.then_some(switch);
        save_history(host, their_tli, &text)?;
    } else if ours > TimelineId::FIRST && !host.wal_dir().join(history_file_name(ours)).exists() {
        // As PostgreSQL's walreceiver fetches the history files it lacks:
        // a node cloned from a promoted primary has none of its own
        // timeline, whose history a promotion of this node extends. An
        // upstream without it (a standby cloned the same way) is still
        // followed.
        match fetch_history(&mut client, &peer, ours) {
            Ok((_, text)) => {
                save_history(host, ours, &text)?;
                info!(primary = %info, timeline = %ours, "fetched the history of this node's timeline");
            }
            Err(e) => {
                warn!(primary = %info, timeline = %ours, "could not fetch the history of this node's timeline: {e}")
            }
        }
    }
    let (mut start, mut verifier) = resume(host, keep_partial)?;
    if let Some(switch) = switch_at {
        start = switch;
    }
    // A kept first part the upstream's rest does not continue is dropped
    // when the stream fails on it, so that the next attempt asks for the
    // whole record again (and compares what it has).
    let resumed_complete = wal.complete_lsn();
    let kept_partial = resumed_complete < start;
    // On the same timeline, the last record this standby holds is asked
    // for again and compared: an upstream whose recovery cut its WAL short
    // (damage on its disk) and wrote other records where this standby's
    // were would otherwise line up by chance, and be followed. Only within
    // the segment streaming resumes in, which the upstream still has.
    let last = wal.last_record_lsn();
    let size = host.seg_size();
    let mut overlap = (their_tli == ours
        && switch_at.is_none()
        && !kept_partial
        && last != Lsn::INVALID
        && last < start
        && last.segno(size) == start.segno(size))
    .then(|| wal.read_back(last, start).map(|bytes| (last, bytes)))
    .transpose()?;
    let from = overlap.as_ref().map_or(start, |(at, _)| *at);
    let slot_clause = slot.map(|s| format!("SLOT \"{s}\" ")).unwrap_or_default();
    client.start_copy(&format!(
        "START_REPLICATION {slot_clause}PHYSICAL {from} TIMELINE {}",
        host.timeline()
    ))?;
    info!(primary = %info, start = %start, slot = slot.unwrap_or("none"), "started streaming WAL");
    {
        let mut st = host.receiver_status();
        st.status = "streaming";
        st.receive_start_lsn = start;
        st.flushed_lsn = start;
    }
    let mut to_replay: Vec<OwnRecord> = Vec::new();
    let mut replay_upto = Lsn::INVALID;
    let mut unflushed = false;
    let mut reply_due = false;
    let mut last_reply = Instant::now();
    let mut reported_apply = host.replayed_lsn();
    let mut settings_checked = Instant::now();
    let mut receiver_timeout = host.receiver_timeout();
    client.set_message_timeout(receiver_timeout)?;
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let mut unflushed_since = Instant::now();
    let outcome = (|| loop {
        if host.is_shutting_down() {
            let _ = client.end_copy();
            return Ok(());
        }
        // A promotion: it interrupts the connection too, so there is no
        // orderly end to wait for.
        if host.paused() {
            return Ok(());
        }
        // A reload that points the standby elsewhere ends this stream; the
        // next attempt uses the new settings.
        if settings_checked.elapsed() >= Duration::from_secs(1) {
            settings_checked = Instant::now();
            receiver_timeout = host.receiver_timeout();
            client.set_message_timeout(receiver_timeout)?;
            let now = host.primary();
            if now.as_ref().map(|(i, s)| (i, s.as_deref())) != Some((info, slot)) {
                info!(primary = %info, "primary_conninfo or primary_slot_name changed: reconnecting");
                let _ = client.end_copy();
                return Ok(());
            }
        }
        // Wait briefly when replay may move (so remote_apply hears soon).
        let wait = if unflushed || client.has_buffered() {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        match client.recv_copy(wait)? {
            Some(CopyMessage::Data(msg)) => {
                last_heard = Instant::now();
                pinged = false;
                let malformed = |what: &str| ReceiveError::Malformed {
                    peer: peer.clone(),
                    what: what.to_string(),
                };
                match msg.first() {
                    Some(b'w') => {
                        let (Some(at), Some(end), Some(sent)) =
                            (be_u64(msg, 1), be_u64(msg, 9), be_u64(msg, 17))
                        else {
                            return Err(malformed("XLogData shorter than its header"));
                        };
                        let mut at = Lsn(at);
                        let mut bytes = &msg[25..];
                        if let Some((from, local)) = &mut overlap {
                            // WAL this standby holds, sent again: the
                            // same bytes, or the upstream is not the WAL
                            // this standby followed.
                            if at != *from {
                                return Err(ReceiveError::OutOfOrder {
                                    peer,
                                    got: at,
                                    expected: *from,
                                });
                            }
                            let n = bytes.len().min(local.len());
                            if bytes[..n] != local[..n] {
                                return Err(ReceiveError::Differs { peer, at: *from });
                            }
                            local.drain(..n);
                            *from = Lsn(from.0 + n as u64);
                            (at, bytes) = (*from, &bytes[n..]);
                            if local.is_empty() {
                                overlap = None;
                            }
                        }
                        let expected = wal.insert_lsn();
                        if at != expected {
                            return Err(ReceiveError::OutOfOrder {
                                peer,
                                got: at,
                                expected,
                            });
                        }
                        match verifier.check(at, bytes) {
                            Ok(_) if bytes.is_empty() => {}
                            Ok(checked) => {
                                wal.write_received(at, bytes, verifier.last_record())?;
                                to_replay.extend(checked.own);
                                if let Some(e) = checked.last_end {
                                    replay_upto = e;
                                }
                            }
                            Err(rejected) => {
                                wal.write_received(
                                    at,
                                    &bytes[..rejected.valid],
                                    verifier.last_record(),
                                )?;
                                flush_and_replay(host, &mut to_replay, replay_upto)?;
                                unflushed = false;
                                if kept_partial && wal.complete_lsn() == resumed_complete {
                                    wal.discard_partial_record()?;
                                }
                                return Err(ReceiveError::BadWal {
                                    peer,
                                    end: rejected.end,
                                });
                            }
                        }
                        if !unflushed {
                            unflushed_since = Instant::now();
                        }
                        unflushed = true;
                        host.receiver_status().heard(Lsn(end), sent as i64);
                    }
                    Some(b'k') => {
                        let (Some(end), Some(sent)) = (be_u64(msg, 1), be_u64(msg, 9)) else {
                            return Err(malformed("keepalive shorter than its fields"));
                        };
                        reply_due |= msg.get(17) == Some(&1);
                        host.receiver_status().heard(Lsn(end), sent as i64);
                    }
                    _ => return Err(malformed("unknown CopyData message type")),
                }
            }
            Some(CopyMessage::Done) => {
                flush_and_replay(host, &mut to_replay, replay_upto)?;
                unflushed = false;
                let sets = client.end_copy()?;
                let next = sets.first().and_then(|r| {
                    let tli = r.text(0, "next_tli")?.parse::<u32>().ok()?;
                    let at = r.text(0, "next_tli_startpos")?.parse::<Lsn>().ok()?;
                    Some((TimelineId::new(tli).ok()?, at))
                });
                match next {
                    Some((tli, at)) => {
                        // The new timeline's history, on this connection,
                        // before this node is on it (unless this attempt
                        // saved it as it connected): its own walsenders
                        // read there where the timeline they stream ends.
                        if !host.wal_dir().join(history_file_name(tli)).exists() {
                            match fetch_history(&mut client, &peer, tli) {
                                Ok((_, text)) => save_history(host, tli, &text)?,
                                Err(e) => {
                                    warn!(primary = %info, timeline = %tli, "could not fetch the history of the timeline followed: {e}")
                                }
                            }
                        }
                        host.follow_timeline(tli, at)
                            .map_err(ReceiveError::Replay)?;
                        info!(timeline = %tli, switch = %at, "followed the upstream to a new timeline");
                    }
                    None => info!(primary = %info, "the primary ended streaming"),
                }
                return Ok(());
            }
            None => {}
        }
        // Flush when no more WAL is waiting in the socket buffer: one fsync
        // for everything that arrived together. Before it, as PostgreSQL's
        // walreceiver does, the WAL goes to the files and the upstream hears
        // the write position: commits waiting for `remote_write` need not
        // wait for this standby's fsync. A standby catching up finds WAL
        // waiting all the time: it flushes, replays and reports at least
        // every CATCH_UP_FLUSH, so its replay and the primary's view of
        // it move as it goes, not only once it has caught up.
        if unflushed && (!client.has_buffered() || unflushed_since.elapsed() >= CATCH_UP_FLUSH) {
            let written = wal.write_all()?;
            client.send_status(
                wal.reportable(written),
                wal.reportable(wal.flushed_lsn()),
                reported_apply,
                false,
            )?;
            flush_and_replay(host, &mut to_replay, replay_upto)?;
            unflushed = false;
            reply_due = true;
        }
        let applied = host.replayed_lsn();
        if applied != reported_apply {
            reply_due = true;
        }
        if reply_due || last_reply.elapsed() >= STATUS_INTERVAL {
            let flushed = wal.reportable(wal.flushed_lsn());
            client.send_status(flushed, flushed, applied, false)?;
            reported_apply = applied;
            reply_due = false;
            last_reply = Instant::now();
        }
        // An upstream silent for half of wal_receiver_timeout is asked for
        // a keepalive; one silent for all of it is given up on (a hung
        // host, a network that drops everything), and the next attempt
        // connects afresh, as PostgreSQL's walreceiver does.
        let timeout = receiver_timeout;
        if !timeout.is_zero() {
            let silent = last_heard.elapsed();
            if silent >= timeout {
                return Err(ReceiveError::Silent {
                    peer: peer.clone(),
                    silent_ms: silent.as_millis() as u64,
                });
            }
            if silent >= timeout / 2 && !pinged {
                let flushed = wal.reportable(wal.flushed_lsn());
                client.send_status(flushed, flushed, applied, true)?;
                pinged = true;
            }
        }
    })();
    // However the stream ended, what was written to the WAL is flushed and
    // replayed: the store never lags the WAL it has. (The stream's own
    // error, if any, is the one to report.)
    if unflushed || !to_replay.is_empty() {
        let flushed = flush_and_replay(host, &mut to_replay, replay_upto);
        if outcome.is_ok() {
            flushed?;
        } else if let Err(e) = flushed {
            error!("could not flush and replay the WAL received before the stream ended: {e}");
        }
    }
    outcome
}

/// Makes everything received durable, then replays it.
fn flush_and_replay(
    host: &dyn WalReceiverHost,
    to_replay: &mut Vec<OwnRecord>,
    upto: Lsn,
) -> Result<(), ReceiveError> {
    let flushed = host.wal().flush_all()?;
    host.receiver_status().flushed_lsn = flushed;
    if upto != Lsn::INVALID || !to_replay.is_empty() {
        host.replay(to_replay, upto).map_err(ReceiveError::Replay)?;
    }
    to_replay.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commands_output_is_one_bounded_line() {
        assert_eq!(
            said(b"one\n\n two \ncp: cannot stat 'x'\n"),
            "one | two | cp: cannot stat 'x'"
        );
        assert_eq!(said(b""), "");
        let long = said(&vec![b'x'; 10_000]);
        assert!(long.len() <= SAID_MAX + " …".len() && long.ends_with(" …"));
    }
}
