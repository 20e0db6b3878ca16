//! The `walship` command: argument parsing only; the work is in the library.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// `println!` for a command's output, but a failure to write — standard
/// output closed early, as by `| head` — is an error the caller returns
/// (and `main` takes a broken pipe for success), never a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(io::stdout(), $($arg)*).context("could not write to standard output")?
    };
}
use walship::archive::archiver::{self, Archiver};
use walship::archive::cleanup;
use walship::archive::restore::{self, Restored};
use walship::archive::store::Put;
use walship::archive::{Archive, Compression};
use walship::dump::{self, DumpMode, DumpOptions, DumpOutcome};
use walship::node::datadir::{self, InitOptions};
use walship::node::server::{self, ServerOptions};
use walship::progress::{Progress, Total};
use walship::replication::basebackup::{self, BaseBackupOptions};
use walship::replication::client::SlotChoice;
use walship::replication::conninfo::ConnInfo;
use walship::replication::receive::{self, ReceiveOptions, Stopped};
use walship::replication::status;
use walship::wal::{Lsn, SegmentSize, WalFileName};

const ROOT_EXAMPLES: &str = "\
Examples:
  walship demo
  walship init -D data && walship server -D data
  walship basebackup --from 'host=10.0.0.1 user=walship' -D standby --node-name s1
  walship status --from 'host=127.0.0.1 port=5433'
  walship archive --archive /srv/wal-archive -D data
  walship promote -D standby --wait";

/// A PostgreSQL-style physical WAL-shipping replication toolkit.
///
/// A node (walship server) is a durable key-value store that speaks
/// PostgreSQL's wire and replication protocols and writes PostgreSQL 15's
/// WAL format. Its WAL ships byte for byte to standbys (basebackup, then
/// streaming), synchronously or not; walship archive keeps completed
/// segments in an archive that standbys and PostgreSQL can restore from;
/// walship promote makes a standby the primary only after fencing the old
/// one with a new epoch. Each command has its own page: walship-COMMAND(1).
#[derive(Parser)]
#[command(name = "walship", version, about, max_term_width = 100, disable_help_subcommand = true, after_help = ROOT_EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Demo(DemoArgs),
    Init(InitArgs),
    Server(ServerArgs),
    Dump(DumpArgs),
    Basebackup(BaseBackupArgs),
    Receive(ReceiveArgs),
    Status(StatusArgs),
    Archive(ArchiveArgs),
    Restore(RestoreArgs),
    Cleanup(CleanupArgs),
    Promote(PromoteArgs),
    Follow(FollowArgs),
    Rejoin(RejoinArgs),
    #[command(hide = true)]
    PrefetchWorker(PrefetchWorkerArgs),
}

const INIT_EXAMPLES: &str = "\
Examples:
  walship init -D /var/lib/walship/main
  walship init -D data --wal-segsize 1 --node-name n1 -U admin
  walship init -D data --pwfile /run/secrets/admin-password";

/// Create a new primary's data directory (initdb's job).
///
/// Writes the control file (a new system identifier, the segment size,
/// timeline 1), the epoch file (epoch 1), walship.conf with every setting and
/// its default commented out, the users file with the first role (a superuser
/// allowed to replicate), and the first checkpoint. Refuses a directory that
/// exists and is not empty.
#[derive(Args)]
#[command(after_help = INIT_EXAMPLES)]
struct InitArgs {
    /// The data directory to create.
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    dir: PathBuf,
    /// WAL segment size in MiB: a power of two from 1 to 1024.
    #[arg(long, value_name = "MB", default_value = "16", value_parser = segment_size_mib)]
    wal_segsize: SegmentSize,
    /// This node's name (its application_name when it streams from a primary).
    #[arg(long, value_name = "NAME", default_value = "walship")]
    node_name: String,
    /// The first role's name [default: the OS user running init].
    #[arg(short = 'U', long = "username", value_name = "USER")]
    user: Option<String>,
    /// Read the first role's password from this file (first line), for
    /// authentication = scram-sha-256.
    #[arg(long, value_name = "FILE")]
    pwfile: Option<PathBuf>,
}

const SERVER_EXAMPLES: &str = "\
Examples:
  walship server -D /var/lib/walship/main
  walship server -D data --listen 127.0.0.1:6543
  walship server -D data --log-format json 2>>/var/log/walship.log";

/// Run a node: recover the data directory and serve PostgreSQL clients.
///
/// Replays the WAL after the last checkpoint (so every acknowledged write
/// survives a crash), then accepts connections. SIGTERM or SIGINT stop it
/// cleanly; SIGHUP reloads walship.conf and the users file. Logs go to
/// standard error, one line per event.
#[derive(Args)]
#[command(after_help = SERVER_EXAMPLES)]
struct ServerArgs {
    /// The data directory.
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    dir: PathBuf,
    /// Listen on HOST:PORT instead of listen_addresses and port.
    #[arg(long, value_name = "HOST:PORT", value_parser = host_port)]
    listen: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--wal-segsize`: MiB, a power of two from 1 to 1024.
fn segment_size_mib(s: &str) -> Result<SegmentSize, String> {
    s.parse::<u64>()
        .ok()
        .and_then(|mib| SegmentSize::from_mib(mib).ok())
        .ok_or_else(|| "expected a power of two from 1 to 1024 (MiB)".to_string())
}

/// `cleanup --before`: a segment's, `.partial` segment's or backup history
/// file's name, refused as a usage error (exit 2) when it is none. The
/// smallest segment size admits every name any size does; the archive's own
/// size is checked once the archive is open.
fn cleanup_before(s: &str) -> Result<String, String> {
    match WalFileName::parse(s, SegmentSize::from_mib(1).map_err(|e| e.to_string())?) {
        Ok(WalFileName::Segment(_) | WalFileName::Partial(_) | WalFileName::Backup(..)) => {
            Ok(s.to_string())
        }
        _ => Err("expected a segment name such as 000000010000000000000040 (or SEGNAME.partial), or a backup history file's name (SEGNAME.OOOOOOOO.backup)".to_string()),
    }
}

/// `--from`: a connection string, refused as a usage error (exit 2) when it
/// does not parse, without echoing it: it may hold a password.
#[derive(Clone)]
struct ConnInfoParser;

impl clap::builder::TypedValueParser for ConnInfoParser {
    type Value = ConnInfo;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<ConnInfo, clap::Error> {
        let name = arg.map_or("--from".to_string(), |a| a.to_string());
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{name}: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("the connection string is not valid UTF-8".to_string()))?;
        ConnInfo::parse(text).map_err(|e| refuse(e.to_string()))
    }
}

/// `--listen`: HOST:PORT (an IPv6 host in brackets); the host is resolved
/// when the server binds.
fn host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => {
            Err("expected HOST:PORT with a port from 0 to 65535, as in 127.0.0.1:5432".to_string())
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

const DUMP_EXAMPLES: &str = "\
Examples:
  walship dump data/wal/000000010000000000000001
  walship dump --verify data/wal
  walship dump --stats --start 0/1000028 --end 0/2000000 data/wal
  walship dump --verify /var/lib/postgresql/15/main/pg_wal";

/// Print, verify or summarize the records of WAL segments (pg_waldump's job).
///
/// Reads segment files written by walship or by PostgreSQL 15, checks every
/// page header, prev-link and CRC on the way, and stops at the end of valid
/// WAL, saying where and why. Exits 0 when the WAL simply ends (zeros where the
/// next record would begin), 1 when a record or page in the middle of the WAL
/// is damaged or a segment file has the wrong size.
#[derive(Args)]
#[command(after_help = DUMP_EXAMPLES)]
struct DumpArgs {
    /// Walk silently and print a one-line summary.
    #[arg(long, conflicts_with = "stats")]
    verify: bool,
    /// Print per resource manager record counts and bytes.
    #[arg(long)]
    stats: bool,
    /// Begin with the first record at or after this LSN (X/X).
    #[arg(long, value_name = "LSN")]
    start: Option<Lsn>,
    /// Stop before the first record at or after this LSN (X/X).
    #[arg(long, value_name = "LSN")]
    end: Option<Lsn>,
    /// Segment files, or directories holding them.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

const BASEBACKUP_EXAMPLES: &str = "\
Examples:
  walship basebackup --from 'host=10.0.0.1 port=5433 user=rep' -D /var/lib/walship/s1 --node-name s1
  walship basebackup --from 'host=127.0.0.1 port=5433' -D s1 --node-name s1 --slot s1 --create-slot";

/// Clone a running primary or standby into a new standby's data directory
/// (pg_basebackup's job).
///
/// Over a replication connection the primary checkpoints and sends a
/// consistent snapshot with the WAL from that checkpoint; a standby sends
/// its last restartpoint's snapshot and the WAL it has received since, and
/// the clone streams from it (a cascaded standby). The new directory
/// gets standby.signal, and walship.conf gets node_name, primary_conninfo
/// (with application_name = the node name) and primary_slot_name, so
/// `walship server -D DIR` starts streaming at once. A progress line shows on
/// a terminal. The control file is written last: an interrupted backup
/// leaves a directory the server refuses to start.
#[derive(Args)]
#[command(after_help = BASEBACKUP_EXAMPLES)]
struct BaseBackupArgs {
    /// The node to clone, as a libpq connection string or URI.
    #[arg(long, value_name = "CONNINFO", value_parser = ConnInfoParser)]
    from: ConnInfo,
    /// The new data directory (absent or empty).
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    dir: PathBuf,
    /// The new standby's name: its application_name on the primary, as
    /// synchronous_standby_names refers to it.
    #[arg(long, value_name = "NAME", default_value = "standby")]
    node_name: String,
    /// Stream through this physical replication slot on the primary (it
    /// must exist there, unless --create-slot makes it).
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Create the slot first (before the backup, so it holds the WAL the
    /// standby needs from the start).
    #[arg(long, requires = "slot")]
    create_slot: bool,
    /// Do not show progress (a line redrawn on a terminal, a plain line
    /// every 10 s elsewhere).
    #[arg(long)]
    no_progress: bool,
}

const RECEIVE_EXAMPLES: &str = "\
Examples:
  walship receive --from 'host=10.0.0.1 port=5433 user=rep' -D /var/lib/walship/wal-archive
  walship receive --from 'host=/var/run/postgresql user=postgres' -D wal --slot archiver --create-slot
  walship receive --from 'host=/var/run/postgresql user=postgres' -D wal --slot archiver --synchronous
  walship receive --from 'host=127.0.0.1 port=5432' -D wal --endpos 0/3000000 --no-loop";

/// Stream WAL from a primary into segment files (pg_receivewal's job).
///
/// Works against walship or PostgreSQL 15. Each segment is preallocated as
/// SEGNAME.partial, written as WAL arrives, and durably renamed to SEGNAME
/// when complete; the files are byte-identical to the primary's. Every
/// record is verified (headers, prev-link, CRC) before it is written, and WAL
/// that fails is never written: the receiver stops and names the LSN. It
/// resumes after its last complete segment (or at the start of its partial
/// one), follows timeline switches (fetching history files), and reconnects
/// with backoff unless --no-loop.
#[derive(Args)]
#[command(after_help = RECEIVE_EXAMPLES)]
struct ReceiveArgs {
    /// The primary, as a libpq connection string or URI (host=/dir for a
    /// unix socket). Without application_name, the receiver shows in the
    /// primary's pg_stat_replication as "walship receive" (pg_receivewal's
    /// shows as "pg_receivewal").
    #[arg(long, value_name = "CONNINFO", value_parser = ConnInfoParser)]
    from: ConnInfo,
    /// The directory to write segments to (created if missing).
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    dir: PathBuf,
    /// Stream through this physical replication slot.
    #[arg(short = 'S', long, value_name = "NAME")]
    slot: Option<String>,
    /// Create the slot and exit, as pg_receivewal --create-slot does.
    #[arg(long, requires = "slot")]
    create_slot: bool,
    /// Stop once WAL up to this LSN has been received.
    #[arg(short = 'E', long, value_name = "LSN")]
    endpos: Option<Lsn>,
    /// Exit when the connection is lost instead of reconnecting.
    #[arg(short = 'n', long)]
    no_loop: bool,
    /// Flush and report the position after every batch of WAL, so this
    /// receiver can be a synchronous standby (name it with
    /// application_name in --from).
    #[arg(long)]
    synchronous: bool,
    /// Seconds between status reports to the primary.
    #[arg(short = 's', long, value_name = "SECS", default_value_t = 10)]
    status_interval: u64,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

const STATUS_EXAMPLES: &str = "\
Examples:
  walship status --from 'host=127.0.0.1 port=5433'
  walship status --from 'host=10.0.0.1 port=5433 user=monitor' --json | jq '.standbys[].replay_lag_bytes'";

/// Show a node's role, timeline, epoch and WAL positions, and on a primary
/// each standby with its lag.
///
/// Connects as an ordinary client and reads pg_is_in_recovery(), the WAL
/// functions, pg_stat_wal_receiver and pg_stat_replication. Exits 1, naming
/// the peer, when the node cannot be reached.
#[derive(Args)]
#[command(after_help = STATUS_EXAMPLES)]
struct StatusArgs {
    /// The node, as a libpq connection string or URI.
    #[arg(long, value_name = "CONNINFO", value_parser = ConnInfoParser)]
    from: ConnInfo,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

const ARCHIVE_EXAMPLES: &str = "\
Examples:
  walship archive --archive /srv/wal-archive -D /var/lib/walship/main          # from cron or a timer
  walship archive --archive /srv/wal-archive -D /var/lib/walship/main --follow # as a daemon
  walship archive --archive /srv/wal-archive -D data --compression zstd        # a new, compressed archive
  archive_command = 'walship archive --archive /srv/wal-archive %p'           # PostgreSQL's postgresql.conf";

/// Ship completed WAL segments to an archive directory.
///
/// Archives every segment the node marked wal/archive_status/NAME.ready
/// (archive_mode = on), oldest first, and new timeline history files, then
/// marks each NAME.done. Each segment's size, page headers, CRCs and system
/// identifier are verified first; it is copied under a temporary name,
/// fsynced and renamed, so no partial file ever has a final name. A file
/// already archived with the same content counts as archived; different
/// content is an error and is never overwritten. The archive records the
/// system it belongs to and refuses any other; a lock keeps two archivers
/// apart. Exits 0 only when everything ready was archived.
#[derive(Args)]
#[command(after_help = ARCHIVE_EXAMPLES)]
struct ArchiveArgs {
    /// The archive directory (created on first use).
    #[arg(long, value_name = "ADIR")]
    archive: PathBuf,
    /// The node's data directory.
    #[arg(
        short = 'D',
        long = "pgdata",
        value_name = "DIR",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    dir: Option<PathBuf>,
    /// Archive this one segment or history file (PostgreSQL's %p) and exit.
    #[arg(value_name = "SEGMENT_PATH")]
    file: Option<PathBuf>,
    /// Keep archiving: a completed segment reaches the archive within a second.
    #[arg(long, conflicts_with = "file")]
    follow: bool,
    /// Start a new archive even though this node (or, with SEGMENT_PATH,
    /// the cluster whose archive_status/ holds .done marks) archived to one
    /// that is now gone (without it, a vanished archive is an error).
    #[arg(long)]
    create: bool,
    /// Compression for a new archive (an existing one keeps its own).
    #[arg(long, value_name = "METHOD", default_value = "none", value_parser = ["none", "zstd"])]
    compression: String,
    /// Do not show progress of a one-shot run (a line redrawn on a
    /// terminal, a plain line every 10 s elsewhere).
    #[arg(long, conflicts_with = "follow")]
    no_progress: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

const RESTORE_EXAMPLES: &str = "\
Examples:
  walship restore --archive /srv/wal-archive 000000010000000000000003 /tmp/seg
  restore_command = 'walship restore --archive /srv/wal-archive %f %p'   # walship.conf or postgresql.conf";

/// Copy one archived file (a segment or a history file) out of the archive.
///
/// For restore_command: decompresses transparently, verifies the file
/// (a segment's headers, CRCs and system identifier) and writes DEST
/// whole, as a scratch file (not fsynced: a recovering server reads it at
/// once and asks again after a crash). Restoring a segment also starts a
/// background worker that fetches the following --prefetch segments, a few in parallel, into
/// DEST's directory/.walship-prefetch, so the next requests are served
/// at once. Exits 1 when the archive simply does not have the file (what
/// a recovering server expects at the end of the archive), and 126 on a
/// real failure — a corrupt or unreadable file, another system's segment,
/// a missing archive — so that PostgreSQL's recovery stops (it does on a
/// status above 125) instead of taking the failure for the end of the
/// archive. So an archive on a network mount that is not mounted stops a
/// PostgreSQL standby's recovery, even one that could stream meanwhile:
/// mount it before starting the standby. A walship standby only logs
/// the failure and goes on streaming.
#[derive(Args)]
#[command(after_help = RESTORE_EXAMPLES)]
struct RestoreArgs {
    /// The archive directory.
    #[arg(long, value_name = "ADIR")]
    archive: PathBuf,
    /// The file's name (%f).
    #[arg(value_name = "NAME")]
    name: String,
    /// Where to write it (%p).
    #[arg(value_name = "DEST")]
    dest: PathBuf,
    /// How many following segments to prefetch (0: none). The spool holds
    /// at most this many segments.
    #[arg(long, value_name = "N", default_value_t = 8)]
    prefetch: usize,
}

const FOLLOW_EXAMPLES: &str = "\
Examples:
  walship follow -D /var/lib/walship/s2 --from 'host=10.0.0.11 port=5433 user=replicator'
  walship follow -D s2 --from 'host=10.0.0.11 port=5433 user=replicator' --slot s2 --create-slot";

/// Point a standby at another upstream (the new primary after a failover).
///
/// Connects to the new upstream first and refuses unless it is the same
/// system in an epoch no lower than the standby's own (a fenced old
/// primary is refused). Then appends primary_conninfo (with
/// application_name = node_name) and, with --slot, primary_slot_name to
/// walship.conf, and sends SIGHUP to the standby when it is running: it
/// reconnects and crosses the timeline switch by itself. A stopped
/// standby follows the new upstream when it starts.
#[derive(Args)]
#[command(after_help = FOLLOW_EXAMPLES)]
struct FollowArgs {
    /// The standby's data directory.
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    dir: PathBuf,
    /// The new upstream, as a libpq connection string or URI.
    #[arg(long, value_name = "CONNINFO", value_parser = ConnInfoParser)]
    from: ConnInfo,
    /// The replication slot to stream from on the new upstream (it must
    /// exist there, unless --create-slot makes it). Without it the standby
    /// keeps its primary_slot_name, which the new upstream must have too.
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Create the slot on the new upstream (refused if it exists). It is
    /// the last step, after every check and the change to walship.conf,
    /// and just before the standby is told to reload.
    #[arg(long, requires = "slot")]
    create_slot: bool,
}

const REJOIN_EXAMPLES: &str = "\
Examples:
  walship rejoin -D /var/lib/walship/old --from 'host=10.0.0.12 port=5433 user=replicator'
  walship rejoin -D old --from 'host=10.0.0.12 port=5433 user=replicator' --slot old --create-slot && walship server -D old";

/// Make a stopped old primary a standby of the new primary.
///
/// Asks the new primary for its timeline history: where this node's
/// timeline ends for it (the switch point). WAL this node wrote past it is
/// cut back (the segment holding it zeroed from there, later ones removed)
/// when its store can be rewound too: its last checkpoint is at or before
/// the switch point, or only checkpoints lie past it (a shutdown, the
/// restart of a fenced primary). Otherwise it changes nothing and says the
/// node must be rebuilt with walship basebackup. Then it writes
/// standby.signal and primary_conninfo: start the node and it follows the
/// new primary across the timeline switch. The node must be stopped.
#[derive(Args)]
#[command(after_help = REJOIN_EXAMPLES)]
struct RejoinArgs {
    /// The old primary's data directory (stopped).
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    dir: PathBuf,
    /// The new primary, as a libpq connection string or URI (or one of its
    /// standbys, to cascade from it).
    #[arg(long, value_name = "CONNINFO", value_parser = ConnInfoParser)]
    from: ConnInfo,
    /// The replication slot to stream from on the new primary (it must
    /// exist there, unless --create-slot makes it). Without it the node
    /// keeps its primary_slot_name, which the new primary must have too.
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Create the slot on the new primary (refused if it exists). It is the
    /// last step, after every check and every change here.
    #[arg(long, requires = "slot")]
    create_slot: bool,
}

/// The background half of `walship restore --prefetch` (started by it).
#[derive(Args)]
struct PrefetchWorkerArgs {
    #[arg(long)]
    archive: PathBuf,
    #[arg(long)]
    spool: PathBuf,
    #[arg(long)]
    depth: usize,
    first: String,
}

const DEMO_EXAMPLES: &str = "\
Examples:
  walship demo                          # the tour, in a temporary directory removed afterwards
  walship demo --keep /tmp/walship-tour # keep data directories, archive and logs to explore";

/// A guided tour: primary, standby, archiver, crash, promotion, fencing.
///
/// On 127.0.0.1, in a temporary directory: initializes a primary, clones a
/// synchronous standby with basebackup, starts a continuous archiver,
/// writes from four clients while showing replication and archiving,
/// kills the primary with SIGKILL, promotes the standby (a fence command
/// proves the old primary is dead), checks that every acknowledged commit
/// survived, restarts the old primary and shows it fenced, then stops
/// everything it started. Each step is narrated. Takes a few seconds.
#[derive(Args)]
#[command(after_help = DEMO_EXAMPLES)]
struct DemoArgs {
    /// Use this (new or empty) directory and keep it afterwards.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

const CLEANUP_EXAMPLES: &str = "\
Examples:
  walship cleanup --archive /srv/wal-archive --before 000000010000000000000040 --dry-run
  walship cleanup --archive /srv/wal-archive --before 000000010000000000000040
  archive_cleanup_command = 'walship cleanup --archive /srv/wal-archive --before %r'";

/// Remove archived segments older than a given one (pg_archivecleanup's job).
///
/// Removes every archived segment (and .partial segment) whose name, timeline
/// aside, sorts before SEGNAME, as pg_archivecleanup does. History files and
/// backup history files are never removed, nor anything the newest base
/// backup recorded in the archive needs: SEGNAME is moved back to that
/// backup's start segment when it lies beyond it, and the output says so.
/// SEGNAME may also be a backup history file's name
/// (SEGNAME.OOOOOOOO.backup). --dry-run lists what would go.
#[derive(Args)]
#[command(after_help = CLEANUP_EXAMPLES)]
struct CleanupArgs {
    /// The archive directory.
    #[arg(long, value_name = "ADIR")]
    archive: PathBuf,
    /// The oldest segment to keep.
    #[arg(long, value_name = "SEGNAME", value_parser = cleanup_before)]
    before: String,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

const PROMOTE_EXAMPLES: &str = "\
Examples:
  walship promote -D /var/lib/walship/s1 --wait                 # fences the old primary over the protocol
  walship promote -D s1 --fence-command 'ipmitool chassis power off' --wait
  walship promote -D s1 --force --wait                          # the old primary is gone for good";

/// Promote a standby to primary, fencing the old primary first.
///
/// The standby fences the old primary in epoch E+1 — directly over the protocol (it persists the new epoch and refuses
/// every write from then on, and ends commits waiting for standbys
/// unacknowledged; when the standby's upstream is itself a standby, the
/// fence goes up the chain to the primary) and/or with --fence-command,
/// which must exit 0. After a direct fence it streams until it has the
/// old primary's WAL up to where the fence ended it (10 s at most), then
/// stops streaming and replays all it received; then it claims epoch E+1 in
/// archive_directory, when set (two promoters cannot both win), switches
/// to a new timeline, persists the epoch and accepts writes. With
/// archive_mode = on it also marks for the archiver the complete segments
/// it received as a standby, so what the old primary had not archived yet
/// reaches the archive (what it had is found there, identical). Without a
/// fence it refuses, unless --force. A stopped
/// standby is started just long enough to promote, then stopped cleanly:
/// it is a primary the next time it starts. A promotion interrupted at any
/// point (kill -9, power loss) is finished by running walship promote
/// again, or by restarting the node: in the same epoch, on a timeline
/// never used before.
#[derive(Args)]
#[command(after_help = PROMOTE_EXAMPLES)]
struct PromoteArgs {
    /// The standby's data directory.
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    dir: PathBuf,
    /// A shell command that fences the old primary (power it off, cut its
    /// network); it must exit 0. WALSHIP_EPOCH holds the new epoch.
    #[arg(long, value_name = "CMD")]
    fence_command: Option<String>,
    /// Promote even if the old primary can be neither reached nor fenced:
    /// if it is alive, two primaries may take writes.
    #[arg(long)]
    force: bool,
    /// Return once the node accepts writes (exit 1 if the promotion fails).
    #[arg(long)]
    wait: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: a closed stderr must not turn exit 1 into a panic.
            let _ = writeln!(io::stderr(), "walship: error: {}", message(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes on one line, each cause said once: many error
/// types already include their source's text in their own, which
/// anyhow's `{:#}` would repeat.
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = match cause.downcast_ref::<io::Error>() {
            Some(io) => walship::durable::io_cause(io),
            None => cause.to_string(),
        };
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The long-running commands set up their own log (with --log-format);
    // the others print their result and their error themselves, and show
    // only warnings from below (a password file others may read, ...).
    if !matches!(
        cli.command,
        Command::Server(_) | Command::Receive(_) | Command::Archive(_) | Command::Demo(_)
    ) {
        init_warnings();
    }
    match cli.command {
        Command::Demo(args) => {
            walship::demo::run(args.keep)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init(args) => run_init(args),
        Command::Server(args) => run_server(args),
        Command::Dump(args) => run_dump(args),
        Command::Basebackup(args) => run_basebackup(args),
        Command::Receive(args) => run_receive(args),
        Command::Status(args) => run_status(args),
        Command::Archive(args) => run_archive(args),
        Command::Restore(args) => run_restore(args),
        Command::Cleanup(args) => run_cleanup(args),
        Command::Promote(args) => run_promote(args),
        Command::Follow(args) => run_follow(args),
        Command::Rejoin(args) => run_rejoin(args),
        Command::PrefetchWorker(args) => run_prefetch_worker(args),
    }
}

fn run_init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let seg_size = args.wal_segsize;
    let user = match args.user {
        Some(u) => u,
        None => walship::replication::conninfo::os_user()
            .map(|u| u.name)
            .context("could not find the name of the OS user running init; give one with -U")?,
    };
    let password = match &args.pwfile {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read password file {}", path.display()))?;
            let first = text.lines().next().unwrap_or_default().to_string();
            anyhow::ensure!(
                !first.is_empty(),
                "password file {} is empty",
                path.display()
            );
            Some(first)
        }
        None => None,
    };
    let control = datadir::init(&InitOptions {
        dir: args.dir.clone(),
        seg_size,
        node_name: args.node_name,
        user: user.clone(),
        password,
    })?;
    out!(
        "Created data directory {} (system identifier {}, WAL segments of {}, first role \"{}\").\nStart the node with:\n    walship server -D {}",
        args.dir.display(),
        control.system_id,
        control.seg_size,
        user,
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let result = server::run(ServerOptions {
        dir: args.dir,
        listen: args.listen,
    });
    // Said once, in the log (where JSON logs carry it too), not again by
    // main on the same stderr.
    if let Err(e) = &result {
        tracing::error!("walship server failed: {e}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    // A log nobody reads any more (its pipe closed) is no reason to stop:
    // a failed write is dropped, never reported on that same stderr (which
    // would panic the thread that logged).
    let builder = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_target(false)
        .log_internal_errors(false)
        .with_ansi(io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Warnings and errors on stderr, one line each (`walship: warning: ...`,
/// as the command's own error lines), for one-shot commands.
fn init_warnings() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_max_level(tracing::Level::WARN)
        .log_internal_errors(false)
        .event_format(CliLine)
        .init();
}

/// The format of [`init_warnings`].
struct CliLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for CliLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = if *event.metadata().level() == tracing::Level::ERROR {
            "error"
        } else {
            "warning"
        };
        write!(writer, "walship: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn run_basebackup(args: BaseBackupArgs) -> anyhow::Result<ExitCode> {
    let from = args.from;
    let summary = basebackup::run(&BaseBackupOptions {
        from,
        dir: args.dir.clone(),
        node_name: args.node_name,
        slot: args.slot,
        create_slot: args.create_slot,
        progress: !args.no_progress,
    })?;
    out!(
        "Base backup written to {} ({} files, {} kB; checkpoint {}, WAL to {}).\nStart the standby with:\n    walship server -D {}",
        args.dir.display(),
        summary.files,
        summary.bytes / 1024,
        summary.start,
        summary.end,
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_receive(args: ReceiveArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let mut from = args.from;
    // Named in pg_stat_replication, as pg_receivewal names itself.
    from.application_name
        .get_or_insert_with(|| "walship receive".to_string());
    if args.create_slot {
        let slot = args.slot.as_deref().unwrap_or_default();
        let at = receive::create_slot(&from, slot)?;
        out!("Created replication slot \"{slot}\" (WAL kept from {at}).");
        return Ok(ExitCode::SUCCESS);
    }
    let stopped = receive::run(&ReceiveOptions {
        from,
        dir: args.dir,
        slot: args.slot,
        endpos: args.endpos,
        no_loop: args.no_loop,
        synchronous: args.synchronous,
        status_interval: std::time::Duration::from_secs(args.status_interval.max(1)),
    })?;
    match stopped {
        Stopped::EndPos(lsn) => tracing::info!(flushed = %lsn, "reached --endpos; stopping"),
        Stopped::ServerEnded(lsn) => {
            tracing::info!(flushed = %lsn, "the server ended streaming; stopping (--no-loop)")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let from = args.from;
    let status = status::fetch(&from)?;
    if args.json {
        out!("{}", status.json);
    } else {
        write!(io::stdout(), "{}", status.to_text())
            .context("could not write to standard output")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_archive(args: ArchiveArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let compression: Compression = args.compression.parse().map_err(anyhow::Error::msg)?;
    if let Some(file) = &args.file {
        let put = archiver::archive_file(file, &args.archive, compression, args.create)?;
        tracing::info!(file = %file.display(), already_archived = put == Put::AlreadyThere, "archived");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = args.dir.unwrap_or_default();
    let archiver = Archiver::new(&dir, &args.archive, compression, args.create)?;
    if !args.follow {
        let progress = std::sync::Mutex::new(Progress::for_command(
            "walship archive",
            Total::Unknown,
            !args.no_progress,
        ));
        let lock = || progress.lock().unwrap_or_else(|p| p.into_inner());
        let pass = archiver.pass_reporting(&|files, bytes| {
            let mut p = lock();
            p.set_total(Total::Files(files as u64));
            p.advance(1, bytes);
        });
        lock().finish();
        let pass = pass?;
        match (pass.archived.first(), pass.archived.last()) {
            (Some(first), Some(last)) => out!(
                "Archived {} file(s), {first} to {last}{}.",
                pass.archived.len(),
                if pass.already > 0 {
                    format!(" ({} of them already there, the same)", pass.already)
                } else {
                    String::new()
                }
            ),
            _ if datadir::DataDir::new(&dir).standby_signal().exists() => out!(
                "Nothing to archive: {} is a standby (its primary archives its WAL).",
                dir.display()
            ),
            _ if !archive_mode_on(&dir) => out!(
                "Nothing to archive: archive_mode is off in {}, so the node marks no segment for archiving; set archive_mode = on and restart it.",
                datadir::DataDir::new(&dir).conf().display()
            ),
            _ => out!("Nothing to archive."),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let stop = stop_on_signals()?;
    tracing::info!(archive = %args.archive.display(), "archiving continuously (SIGTERM or SIGINT to stop)");
    if !archive_mode_on(&dir) {
        tracing::warn!(conf = %datadir::DataDir::new(&dir).conf().display(), "archive_mode is off: the node marks no segment for archiving, so this archiver waits for nothing; set archive_mode = on and restart the node");
    }
    // The failure of the spell under way, said when it starts or changes.
    let mut failing: Option<String> = None;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        match archiver.pass() {
            Ok(pass) => {
                for name in &pass.archived {
                    tracing::info!(file = %name, "archived");
                }
                if failing.take().is_some() {
                    tracing::info!("archiving works again");
                }
            }
            // Retrying cannot help, and the archive's lock must go to the
            // archiver that can use it.
            Err(
                e @ (walship::archive::archiver::ArchiverError::Replaced { .. }
                | walship::archive::archiver::ArchiverError::Fenced { .. }),
            ) => {
                return Err(e.into());
            }
            Err(e) => {
                let said = e.to_string();
                if failing.as_ref() != Some(&said) {
                    tracing::error!("archiving failed, retrying every second: {said}");
                }
                failing = Some(said);
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    tracing::info!("stopped: every pass that began was finished");
    Ok(ExitCode::SUCCESS)
}

/// Whether the node at `dir` marks segments for archiving, as its
/// walship.conf says (a file that cannot be read counts as on: the
/// archiver then says nothing of it). archive_mode takes effect at a
/// restart, so a node changed since its start may differ.
fn archive_mode_on(dir: &std::path::Path) -> bool {
    walship::node::config::Settings::load(&datadir::DataDir::new(dir).conf())
        .map_or(true, |s| s.archive_mode)
}

/// A flag raised by SIGTERM or SIGINT (blocked here, awaited on a thread).
/// SIGHUP, which a service manager's reload sends, is logged and ignored:
/// the daemon has nothing to reload, and must not die of it.
fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().context("could not block signals")?;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || loop {
        match set.wait() {
            Ok(Signal::SIGHUP) => tracing::info!("SIGHUP received: nothing to reload"),
            Ok(signal) => {
                tracing::info!("{signal} received: stopping after the pass under way");
                f.store(true, std::sync::atomic::Ordering::Release);
                return;
            }
            Err(_) => return,
        }
    });
    Ok(flag)
}

fn run_promote(args: PromoteArgs) -> anyhow::Result<ExitCode> {
    use walship::node::promote::{self, PromoteRequest, PROMOTE_FAILED};
    use walship::node::promote_journal;
    let dir = datadir::DataDir::new(&args.dir);
    dir.check()?;
    anyhow::ensure!(
        dir.standby_signal().exists(),
        "{} is not a standby (no standby.signal): nothing to promote",
        args.dir.display()
    );
    if args.force && args.fence_command.is_none() {
        eprintln!("walship promote: WARNING: --force: if the old primary cannot be fenced and is still alive, two primaries may take writes");
    }
    let running = walship::durable::DirLock::holder(&args.dir)?;
    promote::request(
        &args.dir,
        &PromoteRequest {
            fence_command: args.fence_command,
            force: args.force,
        },
    )?;
    // Wake the node: it acts on the request at once instead of at its
    // next once-a-second look.
    if let Some(pid) = running.as_ref().and_then(|h| h.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        );
    }
    let running = running.is_some();
    if running && !args.wait {
        out!("Promotion requested; the standby acts on it now (watch its log, or use --wait).");
        return Ok(ExitCode::SUCCESS);
    }
    // A stopped standby is started just long enough to promote (the same
    // steps, in the same order), then stopped cleanly: it is a primary the
    // next time it starts.
    let mut server = if running {
        None
    } else {
        out!("The standby is not running: starting it to promote it, then stopping it again.");
        Some(TemporaryServer::start(&args.dir)?)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let outcome = loop {
        if let Ok(why) = std::fs::read_to_string(args.dir.join(PROMOTE_FAILED)) {
            break Err(format!("promotion failed: {why}"));
        }
        if !dir.standby_signal().exists() && !args.dir.join(promote_journal::JOURNAL).exists() {
            break Ok(());
        }
        if let Some(s) = &mut server {
            if let Some(why) = s.exited() {
                break Err(format!("the standby stopped before promoting ({why})"));
            }
        } else if matches!(walship::durable::DirLock::holder(&args.dir), Ok(None)) {
            break Err("the standby stopped before the promotion finished; start it again: it finishes the promotion from its journal (promote.journal)".into());
        }
        if std::time::Instant::now() > deadline {
            break Err("the promotion did not finish within 120 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let log = server.map(TemporaryServer::stop).unwrap_or_default();
    if outcome.is_err() && !running {
        // Never leave a request behind for a later, ordinary start to act
        // on unasked.
        walship::durable::remove_file(&args.dir.join(promote::PROMOTE_SIGNAL))
            .context("removing the promotion request")?;
    }
    if let Err(why) = outcome {
        eprintln!(
            "walship promote: error: {why}; see the standby's log{}",
            if log.is_empty() {
                String::new()
            } else {
                format!(":\n{log}")
            }
        );
        return Ok(ExitCode::from(1));
    }
    let epoch = walship::fence::EpochFile::read(&dir.epoch()).context("reading the epoch")?;
    out!(
        "Promoted: {} is the primary, epoch {} on timeline {}.{}",
        args.dir.display(),
        epoch.epoch,
        epoch.timeline,
        if running {
            String::new()
        } else {
            format!(
                " It is stopped: start it with walship server -D {}.",
                args.dir.display()
            )
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `walship server` started by `walship promote` for a stopped standby,
/// its log kept in a temporary file.
struct TemporaryServer {
    child: std::process::Child,
    log: PathBuf,
}

impl TemporaryServer {
    fn start(dir: &std::path::Path) -> anyhow::Result<TemporaryServer> {
        let log = std::env::temp_dir().join(format!("walship-promote-{}.log", std::process::id()));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // No client needs to reach it, and its configured port may be
        // taken (another node on the host): any free loopback port.
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("server")
            .arg("-D")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("could not start walship server")?;
        Ok(TemporaryServer { child, log })
    }

    /// Why it exited, if it did.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Stops it cleanly (SIGTERM: shutdown checkpoint); returns its log.
    fn stop(mut self) -> String {
        let child = &mut self.child;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let _ = child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        log
    }
}

fn run_restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    match restore::restore(&args.archive, &args.name, &args.dest, args.prefetch) {
        Ok(Restored::Written { .. }) => Ok(ExitCode::SUCCESS),
        Ok(Restored::Absent) => {
            eprintln!(
                "walship restore: {} is not in archive {}",
                args.name,
                args.archive.display()
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("walship restore: error: {e}");
            Ok(ExitCode::from(126))
        }
    }
}

/// `--slot` and `--create-slot`, as the library takes them.
fn slot_choice(name: Option<&str>, create: bool) -> Option<SlotChoice<'_>> {
    name.map(|name| SlotChoice { name, create })
}

fn run_follow(args: FollowArgs) -> anyhow::Result<ExitCode> {
    let from = args.from;
    let slot = slot_choice(args.slot.as_deref(), args.create_slot);
    let done = walship::replication::follow::follow(&args.dir, &from, slot)?;
    out!(
        "{} now follows {} (epoch {}, timeline {}){}.",
        args.dir.display(),
        done.peer,
        done.epoch,
        done.timeline,
        match done.signalled {
            Some(pid) => format!("; told the running standby (pid {pid}) to reload"),
            None => "; it is not running: it follows it when started".into(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn run_rejoin(args: RejoinArgs) -> anyhow::Result<ExitCode> {
    let from = args.from;
    let slot = slot_choice(args.slot.as_deref(), args.create_slot);
    let done = walship::replication::rejoin::rejoin(&args.dir, &from, slot)?;
    match (done.switch, done.rewound_from) {
        (Some(switch), Some(end)) => out!(
            "Rewound {}: its WAL ended at {end}, past the switch point {switch}; cut back to it ({} later segment(s) removed).",
            args.dir.display(),
            done.removed_segments
        ),
        (Some(switch), None) => out!(
            "{} stopped at or before the switch point {switch}: nothing to rewind.",
            args.dir.display()
        ),
        _ => {}
    }
    out!(
        "{} is now a standby of {} (epoch {}): start it with walship server -D {}.",
        args.dir.display(),
        done.peer,
        done.epoch,
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_prefetch_worker(args: PrefetchWorkerArgs) -> anyhow::Result<ExitCode> {
    let archive = Archive::open(&args.archive)?;
    let first = walship::wal::SegmentName::parse(&args.first, archive.seg_size)?;
    restore::prefetch(&args.archive, &args.spool, first, args.depth)?;
    Ok(ExitCode::SUCCESS)
}

fn run_cleanup(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let plan = cleanup::plan(&args.archive, &args.before)?;
    if let Some(backup) = &plan.kept_for_backup {
        out!(
            "Keeping everything from {} on: the newest base backup ({backup}) needs it.",
            plan.keep_from
        );
    }
    if args.dry_run {
        for file in &plan.remove {
            out!("would remove {}", file.display());
        }
        out!(
            "Dry run: {} file(s) before {} would be removed.",
            plan.remove.len(),
            plan.keep_from
        );
        return Ok(ExitCode::SUCCESS);
    }
    let removed = cleanup::execute(&plan)?;
    out!(
        "Removed {} file(s) ({} MiB) before {}.",
        plan.remove.len(),
        removed >> 20,
        plan.keep_from
    );
    Ok(ExitCode::SUCCESS)
}

fn run_dump(args: DumpArgs) -> anyhow::Result<ExitCode> {
    let opts = DumpOptions {
        paths: args.paths,
        start: args.start,
        end: args.end,
        mode: if args.verify {
            DumpMode::Verify
        } else if args.stats {
            DumpMode::Stats
        } else {
            DumpMode::Records
        },
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let outcome = dump::run(&opts, &mut out)?;
    out.flush().context("could not write to standard output")?;
    Ok(match outcome {
        DumpOutcome::Clean { message, .. } => {
            if opts.mode == DumpMode::Records {
                eprintln!("walship dump: {message}");
            }
            ExitCode::SUCCESS
        }
        DumpOutcome::Damaged { message } => {
            eprintln!("walship dump: error: {message}");
            ExitCode::from(1)
        }
    })
}

#[cfg(test)]
mod man {
    //! The man pages in `man/` are generated from the definitions above plus
    //! the hand-written sections here. `WALSHIP_BLESS=1 cargo test --bin
    //! walship` rewrites them; otherwise the test fails when they are stale.
    //!
    //! A page: clap's NAME, SYNOPSIS, DESCRIPTION and OPTIONS; the command's
    //! own sections (OUTPUT, SIGNALS, FILES, ENVIRONMENT); EXIT STATUS; the
    //! `--help` examples as EXAMPLES; SEE ALSO.

    use clap::CommandFactory;

    /// Exit status 2 means the same for every command: clap refused the
    /// command line.
    const USAGE: &str = r"Usage error: an unknown option, a missing argument, or a value that does not parse (an LSN, a connection string, a segment size, \fIHOST\fR:\fIPORT\fR). The message and the usage go to standard error. (\fB\-\-help\fR exits 0.)";

    /// The EXIT STATUS section: what 0 and 1 mean for this command, the
    /// codes of its own if it has any, and 2 (usage), alike for all.
    fn exit_status(ok: &str, failed: &str, more: &[(u8, &str)]) -> String {
        let mut codes = vec![(0, ok), (1, failed), (2, USAGE)];
        codes.extend_from_slice(more);
        codes.sort_by_key(|&(code, _)| code);
        let mut section = String::from(".SH \"EXIT STATUS\"\n");
        for (code, text) in codes {
            section.push_str(&format!(".TP\n\\fB{code}\\fR\n{text}\n"));
        }
        section
    }

    /// The hand-written part of a page.
    struct Sections {
        /// OUTPUT, SIGNALS, FILES, ENVIRONMENT: whichever the command has.
        extra: String,
        exit_status: String,
        see_also: &'static str,
    }

    /// Removes section `title` from a rendered page; returns its body.
    fn take_section(page: &mut String, title: &str) -> Option<String> {
        let heading = format!(".SH {title}\n");
        let start = page.find(&heading)?;
        let body = start + heading.len();
        let end = page[body..]
            .find("\n.SH ")
            .map_or(page.len(), |i| body + i + 1);
        let text = page[body..end].to_string();
        page.replace_range(start..end, "");
        Some(text)
    }

    /// The `--help` examples (clap_mangen's EXTRA section) as EXAMPLES,
    /// unfilled, so that each command line stays one line.
    fn examples(extra: &str) -> String {
        let lines: Vec<&str> = extra
            .lines()
            .filter(|l| *l != "Examples:")
            .map(|l| l.strip_prefix("  ").unwrap_or(l))
            .collect();
        format!(".SH EXAMPLES\n.nf\n{}\n.fi\n", lines.join("\n"))
    }

    fn page_for(cmd: &clap::Command, name: &str, sections: &Sections) -> String {
        let mut buf = Vec::new();
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        // The page is walship-promote(1); the command typed is
        // `walship promote`, as its SYNOPSIS shows.
        let cmd = cmd.clone().name(name).bin_name(name.replacen('-', " ", 1));
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .expect("render to memory");
        let mut page = String::from_utf8(buf).expect("man page is UTF-8");
        let extra = take_section(&mut page, "EXTRA");
        page.push_str(&sections.extra);
        page.push_str(&sections.exit_status);
        if let Some(extra) = extra {
            page.push_str(&examples(&extra));
        }
        page.push_str(&format!(".SH \"SEE ALSO\"\n{}\n", sections.see_also));
        page
    }

    fn pages() -> Vec<(String, String)> {
        let root = super::Cli::command();
        let mut pages = vec![(
            "walship.1".to_string(),
            page_for(&root, "walship", &sections("walship")),
        )];
        for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("walship-{}", sub.get_name());
            let page = page_for(sub, &name, &sections(sub.get_name()));
            pages.push((format!("{name}.1"), page));
        }
        pages
    }

    /// Each page's hand-written sections, by command.
    fn sections(command: &str) -> Sections {
        let (extra, exit_status, see_also) = match command {
            "walship" => (
                ROOT_EXTRA.to_string(),
                exit_status(
                    "Success.",
                    r"Failure; standard error says what failed. Each command's page lists its cases (for \fBwalship restore\fR, 1 means only that the archive does not have the file).",
                    &[(
                        126,
                        r"\fBwalship restore\fR only: a real failure, which stops a recovering server (see \fBwalship\-restore\fR(1)).",
                    )],
                ),
                r"\fBwalship\-init\fR(1), \fBwalship\-server\fR(1), \fBwalship\-basebackup\fR(1), \fBwalship\-receive\fR(1), \fBwalship\-status\fR(1), \fBwalship\-archive\fR(1), \fBwalship\-restore\fR(1), \fBwalship\-cleanup\fR(1), \fBwalship\-promote\fR(1), \fBwalship\-follow\fR(1), \fBwalship\-rejoin\fR(1), \fBwalship\-demo\fR(1), \fBwalship\-dump\fR(1), \fBpostgres\fR(1)",
            ),
            "demo" => (
                DEMO_EXTRA.to_string(),
                exit_status(
                    r"The tour ran to the end: every acknowledged commit was found on the new primary, and the restarted old primary refused a write.",
                    r"A step failed; standard error names it, with the output of the command that failed. Among the causes: the \fB\-\-keep\fR directory is not empty, a node did not answer within 30 s of starting (its log is named), acknowledged commits are missing on the new primary, the old primary took a write. Either way every process the tour started is stopped, and without \fB\-\-keep\fR its directory is removed.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-init\fR(1), \fBwalship\-server\fR(1), \fBwalship\-basebackup\fR(1), \fBwalship\-archive\fR(1), \fBwalship\-promote\fR(1), \fBwalship\-status\fR(1)",
            ),
            "init" => (
                INIT_EXTRA.to_string(),
                exit_status(
                    r"\fIDIR\fR was created: a new system, its first checkpoint written; start it with \fBwalship server \-D\fR \fIDIR\fR.",
                    r"Nothing usable was created: \fIDIR\fR exists and is not empty, the password file cannot be read or its first line is empty, the name of the OS user cannot be found (give \fB\-U\fR), or a file could not be written. Standard error says which, and that what was written was removed again (\fIDIR\fR itself when init created it).",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-server\fR(1), \fBwalship\-basebackup\fR(1), \fBinitdb\fR(1)",
            ),
            "server" => (
                [SERVER_EXTRA, SERVER_FILES].concat(),
                exit_status(
                    r"Stopped cleanly on \fBSIGTERM\fR or \fBSIGINT\fR: sessions ended, WAL flushed, shutdown checkpoint written.",
                    r"It could not start, or failed: \fIDIR\fR is not a data directory or another process holds it, \fIwalship.conf\fR or \fIusers\fR does not parse, recovery met a WAL record it cannot replay, or an address cannot be listened on. The log (standard error) says why.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-init\fR(1), \fBwalship\-basebackup\fR(1), \fBwalship\-status\fR(1), \fBwalship\-archive\fR(1), \fBwalship\-restore\fR(1), \fBwalship\-promote\fR(1), \fBwalship\-follow\fR(1), \fBpostgres\fR(1), \fBpg_ctl\fR(1)",
            ),
            "dump" => (
                DUMP_EXTRA.to_string(),
                exit_status(
                    r"The walk ended cleanly: where valid WAL ends (zeros, or a recycled page, where the next record would begin), at the end of the given segments, or at \fB\-\-end\fR. Also when standard output is closed early, as by \fBwalship dump ... | head\fR.",
                    r"The WAL is damaged: a record or page in the middle of it, a segment missing between two given ones, or WAL that ends before later given segments of its timeline (or a later one) that hold WAL of their own; one line on standard error names the file, the LSN and what was wrong. Also when no segment file was found, a name is not a segment file name, a file has the wrong size, \fB\-\-start\fR lies outside the given segments, or a file cannot be read.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-receive\fR(1), \fBwalship\-archive\fR(1), \fBpg_waldump\fR(1)",
            ),
            "basebackup" => (
                [BASEBACKUP_EXTRA, &client_env(STANDBY_PGUSER)].concat(),
                exit_status(
                    r"The backup is complete in \fIDIR\fR; start the standby with \fBwalship server \-D\fR \fIDIR\fR.",
                    r"No usable backup: \fIDIR\fR is not empty, the primary cannot be reached or refused the connection, it is a fenced old primary, the slot could not be created (one of that name exists, say) or, without \fB\-\-create\-slot\fR, the primary has no slot of that name, the primary sent a malformed backup, or a file could not be written. A failed backup undoes what it did, as pg_basebackup does, and its error says what it undid: it removes \fIDIR\fR when it created it, or empties it when it was there, empty, before, and drops the slot \fB\-\-create\-slot\fR made, so the same command can simply be run again. If an undoing fails too, the error says so and how to finish it by hand (a partial \fIDIR\fR has no control file, and \fBwalship server\fR refuses it; a slot left behind holds WAL on the primary). \fB\-\-create\-slot\fR refuses a slot that exists already: drop it, or run again without \fB\-\-create\-slot\fR.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-server\fR(1), \fBwalship\-init\fR(1), \fBwalship\-rejoin\fR(1), \fBwalship\-archive\fR(1), \fBpg_basebackup\fR(1)",
            ),
            "receive" => (
                [RECEIVE_EXTRA, &client_env("")].concat(),
                exit_status(
                    r"\fB\-\-endpos\fR was reached; with \fB\-\-no\-loop\fR, the primary ended streaming (it shut down); with \fB\-\-create\-slot\fR, the slot was created.",
                    r"Streaming stopped on a failure: the primary sent WAL that fails verification (nothing from that record on was written; the LSN is named), \fIDIR\fR holds another system's segments, the server refused the role or its password (or asked for a password there was none to give), or another process holds \fIDIR\fR; with \fB\-\-create\-slot\fR, the slot could not be created; with \fB\-\-no\-loop\fR, any failure, a lost connection included. Without \fB\-\-no\-loop\fR other failures are logged and retried, with a backoff of up to 5 s.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-dump\fR(1), \fBwalship\-archive\fR(1), \fBwalship\-server\fR(1), \fBpg_receivewal\fR(1)",
            ),
            "status" => (
                client_env(""),
                exit_status(
                    r"The status was printed.",
                    r"The node could not be reached or refused the connection (standard error names it), it is not a walship node (a PostgreSQL server, say), or a query failed.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-server\fR(1), \fBwalship\-promote\fR(1), \fBwalship\-follow\fR(1), \fBwalship\-archive\fR(1)",
            ),
            "archive" => (
                ARCHIVE_EXTRA.to_string(),
                exit_status(
                    r"Everything marked ready was archived (or was in the archive already, the same), or nothing was ready. With \fISEGMENT_PATH\fR: that file was archived, or was there already, the same. With \fB\-\-follow\fR: stopped by \fBSIGTERM\fR or \fBSIGINT\fR.",
                    r"Something was not archived: a file failed verification, the archive holds different content under its name, the archive belongs to another system or has vanished (see \fB\-\-create\fR), the node is fenced (the archive records a newer epoch), another archiver holds the archive's lock, or a file could not be read or written. Standard error says which. A run stops at the failing file; the next run retries it. With \fB\-\-follow\fR a failure to start exits, and so does a running daemon whose node is fenced (it frees the archive's lock for the new primary's archiver) or whose archive was made again under it; other failures are logged once and retried every second.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-restore\fR(1), \fBwalship\-cleanup\fR(1), \fBwalship\-server\fR(1), \fBwalship\-promote\fR(1), \fBwalship\-receive\fR(1), \fBpostgres\fR(1)",
            ),
            "restore" => (
                RESTORE_EXTRA.to_string(),
                exit_status(
                    r"\fIDEST\fR was written whole and verified.",
                    r"The archive does not have \fINAME\fR; one line on standard error says so. This is the answer a recovering server expects at the end of the archive: PostgreSQL and \fBwalship server\fR read every status from 1 to 125 that way, a usage error (2) included, so check the command when a standby stops restoring early.",
                    &[(
                        126,
                        r"A real failure: the archived file is corrupt or cannot be read or decompressed, it is another system's, the archive is missing or damaged, \fIDEST\fR cannot be written, or \fINAME\fR is no WAL file's name (a broken \fBrestore_command\fR); standard error says which. On a status above 125 PostgreSQL's recovery stops rather than take it for the end of the archive; \fBwalship server\fR logs it and tries again later.",
                    )],
                ),
                r"\fBwalship\fR(1), \fBwalship\-archive\fR(1), \fBwalship\-cleanup\fR(1), \fBwalship\-server\fR(1), \fBpostgres\fR(1)",
            ),
            "cleanup" => (
                CLEANUP_EXTRA.to_string(),
                exit_status(
                    r"The files listed were removed (with \fB\-\-dry\-run\fR, only listed). A file another cleanup removed meanwhile counts as removed.",
                    r"\fIADIR\fR is not a walship archive, \fB\-\-before\fR names no segment of the archive's segment size, or a file could not be removed (those before it were). Standard error says which. (A \fB\-\-before\fR that is no segment or backup history file name at all is a usage error: exit status 2.)",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-archive\fR(1), \fBwalship\-restore\fR(1), \fBwalship\-basebackup\fR(1), \fBpg_archivecleanup\fR(1)",
            ),
            "promote" => (
                PROMOTE_EXTRA.to_string(),
                exit_status(
                    r"The standby was promoted: it accepts writes (a stopped standby was promoted, then stopped again). For a running standby without \fB\-\-wait\fR: the request was delivered; its log says how the promotion went.",
                    r"\fIDIR\fR is not a walship data directory or not a standby (no \fIstandby.signal\fR); or the promotion failed (no fence and no \fB\-\-force\fR, the fence command failed, another promotion claimed the epoch first, ...): standard error gives the reason the standby recorded in \fIpromote.failed\fR and, for a stopped standby, the log of the server started for it; or the standby stopped before the promotion finished, or it did not finish within 120 s.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-server\fR(1), \fBwalship\-status\fR(1), \fBwalship\-follow\fR(1), \fBwalship\-rejoin\fR(1), \fBpg_ctl\fR(1)",
            ),
            "follow" => (
                [FOLLOW_EXTRA, &client_env(STANDBY_PGUSER)].concat(),
                exit_status(
                    r"\fIwalship.conf\fR names the new upstream; a running standby was told (\fBSIGHUP\fR), a stopped one follows it when started.",
                    r"\fIDIR\fR is not a standby, the upstream cannot be reached, has no slot named by \fB\-\-slot\fR (without \fB\-\-create\-slot\fR) or has one already (with it), lacks the slot the standby keeps as \fBprimary_slot_name\fR (without \fB\-\-slot\fR), cannot give its timeline's history, or it is refused: another system, an epoch older than the standby's, a fenced old primary. Nothing was changed then. \fB\-\-create\-slot\fR creates the slot last: if only that fails, the rest is done, and running the same command again finishes the job. Also when \fIwalship.conf\fR cannot be read or written, or the running standby cannot be signalled (\fIwalship.conf\fR is changed already: send the standby \fBSIGHUP\fR, or restart it). Standard error says which.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-promote\fR(1), \fBwalship\-rejoin\fR(1), \fBwalship\-status\fR(1), \fBwalship\-server\fR(1)",
            ),
            "rejoin" => (
                [REJOIN_EXTRA, &client_env(STANDBY_PGUSER)].concat(),
                exit_status(
                    r"\fIDIR\fR is a standby of the new primary, cut back to the switch point if it wrote past it; start it with \fBwalship server \-D\fR \fIDIR\fR.",
                    r"Refused, with nothing changed: the node is running; the new primary cannot be reached, has no slot named by \fB\-\-slot\fR (without \fB\-\-create\-slot\fR) or has one already (with it), lacks the slot the node keeps as \fBprimary_slot_name\fR (without \fB\-\-slot\fR), or cannot give its timeline's history; the new primary is another system, in an older epoch, or fenced, or it is on this node's timeline but not ahead of it; or this node cannot follow it (the new primary's history does not contain this node's timeline, this node committed past the switch point and its last checkpoint lies past it too, or the segment holding the switch point is gone): rebuild it with \fBwalship basebackup\fR. Or a file could not be written part-way, or \fB\-\-create\-slot\fR (the last step) could not create the slot; \fIstandby.signal\fR is then written already, and running \fBwalship rejoin\fR again finishes the job. Standard error says which.",
                    &[],
                ),
                r"\fBwalship\fR(1), \fBwalship\-promote\fR(1), \fBwalship\-follow\fR(1), \fBwalship\-basebackup\fR(1), \fBwalship\-server\fR(1), \fBpg_rewind\fR(1)",
            ),
            other => panic!("walship {other} has no hand-written man page sections: add them"),
        };
        Sections {
            extra,
            exit_status,
            see_also,
        }
    }

    /// ENVIRONMENT for the commands that connect to a node, followed by
    /// `more` (roff, or empty).
    fn client_env(more: &str) -> String {
        format!(
            r".SH ENVIRONMENT
.TP
\fBPGUSER\fR
The role to connect as when \fICONNINFO\fR names no \fBuser\fR; without it, the name of the OS user running the command. The database defaults to the role's name.{more}
.TP
\fBPGPASSWORD\fR, \fBPGPASSFILE\fR
The password, when \fICONNINFO\fR gives none and the server asks for one: \fBPGPASSWORD\fR, else the first matching line \fIhost\fR:\fIport\fR:\fIdatabase\fR:\fIuser\fR:\fIpassword\fR of the password file (the one \fBpassfile=\fR in \fICONNINFO\fR names, else \fBPGPASSFILE\fR, else \fI~/.pgpass\fR), as libpq reads it: \fB*\fR matches anything, a replication connection matches the database \fBreplication\fR, the socket directory \fI/var/run/postgresql\fR matches \fBlocalhost\fR (any other host as \fICONNINFO\fR spells it: the default is \fB127.0.0.1\fR), and a file others may read is not used (with a warning). Neither shows in \fBps\fR, as a password in \fICONNINFO\fR does. No other libpq variable is read: the host (default 127.0.0.1) and port (default 5432) come from \fICONNINFO\fR alone.
"
        )
    }

    /// For the commands that write `primary_conninfo`.
    const STANDBY_PGUSER: &str = r" A role taken from \fBPGUSER\fR is not written to \fBprimary_conninfo\fR: the standby then connects as its own environment says. Give \fBuser=\fR in \fICONNINFO\fR to write it there.";

    const ROOT_EXTRA: &str = r#".SH FILES
.TP
\fIDIR\fR
A node's data directory: \fIwalship.conf\fR, \fIcontrol\fR, \fIepoch\fR, \fIusers\fR, \fIwal/\fR, \fIcheckpoints/\fR, \fIslots/\fR, a standby's \fIstandby.signal\fR, and \fIwalship.lock\fR while a server runs. See \fBwalship\-init\fR(1) and \fBwalship\-server\fR(1).
.TP
\fIADIR\fR
A WAL archive: its identity \fIARCHIVE\fR, archived segments and history files, and the epochs promotions claimed. See \fBwalship\-archive\fR(1).
.SH ENVIRONMENT
.TP
\fBPGUSER\fR
The role to connect as when a connection string (\fB\-\-from\fR, \fBprimary_conninfo\fR) names none.
.TP
\fBPGPASSWORD\fR, \fBPGPASSFILE\fR
The password when a connection string gives none, as libpq reads them (default file \fI~/.pgpass\fR; the string's \fBpassfile=\fR comes first); see \fBwalship\-receive\fR(1). No other libpq variable is read.
.TP
\fBTMPDIR\fR
Where \fBwalship demo\fR and \fBwalship promote\fR put their temporary files (default \fI/tmp\fR).
"#;

    const DEMO_EXTRA: &str = r#".SH FILES
.TP
\fI$TMPDIR/walship\-demo\-PID/\fR
The tour's directory, removed at the end. With \fB\-\-keep\fR \fIDIR\fR: \fIDIR\fR, kept.
.TP
\fIprimary/\fR, \fIstandby/\fR, \fIarchive/\fR
In it: the two nodes' data directories and the archive.
.TP
\fIprimary.log\fR, \fIstandby.log\fR, \fIarchiver.log\fR, \fIold\-primary.log\fR
In it: the logs of the processes the tour starts.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR, \fBSIGHUP\fR
Stop the tour where it is: every process it started is stopped and, without \fB\-\-keep\fR, its directory removed; the exit status is 128 plus the signal's number.
.SH ENVIRONMENT
.TP
\fBTMPDIR\fR
Where the tour's directory goes (default \fI/tmp\fR).
"#;

    const DUMP_EXTRA: &str = r#".SH OUTPUT
One line per record, as \fBpg_waldump\fR(1) prints them: resource manager,
total length, transaction id, LSN, previous record's LSN and a description.
walship's own records show as \fBwalship\fR (resource manager 200, which
PostgreSQL's pg_waldump shows as \fBcustom200\fR). The last line, on standard
error, says where and why the WAL ended.
"#;

    const INIT_EXTRA: &str = r#".SH FILES
.TP
\fIDIR\fR
Created if absent (an existing one must be empty); only its owner may enter it (mode 0700).
.TP
\fIDIR/walship.conf\fR
Settings, PostgreSQL style (\fBname = value\fR); every setting is listed with its default.
.TP
\fIDIR/control\fR
System identifier, segment size, timeline, last checkpoint, and a random secret from which the salt offered to a role that does not exist is derived (as PostgreSQL's mock authentication nonce: a base backup copies it, so every node of a system offers the same salt, and a client cannot tell which roles exist); CRC-protected, replaced atomically. A control file of version 1 (no secret) is read, and gets one at its next write; standbys cloned before that keep a secret of their own until they are cloned again.
.TP
\fIDIR/epoch\fR
The generation this node writes in (1 for a new cluster).
.TP
\fIDIR/users\fR
Roles, one per line: \fBname:attributes:verifier\fR, the attributes a comma list of \fBsuperuser\fR, \fBreplication\fR and \fBnologin\fR, the verifier a SCRAM-SHA-256 hash, never the password. After init, manage roles in SQL on the primary (\fBCREATE ROLE\fR, \fBALTER ROLE\fR ... \fBPASSWORD\fR, psql's \fB\\password\fR, \fBDROP ROLE\fR; see \fBwalship\-server\fR(1)).
.TP
\fIDIR/wal/\fR
WAL segments in PostgreSQL 15's format; \fIwal/archive_status/\fR for \fBwalship archive\fR.
.TP
\fIDIR/checkpoints/\fR
The snapshot of the first checkpoint (\fIsnapshot.LSN\fR).
"#;

    const BASEBACKUP_EXTRA: &str = r#".SH FILES
.TP
\fIDIR\fR
Created if absent (an existing one must be empty); only its owner may enter it (mode 0700).
.TP
\fIDIR/standby.signal\fR
Makes \fBwalship server\fR start the node as a standby.
.TP
\fIDIR/walship.conf\fR
The primary's settings, followed by \fBnode_name\fR, \fBprimary_conninfo\fR and \fBprimary_slot_name\fR for this standby. A password in \fICONNINFO\fR is written there too.
.TP
\fIDIR/users\fR, \fIDIR/epoch\fR, \fIDIR/checkpoints/\fR, \fIDIR/wal/\fR
As the primary sent them: its roles, its epoch, the snapshot of the checkpoint the backup starts at, and the WAL from there on.
.TP
\fIDIR/control\fR
Written last: until it is there, \fBwalship server\fR refuses the directory.
"#;

    const RECEIVE_EXTRA: &str = r#".SH SIGNALS
\fBwalship receive\fR sets no handlers: \fBSIGTERM\fR or \fBSIGINT\fR ends it at once. Complete segments are durable; the next run resumes at the start of the \fI.partial\fR one.
.SH FILES
.TP
\fIDIR/SEGNAME.partial\fR
The segment being received: preallocated, written as WAL arrives.
.TP
\fIDIR/SEGNAME\fR
A complete segment, durably renamed from \fISEGNAME.partial\fR; byte-identical to the primary's.
.TP
\fIDIR/TTTTTTTT.history\fR
Timeline history files, fetched when the primary's timeline changes.
.TP
\fIDIR/walship.lock\fR
Held while receiving, with the pid: a second receiver into \fIDIR\fR is refused.
"#;

    const ARCHIVE_EXTRA: &str = r#".SH SIGNALS
With \fB\-\-follow\fR:
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop once the pass under way is done; exit 0.
.TP
\fBSIGHUP\fR
Logged and ignored: there is nothing to reload.
.SH FILES
.TP
\fIDIR/wal/archive_status/NAME.ready\fR
What to archive: a primary with \fBarchive_mode = on\fR marks each completed segment and history file. Renamed \fINAME.done\fR, in order, once the archived copy is durable.
.TP
\fIDIR/wal/NAME\fR
The file archived; verified first.
.TP
\fIDIR/control\fR, \fIDIR/epoch\fR
The system identifier and segment size a new archive is created with; the node's epoch, checked against the archive's at start and before each pass that has files to archive.
.TP
\fIDIR/archiver.status\fR
Counters and the last success and failure, shown in \fBpg_stat_archiver\fR. It also tells that this node archived before, which makes a missing archive an error rather than a new start (see \fB\-\-create\fR).
.TP
\fIADIR/ARCHIVE\fR
The archive's identity: system identifier, segment size and compression, written when the archive is created.
.TP
\fIADIR/SEGNAME\fR, \fIADIR/SEGNAME.zst\fR
Archived segments (\fI.zst\fR in a compressed archive).
.TP
\fIADIR/TTTTTTTT.history\fR, \fIADIR/*.backup\fR
Timeline history and backup history files, never compressed.
.TP
\fIADIR/walship.lock\fR
Held, with the pid, by the archiver at work: a second one is refused.
.TP
\fIADIR/.NAME.tmp.PID\fR
A copy under way. One an interrupted archiver left is removed when the next \fB\-D\fR run starts.
.TP
\fIADIR/epoch\fR
The highest epoch a promotion claimed (see \fBwalship\-promote\fR(1)): a node in a lower epoch is fenced, and archives nothing.
"#;

    const RESTORE_EXTRA: &str = r#".SH FILES
.TP
\fIADIR/ARCHIVE\fR
The archive's identity: the system identifier and segment size a file is verified against. Without it the archive counts as missing (exit 126).
.TP
\fIADIR/NAME\fR, \fIADIR/NAME.zst\fR
The archived file; a compressed one is decompressed.
.TP
\fIDEST\fR
Written under a temporary name beside it and renamed: it appears whole or not at all. It is not fsynced, nor are the spool's files: \fIDEST\fR is a recovering server's scratch file (PostgreSQL's \fIRECOVERYXLOG\fR), read at once and asked for again after a crash, and the server makes durable what it keeps. (Syncing it cost a disk round trip per segment.) To keep a restored file, sync it yourself.
.TP
\fIDESTDIR/.walship\-prefetch/\fR
The prefetch spool, in \fIDEST\fR's directory: up to \fB\-\-prefetch\fR verified segments of the same timeline, each with the CRC-32C of what was verified (\fINAME.crc32c\fR), the worker's range (\fIplan\fR) and its lock (\fIwalship.lock\fR: one worker per spool). A request takes its segment from there with a rename once the file matches its CRC (a file without one is verified in full), or waits up to 60 s for the worker fetching it; a spooled file that fails is discarded and the segment fetched from the archive. The worker stops at the first segment the archive does not have, or when nothing was taken for 30 s. Under \fBwalship server\fR, \fIDEST\fR is \fIDIR/wal/RECOVERYXLOG\fR, so the spool is \fIDIR/wal/.walship\-prefetch/\fR.
"#;

    const CLEANUP_EXTRA: &str = r#".SH FILES
.TP
\fIADIR/ARCHIVE\fR
The archive's identity (for the segment size); an archive without it is refused.
.TP
\fIADIR/SEGNAME\fR, \fIADIR/SEGNAME.partial\fR, and the same with \fI.zst\fR
Removed when the name, timeline aside, sorts before \fB\-\-before\fR, or before the newest base backup's start segment if that is earlier.
.TP
\fIADIR/SEGNAME.OOOOOOOO.backup\fR
Backup history files: the newest one's start segment, and all after it, are kept. Never removed.
.TP
\fIADIR/TTTTTTTT.history\fR, \fIADIR/epoch\fR, \fIADIR/epoch.N\fR, \fIADIR/walship.lock\fR
Never removed, nor \fIADIR/ARCHIVE\fR.
"#;

    const PROMOTE_EXTRA: &str = r#".SH FILES
.TP
\fIDIR/standby.signal\fR
Must be present: only a standby is promoted. The promotion's last step removes it.
.TP
\fIDIR/walship.lock\fR
Read, not taken: the pid of the running standby, woken with \fBSIGUSR1\fR. Without a holder the standby is not running, and is started (\fBwalship server \-D\fR \fIDIR\fR) for the promotion.
.TP
\fIDIR/promote.signal\fR
The request (with \fB\-\-fence\-command\fR and \fB\-\-force\fR); the standby removes it when the promotion ends. While it is there, a restarted standby promotes itself.
.TP
\fIDIR/promote.journal\fR
How far a promotion got: its epoch, the archive claim's token, the new timeline, and the step under way (fence, claim, switch, finish). A promotion run again, or a node restarted, goes on from there. While it is there a standby neither streams nor takes writes.
.TP
\fIDIR/promote.failed\fR
Why the last promotion failed, for \fB\-\-wait\fR.
.TP
\fIDIR/epoch\fR
Read at the end, for the epoch and timeline reported.
.TP
\fIADIR/epoch.N\fR, \fIADIR/epoch\fR
With \fBarchive_directory\fR set: the claim of epoch N (the node's name and the promotion's token), and the highest epoch claimed.
.TP
\fI$TMPDIR/walship\-promote\-PID.log\fR
The log of the server started to promote a stopped standby; removed once it stops.
.SH ENVIRONMENT
.TP
\fBWALSHIP_EPOCH\fR
Set for \fB\-\-fence\-command\fR: the epoch being claimed.
.TP
\fBPGUSER\fR
The role the standby fences the old primary as, over \fBprimary_conninfo\fR, when that names none (see \fBwalship\-server\fR(1)). A standby \fBwalship promote\fR starts inherits this environment.
.TP
\fBTMPDIR\fR
Where the log of a standby started for the promotion goes (default \fI/tmp\fR).
.TP
\fBWALSHIP_CRASH_AT\fR
For crash tests only: the node kills itself (SIGKILL) at the named point (\fBpromote\-fence\fR, \fBpromote\-switch\fR, ...). Never set it in production.
"#;

    const FOLLOW_EXTRA: &str = r#".SH FILES
.TP
\fIDIR/standby.signal\fR
Must be present: only a standby follows (\fBwalship rejoin\fR makes an old primary one).
.TP
\fIDIR/walship.conf\fR
Read for \fBnode_name\fR, sent upstream as \fBapplication_name\fR. \fBprimary_conninfo\fR and, with \fB\-\-slot\fR, \fBprimary_slot_name\fR are appended under a comment saying who added them and when, and earlier lines of those settings become comments without their values (an old password does not linger); the last value of a setting wins. A password in \fICONNINFO\fR is written there too.
.TP
\fIDIR/control\fR, \fIDIR/epoch\fR
The system identifier and epoch the upstream is checked against.
.TP
\fIDIR/walship.lock\fR
The pid of the running standby, if it runs: it is sent \fBSIGHUP\fR.
"#;

    const REJOIN_EXTRA: &str = r#".SH FILES
.TP
\fIDIR/walship.lock\fR
Taken for the whole run: a running node is refused.
.TP
\fIDIR/control\fR, \fIDIR/epoch\fR
The system identifier, timeline, last checkpoint and epoch, checked against the new primary.
.TP
\fIDIR/standby.signal\fR
Written before any other change: a node whose rejoin was interrupted never starts as a primary.
.TP
\fIDIR/wal/\fR
Cut back to the switch point: the segment holding it zeroed from there on, later segments of this node's timeline removed, with their \fIarchive_status\fR marks.
.TP
\fIDIR/checkpoints/snapshot.LSN\fR
When the last checkpoint lies past the switch point and no commit does: its snapshot is recorded as the switch point's, and \fIDIR/control\fR points at it.
.TP
\fIDIR/walship.conf\fR
Read for \fBnode_name\fR; \fBprimary_conninfo\fR and, with \fB\-\-slot\fR, \fBprimary_slot_name\fR are appended under a comment saying who added them and when, and earlier lines of those settings become comments without their values. A password in \fICONNINFO\fR is written there too.
"#;

    const SERVER_EXTRA: &str = r#".SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop cleanly: sessions are told, the WAL is flushed, a shutdown checkpoint is written.
.TP
\fBSIGHUP\fR
Reload walship.conf (settings marked "reload") and the users file.
.TP
\fBSIGUSR1\fR
Look for a promotion request (\fIDIR/promote.signal\fR) now; \fBwalship promote\fR sends it.
"#;

    const SERVER_FILES: &str = r#".SH FILES
.TP
\fIDIR/walship.conf\fR, \fIDIR/users\fR
Settings, and the roles that may connect (see \fBwalship\-init\fR(1)): read at start and on \fBSIGHUP\fR. On a primary, a superuser manages roles in SQL: \fBCREATE ROLE\fR \fIname\fR [\fBWITH\fR] [\fBSUPERUSER\fR] [\fBREPLICATION\fR] [\fBLOGIN\fR | \fBNOLOGIN\fR] [\fBPASSWORD\fR '\fIpassword\fR'], \fBALTER ROLE\fR with the same options (and \fBNOSUPERUSER\fR, \fBNOREPLICATION\fR, \fBPASSWORD NULL\fR), \fBDROP ROLE\fR [\fBIF EXISTS\fR]; \fBCREATE USER\fR is \fBCREATE ROLE\fR ... \fBLOGIN\fR and \fBUSER\fR a synonym elsewhere (as in PostgreSQL, a role made by \fBCREATE ROLE\fR may not log in unless it says \fBLOGIN\fR), \fBALTER ROLE\fR ... \fBNOLOGIN\fR refuses the role's new sessions (those open go on) and keeps one superuser that may log in, a name holds no colon or control character, a transaction block's role changes are made at \fBCOMMIT\fR (and it writes no rows), and any role may change its own password (psql's \fB\\password\fR sends a SCRAM-SHA-256 verifier, kept as it is; a password is hashed into one). Each change rewrites \fIDIR/users\fR and is logged in the WAL with every role, so standbys and crash recovery get the same file. Edit the file by hand only on a primary, then send \fBSIGHUP\fR: the primary logs the edited roles as a role change, so the standbys and crash recovery keep them (an edit not yet reloaded is lost to the next change in SQL); on a standby an edit lasts until its replay of the primary's next change rewrites the file. Every setting is listed in \fIwalship.conf\fR with its default and what it does. \fBmetrics_listen_address\fR (\fIHOST\fR:\fIPORT\fR, off by default, read at start) serves Prometheus metrics at \fB/metrics\fR: LSNs, epoch, timeline, each standby's lag in bytes and seconds, the archive backlog, and histograms of commit and WAL fsync latency (the README lists the names).
.TP
\fIDIR/control\fR, \fIDIR/epoch\fR
System identifier, segment size, timeline and last checkpoint; the epoch the node writes in, and the epoch that fenced it if one did.
.TP
\fIDIR/walship.lock\fR
Held while the server runs, so no other process opens the directory; holds its pid, which \fBwalship promote\fR and \fBwalship follow\fR signal. Emptied when the server stops cleanly; a killed server's pid stays in it, as in PostgreSQL's \fIpostmaster.pid\fR, but the lock is free.
.TP
\fIDIR/wal/\fR
WAL segments and timeline history files, and \fIwalship.lock\fR, the WAL writer's. With \fBarchive_mode = on\fR a primary marks each completed file \fIwal/archive_status/NAME.ready\fR for \fBwalship archive\fR.
.TP
\fIDIR/wal/discarded/LSN/\fR
Recovery ends at the first record that does not check out, as PostgreSQL's does, and the node writes on from there. When what lay past that point held data (a damaged record with WAL after it, or a later segment file that is not all zeros), those files are moved or copied here first, and the log says so at error level. After a crash in the middle of a write they hold that write, never acknowledged: remove the directory. If the node did not crash, the WAL was damaged on disk and acknowledged commits may be in them: check the disk, look at them with \fBwalship dump \-\-verify\fR, and take the node's data from a standby or the archive.
.TP
\fIDIR/checkpoints/snapshot.LSN\fR
The store as of the last checkpoint; recovery replays the WAL after it.
.TP
\fIDIR/slots/NAME\fR
Physical replication slots.
.TP
\fIDIR/standby.signal\fR
Present: the node starts as a standby, streaming from \fBprimary_conninfo\fR and restoring with \fBrestore_command\fR (\fB%p\fR is \fIDIR/wal/RECOVERYXLOG\fR). A promotion removes it.
.TP
\fIDIR/promote.signal\fR, \fIDIR/promote.journal\fR, \fIDIR/promote.failed\fR
A promotion's request, progress and failure: see \fBwalship\-promote\fR(1).
.TP
\fIDIR/archiver.status\fR
\fBwalship archive\fR's counters, shown in \fBpg_stat_archiver\fR.
.TP
\fIADIR/epoch\fR
With \fBarchive_directory\fR set: the highest epoch claimed there, read at start and every second; a primary in a lower epoch fences itself.
.SH ENVIRONMENT
.TP
\fBPGUSER\fR
The role a standby streams as, and a promotion fences the old primary as, when \fBprimary_conninfo\fR names none; without it, the name of the OS user running the server.
.TP
\fBPGPASSWORD\fR, \fBPGPASSFILE\fR
The password for \fBprimary_conninfo\fR when it gives none, as libpq reads them (default file \fI~/.pgpass\fR of the user running the server; the string's \fBpassfile=\fR comes first); see \fBwalship\-receive\fR(1).
.TP
\fBWALSHIP_CRASH_AT\fR
For crash tests only: the node kills itself (SIGKILL) at the named point (\fBpromote\-fence\fR, \fBpromote\-switch\fR, ...). Never set it in production.
"#;

    #[test]
    fn every_command_has_examples() {
        for sub in super::Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            let after = sub.get_after_help().map(|h| h.to_string());
            assert!(
                after.is_some_and(|h| h.starts_with("Examples:\n")),
                "walship {} --help has no Examples block (after_help)",
                sub.get_name()
            );
        }
    }

    #[test]
    fn man_pages_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let bless = std::env::var_os("WALSHIP_BLESS").is_some();
        for (file, page) in pages() {
            let path = dir.join(&file);
            if bless {
                std::fs::create_dir_all(&dir).expect("create man/");
                std::fs::write(&path, &page).expect("write man page");
                continue;
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == page,
                "man/{file} is stale: run `WALSHIP_BLESS=1 cargo test --bin walship` and commit it"
            );
        }
    }
}
