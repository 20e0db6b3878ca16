//! The walsender: a `replication=true` connection. It answers replication
//! commands and, on START_REPLICATION, streams WAL in CopyBoth mode —
//! XLogData messages with the bytes of the segment files, keepalives when
//! idle — while a reader thread takes the standby's status updates.
//!
//! Invariant: only flushed WAL is sent (the bytes below the writer's
//! flushed LSN, read from the segment files), so a standby never holds WAL
//! the primary could lose in a crash.

use std::io::BufWriter;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::command::{self, ReplicationCommand};
use super::slots::Slots;
use super::syncrep::WalSenders;
use crate::durable::FileError;
use crate::protocol::codec::{Cursor, Out, ProtoError};
use crate::sql::exec::oid;
use crate::sqlstate::{code, PgError};
use crate::wal::history::TimelineHistory;
use crate::wal::name::history_file_name;
use crate::wal::segment::{segment_path, SegmentData};
use crate::wal::{Lsn, SegmentSize, TimelineId, WalWriter};

/// The largest XLogData payload (PostgreSQL's `MAX_SEND_SIZE`, 16 pages).
const MAX_SEND: u64 = 16 * 8192;

/// What a walsender needs of the node it runs on.
pub trait WalSenderHost: Send + Sync {
    fn wal(&self) -> &WalWriter;
    fn system_id(&self) -> u64;
    fn timeline(&self) -> TimelineId;
    fn seg_size(&self) -> SegmentSize;
    fn wal_dir(&self) -> PathBuf;
    fn slots(&self) -> MutexGuard<'_, Slots>;
    /// Read-only parameters for SHOW.
    fn show(&self, name: &str) -> Option<String>;
    fn sender_timeout(&self) -> Duration;
    /// How often to send a keepalive that asks the standby to reply.
    fn keepalive_interval(&self) -> Duration;
    fn max_message_size(&self) -> usize;
    fn is_shutting_down(&self) -> bool;
    /// The node is stopping and its last WAL (the shutdown checkpoint) is
    /// flushed: send what is left, let the standby confirm it, and end.
    fn final_wal_written(&self) -> bool;
    /// The node's walsenders and the commits waiting on them.
    fn senders(&self) -> &WalSenders;
    /// A consistent copy of the node for `BASE_BACKUP`.
    fn base_backup(&self) -> Result<Backup, PgError>;
    /// The copy went out whole (as far as this server can tell: into the
    /// socket).
    fn base_backup_sent(&self, backup: &Backup);
}

/// What `BASE_BACKUP` sends: files (paths relative to the data directory)
/// that together are the node as of a checkpoint at `start`, with the WAL
/// from there up to `end` (flushed WAL only; the rest of the last segment
/// zeros).
pub struct Backup {
    pub start: Lsn,
    pub end: Lsn,
    pub timeline: TimelineId,
    pub files: Vec<(String, Vec<u8>)>,
}

/// The largest CopyData chunk of a base backup.
const BACKUP_CHUNK: usize = 1 << 20;

/// Microseconds since 2000-01-01, PostgreSQL's `TimestampTz`.
pub fn pg_now() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    unix.as_micros() as i64 - 946_684_800_000_000
}

/// What the standby last reported.
#[derive(Default)]
struct Feedback {
    flush: AtomicU64,
    done: AtomicBool,
    /// The standby asked for a reply (it has heard nothing for a while).
    ping: AtomicBool,
}

type Reader = crate::protocol::reader::MessageReader<crate::node::busy_poll::BusyPoll>;
type Writer = BufWriter<TcpStream>;

fn text_result(out: &mut Out, columns: &[(&str, u32)], row: &[Option<String>]) {
    let cols: Vec<(String, u32)> = columns.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    out.row_description(&cols, &[]);
    out.data_row(row.iter().map(|v| v.as_deref().map(str::as_bytes)));
}

/// Who is at the other end of a walsender.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The session's process id (`pg_stat_replication.pid`).
    pub pid: i32,
    /// The role it authenticated as.
    pub usename: String,
    pub application_name: String,
    pub client_addr: String,
    pub client_port: u16,
    /// When the connection was accepted (microseconds since 2000).
    pub backend_start: i64,
}

/// Serves a replication connection after authentication (and after
/// ReadyForQuery was sent).
pub fn serve(
    host: &dyn WalSenderHost,
    peer: &Peer,
    r: &mut Reader,
    w: &mut Writer,
) -> Result<(), ProtoError> {
    host.senders().register(peer.clone());
    struct Unregister<'a>(&'a WalSenders, i32);
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            self.0.unregister(self.1);
        }
    }
    let _unregister = Unregister(host.senders(), peer.pid);
    let mut out = Out::default();
    loop {
        let (tag, body) = r.read_message(host.max_message_size())?;
        match tag {
            b'Q' => {
                let text = Cursor::new(body).cstr()?;
                debug!(command = %text, "replication command");
                let result = match command::parse(&text) {
                    Ok(cmd) => run_command(host, peer.pid, cmd, r, w, &mut out),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {}
                    // FATAL ends the connection, as in PostgreSQL: no
                    // ReadyForQuery after it. A timeout has been logged
                    // where it was found; what the client sent, not yet.
                    Err(e) if e.fatal => {
                        if e.code == code::PROTOCOL_VIOLATION {
                            warn!("terminating walsender: {e}");
                        }
                        out.error(&e);
                        out.send(w)?;
                        return Ok(());
                    }
                    Err(e) => out.error(&e),
                }
                out.ready(b'I');
                out.send(w)?;
            }
            b'X' => return Ok(()),
            b'S' => {
                out.ready(b'I');
                out.send(w)?;
            }
            other => {
                out.error(&PgError::fatal(
                    code::PROTOCOL_VIOLATION,
                    format!("replication connections take only simple queries, not message type {other}"),
                ));
                out.send(w)?;
                return Ok(());
            }
        }
    }
}

fn run_command(
    host: &dyn WalSenderHost,
    pid: i32,
    cmd: ReplicationCommand,
    r: &mut Reader,
    w: &mut Writer,
    out: &mut Out,
) -> Result<(), PgError> {
    match cmd {
        ReplicationCommand::IdentifySystem => {
            text_result(
                out,
                &[
                    ("systemid", oid::TEXT),
                    ("timeline", oid::INT4),
                    ("xlogpos", oid::TEXT),
                    ("dbname", oid::TEXT),
                ],
                &[
                    Some(host.system_id().to_string()),
                    Some(host.timeline().to_string()),
                    Some(host.wal().flushed_lsn().to_string()),
                    None,
                ],
            );
            out.command_complete("IDENTIFY_SYSTEM");
        }
        ReplicationCommand::Show(name) => {
            let value = host.show(&name).ok_or_else(|| {
                PgError::new(
                    code::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                )
            })?;
            text_result(out, &[(name.as_str(), oid::TEXT)], &[Some(value)]);
            out.command_complete("SHOW");
        }
        ReplicationCommand::TimelineHistory(tli) => {
            let name = history_file_name(tli);
            let path = host.wal_dir().join(&name);
            let content = std::fs::read(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound if tli == TimelineId::FIRST => PgError::new(
                    code::UNDEFINED_FILE,
                    "timeline 1 has no history file: it is the first timeline",
                ),
                std::io::ErrorKind::NotFound => PgError::new(
                    code::UNDEFINED_FILE,
                    format!(
                        "this server has no history file for timeline {tli} (wal/{name}); it is on timeline {}",
                        host.timeline()
                    ),
                ),
                _ => PgError::new(
                    code::IO_ERROR,
                    FileError::new("read", &path, e).to_string(),
                ),
            })?;
            out.row_description(
                &[("filename".into(), oid::TEXT), ("content".into(), 17)],
                &[],
            );
            out.data_row([Some(name.as_bytes()), Some(&content[..])].into_iter());
            out.command_complete("TIMELINE_HISTORY");
        }
        ReplicationCommand::CreateSlot {
            name,
            reserve_wal,
            temporary,
        } => {
            if temporary {
                return Err(PgError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    "temporary replication slots are not supported",
                )
                .with_hint("create a permanent slot and drop it when done"));
            }
            let restart = reserve_wal.then(|| host.wal().flushed_lsn());
            host.slots().create(&name, restart)?;
            info!(slot = %name, restart_lsn = %restart.map_or("none".to_string(), |l| l.to_string()), "replication slot created");
            text_result(
                out,
                &[
                    ("slot_name", oid::TEXT),
                    ("consistent_point", oid::TEXT),
                    ("snapshot_name", oid::TEXT),
                    ("output_plugin", oid::TEXT),
                ],
                &[
                    Some(name),
                    Some(restart.unwrap_or(Lsn::INVALID).to_string()),
                    None,
                    None,
                ],
            );
            out.command_complete("CREATE_REPLICATION_SLOT");
        }
        ReplicationCommand::ReadSlot(name) => {
            let slot = host.slots().get(&name).cloned();
            let (kind, restart, tli) = match slot {
                None => (None, None, None),
                Some(s) => (
                    Some("physical".to_string()),
                    s.restart_lsn.map(|l| l.to_string()),
                    s.restart_lsn.map(|_| host.timeline().to_string()),
                ),
            };
            text_result(
                out,
                &[
                    ("slot_type", oid::TEXT),
                    ("restart_lsn", oid::TEXT),
                    ("restart_tli", oid::INT8),
                ],
                &[kind, restart, tli],
            );
            out.command_complete("READ_REPLICATION_SLOT");
        }
        ReplicationCommand::DropSlot(name) => {
            host.slots().drop_slot(&name)?;
            info!(slot = %name, "replication slot dropped");
            out.command_complete("DROP_REPLICATION_SLOT");
        }
        ReplicationCommand::BaseBackup => {
            let backup = host.base_backup()?;
            send_backup(&backup, out, w).map_err(|e| {
                PgError::fatal(
                    code::PROTOCOL_VIOLATION,
                    format!("sending the base backup failed: {e}"),
                )
            })?;
            info!(start = %backup.start, end = %backup.end, files = backup.files.len(), "base backup sent");
            host.base_backup_sent(&backup);
        }
        ReplicationCommand::StartReplication {
            slot,
            start,
            timeline,
        } => {
            let current = host.timeline();
            let tli = timeline.unwrap_or(current);
            // An older timeline of this server's history streams up to its
            // switch point, then ends with the next timeline and where it
            // begins (PostgreSQL's end-of-timeline result set).
            let end_of_timeline = if tli == current {
                None
            } else {
                let (switch, next) = timeline_end(host, tli).ok_or_else(|| {
                    PgError::new(
                        code::INVALID_PARAMETER_VALUE,
                        format!("requested timeline {tli} is not in this server's history (it is on timeline {current})"),
                    )
                })?;
                if start > switch {
                    return Err(PgError::new(
                        code::INVALID_PARAMETER_VALUE,
                        format!("requested starting point {start} on timeline {tli} is past this server's switch point {switch} to timeline {next}"),
                    ));
                }
                Some((switch, next))
            };
            if let Some(name) = &slot {
                host.slots().check_usable(name)?;
            }
            let flushed = host.wal().flushed_lsn();
            if start > flushed {
                return Err(PgError::new(
                    code::INVALID_PARAMETER_VALUE,
                    format!("requested starting point {start} is ahead of the WAL flush position of this server {flushed}"),
                ));
            }
            let first = segment_path(
                &host.wal_dir(),
                tli,
                start.segno(host.seg_size()),
                host.seg_size(),
            );
            // A standby already at an older timeline's end needs no WAL of
            // it, only the end-of-timeline answer; one asking for exactly
            // the flush position waits for WAL not yet written, whose
            // segment may not exist yet (a cascading standby's, after a
            // segment switch upstream).
            let at_switch = end_of_timeline.is_some_and(|(switch, _)| start == switch);
            if !first.exists() && !at_switch && start < flushed {
                return Err(PgError::new(
                    code::UNDEFINED_FILE,
                    format!(
                        "requested WAL segment {} has already been removed",
                        first.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                    ),
                )
                .with_hint("use a replication slot to keep WAL for a standby that is away, or restore from the archive"));
            }
            if let Some(name) = &slot {
                host.slots().acquire(name)?;
            }
            info!(start = %start, slot = slot.as_deref().unwrap_or("none"), "streaming WAL");
            host.senders().streaming(pid, start, slot.as_deref());
            let result = stream(
                host,
                pid,
                Position {
                    start,
                    timeline: tli,
                    stop_at: end_of_timeline.map(|(s, _)| s),
                },
                slot.as_deref(),
                r,
                w,
            );
            if let Some(name) = &slot {
                host.slots().release(name);
            }
            match result {
                Ok(()) => {
                    // The timeline may have ended while it streamed.
                    let end_of_timeline = end_of_timeline.or_else(|| timeline_end(host, tli));
                    if let Some((switch, next)) = end_of_timeline {
                        text_result(
                            out,
                            &[("next_tli", oid::INT8), ("next_tli_startpos", oid::TEXT)],
                            &[Some(next.to_string()), Some(switch.to_string())],
                        );
                        info!(timeline = %tli, switch = %switch, next = %next, "end of timeline sent");
                    }
                    // Two CommandCompletes, as PostgreSQL's walsender sends
                    // them: the first ends the result set (pg_receivewal
                    // reads it as the rows' end), the second the command.
                    out.command_complete("START_STREAMING");
                    out.command_complete("START_REPLICATION")
                }
                // A standby gone (killed, its connection reset) is no
                // violation: nobody is there to be told, or to log it for.
                Err(StreamEnd::Client(e @ (ProtoError::Io(_) | ProtoError::Closed))) => {
                    return Err(PgError::fatal(code::CONNECTION_FAILURE, e.to_string()))
                }
                Err(StreamEnd::Client(e)) => {
                    return Err(PgError::fatal(code::PROTOCOL_VIOLATION, e.to_string()))
                }
                Err(StreamEnd::Error(e)) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Where timeline `tli` ends by the history of the timeline the WAL writer
/// is on now: `None` while the writer is still on `tli` (or the history
/// cannot be read).
fn timeline_end(host: &dyn WalSenderHost, tli: TimelineId) -> Option<(Lsn, TimelineId)> {
    let now_on = host.wal().timeline();
    if now_on == tli {
        return None;
    }
    TimelineHistory::read_in(&host.wal_dir(), now_on)?.switch_of(tli, now_on)
}

/// What to stream.
struct Position {
    start: Lsn,
    timeline: TimelineId,
    /// The switch point of an older timeline: stop there.
    stop_at: Option<Lsn>,
}

/// PostgreSQL 15's BASE_BACKUP framing: the start position, the one
/// "tablespace" with its size in kB, then CopyOut with a new-archive
/// message ('n') per file, its data ('d') and progress ('p'), and the end
/// position.
fn send_backup(backup: &Backup, out: &mut Out, w: &mut Writer) -> std::io::Result<()> {
    let position = |out: &mut Out, lsn: Lsn| {
        text_result(
            out,
            &[("recptr", oid::TEXT), ("tli", oid::INT8)],
            &[Some(lsn.to_string()), Some(backup.timeline.to_string())],
        );
    };
    position(out, backup.start);
    let total: usize = backup.files.iter().map(|(_, b)| b.len()).sum();
    text_result(
        out,
        &[
            ("spcoid", oid::INT8),
            ("spclocation", oid::TEXT),
            ("size", oid::INT8),
        ],
        &[None, None, Some(total.div_ceil(1024).to_string())],
    );
    out.copy_response(b'H');
    let mut done = 0u64;
    for (name, bytes) in &backup.files {
        let mut msg = vec![b'n'];
        msg.extend_from_slice(name.as_bytes());
        msg.extend_from_slice(b"\0\0");
        out.copy_data(&msg);
        for chunk in bytes.chunks(BACKUP_CHUNK) {
            let mut msg = Vec::with_capacity(chunk.len() + 1);
            msg.push(b'd');
            msg.extend_from_slice(chunk);
            out.copy_data(&msg);
            done += chunk.len() as u64;
            let mut p = vec![b'p'];
            p.extend_from_slice(&done.to_be_bytes());
            out.copy_data(&p);
            out.send(w)?;
        }
    }
    out.copy_done();
    position(out, backup.end);
    out.command_complete("BASE_BACKUP");
    out.send(w)
}

/// A write to the standby failed: a timeout means it stopped reading for
/// longer than `wal_sender_timeout`.
fn write_failed(e: std::io::Error) -> StreamEnd {
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        warn!(
            "terminating walsender: the standby stopped reading for longer than wal_sender_timeout"
        );
        StreamEnd::Error(PgError::fatal(
            code::CONNECTION_FAILURE,
            "terminating walsender process due to replication timeout",
        ))
    } else {
        StreamEnd::Client(e.into())
    }
}

enum StreamEnd {
    Client(ProtoError),
    Error(PgError),
}

impl From<ProtoError> for StreamEnd {
    fn from(e: ProtoError) -> Self {
        StreamEnd::Client(e)
    }
}

impl From<std::io::Error> for StreamEnd {
    fn from(e: std::io::Error) -> Self {
        StreamEnd::Client(e.into())
    }
}

/// CopyBoth: sends WAL from `start` as it is flushed until the standby ends
/// the copy, goes silent past `wal_sender_timeout`, or the node stops.
fn stream(
    host: &dyn WalSenderHost,
    pid: i32,
    mut position: Position,
    slot: Option<&str>,
    r: &mut Reader,
    w: &mut Writer,
) -> Result<(), StreamEnd> {
    let mut out = Out::default();
    out.copy_response(b'W');
    out.send(w)?;
    let feedback = Arc::new(Feedback::default());
    let last_heard = Arc::new(AtomicU64::new(0));
    let max = host.max_message_size();
    let seg_size = host.seg_size();
    std::thread::scope(|scope| -> Result<(), StreamEnd> {
        let fb = feedback.clone();
        let heard = last_heard.clone();
        let senders = host.senders();
        let began = Instant::now();
        let receiver = scope.spawn(move || -> Result<(), ProtoError> {
            // However the reader ends (a CopyDone, a closed connection, a
            // malformed message), the stream ends with it: a walsender
            // must not stream on for a standby nobody reads for.
            let read = (|| loop {
                let (tag, body) = r.read_message(max)?;
                heard.store(began.elapsed().as_millis() as u64, Ordering::Release);
                match tag {
                    b'd' => {
                        let mut c = Cursor::new(body);
                        if c.u8()? == b'r' {
                            let write = Lsn(c.i64()? as u64);
                            let flush = Lsn(c.i64()? as u64);
                            let apply = Lsn(c.i64()? as u64);
                            let time = c.i64()?;
                            if c.u8().unwrap_or(0) == 1 {
                                fb.ping.store(true, Ordering::Release);
                            }
                            fb.flush.store(flush.0, Ordering::Release);
                            senders.reply(pid, write, flush, apply, time);
                        }
                    }
                    b'c' | b'X' => return Ok(()),
                    other => {
                        return Err(ProtoError::Malformed(format!(
                            "unexpected message type '{}' during COPY",
                            other as char
                        )))
                    }
                }
            })();
            fb.done.store(true, Ordering::Release);
            read
        });
        let mut pos = position.start;
        let mut caught_up = false;
        let mut segment: Option<(u64, SegmentData)> = None;
        let mut last_keepalive = Instant::now();
        let mut slot_lsn = Lsn::INVALID;
        let mut timeout = Duration::MAX;
        let mut timeout_read: Option<Instant> = None;
        let outcome = loop {
            // wal_sender_timeout as now in force, looked at once a second
            // (a reload changes it for walsenders already streaming, as in
            // PostgreSQL). A standby that stops reading must not hold this
            // walsender in a blocked write past it.
            if timeout_read.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                timeout_read = Some(Instant::now());
                let now_in_force = host.sender_timeout();
                if now_in_force != timeout {
                    timeout = now_in_force;
                    let write_timeout = (!timeout.is_zero()).then_some(timeout);
                    let _ = w.get_ref().set_write_timeout(write_timeout);
                }
            }
            if feedback.done.load(Ordering::Acquire) {
                break Ok(());
            }
            // An older timeline ends at its switch point.
            if position.stop_at.is_some_and(|s| pos >= s) {
                if let Err(e) = out.send(w) {
                    break Err(write_failed(e));
                }
                break Ok(());
            }
            // At shutdown, the standby gets everything, up to the shutdown
            // checkpoint, and a moment to confirm it: a clean switchover
            // loses nothing.
            if host.final_wal_written() && pos >= host.wal().flushed_lsn() {
                let mut k = vec![b'k'];
                k.extend_from_slice(&pos.0.to_be_bytes());
                k.extend_from_slice(&pg_now().to_be_bytes());
                k.push(1);
                out.copy_data(&k);
                if let Err(e) = out.send(w) {
                    break Err(write_failed(e));
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while Lsn(feedback.flush.load(Ordering::Acquire)) < pos
                    && !feedback.done.load(Ordering::Acquire)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                info!(sent = %pos, confirmed = %Lsn(feedback.flush.load(Ordering::Acquire)), "walsender done at shutdown");
                break Ok(());
            }
            let silent_ms = (began.elapsed().as_millis() as u64)
                .saturating_sub(last_heard.load(Ordering::Acquire));
            if !timeout.is_zero() && silent_ms > timeout.as_millis() as u64 {
                warn!(silent_ms, "terminating walsender: the standby sent nothing for longer than wal_sender_timeout");
                break Err(StreamEnd::Error(PgError::fatal(
                    code::CONNECTION_FAILURE,
                    "terminating walsender process due to replication timeout",
                )));
            }
            if let Some(name) = slot {
                let flushed_by_standby = Lsn(feedback.flush.load(Ordering::Acquire));
                if flushed_by_standby.segno(seg_size) > slot_lsn.segno(seg_size) {
                    if let Err(e) = host.slots().advance(name, flushed_by_standby) {
                        warn!(slot = name, "could not persist the slot's position: {e}");
                    }
                    slot_lsn = flushed_by_standby;
                }
            }
            let flushed = host.wal().flushed_lsn();
            // A node that leaves the timeline being streamed (promoted, or
            // following its upstream to a new one) ends the stream at the
            // switch point, as PostgreSQL's walsender does when its
            // timeline becomes historic. The timeline is read after the
            // flush position, so none of the WAL below that is the new
            // timeline's unseen.
            if position.stop_at.is_none() && host.wal().timeline() != position.timeline {
                match timeline_end(host, position.timeline) {
                    Some((switch, _)) => position.stop_at = Some(switch),
                    None => {
                        break Err(StreamEnd::Error(PgError::fatal(
                            code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                            format!(
                                "this server left timeline {} but its history does not say where",
                                position.timeline
                            ),
                        )))
                    }
                }
            }
            let flushed = match position.stop_at {
                Some(stop) => stop.min(flushed),
                None => flushed,
            };
            if pos < flushed {
                let segno = pos.segno(seg_size).0;
                if segment.as_ref().map(|(s, _)| *s) != Some(segno) {
                    let path = segment_path(
                        &host.wal_dir(),
                        position.timeline,
                        pos.segno(seg_size),
                        seg_size,
                    );
                    match SegmentData::open(&path, seg_size) {
                        Ok(d) => segment = Some((segno, d)),
                        Err(e) => {
                            break Err(StreamEnd::Error(PgError::new(
                                code::IO_ERROR,
                                format!("could not read WAL at {pos}: {e}"),
                            )))
                        }
                    }
                }
                let Some((_, data)) = &segment else {
                    break Ok(());
                };
                let seg_end = (segno + 1) * seg_size.bytes();
                let end = flushed.0.min(seg_end).min(pos.0 + MAX_SEND);
                let off = pos.segment_offset(seg_size) as usize;
                let bytes = &data[off..off + (end - pos.0) as usize];
                let mut payload = Vec::with_capacity(25 + bytes.len());
                payload.push(b'w');
                payload.extend_from_slice(&pos.0.to_be_bytes());
                payload.extend_from_slice(&flushed.0.to_be_bytes());
                payload.extend_from_slice(&pg_now().to_be_bytes());
                payload.extend_from_slice(bytes);
                out.copy_data(&payload);
                pos = Lsn(end);
                host.senders().sent(pid, pos);
                if out.len() > 1 << 20 {
                    if let Err(e) = out.send(w) {
                        break Err(write_failed(e));
                    }
                }
                continue;
            }
            if let Err(e) = out.send(w) {
                break Err(write_failed(e));
            }
            if !caught_up {
                // All flushed WAL is out: PostgreSQL's `catchup` ends.
                caught_up = true;
                host.senders().caught_up(pid);
            }
            if last_keepalive.elapsed() >= host.keepalive_interval()
                || feedback.ping.swap(false, Ordering::AcqRel)
            {
                let mut k = vec![b'k'];
                k.extend_from_slice(&flushed.0.to_be_bytes());
                k.extend_from_slice(&pg_now().to_be_bytes());
                k.push(1);
                out.copy_data(&k);
                if let Err(e) = out.send(w) {
                    break Err(write_failed(e));
                }
                last_keepalive = Instant::now();
            }
            host.wal()
                .wait_flushed_beyond(pos, Duration::from_millis(100));
        };
        let client_ended = feedback.done.load(Ordering::Acquire);
        let reached_stop = position.stop_at.is_some_and(|s| pos >= s);
        let mut outcome = outcome;
        if client_ended || (outcome.is_ok() && (host.final_wal_written() || reached_stop)) {
            out.copy_done();
            if let Err(e) = out.send(w) {
                outcome = Err(write_failed(e));
            }
        }
        if !client_ended {
            // Wait briefly for the standby's CopyDone, then stop the reader:
            // the standby sees the connection end.
            let deadline = Instant::now() + Duration::from_secs(2);
            while outcome.is_ok()
                && !feedback.done.load(Ordering::Acquire)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !feedback.done.load(Ordering::Acquire) {
                let _ = w.get_ref().shutdown(std::net::Shutdown::Both);
            }
        }
        match receiver.join() {
            Ok(Ok(())) | Ok(Err(ProtoError::Closed)) => {}
            Ok(Err(e)) if client_ended && outcome.is_ok() => return Err(e.into()),
            _ => {}
        }
        outcome
    })
}
