//! `walship receive`: pg_receivewal's job. Streams WAL from a primary
//! (walship or PostgreSQL 15) into a directory of segment files that are
//! byte-identical to the primary's: each is preallocated as
//! `SEGNAME.partial`, written as WAL arrives, and durably renamed to
//! `SEGNAME` once complete.
//!
//! Invariants:
//! - Every record is verified (headers, prev-link, CRC) before its bytes
//!   are written; WAL that fails is never written, and the receiver stops
//!   naming the LSN.
//! - A flush position is reported to the primary only after an fsync
//!   covers it (with `--synchronous`, after every batch of messages, so a
//!   receiver can serve as a synchronous standby).
//! - It resumes where it stopped: at the start of its `.partial` segment,
//!   or after its last complete one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{info, warn};

use super::client::{Client, ClientError, CopyMessage, Rows};
use super::conninfo::ConnInfo;
use crate::durable::{self, DirLock, FileError, LockError};
use crate::node::config::parse_size;

use crate::wal::history::TimelineHistory;
use crate::wal::name::history_file_name;
use crate::wal::segment::{self, OpenSegment};
use crate::wal::verify::StreamVerifier;
use crate::wal::{
    EndOfWal, Expect, Lsn, SegNo, SegmentName, SegmentSize, TimelineId, WalError, WalFileName,
};

#[derive(Debug, Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error(
        "{peer} sent WAL that fails verification: {end}; nothing from that record on was written"
    )]
    BadWal { peer: String, end: EndOfWal },
    #[error("{peer}: {what}")]
    Protocol { peer: String, what: String },
    #[error("--endpos {endpos} lies before {start}, where streaming from {peer} would begin (the start of the segment the server writes, or its slot keeps, now): give a later --endpos")]
    EndposBeforeStart {
        peer: String,
        endpos: Lsn,
        start: Lsn,
    },
    #[error("{dir} holds segments of system {found}, but {peer} is system {server}: use another directory")]
    WrongSystem {
        dir: PathBuf,
        peer: String,
        found: u64,
        server: u64,
    },
}

impl ReceiveError {
    /// Bad WAL, a wrong system, an --endpos before the start and a refused
    /// role or password: not cured by trying again.
    fn is_permanent(&self) -> bool {
        match self {
            ReceiveError::BadWal { .. }
            | ReceiveError::WrongSystem { .. }
            | ReceiveError::EndposBeforeStart { .. } => true,
            ReceiveError::Client(e) => e.is_auth_failure(),
            _ => false,
        }
    }
}

pub struct ReceiveOptions {
    pub from: ConnInfo,
    pub dir: PathBuf,
    pub slot: Option<String>,
    /// Stop once WAL up to here has been received and flushed.
    pub endpos: Option<Lsn>,
    /// Exit on a lost connection instead of reconnecting.
    pub no_loop: bool,
    /// Flush and report after every batch of messages.
    pub synchronous: bool,
    /// How often to report positions otherwise.
    pub status_interval: Duration,
}

/// Why streaming stopped without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// `--endpos` was reached.
    EndPos(Lsn),
    /// The server ended streaming (shutdown) and `--no-loop` was given.
    ServerEnded(Lsn),
}

/// Creates a physical slot (`--create-slot`, which, as pg_receivewal's,
/// creates the slot and exits).
pub fn create_slot(from: &ConnInfo, slot: &str) -> Result<Lsn, ReceiveError> {
    let mut client = Client::connect(from, Some("true"))?;
    client.create_slot(slot)?;
    // PostgreSQL answers a physical slot's creation with a consistent
    // point of 0/0; where it keeps WAL from is its restart LSN.
    let kept_from = client.read_slot(slot)?.and_then(|s| s.restart_lsn);
    client.close();
    Ok(kept_from.unwrap_or(Lsn::INVALID))
}

/// Streams until `--endpos`, or (with `--no-loop`) until the connection
/// ends; otherwise forever, reconnecting with backoff.
pub fn run(opts: &ReceiveOptions) -> Result<Stopped, ReceiveError> {
    if !opts.dir.exists() {
        durable::create_dir(&opts.dir)?;
    }
    let _lock = DirLock::acquire(&opts.dir)?;
    let mut backoff = Duration::from_millis(500);
    loop {
        let began = Instant::now();
        let result = stream_once(opts);
        match result {
            Ok(Some(stop)) => return Ok(stop),
            Ok(None) => info!("the server ended streaming; reconnecting"),
            Err(e) if opts.no_loop || e.is_permanent() => return Err(e),
            Err(e) => warn!(retry_in_ms = backoff.as_millis() as u64, "{e}"),
        }
        if began.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Where to begin, and on which timeline: after the last complete segment
/// (of `tli` or an earlier timeline) in `dir`, or at the start of its
/// `.partial` one; `None` when it has none.
fn local_start(
    dir: &Path,
    size: SegmentSize,
    tli: TimelineId,
) -> Result<Option<(Lsn, TimelineId)>, FileError> {
    let mut best: Option<(SegNo, bool, TimelineId)> = None;
    for entry in std::fs::read_dir(dir).map_err(|e| FileError::new("read directory", dir, e))? {
        let entry = entry.map_err(|e| FileError::new("read directory", dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let (seg, complete) = match WalFileName::parse(&name, size) {
            Ok(WalFileName::Segment(s)) => (s, true),
            Ok(WalFileName::Partial(s)) => (s, false),
            _ => continue,
        };
        if seg.timeline > tli {
            continue;
        }
        if best.is_none_or(|(b, _, t)| (seg.segno, seg.timeline) > (b, t)) {
            best = Some((seg.segno, complete, seg.timeline));
        }
    }
    Ok(best.map(|(segno, complete, t)| {
        let at = if complete {
            segno.next().start_lsn(size)
        } else {
            segno.start_lsn(size)
        };
        (at, t)
    }))
}

/// One segment being received.
struct Receiving {
    segno: SegNo,
    partial: PathBuf,
    done: PathBuf,
    file: OpenSegment,
}

struct Session<'a> {
    opts: &'a ReceiveOptions,
    peer: String,
    size: SegmentSize,
    tli: TimelineId,
    current: Option<Receiving>,
    written: Lsn,
    flushed: Lsn,
}

impl Session<'_> {
    fn open_segment(&mut self, segno: SegNo) -> Result<(), ReceiveError> {
        let name = SegmentName::new(self.tli, segno);
        let done = self.opts.dir.join(name.file_name(self.size));
        let partial = self.opts.dir.join(name.partial_file_name(self.size));
        // A synchronous receiver syncs after every batch, so its blocks
        // are written as zeros first and each sync carries only data; an
        // asynchronous one syncs seldom, and is spared writing each segment
        // twice.
        if self.opts.synchronous {
            segment::create_zeroed(&partial, self.size)?;
        } else {
            segment::create_allocated(&partial, self.size)?;
        }
        let file = OpenSegment::open(&partial, segno, self.size)?;
        self.current = Some(Receiving {
            segno,
            partial,
            done,
            file,
        });
        Ok(())
    }

    /// Writes verified bytes at `at`, crossing into new segments as needed.
    fn write(&mut self, mut at: Lsn, mut bytes: &[u8]) -> Result<(), ReceiveError> {
        while !bytes.is_empty() {
            let segno = at.segno(self.size);
            if self.current.as_ref().map(|c| c.segno) != Some(segno) {
                self.finish_segment()?;
                self.open_segment(segno)?;
            }
            let Some(cur) = &self.current else {
                unreachable!("a segment was just opened")
            };
            let room = (cur.file.end().0 - at.0) as usize;
            let n = room.min(bytes.len());
            cur.file
                .write_at(at, &bytes[..n])
                .map_err(|e| FileError::new("write", &cur.partial, e))?;
            at.0 += n as u64;
            bytes = &bytes[n..];
            self.written = at;
            if at == cur.file.end() {
                self.finish_segment()?;
            }
        }
        Ok(())
    }

    /// Flushes the current segment; renames it when it is complete.
    fn finish_segment(&mut self) -> Result<(), ReceiveError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        self.sync_file(&cur)?;
        if self.written >= cur.file.end() {
            durable::rename(&cur.partial, &cur.done)?;
        } else {
            self.current = Some(cur);
        }
        Ok(())
    }

    fn sync_file(&mut self, cur: &Receiving) -> Result<(), ReceiveError> {
        cur.file
            .sync()
            .map_err(|e| FileError::new("fdatasync", &cur.partial, e))?;
        self.flushed = self.written;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ReceiveError> {
        if let Some(cur) = self.current.take() {
            let r = self.sync_file(&cur);
            self.current = Some(cur);
            r?;
        }
        self.flushed = self.written;
        Ok(())
    }

    fn reply(&self, client: &mut Client) -> Result<(), ReceiveError> {
        client.send_status(self.written, self.flushed, Lsn::INVALID, false)?;
        Ok(())
    }
}

fn first_text(rows: &Rows, col: &str) -> Option<String> {
    rows.text(0, col)
}

/// Connects, streams and returns when streaming ends: `Some` when the
/// receiver should stop, `None` to reconnect.
fn stream_once(opts: &ReceiveOptions) -> Result<Option<Stopped>, ReceiveError> {
    let mut client = Client::connect(&opts.from, Some("true"))?;
    let peer = client.peer().to_string();
    let protocol = |what: String| ReceiveError::Protocol {
        peer: peer.clone(),
        what,
    };
    let ident = client.query("IDENTIFY_SYSTEM")?;
    let sysid: u64 = first_text(&ident, "systemid")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol("IDENTIFY_SYSTEM returned no system identifier".into()))?;
    let mut tli = first_text(&ident, "timeline")
        .and_then(|t| t.parse::<u32>().ok())
        .and_then(|t| TimelineId::new(t).ok())
        .ok_or_else(|| protocol("IDENTIFY_SYSTEM returned no timeline".into()))?;
    let xlogpos: Lsn = first_text(&ident, "xlogpos")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol("IDENTIFY_SYSTEM returned no position".into()))?;
    let size_text = client
        .show("wal_segment_size")?
        .ok_or_else(|| protocol("SHOW wal_segment_size returned nothing".into()))?;
    let size = parse_size(&size_text)
        .ok()
        .and_then(|b| SegmentSize::new(b).ok())
        .ok_or_else(|| protocol(format!("unusable wal_segment_size \"{size_text}\"")))?;
    check_system(&opts.dir, size, sysid, &peer)?;
    let mut start = match local_start(&opts.dir, size, tli)? {
        Some((lsn, local_tli)) => {
            // Resume on the timeline the local WAL is on (the server streams
            // it to its switch point, then says where the next one begins),
            // or on a later one if the local WAL already reaches its switch.
            if local_tli < tli {
                let content = client.timeline_history(tli)?;
                let history = TimelineHistory::parse(&String::from_utf8_lossy(&content))
                    .map_err(|e| protocol(format!("timeline history {tli}: {e}")))?;
                durable::replace_file(&opts.dir.join(history_file_name(tli)), &content)?;
                let mut on = local_tli;
                for (i, e) in history.entries().iter().enumerate() {
                    if e.timeline >= on && lsn >= e.switchpoint {
                        on = history.entries().get(i + 1).map_or(tli, |n| n.timeline);
                    }
                }
                tli = on;
            }
            lsn
        }
        None => {
            let from_slot = match &opts.slot {
                Some(slot) => client.read_slot(slot)?.and_then(|s| s.restart_lsn),
                None => None,
            };
            let at = from_slot.unwrap_or(xlogpos).segno(size).start_lsn(size);
            // Nothing here to resume from, and nothing earlier is asked for.
            if let Some(endpos) = opts.endpos.filter(|e| *e < at) {
                return Err(ReceiveError::EndposBeforeStart {
                    peer,
                    endpos,
                    start: at,
                });
            }
            at
        }
    };
    loop {
        // As pg_receivewal: the history of the timeline streamed, when
        // this directory does not have it yet (a restore on that timeline
        // asks for it first).
        if tli > TimelineId::FIRST && !opts.dir.join(history_file_name(tli)).exists() {
            fetch_history(&mut client, &opts.dir, tli)?;
        }
        let slot = opts
            .slot
            .as_ref()
            .map(|s| format!("SLOT \"{s}\" "))
            .unwrap_or_default();
        client.start_copy(&format!(
            "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {tli}"
        ))?;
        info!(peer = %peer, start = %start, timeline = %tli, "streaming WAL");
        let mut s = Session {
            opts,
            peer: peer.clone(),
            size,
            tli,
            current: None,
            written: start,
            flushed: start,
        };
        let outcome = receive(&mut s, &mut client, start)?;
        s.flush()?;
        match outcome {
            Outcome::EndPos => {
                let _ = s.reply(&mut client);
                let _ = client.end_copy();
                client.close();
                return Ok(Some(Stopped::EndPos(s.flushed)));
            }
            Outcome::ServerDone => {
                let sets = client.end_copy()?;
                let next = sets.first().and_then(|r| {
                    let t = r
                        .text(0, "next_tli")?
                        .parse::<u32>()
                        .ok()
                        .and_then(|t| TimelineId::new(t).ok())?;
                    let at = r.text(0, "next_tli_startpos")?.parse::<Lsn>().ok()?;
                    Some((t, at))
                });
                let Some((next_tli, at)) = next else {
                    // The server is shutting down.
                    return Ok(opts.no_loop.then_some(Stopped::ServerEnded(s.flushed)));
                };
                fetch_history(&mut client, &opts.dir, next_tli)?;
                info!(peer = %peer, timeline = %next_tli, switch = %at, "following the timeline switch");
                tli = next_tli;
                // As pg_receivewal does: the new timeline's segment is
                // streamed whole, from its start (the upstream's copy holds
                // the old timeline's bytes before the switch point).
                start = at.segno(size).start_lsn(size);
            }
        }
    }
}

/// Refuses a directory whose segments belong to another system.
fn check_system(
    dir: &Path,
    size: SegmentSize,
    server: u64,
    peer: &str,
) -> Result<(), ReceiveError> {
    for entry in std::fs::read_dir(dir).map_err(|e| FileError::new("read directory", dir, e))? {
        let entry = entry.map_err(|e| FileError::new("read directory", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !matches!(
            WalFileName::parse(&name, size),
            Ok(WalFileName::Segment(_) | WalFileName::Partial(_))
        ) {
            continue;
        }
        // Only the first page's long header is needed, not the segment.
        let header = segment::first_page_header(&entry.path())
            .map_err(|e| FileError::new("read", entry.path(), e))?;
        if let Some(long) = header.long {
            let found = long.sysid;
            if found != 0 && found != server {
                return Err(ReceiveError::WrongSystem {
                    dir: dir.to_path_buf(),
                    peer: peer.to_string(),
                    found,
                    server,
                });
            }
        }
        return Ok(());
    }
    Ok(())
}

fn fetch_history(client: &mut Client, dir: &Path, tli: TimelineId) -> Result<(), ReceiveError> {
    let content = client.timeline_history(tli)?;
    durable::replace_file(&dir.join(history_file_name(tli)), &content)?;
    Ok(())
}

enum Outcome {
    EndPos,
    ServerDone,
}

fn receive(s: &mut Session<'_>, client: &mut Client, start: Lsn) -> Result<Outcome, ReceiveError> {
    let mut verifier = StreamVerifier::new(
        s.size,
        start,
        None,
        Expect {
            sysid: None,
            max_timeline: Some(s.tli.get()),
        },
    );
    let mut last_status = Instant::now();
    let mut unflushed = false;
    loop {
        let msg = client.recv_copy(Duration::from_millis(100))?;
        let mut reply_requested = false;
        match msg {
            Some(CopyMessage::Data(msg)) => match msg.first() {
                Some(b'w') if msg.len() >= 25 => {
                    let at = Lsn(u64::from_be_bytes(msg[1..9].try_into().unwrap_or_default()));
                    let bytes = &msg[25..];
                    if at != s.written {
                        return Err(ReceiveError::Protocol {
                            peer: s.peer.clone(),
                            what: format!("sent WAL at {at}, expected {}", s.written),
                        });
                    }
                    match verifier.check(at, bytes) {
                        Ok(_) => s.write(at, bytes)?,
                        Err(rejected) => {
                            s.write(at, &bytes[..rejected.valid])?;
                            s.flush()?;
                            return Err(ReceiveError::BadWal {
                                peer: s.peer.clone(),
                                end: rejected.end,
                            });
                        }
                    }
                    unflushed = true;
                }
                Some(b'k') if msg.len() >= 18 => reply_requested = msg[17] == 1,
                _ => {
                    return Err(ReceiveError::Protocol {
                        peer: s.peer.clone(),
                        what: "malformed message in the WAL stream".into(),
                    })
                }
            },
            Some(CopyMessage::Done) => return Ok(Outcome::ServerDone),
            None => {}
        }
        let endpos_reached = s.opts.endpos.is_some_and(|e| s.written >= e);
        if endpos_reached {
            return Ok(Outcome::EndPos);
        }
        let batch_done = !client.has_buffered();
        let status_due = last_status.elapsed() >= s.opts.status_interval;
        // A reply the server asks for carries a flush position that is
        // true now, as pg_receivewal's does: a PostgreSQL primary shutting
        // down asks until the flush position reaches its shutdown
        // checkpoint, and would wait for ever on a stale one.
        if unflushed && (reply_requested || (batch_done && (s.opts.synchronous || status_due))) {
            s.flush()?;
            unflushed = false;
            reply_requested = true;
        }
        if reply_requested || status_due {
            s.reply(client)?;
            last_status = Instant::now();
        }
    }
}
