//! `walship basebackup`: clones a running primary over a replication
//! connection into a new data directory that starts as its standby —
//! `standby.signal`, `primary_conninfo` (with `application_name` set to
//! the new node's name) and `primary_slot_name` written.
//!
//! Every file goes through `durable`; the control file is written last, so
//! an interrupted backup leaves a directory `walship server` refuses (it
//! has no control file) rather than a half-copied node that starts. A
//! backup that fails removes what it wrote (see `datadir::NewDataDir`).

use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use thiserror::Error;

use super::client::{Client, ClientError, CopyMessage, SlotChoice, SlotProblem};
use super::conninfo::ConnInfo;
use crate::durable::{self, FileError};
use crate::node::datadir::{self, DataDir, DataDirError};
use crate::progress::{Progress, Total};
use crate::wal::writer::ARCHIVE_STATUS_DIR;
use crate::wal::Lsn;

#[derive(Debug, Error)]
pub enum BaseBackupError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{peer} sent a malformed base backup: {what}")]
    Malformed { peer: String, what: String },
    #[error(transparent)]
    Slot(#[from] SlotProblem),
    #[error("{peer} is a fenced old primary (fenced by epoch {by}): a copy of it would follow a dead branch; back up the current primary")]
    Fenced { peer: String, by: String },
    /// The backup failed and what it had made was removed.
    #[error("{cause}; {undone}")]
    Undone {
        cause: Box<BaseBackupError>,
        undone: String,
    },
}

pub struct BaseBackupOptions {
    pub from: ConnInfo,
    pub dir: PathBuf,
    pub node_name: String,
    pub slot: Option<String>,
    /// Create `slot` on the primary first (it must not exist).
    pub create_slot: bool,
    /// Show progress: a line redrawn on a terminal, a plain line every 10 s
    /// elsewhere.
    pub progress: bool,
}

/// What a finished backup holds.
#[derive(Debug)]
pub struct BackupSummary {
    pub start: Lsn,
    pub end: Lsn,
    pub bytes: u64,
    pub files: usize,
}

/// Takes the backup. See the module documentation. A backup that fails
/// removes the directory it made and drops the slot it created, and its
/// error says so.
pub fn run(opts: &BaseBackupOptions) -> Result<BackupSummary, BaseBackupError> {
    let dir = datadir::create_empty(&opts.dir)?;
    let mut created_slot = false;
    match take(&dir, opts, &mut created_slot) {
        Ok(summary) => {
            dir.keep();
            Ok(summary)
        }
        Err(cause) => {
            let slot = opts.slot.as_deref().filter(|_| created_slot);
            let undone: Vec<String> = [dir.discard(), slot.map(|s| drop_slot(&opts.from, s))]
                .into_iter()
                .flatten()
                .collect();
            if undone.is_empty() {
                return Err(cause);
            }
            Err(BaseBackupError::Undone {
                cause: Box::new(cause),
                undone: undone.join("; "),
            })
        }
    }
}

/// Drops the slot a failed backup created (on a new connection: the
/// backup's may be what failed), so that running it again works; says
/// how it went.
fn drop_slot(from: &ConnInfo, slot: &str) -> String {
    let dropped = Client::connect(from, Some("true")).and_then(|mut client| {
        client.query(&format!("DROP_REPLICATION_SLOT \"{slot}\""))?;
        client.close();
        Ok(())
    });
    match dropped {
        Ok(()) => format!("dropped the replication slot \"{slot}\" it had created"),
        Err(e) => format!(
            "could not drop the replication slot \"{slot}\" it had created ({e}): it holds WAL on the primary; drop it with psql \"{from} replication=true\" -c 'DROP_REPLICATION_SLOT \"{slot}\"'"
        ),
    }
}

/// The backup proper, into the new `dir`; `created_slot` tells whether it
/// got as far as creating `--slot`.
fn take(
    dir: &DataDir,
    opts: &BaseBackupOptions,
    created_slot: &mut bool,
) -> Result<BackupSummary, BaseBackupError> {
    let mut client = Client::connect(&opts.from, Some("true"))?;
    let peer = client.peer().to_string();
    let malformed = |what: &str| BaseBackupError::Malformed {
        peer: peer.clone(),
        what: what.to_string(),
    };
    // Refused before anything waits on it: PostgreSQL would answer
    // BASE_BACKUP, after its checkpoint, with a backup walship cannot run.
    let fenced_by = client.walship_fenced_by(
        "walship basebackup clones walship nodes (clone a PostgreSQL server with pg_basebackup)",
    )?;
    if let Some(by) = fenced_by {
        return Err(BaseBackupError::Fenced { peer, by });
    }
    if let Some(name) = &opts.slot {
        let slot = SlotChoice {
            name,
            create: opts.create_slot,
        };
        client.check_slot::<BaseBackupError>(slot, false)?;
        // Before the backup, so the slot holds the WAL it will need.
        if slot.create {
            client.create_slot(name)?;
            *created_slot = true;
        }
    }
    let sets = client.start_copy("BASE_BACKUP (LABEL 'walship basebackup', PROGRESS)")?;
    let start = sets
        .first()
        .and_then(|s| s.text(0, "recptr"))
        .and_then(|t| t.parse::<Lsn>().ok())
        .ok_or_else(|| malformed("no start position"))?;
    let total_kb: u64 = sets
        .get(1)
        .and_then(|s| s.text(0, "size"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut progress = Progress::for_command(
        "walship basebackup",
        Total::Bytes(total_kb * 1024),
        opts.progress,
    );
    let began = Instant::now();
    let mut current: Option<(String, Vec<u8>)> = None;
    let mut files = Vec::new();
    let mut bytes = 0u64;
    loop {
        let Some(msg) = client.recv_copy(std::time::Duration::from_secs(60))? else {
            return Err(malformed(
                "nothing arrived for 60 s in the middle of the backup",
            ));
        };
        let CopyMessage::Data(msg) = msg else {
            break;
        };
        match msg.first() {
            Some(b'n') => {
                let name_end = msg[1..]
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| malformed("file name without its terminator"))?;
                let name = String::from_utf8_lossy(&msg[1..1 + name_end]).into_owned();
                files.extend(current.replace((name, Vec::new())));
            }
            Some(b'd') => {
                let (_, data) = current
                    .as_mut()
                    .ok_or_else(|| malformed("file data before a file name"))?;
                data.extend_from_slice(&msg[1..]);
                bytes += msg.len() as u64 - 1;
                progress.advance(0, msg.len() as u64 - 1);
            }
            // The server's own progress report: the data counts already.
            Some(b'p') => {}
            _ => return Err(malformed("unknown message in the backup stream")),
        }
    }
    files.extend(current);
    let end = client
        .finish_copy_out()?
        .first()
        .and_then(|s| s.text(0, "recptr"))
        .and_then(|t| t.parse::<Lsn>().ok())
        .ok_or_else(|| malformed("no end position"))?;
    client.close();
    // The server's size was an estimate; the backup is complete.
    progress.set_total(Total::Bytes(bytes));
    progress.finish();
    write_files(dir, &files, opts).map_err(|e| match e {
        WriteError::File(f) => BaseBackupError::File(f),
        WriteError::BadName(n) => malformed(&format!("unsafe file name \"{n}\"")),
    })?;
    tracing::debug!(
        elapsed_ms = began.elapsed().as_millis() as u64,
        "base backup written"
    );
    Ok(BackupSummary {
        start,
        end,
        bytes,
        files: files.len(),
    })
}

enum WriteError {
    File(FileError),
    BadName(String),
}

impl From<FileError> for WriteError {
    fn from(e: FileError) -> Self {
        WriteError::File(e)
    }
}

/// A relative path with no `..`, `/` or other escape.
fn safe_relative(name: &str) -> Option<&Path> {
    let p = Path::new(name);
    (!name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))).then_some(p)
}

fn write_files(
    dir: &DataDir,
    files: &[(String, Vec<u8>)],
    opts: &BaseBackupOptions,
) -> Result<(), WriteError> {
    for sub in [
        dir.wal(),
        dir.wal().join(ARCHIVE_STATUS_DIR),
        dir.checkpoints(),
        dir.slots(),
    ] {
        durable::create_dir(&sub)?;
    }
    let mut control = None;
    for (name, data) in files {
        let rel = safe_relative(name).ok_or_else(|| WriteError::BadName(name.clone()))?;
        if name == "control" {
            control = Some(data);
            continue;
        }
        let mut data = data.clone();
        if name == "walship.conf" {
            // The source's own slot name (a standby's) is never the clone's.
            let text = crate::node::config::retire_settings(
                &String::from_utf8_lossy(&data),
                &["node_name", "primary_conninfo", "primary_slot_name"],
                "walship basebackup",
            );
            data = text.into_bytes();
            data.extend_from_slice(standby_settings(opts).as_bytes());
        }
        durable::replace_file(&dir.root.join(rel), &data)?;
    }
    durable::replace_file(&dir.standby_signal(), b"")?;
    if let Some(control) = control {
        durable::replace_file(&dir.control(), control)?;
    }
    Ok(())
}

/// What the clone's `walship.conf` gets after the primary's settings.
fn standby_settings(opts: &BaseBackupOptions) -> String {
    let mut info = opts.from.clone();
    info.application_name = Some(opts.node_name.clone());
    let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut out = format!(
        "\n# Added by walship basebackup: this node is a standby of the node it was cloned from.\nnode_name = {}\nprimary_conninfo = {}\n",
        q(&opts.node_name),
        q(&info.to_conninfo_string())
    );
    if let Some(slot) = &opts.slot {
        out.push_str(&format!("primary_slot_name = {}\n", q(slot)));
    }
    out
}
